//! A node that dies: the node lifecycle controller marks it Unknown and
//! taints it unreachable, evicts the pods that do not tolerate that for
//! long, and undoes it all when the node comes back; the pod garbage
//! collector finishes the pods of a node that was deleted.

use k8s_openapi::api::core::v1::{Node as KNode, Pod};
use kube::api::ListParams;
use kube::Api;
use shoal_tests::{pod_yaml, sample, wait_for, Node, Server};

use crate::controllers::{app_pods, is_ready, workload_yaml, PATIENCE};

fn node_of(p: &Pod) -> Option<&str> {
    p.spec.as_ref()?.node_name.as_deref()
}

fn ready_condition(n: &KNode) -> Option<(String, String)> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

fn taints(n: &KNode) -> Vec<(String, String)> {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.key, t.effect))
        .collect()
}

fn pod_ready_status(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// Sends `kill -SIG` to a process.
fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()?
        .success();
    anyhow::ensure!(ok, "kill -{sig} {pid} failed");
    Ok(())
}

#[tokio::test]
async fn a_dead_node_is_tainted_its_pods_move_and_it_recovers() -> anyhow::Result<()> {
    let s = Server::start_with(&["--node-monitor-grace-period", "3s"])?;
    let client = s.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let nodes: Api<KNode> = Api::all(client.clone());
    let mut b = Node::start(&s, "node-b", "127.0.0.22", &[])?;
    s.wait_nodes_ready(&["node-b"]).await?;

    // With node-b the only node, everything lands there. The Deployment's
    // pods tolerate an unreachable node for 2 s; the bare pod gets the
    // default 300 s.
    let ticker = sample("ticker")?;
    let tolerate = format!(
        "      tolerations:\n      - {{key: {UNREACHABLE}, operator: Exists, effect: NoExecute, tolerationSeconds: 2}}\n"
    );
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&workload_yaml(
            "Deployment",
            "web",
            &ticker,
            "",
            "  replicas: 2\n",
            &tolerate,
        )),
    )?;
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&pod_yaml(
            "stay",
            &ticker,
            "  nodeSelector:\n    kubernetes.io/hostname: node-b\n",
            "",
        )),
    )?;
    wait_for("web and stay running on node-b", PATIENCE, || async {
        let web = app_pods(&pods, "web").await.ok()?;
        let stay = pods.get("stay").await.ok()?;
        (web.len() == 2 && web.iter().chain([&stay]).all(is_ready)).then_some(())
    })
    .await?;
    let defaults = s.kubectl(&[
        "get",
        "pod",
        "stay",
        "-o",
        "jsonpath={range .spec.tolerations[*]}{.key}={.tolerationSeconds} {end}",
    ])?;
    assert_eq!(
        defaults.trim(),
        "node.kubernetes.io/not-ready=300 node.kubernetes.io/unreachable=300"
    );
    let _a = Node::start(&s, "node-a", "127.0.0.21", &[])?;
    s.wait_nodes_ready(&["node-a"]).await?;

    // node-b dies.
    b.kill9();
    wait_for("node-b marked Unknown and tainted", PATIENCE, || async {
        let n = nodes.get("node-b").await.ok()?;
        let t = taints(&n);
        (ready_condition(&n)? == ("Unknown".into(), "NodeStatusUnknown".into())
            && t.contains(&(UNREACHABLE.into(), "NoExecute".into()))
            && t.contains(&(UNREACHABLE.into(), "NoSchedule".into())))
        .then_some(())
    })
    .await?;
    let table = s.kubectl(&["get", "node", "node-b"])?;
    assert!(table.contains("NotReady"), "{table}");
    // The Deployment's pods are evicted after 2 s and replaced on node-a;
    // the evicted ones stay Terminating, since no agent on node-b can
    // confirm they stopped (as in Kubernetes).
    wait_for(
        "web evicted from node-b and running on node-a",
        PATIENCE,
        || async {
            let web = app_pods(&pods, "web").await.ok()?;
            let on_a = web
                .iter()
                .filter(|p| node_of(p) == Some("node-a") && is_ready(p))
                .count();
            let evicted = web
                .iter()
                .filter(|p| node_of(p) == Some("node-b"))
                .all(|p| p.metadata.deletion_timestamp.is_some());
            (on_a == 2 && evicted).then_some(())
        },
    )
    .await?;
    // The bare pod tolerates 300 s: it stays, but not Ready, so Services
    // stop sending it traffic.
    wait_for("stay marked not ready", PATIENCE, || async {
        let p = pods.get("stay").await.ok()?;
        (p.metadata.deletion_timestamp.is_none() && pod_ready_status(&p)? == "False").then_some(())
    })
    .await?;
    let reasons = s.kubectl(&["get", "events", "-o", "jsonpath={.items[*].reason}"])?;
    assert!(reasons.contains("NodeNotReady"), "{reasons}");
    assert!(reasons.contains("TaintManagerEviction"), "{reasons}");

    // node-b comes back: Ready again, untainted; it finishes the evicted
    // pods and runs `stay` again.
    b.restart()?;
    wait_for("node-b Ready and untainted", PATIENCE, || async {
        let n = nodes.get("node-b").await.ok()?;
        (ready_condition(&n)?.0 == "True" && taints(&n).is_empty()).then_some(())
    })
    .await?;
    wait_for(
        "node-b's evicted pods gone and stay ready",
        PATIENCE,
        || async {
            let web = app_pods(&pods, "web").await.ok()?;
            let stay = pods.get("stay").await.ok()?;
            (web.len() == 2 && web.iter().all(|p| node_of(p) == Some("node-a")) && is_ready(&stay))
                .then_some(())
        },
    )
    .await?;

    // node-b freezes (a partition, as far as the server can tell) and
    // thaws: nothing changed on the node, but it puts back the status the
    // controller overwrote.
    let pid = b
        .pid()
        .ok_or_else(|| anyhow::anyhow!("node-b has no pid"))?;
    signal(pid, "STOP")?;
    let frozen = wait_for("node-b Unknown and stay not ready", PATIENCE, || async {
        let n = nodes.get("node-b").await.ok()?;
        let p = pods.get("stay").await.ok()?;
        (ready_condition(&n)?.0 == "Unknown" && pod_ready_status(&p)? == "False").then_some(())
    })
    .await;
    signal(pid, "CONT")?;
    frozen?;
    wait_for("node-b and stay Ready again", PATIENCE, || async {
        let n = nodes.get("node-b").await.ok()?;
        let p = pods.get("stay").await.ok()?;
        (ready_condition(&n)?.0 == "True"
            && taints(&n).is_empty()
            && pod_ready_status(&p)? == "True")
            .then_some(())
    })
    .await?;

    // node-b dies again. A pod deleted there stays Terminating until the
    // operator declares the node out of service; then it is force-deleted.
    b.kill9();
    wait_for("node-b Unknown again", PATIENCE, || async {
        let n = nodes.get("node-b").await.ok()?;
        (ready_condition(&n)?.0 == "Unknown").then_some(())
    })
    .await?;
    s.kubectl(&["delete", "pod", "stay", "--wait=false"])?;
    let stuck = pods.get("stay").await?;
    assert!(stuck.metadata.deletion_timestamp.is_some());
    s.kubectl(&[
        "taint",
        "node",
        "node-b",
        "node.kubernetes.io/out-of-service=nodeshutdown:NoExecute",
    ])?;
    wait_for("stay force-deleted", PATIENCE, || async {
        pods.get_opt("stay").await.ok()?.is_none().then_some(())
    })
    .await?;

    // A pod bound straight to node-b, then the Node is deleted: the pod
    // garbage collector removes what was bound there.
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&pod_yaml("bound", &ticker, "  nodeName: node-b\n", "")),
    )?;
    s.kubectl(&["delete", "node", "node-b"])?;
    wait_for("pods bound to node-b collected", PATIENCE, || async {
        let all = pods.list(&ListParams::default()).await.ok()?;
        all.items
            .iter()
            .all(|p| node_of(p) != Some("node-b"))
            .then_some(())
    })
    .await?;
    assert!(app_pods(&pods, "web").await?.iter().all(is_ready));
    Ok(())
}
