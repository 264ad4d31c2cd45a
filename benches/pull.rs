//! PullImage latency: the example image from a registry on loopback into
//! the image store, cold (empty store) and warm (already stored), beside
//! `skopeo copy` of the same image to an OCI layout as the baseline.
//!
//! Starts Debian's `docker-registry` on a free loopback port (plain HTTP,
//! filesystem storage under /tmp), puts the example image there with
//! `skopeo copy`, then alternates, iteration by iteration:
//! - `Puller::pull` in process on a current-thread tokio runtime (the code
//!   CRI PullImage runs on the control thread), cold into a fresh store, and
//!   warm into a store that already holds the image (the manifest is fetched
//!   again, no blob is);
//! - `vimanad image pull` (the same code, plus process start), cold and warm;
//! - `skopeo copy docker://... oci:DIR` cold into a fresh directory and warm
//!   into the same one: the download without our store, commit and unpack.
//!
//! Cold pulls include unpacking the root filesystem and the fsyncs of the
//! commit; skopeo unpacks nothing. Prints median, p90 and max (nearest
//! rank); asserts nothing.
//!
//! ```text
//! cargo bench --bench pull -- [--iterations N | --quick] [--markdown]
//! ```
//! `--iterations N` (default 10); `--quick` is 2, for CI. Needs
//! target/example/vimana-example.oci.tar (scripts/build-example-image.sh),
//! `docker-registry` and `skopeo` (scripts/setup.sh).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vimanad::control::image::{Credentials, ImageStore, Puller, RegistryConfig};

const REPO: &str = "example/vimana-example:1.0.0";

struct Registry {
    process: Child,
    host: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn start_registry(dir: &Path) -> Registry {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = format!("127.0.0.1:{port}");
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let process = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry (scripts/setup.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&host).is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Registry { process, host }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let mut iterations = 10usize;
    let mut markdown = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--iterations" => {
                iterations = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--iterations N")
            }
            "--quick" => iterations = 2,
            "--markdown" => markdown = true,
            "--bench" => {}
            other => panic!("unknown argument {other:?}"),
        }
    }
    let tar = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/example/vimana-example.oci.tar");
    assert!(
        tar.exists(),
        "{} is missing: run scripts/build-example-image.sh",
        tar.display()
    );
    let root = PathBuf::from(format!("/tmp/vimanad-bench-pull-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let registry = start_registry(&root);
    let name = format!("{}/{REPO}", registry.host);
    run(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci-archive:{}", tar.display()))
        .arg(format!("docker://{name}")));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let registries = RegistryConfig::new(vec![registry.host.clone()]);
    let pull_in_process = |store_dir: &Path| {
        let store = Arc::new(ImageStore::open(store_dir).unwrap());
        let puller = Puller::new(store, registries.clone());
        rt.block_on(puller.pull(&name, Credentials::default()))
            .unwrap();
    };
    let pull_cli = |state_dir: &Path| {
        run(Command::new(env!("CARGO_BIN_EXE_vimanad"))
            .args([
                "image",
                "pull",
                &name,
                "--insecure-registry",
                &registry.host,
            ])
            .arg("--state-dir")
            .arg(state_dir)
            .env("RUST_LOG", "warn"));
    };
    let skopeo = |dir: &Path| {
        run(Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{name}"))
            .arg(format!("oci:{}:1.0.0", dir.display())));
    };
    type Case<'a> = (&'a str, Box<dyn Fn(&Path) + 'a>);
    let cases: Vec<Case> = vec![
        (
            "vimanad, in process (CRI PullImage's code)",
            Box::new(pull_in_process),
        ),
        ("`vimanad image pull` (process)", Box::new(pull_cli)),
        ("baseline: `skopeo copy` to an OCI layout", Box::new(skopeo)),
    ];
    // Warm-up, untimed: page cache, registry.
    for (i, (_, f)) in cases.iter().enumerate() {
        f(&root.join(format!("warmup-{i}")));
    }
    let mut cold: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    let mut warm: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    for n in 0..iterations {
        for (i, (_, f)) in cases.iter().enumerate() {
            let dir = root.join(format!("run-{n}-{i}"));
            cold[i].push(timed(|| f(&dir)));
            warm[i].push(timed(|| f(&dir)));
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "pull of {name} ({} bytes packed), {iterations} iterations, load average {}",
        std::fs::metadata(&tar).map(|m| m.len()).unwrap_or(0),
        load.split_whitespace().next().unwrap_or("?")
    );
    if markdown {
        println!(
            "\n| {iterations} pulls each | median ms | p90 ms | max ms |\n|---|---:|---:|---:|"
        );
    }
    for (label, results) in [("cold", &mut cold), ("warm", &mut warm)] {
        for (i, (what, _)) in cases.iter().enumerate() {
            let v = &mut results[i];
            v.sort();
            let (med, p90, max) = (percentile(v, 50.0), percentile(v, 90.0), *v.last().unwrap());
            if markdown {
                println!(
                    "| {label}: {what} | {:.2} | {:.2} | {:.2} |",
                    ms(med),
                    ms(p90),
                    ms(max)
                );
            } else {
                println!(
                    "{label:<5} {what:<45} median {:>8.2} ms  p90 {:>8.2} ms  max {:>8.2} ms",
                    ms(med),
                    ms(p90),
                    ms(max)
                );
            }
        }
    }
    drop(cases);
    drop(registry);
    let _ = std::fs::remove_dir_all(&root);
}
