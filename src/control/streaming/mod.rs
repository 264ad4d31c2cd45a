//! The CRI streaming server: ExecSync, and the URLs Exec, Attach and
//! PortForward answer with.
//!
//! Owns a TCP listener (`serve --stream-address`, default loopback with a
//! free port, as containerd), the single-use URL tokens ([`token`]), the
//! transports (SPDY/3.1 in [`spdy`], WebSocket in [`websocket`]), the
//! remote-command and port-forward protocols, and running commands inside
//! containers through the `vimanad exec-shim` helper ([`exec`],
//! [`exec_shim`]). It reads the store to find a container's process and
//! socket and changes nothing in it; it never touches `crate::shard`.

mod attach;
pub mod exec;
pub mod exec_shim;
mod http;
pub mod portforward;
mod remotecommand;
pub mod spdy;
mod token;
mod websocket;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use tokio::net::{TcpListener, TcpStream};

use self::exec::Target;
use self::portforward::PodTarget;
use self::remotecommand::Options;
use self::token::Tokens;
use super::runtime::{parse_pod_id, Runtime};
use super::state::{Container, ContainerId, ContainerPhase};

/// Errors of the streaming layer, mapped once to gRPC statuses.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NotRunning(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("command {command:?} timed out after {timeout:?}; it was killed")]
    Timeout {
        command: Vec<String>,
        timeout: Duration,
    },
    #[error("failed to exec in container: exec failed: unable to start container process: {0}")]
    ExecFailed(String),
    #[error("{0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
    #[error("too many streaming requests in flight ({max}); try again later", max = token::MAX_IN_FLIGHT)]
    Busy,
    #[error("{0}")]
    Unimplemented(String),
}

impl From<StreamError> for tonic::Status {
    fn from(e: StreamError) -> Self {
        let message = e.to_string();
        match e {
            StreamError::NotFound(_) => tonic::Status::not_found(message),
            StreamError::NotRunning(_) => tonic::Status::failed_precondition(message),
            StreamError::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            StreamError::Timeout { .. } => tonic::Status::deadline_exceeded(message),
            StreamError::ExecFailed(_) => tonic::Status::unknown(message),
            StreamError::Io(..) => tonic::Status::internal(message),
            StreamError::Busy => tonic::Status::resource_exhausted(message),
            StreamError::Unimplemented(_) => tonic::Status::unimplemented(message),
        }
    }
}

/// What a URL token stands for.
#[derive(Debug, Clone)]
pub enum Job {
    Exec {
        target: Target,
        cmd: Vec<String>,
        options: Options,
    },
    Attach {
        target: attach::AttachTarget,
        options: Options,
    },
    PortForward {
        target: PodTarget,
    },
}

impl Job {
    fn options(&self) -> Options {
        match self {
            Job::Exec { options, .. } | Job::Attach { options, .. } => *options,
            Job::PortForward { .. } => Options::default(),
        }
    }

    fn path(&self) -> &'static str {
        match self {
            Job::Exec { .. } => "exec",
            Job::Attach { .. } => "attach",
            Job::PortForward { .. } => "portforward",
        }
    }
}

pub struct Server {
    runtime: Arc<Runtime>,
    tokens: Tokens<Job>,
    /// `http://HOST:PORT`, what URLs start with.
    base: String,
}

