//! `vimanad call`: one gRPC call over HTTP/3 (the default) or HTTP/2 over
//! TLS (`--transport h2`), a tiny grpcurl for the data plane. HTTP/3 is a
//! quiche client on a blocking, connected `UdpSocket` whose read timeout
//! follows `conn.timeout()`, no async runtime; HTTP/2 is an h2 client on
//! tokio-rustls on a current-thread tokio runtime. Both take the same flags
//! and print and exit the same way.
//!
//! Exit code: the call's grpc-status (0 = OK); 2 when the answer is not gRPC
//! (HTTP status other than 200, or not `application/grpc`); 1 on a transport
//! or handshake failure. Failures seen by the client are gRPC statuses too:
//! DEADLINE_EXCEEDED when `--timeout` passes, RESOURCE_EXHAUSTED for a
//! response message over 64 MiB, INTERNAL for a malformed response body or a
//! missing grpc-status, CANCELLED/UNAVAILABLE/INTERNAL when the server resets
//! the stream.
//!
//! The command is split by job: `request` turns the flags into the request
//! (target, peer address, headers, messages); `quic` is the QUIC connection
//! on its UDP socket and `stream` runs the one HTTP/3 request stream; `tls`
//! is the TCP + TLS connection and `h2` runs the call over HTTP/2; `output`
//! prints messages, headers and the final status. This file holds the flags
//! and the sequence of one call.

mod h2;
mod output;
mod quic;
mod request;
mod stream;
mod tls;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use quiche::h3;

use super::grpc_frame as grpc;
use output::{print_fields, Output};
use quic::Quic;
use request::{first_addr, request_headers, request_messages, resolve, Target};
use stream::Call;

#[derive(Args, Debug)]
pub struct CallArgs {
    /// https://AUTHORITY/SERVICE/METHOD; gives `:authority` and `:path`.
    url: String,
    /// Connect to ADDR (host:port) instead of resolving the URL's host.
    #[arg(long, value_name = "ADDR")]
    connect: Option<String>,
    /// HTTP/3 over QUIC (UDP), or HTTP/2 over TLS (TCP, the same port).
    #[arg(long, value_enum, default_value_t = Transport::H3)]
    transport: Transport,
    /// A request message as hex protobuf bytes (repeatable). Messages are sent
    /// in this order: every --data-hex, every --data-file, every --text, stdin.
    #[arg(long = "data-hex", value_name = "HEX")]
    data_hex: Vec<String>,
    /// A request message read from a file of raw protobuf bytes (repeatable).
    #[arg(long = "data-file", value_name = "PATH")]
    data_file: Vec<PathBuf>,
    /// A request message whose field 1 is STRING, e.g. the example's
    /// EchoRequest{message} (repeatable).
    #[arg(long, value_name = "STRING")]
    text: Vec<String>,
    /// One request message read from stdin (raw protobuf bytes).
    #[arg(long)]
    data_stdin: bool,
    /// Request metadata, 'name: value' (repeatable), e.g. 'vimana-version: 1.0.0'.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Deadline for the whole call (e.g. 500ms, 5s); also sent as grpc-timeout
    /// unless a -H grpc-timeout is given.
    #[arg(long, value_parser = super::parse_duration)]
    timeout: Option<Duration>,
    /// Skip certificate verification (the default unless --ca is given: the
    /// data plane's certificate is self-signed by default).
    #[arg(long, conflicts_with = "ca")]
    insecure: bool,
    /// Verify the server's certificate against this PEM file.
    #[arg(long, value_name = "PATH")]
    ca: Option<PathBuf>,
    /// Name for SNI and certificate verification (default: the URL's host).
    #[arg(long)]
    server_name: Option<String>,
    /// How response messages are printed on stdout.
    #[arg(long, value_enum, default_value_t = Output::Hex)]
    output: Output,
    /// Print request and response headers and trailers on stderr.
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
enum Transport {
    /// HTTP/3 over QUIC.
    #[default]
    H3,
    /// HTTP/2 over TLS (ALPN h2).
    H2,
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type Fields = Vec<(String, String)>;

fn find<'a>(fields: &'a Fields, name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

pub fn run(args: CallArgs) -> Result<ExitCode> {
    let target = Target::parse(&args.url)?;
    let headers = request_headers(&target, &args.headers, args.timeout)?;
    let mut body = Vec::new();
    for message in request_messages(&args)? {
        grpc::encode(&message, &mut body);
    }
    let peer = match &args.connect {
        Some(addr) => resolve(addr)?,
        None => first_addr((target.host.as_str(), target.port), &target.authority)?,
    };
    let sni = args.server_name.as_deref().unwrap_or(&target.host);
    let sni = match (sni.parse::<IpAddr>(), &args.ca) {
        (Err(_), _) => Some(sni),
        (Ok(_), None) => None, // no SNI for IP literals (RFC 6066)
        (Ok(_), Some(_)) => bail!("--ca with an IP-address host needs --server-name NAME"),
    };
    let started = Instant::now();
    let deadline = args.timeout.map(|t| started + t);
    let handshake_until = deadline.map_or(started + HANDSHAKE_TIMEOUT, |d| {
        d.min(started + HANDSHAKE_TIMEOUT)
    });
    let (output, verbose) = (args.output, args.verbose);
    let (trailers, outcome) = match args.transport {
        Transport::H2 => {
            let plan = h2::Plan {
                peer,
                sni,
                ca: args.ca.as_deref(),
                handshake_until,
                deadline,
                timeout: args.timeout,
                output,
                verbose,
            };
            h2::run(&plan, &headers, body)?
        }
        Transport::H3 => {
            let mut quic = Quic::connect(peer, sni, args.ca.as_deref())?;
            quic.handshake(handshake_until)?;
            if verbose {
                eprintln!("* connected to {peer} (HTTP/3)");
                print_fields(">", &headers);
            }
            let headers = headers
                .iter()
                .map(|(n, v)| h3::Header::new(n.as_bytes(), v.as_bytes()));
            let mut call = Call::new(headers.collect(), body, output, verbose);
            let outcome = call.run(&mut quic, deadline, args.timeout);
            quic.close();
            (std::mem::take(&mut call.trailers), outcome?)
        }
    };
    if verbose {
        print_fields("<", &trailers);
    }
    Ok(output::report(outcome))
}
