//! `vimana-hostile`: a hostile component, for the sandbox tests only.
//!
//! At start it tries, from inside its container, every escape the tests
//! know, and prints one JSON line per probe on stdout (so into the CRI
//! log): `{"probe":NAME,"outcome":"refused"|"allowed","detail":...}`. Then
//! it serves the example Echo service on `$VIMANA_GRPC_ADDRESS` like
//! `vimana-example`, so the data plane can be checked through it.
//!
//! Environment:
//! * `HOSTILE_UDP_PORT=<n>`: bind 127.0.0.1:n with SO_REUSEPORT (the data
//!   plane's port) and keep the socket.
//! * `HOSTILE_CONNECT=<path>[,<path>...]`: host paths to connect to (the CRI
//!   socket, another pod's socket).
//! * `HOSTILE_FORKBOMB=1`: fork until refused, report how many, kill them.
//! * `HOSTILE_SETUID=<path>`: wait up to 10 s for a setuid-root file there
//!   (planted by the test as an image would carry it), exec it, report the
//!   euid it ran with.
//! * `HOSTILE_SYMLINK_TO=<host path>` with `HOSTILE_SYMLINK=start`: make
//!   `grpc.sock` a symlink to it and never serve; with `later`: serve from a
//!   child process until SIGUSR1, then kill it and swap the socket for the
//!   symlink, staying alive.
//! It refuses to run unless it is PID 1 (of its container's PID
//! namespace): on a host, as root, the probes would do what they try.
//!
//! * run as `/pause` (argv[0]): sleep forever (a pod sandbox image).
//! * `--whoami`: print `{"probe":"setuid_exec","euid":N,"uid":N}` and exit.

use std::ffi::CString;
use std::io::{Read, Write};
use std::time::Duration;

use vimana_example::{default_served_by, serve_on, Address, HealthMode, Listener, ServeOptions};

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn report(probe: &str, allowed: bool, detail: &str) {
    let outcome = if allowed { "allowed" } else { "refused" };
    println!(
        "{{\"probe\":{},\"outcome\":\"{outcome}\",\"detail\":{}}}",
        json_str(probe),
        json_str(detail)
    );
    let _ = std::io::stdout().flush();
}

fn errno() -> String {
    std::io::Error::last_os_error().to_string()
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// Reports a syscall that returns 0 (or a descriptor) on success.
fn syscall_probe(probe: &str, r: libc::c_long) {
    if r >= 0 {
        report(probe, true, &format!("returned {r}"));
    } else {
        report(probe, false, &errno());
    }
}

fn open_write(path: &str) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn status_line() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mut fields = Vec::new();
    for key in [
        "Uid",
        "Gid",
        "Groups",
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapBnd",
        "CapAmb",
        "NoNewPrivs",
        "Seccomp",
    ] {
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .unwrap_or("")
            .trim()
            .replace('\t', " ");
        fields.push(format!("{}:{}", json_str(key), json_str(&v)));
    }
    println!("{{\"probe\":\"status\",{}}}", fields.join(","));
}

