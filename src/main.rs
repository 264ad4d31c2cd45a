//! `vimanad`: the command line. Parses flags, sets up logging, and hands
//! over to the control plane (and, later, the data-plane shards). The only
//! place `anyhow` is used.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use vimanad::control::{self, image};
use vimanad::shard;

mod cli;

#[derive(Parser)]
#[command(
    name = "vimanad",
    version,
    about = "Vimana work node runtime: CRI control plane and gRPC-over-HTTP/3 data plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node runtime: CRI on a Unix socket.
    #[command(args_override_self = true)]
    Serve(Box<ServeArgs>),
    /// Manage the local image store.
    #[command(subcommand)]
    Image(ImageCommand),
    /// A small CRI client: run, list and remove pods.
    Cri(cli::cri::CriArgs),
    /// Make one gRPC call over HTTP/3 (or HTTP/2 over TLS: --transport h2).
    Call(cli::call::CallArgs),
    /// Show a running node's pod pool: domains, services, versions,
    /// endpoints with their outstanding calls per shard (/debug/pool).
    Pool(cli::pool::PoolArgs),
    /// The config file of `serve`: print a default one, check one.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Internal: the per-container shim started by `serve`.
    #[command(hide = true)]
    Shim { spec: PathBuf },
    /// Internal: runs one exec'd command inside a running container.
    #[command(hide = true)]
    ExecShim { request: String },
    /// Internal: a container's attach relay, started by its shim.
    #[command(hide = true)]
    AttachRelay { fds: String },
}

#[derive(Args)]
struct StateDir {
    /// Directory of durable state (images, containers).
    #[arg(long, env = "VIMANAD_STATE_DIR", default_value = "/var/lib/vimanad")]
    state_dir: PathBuf,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print a complete config file: every setting, commented, with its default.
    Default,
    /// Check a config file as `serve --config FILE` would read it.
    Check { file: PathBuf },
}

