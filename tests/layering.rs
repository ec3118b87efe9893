//! The layering rule of docs/architecture.md, enforced: every `crate::…` path in `src/` may only
//! name a layer below its own (or a leaf utility), `endpoint` and `host` never name each other,
//! the appliance side (`appliance`, `mgmt`) never names the host side (`host`, `drivers`), `mgmt`
//! never names `appliance` (the CLI adapts one to the other), and no two files of the library import each other (directly or through a longer cycle).
//!
//! The scan is textual (comments, strings and `#[cfg(test)] mod tests` blocks at the end of a
//! file are skipped: unit tests, like `tests/`, may use everything), which is enough for the
//! way this crate writes its imports: `use crate::a::b`, `use super::b`, `crate::a::f()`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, bottom first; a layer may import only layers of a lower rank.
const LAYERS: &[(&str, u8)] = &[
    ("tlp", 0),
    ("pci", 1),
    ("transport", 2),
    ("endpoint", 3),
    ("host", 3),
    ("drivers", 4),
    ("appliance", 5),
    ("mgmt", 6),
];

/// Leaf utilities: importable from every layer, and importing no layer themselves (only each
/// other).
const UTILITIES: &[&str] = &["sys", "sync", "ratelimit", "probe"];

/// Pairs (importer, imported) that the rank order alone would allow but the design forbids:
/// the appliance side meets the host side only on the wire.
const FORBIDDEN: &[(&str, &str)] = &[
    ("appliance", "host"),
    ("appliance", "drivers"),
    ("mgmt", "host"),
    ("mgmt", "drivers"),
    // The management API sits beside the appliance, not on it: it reaches the pool through its
    // own `mgmt::Pool` trait, and only the CLI adapts the appliance to it.
    ("mgmt", "appliance"),
];

fn rank(layer: &str) -> Option<u8> {
    LAYERS.iter().find(|(l, _)| *l == layer).map(|(_, r)| *r)
}

/// A library source file and the module path it defines (`["endpoint", "nvme", "worker"]`).
#[derive(Debug)]
struct SourceFile {
    path: PathBuf,
    module: Vec<String>,
    text: String,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file under `src/` (`src/a/mod.rs` → `a`, `src/a/b.rs` → `a::b`).
fn module_of(src: &Path, path: &Path) -> Vec<String> {
    let rel = path.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    parts
}

/// The library's files: everything under `src/` except the binary (`main.rs`, `cli/`).
fn library_files() -> Vec<SourceFile> {
    source_files(false)
}

/// The binary's command-line modules (`src/cli`, mounted as `crate::pcietun_cli` by main.rs).
fn cli_files() -> Vec<SourceFile> {
    source_files(true)
}

fn source_files(cli: bool) -> Vec<SourceFile> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    paths
        .into_iter()
        .filter(|p| {
            let rel = p.strip_prefix(&src).expect("under src");
            rel != Path::new("main.rs") && rel.starts_with("cli") == cli
        })
        .map(|path| {
            let text = fs::read_to_string(&path).expect("read source");
            let mut module = module_of(&src, &path);
            if cli {
                module[0] = "pcietun_cli".to_owned();
            }
            SourceFile {
                module,
                text: strip(&text),
                path,
            }
        })
        .collect()
}