fn probes() {
    // Images need not have /tmp (vimanad makes one, containerd does not).
    let _ = std::fs::create_dir_all("/tmp");
    status_line();
    // SAFETY (all below): plain system calls with valid, NUL-terminated
    // arguments, probing what the kernel lets this process do.
    unsafe {
        let tmpfs = c("tmpfs");
        let tmp = c("/tmp");
        syscall_probe(
            "mount_tmpfs",
            libc::mount(
                tmpfs.as_ptr(),
                tmp.as_ptr(),
                tmpfs.as_ptr(),
                0,
                std::ptr::null(),
            ) as _,
        );
        let name = b"hostile";
        syscall_probe(
            "sethostname",
            libc::sethostname(name.as_ptr() as *const libc::c_char, name.len()) as _,
        );
        let own = c("/tmp/hostile-own");
        let _ = std::fs::write("/tmp/hostile-own", "x");
        syscall_probe("chown", libc::chown(own.as_ptr(), 4242, 4242) as _);

        for (probe, path) in [
            ("mknod_block_tmp", "/tmp/hostile-sda"),
            ("mknod_block_dev", "/dev/hostile-sda"),
        ] {
            let p = c(path);
            let made = libc::mknod(p.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(8, 0));
            let made_err = errno();
            let fd = libc::open(p.as_ptr(), libc::O_RDONLY);
            let open_err = errno();
            if fd >= 0 {
                libc::close(fd);
            }
            report(
                probe,
                fd >= 0,
                &format!(
                    "mknod: {}; open: {}",
                    if made == 0 { "made".into() } else { made_err },
                    if fd >= 0 { "opened".into() } else { open_err }
                ),
            );
        }
        // The "shocker" attack: a handle to inode 2 (a file system's root)
        // through the bind mount of the socket directory.
        // Through a bind mount from the host: the socket directory, or
        // (under other runtimes) /etc/resolv.conf.
        let mut mount_fd = -1;
        for path in ["/run/vimana", "/etc/resolv.conf", "/"] {
            let p = c(path);
            mount_fd = libc::open(p.as_ptr(), libc::O_RDONLY);
            if mount_fd >= 0 {
                break;
            }
        }
        #[repr(C)]
        struct Handle {
            bytes: u32,
            kind: i32,
            data: [u32; 2],
        }
        let mut handle = Handle {
            bytes: 8,
            kind: 1, // FILEID_INO32_GEN
            data: [2, 0],
        };
        let r = libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd,
            &mut handle,
            libc::O_RDONLY,
        );
        syscall_probe("open_by_handle_at", r);
        libc::close(mount_fd);

        let none = std::ptr::null::<libc::c_char>();
        for (probe, path) in [
            ("remount_proc_sys_rw", "/proc/sys"),
            ("remount_sys_rw", "/sys"),
            ("remount_resolv_conf_rw", "/etc/resolv.conf"),
            ("remount_root_rw", "/"),
        ] {
            let p = c(path);
            let r = libc::mount(
                none,
                p.as_ptr(),
                none,
                libc::MS_REMOUNT | libc::MS_BIND,
                std::ptr::null(),
            );
            syscall_probe(probe, r as _);
        }
        let ps = c("/proc/sys");
        syscall_probe(
            "umount_proc_sys",
            libc::umount2(ps.as_ptr(), libc::MNT_DETACH) as _,
        );
        syscall_probe(
            "unshare_user_namespace",
            libc::unshare(libc::CLONE_NEWUSER) as _,
        );
        syscall_probe(
            "unshare_mount_namespace",
            libc::unshare(libc::CLONE_NEWNS) as _,
        );
        let empty = c("");
        syscall_probe(
            "init_module",
            libc::syscall(
                libc::SYS_init_module,
                std::ptr::null::<u8>(),
                0usize,
                empty.as_ptr(),
            ),
        );
        let cg = c("cgroup");
        let cg_dir = c("/tmp/hostile-cg");
        let _ = std::fs::create_dir_all("/tmp/hostile-cg");
        let memory = c("memory");
        syscall_probe(
            "mount_cgroupfs",
            libc::mount(
                cg.as_ptr(),
                cg_dir.as_ptr(),
                cg.as_ptr(),
                0,
                memory.as_ptr() as *const _,
            ) as _,
        );
    }
    for (probe, path) in [
        ("write_core_pattern", "/proc/sys/kernel/core_pattern"),
        ("write_sysrq_trigger", "/proc/sysrq-trigger"),
        (
            "write_sys_kernel",
            "/sys/kernel/mm/transparent_hugepage/enabled",
        ),
        ("write_sys_net", "/sys/class/net/lo/tx_queue_len"),
    ] {
        match open_write(path) {
            Ok(()) => report(probe, true, "opened for writing"),
            Err(e) => report(probe, false, &e),
        }
    }
    // Masked paths: whichever of them this kernel has must read empty.
    let mut readable = Vec::new();
    let mut present = Vec::new();
    for path in [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/sched_debug",
        "/sys/firmware",
    ] {
        let meta = std::fs::metadata(path);
        if meta.is_err() {
            continue;
        }
        present.push(path);
        let content = if meta.is_ok_and(|m| m.is_dir()) {
            std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
        } else {
            let mut b = [0u8; 16];
            std::fs::File::open(path)
                .and_then(|mut f| f.read(&mut b))
                .unwrap_or(0)
        };
        if content > 0 {
            readable.push(path);
        }
    }
    report(
        "read_masked_paths",
        !readable.is_empty(),
        &format!("present {present:?}, with content {readable:?}"),
    );
    // Leaving the cgroup: any cgroup.procs that takes this process.
    let mut moved = Vec::new();
    let mut seen = 0;
    let mut stack = vec![std::path::PathBuf::from("/sys/fs/cgroup")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && p.components().count() < 7 {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "cgroup.procs") {
                seen += 1;
                if std::fs::write(&p, std::process::id().to_string()).is_ok() {
                    moved.push(p.display().to_string());
                }
            }
        }
    }
    report(
        "leave_cgroup",
        !moved.is_empty(),
        &format!("{seen} cgroup.procs files visible, written: {moved:?}"),
    );
    let ifaces: Vec<String> = std::fs::read_to_string("/proc/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|s| s.trim().to_owned()))
        .collect();
    let netns = std::fs::read_link("/proc/self/ns/net")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    report(
        "network",
        ifaces.iter().any(|i| i != "lo"),
        &format!("interfaces {ifaces:?} in {netns}"),
    );
    if let Ok(port) = std::env::var("HOSTILE_UDP_PORT") {
        let bound = bind_reuseport(port.parse().unwrap_or(0));
        match bound {
            // The descriptor stays open: the socket keeps its place.
            Ok(_fd) => report("bind_data_plane_port", true, &format!("bound in {netns}")),
            Err(e) => report("bind_data_plane_port", false, &e),
        }
    }
    for path in std::env::var("HOSTILE_CONNECT")
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
    {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => report(&format!("connect {path}"), true, "connected"),
            Err(e) => report(&format!("connect {path}"), false, &e.to_string()),
        }
    }
    // What must work.
    match std::fs::read("/proc/self/exe") {
        Ok(b) => report("read_own_files", true, &format!("{} bytes", b.len())),
        Err(e) => report("read_own_files", false, &e.to_string()),
    }
    match std::fs::write("/tmp/hostile-layer", "written") {
        Ok(()) => report("write_writable_layer", true, "/tmp/hostile-layer"),
        Err(e) => report("write_writable_layer", false, &e.to_string()),
    }
    match open_write("/dev/null") {
        Ok(()) => report("use_dev_null", true, "opened"),
        Err(e) => report("use_dev_null", false, &e),
    }
    if std::env::var_os("HOSTILE_FORKBOMB").is_some() {
        forkbomb();
    }
}

