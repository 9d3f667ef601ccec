//! The REST front end only translates: core work never runs on a blocking thread
//! of its own making (the core's async API does that), and HTTP statuses are
//! chosen in one function, `status()`, the router's own 404 and 405 aside.

/// Every source file under `src/` (modules in folders too), by path.
fn source() -> Vec<(String, String)> {
    fn walk(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                let name = e.file_name().to_string_lossy().into_owned();
                out.push((name, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let mut files = Vec::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    files
}

/// The text of `fn name` in `code`, up to the first line that closes it.
fn body<'a>(code: &'a str, name: &str) -> &'a str {
    let start = code
        .find(&format!("fn {name}("))
        .unwrap_or_else(|| panic!("no fn {name}"));
    let end = code[start..]
        .find("\n}\n")
        .map_or(code.len(), |e| start + e);
    &code[start..end]
}

#[test]
fn statuses_are_chosen_in_one_place_and_no_blocking_work_is_spawned() {
    let files = source();
    assert!(files.len() >= 3, "{}", files.len());
    let mut outside = 0;
    for (name, code) in &files {
        assert!(
            !code.contains("spawn_blocking"),
            "{name} spawns blocking work"
        );
        let mut count = code.matches("StatusCode::").count();
        if name == "lib.rs" {
            for f in ["status", "not_found", "method_not_allowed"] {
                count -= body(code, f).matches("StatusCode::").count();
            }
        }
        outside += count;
        assert_eq!(count, 0, "{name} builds a status outside status()");
    }
    assert_eq!(outside, 0);
}
