//! `vimana-example`: the example vimana component.
//!
//! Serves `vimana.example.v1.Echo` and `grpc.health.v1.Health` over HTTP/2
//! cleartext on `$VIMANA_GRPC_ADDRESS` (`unix:/path/to/sock`; `tcp:HOST:PORT`
//! or `HOST:PORT` for local development). SIGTERM/SIGINT: graceful shutdown,
//! exit 0 (a second signal, or the grace period running out, ends it at once).
//!
//! Test knobs (environment):
//! * `EXAMPLE_EXIT_AT_START=<code>`: print a line to stderr and exit with `code`.
//! * `EXAMPLE_LOG_LINES=<n>`: print n numbered lines to stdout, one line of
//!   20000 `x`, and one line to stderr, at start.
//! * `EXAMPLE_STARTUP_DELAY_MS=<n>`: sleep before binding.
//! * `EXAMPLE_NO_HEALTH=1`: no health service.
//! * `EXAMPLE_NOT_SERVING=1`: health reports NOT_SERVING forever.
//! * `EXAMPLE_SHUTDOWN_GRACE_MS=<n>`: how long graceful shutdown waits for
//!   in-flight calls (default 10000).
//! * `EXAMPLE_MAX_STREAMS=<n>`: HTTP/2 streams served at once per connection
//!   (SETTINGS_MAX_CONCURRENT_STREAMS; default no limit).
//! * `VIMANA_POD_ID`: reported in `EchoReply.served_by` (default `pid:<pid>`).

use std::process::ExitCode;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use vimana_example::{
    default_served_by, serve_on, Address, HealthMode, Listener, ServeOptions, ADDRESS_ENV,
};

const NAME: &str = "vimana-example";
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

fn env_flag(name: &str) -> bool {
    match std::env::var(name) {
        Ok(v) => !matches!(v.trim(), "" | "0" | "false" | "no"),
        Err(_) => false,
    }
}

/// A numeric env knob: None when unset; exits 2 when set but invalid.
fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => {
            eprintln!("{NAME}: {name}={v:?} is not a valid number");
            std::process::exit(2);
        }
    }
}

fn main() -> ExitCode {
    if let Some(code) = env_number::<i32>("EXAMPLE_EXIT_AT_START") {
        eprintln!("{NAME}: EXAMPLE_EXIT_AT_START set, exiting with code {code}");
        std::process::exit(code);
    }

    if let Some(n) = env_number::<u64>("EXAMPLE_LOG_LINES") {
        use std::io::Write;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for i in 1..=n {
            let _ = writeln!(out, "{NAME} log line {i} of {n}");
        }
        let _ = writeln!(out, "{}", "x".repeat(20000));
        let _ = out.flush();
        eprintln!("{NAME} log line on stderr");
    }

    let address: Address = match std::env::var(ADDRESS_ENV) {
        Ok(v) => match v.parse() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("{NAME}: invalid {ADDRESS_ENV}: {e}");
                return ExitCode::from(2);
            }
        },
        Err(std::env::VarError::NotPresent) => {
            eprintln!(
                "{NAME}: {ADDRESS_ENV} is not set \
                 (expected unix:/path/to/socket, tcp:HOST:PORT or HOST:PORT)"
            );
            return ExitCode::from(2);
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            eprintln!("{NAME}: {ADDRESS_ENV} is not valid UTF-8");
            return ExitCode::from(2);
        }
    };

    let health = if env_flag("EXAMPLE_NO_HEALTH") {
        HealthMode::Disabled
    } else if env_flag("EXAMPLE_NOT_SERVING") {
        HealthMode::NotServing
    } else {
        HealthMode::Serving
    };
    let options = ServeOptions {
        served_by: default_served_by(),
        health,
        max_message_size: None,
        shutdown_grace: Some(
            env_number::<u64>("EXAMPLE_SHUTDOWN_GRACE_MS")
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_SHUTDOWN_GRACE),
        ),
        max_concurrent_streams: env_number::<u32>("EXAMPLE_MAX_STREAMS"),
    };
    let startup_delay = env_number::<u64>("EXAMPLE_STARTUP_DELAY_MS").map(Duration::from_millis);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{NAME}: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(address, options, startup_delay))
}

async fn run(address: Address, options: ServeOptions, startup_delay: Option<Duration>) -> ExitCode {
    // Install the signal handlers first, so a SIGTERM during the startup delay
    // is not fatal by default disposition.
    let (mut sigterm, mut sigint) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{NAME}: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        eprintln!("{NAME}: {name} received, shutting down gracefully");
        let _ = shutdown_tx.send(());
        let name = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        eprintln!("{NAME}: second signal ({name}), exiting now");
        std::process::exit(0);
    });
    let mut shutdown_rx = shutdown_rx;

    if let Some(delay) = startup_delay {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = &mut shutdown_rx => return ExitCode::SUCCESS,
        }
    }

    let listener = match Listener::bind(&address) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{NAME}: cannot listen on {address}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bound = listener.local_address().unwrap_or(address);
    println!("{NAME} listening on {bound}");

    let shutdown = async move {
        let _ = shutdown_rx.await;
    };
    match serve_on(listener, options, shutdown).await {
        Ok(()) => {
            eprintln!("{NAME}: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{NAME}: server error: {e}");
            ExitCode::FAILURE
        }
    }
}