#[derive(Args)]
struct ServeArgs {
    /// A TOML file of settings: every key is one of these flags (`vimanad
    /// config default` prints them all); flags and environment override it.
    #[arg(long, env = "VIMANAD_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    state: StateDir,
    /// Directory of volatile state (pod sockets).
    #[arg(long, env = "VIMANAD_RUN_DIR", default_value = "/run/vimanad")]
    run_dir: PathBuf,
    /// The CRI socket the kubelet connects to.
    #[arg(
        long,
        env = "VIMANAD_CRI_SOCKET",
        default_value = "/run/vimanad/vimanad.sock"
    )]
    cri_socket: PathBuf,
    /// The CRI streaming server (exec, attach, port-forward): the TCP
    /// address it listens on and its URLs point at; port 0 picks a free one.
    #[arg(long, env = "VIMANAD_STREAM_ADDRESS", default_value = "127.0.0.1:0")]
    stream_address: std::net::SocketAddr,
    /// How long StartContainer waits for a component to serve gRPC.
    #[arg(long, default_value = "30s", value_parser = cli::parse_duration)]
    start_timeout: Duration,
    /// IP reported for every pod (the node's data-plane address); detected
    /// when not given.
    #[arg(long)]
    pod_ip: Option<String>,
    /// CRI runtime handler served (RuntimeClass handler).
    #[arg(long, default_value = "vimana")]
    runtime_handler: String,
    /// Data plane: UDP address for gRPC over HTTP/3.
    #[arg(long, env = "VIMANAD_LISTEN", default_value = "[::]:443")]
    listen: std::net::SocketAddr,
    /// Data plane: TCP address for gRPC over HTTP/2 + TLS (ALPN h2, same
    /// certificate as QUIC), or `off`. Default: the --listen address.
    #[arg(long, env = "VIMANAD_LISTEN_TCP", value_parser = cli::parse_listen_or_off)]
    listen_tcp: Option<cli::ListenOrOff>,
    /// Data plane: TCP address for cleartext HTTP/2 (h2c) for node-local
    /// clients, or `off`.
    #[arg(long, default_value = "off", value_parser = cli::parse_listen_or_off)]
    listen_h2c: cli::ListenOrOff,
    /// HTTP/2 over TCP: the TLS and HTTP/2 handshakes must finish within this.
    #[arg(long, default_value = "10s", value_parser = cli::parse_duration)]
    tcp_handshake_timeout: Duration,
    /// Data-plane shards, one per core (default: every core this process may use).
    #[arg(long)]
    shards: Option<usize>,
    /// TLS certificate (PEM) for QUIC; a self-signed one is generated in
    /// STATE_DIR/tls when not given.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for QUIC.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Largest gRPC request message accepted, in bytes.
    #[arg(long, default_value = "4194304")]
    max_message_size: usize,
    /// QUIC connections per shard (and, counted apart, TCP connections).
    #[arg(long, default_value = "10000")]
    max_connections: usize,
    /// Connections per shard above which new clients must pass a Retry.
    #[arg(long, default_value = "2000")]
    retry_above: usize,
    /// Handshakes in progress per shard above which new clients must pass
    /// a Retry (a handshake flood switches address validation on).
    #[arg(long, default_value = "128")]
    retry_handshakes_above: usize,
    /// Handshakes in progress per source address (IPv6: per /64) and
    /// shard (0 = no limit).
    #[arg(long, default_value = "64")]
    max_handshakes_per_source: usize,
    /// QUIC connections per source address (IPv6: per /64) and shard
    /// (0 = no limit).
    #[arg(long, default_value = "1000")]
    max_connections_per_source: usize,
    /// A QUIC handshake with no packet from the client for this long is
    /// abandoned.
    #[arg(long, default_value = "5s", value_parser = cli::parse_duration)]
    handshake_idle_timeout: Duration,
    /// A QUIC handshake not complete after this long is abandoned.
    #[arg(long, default_value = "10s", value_parser = cli::parse_duration)]
    handshake_timeout: Duration,
    /// Stateless resets sent per second and shard, at most (0 = none).
    #[arg(long, default_value = "1000")]
    stateless_resets_per_second: u32,
    /// Concurrent streams per QUIC (and HTTP/2) connection.
    #[arg(long, default_value = "256")]
    max_streams: usize,
    /// Bytes buffered for one connection's calls (request bytes not yet
    /// sent to the component, response bytes its client has not taken);
    /// also sets how far a component may send ahead on one call (this
    /// divided by --max-streams, 16 KiB to 1 MiB).
    #[arg(long, default_value = "4194304")]
    conn_buffer_limit: usize,
    /// Bytes buffered for all calls of one shard; past it, a connection
    /// holding unread responses starts no new call.
    #[arg(long, default_value = "268435456")]
    shard_buffer_limit: usize,
    /// While a buffer limit is reached, a call whose client takes none of
    /// its response for this long ends with RESOURCE_EXHAUSTED.
    #[arg(long, default_value = "2s", value_parser = cli::parse_duration)]
    buffer_grace: Duration,
    /// Streams a client may reset before their response, per second and
    /// connection; more close the connection (H3_EXCESSIVE_LOAD). 0: any.
    #[arg(long, default_value = "100")]
    reset_rate: u32,
    /// A call without grpc-timeout ends (DEADLINE_EXCEEDED) after this long
    /// without a byte moving either way.
    #[arg(long, default_value = "5m", value_parser = cli::parse_duration)]
    call_idle_timeout: Duration,
    /// Calls that may wait, per shard, for a stream to a pod whose
    /// component is at its concurrent stream limit; more get UNAVAILABLE.
    #[arg(long, default_value = "1024")]
    upstream_queue: usize,
    /// How long a call may wait for a stream to its component (connecting,
    /// or queued at its stream limit) before UNAVAILABLE.
    #[arg(long, default_value = "5s", value_parser = cli::parse_duration)]
    upstream_wait: Duration,
    /// Idle timeout of QUIC connections (and of HTTP/2 connections without
    /// streams).
    #[arg(long, default_value = "30s", value_parser = cli::parse_duration)]
    idle_timeout: Duration,
    /// On SIGTERM, how long in-flight calls may take to finish.
    #[arg(long, default_value = "10s", value_parser = cli::parse_duration)]
    drain_timeout: Duration,
    /// cgroup under which containers' cgroups are made.
    #[arg(long, default_value = "vimanad")]
    cgroup_parent: String,
    /// Where the kubelet's Localhost seccomp profiles are (a profile
    /// outside it is refused).
    #[arg(long, default_value = "/var/lib/kubelet/seccomp")]
    seccomp_profile_root: PathBuf,
    /// Most processes (and threads) one container may have (its cgroup's
    /// pids.max; 0 = no limit of vimanad's own).
    #[arg(long, default_value = "1024")]
    pids_limit: i64,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// A registry (HOST[:PORT], as in image names) to pull from over plain
    /// HTTP; repeatable. Every other registry, loopback included, is HTTPS.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    insecure_registry: Vec<String>,
    /// The operator's endpoint (HTTP): /metrics (Prometheus), /healthz,
    /// /readyz, /debug/pool; `off` switches it off. Loopback by default:
    /// expose it deliberately.
    #[arg(long, default_value = "127.0.0.1:9475", value_parser = cli::parse_listen_or_off)]
    metrics_listen: cli::ListenOrOff,
    /// Benchmarks only (hidden from --help): the control thread rebuilds
    /// and publishes the pod pool's routing snapshot at this interval, as a
    /// stream of pod changes would, so the data plane can be measured while
    /// publications land (benches/capacity/). Never use it in production.
    #[arg(long, hide = true, value_parser = cli::parse_duration)]
    republish_every: Option<Duration>,
    /// A downstream CRI runtime (`unix:///run/containerd/containerd.sock`)
    /// running the pods of every other runtime handler; without it they are
    /// refused.
    #[arg(long, value_name = "unix:///PATH", value_parser = parse_downstream)]
    downstream_cri: Option<String>,
    /// Deadline of the downstream's read calls (Status, List*, *Status).
    #[arg(long, default_value = "2s", value_parser = cli::parse_duration)]
    downstream_timeout: Duration,
    /// With --downstream-cri: pods on the default handler ("") that carry
    /// the vimana.host/* labels are components, not downstream pods.
    #[arg(long, num_args = 0..=1, default_value = "false", default_missing_value = "true", action = clap::ArgAction::Set)]
    default_handler_components: bool,
    /// Every setting as `serve` runs with it (logged once at start).
    #[arg(skip)]
    effective: String,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import an OCI image layout (directory or tar) into the store.
    Import {
        path: PathBuf,
        /// Name to tag the image with (else the layout's ref.name annotation).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        state: StateDir,
    },
    /// Build an OCI image (FROM scratch) holding one component binary.
    Pack {
        /// The component's (static) executable.
        #[arg(long)]
        binary: PathBuf,
        /// Image name, e.g. example.com/echo:1.0.0.
        #[arg(long)]
        name: String,
        /// Output OCI image layout: a .tar file or a directory.
        #[arg(long)]
        output: PathBuf,
        /// Path of the binary inside the image.
        #[arg(long, default_value = "/component")]
        entrypoint_path: String,
    },
    /// List the images in the store.
    Ls {
        #[command(flatten)]
        state: StateDir,
    },
    /// Remove an image (by name or ID).
    Rm {
        reference: String,
        #[command(flatten)]
        state: StateDir,
    },
    /// Pull an image from its registry into the store (as CRI PullImage).
    Pull {
        /// e.g. registry.example.com/echo:1.0 or NAME@sha256:...
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        state: StateDir,
    },
    /// Push an image to a registry: an OCI image layout (directory or tar,
    /// e.g. `image pack` output) or, if SOURCE is no path, a stored image.
    Push {
        /// Destination, e.g. registry.example.com/echo:1.0.
        #[arg(long)]
        name: String,
        /// An OCI image layout, or the name or ID of a stored image.
        source: String,
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        state: StateDir,
    },
}

