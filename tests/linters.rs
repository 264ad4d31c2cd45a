//! Source rules no compiler checks, read from `src/` as text (formatting
//! and clippy run in scripts/test.sh):
//! - every `unsafe` block and `unsafe impl` has a `// SAFETY:` comment
//!   right above it (or at the end of its line); consecutive lines that
//!   each open an unsafe block may share one;
//! - the two planes never import each other: nothing in `src/control`
//!   names `crate::shard` (or reaches it through `super::`), nothing in
//!   `src/shard` names `crate::control`;
//! - ARCHITECTURE.md names every file of src/, benches/, tests/common/,
//!   fuzz/ and scripts/ (in a room map, or by its whole path), and its room
//!   maps name no file that is gone.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

fn src(sub: &str) -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(sub);
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(!files.is_empty(), "no Rust files under {}", root.display());
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            (path, text)
        })
        .collect()
}

/// The line without its `//` comment and with string literals blanked
/// (rough, but enough for our sources: no raw strings hold `unsafe`).
fn code_of(line: &str) -> String {
    let mut out = String::new();
    let mut in_str = false;
    let mut escaped = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            out.push(' ');
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                out.push(' ');
            }
            '/' if chars.peek() == Some(&'/') => break,
            _ => out.push(c),
        }
    }
    out
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether the code opens an unsafe block or an unsafe impl.
fn opens_unsafe(code: &str) -> bool {
    let mut rest = code;
    let mut offset = 0;
    while let Some(i) = rest.find("unsafe") {
        let at = offset + i;
        let before = code[..at].chars().next_back();
        let after = &code[at + "unsafe".len()..];
        let word = before.is_none_or(|c| !is_word_char(c))
            && after.chars().next().is_none_or(|c| !is_word_char(c));
        let tail = after.trim_start();
        if word
            && (tail.starts_with('{')
                || (tail.starts_with("impl") && !tail["impl".len()..].starts_with(is_word_char)))
        {
            return true;
        }
        offset = at + "unsafe".len();
        rest = &code[offset..];
    }
    false
}

fn is_comment(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("//") || t.starts_with("/*") || t.starts_with('*')
}

/// `file:line` of every unsafe block or impl without its SAFETY comment.
fn unsafe_without_safety(files: &[(PathBuf, String)]) -> Vec<String> {
    let mut missing = Vec::new();
    for (path, text) in files {
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            if !opens_unsafe(&code_of(line)) || line.contains("SAFETY:") {
                continue;
            }
            // Up to the start of the statement (`let x =` broken before
            // `unsafe` by rustfmt) and over lines that open unsafe blocks
            // too; then the comment block right above must say SAFETY.
            let mut i = n;
            while i > 0 && !is_comment(lines[i - 1]) && !lines[i - 1].contains("SAFETY:") {
                let above = code_of(lines[i - 1]);
                let continued = above.trim_end().ends_with('=') || above.trim_end().ends_with('(');
                if !continued && !opens_unsafe(&above) {
                    break;
                }
                i -= 1;
            }
            let mut justified = i > 0 && lines[i - 1].contains("SAFETY:");
            while !justified && i > 0 && is_comment(lines[i - 1]) {
                i -= 1;
                justified = lines[i].contains("SAFETY:");
            }
            if !justified {
                missing.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    missing
}

/// The top-level names a `use crate::{...}` (or `super::{...}`) list
/// brings in, as `crate::name`.
fn grouped_paths(statement: &str, root: &str) -> Vec<String> {
    let mut out = Vec::new();
    let prefix = format!("{root}::{{");
    let Some(start) = statement.find(&prefix) else {
        return out;
    };
    let mut depth = 0;
    let mut item = String::new();
    for c in statement[start + prefix.len() - 1..].chars() {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    out.push(format!("{root}::{}", item.trim()));
                    break;
                }
            }
            ',' if depth == 1 => {
                out.push(format!("{root}::{}", item.trim()));
                item.clear();
                continue;
            }
            _ => {}
        }
        if depth == 1 {
            item.push(c);
        }
    }
    out
}

/// Whether the code starts a `use` statement (any visibility).
fn starts_use(code: &str) -> bool {
    let mut t = code.trim_start();
    if let Some(rest) = t.strip_prefix("pub") {
        t = rest.trim_start();
        if t.starts_with('(') {
            t = t.split_once(')').map_or("", |(_, r)| r).trim_start();
        }
    }
    t.starts_with("use ")
}

