//! Tests of the `vimana-example` binary as a process: environment knobs,
//! exit codes, signals.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use vimana_example::pb::EchoRequest;

const BIN: &str = env!("CARGO_BIN_EXE_vimana-example");

fn command(envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn run(envs: &[(&str, &str)]) -> Output {
    command(envs).output().expect("run vimana-example")
}

/// Waits until `path` exists (the server bound its socket).
async fn wait_for_socket(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("vimana-example exited early: {status}");
        }
        assert!(Instant::now() < deadline, "socket never appeared");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0);
}

/// Waits for the child to exit (up to 10 s) and returns its output.
async fn finish(mut child: Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("vimana-example did not exit");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.wait_with_output().unwrap()
}

#[test]
fn missing_or_invalid_address_exits_2() {
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("VIMANA_GRPC_ADDRESS"), "{stderr}");

    let out = run(&[("VIMANA_GRPC_ADDRESS", "bogus")]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("VIMANA_GRPC_ADDRESS"), "{stderr}");
}

#[test]
fn exit_at_start() {
    let out = run(&[
        ("EXAMPLE_EXIT_AT_START", "7"),
        ("VIMANA_GRPC_ADDRESS", "unix:/nonexistent/s.sock"),
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert!(!out.stderr.is_empty());
}

#[test]
fn log_lines() {
    let out = run(&[("EXAMPLE_LOG_LINES", "5")]); // then exits 2: no address
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    assert!(lines[0].ends_with("1 of 5"));
    assert!(lines[4].ends_with("5 of 5"));
    assert_eq!(lines[5], "x".repeat(20000));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.lines().count() >= 2, "{stderr}");
}

#[tokio::test]
async fn serves_and_shuts_down_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let addr = format!("unix:{}", sock.display());
    let mut child = command(&[
        ("VIMANA_GRPC_ADDRESS", &addr),
        ("VIMANA_POD_ID", "pod-7"),
        ("EXAMPLE_STARTUP_DELAY_MS", "100"),
    ])
    .spawn()
    .unwrap();
    wait_for_socket(&sock, &mut child).await;

    let channel = vimana_example::connect_unix(&sock).await.unwrap();
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);

    let mut client = vimana_example::pb::echo_client::EchoClient::new(channel);
    let reply = client
        .unary(EchoRequest {
            message: "hi".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.served_by, "pod-7");

    // An in-flight call finishes after SIGTERM.
    let call = tokio::spawn(async move {
        client
            .unary(EchoRequest {
                message: "late".into(),
                sleep_ms: 400,
                ..Default::default()
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    signal(&child, libc::SIGTERM);
    let reply = call.await.unwrap().expect("in-flight call completes");
    assert_eq!(reply.into_inner().message, "late");

    let out = finish(child).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.lines().next().unwrap(),
        format!("vimana-example listening on {addr}")
    );
    assert!(!sock.exists(), "socket removed at exit");
}

#[tokio::test]
async fn crash_exits_3_mid_call() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let addr = format!("unix:{}", sock.display());
    let mut child = command(&[("VIMANA_GRPC_ADDRESS", &addr)]).spawn().unwrap();
    wait_for_socket(&sock, &mut child).await;

    let mut client = vimana_example::echo_client_unix(&sock).await.unwrap();
    let status = client
        .unary(EchoRequest {
            crash: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Internal
        ),
        "{status:?}"
    );
    let out = finish(child).await;
    assert_eq!(out.status.code(), Some(vimana_example::CRASH_EXIT_CODE));
}

#[tokio::test]
async fn health_knobs() {
    for (knob, expect) in [
        ("EXAMPLE_NOT_SERVING", Some(ServingStatus::NotServing)),
        ("EXAMPLE_NO_HEALTH", None),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let addr = format!("unix:{}", sock.display());
        let mut child = command(&[("VIMANA_GRPC_ADDRESS", &addr), (knob, "1")])
            .spawn()
            .unwrap();
        wait_for_socket(&sock, &mut child).await;
        let channel = vimana_example::connect_unix(&sock).await.unwrap();
        let result = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await;
        match expect {
            Some(s) => assert_eq!(result.unwrap().into_inner().status(), s),
            None => assert_eq!(result.unwrap_err().code(), Code::Unimplemented),
        }
        signal(&child, libc::SIGINT);
        let out = finish(child).await;
        assert_eq!(out.status.code(), Some(0), "{knob}: {out:?}");
    }
}

#[tokio::test]
async fn shutdown_grace_bounds_a_stream_that_never_ends() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let addr = format!("unix:{}", sock.display());
    let mut child = command(&[
        ("VIMANA_GRPC_ADDRESS", &addr),
        ("EXAMPLE_SHUTDOWN_GRACE_MS", "300"),
    ])
    .spawn()
    .unwrap();
    wait_for_socket(&sock, &mut child).await;

    let mut client = vimana_example::echo_client_unix(&sock).await.unwrap();
    // A bidi call whose request stream stays open.
    let (tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(1);
    let mut responses = client
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(EchoRequest::default()).await.unwrap();
    responses.message().await.unwrap().unwrap();

    let started = Instant::now();
    signal(&child, libc::SIGTERM);
    let out = finish(child).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    drop(tx);
}
