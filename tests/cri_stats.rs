//! Stats and metrics from the cgroups, checked through crictl (a client
//! nobody here wrote): `stats`, `statsp`, `metricdescs`, `metricsp`,
//! `imagefsinfo`, with their filters, on real running components.

mod common;
mod tools;

use std::time::Duration;

use common::Node;
use k8s_cri::v1 as cri;
use serde_json::Value;
use tools::{crictl, crictl_json, u64_at};

const COMPONENT: (&str, &str, &str) = ("example.com", common::SERVICE, "1.0.0");
const OTHER: (&str, &str, &str) = ("other.example.com", common::SERVICE, "1.0.0");

fn upper_dir(node: &Node, id: &str) -> std::path::PathBuf {
    let ordinal = id.rsplit('#').next().unwrap();
    node.state_dir()
        .join("containers")
        .join(ordinal)
        .join("upper")
}

fn stats_of<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["stats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["attributes"]["id"] == id)
        .unwrap_or_else(|| panic!("no stats for {id}: {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_stats_statsp_and_filters_show_cgroup_counters() {
    let Some(crictl_bin) = tools::tool("crictl") else {
        return;
    };
    let mut node = Node::start().await;
    let a = node.running_pod("stats-a", COMPONENT).await;
    let b = node.running_pod("stats-b", OTHER).await;
    let socket = node.socket();

    // What a tenant writes lands in its writable layer: 1 MiB of data, and
    // a symlink out of the layer that the walk must not follow.
    let upper = upper_dir(&node, &a);
    std::fs::write(upper.join("written"), vec![7u8; 1 << 20]).unwrap();
    std::os::unix::fs::symlink("/usr", upper.join("escape")).unwrap();

    let all = crictl_json(&crictl_bin, &socket, &["stats", "-o", "json"]);
    assert_eq!(all["stats"].as_array().unwrap().len(), 2, "{all}");
    let sa = stats_of(&all, &a);
    assert_eq!(sa["attributes"]["metadata"]["name"], "component");
    assert_eq!(sa["attributes"]["labels"]["container"], "component");
    let cpu_ns = u64_at(sa, "/cpu/usageCoreNanoSeconds").expect("cpu usage");
    assert!(cpu_ns > 0, "a started component has used CPU: {sa}");
    let usage = u64_at(sa, "/memory/usageBytes").expect("memory usage");
    let working_set = u64_at(sa, "/memory/workingSetBytes").expect("working set");
    assert!(working_set > 0 && working_set <= usage, "{sa}");
    assert!(u64_at(sa, "/memory/rssBytes").expect("rss") > 0, "{sa}");
    assert!(
        u64_at(sa, "/memory/pageFaults").expect("page faults") > 0,
        "{sa}"
    );
    assert!(u64_at(sa, "/memory/majorPageFaults").is_some(), "{sa}");
    let layer_bytes = u64_at(sa, "/writableLayer/usedBytes").expect("layer bytes");
    assert!(
        (1 << 20..64 << 20).contains(&layer_bytes),
        "the layer holds the 1 MiB file and not /usr: {layer_bytes}"
    );
    // Two more inodes than the untouched layer of pod b: written, escape.
    let sb = stats_of(&all, &b);
    assert_eq!(
        u64_at(sa, "/writableLayer/inodesUsed").unwrap(),
        u64_at(sb, "/writableLayer/inodesUsed").unwrap() + 2,
        "{sa} {sb}"
    );
    let mountpoint = sa["writableLayer"]["fsId"]["mountpoint"].as_str().unwrap();
    assert_eq!(
        mountpoint,
        node.state_dir().join("containers").display().to_string()
    );
    assert!(u64_at(sb, "/writableLayer/usedBytes").unwrap() < 1 << 20);

    // Nano-cores need a previous sample: the second reading has them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = crictl_json(&crictl_bin, &socket, &["stats", "--id", &a, "-o", "json"]);
    let sa2 = stats_of(&again, &a);
    assert!(u64_at(sa2, "/cpu/usageNanoCores").is_some(), "{sa2}");
    assert!(u64_at(sa2, "/cpu/usageCoreNanoSeconds").unwrap() >= cpu_ns);

    // Filters: by ID, by pod, by label.
    for filter in [
        vec!["--id", a.as_str()],
        vec!["--pod", a.as_str()],
        vec!["--label", "container=component", "--pod", a.as_str()],
    ] {
        let mut args = vec!["stats", "-o", "json"];
        args.extend(&filter);
        let one = crictl_json(&crictl_bin, &socket, &args);
        let ids: Vec<&str> = one["stats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["attributes"]["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [a.as_str()], "filter {filter:?}");
    }
    let none = crictl_json(
        &crictl_bin,
        &socket,
        &["stats", "--label", "container=nobody", "-o", "json"],
    );
    assert!(
        none["stats"].as_array().is_none_or(|s| s.is_empty()),
        "{none}"
    );

    // The table crictl users read.
    let table = crictl(&crictl_bin, &socket, &["stats", "--id", &a]);
    assert!(
        table.contains("CPU %") && table.contains("component"),
        "{table}"
    );

    // Pod sandbox stats: the pod's sums and its container inside.
    let pods = crictl_json(&crictl_bin, &socket, &["statsp", "-o", "json"]);
    let pa = pods["stats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["attributes"]["id"] == a.as_str())
        .unwrap_or_else(|| panic!("{pods}"));
    assert_eq!(pa["attributes"]["metadata"]["name"], "stats-a");
    assert!(
        u64_at(pa, "/linux/cpu/usageCoreNanoSeconds").unwrap() > 0,
        "{pa}"
    );
    assert!(
        u64_at(pa, "/linux/memory/workingSetBytes").unwrap() > 0,
        "{pa}"
    );
    assert!(
        u64_at(pa, "/linux/process/processCount").unwrap() >= 1,
        "{pa}"
    );
    let inner = &pa["linux"]["containers"][0];
    assert_eq!(inner["attributes"]["id"], a.as_str());
    let one_pod = crictl_json(
        &crictl_bin,
        &socket,
        &["statsp", "--label", "app=stats-b", "-o", "json"],
    );
    assert_eq!(one_pod["stats"].as_array().unwrap().len(), 1, "{one_pod}");
    assert_eq!(one_pod["stats"][0]["attributes"]["id"], b.as_str());

    // PodSandboxStats / ContainerStats of unknown IDs: NOT_FOUND.
    let err = node
        .runtime
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = node
        .runtime
        .container_stats(cri::ContainerStatsRequest {
            container_id: "example.com:x@1.0.0#999".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // A stopped container still has attributes and its layer, no cgroup.
    node.stop_container(&b, 10).await.unwrap();
    let stopped = node
        .runtime
        .container_stats(cri::ContainerStatsRequest {
            container_id: b.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!(stopped.cpu.is_none() && stopped.memory.is_none());
    assert!(stopped.writable_layer.is_some());

    node.remove_running_pod(&a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_metrics_and_imagefsinfo() {
    let Some(crictl_bin) = tools::tool("crictl") else {
        return;
    };
    let mut node = Node::start().await;
    let a = node.running_pod("metrics-a", COMPONENT).await;
    let socket = node.socket();

    let descs = crictl_json(&crictl_bin, &socket, &["metricdescs", "-o", "json"]);
    let descriptors = descs["descriptors"].as_array().unwrap();
    let names: Vec<&str> = descriptors
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    for wanted in [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_memory_usage_bytes",
        "container_memory_rss",
        "container_fs_usage_bytes",
    ] {
        assert!(names.contains(&wanted), "{wanted} not in {names:?}");
    }

    let metrics = crictl_json(&crictl_bin, &socket, &["metricsp", "-o", "json"]);
    let pod = metrics["podMetrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podSandboxId"] == a.as_str())
        .unwrap_or_else(|| panic!("{metrics}"));
    let container = &pod["containerMetrics"][0];
    assert_eq!(container["containerId"], a.as_str());
    let samples = container["metrics"].as_array().unwrap();
    let working_set = samples
        .iter()
        .find(|m| m["name"] == "container_memory_working_set_bytes")
        .unwrap_or_else(|| panic!("{container}"));
    assert!(u64_at(working_set, "/value").unwrap() > 0);
    // Label values line up with the descriptor's keys (the kubelet turns
    // them into Prometheus labels by position).
    for m in samples {
        let d = descriptors.iter().find(|d| d["name"] == m["name"]).unwrap();
        assert_eq!(
            d["labelKeys"].as_array().unwrap().len(),
            m["labelValues"].as_array().unwrap().len(),
            "{m}"
        );
    }
    let values: Vec<&str> = working_set["labelValues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        values,
        ["component", &a, common::IMAGE, &a, "default", "metrics-a"]
    );

    let value_of = |name: &str| {
        samples
            .iter()
            .find(|m| m["name"] == name)
            .and_then(|m| u64_at(m, "/value"))
            .unwrap_or_else(|| panic!("no {name} in {container}"))
    };
    assert_eq!(value_of("container_processes"), 1, "the component alone");
    assert!(value_of("container_threads") >= 1);
    // The component's socket listener (and its epoll and pipes).
    assert!(value_of("container_sockets") >= 1);
    assert!(value_of("container_file_descriptors") >= value_of("container_sockets"));
    assert!(value_of("container_fs_limit_bytes") > value_of("container_fs_usage_bytes"));
    assert!(value_of("container_fs_inodes_total") >= value_of("container_fs_inodes_free"));
    assert!(value_of("container_start_time_seconds") > 1_700_000_000);
    // The pod's own metrics: the sums, with an empty container label.
    let pod_ws = pod["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "container_memory_working_set_bytes")
        .unwrap_or_else(|| panic!("{pod}"));
    assert_eq!(pod_ws["labelValues"][0], "");
    assert!(u64_at(pod_ws, "/value").unwrap() > 0);

    let fs = crictl_json(&crictl_bin, &socket, &["imagefsinfo", "-o", "json"]);
    let image_fs = &fs["status"]["imageFilesystems"][0];
    assert!(u64_at(image_fs, "/usedBytes").unwrap() > 1 << 20, "{fs}");
    assert!(u64_at(image_fs, "/inodesUsed").unwrap() > 1, "{fs}");
    let container_fs = &fs["status"]["containerFilesystems"][0];
    assert_eq!(
        container_fs["fsId"]["mountpoint"],
        node.state_dir().join("containers").display().to_string()
    );
    assert!(u64_at(container_fs, "/inodesUsed").unwrap() > 3, "{fs}");

    node.remove_running_pod(&a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_answer_at_once_while_a_start_is_in_flight() {
    let mut node = Node::start().await;
    let pod = node.run_pod("slow-start", COMPONENT).await;
    let id = node
        .create(&pod, "component", &[("EXAMPLE_STARTUP_DELAY_MS", "3000")])
        .await
        .unwrap();
    let mut starter = node.runtime.clone();
    let start = tokio::spawn({
        let id = id.clone();
        async move {
            starter
                .start_container(cri::StartContainerRequest { container_id: id })
                .await
        }
    });
    // StartContainer holds the pod's operation lock while it waits for the
    // component; the stats calls must not wait for it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!start.is_finished(), "the start was not slow");
    let t = std::time::Instant::now();
    let list = node
        .runtime
        .list_container_stats(cri::ListContainerStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let pods = node
        .runtime
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let one = node
        .runtime
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    let elapsed = t.elapsed();
    assert!(!start.is_finished(), "the stats calls waited for the start");
    assert!(elapsed < Duration::from_secs(1), "stats took {elapsed:?}");
    assert_eq!(list.stats.len(), 1);
    assert_eq!(pods.stats.len(), 1);
    assert!(one.into_inner().stats.is_some());
    start.await.unwrap().unwrap();
    node.remove_running_pod(&pod).await;
}
