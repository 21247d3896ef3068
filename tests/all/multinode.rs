//! A server and two `shoal node` processes: placement on both, logs through
//! the API server's proxy, and crashes of the agent and of the server.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use shoal_tests::{pod_yaml, sample, wait_for, Node, Server};

use crate::node::{first_container, phase, restarts, wait_logs, wait_pod, wait_running, PATIENCE};

fn pinned(name: &str, image: &str, node: &str, policy: &str) -> String {
    pod_yaml(
        name,
        image,
        &format!(
            "  restartPolicy: {policy}\n  nodeSelector:\n    kubernetes.io/hostname: {node}\n"
        ),
        "",
    )
}

#[tokio::test]
async fn two_nodes_run_pods_and_survive_crashes() -> anyhow::Result<()> {
    let mut s = Server::start()?;
    let client = s.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut a = Node::start(&s, "node-a", "127.0.0.2", &[])?;
    let b = Node::start(&s, "node-b", "127.0.0.3", &[])?;
    s.wait_nodes_ready(&["node-a", "node-b"]).await?;
    let table = s.kubectl(&["get", "nodes", "-o", "wide"])?;
    assert!(
        table.contains("127.0.0.2") && table.contains("127.0.0.3"),
        "{table}"
    );
    let lease = s.kubectl(&[
        "get",
        "lease",
        "node-a",
        "-n",
        "kube-node-lease",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])?;
    assert_eq!(lease, "node-a");

    let ticker = sample("ticker")?;
    let hello = sample("hello")?;
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&pinned("tick-a", &ticker, "node-a", "Always")),
    )?;
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&pinned("tick-b", &ticker, "node-b", "Always")),
    )?;
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&pinned("once-a", &ticker, "node-a", "Never")),
    )?;
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&pinned("hello-b", &hello, "node-b", "Never")),
    )?;
    let pa = wait_running(&pods, "tick-a").await?;
    let pb = wait_running(&pods, "tick-b").await?;
    assert_eq!(
        pa.status
            .as_ref()
            .and_then(|s| s.host_ip.clone())
            .as_deref(),
        Some("127.0.0.2")
    );
    assert_eq!(
        pb.status
            .as_ref()
            .and_then(|s| s.host_ip.clone())
            .as_deref(),
        Some("127.0.0.3")
    );
    wait_running(&pods, "once-a").await?;
    wait_pod(&pods, "hello-b", "to succeed", |p| phase(p) == "Succeeded").await?;
    // Logs come from each node through the API server.
    wait_logs(&s, &["tick-a"], "tick 1\n").await?;
    wait_logs(&s, &["tick-b"], "tick 1\n").await?;
    let raw = s.kubectl(&["get", "--raw", "/api/v1/nodes/node-b/proxy/metrics"])?;
    assert!(raw.contains("shoal_node_running_containers"), "{raw}");

    // kill -9 the agent on node-a: its guests die with it. Back up, it
    // finds its pods, restarts what may restart, fails what may not, and
    // runs nothing twice.
    a.kill9();
    a.restart()?;
    let p = wait_pod(
        &pods,
        "tick-a",
        "to be restarted after the agent crash",
        |p| {
            restarts(p) == 1 && phase(p) == "Running" && first_container(p).is_some_and(|c| c.ready)
        },
    )
    .await?;
    let lost = first_container(&p)
        .and_then(|c| c.last_state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .and_then(|t| t.reason.clone());
    assert_eq!(lost.as_deref(), Some("ContainerStatusUnknown"));
    wait_pod(&pods, "once-a", "to fail after its guest was lost", |p| {
        phase(p) == "Failed"
    })
    .await?;
    let listed = s.kubectl(&["get", "--raw", "/api/v1/nodes/node-a/proxy/pods"])?;
    assert_eq!(listed.matches("default/tick-a").count(), 1, "{listed}");
    // node-b never noticed.
    assert_eq!(restarts(&wait_running(&pods, "tick-b").await?), 0);
    wait_logs(&s, &["tick-a"], "tick 1\n").await?;

    // kill -9 the server: pods keep running on the nodes (their logs grow
    // on disk), and status catches up when the server is back.
    let logs = std::fs::read_dir(b.data_dir().join("logs"))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .count();
    assert!(logs >= 2, "{logs} log files on node-b");
    s.kill9();
    let log_file = find_log(b.data_dir(), "tick-b")?;
    let size = std::fs::metadata(&log_file)?.len();
    wait_for(
        "tick-b to keep ticking without a server",
        PATIENCE,
        || async {
            let now = std::fs::metadata(&log_file).ok()?.len();
            (now > size).then_some(())
        },
    )
    .await?;
    s.restart()?;
    let client = s.client().await?;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    // A pod created after the restart runs: the node's watch came back.
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&pinned("after", &hello, "node-b", "Never")),
    )?;
    wait_pod(&pods, "after", "to succeed after the server restart", |p| {
        phase(p) == "Succeeded"
    })
    .await?;
    assert_eq!(restarts(&wait_running(&pods, "tick-b").await?), 0);
    s.kubectl(&["delete", "pod", "tick-a", "tick-b", "--wait=true"])?;
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}

/// The current log file of pod `name`'s container on a node, on disk.
fn find_log(node_dir: &std::path::Path, name: &str) -> anyhow::Result<std::path::PathBuf> {
    for entry in std::fs::read_dir(node_dir.join("logs"))? {
        let path = entry?.path();
        let fname = path
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or_default()
            .to_string();
        if fname.starts_with(&format!("default_{name}_")) && fname.ends_with("_main_0.log") {
            return Ok(path);
        }
    }
    anyhow::bail!("no log file for {name} under {}", node_dir.display())
}

#[tokio::test]
async fn shoal_up_comes_back_after_kill9() -> anyhow::Result<()> {
    let mut s = Server::up(&[])?;
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&pod_yaml("ticker", &sample("ticker")?, "", "")),
    )?;
    let pods: Api<Pod> = Api::namespaced(s.client().await?, "default");
    wait_running(&pods, "ticker").await?;
    s.kill9();
    s.restart()?;
    let pods: Api<Pod> = Api::namespaced(s.client().await?, "default");
    let p = wait_pod(&pods, "ticker", "to run again after the restart", |p| {
        restarts(p) == 1 && first_container(p).is_some_and(|c| c.ready)
    })
    .await?;
    assert_eq!(phase(&p), "Running");
    wait_logs(&s, &["ticker"], "tick 1\n").await?;
    Ok(())
}