fn bind_reuseport(port: u16) -> Result<i32, String> {
    // SAFETY: a UDP socket with SO_REUSEPORT bound to loopback:port.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return Err(errno());
        }
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        );
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as u16;
        addr.sin_port = port.to_be();
        addr.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
        if libc::bind(
            fd,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            let e = errno();
            libc::close(fd);
            return Err(e);
        }
        Ok(fd)
    }
}

fn forkbomb() {
    let mut children = 0u32;
    let error = loop {
        // SAFETY: the child only pauses until it is killed.
        match unsafe { libc::fork() } {
            -1 => break errno(),
            0 => loop {
                // SAFETY: async-signal-safe.
                unsafe { libc::pause() };
            },
            _ => children += 1,
        }
        if children >= 100_000 {
            break "stopped at 100000".into();
        }
    };
    // PID 1 of its namespace: kill(-1) reaches every other process in it.
    // SAFETY: signals to this namespace's processes, then reaping them.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
        while libc::waitpid(-1, std::ptr::null_mut(), 0) > 0 {}
    }
    report(
        "fork_bomb",
        children >= 100_000,
        &format!("{children} processes forked, then: {error}"),
    );
}

fn setuid_probe(path: String) {
    std::thread::spawn(move || {
        for _ in 0..1000 {
            if std::fs::metadata(&path).is_ok() {
                std::thread::sleep(Duration::from_millis(50));
                let out = std::process::Command::new(&path).arg("--whoami").output();
                match out {
                    Ok(o) => print!("{}", String::from_utf8_lossy(&o.stdout)),
                    Err(e) => report("setuid_exec", false, &format!("exec {path}: {e}")),
                }
                let _ = std::io::stdout().flush();
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        report("setuid_exec", false, "never planted");
    });
}

fn serve() -> std::process::ExitCode {
    let address: Address = match std::env::var(vimana_example::ADDRESS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(a) => a,
        None => return std::process::ExitCode::from(2),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let listener = match Listener::bind(&address) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("vimana-hostile: cannot listen on {address}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        println!("vimana-hostile listening on {address}");
        let options = ServeOptions {
            served_by: default_served_by(),
            health: HealthMode::Serving,
            max_message_size: None,
            shutdown_grace: Some(Duration::from_millis(100)),
            max_concurrent_streams: None,
        };
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    eprintln!("vimana-hostile: SIGTERM handler: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
        let shutdown = async move {
            term.recv().await;
            eprintln!("vimana-hostile: SIGTERM received, shutting down");
        };
        match serve_on(listener, options, shutdown).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vimana-hostile: server error: {e}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}

fn main() -> std::process::ExitCode {
    // Packed as `/pause` it is the pod sandbox image containerd needs for
    // the comparison under runc (tests/sandbox_runc.rs): it only waits.
    if std::env::args()
        .next()
        .is_some_and(|a| a.ends_with("pause"))
    {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    if std::env::args().nth(1).as_deref() == Some("--whoami") {
        // SAFETY: getters.
        let (euid, uid) = unsafe { (libc::geteuid(), libc::getuid()) };
        println!("{{\"probe\":\"setuid_exec\",\"euid\":{euid},\"uid\":{uid}}}");
        return std::process::ExitCode::SUCCESS;
    }
    // The probes really attack whatever runs them: mounts over /tmp,
    // hostname, device nodes. Only ever as PID 1 of a container's own PID
    // namespace, never on a host by mistake.
    if std::process::id() != 1 {
        eprintln!("vimana-hostile: not PID 1 of a container; refusing to run the escape probes");
        return std::process::ExitCode::from(2);
    }
    probes();
    if let Ok(path) = std::env::var("HOSTILE_SETUID") {
        setuid_probe(path);
    }
    let socket = std::env::var(vimana_example::ADDRESS_ENV)
        .unwrap_or_default()
        .trim_start_matches("unix:")
        .to_owned();
    match (
        std::env::var("HOSTILE_SYMLINK").as_deref(),
        std::env::var("HOSTILE_SYMLINK_TO"),
    ) {
        (Ok("start"), Ok(to)) => {
            let _ = std::fs::remove_file(&socket);
            let made = std::os::unix::fs::symlink(&to, &socket);
            report(
                "symlink_socket",
                made.is_ok(),
                &format!("{socket} -> {to}: {made:?}"),
            );
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        (Ok("later"), Ok(to)) => {
            let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
            // SAFETY: blocking SIGUSR1 before the fork, waiting for it after.
            unsafe {
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGUSR1);
                libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            }
            // SAFETY: single-threaded so far (no runtime started yet).
            let child = unsafe { libc::fork() };
            if child == 0 {
                return serve();
            }
            let mut sig = 0;
            // SAFETY: waits for the blocked SIGUSR1.
            unsafe { libc::sigwait(&set, &mut sig) };
            // SAFETY: kill and reap the serving child.
            unsafe {
                libc::kill(child, libc::SIGKILL);
                libc::waitpid(child, std::ptr::null_mut(), 0);
            }
            let _ = std::fs::remove_file(&socket);
            let made = std::os::unix::fs::symlink(&to, &socket);
            report(
                "symlink_socket",
                made.is_ok(),
                &format!("{socket} -> {to}: {made:?}"),
            );
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        _ => serve(),
    }
}
