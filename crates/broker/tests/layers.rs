//! The import graph of the broker's modules (issue #17 item 1), checked on
//! every `cargo test`: `cargo test -p tern-broker --test layers -- --nocapture`
//! prints it.
//!
//! A module here is a top-level module of `crates/broker/src` (`store`,
//! `router`, …: a parent and its own children are one module). An edge
//! `a -> b` means code of `a` (tests excluded) names `crate::b`. The modules
//! still form cycles; `KNOWN` lists the edges inside them today. The test
//! fails when a new edge closes a cycle (a tie the layering must not gain) and
//! when a listed edge is gone (so the list only shrinks, with the work).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Edges inside cycles still (2 edges, 2 of 21 modules; 49 and 11 of 20
/// when this test was added). Remove an edge here when the code stops
/// needing it.
const KNOWN: &[(&str, &str)] = &[("connection", "handler"), ("handler", "connection")];

type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn no_new_import_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph(&src);
    let cyclic = edges_in_cycles(&graph);
    for (from, to) in &cyclic {
        println!("in a cycle: {from} -> {to}");
    }
    let known: BTreeSet<(String, String)> = KNOWN
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let new: Vec<_> = cyclic.difference(&known).collect();
    let gone: Vec<_> = known.difference(&cyclic).collect();
    assert!(
        new.is_empty(),
        "imports that close a cycle between modules: {new:?}; depend the other way, or move the shared part below both"
    );
    assert!(
        gone.is_empty(),
        "edges no longer in a cycle, remove them from KNOWN: {gone:?}"
    );
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
