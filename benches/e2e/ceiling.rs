//! The ceiling: the component's own tonic client over HTTP/2 on its Unix
//! socket, with the same streams in flight as the HTTP/3 paths, in a tokio
//! runtime with one worker thread (like one HTTP/3 connection's thread).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use vimana_example::pb::echo_client::EchoClient;

use crate::args::Kind;
use crate::common::uds_connect;
use crate::h3::shares;
use crate::measure::{sample_window, Load, Sample, Schedule, Tally, Watched, DRAIN};
use crate::request::Request;

/// An HTTP/2 channel over a Unix socket, without a request timeout (stalls
/// are this bench's to find).
async fn component_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let endpoint =
        Endpoint::from_static("http://localhost").connect_timeout(Duration::from_secs(2));
    uds_connect(endpoint, path).await
}

/// One ceiling window: the streams as tasks on `rt`, over as many HTTP/2
/// connections as the HTTP/3 paths use.
pub fn window(
    rt: &tokio::runtime::Runtime,
    socket: &Path,
    load: &Load,
    request: &Arc<Request>,
    watched: Watched,
) -> Sample {
    let shares = shares(load.streams, load.connections);
    let channels: Vec<Channel> = rt.block_on(async {
        let mut channels = Vec::new();
        for _ in &shares {
            let channel = component_channel(socket).await;
            channels.push(channel.expect("connect to the component's socket"));
        }
        channels
    });
    let schedule = Schedule::after_warmup(load.warmup, load.duration);
    let mut tasks = Vec::new();
    for (channel, &share) in channels.iter().zip(&shares) {
        for _ in 0..share {
            let client = EchoClient::new(channel.clone());
            tasks.push(rt.spawn(stream(client, request.clone(), schedule)));
        }
    }
    let cost = sample_window(&schedule, watched);
    let mut tally = Tally::default();
    rt.block_on(async {
        for task in tasks {
            tally.merge(task.await.expect("a ceiling stream panicked"));
        }
    });
    drop(channels);
    Sample::of(tally, load.duration, cost)
}

/// One call: the number of replies, each checked.
async fn call(client: &mut EchoClient<Channel>, request: &Request) -> Result<u64, String> {
    let status = |s: tonic::Status| format!("grpc-status {}: {}", s.code() as i32, s.message());
    match request.kind {
        Kind::Unary => {
            let reply = client.unary(request.unary.clone()).await.map_err(status)?;
            request.check_message(0, reply.get_ref())?;
            Ok(1)
        }
        Kind::ServerStream => {
            let response = client.server_stream(request.stream.clone()).await;
            let mut replies = response.map_err(status)?.into_inner();
            let mut index = 0;
            while let Some(reply) = replies.message().await.map_err(status)? {
                request.check_message(index, &reply)?;
                index += 1;
            }
            match index == request.expected_messages() {
                true => Ok(index),
                false => Err(format!("{index} messages in the response")),
            }
        }
    }
}

/// One stream of ceiling calls, back to back, until the window ends.
async fn stream(
    mut client: EchoClient<Channel>,
    request: Arc<Request>,
    schedule: Schedule,
) -> Tally {
    let mut tally = Tally::default();
    let drain_deadline = tokio::time::Instant::from_std(schedule.end + DRAIN);
    while Instant::now() < schedule.end {
        let started = Instant::now();
        let result = tokio::time::timeout_at(drain_deadline, call(&mut client, &request)).await;
        let finished = Instant::now();
        match result {
            Err(_) => {
                tally.stalled += 1;
                tally.error("stalled: no answer".into());
                break;
            }
            Ok(Ok(messages)) => tally.done(started, finished, messages, &schedule),
            Ok(Err(e)) => {
                tally.note_latency(finished - started);
                tally.error(e);
            }
        }
    }
    tally
}