/// Source text without comments, string/char literals and a trailing `#[cfg(test)] mod … {…}`.
fn strip(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'r' if matches!(b.get(i + 1), Some(b'"') | Some(b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                // Raw string r"…" / r#"…"#.
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                j += 1;
                'raw: while j < b.len() {
                    if b[j] == b'"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&b'#')) {
                        j += 1 + hashes;
                        break 'raw;
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push_str("\"\"");
            }
            b'\'' => {
                // A char literal ('a', '\n', '\u{1f}') or a lifetime ('a): skip only literals.
                if b.get(i + 1) == Some(&b'\\') {
                    let mut j = i + 2;
                    while j < b.len() && b[j] != b'\'' {
                        j += 1;
                    }
                    i = j + 1;
                    out.push_str("' '");
                } else if b.get(i + 2) == Some(&b'\'') {
                    i += 3;
                    out.push_str("' '");
                } else {
                    out.push('\'');
                    i += 1;
                }
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    if let Some(pos) = out.find("#[cfg(test)]\nmod ") {
        out.truncate(pos);
    }
    out
}

/// Every path the text names from `crate::`, `super::` or `self::`, as absolute module paths.
fn referenced_paths(file: &SourceFile) -> Vec<Vec<String>> {
    let text = &file.text;
    let mut paths = Vec::new();
    // `self::` and `super::` are relative to the module that the file *is* (a `mod.rs` is its
    // directory's module).
    let here = &file.module;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let at_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = &text[i..];
        let (root, skip): (Vec<String>, usize) = if at_word && rest.starts_with("crate::") {
            (Vec::new(), "crate::".len())
        } else if at_word && rest.starts_with("super::") {
            let mut base = here.clone();
            let mut n = 0;
            while text[i + n..].starts_with("super::") {
                base.pop();
                n += "super::".len();
            }
            (base, n)
        } else if at_word && rest.starts_with("self::") {
            (here.clone(), "self::".len())
        } else {
            i += 1;
            continue;
        };
        i += skip;
        let (mut found, used) = parse_tree(&text[i..]);
        for p in found.iter_mut() {
            let mut full = root.clone();
            full.append(p);
            *p = full;
        }
        paths.extend(found);
        i += used.max(1);
    }
    paths
}

/// Parse a use tree (`a::b`, `a::{b, c::d}`, `{x, y}`): the paths it names, and bytes used.
fn parse_tree(s: &str) -> (Vec<Vec<String>>, usize) {
    let b = s.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    skip_ws(&mut i);
    if b.get(i) == Some(&b'{') {
        i += 1;
        let mut all = Vec::new();
        loop {
            skip_ws(&mut i);
            match b.get(i) {
                None => break,
                Some(b'}') => {
                    i += 1;
                    break;
                }
                Some(b',') => {
                    i += 1;
                    continue;
                }
                _ => {}
            }
            let (sub, used) = parse_tree(&s[i..]);
            all.extend(sub);
            if used == 0 {
                i += 1;
            }
            i += used;
        }
        return (all, i);
    }
    let start = i;
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
        i += 1;
    }
    if i == start {
        return (vec![Vec::new()], i);
    }
    let ident = s[start..i].to_owned();
    if s[i..].starts_with("::") {
        let (subs, used) = parse_tree(&s[i + 2..]);
        let subs = subs
            .into_iter()
            .map(|mut p| {
                p.insert(0, ident.clone());
                p
            })
            .collect();
        return (subs, i + 2 + used);
    }
    (vec![vec![ident]], i)
}

/// The library file a path lands in: the longest module prefix that is a file.
fn resolve(modules: &BTreeMap<Vec<String>, usize>, path: &[String]) -> Option<usize> {
    (1..=path.len())
        .rev()
        .find_map(|n| modules.get(&path[..n]).copied())
}

#[test]
fn imports_point_down_the_layers() {
    let files = library_files();
    assert!(files.len() > 50, "found only {} library files", files.len());
    let mut violations = Vec::new();
    let mut seen_layers = BTreeSet::new();
    for file in &files {
        let Some(layer) = file.module.first() else {
            continue; // lib.rs: declares the layers
        };
        seen_layers.insert(layer.clone());
        let is_utility = UTILITIES.contains(&layer.as_str());
        let own = rank(layer);
        assert!(
            own.is_some() || is_utility,
            "{}: `{layer}` is neither a layer of docs/architecture.md nor a leaf utility; add \
             it to the architecture document and to LAYERS or UTILITIES here",
            file.path.display()
        );
        for path in referenced_paths(file) {
            let Some(target) = path.first() else { continue };
            if target == layer {
                continue;
            }
            let target_utility = UTILITIES.contains(&target.as_str());
            let ok = if is_utility {
                target_utility // a utility names no layer (another utility is fine)
            } else if target_utility {
                true
            } else {
                match (own, rank(target)) {
                    (Some(a), Some(b)) => {
                        b < a && !FORBIDDEN.contains(&(layer.as_str(), target.as_str()))
                    }
                    // Not a module of ours (a macro's `crate::` or a std path): not a layer.
                    (_, None) => true,
                    (None, _) => false,
                }
            };
            if !ok {
                violations.push(format!(
                    "{}: `{layer}` imports `{}`",
                    file.path.display(),
                    path.join("::")
                ));
            }
        }
    }
    violations.sort();
    violations.dedup();
    assert!(
        violations.is_empty(),
        "imports that break the layering of docs/architecture.md:\n  {}",
        violations.join("\n  ")
    );
    for must in [
        "tlp",
        "pci",
        "transport",
        "endpoint",
        "host",
        "drivers",
        "appliance",
        "mgmt",
    ] {
        assert!(
            seen_layers.contains(must),
            "layer {must} not found under src/"
        );
    }
}

