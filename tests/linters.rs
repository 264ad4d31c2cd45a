//! Source rules no compiler checks, read from `src/` as text (formatting
//! and clippy run in scripts/test.sh):
//! - every `unsafe` block and `unsafe impl` has a `// SAFETY:` comment
//!   right above it (or at the end of its line); consecutive lines that
//!   each open an unsafe block may share one;
//! - the two planes never import each other: nothing in `src/control`
//!   names `crate::shard` (or reaches it through `super::`), nothing in
//!   `src/shard` names `crate::control`.

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
