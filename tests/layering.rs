//! The crate's layering, checked: every `use crate::...` and every
//! `crate::module::` path in every file under `src/` (tests included) must
//! name a module its own module may import. Lower layers never import
//! higher ones, so each layer can be read, tested and fuzzed without the
//! ones above it:
//!
//! ```text
//!   main, control                     the process and the control plane: anything
//!   config                            the file and its checks: anything below control
//!   shard                             the per-core runtime around the core
//!   proxy                             routing, failover, CANCEL, dialogs
//!   txn   balance   guard             state machines, destination sets, access control
//!   sip   udp   tls                   the SIP scanner and editor; batched UDP; rustls configs
//! ```
//!
//! A test module (`#[cfg(test)]`, or a file its parent declares under
//! it) may also use `crate::testkit`, which may import anything.
//!
//! Crude by design: comments and string literals are blanked out and paths
//! are read as text, so `super::` chains and `#[path]` attributes are not
//! followed. Edges are what `use` lines and written paths show.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What each top-level module may import (besides itself).
const LAYERS: &[(&str, &[&str])] = &[
    ("sip", &[]),
    ("udp", &[]),
    ("tls", &[]),
    ("balance", &["sip"]),
    ("guard", &["sip", "balance"]),
    ("txn", &["sip", "balance"]),
    ("proxy", &["sip", "txn", "balance", "guard"]),
    (
        "shard",
        &["sip", "udp", "tls", "txn", "balance", "guard", "proxy"],
    ),
    (
        "config",
        &[
            "sip", "udp", "tls", "txn", "balance", "guard", "proxy", "shard",
        ],
    ),
    (
        "control",
        &[
            "sip", "udp", "tls", "txn", "balance", "guard", "proxy", "shard", "config",
        ],
    ),
];

/// Modules exempt from the table: the crate root (it only declares the
/// modules), the binary, and the test kit.
const ANYTHING: &[&str] = &["lib", "main", "testkit"];

/// One reference from a file to a top-level module.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Edge {
    file: String,
    line: usize,
    from: String,
    to: String,
    /// Inside a test module.
    test: bool,
}

#[test]
fn no_module_imports_a_layer_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = rust_files(&src);
    assert!(files.len() > 20, "found only {files:?} under {src:?}");
    let test_files = test_only_files(&files);
    let mut broken: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut edges = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).expect("a source file is readable");
        let name = relative(&src, path);
        let whole_file_test = test_files.contains(path);
        for edge in edges_of(&name, &text, whole_file_test) {
            edges += 1;
            if let Err(why) = allowed(&edge) {
                broken
                    .entry((edge.from.clone(), edge.to.clone()))
                    .or_default()
                    .push(format!("src/{}:{} {why}", edge.file, edge.line));
            }
        }
    }
    assert!(
        edges > 50,
        "read only {edges} references: is the scanner broken?"
    );
    let report: Vec<String> = broken
        .iter()
        .map(|((from, to), places)| format!("{from} → {to}:\n    {}", places.join("\n    ")))
        .collect();
    assert!(
        broken.is_empty(),
        "{} edges against the layering (see tests/layering.rs):\n{}",
        broken.len(),
        report.join("\n")
    );
}

