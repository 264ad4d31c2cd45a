//! The real Kubernetes clients in `$VIMANA_TOOLS` (else `<repo>/../shared/tools`):
//! crictl and critest. A test that needs one skips with a message when it is
//! absent, and fails when `CI=true`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn tools_dir() -> PathBuf {
    std::env::var_os("VIMANA_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tools"))
}

/// The tool's path, or `None` after saying why the test skips (a panic
/// under CI).
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = tools_dir().join(name);
    if path.is_file() {
        return Some(path);
    }
    let why = format!(
        "{} not found (set VIMANA_TOOLS to the directory holding {name})",
        path.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// Runs crictl against `socket`; returns stdout, panicking with stderr on
/// failure.
pub fn crictl(crictl: &Path, socket: &Path, args: &[&str]) -> String {
    let (ok, out, err) = crictl_result(crictl, socket, args);
    assert!(ok, "crictl {args:?} failed: {err}");
    out
}

/// Runs crictl; (success, stdout, stderr).
pub fn crictl_result(crictl: &Path, socket: &Path, args: &[&str]) -> (bool, String, String) {
    let endpoint = format!("unix://{}", socket.display());
    let out = Command::new(crictl)
        .args([
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
        ])
        .args(["--timeout", "20s"])
        .args(args)
        .env("HOME", "/nonexistent")
        .output()
        .expect("run crictl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// crictl with `-o json`, parsed.
pub fn crictl_json(crictl: &Path, socket: &Path, args: &[&str]) -> serde_json::Value {
    let out = self::crictl(crictl, socket, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("crictl {args:?}: {e}: {out}"))
}

/// A `UInt64Value` as crictl prints it (`{"value": "123"}`, a string in
/// protobuf JSON), or 0 when absent.
pub fn u64_at(v: &serde_json::Value, pointer: &str) -> Option<u64> {
    let field = v.pointer(pointer)?;
    let value = field.get("value").unwrap_or(field);
    match value {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

pub mod image;
