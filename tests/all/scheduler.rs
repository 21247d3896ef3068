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

#[tokio::test]
async fn priority_classes_set_pod_priority_and_order_the_queue() -> anyhow::Result<()> {
    let s = Server::start()?;
    let c = s.client().await?;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let builtin = s.kubectl(&["get", "priorityclasses"])?;
    assert!(
        builtin.contains("system-node-critical") && builtin.contains("2000001000"),
        "{builtin}"
    );
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some("apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: high}\nvalue: 1000\n---\napiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: low}\nvalue: 10\nglobalDefault: true\n"),
    )?;
    let table = s.kubectl(&["get", "pc", "low"])?;
    assert!(
        table.contains("GLOBAL-DEFAULT") && table.contains("true"),
        "{table}"
    );

    // One node with room for one pod, taken by a high-priority pod.
    let one_pod = node_yaml("solo", "2", "", "").replace("pods: \"1000\"", "pods: \"1\"");
    s.kubectl_in(&["apply", "-f", "-"], Some(&one_pod))?;
    pods.create(
        &PostParams::default(),
        &pod("blocker", json!({"priorityClassName": "high"})),
    )
    .await?;
    assert_eq!(node_of(&pods, "blocker").await?, "solo");
    let blocker = pods.get("blocker").await?.spec.unwrap_or_default();
    assert_eq!(
        (blocker.priority, blocker.preemption_policy.as_deref()),
        (Some(1000), Some("PreemptLowerPriority"))
    );

    // Two wait, the default-class one first; the higher one goes first.
    pods.create(&PostParams::default(), &pod("waits-low", json!({})))
        .await?;
    pods.create(
        &PostParams::default(),
        &pod("waits-high", json!({"priorityClassName": "high"})),
    )
    .await?;
    let low = pods.get("waits-low").await?.spec.unwrap_or_default();
    assert_eq!(
        (low.priority_class_name.as_deref(), low.priority),
        (Some("low"), Some(10)),
        "the global default applies"
    );
    let events: Api<Event> = Api::namespaced(c.clone(), "default");
    failed_scheduling(&events, "waits-low").await?;
    failed_scheduling(&events, "waits-high").await?;
    pods.delete(
        "blocker",
        &kube::api::DeleteParams::default().grace_period(0),
    )
    .await?;
    // Had the older, lower one been taken first, this would never bind.
    assert_eq!(node_of(&pods, "waits-high").await?, "solo");
    let low = pods.get("waits-low").await?.spec.unwrap_or_default();
    assert_eq!(low.node_name, None, "the lower one still waits");

    // Bad input, as Kubernetes refuses it.
    let err = s.kubectl_err(
        &[
            "run",
            "nope",
            "--image=x",
            "--overrides",
            r#"{"spec":{"priorityClassName":"missing"}}"#,
        ],
        None,
    )?;
    assert!(
        err.contains("no PriorityClass with name missing was found"),
        "{err}"
    );
    let own = pods
        .create(
            &PostParams::default(),
            &pod("own", json!({"priorityClassName": "high", "priority": 5})),
        )
        .await
        .expect_err("a pod may not set its own priority");
    assert!(
        own.to_string().contains("must not be provided in pod spec"),
        "{own}"
    );
    let class = |name: &str, extra: &str| {
        format!("apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {{name: {name}}}\n{extra}")
    };
    let err = s.kubectl_err(
        &["apply", "-f", "-"],
        Some(&class("huge", "value: 2000000000\n")),
    )?;
    assert!(err.contains("value") && err.contains("1000000000"), "{err}");
    let err = s.kubectl_err(
        &["apply", "-f", "-"],
        Some(&class("system-mine", "value: 1\n")),
    )?;
    assert!(err.contains("reserved for system use"), "{err}");
    let err = s.kubectl_err(
        &["apply", "-f", "-"],
        Some(&class("other", "value: 1\nglobalDefault: true\n")),
    )?;
    assert!(err.contains("low is already marked as default"), "{err}");
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(&class("high", "value: 7\n")))?;
    assert!(err.contains("value") && err.contains("immutable"), "{err}");
    Ok(())
}
