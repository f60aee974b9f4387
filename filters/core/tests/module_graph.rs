//! The modules of `egress-core` import each other without a cycle: each can be read (and changed) knowing only what
//! is below it. A `crate::<module>` path in code (comments aside; `crate::<Item>` counts for the module `lib.rs`
//! re-exports it from) is an edge; a cycle fails with its path. The files of a module that is a directory
//! (`json/`) are held to the same between themselves, by their `super::<sibling>` paths.

// Reads the sources from disk: native only.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The module each `crate::<name>` path names: modules by their own name, re-exported items by their module.
fn names(src: &Path, modules: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut names: BTreeMap<String, String> = modules.iter().map(|m| (m.clone(), m.clone())).collect();
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    for line in lib.lines() {
        let Some(rest) = line.strip_prefix("pub use ") else { continue };
        let Some((module, items)) = rest.trim_end_matches(';').split_once("::") else { continue };
        for item in items.trim_matches(|c| c == '{' || c == '}').split(',') {
            names.insert(item.trim().to_string(), module.to_string());
        }
    }
    names
}

/// The modules `text` names through `<prefix>` paths (`crate::`, `super::`), comments aside.
fn imports(text: &str, prefix: &str, names: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        for (at, _) in code.match_indices(prefix) {
            let name: String =
                code[at + prefix.len()..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            found.extend(names.get(&name).cloned());
        }
    }
    found
}

/// The text of module `name` in `dir`: its file, or every file of its directory.
fn text_of(dir: &Path, name: &str) -> String {
    let file = dir.join(format!("{name}.rs"));
    if file.exists() {
        return std::fs::read_to_string(file).unwrap();
    }
    let files = std::fs::read_dir(dir.join(name)).unwrap().map(|entry| entry.unwrap().path());
    files
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .map(|path| std::fs::read_to_string(path).unwrap())
        .collect()
}

/// The modules in `dir` (files and directories), but `skip`.
fn modules_in(dir: &Path, skip: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().to_str()?.to_string();
            if entry.path().is_dir() {
                return entry.path().join("mod.rs").exists().then_some(name);
            }
            name.strip_suffix(".rs").map(str::to_string)
        })
        .filter(|module| module != skip)
        .collect()
}

/// Fails with the first cycle of `graph`.
fn assert_acyclic(graph: &BTreeMap<String, BTreeSet<String>>, what: &str) {
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(cycle) = cycle(module, graph, &mut Vec::new(), &mut done) {
            panic!("a cycle between the {what}: {}", cycle.join(" -> "));
        }
    }
}

/// A cycle through `module`, if the graph has one reachable from it: the modules along it.
fn cycle(
    module: &str,
    graph: &BTreeMap<String, BTreeSet<String>>,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(start) = path.iter().position(|m| m == module) {
        let mut cycle = path[start..].to_vec();
        cycle.push(module.to_string());
        return Some(cycle);
    }
    if done.contains(module) {
        return None;
    }
    path.push(module.to_string());
    for next in &graph[module] {
        if let Some(cycle) = cycle(next, graph, path, done) {
            return Some(cycle);
        }
    }
    path.pop();
    done.insert(module.to_string());
    None
}

#[test]
fn the_modules_import_each_other_without_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules_in(&src, "lib");
    let names = names(&src, &modules);
    let graph: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|module| {
            let mut imported = imports(&text_of(&src, module), "crate::", &names);
            imported.remove(module);
            (module.clone(), imported)
        })
        .collect();
    assert!(graph["policy"].contains("documents") && graph["documents"].contains("json"), "{graph:?}");
    assert_acyclic(&graph, "modules of egress-core");
    for module in modules.iter().filter(|module| src.join(module).is_dir()) {
        let dir = src.join(module);
        let files = modules_in(&dir, "mod");
        let names: BTreeMap<String, String> = files.iter().map(|f| (f.clone(), f.clone())).collect();
        let graph: BTreeMap<String, BTreeSet<String>> =
            files.iter().map(|file| (file.clone(), imports(&text_of(&dir, file), "super::", &names))).collect();
        assert_acyclic(&graph, &format!("files of {module}/"));
    }
}
