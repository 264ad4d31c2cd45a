//! The remote-command protocols (exec, attach) as the kubelet's own
//! streaming server speaks them: over SPDY, one stream per standard stream
//! (`streamType` error, stdin, stdout, stderr, resize; protocols
//! `channel.k8s.io` and v2..v4), and the exit status written on the error
//! stream: a `metav1.Status` JSON from v4 on, plain text before.

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::exec::{self, Io};
use super::exec_shim::Outcome;
use super::spdy::conn::{self, Stream, Writer};
use super::spdy::frame::{header, RST_PROTOCOL_ERROR};
use super::{Job, StreamError};

/// SPDY subprotocols, the server's preference first.
pub const SPDY_PROTOCOLS: [&str; 4] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// How long the client has to open every stream it asked for.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Which standard streams the CRI request asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A terminal size as client-go sends it on the resize stream.
#[derive(Deserialize)]
struct TermSize {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

/// Runs a job's command with the given stdio.
pub async fn run(job: &Job, io: Io) -> Result<Outcome, StreamError> {
    match job {
        Job::Exec {
            target,
            cmd,
            options,
        } => exec::exec_interactive(target, cmd, options.tty, io).await,
        Job::Attach { target, .. } => super::attach::attach(target, io).await,
        Job::PortForward { .. } => Err(StreamError::InvalidArgument(
            "a port-forward URL does not run commands".to_owned(),
        )),
    }
}

/// The `metav1.Status` the kubelet writes on the error stream (v4, v5).
pub fn status_json(result: &Result<Outcome, StreamError>) -> Vec<u8> {
    let value = match result {
        Ok(Outcome::Exited { code: 0, .. }) => {
            serde_json::json!({"metadata": {}, "status": "Success"})
        }
        Ok(Outcome::Exited { code, .. }) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Ok(Outcome::Failed { .. }) | Err(_) => {
            let message = format!("error executing command in container: {}", failure(result));
            serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("Internal error occurred: {message}"),
                "reason": "InternalError",
                "details": {"causes": [{"message": message}]},
                "code": 500,
            })
        }
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

/// What the pre-v4 protocols write on the error stream: nothing on
/// success, the error's text otherwise.
fn status_text(result: &Result<Outcome, StreamError>) -> Option<String> {
    match result {
        Ok(Outcome::Exited { code: 0, .. }) => None,
        Ok(Outcome::Exited { code, .. }) => {
            Some(format!("command terminated with exit code {code}"))
        }
        _ => Some(failure(result)),
    }
}

fn failure(result: &Result<Outcome, StreamError>) -> String {
    match result {
        Ok(Outcome::Failed { error }) => StreamError::ExecFailed(error.clone()).to_string(),
        Ok(Outcome::Exited { code, .. }) => format!("exit code {code}"),
        Err(e) => e.to_string(),
    }
}

/// Parses resize messages (a stream of JSON objects) into sizes.
pub async fn resizes(mut data: mpsc::Receiver<Bytes>, to: mpsc::Sender<(u16, u16)>) {
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = data.recv().await {
        pending.extend_from_slice(&chunk);
        let mut stream = serde_json::Deserializer::from_slice(&pending).into_iter::<TermSize>();
        let mut used = 0;
        loop {
            match stream.next() {
                Some(Ok(size)) => {
                    used = stream.byte_offset();
                    if to.send((size.width, size.height)).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => return,
                None => {
                    used = pending.len();
                    break;
                }
            }
        }
        pending.drain(..used);
        if pending.len() > 4096 {
            return;
        }
    }
}

/// Serves one exec (or attach) over an upgraded SPDY connection.
pub async fn serve_spdy<R, W>(reader: R, writer: W, protocol: &str, job: Job)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let options = job.options();
    let (out, mut incoming) = conn::serve(reader, writer);
    let resizing = options.tty && protocol != "channel.k8s.io" && protocol != "v2.channel.k8s.io";
    let expected = 1
        + usize::from(options.stdin)
        + usize::from(options.stdout)
        + usize::from(options.stderr)
        + usize::from(resizing);
    let mut streams: Vec<(String, Stream)> = Vec::new();
    let deadline = tokio::time::sleep(STREAM_CREATION_TIMEOUT);
    tokio::pin!(deadline);
    while streams.len() < expected {
        tokio::select! {
            stream = incoming.recv() => match stream {
                Some(stream) => {
                    let kind = header(&stream.headers, "streamtype").unwrap_or("").to_owned();
                    let known = ["error", "stdin", "stdout", "stderr", "resize"];
                    if !known.contains(&kind.as_str()) || streams.iter().any(|(k, _)| *k == kind) {
                        tracing::debug!(kind, "exec: unexpected SPDY stream");
                        out.reset(stream.id, RST_PROTOCOL_ERROR).await;
                        out.go_away().await;
                        return;
                    }
                    streams.push((kind, stream));
                }
                None => return,
            },
            () = &mut deadline => {
                tracing::debug!("exec: the client did not open its streams in time");
                out.go_away().await;
                return;
            }
        }
    }
    let mut take = |kind: &str| {
        streams
            .iter()
            .position(|(k, _)| k == kind)
            .map(|i| streams.swap_remove(i).1)
    };
    let error = take("error");
    let mut io = Io::default();
    let mut senders = Vec::new();
    if let Some(stdin) = take("stdin") {
        io.stdin = Some(stdin.data);
    }
    for (kind, slot) in [("stdout", &mut io.stdout), ("stderr", &mut io.stderr)] {
        if let Some(stream) = take(kind) {
            let (tx, rx) = mpsc::channel(4);
            *slot = Some(tx);
            senders.push(tokio::spawn(pump(rx, out.clone(), stream.id)));
        }
    }
    if let Some(resize) = take("resize") {
        let (tx, rx) = mpsc::channel(4);
        io.resize = Some(rx);
        tokio::spawn(resizes(resize.data, tx));
    }
    // The client going away (the connection's reader ends, so no more
    // streams can come) ends the command too: an exec'd process is killed
    // with its helper, an attach lets go of the relay.
    let gone = async {
        while let Some(extra) = incoming.recv().await {
            out.reset(extra.id, RST_PROTOCOL_ERROR).await;
        }
    };
    let result = tokio::select! {
        result = run(&job, io) => result,
        () = gone => {
            tracing::debug!("exec/attach: the client went away");
            return;
        }
    };
    for sender in senders {
        let _ = sender.await;
    }
    if let Some(error) = error {
        let message = if protocol == SPDY_PROTOCOLS[0] {
            Some(status_json(&result))
        } else {
            status_text(&result).map(String::into_bytes)
        };
        if let Some(message) = message {
            out.data(error.id, Bytes::from(message)).await;
        }
        out.fin(error.id).await;
    }
    out.go_away().await;
}

/// Writes what a command prints onto its stream, then half-closes it.
async fn pump(mut rx: mpsc::Receiver<Bytes>, out: Writer, id: u32) {
    while let Some(data) = rx.recv().await {
        if !out.data(id, data).await {
            return;
        }
    }
    out.fin(id).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_the_kubelets() {
        let ok = Ok(Outcome::Exited {
            code: 0,
            signal: None,
        });
        assert_eq!(
            String::from_utf8(status_json(&ok)).unwrap(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        let failed = Ok(Outcome::Exited {
            code: 7,
            signal: None,
        });
        let v: serde_json::Value = serde_json::from_slice(&status_json(&failed)).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "7");
        let missing = Ok(Outcome::Failed {
            error: "exec: \"x\": executable file not found in $PATH".into(),
        });
        let v: serde_json::Value = serde_json::from_slice(&status_json(&missing)).unwrap();
        assert_eq!(v["reason"], "InternalError");
        assert_eq!(v["code"], 500);
        assert!(v["message"]
            .as_str()
            .unwrap()
            .contains("not found in $PATH"));
        assert_eq!(status_text(&ok), None);
        assert!(status_text(&failed).unwrap().contains("exit code 7"));
    }

    #[tokio::test]
    async fn resize_messages_split_anywhere_and_garbage_ends_them() {
        let (tx, rx) = mpsc::channel(8);
        let (sizes_tx, mut sizes) = mpsc::channel(8);
        let task = tokio::spawn(resizes(rx, sizes_tx));
        for chunk in [
            &br#"{"Width":80,"Hei"#[..],
            br#"ght":24}{"Width":1"#,
            br#"00,"Height":50}"#,
        ] {
            tx.send(Bytes::from_static(chunk)).await.unwrap();
        }
        assert_eq!(sizes.recv().await, Some((80, 24)));
        assert_eq!(sizes.recv().await, Some((100, 50)));
        tx.send(Bytes::from_static(b"}}not json")).await.unwrap();
        task.await.unwrap();
        assert_eq!(sizes.recv().await, None);
    }
}