#[derive(Args)]
struct RegistryArgs {
    /// A registry (HOST[:PORT]) reached over plain HTTP; repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    insecure_registry: Vec<String>,
    /// Username for the registry (basic auth, or traded for a token).
    #[arg(long, env = "VIMANAD_REGISTRY_USERNAME")]
    username: Option<String>,
    /// Password for the registry.
    #[arg(long, env = "VIMANAD_REGISTRY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

impl RegistryArgs {
    fn split(self) -> (image::RegistryConfig, image::Credentials) {
        let credentials = match (self.username, self.password) {
            (None, None) => image::Credentials::default(),
            (user, pass) => {
                image::Credentials::basic(&user.unwrap_or_default(), &pass.unwrap_or_default())
            }
        };
        (
            image::RegistryConfig::new(self.insecure_registry),
            credentials,
        )
    }
}

/// A small runtime for the registry subcommands.
fn block_on<F: std::future::Future>(future: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start a runtime")?;
    Ok(rt.block_on(future))
}

/// Parses the command line; for `serve --config FILE`, adds the file's
/// settings for every flag the command line and environment left unset.
/// A bad file exits with 64 (EX_USAGE), as a bad flag does with clap's 2.
fn parse_cli() -> Cli {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let mut matches = Cli::command().get_matches_from(argv.clone());
    if let Some(("serve", serve)) = matches.subcommand() {
        if let Some(path) = serve.get_one::<PathBuf>("config") {
            let command = Cli::command();
            let merged = cli::config::merge(serve_command(&command), serve, path, argv);
            match merged {
                Ok(argv) => matches = Cli::command().get_matches_from(argv),
                Err(e) => {
                    eprintln!("vimanad: {e:#}");
                    std::process::exit(64);
                }
            }
        }
    }
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let (Command::Serve(args), Some(("serve", serve))) = (&mut cli.command, matches.subcommand())
    {
        args.effective = cli::config::effective(serve_command(&Cli::command()), serve);
    }
    cli
}

fn serve_command(command: &clap::Command) -> &clap::Command {
    command
        .find_subcommand("serve")
        .expect("serve is a subcommand")
}

fn main() -> std::process::ExitCode {
    let cli = parse_cli();
    // The shim forks: it must stay single-threaded, so it runs before any
    // runtime or logging thread exists.
    if let Command::Shim { spec } = &cli.command {
        return std::process::ExitCode::from(control::container::shim::main(spec) as u8);
    }
    // Same for the exec helper: it setns's into a container and forks.
    if let Command::ExecShim { request } = &cli.command {
        return std::process::ExitCode::from(control::streaming::exec_shim::main(request) as u8);
    }
    if let Command::AttachRelay { fds } = &cli.command {
        return std::process::ExitCode::from(control::container::attach::relay_main(fds) as u8);
    }
    // `call` exits with the call's grpc-status, so it returns its own code.
    let command = match cli.command {
        Command::Call(args) => {
            return cli::call::run(args).unwrap_or_else(|e| {
                eprintln!("vimanad call: {e:#}");
                std::process::ExitCode::FAILURE
            })
        }
        command => command,
    };
    match run(command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vimanad: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(*args),
        Command::Image(cmd) => image_command(cmd),
        Command::Cri(args) => cli::cri::run(args),
        Command::Pool(args) => cli::pool::run(args),
        Command::Config(cmd) => config_command(cmd),
        Command::Shim { .. }
        | Command::ExecShim { .. }
        | Command::AttachRelay { .. }
        | Command::Call(_) => {
            unreachable!("handled in main")
        }
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn config_command(cmd: ConfigCommand) -> anyhow::Result<()> {
    let command = Cli::command();
    let serve = serve_command(&command);
    match cmd {
        ConfigCommand::Default => print!("{}", cli::config::default_file(serve)),
        ConfigCommand::Check { file } => {
            let argv = ["vimanad", "serve", "--config"].map(OsString::from);
            let argv = [argv.as_slice(), &[file.clone().into()]].concat();
            let matches = Cli::command().try_get_matches_from(argv.clone())?;
            let (_, serve_matches) = matches.subcommand().expect("serve");
            let merged = cli::config::merge(serve, serve_matches, &file, argv)?;
            let matches = Cli::command().try_get_matches_from(merged).map_err(|e| {
                anyhow::anyhow!("{}: {}", file.display(), cli::config::clap_message(&e))
            })?;
            let (_, serve_matches) = matches.subcommand().expect("serve");
            println!("{}: ok", file.display());
            println!("{}", cli::config::effective(serve, serve_matches));
        }
    }
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(&args.log_format);
    tracing::info!("configuration: {}", args.effective);
    anyhow::ensure!(
        args.republish_every.is_none_or(|every| !every.is_zero()),
        "--republish-every must be longer than zero"
    );
    let publisher = vimanad::pool::Publisher::new();
    let shard_count = args
        .shards
        .unwrap_or_else(|| core_affinity::get_core_ids().map_or(1, |c| c.len()))
        .max(1);
    let node_metrics = vimanad::pool::metrics::NodeMetrics::new(shard_count, publisher.slots());
    let data_plane = shard::Config {
        listen: args.listen,
        metrics: std::sync::Arc::clone(&node_metrics),
        shards: shard_count,
        tls: shard::tls_files(args.tls_cert, args.tls_key, &args.state.state_dir)
            .context("prepare the TLS certificate")?,
        idle_timeout: args.idle_timeout,
        drain_timeout: args.drain_timeout,
        settings: shard::Settings {
            max_connections: args.max_connections,
            retry_above: args.retry_above,
            retry_handshakes_above: args.retry_handshakes_above,
            max_handshakes_per_source: args.max_handshakes_per_source,
            max_connections_per_source: args.max_connections_per_source,
            handshake_idle_timeout: args.handshake_idle_timeout,
            handshake_timeout: args.handshake_timeout,
            stateless_resets_per_second: args.stateless_resets_per_second,
            max_streams_per_conn: args.max_streams,
            max_message_size: args.max_message_size,
            conn_buffer_limit: args.conn_buffer_limit,
            shard_buffer_limit: args.shard_buffer_limit,
            reset_rate: args.reset_rate,
            upstream_queue: args.upstream_queue,
            call: shard::CallLimits {
                idle_timeout: args.call_idle_timeout,
                buffer_grace: args.buffer_grace,
                upstream_wait: args.upstream_wait,
                ..Default::default()
            },
        },
        tcp: shard::TcpConfig {
            listen: args.listen_tcp.map_or(Some(args.listen), |l| l.0),
            listen_h2c: args.listen_h2c.0,
            handshake_timeout: args.tcp_handshake_timeout,
        },
    };
    let shards = shard::start(&data_plane, &publisher).context("start the data plane")?;
    let config = control::Config {
        state_dir: args.state.state_dir,
        run_dir: args.run_dir,
        cri_socket: args.cri_socket,
        stream_address: args.stream_address,
        start_timeout: args.start_timeout,
        pod_ip: args.pod_ip.unwrap_or_else(detect_node_ip),
        runtime_handler: args.runtime_handler,
        cgroup_parent: args.cgroup_parent,
        seccomp_profile_root: args.seccomp_profile_root,
        pids_limit: args.pids_limit,
        insecure_registries: args.insecure_registry,
        republish_every: args.republish_every,
        downstream: args
            .downstream_cri
            .map(|uri| control::downstream::Settings {
                socket: control::downstream::parse_uri(&uri).expect("checked by clap"),
                uri,
                timeout: args.downstream_timeout,
                components_on_default: args.default_handler_components,
            }),
        metrics_listen: args.metrics_listen.0,
        data_plane_metrics: Some(node_metrics),
    };
    // The control thread: one tokio runtime on one thread (SPEC.md §2).
    let control = std::thread::Builder::new()
        .name("vimanad-control".into())
        .spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("start the control thread's runtime")?;
            rt.block_on(async {
                // Handlers first: a SIGTERM once the CRI socket accepts
                // must be a graceful stop.
                let shutdown = shutdown_signal().context("install signal handlers")?;
                control::serve(config, publisher, shutdown).await?;
                anyhow::Ok(())
            })?;
            tracing::info!("control plane stopped");
            Ok(())
        })
        .context("spawn the control thread")?;
    let result = control
        .join()
        .map_err(|_| anyhow::anyhow!("the control thread panicked"))?;
    // CRI is down; let the data plane finish its in-flight calls.
    shards.stop();
    result
}

/// `--downstream-cri`: a Unix socket URI.
fn parse_downstream(uri: &str) -> Result<String, String> {
    control::downstream::parse_uri(uri).map(|_| uri.to_owned())
}

/// Installs the SIGTERM/SIGINT handlers now; the future resolves on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}

/// The first non-loopback IPv4 address of an interface that is up.
fn detect_node_ip() -> String {
    nix::ifaddrs::getifaddrs()
        .ok()
        .and_then(|addrs| {
            addrs
                .filter(|a| a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP))
                .filter_map(|a| a.address.and_then(|s| s.as_sockaddr_in().map(|v4| v4.ip())))
                .find(|ip| !ip.is_loopback())
        })
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "127.0.0.1".into())
}

