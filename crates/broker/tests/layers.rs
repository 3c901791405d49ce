//! The import graph of the broker's modules (issue #17 item 1), checked on
//! every `cargo test`: `cargo test -p tern-broker --test layers -- --nocapture`
//! prints it, layer by layer.
//!
//! A module here is a top-level module of `crates/broker/src` (`store`,
//! `router`, …: a parent and its own children are one module). An edge
//! `a -> b` means code of `a` (tests excluded) names `crate::b`. The modules
//! form no cycle: each imports only from modules in layers below its own, so
//! any one can be read, tested and replaced knowing only those. The test
//! fails when an import would close a cycle, and names the edges in it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn no_import_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph(&src);
    let cyclic = edges_in_cycles(&graph);
    assert!(
        cyclic.is_empty(),
        "imports that close a cycle between modules: {cyclic:?}; depend the other way, or move the shared part below both"
    );
    for (n, layer) in layers(&graph).iter().enumerate() {
        println!("layer {n}:");
        for module in layer {
            let deps: Vec<&str> = graph[module].iter().map(String::as_str).collect();
            println!("  {module} -> {}", deps.join(", "));
        }
    }
}

/// Only the API is public (issue #17 item 2): of the crate's modules, just
/// `config` and `seams` (and the hidden `testing` hooks); everything else
/// that other crates use is re-exported one item at a time from `lib.rs`.
/// A module made `pub` again fails here, so widening the API is a decision.
#[test]
fn only_the_api_is_public() {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs");
    let text = std::fs::read_to_string(lib).unwrap();
    let public: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|rest| rest.trim_end_matches(['{', ';', ' ']))
        .collect();
    assert_eq!(public, BTreeSet::from(["config", "seams", "testing"]));
}

/// The modules by layer: layer 0 imports nothing of the crate, and each
/// module sits one layer above the highest module it imports. The graph
/// must have no cycle.
fn layers(graph: &Graph) -> Vec<Vec<String>> {
    let mut level: BTreeMap<&str, usize> = BTreeMap::new();
    while level.len() < graph.len() {
        for (module, deps) in graph {
            if level.contains_key(module.as_str()) {
                continue;
            }
            let below: Option<Vec<usize>> = deps
                .iter()
                .map(|d| level.get(d.as_str()).copied())
                .collect();
            if let Some(below) = below {
                level.insert(module, below.iter().max().map_or(0, |l| l + 1));
            }
        }
    }
    let mut layers = vec![Vec::new(); level.values().max().map_or(0, |l| l + 1)];
    for (module, l) in level {
        layers[l].push(module.to_owned());
    }
    layers
}

/// Module -> the modules its non-test code names.
fn graph(src: &Path) -> Graph {
    let mut graph = Graph::new();
    let modules: BTreeSet<String> = std::fs::read_dir(src)
        .unwrap()
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path.file_stem()?.to_str()?.to_owned();
            (name != "lib").then_some(name)
        })
        .collect();
    for module in &modules {
        let file = src.join(format!("{module}.rs"));
        let files = if file.exists() {
            vec![file]
        } else {
            rust_files(&src.join(module))
        };
        let deps = graph.entry(module.clone()).or_default();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let code: String = without_tests(&text)
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .map(|l| format!("{l}\n"))
                .collect();
            for name in named_modules(&code) {
                let name = if name == "throttled" {
                    "log_throttle".to_owned()
                } else {
                    name
                };
                if &name != module && modules.contains(&name) {
                    deps.insert(name);
                }
            }
        }
    }
    graph
}

fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The text before the file's test module.
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod tests")
        .or_else(|| text.find("#[cfg(test)]\npub(super) mod tests"))
        .map_or(text, |i| &text[..i])
}

/// The first segments after `crate::`, also inside `crate::{a, b::c}`.
fn named_modules(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.push(name);
            }
        } else {
            out.push(
                rest.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    out
}

/// Every edge both ends of which are in one strongly connected component.
fn edges_in_cycles(graph: &Graph) -> BTreeSet<(String, String)> {
    let reaches = |from: &str, to: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(n) = stack.pop() {
            if n == to {
                return true;
            }
            if seen.insert(n.clone()) {
                stack.extend(graph.get(&n).into_iter().flatten().cloned());
            }
        }
        false
    };
    graph
        .iter()
        .flat_map(|(from, tos)| tos.iter().map(move |to| (from.clone(), to.clone())))
        .filter(|(from, to)| reaches(to, from))
        .collect()
}

#[test]
fn a_cycle_is_found() {
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default().insert("a".into());
    g.entry("c".into()).or_default().insert("d".into());
    let cyclic = edges_in_cycles(&g);
    assert_eq!(cyclic.len(), 3);
    assert!(!cyclic.contains(&("c".into(), "d".into())));
    assert_eq!(
        named_modules("use crate::{store, router::x};\ncrate::throttled!(..)"),
        ["store", "router", "throttled"]
    );
}