/// `file:line` of every place in `files` that names the plane `other`.
fn imports_of(files: &[(PathBuf, String)], other: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (path, text) in files {
        let mut statement = String::new();
        let mut first_line = 0;
        for (n, line) in text.lines().enumerate() {
            let code = code_of(line);
            let compact: String = code.chars().filter(|c| !c.is_whitespace()).collect();
            // Any path through crate:: or a chain of super:: to the other plane.
            let direct = compact.contains(&format!("crate::{other}"))
                || compact.match_indices("super::").any(|(i, _)| {
                    let mut rest = &compact[i..];
                    while let Some(r) = rest.strip_prefix("super::") {
                        rest = r;
                    }
                    rest.starts_with(other) && !rest[other.len()..].starts_with(is_word_char)
                });
            if direct {
                found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                continue;
            }
            // Grouped imports: `use crate::{pool, shard};` over several lines.
            if !statement.is_empty() || starts_use(&code) {
                if statement.is_empty() {
                    first_line = n;
                }
                statement.push_str(&compact);
                if compact.contains(';') {
                    let names = grouped_paths(&statement, "crate");
                    let wanted = format!("crate::{other}");
                    if names
                        .iter()
                        .any(|p| p == &wanted || p.starts_with(&format!("{wanted}::")))
                    {
                        found.push(format!(
                            "{}:{}: {}",
                            path.display(),
                            first_line + 1,
                            statement
                        ));
                    }
                    statement.clear();
                }
            }
        }
    }
    found
}

#[test]
fn every_unsafe_block_says_why_it_is_sound() {
    let missing = unsafe_without_safety(&src(""));
    assert!(
        missing.is_empty(),
        "unsafe without a `// SAFETY:` comment right above:\n{}",
        missing.join("\n")
    );
}

#[test]
fn control_never_imports_shard() {
    let found = imports_of(&src("control"), "shard");
    assert!(
        found.is_empty(),
        "src/control uses the data plane:\n{}",
        found.join("\n")
    );
}

#[test]
fn shard_never_imports_control() {
    let found = imports_of(&src("shard"), "control");
    assert!(
        found.is_empty(),
        "src/shard uses the control plane:\n{}",
        found.join("\n")
    );
}

/// The checks themselves catch what they should, on made-up sources.
#[test]
fn the_checks_see_what_they_look_for() {
    let file = |text: &str| vec![(PathBuf::from("x.rs"), text.to_owned())];
    let bad = "fn f() {\n    let x = unsafe { g() };\n}\n";
    assert_eq!(unsafe_without_safety(&file(bad)).len(), 1);
    let comment_not_safety = "// calls g\nlet x = unsafe { g() };\n";
    assert_eq!(unsafe_without_safety(&file(comment_not_safety)).len(), 1);
    let far = "// SAFETY: g is fine\nlet y = 1;\nlet x = unsafe { g() };\n";
    assert_eq!(unsafe_without_safety(&file(far)).len(), 1);
    let imp = "struct S;\nunsafe impl Send for S {}\n";
    assert_eq!(unsafe_without_safety(&file(imp)).len(), 1);
    let good = "// SAFETY: g has no preconditions.\n// More words.\nlet x = unsafe { g() };\n\
                let z = unsafe { h() }; // SAFETY: h neither\n\
                // SAFETY: both zeroed are plain data\n\
                let a: A = unsafe { zeroed() };\nlet b: B = unsafe { zeroed() };\n\
                // SAFETY: S holds no thread-bound state.\nunsafe impl Send for S {}\n\
                // SAFETY: the statement's comment covers its continuation.\n\
                let c =\n    unsafe { g() };\n";
    assert!(unsafe_without_safety(&file(good)).is_empty());
    let not_blocks = "unsafe fn f() {}\nlet unsafe_names = 1;\nlet s = \"unsafe { }\";\n\
                      // unsafe { in a comment }\n";
    assert!(unsafe_without_safety(&file(not_blocks)).is_empty());

    assert_eq!(
        imports_of(&file("use crate::shard::tls;\n"), "shard").len(),
        1
    );
    assert_eq!(
        imports_of(&file("use super::super::shard;\n"), "shard").len(),
        1
    );
    assert_eq!(
        imports_of(
            &file("use crate::{\n    pool::Reader,\n    shard,\n};\n"),
            "shard"
        )
        .len(),
        1
    );
    assert_eq!(
        imports_of(&file("let x = crate::control::Error::X;\n"), "control").len(),
        1
    );
    assert_eq!(
        imports_of(
            &file("pub(crate) use crate::{pool, control::Error};\n"),
            "control"
        )
        .len(),
        1
    );
    let fine = "use crate::pool::Reader;\nuse super::flow_control;\n\
                use crate::{pool, sharding};\n// crate::shard in a comment\n";
    assert!(imports_of(&file(fine), "shard").is_empty());
    assert!(imports_of(&file(fine), "control").is_empty());
}

