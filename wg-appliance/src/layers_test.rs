//! Keeps the layer table in lib.rs true: collects which module uses which,
//! and fails on a module the table lacks, a use of a higher layer, a cycle.
//!
//! Uses are `crate::x` (and `wg_appliance::x` in the binary); test code
//! is left out, as `#[cfg(test)]` modules may use anything.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Top-level module → the top-level modules it uses.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The table's rows as module → layer: lines `//! | <n> ... | `a` `b` | ...`.
fn layer_table(lib_rs: &str) -> BTreeMap<String, u32> {
    let mut layers = BTreeMap::new();
    for line in lib_rs.lines() {
        let Some(row) = line.strip_prefix("//! |") else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').collect();
        let Some(layer) = cells.first().and_then(|c| {
            let digits: String = c.trim().chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        }) else {
            continue; // the header and its underline
        };
        let modules = cells.get(1).copied().unwrap_or_default();
        for name in modules.split('`').skip(1).step_by(2) {
            let old = layers.insert(name.to_owned(), layer);
            assert!(old.is_none(), "`{name}` is in the layer table twice");
        }
    }
    layers
}

/// The `mod x;` declarations of a file: (name, under `#[cfg(test)]`).
fn mod_decls(text: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut prev = "";
    for line in text.lines() {
        let t = line.trim();
        let decl = t
            .strip_prefix("pub ")
            .or_else(|| t.strip_prefix("pub(crate) "))
            .unwrap_or(t);
        if let Some(name) = decl.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
            out.push((name.trim().to_owned(), prev == "#[cfg(test)]"));
        }
        if !t.is_empty() {
            prev = t;
        }
    }
    out
}

/// `text` without comment lines and without inline `#[cfg(test)] mod x {
/// ... }` blocks (rustfmt closes them with a `}` at the `mod` line's
/// indentation).
fn production_code(text: &str) -> String {
    let mut out = String::new();
    let mut prev = "";
    let mut skip_until: Option<String> = None;
    for line in text.lines() {
        if let Some(end) = &skip_until {
            if line == end {
                skip_until = None;
            }
            continue;
        }
        let t = line.trim();
        if prev == "#[cfg(test)]" && t.starts_with("mod ") && t.ends_with('{') {
            let indent = &line[..line.len() - line.trim_start().len()];
            skip_until = Some(format!("{indent}}}"));
            continue;
        }
        if !t.is_empty() {
            prev = t;
        }
        if !t.starts_with("//") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The first path segments after each `prefix` (e.g. `crate::`), with
/// grouped imports (`crate::{a::X, b}`) giving each group member.
fn uses(code: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices(prefix) {
        // `wg_appliance::` must not match inside a longer name.
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        let Some(group) = rest.strip_prefix('{') else {
            out.insert(ident(rest));
            continue;
        };
        // Members at depth 1: the segment after `{` and after each `,`.
        let mut depth = 1;
        let mut start_of_member = true;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 1 => break,
                '}' => depth -= 1,
                ',' if depth == 1 => start_of_member = true,
                c if c.is_whitespace() => {}
                _ if start_of_member && depth == 1 => {
                    out.insert(ident(&group[i..]));
                    start_of_member = false;
                }
                _ => {}
            }
        }
    }
    out.retain(|m| !m.is_empty() && m != "self" && m != "super");
    out
}

/// Every production file of the module tree rooted at `file`.
fn module_files(file: &Path, out: &mut Vec<PathBuf>) {
    out.push(file.to_owned());
    let text = read(file);
    let dir = match file.file_stem().and_then(|s| s.to_str()) {
        Some("mod") | Some("lib") | Some("main") => file.parent().map(Path::to_owned),
        Some(stem) => file.parent().map(|p| p.join(stem)),
        None => None,
    };
    let Some(dir) = dir else { return };
    for (name, test_only) in mod_decls(&text) {
        if test_only {
            continue;
        }
        let flat = dir.join(format!("{name}.rs"));
        let nested = dir.join(&name).join("mod.rs");
        let child = if flat.exists() { flat } else { nested };
        assert!(
            child.exists(),
            "module {name} of {} not found",
            file.display()
        );
        module_files(&child, out);
    }
}

