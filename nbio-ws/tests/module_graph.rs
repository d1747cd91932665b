//! The module dependency graph of `nbio-ws/src`, derived from the source:
//! every `crate::…` and `super::…` path, and every `use` of a child module,
//! is an edge from the module whose file holds it to the deepest module the
//! path names. The test fails
//!
//! - on a cycle between top-level modules (`auth`, `ws`, `hub`, …);
//! - on a cycle between the submodules of one directory (`ws::conn`,
//!   `ws::frame`, …), except inside the registry (`hub`, `hub::client`,
//!   `hub::rooms`), the one group allowed to depend on each other. A
//!   directory's `mod.rs` is its facade: it re-exports its children, which
//!   may use what it defines, so edges to and from it do not count here;
//! - on a leaf (`env`, `types`, `metrics`, `jsonrpc`) that depends on
//!   anything in the crate.
//!
//! `NBIO_WS_PRINT_MODULE_GRAPH=1 cargo test -p nbio-ws --test module_graph
//! -- --nocapture` prints the graph, one module per line with what it
//! depends on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The directory whose submodules may form a cycle among themselves.
const REGISTRY: &str = "hub";
/// Modules that may depend on nothing in the crate.
const LEAVES: &[&str] = &["env", "types", "metrics", "jsonrpc", "close"];

