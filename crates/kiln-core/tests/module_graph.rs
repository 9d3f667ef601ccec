//! No module of kiln-core imports a module that imports it back, directly or
//! through others. Each file's references to other modules (`crate::a::b`,
//! `super::`, `self::`, and a parent's `use child::...`) are read from the source
//! (test code, after `#[cfg(test)]`, is left out) and the graph is checked for
//! cycles (comments do not count). A reference to an item re-exported by `lib.rs` (`crate::Core`) counts
//! as importing `lib.rs`, which imports every module: refer by full path instead.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

fn modules(src: &Path) -> BTreeMap<Module, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(src).unwrap().with_extension("");
            let mut m: Module = rel
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            if m.last().is_some_and(|l| l == "mod" || l == "lib") {
                m.pop();
            }
            let text = std::fs::read_to_string(&p).unwrap();
            // Code only: test code (after `#[cfg(test)]`) and comments left out.
            let code: String = text
                .split("#[cfg(test)]")
                .next()
                .unwrap_or("")
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            out.insert(m, code);
        }
    }
    out
}

/// Module paths a file's code names, each as written (`crate::a::b`,
/// `super::c`, or a child `d::e`), brace groups expanded one level.
fn references(code: &str, children: &BTreeSet<String>) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let word = |i: usize| {
        let mut j = i;
        while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
            j += 1;
        }
        j
    };
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b':');
        let end = word(i);
        if end == i {
            i += 1;
            continue;
        }
        let head = &code[i..end];
        let anchored = matches!(head, "crate" | "super" | "self") || children.contains(head);
        if !starts_word || !anchored || !code[end..].starts_with("::") {
            i = end;
            continue;
        }
        let mut segs = Vec::new();
        let mut j = end;
        let mut groups: Vec<Vec<String>> = vec![vec![]];
        while code[j..].starts_with("::") {
            j += 2;
            if code[j..].starts_with('{') {
                let close = code[j..].find('}').map(|c| j + c).unwrap_or(code.len());
                groups = code[j + 1..close]
                    .split(',')
                    .map(|item| {
                        item.trim()
                            .split("::")
                            .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
                            .filter(|s| !s.is_empty() && s != "self" && s != "*")
                            .collect()
                    })
                    .collect();
                j = close;
                break;
            }
            let e = word(j);
            if e == j {
                break;
            }
            segs.push(code[j..e].to_string());
            j = e;
        }
        for g in groups {
            let mut path = segs.clone();
            path.extend(g);
            out.push((head.to_string(), path));
        }
        i = j.max(end);
    }
    out
}

/// The longest prefix of `path` that is a module.
fn resolve(all: &BTreeMap<Module, String>, path: &[String]) -> Module {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|m| all.contains_key(m))
        .unwrap_or_default()
}

fn graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let all = modules(src);
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (m, code) in &all {
        let children: BTreeSet<String> = all
            .keys()
            .filter(|c| c.len() == m.len() + 1 && c.starts_with(m))
            .map(|c| c[m.len()].clone())
            .collect();
        for (head, segs) in references(code, &children) {
            let mut base: Module = match head.as_str() {
                "crate" => vec![],
                "self" => m.clone(),
                "super" => m[..m.len().saturating_sub(1)].to_vec(),
                child => {
                    let mut b = m.clone();
                    b.push(child.to_string());
                    b
                }
            };
            base.extend(segs);
            let target = resolve(&all, &base);
            if &target != m {
                edges.entry(m.clone()).or_default().insert(target);
            }
        }
    }
    edges
}

fn find_cycle(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(
        m: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        path: &mut Vec<Module>,
        done: &mut BTreeSet<Module>,
    ) -> Option<Vec<Module>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.clone());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.clone());
        for next in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.clone());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|m| visit(m, edges, &mut Vec::new(), &mut done))
}

fn show(m: &Module) -> String {
    if m.is_empty() {
        "lib".into()
    } else {
        m.join("::")
    }
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = graph(&src);
    assert!(edges.len() > 10, "the source was not read: {edges:?}");
    let server = vec!["server".to_string()];
    assert!(
        edges[&server].contains(&vec!["registry".to_string()]),
        "{:?}",
        edges[&server]
    );
    if let Some(cycle) = find_cycle(&edges) {
        let shown: Vec<String> = cycle.iter().map(show).collect();
        panic!("modules import each other: {}", shown.join(" -> "));
    }
}

#[test]
fn the_check_sees_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(
        src.join("lib.rs"),
        "pub mod a;\npub mod b;\npub use a::X;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("a/mod.rs"),
        "mod c;\npub use c::Y;\npub struct X;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("a/c.rs"),
        "use crate::b::{Z, other};\npub struct Y;\n",
    )
    .unwrap();
    std::fs::write(src.join("b.rs"), "pub struct Z;\n").unwrap();
    assert_eq!(find_cycle(&graph(src)), None);
    // b reaches back to a (through lib's re-export): a -> a::c -> b -> lib -> a.
    std::fs::write(src.join("b.rs"), "use crate::X;\npub struct Z;\n").unwrap();
    let cycle = find_cycle(&graph(src)).expect("a cycle");
    assert!(cycle.len() >= 3, "{cycle:?}");
    std::fs::write(
        src.join("b.rs"),
        "pub struct Z;\nfn f() { super::a::X; }\n#[cfg(test)]\nuse crate::X;\n",
    )
    .unwrap();
    assert!(find_cycle(&graph(src)).is_some());
}