impl Server {
    /// Binds the listener and starts serving it.
    pub async fn start(runtime: Arc<Runtime>) -> Result<Arc<Self>, super::Error> {
        let wanted = runtime.config.stream_address;
        let listener = TcpListener::bind(wanted)
            .await
            .map_err(super::Error::io(format!(
                "bind the streaming server on {wanted}"
            )))?;
        let local = listener
            .local_addr()
            .map_err(super::Error::io("streaming server address".to_owned()))?;
        let host = if local.ip().is_unspecified() {
            // Reachable from the kubelet: the node's address.
            match runtime.config.pod_ip.parse::<std::net::IpAddr>() {
                Ok(ip) => SocketAddr::new(ip, local.port()).to_string(),
                Err(_) => local.to_string(),
            }
        } else {
            local.to_string()
        };
        let server = Arc::new(Self {
            runtime,
            tokens: Tokens::new(token::TTL),
            base: format!("http://{host}"),
        });
        tracing::info!(address = %local, "serving CRI streaming (exec, port-forward)");
        let accepting = Arc::downgrade(&server);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Some(server) = accepting.upgrade() else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move { server.handle(stream).await });
            }
        });
        Ok(server)
    }

    pub async fn exec_sync(
        &self,
        req: cri::ExecSyncRequest,
    ) -> Result<cri::ExecSyncResponse, StreamError> {
        check_cmd(&req.cmd)?;
        let target = self.target(&req.container_id)?;
        let timeout = (req.timeout > 0).then(|| Duration::from_secs(req.timeout as u64));
        let output = exec::exec_sync(&target, &req.cmd, timeout).await?;
        Ok(cri::ExecSyncResponse {
            stdout: output.stdout,
            stderr: output.stderr,
            exit_code: output.exit_code,
        })
    }

    pub fn exec(&self, req: cri::ExecRequest) -> Result<cri::ExecResponse, StreamError> {
        check_cmd(&req.cmd)?;
        // The kubelet's own checks of an exec request.
        if req.tty && req.stderr {
            return Err(StreamError::InvalidArgument(
                "tty and stderr cannot both be true".to_owned(),
            ));
        }
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(StreamError::InvalidArgument(
                "one of stdin, stdout, or stderr must be set".to_owned(),
            ));
        }
        let target = self.target(&req.container_id)?;
        let job = Job::Exec {
            target,
            cmd: req.cmd,
            options: Options {
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                tty: req.tty,
            },
        };
        Ok(cri::ExecResponse {
            url: self.url(job)?,
        })
    }

    pub fn attach(&self, req: cri::AttachRequest) -> Result<cri::AttachResponse, StreamError> {
        let (target, (stdin_enabled, tty)) =
            self.container(&req.container_id, |c| (c.config.stdin, c.config.tty))?;
        if req.stdin && !stdin_enabled {
            return Err(StreamError::NotRunning(format!(
                "container {}: stdin is not enabled (the container was not created with stdin: true)",
                req.container_id
            )));
        }
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(StreamError::InvalidArgument(
                "one of stdin, stdout, or stderr must be set".to_owned(),
            ));
        }
        let dir = target.spec.parent().map(PathBuf::from).unwrap_or_default();
        let job = Job::Attach {
            target: attach::AttachTarget {
                container_id: req.container_id,
                socket: crate::control::container::attach::socket_path(&dir),
            },
            // The container's terminal decides: with a tty, stderr is in
            // stdout.
            options: Options {
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr && !tty,
                tty,
            },
        };
        Ok(cri::AttachResponse {
            url: self.url(job)?,
        })
    }

    pub fn port_forward(
        &self,
        req: cri::PortForwardRequest,
    ) -> Result<cri::PortForwardResponse, StreamError> {
        let (target, socket) = self.pod(&req.pod_sandbox_id)?;
        let job = Job::PortForward {
            target: PodTarget {
                pod_id: req.pod_sandbox_id,
                socket,
                pid: target.pid,
            },
        };
        Ok(cri::PortForwardResponse {
            url: self.url(job)?,
        })
    }

    fn url(&self, job: Job) -> Result<String, StreamError> {
        let path = job.path();
        let token = self.tokens.insert(job).ok_or(StreamError::Busy)?;
        Ok(format!("{}/{path}/{token}", self.base))
    }

    /// The running container `id` (`DOMAIN:SERVICE@VERSION#N` or `…#N.K`),
    /// proved by its recorded identity.
    fn target(&self, id: &str) -> Result<Target, StreamError> {
        self.container(id, |_| ()).map(|(target, ())| target)
    }

    /// [`Self::target`], with what `read` takes from the container's record
    /// under the same look at the store.
    fn container<T>(
        &self,
        id: &str,
        read: impl FnOnce(&Container) -> T,
    ) -> Result<(Target, T), StreamError> {
        let cid = ContainerId::parse(id).ok_or_else(|| not_found("container", id))?;
        let store = self.runtime.store();
        let (_, container) = store
            .container(&cid)
            .ok_or_else(|| not_found("container", id))?;
        Ok((running(id, container)?, read(container)))
    }

    /// The running container of pod sandbox `id` and the pod's gRPC socket:
    /// what a port-forward goes to.
    fn pod(&self, id: &str) -> Result<(Target, PathBuf), StreamError> {
        let pod_id = parse_pod_id(id).ok_or_else(|| not_found("pod sandbox", id))?;
        let store = self.runtime.store();
        let pod = store
            .pods
            .get(&pod_id)
            .ok_or_else(|| not_found("pod sandbox", id))?;
        let container = pod.current().ok_or_else(|| {
            StreamError::NotRunning(format!(
                "pod sandbox {id} has no running container: cannot forward into it"
            ))
        })?;
        let target = running(&pod.container_id(container).to_string(), container)?;
        Ok((target, super::container::socket_path(&pod.socket_dir)))
    }

    async fn handle(self: Arc<Self>, mut stream: TcpStream) {
        let Ok(Some(head)) =
            tokio::time::timeout(http::HEAD_TIMEOUT, http::read_head(&mut stream)).await
        else {
            http::respond(&mut stream, 400, &[], "malformed HTTP request").await;
            return;
        };
        if head.method != "GET" && head.method != "POST" {
            http::respond(&mut stream, 405, &[], "only GET and POST are served").await;
            return;
        }
        let mut parts = head
            .path
            .split('?')
            .next()
            .unwrap_or("")
            .trim_start_matches('/')
            .split('/');
        let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if parts.next().is_some() || !["exec", "attach", "portforward"].contains(&kind) {
            http::respond(&mut stream, 404, &[], "404 page not found").await;
            return;
        }
        let Some(job) = self.tokens.take(token).filter(|job| job.path() == kind) else {
            http::respond(
                &mut stream,
                404,
                &[],
                "unknown, used or expired streaming token: ask the runtime for a new URL",
            )
            .await;
            return;
        };
        if head.upgrades_to("websocket") {
            serve_websocket(stream, head, job).await;
        } else if head.upgrades_to("SPDY/3.1") {
            serve_spdy(stream, head, job).await;
        } else {
            http::respond(
                &mut stream,
                400,
                &[],
                "unable to upgrade: missing upgrade headers in request (Connection: Upgrade with Upgrade: SPDY/3.1 or websocket)",
            )
            .await;
        }
    }
}

