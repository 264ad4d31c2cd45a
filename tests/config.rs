//! The config file of `vimanad serve`, through the real binary: every flag
//! is settable from it, flags and the environment override it, and errors
//! name the file, the line and the key.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn vimanad(args: &[&str]) -> Output {
    Command::new(common::vimanad()).args(args).output().unwrap()
}

fn check(file: &Path) -> Output {
    vimanad(&["config", "check", file.to_str().unwrap()])
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `key=value` pairs of an effective-configuration line.
fn effective(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A value other than the default for each setting, as TOML and as the
/// effective line shows it. A new flag without a row here fails the test.
fn sample(key: &str) -> Option<(&'static str, &'static str)> {
    Some(match key {
        "state-dir" => ("\"/tmp/vimanad-cfg/state\"", "/tmp/vimanad-cfg/state"),
        "run-dir" => ("\"/tmp/vimanad-cfg/run\"", "/tmp/vimanad-cfg/run"),
        "cri-socket" => ("\"/tmp/vimanad-cfg/cri.sock\"", "/tmp/vimanad-cfg/cri.sock"),
        "start-timeout" => ("\"7s\"", "7s"),
        "pod-ip" => ("\"10.1.2.3\"", "10.1.2.3"),
        "runtime-handler" => ("\"vimana-test\"", "vimana-test"),
        "listen" => ("\"127.0.0.1:8443\"", "127.0.0.1:8443"),
        "listen-tcp" => ("\"127.0.0.1:8444\"", "127.0.0.1:8444"),
        "listen-h2c" => ("\"127.0.0.1:8080\"", "127.0.0.1:8080"),
        "tcp-handshake-timeout" => ("\"4s\"", "4s"),
        "shards" => ("3", "3"),
        "tls-cert" => ("\"/tmp/vimanad-cfg/cert.pem\"", "/tmp/vimanad-cfg/cert.pem"),
        "tls-key" => ("\"/tmp/vimanad-cfg/key.pem\"", "/tmp/vimanad-cfg/key.pem"),
        "max-message-size" => ("1048576", "1048576"),
        "max-connections" => ("500", "500"),
        "retry-above" => ("100", "100"),
        "retry-handshakes-above" => ("50", "50"),
        "max-handshakes-per-source" => ("8", "8"),
        "max-connections-per-source" => ("40", "40"),
        "handshake-idle-timeout" => ("\"3s\"", "3s"),
        "handshake-timeout" => ("\"7s\"", "7s"),
        "stateless-resets-per-second" => ("20", "20"),
        "max-streams" => ("64", "64"),
        "idle-timeout" => ("\"45s\"", "45s"),
        "conn-buffer-limit" => ("1000000", "1000000"),
        "shard-buffer-limit" => ("50000000", "50000000"),
        "buffer-grace" => ("\"3s\"", "3s"),
        "reset-rate" => ("50", "50"),
        "call-idle-timeout" => ("\"2m\"", "2m"),
        "upstream-queue" => ("99", "99"),
        "upstream-wait" => ("\"4s\"", "4s"),
        "drain-timeout" => ("\"3s\"", "3s"),
        "cgroup-parent" => ("\"vimanad-cfg\"", "vimanad-cfg"),
        "stream-address" => ("\"127.0.0.1:10010\"", "127.0.0.1:10010"),
        "seccomp-profile-root" => ("\"/tmp/vimanad-cfg/seccomp\"", "/tmp/vimanad-cfg/seccomp"),
        "pids-limit" => ("77", "77"),
        "log-format" => ("\"json\"", "json"),
        "metrics-listen" => ("\"127.0.0.1:9999\"", "127.0.0.1:9999"),
        "insecure-registry" => ("[\"a.test:5000\", \"b.test\"]", "a.test:5000,b.test"),
        "downstream-cri" => (
            "\"unix:///run/cfg/containerd.sock\"",
            "unix:///run/cfg/containerd.sock",
        ),
        "downstream-timeout" => ("\"5s\"", "5s"),
        "default-handler-components" => ("true", "true"),
        _ => return None,
    })
}

/// The keys `config default` lists (its `# key = ...` lines).
fn default_keys() -> Vec<String> {
    let out = vimanad(&["config", "default"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
        .filter(|k| !k.contains(' '))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_flag_is_settable_from_the_file() {
    let keys = default_keys();
    assert!(
        keys.len() >= 15,
        "config default lists too few keys: {keys:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    let mut text = String::new();
    let mut expected = BTreeMap::new();
    for key in &keys {
        let (toml, shown) =
            sample(key).unwrap_or_else(|| panic!("no sample value for the new key {key}"));
        text.push_str(&format!("{key} = {toml}\n"));
        expected.insert(key.clone(), shown.to_owned());
    }
    std::fs::write(&file, text).unwrap();
    let out = check(&file);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = stdout.lines().nth(1).expect("the effective configuration");
    assert_eq!(effective(line), expected);
}

#[test]
fn the_default_file_is_valid_toml_that_changes_nothing() {
    let out = vimanad(&["config", "default"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("default.toml");
    std::fs::write(&file, &out.stdout).unwrap();
    let checked = check(&file);
    assert!(checked.status.success(), "{}", stderr(&checked));
    // Uncommenting every line that has a default changes nothing either.
    let text = String::from_utf8(out.stdout).unwrap();
    let uncommented: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| {
            l.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
            }) && !l.contains("(no default)")
        })
        .filter(|l| !l.starts_with("insecure-registry"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, uncommented).unwrap();
    let uncommented = check(&file);
    assert!(uncommented.status.success(), "{}", stderr(&uncommented));
    let plain = dir.path().join("empty.toml");
    std::fs::write(&plain, "").unwrap();
    let empty = check(&plain);
    assert_eq!(
        String::from_utf8_lossy(&uncommented.stdout).lines().nth(1),
        String::from_utf8_lossy(&empty.stdout).lines().nth(1)
    );
}

#[test]
fn errors_name_the_file_the_line_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    let name = file.display().to_string();
    let cases = [
        (
            "shards = 2\n\nno-such-flag = 1\n",
            ":3: no-such-flag: unknown key",
        ),
        (
            "start-timeout = \"5 days\"\n",
            ":1: start-timeout: invalid value",
        ),
        ("shards = \"many\"\n", ":1: shards: invalid value"),
        ("listen = [\"a\", \"b\"]\n", ":1: listen: takes one value"),
        ("log-format = \"xml\"\n", ":1: log-format: invalid value"),
        ("shards = 2\ncgroup-parent = \n", ":2:"),
        ("[section]\nshards = 2\n", ":1: section: unknown key"),
        (
            "[shards]\nn = 2\n",
            ":1: shards: expected a string or number, not a table",
        ),
        ("tls-cert = \"/c.pem\"\n", "--tls-key"),
        (
            "republish-every = \"1s\"\n",
            ":1: republish-every: unknown key",
        ),
        ("config = \"/other.toml\"\n", ":1: config: unknown key"),
    ];
    for (text, want) in cases {
        std::fs::write(&file, text).unwrap();
        let out = check(&file);
        let err = stderr(&out);
        assert!(!out.status.success(), "{text:?} was accepted");
        assert!(err.contains(&name), "{text:?}: {err}");
        assert!(err.contains(want), "{text:?}: want {want:?} in {err}");
    }
    // `serve` refuses it before binding anything, with EX_USAGE.
    std::fs::write(&file, "no-such-flag = 1\n").unwrap();
    let out = vimanad(&["serve", "--config", &name]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains(":1: no-such-flag: unknown key"));
}

#[test]
fn the_environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:1\"\nshards = 2\n").unwrap();
    let out = Command::new(common::vimanad())
        .args(["config", "check", file.to_str().unwrap()])
        .env("VIMANAD_LISTEN", "127.0.0.1:2")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let line = String::from_utf8(out.stdout).unwrap();
    let got = effective(line.lines().nth(1).unwrap());
    assert_eq!(got["listen"], "127.0.0.1:2");
    assert_eq!(got["shards"], "2");
}

/// The real `serve` reads the file, lets its flags win, and logs the
/// effective configuration once at start.
#[test]
fn serve_runs_from_the_file_and_flags_win() {
    let root = tempfile::Builder::new()
        .prefix("vcfg")
        .tempdir_in("/tmp")
        .unwrap();
    let listen = common::free_udp_port();
    let file = root.path().join("config.toml");
    let p = |name: &str| root.path().join(name).display().to_string();
    std::fs::write(
        &file,
        format!(
            "state-dir = {:?}\nrun-dir = {:?}\ncri-socket = {:?}\nlisten = \"{listen}\"\n\
             shards = 1\ncgroup-parent = \"vimanad-cfg-test\"\nstart-timeout = \"9s\"\n\
             metrics-listen = \"127.0.0.1:0\"\n",
            p("state"),
            p("run"),
            p("cri.sock"),
        ),
    )
    .unwrap();
    let mut child = Command::new(common::vimanad())
        .args(["serve", "--config", file.to_str().unwrap(), "--shards", "2"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut config = None;
    while config.is_none() && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Some(at) = line.find("configuration: ") {
                config = Some(effective(&line[at + "configuration: ".len()..]));
            }
        }
    }
    let socket_up = wait_for(&root.path().join("cri.sock"), deadline);
    let _ = child.kill();
    let _ = child.wait();
    let config = config.expect("serve logged its configuration");
    assert!(socket_up, "the CRI socket from the file was never bound");
    assert_eq!(config["shards"], "2", "the flag wins over the file");
    assert_eq!(config["start-timeout"], "9s");
    assert_eq!(config["listen"], listen.to_string());
    assert_eq!(config["cri-socket"], p("cri.sock"));
}

fn wait_for(path: &Path, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
