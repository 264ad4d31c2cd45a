//! The **upstream checkout** rows: the shard pool's follow + pick +
//! checkout + release over real HTTP/2 connections to the example
//! component, against `SendRequest::clone` + `ready`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use futures::FutureExt;
use vimanad::pool::{ComponentName, PodId, PodPool, Route, Snapshot};
use vimanad::shard::bench::Upstreams;

use crate::args::Config;
use crate::report::Row;
use crate::timing::{ns_per_op, side_by_side};

/// Runs the example component on a Unix socket in a tokio thread of its
/// own (as a component process would be); stops it when dropped.
struct Component {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Component {
    fn start() -> Component {
        let dir = tempfile::tempdir().expect("temporary directory");
        let socket = dir.path().join("grpc.sock");
        let address = vimana_example::Address::Unix(socket.clone());
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(async move {
                let server = vimana_example::spawn(&address, Default::default());
                let bound = server.as_ref().map(|_| ()).map_err(|e| e.to_string());
                bound_tx.send(bound).expect("bench waits");
                let _ = stopped.await;
                if let Ok(server) = server {
                    let _ = server.shutdown().await;
                }
            });
        });
        bound_rx
            .recv()
            .expect("component thread")
            .expect("example component binds its socket");
        Component {
            _dir: dir,
            socket,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A snapshot of one component with `pods` running pods, all served by
/// the example component's socket (each pod is its own pool key, so the
/// pool opens one connection per pod, as it would to `pods` sockets).
fn checkout_snapshot(pods: usize, socket: &std::path::Path) -> Snapshot {
    let mut pool = PodPool::default();
    let component =
        ComponentName::new("example.com", "vimana.example.v1.Echo", "1.0.0").expect("valid name");
    for ordinal in 0..pods {
        let id = PodId::new(component.clone(), ordinal as u64);
        pool.insert_pod(&id);
        // The component serves from a thread of this process.
        let peer =
            vimanad::pool::Peer::of_pid(std::process::id() as i32).expect("own PID namespace");
        pool.set_running(&id, socket.to_path_buf(), 1, peer);
    }
    Snapshot::build(&pool, 1, &Default::default())
}

pub fn checkout_rows(config: &Config, rows: &mut Vec<Row>) {
    let component = Component::start();
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("primitives-shard")
        .make()
        .expect("glommio executor (io_uring; as root, or with RLIMIT_MEMLOCK raised)");
    executor.run(async {
        for pods in [1, 4, 16] {
            let snapshot = checkout_snapshot(pods, &component.socket);
            let endpoints = match snapshot.route("example.com", "vimana.example.v1.Echo", None) {
                Route::Serve(version) => &version.endpoints[..],
                other => panic!("not served: {other:?}"),
            };
            assert_eq!(endpoints.len(), pods);
            let upstreams = Upstreams::default();
            upstreams.follow(&snapshot);
            // Open every connection (as the first calls would), and keep a
            // sender on the first for the baseline: the same connection.
            let mut baseline_sender = None;
            for endpoint in endpoints {
                let (outstanding, ready) = upstreams.checkout(endpoint);
                let (sender, permit) = ready
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", endpoint.socket.display()));
                drop(permit);
                drop(outstanding); // released
                baseline_sender.get_or_insert(sender);
            }
            let sender = baseline_sender.expect("one pod at least");
            // Let the connection tasks take the component's SETTINGS.
            glommio::timer::sleep(Duration::from_millis(20)).await;

            let (t, b) = side_by_side(
                config,
                |w| {
                    ns_per_op(w, || {
                        // What call.rs does before sending the request.
                        upstreams.follow(black_box(&snapshot));
                        let endpoint = upstreams.pick(black_box(endpoints));
                        let (outstanding, ready) = upstreams.checkout(endpoint);
                        let ready = ready
                            .now_or_never()
                            .expect("a ready checkout never yields")
                            .expect("connection alive");
                        black_box(&ready);
                        drop(outstanding); // the release
                    })
                },
                |w| {
                    ns_per_op(w, || {
                        let ready = black_box(&sender)
                            .clone()
                            .ready()
                            .now_or_never()
                            .expect("a ready sender never yields")
                            .expect("connection alive");
                        black_box(&ready);
                    })
                },
            );
            rows.push(Row {
                group: "upstream",
                test: format!(
                    "follow + pick + checkout + release, {pods} pod{}",
                    if pods == 1 { "" } else { "s" }
                ),
                test_ns: t,
                baseline: "SendRequest::clone + ready".into(),
                baseline_ns: b,
            });
        }
    });
}
