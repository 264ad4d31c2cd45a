//! `vimanad cri ...`: run, list and stop vimana pods through the CRI socket,
//! the way the kubelet would (a tiny crictl for nodes without one).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use vimanad::pool::ComponentName;

/// `println!` that ends the program quietly when stdout is a closed pipe
/// (`vimanad cri inspect ID | head`), instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {
        emit(format_args!($($arg)*))
    };
}

fn emit(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("vimanad: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

#[derive(Args)]
pub struct CriArgs {
    /// The runtime's CRI socket.
    #[arg(
        long,
        env = "VIMANAD_CRI_SOCKET",
        default_value = "/run/vimanad/vimanad.sock"
    )]
    cri_socket: PathBuf,
    #[command(subcommand)]
    command: CriCommand,
}

#[derive(Subcommand)]
enum CriCommand {
    /// Run a pod of a component: RunPodSandbox, CreateContainer, StartContainer.
    Run {
        /// DOMAIN:SERVICE@VERSION, e.g. example.com:vimana.example.v1.Echo@1.0.0
        #[arg(long)]
        component: String,
        /// Image in the store, e.g. example.com/vimana-example:1.0.0
        #[arg(long)]
        image: String,
        /// Pod name (default: derived from the component).
        #[arg(long)]
        name: Option<String>,
        /// Where the kubelet would keep the pod's logs.
        #[arg(long, default_value = "/var/log/pods")]
        log_dir: PathBuf,
        /// Environment for the component, KEY=VALUE (repeatable).
        #[arg(long = "env")]
        envs: Vec<String>,
    },
    /// List pods and their containers.
    Ps,
    /// Show a pod's sandbox and container status as JSON.
    Inspect { id: String },
    /// Stop a pod's container (SIGTERM, grace period, SIGKILL).
    Stop {
        id: String,
        #[arg(long, default_value = "10")]
        timeout: i64,
    },
    /// Stop and remove a pod (StopContainer, StopPodSandbox, RemoveContainer, RemovePodSandbox).
    Rm {
        id: String,
        /// Grace period for the component, in seconds.
        #[arg(long, default_value = "10")]
        timeout: i64,
    },
}

pub fn run(args: CriArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut client = RuntimeServiceClient::new(connect(args.cri_socket.clone()).await?);
        match args.command {
            CriCommand::Run {
                component,
                image,
                name,
                log_dir,
                envs,
            } => {
                let component: ComponentName = component.parse()?;
                run_pod(&mut client, &component, &image, name, log_dir, &envs).await
            }
            CriCommand::Ps => ps(&mut client).await,
            CriCommand::Inspect { id } => inspect(&mut client, &id).await,
            CriCommand::Stop { id, timeout } => {
                client
                    .stop_container(cri::StopContainerRequest {
                        container_id: id.clone(),
                        timeout,
                    })
                    .await?;
                say!("container {id} stopped");
                Ok(())
            }
            CriCommand::Rm { id, timeout } => remove(&mut client, &id, timeout).await,
        }
    })
}

async fn connect(socket: PathBuf) -> anyhow::Result<Channel> {
    let path = socket.clone();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| {
            format!(
                "connect to the CRI socket {} (is `vimanad serve` running?)",
                socket.display()
            )
        })
}

async fn run_pod(
    client: &mut RuntimeServiceClient<Channel>,
    component: &ComponentName,
    image: &str,
    name: Option<String>,
    log_dir: PathBuf,
    envs: &[String],
) -> anyhow::Result<()> {
    let name = name.unwrap_or_else(|| {
        let service = component
            .service()
            .rsplit('.')
            .next()
            .unwrap_or("component")
            .to_lowercase();
        format!("{service}-{}", std::process::id())
    });
    let labels: HashMap<String, String> = [
        ("vimana.host/domain", component.domain().to_owned()),
        ("vimana.host/service", component.service().to_owned()),
        ("vimana.host/version", component.version().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let sandbox = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: format!("{name}-uid"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.clone(),
        log_directory: log_dir.join(&name).display().to_string(),
        labels,
        ..Default::default()
    };
    let pod_id = client
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: "vimana".into(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let envs = envs
        .iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => Ok(cri::KeyValue {
                key: k.into(),
                value: v.into(),
            }),
            None => bail!("--env {e:?}: expected KEY=VALUE"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "component".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        envs,
        log_path: "component/0.log".into(),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let container_id = client
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(config),
            sandbox_config: Some(sandbox),
        })
        .await?
        .into_inner()
        .container_id;
    client
        .start_container(cri::StartContainerRequest {
            container_id: container_id.clone(),
        })
        .await?;
    let status = client
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: true,
        })
        .await?
        .into_inner();
    say!(
        "pod {pod_id} running (created and started in {:?})",
        started.elapsed()
    );
    if let Some(socket) = status.info.get("socket") {
        say!("  component socket: {socket}");
    }
    say!(
        "  logs: {}",
        log_dir.join(&name).join("component/0.log").display()
    );
    Ok(())
}

async fn ps(client: &mut RuntimeServiceClient<Channel>) -> anyhow::Result<()> {
    let pods = client
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await?
        .into_inner()
        .items;
    let containers = client
        .list_containers(cri::ListContainersRequest::default())
        .await?
        .into_inner()
        .containers;
    say!("{:<60} {:<10} {:<10} NAME", "POD", "SANDBOX", "CONTAINER");
    for pod in pods {
        let sandbox = cri::PodSandboxState::try_from(pod.state)
            .map(|s| s.as_str_name())
            .unwrap_or("?");
        // The pod's newest container (restarts make new ones).
        let container = containers
            .iter()
            .filter(|c| c.pod_sandbox_id == pod.id)
            .max_by_key(|c| c.created_at)
            .and_then(|c| cri::ContainerState::try_from(c.state).ok())
            .map(|s| s.as_str_name())
            .unwrap_or("-");
        let name = pod.metadata.map(|m| m.name).unwrap_or_default();
        let short = |s: &str| {
            s.trim_start_matches("SANDBOX_")
                .trim_start_matches("CONTAINER_")
                .to_lowercase()
        };
        say!(
            "{:<60} {:<10} {:<10} {name}",
            pod.id,
            short(sandbox),
            short(container)
        );
    }
    Ok(())
}

async fn remove(
    client: &mut RuntimeServiceClient<Channel>,
    id: &str,
    timeout: i64,
) -> anyhow::Result<()> {
    // Its running container (the newest, after restarts) gets its grace
    // period; RemovePodSandbox then removes the pod and every container.
    let containers = client
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: id.into(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers;
    for c in containers
        .iter()
        .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
    {
        client
            .stop_container(cri::StopContainerRequest {
                container_id: c.id.clone(),
                timeout,
            })
            .await?;
    }
    client
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await?;
    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await?;
    say!("pod {id} removed");
    Ok(())
}

async fn inspect(client: &mut RuntimeServiceClient<Channel>, id: &str) -> anyhow::Result<()> {
    let pod = client
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await?
        .into_inner();
    let container = client
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .map(|r| r.into_inner())
        .ok();
    let json = serde_json::json!({ "sandbox": pod, "container": container });
    say!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}