/// Ok, or why not.
fn allowed(edge: &Edge) -> Result<(), String> {
    if edge.from == edge.to || ANYTHING.contains(&edge.from.as_str()) {
        return Ok(());
    }
    if edge.to == "testkit" {
        return match edge.test {
            true => Ok(()),
            false => Err("(only a test module may use testkit)".to_string()),
        };
    }
    let Some((_, may)) = LAYERS.iter().find(|(module, _)| *module == edge.from) else {
        return Err(format!(
            "(module {:?} is not in the layering table)",
            edge.from
        ));
    };
    if may.contains(&edge.to.as_str()) {
        return Ok(());
    }
    if !LAYERS.iter().any(|(module, _)| *module == edge.to) && !ANYTHING.contains(&&*edge.to) {
        return Err(format!("(crate::{} is not a module in the table)", edge.to));
    }
    Err(format!("({} may import: {})", edge.from, may.join(", ")))
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn relative(src: &Path, path: &Path) -> String {
    path.strip_prefix(src)
        .expect("under src/")
        .to_string_lossy()
        .replace('\\', "/")
}

/// The top-level module a file belongs to: `shard` for `shard/mod.rs`
/// and `shard/sys.rs`, `config` for `config.rs`; `lib` and `main` for
/// the crate roots.
fn module_of(file: &str) -> String {
    let first = file.split('/').next().unwrap_or(file);
    first.strip_suffix(".rs").unwrap_or(first).to_string()
}

/// Files that are test modules as a whole: declared `#[cfg(test)] mod x;`
/// by their parent (or opening with `#![cfg(test)]`), and every file
/// below one.
fn test_only_files(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut roots = BTreeSet::new();
    for path in files {
        let code = code_only(&std::fs::read_to_string(path).expect("readable"));
        if code.trim_start().starts_with("#![cfg(test)]") {
            roots.insert(module_path(path));
        }
        for (start, end) in test_regions(&code) {
            let item: Vec<&str> = code[start..end].split_whitespace().collect();
            // `#[cfg(test)] mod name;` (attributes between allowed).
            if let Some(i) = item.iter().position(|w| *w == "mod") {
                if let Some(name) = item.get(i + 1).and_then(|n| n.strip_suffix(';')) {
                    roots.insert(module_path(path).join(name));
                }
            }
        }
    }
    files
        .iter()
        .filter(|path| {
            let stem = path.with_extension("");
            roots.iter().any(|root| stem.starts_with(root))
        })
        .cloned()
        .collect()
}

/// Where a file's module lives, which is also where its child modules
/// do: `shard/` for `shard/mod.rs`, `shard/sys` for `shard/sys.rs`.
fn module_path(path: &Path) -> PathBuf {
    let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
    match matches!(file, "mod.rs" | "lib.rs" | "main.rs") {
        true => path.parent().expect("a parent").to_path_buf(),
        false => path.with_extension(""),
    }
}

/// Every reference to a top-level module in one file's text.
fn edges_of(file: &str, text: &str, whole_file_test: bool) -> Vec<Edge> {
    let from = module_of(file);
    let code = code_only(text);
    let tests = test_regions(&code);
    let mut edges = Vec::new();
    for (offset, to) in crate_paths(&code) {
        let test = whole_file_test || tests.iter().any(|&(s, e)| (s..e).contains(&offset));
        edges.push(Edge {
            file: file.to_string(),
            line: code[..offset].matches('\n').count() + 1,
            from: from.clone(),
            to,
            test,
        });
    }
    edges
}

/// Each `crate::name` (and each name of a `crate::{a, b::c}` group) with
/// its offset; `$crate` (macros) and `crate::self` are not modules.
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(i) = code[at..].find("crate::") {
        let start = at + i;
        at = start + "crate::".len();
        let before = start.checked_sub(1).map(|b| bytes[b]);
        if before.is_some_and(|b| b == b'$' || b == b'_' || b.is_ascii_alphanumeric()) {
            continue;
        }
        let rest = &code[at..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(group.len(), |(j, _)| j);
            for (j, name) in top_level_names(&group[..end]) {
                found.push((at + 1 + j, name));
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != "self" {
                found.push((start, name));
            }
        }
    }
    found
}

/// The first path segment of each comma-separated entry of a `use`
/// group, with its offset in `group`.
fn top_level_names(group: &str) -> Vec<(usize, String)> {
    let mut names = Vec::new();
    let mut depth = 0;
    let mut entry_start = 0;
    for (i, c) in group.char_indices().chain([(group.len(), ',')]) {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                let entry = &group[entry_start..i];
                let trimmed = entry.trim_start();
                let name: String = trimmed
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != "self" {
                    names.push((entry_start + entry.len() - trimmed.len(), name));
                }
                entry_start = i + 1;
            }
            _ => {}
        }
    }
    names
}