/// Files of one layer import each other only along a DAG (parents and children excepted: a
/// `mod.rs` declares its children and re-exports their items).
#[test]
fn no_file_imports_cycle() {
    let mut files = library_files();
    files.extend(cli_files());
    let modules: BTreeMap<Vec<String>, usize> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.module.clone(), i))
        .collect();
    let mut edges: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); files.len()];
    for (i, file) in files.iter().enumerate() {
        for path in referenced_paths(file) {
            let Some(j) = resolve(&modules, &path) else {
                continue;
            };
            let (a, b) = (&file.module, &files[j].module);
            let related = a.starts_with(b) || b.starts_with(a);
            if j != i && !related {
                edges[i].insert(j);
            }
        }
    }
    // Tarjan's strongly connected components; any component of more than one file is a cycle.
    struct Tarjan<'a> {
        edges: &'a [BTreeSet<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        cycles: Vec<Vec<usize>>,
    }
    impl Tarjan<'_> {
        fn visit(&mut self, v: usize) {
            self.index[v] = Some(self.next);
            self.low[v] = self.next;
            self.next += 1;
            self.stack.push(v);
            self.on_stack[v] = true;
            for &w in self.edges[v].iter() {
                match self.index[w] {
                    None => {
                        self.visit(w);
                        self.low[v] = self.low[v].min(self.low[w]);
                    }
                    Some(iw) if self.on_stack[w] => self.low[v] = self.low[v].min(iw),
                    Some(_) => {}
                }
            }
            if Some(self.low[v]) == self.index[v] {
                let mut component = Vec::new();
                loop {
                    let w = self.stack.pop().expect("stack");
                    self.on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.cycles.push(component);
                }
            }
        }
    }
    let n = files.len();
    let mut t = Tarjan {
        edges: &edges,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        cycles: Vec::new(),
    };
    for v in 0..n {
        if t.index[v].is_none() {
            t.visit(v);
        }
    }
    let report: Vec<String> = t
        .cycles
        .iter()
        .map(|c| {
            let mut names: Vec<String> = c.iter().map(|&i| files[i].module.join("::")).collect();
            names.sort();
            names.join(" <-> ")
        })
        .collect();
    assert!(
        report.is_empty(),
        "files that import each other (split the shared part into its own module):\n  {}",
        report.join("\n  ")
    );
}

/// The scanner itself: paths in use trees, `super::`, and what it must ignore.
#[test]
fn scanner_reads_use_trees_and_skips_comments() {
    let file = SourceFile {
        path: PathBuf::from("src/host/root.rs"),
        module: vec!["host".into(), "root".into()],
        text: strip(
            "use crate::{tlp::{self, Bdf}, pci::ConfigSpace};\n\
             // use crate::endpoint::Proxy;\n\
             let s = \"crate::endpoint::x\";\n\
             use super::dma::Windows;\n\
             fn f() { crate::transport::Config::default(); }\n\
             #[cfg(test)]\nmod tests { use crate::endpoint::Thing; }\n",
        ),
    };
    let mut got: Vec<String> = referenced_paths(&file)
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "host::dma::Windows",
            "pci::ConfigSpace",
            "tlp::Bdf",
            "tlp::self",
            "transport::Config::default"
        ]
    );
}

/// docs/architecture.md lists every layer the code has, and the code has every layer it lists.
#[test]
fn architecture_document_lists_the_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = fs::read_to_string(root.join("docs/architecture.md")).expect("docs/architecture.md");
    let mut on_disk = BTreeSet::new();
    for entry in fs::read_dir(root.join("src")).expect("src") {
        let path = entry.expect("entry").path();
        let name = path
            .file_stem()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if name != "lib" && name != "main" {
            on_disk.insert(name);
        }
    }
    for name in &on_disk {
        assert!(
            doc.contains(&format!("src/{name}")),
            "src/{name} exists but docs/architecture.md does not describe it"
        );
        assert!(
            rank(name).is_some() || UTILITIES.contains(&name.as_str()) || name == "cli",
            "src/{name} is in no layer of this test"
        );
    }
    for (layer, _) in LAYERS {
        let planned = doc.contains(&format!("src/{layer}")) && !on_disk.contains(*layer);
        assert!(
            on_disk.contains(*layer) || planned,
            "layer {layer} is neither in src/ nor in docs/architecture.md"
        );
        if planned {
            let line = doc
                .lines()
                .find(|l| l.contains(&format!("src/{layer} ")))
                .unwrap_or_default();
            assert!(
                line.contains("planned"),
                "docs/architecture.md describes src/{layer}, which does not exist: say it is planned"
            );
        }
    }
    let lib = fs::read_to_string(root.join("src/lib.rs")).expect("src/lib.rs");
    for name in on_disk.iter().filter(|n| *n != "cli") {
        assert!(
            lib.contains(&format!("pub mod {name};")),
            "src/lib.rs does not declare {name}"
        );
    }
}
