//! The scheduler against registered Nodes (no node agents yet): placement by
//! selector, taints, resources and RuntimeClass, FailedScheduling, and retry
//! when a node joins.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use shoal_tests::{wait_for, Server};

fn node_yaml(name: &str, cpu: &str, labels: &str, taints: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}\n    runtime.shoal.dev/wasmtime: \"true\"\n{labels}spec:\n{taints}status:\n  conditions:\n  - type: Ready\n    status: \"True\"\n  allocatable:\n    cpu: \"{cpu}\"\n    memory: 4Gi\n    pods: \"1000\"\n"
    )
}

fn pod(name: &str, spec: serde_json::Value) -> Pod {
    let mut p = json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "file:///x.wasm"}]}});
    json_merge(&mut p["spec"], &spec);
    serde_json::from_value(p).expect("valid pod")
}

fn json_merge(a: &mut serde_json::Value, b: &serde_json::Value) {
    if let (Some(a), Some(b)) = (a.as_object_mut(), b.as_object()) {
        for (k, v) in b {
            a.insert(k.clone(), v.clone());
        }
    }
}

async fn node_of(pods: &Api<Pod>, name: &str) -> anyhow::Result<String> {
    wait_for(
        &format!("{name} to be bound"),
        Duration::from_secs(30),
        || async {
            pods.get(name)
                .await
                .ok()
                .and_then(|p| p.spec.and_then(|s| s.node_name))
                .filter(|n| !n.is_empty())
        },
    )
    .await
}

/// The message of the first FailedScheduling Event for pod `name`.
async fn failed_scheduling(events: &Api<Event>, name: &str) -> anyhow::Result<String> {
    wait_for(
        &format!("FailedScheduling for {name}"),
        Duration::from_secs(30),
        || async {
            let lp = ListParams::default().fields(&format!(
                "involvedObject.name={name},reason=FailedScheduling"
            ));
            events
                .list(&lp)
                .await
                .ok()?
                .items
                .into_iter()
                .next()
                .and_then(|e| e.message)
        },
    )
    .await
}

#[tokio::test]
async fn places_pods_and_explains_refusals() -> anyhow::Result<()> {
    let s = Server::start()?;
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&node_yaml("node-a", "2", "    zone: a\n", "")),
    )?;
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&node_yaml(
            "node-b",
            "2",
            "    zone: b\n",
            "  taints:\n  - key: dedicated\n    value: edge\n    effect: NoSchedule\n",
        )),
    )?;
    let c = s.client().await?;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");

    // Plain pods avoid the tainted node; a tolerating, selecting pod goes there.
    pods.create(&PostParams::default(), &pod("plain", json!({})))
        .await?;
    assert_eq!(node_of(&pods, "plain").await?, "node-a");
    pods.create(&PostParams::default(), &pod("edge", json!({"nodeSelector": {"zone": "b"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "edge", "effect": "NoSchedule"}]}))).await?;
    assert_eq!(node_of(&pods, "edge").await?, "node-b");
    let desc = s.kubectl(&["describe", "pod", "edge"])?;
    assert!(
        desc.contains("Scheduled") && desc.contains("Successfully assigned default/edge to node-b"),
        "{desc}"
    );

    // Too big for any node: FailedScheduling, PodScheduled=False, still Pending.
    pods.create(
        &PostParams::default(),
        &pod(
            "big",
            json!({"containers": [{"name": "c", "image": "file:///x.wasm",
        "resources": {"requests": {"cpu": "6"}}}]}),
        ),
    )
    .await?;
    let events: Api<Event> = Api::namespaced(c.clone(), "default");
    let msg = failed_scheduling(&events, "big").await?;
    assert_eq!(msg, "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: edge}.");
    let cond = pods
        .get("big")
        .await?
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default();
    assert!(cond.iter().any(|c| c.type_ == "PodScheduled"
        && c.status == "False"
        && c.reason.as_deref() == Some("Unschedulable")));

    // A node that fits joins: the pending pod is placed without anyone asking.
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&node_yaml("node-c", "8", "", "")),
    )?;
    assert_eq!(node_of(&pods, "big").await?, "node-c");

    // RuntimeClass: runc selects nodes labelled for it; none is, so it waits.
    pods.create(
        &PostParams::default(),
        &pod("oci", json!({"runtimeClassName": "runc"})),
    )
    .await?;
    pods.create(
        &PostParams::default(),
        &pod("wasm", json!({"runtimeClassName": "wasmtime"})),
    )
    .await?;
    pods.create(
        &PostParams::default(),
        &pod("nosuch", json!({"runtimeClassName": "gvisor"})),
    )
    .await?;
    assert!(!node_of(&pods, "wasm").await?.is_empty());
    for (name, needle) in [
        ("oci", "didn't match Pod's node affinity/selector"),
        ("nosuch", "RuntimeClass \"gvisor\" not found"),
    ] {
        let msg = failed_scheduling(&events, name).await?;
        assert!(msg.contains(needle), "{name}: {msg}");
    }
    s.kubectl(&["label", "node", "node-a", "runtime.shoal.dev/runc=true"])?;
    assert_eq!(node_of(&pods, "oci").await?, "node-a");
    Ok(())
}