// ---- ARCHITECTURE.md covers the tree ----

/// The files ARCHITECTURE.md must name, relative to the repository root:
/// every `.rs` under src/, benches/, tests/common/ and fuzz/ (its own
/// target directory aside), and every file under scripts/.
fn files_to_map(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, any_file: bool, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                if !matches!(name, "target" | "corpus" | "artifacts") {
                    walk(&path, any_file, out);
                }
            } else if any_file || name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    for (dir, any_file) in [
        ("src", false),
        ("benches", false),
        ("tests/common", false),
        ("fuzz", false),
        ("scripts", true),
    ] {
        walk(&root.join(dir), any_file, &mut paths);
    }
    paths
        .iter()
        .map(|p| {
            p.strip_prefix(root)
                .expect("under the root")
                .display()
                .to_string()
        })
        .collect()
}

/// The paths the room maps name: every code block whose first line is a
/// directory (`src/`, `benches/`, `fuzz/`) is a tree by indentation, one
/// entry per line (`dir/` opens a directory, `a.rs, b.rs  what` names
/// several), prose after the names.
fn room_map(doc: &str) -> Vec<String> {
    let is_name = |t: &str| {
        !t.is_empty()
            && (t.ends_with('/') || t.contains('.'))
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c))
    };
    let mut out = Vec::new();
    for block in doc.split("```").skip(1).step_by(2) {
        let first = block.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        if !(first.ends_with('/') && is_name(first)) {
            continue;
        }
        let mut dirs: Vec<(usize, String)> = Vec::new();
        for line in block.lines() {
            let indent = line.len() - line.trim_start().len();
            let mut names = Vec::new();
            for token in line.split_whitespace() {
                let more = token.ends_with(',');
                names.push(token.trim_end_matches(','));
                if !more {
                    break;
                }
            }
            if names.is_empty() || !names.iter().all(|n| is_name(n)) {
                continue;
            }
            while dirs.last().is_some_and(|(i, _)| *i >= indent) {
                dirs.pop();
            }
            let parent = dirs.last().map_or(String::new(), |(_, d)| d.clone());
            for name in names {
                let path = format!("{parent}{name}");
                if name.ends_with('/') {
                    dirs.push((indent, path));
                } else {
                    out.push(path);
                }
            }
        }
    }
    out
}

/// Files of the tree that ARCHITECTURE.md names neither in the room map
/// nor anywhere else by their whole path; and room-map entries that name no
/// file (a removed or renamed one).
fn unmapped(root: &Path, doc: &str) -> (Vec<String>, Vec<String>) {
    let map = room_map(doc);
    let files = files_to_map(root);
    let missing = files
        .iter()
        .filter(|f| !map.contains(f) && !doc.contains(f.as_str()))
        .cloned()
        .collect();
    let stale = map.into_iter().filter(|p| !root.join(p).exists()).collect();
    (missing, stale)
}

#[test]
fn architecture_names_every_source_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let (missing, stale) = unmapped(root, &doc);
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names neither in its room map nor by path:\n{}",
        missing.join("\n")
    );
    assert!(
        stale.is_empty(),
        "ARCHITECTURE.md's room map names files that do not exist:\n{}",
        stale.join("\n")
    );
    assert!(files_to_map(root).len() > 100, "the walk found the tree");
}

/// The room-map parser on made-up maps: nesting, lists, prose and
/// non-tree blocks skipped.
#[test]
fn the_room_map_parser_reads_a_tree() {
    let doc = "# A\n\n```\nsrc/\n  main.rs     the binary (see lib.rs)\n  cli/        tools\n    a.rs, b.rs   two\n      (c.rs: prose, not an entry)\n  d/e.rs      nested by name\nbenches/\n  f.rs\n```\n\ntext\n\n```\nmod.rs \u{2192} g.rs\n```\n\n```\nfuzz/\n  h.rs\n```\n";
    assert_eq!(
        room_map(doc),
        [
            "src/main.rs",
            "src/cli/a.rs",
            "src/cli/b.rs",
            "src/d/e.rs",
            "benches/f.rs",
            "fuzz/h.rs"
        ]
    );
}