type Graph = BTreeMap<String, BTreeSet<String>>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// `src/a/b.rs` → `a::b`, `src/a/mod.rs` → `a`, `src/lib.rs` → `crate`.
fn module_of(file: &Path, src: &Path) -> String {
    let rel = file.strip_prefix(src).expect("file under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    if parts.is_empty() {
        "crate".to_owned()
    } else {
        parts.join("::")
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and string literals (so doc links
/// and URLs do not count as dependencies).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'r' && b.get(i + 1) == Some(&b'#') && b.get(i + 2) == Some(&b'"') {
            let end = text[i..].find("\"#").map_or(b.len(), |e| i + e + 2);
            i = end;
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Paths starting at `at` in `code`: `a::b::c` and `{a::b, c}` groups,
/// each as a list of segments.
fn paths_after(code: &str, at: usize) -> Vec<Vec<String>> {
    fn ident(s: &str) -> (&str, &str) {
        let end = s
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        (&s[..end], &s[end..])
    }
    fn walk(s: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
        let start = s.len();
        let mut rest = s.trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            let mut inner = group;
            loop {
                inner = inner.trim_start();
                if let Some(r) = inner.strip_prefix('}') {
                    return start - r.len();
                }
                let used = walk(inner, prefix.clone(), out);
                inner = &inner[used..];
                inner = inner.trim_start();
                inner = inner.strip_prefix(',').unwrap_or(inner);
                if used == 0 {
                    // Not a path (e.g. `self`, `*`): skip a character.
                    inner = inner.get(1..).unwrap_or("");
                    if inner.is_empty() {
                        return start;
                    }
                }
            }
        }
        let (id, after) = ident(rest);
        if id.is_empty() {
            out.push(prefix);
            return start - rest.len();
        }
        let mut path = prefix;
        path.push(id.to_owned());
        rest = after;
        if let Some(r) = rest.strip_prefix("::") {
            return start - r.len() + walk(r, path, out);
        }
        out.push(path);
        start - rest.len()
    }
    let mut out = Vec::new();
    walk(&code[at..], Vec::new(), &mut out);
    out
}

fn build_graph() -> Graph {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f, &src)).collect();
    let deepest = |segments: &[String]| -> Option<String> {
        (1..=segments.len())
            .rev()
            .map(|n| segments[..n].join("::"))
            .find(|m| modules.contains(m))
    };
    // Names the crate root re-exports (`pub use hub::Hub` makes
    // `crate::Hub` a path into `hub`).
    let lib = code_only(&std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs"));
    let mut aliases: BTreeMap<String, String> = BTreeMap::new();
    for (i, _) in lib.match_indices("pub use ") {
        for p in paths_after(&lib, i + "pub use ".len()) {
            if let (Some(module), Some(name)) = (deepest(&p), p.last()) {
                aliases.insert(name.clone(), module);
            }
        }
    }
    let deepest = |segments: &[String]| -> Option<String> {
        match segments.first().and_then(|s| aliases.get(s)) {
            Some(module) => Some(module.clone()),
            None => deepest(segments),
        }
    };
    let mut graph = Graph::new();
    for file in &files {
        let me = module_of(file, &src);
        let is_dir_module = file.ends_with("mod.rs") || file.ends_with("lib.rs");
        // `super` of `a::b` (in a/b.rs) is `a`; of `a` (in a/mod.rs) the root.
        let parent: Vec<String> = {
            let mut p: Vec<String> = if me == "crate" {
                Vec::new()
            } else {
                me.split("::").map(str::to_owned).collect()
            };
            p.pop();
            p
        };
        let own: Vec<String> = if me == "crate" {
            Vec::new()
        } else {
            me.split("::").map(str::to_owned).collect()
        };
        let text = std::fs::read_to_string(file).expect("readable source");
        let mut code = code_only(&text);
        // Unit tests may use anything; they are not part of the design.
        if let Some(at) = code.find("#[cfg(test)]\nmod tests") {
            code.truncate(at);
        }
        let deps = graph.entry(me.clone()).or_default();
        let mut add = |segments: Vec<String>| {
            if let Some(target) = deepest(&segments) {
                if target != me && target != "crate" {
                    deps.insert(target);
                }
            }
        };
        let mut children = BTreeSet::new();
        for (i, _) in code.match_indices("mod ") {
            let (name, _) = code[i + 4..].split_at(
                code[i + 4..]
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(0),
            );
            if !name.is_empty() {
                children.insert(name.to_owned());
            }
        }
        for (i, _) in code.match_indices("crate::") {
            let boundary = i == 0 || !code.as_bytes()[i - 1].is_ascii_alphanumeric();
            if boundary {
                for p in paths_after(&code, i + "crate::".len()) {
                    add(p);
                }
            }
        }
        for (i, _) in code.match_indices("super::") {
            let boundary = i == 0
                || !(code.as_bytes()[i - 1].is_ascii_alphanumeric()
                    || code.as_bytes()[i - 1] == b':');
            if boundary {
                for p in paths_after(&code, i + "super::".len()) {
                    let mut full = parent.clone();
                    full.extend(p);
                    add(full);
                }
            }
        }
        if is_dir_module {
            for (i, _) in code.match_indices("use ") {
                for p in paths_after(&code, i + 4) {
                    if p.first().is_some_and(|c| children.contains(c)) {
                        let mut full = own.clone();
                        full.extend(p);
                        add(full);
                    }
                }
            }
        }
    }
    // Test modules inside a file count as the file's module; that is fine:
    // tests may use anything below them.
    graph
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(graph: &Graph) -> Vec<BTreeSet<String>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        next: usize,
        out: Vec<BTreeSet<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        if let Some(deps) = s.graph.get(v) {
            for w in deps {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    let lv = s.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if s.on_stack.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut scc = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                scc.insert(w.to_owned());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                s.out.push(scc);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn no_cycle_outside_the_registry() {
    let graph = build_graph();
    if std::env::var_os("NBIO_WS_PRINT_MODULE_GRAPH").is_some() {
        for (m, deps) in &graph {
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            println!("{m} -> {}", deps.join(", "));
        }
    }
    assert!(graph.len() > 20, "the graph was not derived: {graph:?}");
    let top = |m: &str| m.split("::").next().unwrap_or(m).to_owned();
    // Top-level modules.
    let mut coarse = Graph::new();
    for (m, deps) in &graph {
        let from = top(m);
        let entry = coarse.entry(from.clone()).or_default();
        for d in deps {
            if top(d) != from {
                entry.insert(top(d));
            }
        }
    }
    let bad = cycles(&coarse);
    assert!(bad.is_empty(), "cycles between top-level modules: {bad:#?}");
    // Submodules of each directory, its facade left out.
    let child = |m: &str| -> Option<(String, String)> {
        let mut parts = m.split("::");
        let dir = parts.next()?;
        let sub = parts.next()?;
        Some((dir.to_owned(), format!("{dir}::{sub}")))
    };
    let mut per_dir: BTreeMap<String, Graph> = BTreeMap::new();
    for (m, deps) in &graph {
        let Some((dir, from)) = child(m) else {
            continue;
        };
        let g = per_dir.entry(dir.clone()).or_default();
        let entry = g.entry(from.clone()).or_default();
        for d in deps {
            if let Some((ddir, to)) = child(d) {
                if ddir == dir && to != from {
                    entry.insert(to);
                }
            }
        }
    }
    for (dir, g) in &per_dir {
        let bad = cycles(g);
        assert!(
            dir == REGISTRY || bad.is_empty(),
            "cycles inside {dir}/: {bad:#?}"
        );
    }
    for leaf in LEAVES {
        let deps = graph.get(*leaf).cloned().unwrap_or_default();
        assert!(deps.is_empty(), "leaf module {leaf} depends on {deps:?}");
    }
}

#[test]
fn the_check_sees_a_cycle() {
    // The detector itself: a two-module cycle and a registry cycle.
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("a".into());
    g.entry("c".into()).or_default().insert("a".into());
    let found = cycles(&g);
    assert_eq!(found.len(), 1);
    assert!(found[0].contains("a") && found[0].contains("b"));
    // Paths are found in groups and after `super::`.
    let code = code_only("use crate::{hub::Client, ws::frame::{A, B}}; // crate::nope\n");
    let at = code.find("crate::").unwrap() + 7;
    let paths = paths_after(&code, at);
    assert_eq!(
        paths,
        vec![
            vec!["hub".to_owned(), "Client".to_owned()],
            vec!["ws".into(), "frame".into(), "A".into()],
            vec!["ws".into(), "frame".into(), "B".into()],
        ]
    );
    assert!(!code.contains("nope"));
}