async fn serve_spdy(mut stream: TcpStream, head: http::Head, job: Job) {
    let supported: &[&str] = match job {
        Job::Exec { .. } | Job::Attach { .. } => &remotecommand::SPDY_PROTOCOLS,
        Job::PortForward { .. } => &[portforward::PROTOCOL],
    };
    let offered = head.values("x-stream-protocol-version");
    let protocol = if offered.is_empty() {
        None
    } else {
        match offered.iter().find(|p| supported.contains(&p.as_str())) {
            Some(p) => Some(p.clone()),
            None => {
                let accepted: Vec<(&str, String)> = supported
                    .iter()
                    .map(|p| ("X-Accepted-Stream-Protocol-Versions", p.to_string()))
                    .collect();
                let body = format!(
                    "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {supported:?}"
                );
                http::respond(&mut stream, 403, &accepted, &body).await;
                return;
            }
        }
    };
    if http::switch_to_spdy(&mut stream, protocol.as_deref())
        .await
        .is_err()
    {
        return;
    }
    let (reader, writer) = stream.into_split();
    let reader =
        tokio::io::AsyncReadExt::chain(std::io::Cursor::new(head.leftover.to_vec()), reader);
    match job {
        Job::PortForward { target } => portforward::serve(reader, writer, target).await,
        job => {
            let protocol = protocol.unwrap_or_else(|| "channel.k8s.io".to_owned());
            remotecommand::serve_spdy(reader, writer, &protocol, job).await
        }
    }
}

async fn serve_websocket(mut stream: TcpStream, head: http::Head, job: Job) {
    let supported: &[&str] = match job {
        Job::Exec { .. } | Job::Attach { .. } => &websocket::EXEC_PROTOCOLS,
        Job::PortForward { .. } => &[websocket::TUNNEL_PROTOCOL],
    };
    let offered = head.values("sec-websocket-protocol");
    let Some(protocol) = offered
        .iter()
        .find(|p| supported.contains(&p.as_str()))
        .cloned()
    else {
        let body = format!(
            "unable to upgrade: no supported WebSocket subprotocol: client offers {offered:?}, server accepts {supported:?}"
        );
        http::respond(&mut stream, 400, &[], &body).await;
        return;
    };
    let Some(key) = head.value("sec-websocket-key").map(str::to_owned) else {
        http::respond(&mut stream, 400, &[], "missing Sec-WebSocket-Key").await;
        return;
    };
    if http::switch_to_websocket(&mut stream, &key, &protocol)
        .await
        .is_err()
    {
        return;
    }
    let ws = websocket::accept(stream, head.leftover.to_vec()).await;
    match job {
        Job::PortForward { target } => {
            let (reader, writer) = tokio::io::split(websocket::tunnel(ws));
            portforward::serve(reader, writer, target).await
        }
        job => websocket::serve_exec(ws, &protocol, job).await,
    }
}

fn check_cmd(cmd: &[String]) -> Result<(), StreamError> {
    if cmd.first().is_none_or(|c| c.is_empty()) {
        return Err(StreamError::InvalidArgument(
            "cmd: no command given".to_owned(),
        ));
    }
    Ok(())
}

/// The exec target of `container`, if it is running (its recorded process
/// still alive); FAILED_PRECONDITION otherwise.
fn running(id: &str, container: &Container) -> Result<Target, StreamError> {
    let identity = container
        .process
        .as_ref()
        .map(|p| p.identity())
        .or(container.identity);
    match (container.phase, identity) {
        (ContainerPhase::Running, Some(identity)) if identity.is_alive() => Ok(Target {
            container_id: id.to_owned(),
            pid: identity.pid,
            pid_start: identity.pid_start,
            spec: container.dir.join("spec.json"),
        }),
        (phase, _) => Err(StreamError::NotRunning(format!(
            "container {id} is not running (state {phase:?}): cannot exec, attach or forward into it"
        ))),
    }
}

fn not_found(what: &str, id: &str) -> StreamError {
    StreamError::NotFound(format!("{what} {id:?} not found"))
}
