//! DaemonSets: one pod per eligible node, following a node that joins and
//! node labels that change, and a rolling update.

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;
use shoal_tests::{sample, wait_for, Node, Server};

use super::{history_rows, image_copy, is_ready, undo_to_image, workload_yaml, PATIENCE};

fn ds_yaml(name: &str, image: &str, node_selector: &str) -> String {
    workload_yaml("DaemonSet", name, image, "", "", node_selector)
}

/// The nodes running ready pods of `app`, sorted.
async fn nodes_of(pods: &Api<Pod>, app: &str) -> Option<Vec<String>> {
    let list = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .ok()?;
    let mut nodes: Vec<String> = list
        .items
        .iter()
        .filter(|p| is_ready(p))
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    nodes.sort();
    Some(nodes)
}

async fn wait_nodes(pods: &Api<Pod>, app: &str, want: &[&str]) -> anyhow::Result<()> {
    wait_for(&format!("{app} on {want:?}"), PATIENCE, || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .ok()?;
        let nodes = nodes_of(pods, app).await?;
        (nodes == want && list.items.len() == want.len()).then_some(())
    })
    .await
}

#[tokio::test]
async fn one_pod_per_node_following_nodes_and_labels() -> anyhow::Result<()> {
    let s = Server::start()?;
    let pods: Api<Pod> = Api::namespaced(s.client().await?, "default");
    let _a = Node::start(&s, "node-a", "127.0.0.2", &[])?;
    let ticker = sample("ticker")?;
    s.kubectl_in(&["apply", "-f", "-"], Some(&ds_yaml("agent", &ticker, "")))?;
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&ds_yaml(
            "edge",
            &ticker,
            "      nodeSelector: {role: edge}\n",
        )),
    )?;
    wait_nodes(&pods, "agent", &["node-a"]).await?;

    // A node joins: it gets its daemon.
    let _b = Node::start(&s, "node-b", "127.0.0.3", &[])?;
    wait_nodes(&pods, "agent", &["node-a", "node-b"]).await?;
    let out = s.kubectl(&["rollout", "status", "daemonset/agent", "--timeout=90s"])?;
    assert!(out.contains("successfully rolled out"), "{out}");
    let table = s.kubectl(&["get", "daemonset", "agent"])?;
    assert!(
        table.split_whitespace().filter(|w| *w == "2").count() >= 4,
        "{table}"
    );

    // The selective daemon follows a label.
    assert_eq!(nodes_of(&pods, "edge").await, Some(vec![]));
    s.kubectl(&["label", "node", "node-b", "role=edge"])?;
    wait_nodes(&pods, "edge", &["node-b"]).await?;
    s.kubectl(&["label", "node", "node-b", "role-"])?;
    wait_nodes(&pods, "edge", &[]).await?;

    // A rolling update replaces the daemon on every node.
    let v2 = image_copy(&s, &ticker, "ticker-v2.wasm")?;
    s.kubectl(&["set", "image", "daemonset/agent", &format!("main={v2}")])?;
    let out = s.kubectl(&["rollout", "status", "daemonset/agent", "--timeout=90s"])?;
    assert!(out.contains("successfully rolled out"), "{out}");
    wait_for("both daemons on v2", PATIENCE, || async {
        let list = pods
            .list(&ListParams::default().labels("app=agent"))
            .await
            .ok()?;
        let v2_ready = list.items.iter().filter(|p| {
            is_ready(p)
                && p.spec
                    .as_ref()
                    .and_then(|s| s.containers.first())
                    .and_then(|c| c.image.as_deref())
                    == Some(v2.as_str())
        });
        (v2_ready.count() == 2 && list.items.len() == 2).then_some(())
    })
    .await?;

    // Its history has both templates, and undo brings the first back.
    assert_eq!(history_rows(&s, "daemonset/agent")?, [1, 2]);
    assert_eq!(undo_to_image(&s, "daemonset", "agent")?, ticker);
    let out = s.kubectl(&["rollout", "status", "daemonset/agent", "--timeout=90s"])?;
    assert!(out.contains("successfully rolled out"), "{out}");
    Ok(())
}
