//! The scheduler: a client of the API like any other. It keeps every
//! unbound pod placed on a node that can take it, binding through
//! `pods/binding` and telling the story in Events (`Scheduled`,
//! `FailedScheduling`). Each pass works from informer caches of pods,
//! nodes and RuntimeClasses (no API reads); any change to them wakes the
//! next pass, so a pod that did not fit is retried as soon as a node joins
//! or capacity frees up.

pub mod plugins;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use shoal_sdk::now_rfc3339 as now;
use tracing::{debug, info, warn};

use tokio::sync::Notify;

use crate::events::{EventRecorder, ObjectRef};
use crate::informer::Informer;

pub use plugins::Scoring;
use plugins::Usage;

pub const SCHEDULER_NAME: &str = "default-scheduler";

/// Pods bound by this scheduler whose binding the pod cache has not shown
/// yet, with what they take: counted as placed so a pass that runs before
/// the watch catches up does not oversubscribe a node (kube-scheduler's
/// "assume").
type Assumed = HashMap<String, (String, Usage)>;

/// Runs until the process ends; API errors back off and retry.
pub async fn run(client: Client, scoring: Scoring) {
    let events = EventRecorder::start(client.clone(), SCHEDULER_NAME, None);
    let changed = Arc::new(Notify::new());
    let pods = Informer::<Pod>::start(Api::all(client.clone()), changed.clone());
    let nodes = Informer::<Node>::start(Api::all(client.clone()), changed.clone());
    let classes = Informer::<RuntimeClass>::start(Api::all(client.clone()), changed.clone());
    pods.wait_synced().await;
    nodes.wait_synced().await;
    classes.wait_synced().await;
    let mut reported: HashMap<String, String> = HashMap::new();
    let mut assumed: Assumed = HashMap::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        // Registered before the pass, so a change during it wakes the next.
        let woken = changed.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let snapshot = Snapshot {
            pods: pods.list(),
            nodes: nodes.list(),
            classes: classes.list(),
        };
        match pass(
            &client,
            &events,
            scoring,
            &snapshot,
            &mut reported,
            &mut assumed,
        )
        .await
        {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) => {
                warn!(error = %e, "scheduling pass failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        }
        tokio::select! {
            _ = &mut woken => {}
            // Time-based conditions (none yet) and safety against a lost wake-up.
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}

/// What one pass decides from: the informers' caches at one moment.
struct Snapshot {
    pods: Vec<Arc<Pod>>,
    nodes: Vec<Arc<Node>>,
    classes: Vec<Arc<RuntimeClass>>,
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

/// One scheduling pass over everything pending.
async fn pass(
    client: &Client,
    events: &EventRecorder,
    scoring: Scoring,
    snap: &Snapshot,
    reported: &mut HashMap<String, String>,
    assumed: &mut Assumed,
) -> Result<(), kube::Error> {
    let nodes: Vec<Node> = snap.nodes.iter().map(|n| (**n).clone()).collect();
    let class_selectors: HashMap<String, BTreeMap<String, String>> = snap
        .classes
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
        .iter()
        .map(|n| {
            (
                n.metadata.name.clone().unwrap_or_default(),
                plugins::allocatable(n),
            )
        })
        .collect();
    let by_uid: HashMap<&str, &Pod> = snap
        .pods
        .iter()
        .filter_map(|p| Some((p.metadata.uid.as_deref()?, &**p)))
        .collect();
    for pod in snap.pods.iter().filter(|p| !is_terminal(p)) {
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
    // Our own binds the cache has not caught up with still take room; once
    // the cache shows them bound (or gone) they are counted above.
    assumed.retain(|uid, _| by_uid.get(uid.as_str()).is_some_and(|p| wants_us(p)));
    for (node, used) in assumed.values() {
        if let Some(left) = free.get_mut(node) {
            left.take(used);
        }
    }
    let pending: Vec<&Pod> = snap
        .pods
        .iter()
        .map(|p| &**p)
        .filter(|p| wants_us(p))
        .filter(|p| {
            !p.metadata
                .uid
                .as_ref()
                .is_some_and(|u| assumed.contains_key(u))
        })
        .collect();
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
                        nodes.len()
                    );
                    report_unschedulable(client, events, pod, &msg, reported).await?;
                    continue;
                }
            },
            None => BTreeMap::new(),
        };
        match plugins::pick(pod, &nodes, &free, &extra, scoring) {
            Ok(node) => {
                if bind(client, events, pod, &node).await? {
                    let used = plugins::requests(pod);
                    if let Some(left) = free.get_mut(&node) {
                        left.take(&used);
                    }
                    if let Some(uid) = pod.metadata.uid.clone() {
                        assumed.insert(uid, (node, used));
                    }
                }
            }
            Err(msg) => report_unschedulable(client, events, pod, &msg, reported).await?,
        }
    }
    Ok(())
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