/// Uses of a module's files, by the module's name.
fn module_uses(root: &Path, prefix: &str) -> BTreeSet<String> {
    let mut files = Vec::new();
    module_files(root, &mut files);
    files
        .iter()
        .flat_map(|f| uses(&production_code(&read(f)), prefix))
        .collect()
}

/// The crate's graph: each library module from lib.rs, and `cli` (the
/// binary: main.rs and what it declares).
fn crate_graph() -> Graph {
    let src = src_dir();
    let mut graph = Graph::new();
    for (name, test_only) in mod_decls(&read(&src.join("lib.rs"))) {
        if test_only {
            continue;
        }
        let flat = src.join(format!("{name}.rs"));
        let root = if flat.exists() {
            flat
        } else {
            src.join(&name).join("mod.rs")
        };
        let mut deps = module_uses(&root, "crate::");
        deps.remove(&name);
        graph.insert(name, deps);
    }
    graph.insert(
        "cli".to_owned(),
        module_uses(&src.join("main.rs"), "wg_appliance::"),
    );
    graph
}

/// A cycle in `graph`, as the path that closes it, if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.to_owned());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for d in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
}

#[test]
fn modules_use_only_their_layer_and_lower_ones_and_no_cycles() {
    let layers = layer_table(&read(&src_dir().join("lib.rs")));
    let graph = crate_graph();

    let in_code: BTreeSet<&String> = graph.keys().collect();
    let in_table: BTreeSet<&String> = layers.keys().collect();
    assert_eq!(
        in_code, in_table,
        "the layer table in lib.rs and the crate's modules differ. Fix: give each module a row"
    );
    // The scanner must see grouped imports, or it would pass on nothing.
    assert!(graph["daemon"].contains("datapath") && graph["cli"].contains("daemon"));

    for (m, deps) in &graph {
        for d in deps {
            let (Some(lm), Some(ld)) = (layers.get(m), layers.get(d)) else {
                panic!("`{m}` uses `{d}`, which is not a module of this crate's table");
            };
            assert!(
                ld <= lm,
                "`{m}` (layer {lm}) uses `{d}` (layer {ld}), a higher layer. Fix: move that \
                 code down, or change the table in lib.rs if the layering itself changed"
            );
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "modules use each other in a circle: {}. Fix: move what both need into a module \
             below them",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_scanner_reads_paths_groups_and_test_modules() {
    let code = "use crate::{\n    a::X,\n    b::{self, Y},\n    c,\n};\nfn f() { crate::d::g(); other_crate::e(); }\n";
    let want: BTreeSet<String> = ["a", "b", "c", "d"].map(String::from).into();
    assert_eq!(uses(code, "crate::"), want);
    let text = "use crate::a;\n// crate::b\n#[cfg(test)]\nmod tests {\n    use crate::c;\n}\nfn f() { crate::d::g() }\n";
    let want: BTreeSet<String> = ["a", "d"].map(String::from).into();
    assert_eq!(uses(&production_code(text), "crate::"), want);
    assert_eq!(
        mod_decls("pub mod a;\n#[cfg(test)]\nmod tests;\n"),
        vec![("a".to_owned(), false), ("tests".to_owned(), true)]
    );
}

#[test]
fn cycles_are_found() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g = Graph::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    assert_eq!(
        find_cycle(&graph(&[("a", "b"), ("b", "c"), ("a", "c")])),
        None
    );
    assert_eq!(
        find_cycle(&graph(&[("a", "b"), ("b", "c"), ("c", "a")])),
        Some(["a", "b", "c", "a"].map(String::from).to_vec())
    );
}
