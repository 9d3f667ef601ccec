//! The gRPC front end only translates: core work never runs on a blocking thread
//! of its own making (the core's async API does that), and gRPC statuses are
//! built from the core's error in one function, `status()`.

#[test]
fn statuses_are_built_in_one_place_and_no_blocking_work_is_spawned() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let code = std::fs::read_to_string(e.path()).unwrap();
        files += 1;
        assert!(
            !code.contains("spawn_blocking"),
            "{name} spawns blocking work"
        );
        let mut count = code.matches("Status::").count();
        if name == "lib.rs" {
            let start = code.find("pub fn status(").expect("the mapping function");
            let end = start + code[start..].find("\n}\n").expect("its end");
            count -= code[start..end].matches("Status::").count();
        }
        assert_eq!(count, 0, "{name} builds a gRPC status outside status()");
    }
    assert!(files >= 2, "{files}");
}
