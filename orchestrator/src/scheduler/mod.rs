//! The scheduler: a client of the API like any other. It keeps every
//! unbound pod placed on a node that can take it, binding through
//! `pods/binding` and telling the story in Events (`Scheduled`,
//! `FailedScheduling`). Each pass works from a fresh list; watches on pods
//! and nodes wake the next pass the moment anything changes, so a pod that
//! did not fit is retried as soon as a node joins or capacity frees up.

pub mod plugins;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchParams};
use kube::Client;
use serde_json::json;
use shoal_sdk::now_rfc3339 as now;
use tracing::{debug, info, warn};

use crate::events::{EventRecorder, ObjectRef};

pub use plugins::Scoring;
use plugins::Usage;

pub const SCHEDULER_NAME: &str = "default-scheduler";

/// Runs until the process ends; API errors back off and retry.
pub async fn run(client: Client, scoring: Scoring) {
    let events = EventRecorder::start(client.clone(), SCHEDULER_NAME, None);
    let mut reported: HashMap<String, String> = HashMap::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        match pass(&client, &events, scoring, &mut reported).await {
            Ok((pods_rv, nodes_rv)) => {
                backoff = Duration::from_millis(50);
                wait_for_change(&client, &pods_rv, &nodes_rv).await;
            }
            Err(e) => {
                warn!(error = %e, "scheduling pass failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Returns once pods or nodes change (or after a while, for RuntimeClass
/// changes, which are not watched).
async fn wait_for_change(client: &Client, pods_rv: &str, nodes_rv: &str) {
    let pods: Api<Pod> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let wp = WatchParams::default().timeout(30).disable_bookmarks();
    let (mut p, mut n) = match (
        pods.watch(&wp, pods_rv).await,
        nodes.watch(&wp, nodes_rv).await,
    ) {
        (Ok(p), Ok(n)) => (p.boxed(), n.boxed()),
        _ => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        }
    };
    tokio::select! {
        _ = p.next() => {}
        _ = n.next() => {}
        _ = tokio::time::sleep(Duration::from_secs(30)) => {}
    }
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

fn wants_us(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.node_name.as_deref())
        .is_none_or(str::is_empty)
        && spec
            .and_then(|s| s.scheduler_name.as_deref())
            .is_none_or(|n| n.is_empty() || n == SCHEDULER_NAME)
        && pod.metadata.deletion_timestamp.is_none()
        && !is_terminal(pod)
}

/// One scheduling pass over everything pending; returns the list revisions
/// to watch from.
async fn pass(
    client: &Client,
    events: &EventRecorder,
    scoring: Scoring,
    reported: &mut HashMap<String, String>,
) -> Result<(String, String), kube::Error> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let classes = Api::<RuntimeClass>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let class_selectors: HashMap<String, BTreeMap<String, String>> = classes
        .items
        .iter()
        .map(|rc| {
            let sel = rc
                .scheduling
                .as_ref()
                .and_then(|s| s.node_selector.clone())
                .unwrap_or_default();
            (rc.metadata.name.clone().unwrap_or_default(), sel)
        })
        .collect();
    let mut free: HashMap<String, Usage> = nodes
        .items
        .iter()
        .map(|n| {
            (
                n.metadata.name.clone().unwrap_or_default(),
                plugins::allocatable(n),
            )
        })
        .collect();
    for pod in pods.items.iter().filter(|p| !is_terminal(p)) {
        let Some(node) = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
        else {
            continue;
        };
        if let Some(left) = free.get_mut(&node) {
            left.take(&plugins::requests(pod));
        }
    }
    let pending: Vec<&Pod> = pods.items.iter().filter(|p| wants_us(p)).collect();
    let live: std::collections::HashSet<String> = pending
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    reported.retain(|uid, _| live.contains(uid));
    for pod in pending {
        let extra = match pod
            .spec
            .as_ref()
            .and_then(|s| s.runtime_class_name.as_deref())
        {
            Some(rc) => match class_selectors.get(rc) {
                Some(sel) => sel.clone(),
                None => {
                    let msg = format!(
                        "0/{} nodes are available: RuntimeClass \"{rc}\" not found.",
                        nodes.items.len()
                    );
                    report_unschedulable(client, events, pod, &msg, reported).await?;
                    continue;
                }
            },
            None => BTreeMap::new(),
        };
        match plugins::pick(pod, &nodes.items, &free, &extra, scoring) {
            Ok(node) => {
                if bind(client, events, pod, &node).await? {
                    if let Some(left) = free.get_mut(&node) {
                        left.take(&plugins::requests(pod));
                    }
                }
            }
            Err(msg) => report_unschedulable(client, events, pod, &msg, reported).await?,
        }
    }
    Ok((
        pods.metadata.resource_version.unwrap_or_default(),
        nodes.metadata.resource_version.unwrap_or_default(),
    ))
}

fn name_ns(pod: &Pod) -> (String, String) {
    (
        pod.metadata.name.clone().unwrap_or_default(),
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
    )
}

/// Binds; false when someone else bound or deleted the pod first.
async fn bind(
    client: &Client,
    events: &EventRecorder,
    pod: &Pod,
    node: &str,
) -> Result<bool, kube::Error> {
    let (name, ns) = name_ns(pod);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "namespace": ns},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
    match pods
        .create_subresource::<serde_json::Value, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
            debug!(pod = %name, namespace = %ns, "binding lost a race: {}", s.message);
            return Ok(false);
        }
        Err(e) => return Err(e),
    }
    info!(pod = %name, namespace = %ns, node, "scheduled");
    events.normal(
        &pod_ref(pod),
        "Scheduled",
        format!("Successfully assigned {ns}/{name} to {node}"),
    );
    Ok(true)
}

/// Records FailedScheduling and PodScheduled=False, once per distinct reason.
async fn report_unschedulable(
    client: &Client,
    events: &EventRecorder,
    pod: &Pod,
    msg: &str,
    reported: &mut HashMap<String, String>,
) -> Result<(), kube::Error> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if reported.get(&uid).map(String::as_str) == Some(msg) {
        return Ok(());
    }
    reported.insert(uid, msg.to_string());
    let (name, ns) = name_ns(pod);
    debug!(pod = %name, namespace = %ns, reason = msg, "unschedulable");
    events.warning(&pod_ref(pod), "FailedScheduling", msg);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // The revision we decided on is a precondition: if the pod was bound or
    // changed meanwhile, our verdict is stale and the write must not land.
    let patch = json!({
        "metadata": {"resourceVersion": pod.metadata.resource_version},
        "status": {"conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": msg, "lastTransitionTime": now()}]},
    });
    match pods
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

fn pod_ref(pod: &Pod) -> ObjectRef {
    let (name, namespace) = name_ns(pod);
    ObjectRef {
        kind: "Pod",
        api_version: "v1",
        namespace,
        name,
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        field_path: None,
    }
}
