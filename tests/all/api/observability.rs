//! What operators look at: events and nodes in kubectl, health, metrics.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use shoal_tests::Server;

#[tokio::test]
async fn events_nodes_health_and_metrics() -> anyhow::Result<()> {
    let s = Server::start()?;
    let c = s.client().await?;
    let pods: Api<Pod> = Api::namespaced(c, "default");
    let p = pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
        "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}))?,
        )
        .await?;
    let uid = p.metadata.uid.unwrap_or_default();
    let event = format!(
        "apiVersion: v1\nkind: Event\nmetadata:\n  name: p.1\n  namespace: default\ninvolvedObject:\n  kind: Pod\n  name: p\n  namespace: default\n  uid: {uid}\n  apiVersion: v1\nreason: Scheduled\nmessage: Successfully assigned default/p to node-a\ntype: Normal\nsource:\n  component: default-scheduler\ncount: 1\nfirstTimestamp: \"2026-01-01T00:00:00Z\"\nlastTimestamp: \"2026-01-01T00:00:00Z\"\n"
    );
    s.kubectl_in(&["apply", "-f", "-"], Some(&event))?;
    let events = s.kubectl(&["get", "events"])?;
    let header = events.lines().next().unwrap_or_default();
    for col in ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"] {
        assert!(header.contains(col), "{events}");
    }
    assert!(
        events.contains("pod/p") && events.contains("Scheduled"),
        "{events}"
    );
    // describe finds the pod's events through field selectors.
    let desc = s.kubectl(&["describe", "pod", "p"])?;
    assert!(
        desc.contains("Events:") && desc.contains("Successfully assigned default/p to node-a"),
        "{desc}"
    );

    // A Node keeps the status its agent registers with.
    s.kubectl_in(&["apply", "-f", "-"], Some(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\n  labels:\n    node-role.kubernetes.io/edge: \"\"\nstatus:\n  conditions:\n  - type: Ready\n    status: \"True\"\n  nodeInfo:\n    kubeletVersion: v1.33.0-shoal\n    architecture: amd64\n    bootID: \"\"\n    containerRuntimeVersion: wasmtime://48\n    kernelVersion: \"6\"\n    kubeProxyVersion: \"\"\n    machineID: \"\"\n    operatingSystem: linux\n    osImage: Debian\n    systemUUID: \"\"\n",
    ))?;
    let nodes = s.kubectl(&["get", "nodes"])?;
    assert!(
        nodes.contains("node-a")
            && nodes.contains("Ready")
            && nodes.contains("edge")
            && nodes.contains("v1.33.0-shoal"),
        "{nodes}"
    );

    for path in ["/healthz", "/readyz", "/livez"] {
        assert_eq!(s.kubectl(&["get", "--raw", path])?.trim(), "ok");
    }
    let metrics = s.kubectl(&["get", "--raw", "/metrics"])?;
    for name in [
        "apiserver_request_total{code=\"201\",resource=\"pods\",verb=\"POST\"}",
        "apiserver_request_duration_seconds_bucket",
        "apiserver_registered_watchers",
        "shoal_store_operation_duration_seconds_bucket{operation=\"create\"",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    Ok(())
}