fn image_command(cmd: ImageCommand) -> anyhow::Result<()> {
    let open = |state: &StateDir| {
        image::ImageStore::open(&state.state_dir.join("images"))
            .with_context(|| format!("open the image store in {}", state.state_dir.display()))
    };
    match cmd {
        ImageCommand::Import { path, name, state } => {
            for img in open(&state)?.import(&path, name.as_deref())? {
                println!("imported {} {}", img.id, img.repo_tags.join(" "));
            }
        }
        ImageCommand::Pack {
            binary,
            name,
            output,
            entrypoint_path,
        } => {
            let packed = image::pack(&image::PackOptions {
                binary,
                name,
                output: output.clone(),
                entrypoint_path,
                args: Vec::new(),
                env: Vec::new(),
            })?;
            println!(
                "packed {} ({}) into {}",
                packed.name,
                packed.id,
                output.display()
            );
        }
        ImageCommand::Ls { state } => {
            println!("{:<72} {:<20} {:>10}", "IMAGE", "ID", "SIZE");
            for img in open(&state)?.list()? {
                let id = img
                    .id
                    .trim_start_matches("sha256:")
                    .get(..12)
                    .unwrap_or_default()
                    .to_owned();
                let names = if img.repo_tags.is_empty() {
                    vec!["<none>".to_owned()]
                } else {
                    img.repo_tags.clone()
                };
                for name in names {
                    println!("{name:<72} {id:<20} {:>10}", img.size);
                }
            }
        }
        ImageCommand::Pull {
            reference,
            registry,
            state,
        } => {
            init_logging("text");
            let (registries, credentials) = registry.split();
            let puller = image::Puller::new(std::sync::Arc::new(open(&state)?), registries);
            let img = block_on(puller.pull(&reference, credentials))??;
            println!("pulled {} {}", img.id, img.repo_tags.join(" "));
        }
        ImageCommand::Push {
            name,
            source,
            registry,
            state,
        } => {
            init_logging("text");
            let (registries, credentials) = registry.split();
            let source = if std::path::Path::new(&source).exists() {
                image::PushSource::Layout(source.into())
            } else {
                image::PushSource::Stored {
                    store: open(&state)?,
                    reference: source,
                }
            };
            let pushed = block_on(image::push(source, &name, &registries, &credentials))??;
            println!("pushed {}@{}", pushed.name, pushed.digest);
        }
        ImageCommand::Rm { reference, state } => {
            if open(&state)?.remove(&reference)? {
                println!("removed {reference}");
            } else {
                anyhow::bail!("no image {reference:?} in the store");
            }
        }
    }
    Ok(())
}
