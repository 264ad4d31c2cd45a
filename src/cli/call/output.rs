//! What `vimanad call` prints: response messages on stdout (`--output`),
//! headers and trailers on stderr (`--verbose`), and the final status line
//! with the exit code it maps to. No I/O but the terminal's.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::ValueEnum;

use super::{find, Fields};
use crate::cli::grpc_frame::{self as grpc, Decoder};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(super) enum Output {
    /// One line of hex per message.
    #[default]
    Hex,
    /// The message bytes, unframed.
    Raw,
    /// Field 1 as a string (the example's EchoReply.message); hex if it isn't.
    Text,
}

/// How a call ended, whatever the transport.
pub(super) enum Outcome {
    Grpc(u32, String),
    /// HTTP status, content-type, the start of the body.
    Http(u16, String, Vec<u8>),
}

pub(super) fn print_fields(prefix: &str, fields: &Fields) {
    for (name, value) in fields {
        eprintln!("{prefix} {name}: {value}");
    }
}

/// Prints one response message on stdout, as `--output` asks.
pub(super) fn print_message(output: Output, message: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match (output, grpc::field1_text(message)) {
        (Output::Raw, _) => out.write_all(message),
        (Output::Text, Some(text)) => writeln!(out, "{text}"),
        (Output::Hex | Output::Text, _) => writeln!(out, "{}", hex::encode(message)),
    }
    .and_then(|()| out.flush())
    .context("write to stdout")
}

/// Says how the call ended (stderr) and returns the exit code: the
/// grpc-status, or 2 for an answer that is not gRPC.
pub(super) fn report(outcome: Outcome) -> ExitCode {
    match outcome {
        Outcome::Http(status, content_type, body) => {
            eprintln!("HTTP status {status}, content-type {content_type:?}: not a gRPC response");
            let text = String::from_utf8_lossy(&body);
            if !text.trim().is_empty() {
                eprintln!("{}", text.trim_end());
            }
            ExitCode::from(2)
        }
        Outcome::Grpc(code, message) => {
            let line = format!(
                "grpc-status: {code} ({}) grpc-message: {message}",
                grpc::status_name(code)
            );
            eprintln!("{}", line.trim_end());
            ExitCode::from(u8::try_from(code).unwrap_or(2))
        }
    }
}

/// How a finished gRPC response ended, over either transport: the status
/// and message from the trailers (or from the headers of a trailers-only
/// response), INTERNAL when they are missing or a message is cut short.
pub(super) fn grpc_end(response_headers: &Fields, trailers: &Fields, decoder: &Decoder) -> Outcome {
    let fields = if trailers.is_empty() {
        response_headers
    } else {
        trailers
    };
    let code = match find(fields, "grpc-status").map(str::parse) {
        None => return Outcome::Grpc(13, "stream ended without grpc-status".into()),
        Some(Err(_)) => return Outcome::Grpc(13, "invalid grpc-status".into()),
        Some(Ok(code)) => code,
    };
    match decoder.finish() {
        Err(e) => Outcome::Grpc(13, e.to_string()),
        Ok(()) => Outcome::Grpc(
            code,
            grpc::percent_decode(find(fields, "grpc-message").unwrap_or("")),
        ),
    }
}
