//! The layout stays what `src/lib.rs` and ARCHITECTURE.md say it is: no
//! import cycle between modules, a thin `main.rs`, and every module named in
//! both documents. Reads the source tree; needs no Docker.
//!
//! A module is a file under `src/` (`mod.rs` is its folder's module). An
//! edge A → B is any `crate::…` path in A's non-test code that names B or
//! something inside B. A parent that only declares its children (`pub mod
//! x;`) does not depend on them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every library module file → its module path (`engine::plan`).
fn modules() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                // The binary's own modules are not the library's.
                if prefix.is_empty() && name == "cli" {
                    continue;
                }
                let mut p = prefix.to_vec();
                p.push(name);
                walk(&path, &p, out);
            } else if let Some(stem) = name.strip_suffix(".rs") {
                if prefix.is_empty() && (stem == "main" || stem == "lib") {
                    continue;
                }
                let mut p = prefix.to_vec();
                if stem != "mod" {
                    p.push(stem.to_string());
                }
                out.insert(p.join("::"), path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&src(), &[], &mut out);
    out
}

/// The code of a file without its `#[cfg(test)]` modules and comments.
fn non_test_code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let code = match text.find("#[cfg(test)]\nmod ") {
        Some(i) => &text[..i],
        None => &text,
    };
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Module paths named by `crate::` paths in `code`, resolved against the
/// known modules (the longest module prefix of each path), including paths
/// inside `use crate::{a::b, c}` groups.
fn references(code: &str, known: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut paths = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                paths.push(item.trim().to_string());
            }
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let path = rest[..end].trim_end_matches(':');
        // `crate::a::{b, c}`: each inner item extends `a`.
        if rest[end..].starts_with('{') {
            let inner = &rest[end + 1..];
            let close = inner.find('}').unwrap_or(inner.len());
            for item in inner[..close].split(',') {
                let item = item.trim().split(" as ").next().unwrap_or("").trim();
                paths.push(format!("{path}::{item}"));
            }
        }
        paths.push(path.to_string());
    }
    for path in paths {
        let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
        for n in (1..=parts.len()).rev() {
            let candidate = parts[..n].join("::");
            if known.contains_key(&candidate) {
                out.insert(candidate);
                break;
            }
        }
    }
    out
}

/// `super::` and `self::` paths written as `crate::` paths, so they count
/// like any other reference.
fn absolute(code: &str, module: &str) -> String {
    let parts: Vec<&str> = module.split("::").filter(|p| !p.is_empty()).collect();
    // A file `a/b.rs` is module a::b; its `super` is a. A `a/b/mod.rs` is
    // also module a::b, and its `super` is a too; `self` is the module.
    let parent = parts[..parts.len().saturating_sub(1)].join("::");
    let this = parts.join("::");
    let with = |base: &str| {
        if base.is_empty() {
            "crate::".to_string()
        } else {
            format!("crate::{base}::")
        }
    };
    code.replace("super::", &with(&parent))
        .replace("self::", &with(&this))
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let known = modules();
    known
        .iter()
        .map(|(module, path)| {
            let code = absolute(&non_test_code(path), module);
            let mut deps = references(&code, &known);
            deps.remove(module);
            (module.clone(), deps)
        })
        .collect()
}

/// One cycle, if any, as a list of modules.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for dep in graph.get(node).into_iter().flatten() {
            match state.get(dep).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|m| m == dep).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(dep.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(dep, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(node, graph, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let g = graph();
    assert!(
        g.len() > 30,
        "the walk found too few modules: {:?}",
        g.keys()
    );
    if let Some(cycle) = find_cycle(&g) {
        panic!("import cycle: {}", cycle.join(" → "));
    }
}

#[test]
fn folders_form_layers_with_no_cycle_between_them() {
    // The same graph, one node per top-level module (`engine`, `desired`...).
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let top = |m: &str| m.split("::").next().unwrap_or_default().to_string();
    for (module, deps) in graph() {
        let entry = folders.entry(top(&module)).or_default();
        entry.extend(deps.iter().map(|d| top(d)).filter(|d| *d != top(&module)));
    }
    if let Some(cycle) = find_cycle(&folders) {
        panic!("folders import each other: {}", cycle.join(" → "));
    }
}

#[test]
fn the_cycle_check_sees_a_cycle_when_there_is_one() {
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    g.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let known: BTreeMap<String, PathBuf> = ["engine", "engine::plan", "names"]
        .iter()
        .map(|m| (m.to_string(), PathBuf::new()))
        .collect();
    let refs = references(
        "use crate::engine::plan::{Action, Plan};\nuse crate::{names::labels, engine};",
        &known,
    );
    assert_eq!(
        refs,
        BTreeSet::from(["engine::plan".into(), "names".into(), "engine".into()])
    );
}

#[test]
fn main_rs_only_parses_and_wires() {
    let lines = std::fs::read_to_string(src().join("main.rs"))
        .unwrap()
        .lines()
        .count();
    assert!(lines <= 200, "src/main.rs has {lines} lines (at most 200)");
}

#[test]
fn lib_rs_and_architecture_md_name_every_module() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let arch = std::fs::read_to_string(src().join("../ARCHITECTURE.md")).unwrap();
    let mut missing = Vec::new();
    for (module, path) in modules() {
        let top = module.split("::").next().unwrap_or_default();
        if !lib.contains(&format!("[`{top}`]")) {
            missing.push(format!("lib.rs does not name `{top}`"));
        }
        let file = path
            .strip_prefix(src().parent().unwrap())
            .unwrap()
            .display()
            .to_string();
        if !arch.contains(&file) {
            missing.push(format!("ARCHITECTURE.md does not name {file}"));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// Every `.rs` file of the workspace outside `target/`.
fn all_rust_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() && name != "target" && !name.starts_with('.') {
                walk(&path, out);
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&src().join(".."), &mut out);
    out
}

#[test]
fn no_comment_cites_a_document_the_repository_does_not_have() {
    // Documents a comment may cite must exist in the repository; "invariant
    // N" without saying where is a citation of nothing.
    let root = src().join("..");
    let numbered = |l: &str| {
        let lower = l.to_lowercase();
        lower.match_indices("invariant ").any(|(i, m)| {
            lower[i + m.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
    };
    let mut offenders = Vec::new();
    for path in all_rust_files() {
        if path.ends_with("tests/layout.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let cites_missing = line
                .split(|c: char| !(c.is_alphanumeric() || c == '.' || c == '_' || c == '-'))
                .filter(|w| w.ends_with(".md"))
                .any(|doc| !root.join(doc).exists());
            if cites_missing || numbered(line) {
                offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(offenders.is_empty(), "{}", offenders.join("\n"));
}