/// The byte ranges of items under `#[cfg(test)]`: from the attribute to
/// the end of the item (its `;`, or the `}` that closes its body).
fn test_regions(code: &str) -> Vec<(usize, usize)> {
    let mut regions = Vec::new();
    let mut at = 0;
    while let Some(i) = code[at..].find("#[cfg(test)]") {
        let start = at + i;
        let mut depth = 0i32;
        let mut end = code.len();
        let mut in_attribute = false;
        for (j, c) in code[start..].char_indices() {
            match c {
                '#' if depth == 0 => in_attribute = true,
                '{' | '(' | '[' => depth += 1,
                '}' | ')' | ']' => {
                    depth -= 1;
                    if depth == 0 && c == ']' && in_attribute {
                        in_attribute = false;
                    } else if depth == 0 && c == '}' {
                        end = start + j + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = start + j + 1;
                    break;
                }
                _ => {}
            }
        }
        regions.push((start, end));
        at = start + 1;
    }
    regions
}

/// The text with every comment and string or char literal blanked
/// (newlines kept), so that neither doc text nor a string is read as a
/// path and braces in them do not count.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let ident_before = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    blank(&mut out, chars[i]);
                    i += 1;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    blank(&mut out, chars[i]);
                    i += 1;
                }
                blank(&mut out, chars[i]);
                i += 1;
                if depth == 0 {
                    break;
                }
            }
        } else if let (false, Some(hashes)) = (ident_before, raw_string_start(&chars[i..])) {
            // r"..", r#".."#, br"..": no escapes, ends at `"` and the hashes.
            let open = hashes.1;
            let close: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes.0))
                .collect();
            for _ in 0..open {
                blank(&mut out, chars[i]);
                i += 1;
            }
            while i < chars.len() && !chars[i..].starts_with(&close) {
                blank(&mut out, chars[i]);
                i += 1;
            }
            for _ in 0..close.len().min(chars.len() - i) {
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == '"' {
            blank(&mut out, c);
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
                if i < chars.len() {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
            if i < chars.len() {
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == '\'' && !ident_before {
            // A char literal ('x', '\n', '\u{..}'), not a lifetime.
            let len = match (next, chars.get(i + 2)) {
                (Some('\\'), _) => chars[i + 2..]
                    .iter()
                    .position(|&c| c == '\'')
                    .map(|p| p + 3),
                (Some(_), Some('\'')) => Some(3),
                _ => None,
            };
            match len {
                Some(len) => {
                    for _ in 0..len.min(chars.len() - i) {
                        blank(&mut out, chars[i]);
                        i += 1;
                    }
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// At a raw string's start (`r"`, `r#"`, `br#"`): its hash count and the
/// length of its opening.
fn raw_string_start(chars: &[char]) -> Option<(usize, usize)> {
    let prefix = match chars {
        ['b', 'r', ..] => 2,
        ['r', ..] => 1,
        _ => return None,
    };
    let hashes = chars[prefix..].iter().take_while(|&&c| c == '#').count();
    (chars.get(prefix + hashes) == Some(&'"')).then_some((hashes, prefix + hashes + 1))
}

#[test]
fn the_scanner_reads_groups_and_skips_comments_strings_and_macros() {
    let text = r##"//! Doc: crate::control is not an edge.
use crate::{balance::{Routing, State}, sip::lex, self};
use crate::txn::Millis; // crate::shard in a comment
fn f() -> &'static str { let _c = '"'; "crate::config" }
macro_rules! m { () => { $crate::guard::x() } }
const RAW: &str = r#"crate::udp "quoted""#;
fn g() { crate::proxy::go(); }
#[cfg(test)]
mod tests {
    use crate::testkit::Lab;
    use crate::shard::Config;
}
"##;
    let edges = edges_of("txn/mod.rs", text, false);
    let seen: Vec<(usize, &str, bool)> = edges
        .iter()
        .map(|e| (e.line, e.to.as_str(), e.test))
        .collect();
    assert_eq!(
        seen,
        [
            (2, "balance", false),
            (2, "sip", false),
            (3, "txn", false),
            (7, "proxy", false),
            (10, "testkit", true),
            (11, "shard", true),
        ]
    );
    let verdicts: Vec<bool> = edges.iter().map(|e| allowed(e).is_ok()).collect();
    assert_eq!(verdicts, [true, true, true, false, true, false]);
    let production = Edge {
        test: false,
        ..edges[4].clone()
    };
    assert!(allowed(&production).is_err(), "testkit only in tests");
}

#[test]
fn module_files_and_test_files_are_told_apart() {
    assert_eq!(module_of("shard/sys.rs"), "shard");
    assert_eq!(module_of("config.rs"), "config");
    assert_eq!(module_of("lib.rs"), "lib");
    let code = code_only("#[cfg(test)]\n#[path = \"t.rs\"]\nmod tests;\nfn x() {}\n");
    let regions = test_regions(&code);
    assert_eq!(regions.len(), 1);
    assert!(code[regions[0].0..regions[0].1].ends_with("mod tests;"));
}
