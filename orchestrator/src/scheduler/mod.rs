//! The scheduler: a client of the API like any other. It keeps every
//! unbound pod placed on a node that can take it, binding through
//! `pods/binding` and telling the story in Events (`Scheduled`,
//! `FailedScheduling`).
//!
//! It works from informer caches of pods, nodes, RuntimeClasses and the
//! volume objects (claims, volumes, StorageClasses): a pass
//! costs no API call, and any change that could matter (a pod to place, a
//! node joining, capacity freed) wakes the next one. Placement is decided
//! in memory, one pod after another against the capacity left; the binds
//! then go out concurrently. Pods bound but not yet seen bound in the
//! cache are "assumed", so a pass that runs before the watch catches up
//! cannot oversubscribe a node.

pub mod plugins;
pub mod volumes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use shoal_sdk::now_rfc3339 as now;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::controllers::informer::Informer;
use crate::events::{EventRecorder, ObjectRef};

pub use plugins::Scoring;
use plugins::Usage;

pub const SCHEDULER_NAME: &str = "default-scheduler";
/// Binds in flight at once.
const BINDS: usize = 64;

struct Caches {
    pods: Arc<Informer<Pod>>,
    nodes: Arc<Informer<Node>>,
    classes: Arc<Informer<RuntimeClass>>,
    claims: Arc<Informer<PersistentVolumeClaim>>,
    volumes: Arc<Informer<PersistentVolume>>,
    storage_classes: Arc<Informer<StorageClass>>,
}

/// Runs until the process ends.
pub async fn run(client: Client, scoring: Scoring) {
    let events = EventRecorder::start(client.clone(), SCHEDULER_NAME, None);
    let wake = Arc::new(Notify::new());
    let caches = Caches {
        pods: Informer::new("pods"),
        nodes: Informer::new("nodes"),
        classes: Informer::new("runtimeclasses"),
        claims: Informer::new("persistentvolumeclaims"),
        volumes: Informer::new("persistentvolumes"),
        storage_classes: Informer::new("storageclasses"),
    };
    let w = wake.clone();
    caches.pods.on_change(move |old, new| {
        // A pod to place, or capacity that may have freed up.
        let freed =
            old.is_some_and(|o| bound(o) && new.is_none_or(|n| is_terminal(n) || !bound(n)));
        if new.is_some_and(wants_us) || freed {
            w.notify_one();
        }
    });
    let w = wake.clone();
    caches.nodes.on_change(move |_, _| w.notify_one());
    let w = wake.clone();
    caches.classes.on_change(move |_, _| w.notify_one());
    // A claim made or bound, a volume made: a pod waiting on them may fit.
    let w = wake.clone();
    caches.claims.on_change(move |_, _| w.notify_one());
    let w = wake.clone();
    caches.volumes.on_change(move |_, _| w.notify_one());
    let w = wake.clone();
    caches.storage_classes.on_change(move |_, _| w.notify_one());
    caches.pods.start(Api::all(client.clone()));
    caches.nodes.start(Api::all(client.clone()));
    caches.classes.start(Api::all(client.clone()));
    caches.claims.start(Api::all(client.clone()));
    caches.volumes.start(Api::all(client.clone()));
    caches.storage_classes.start(Api::all(client.clone()));
    caches.pods.wait_synced().await;
    caches.nodes.wait_synced().await;
    caches.classes.wait_synced().await;
    caches.claims.wait_synced().await;
    caches.volumes.wait_synced().await;
    caches.storage_classes.wait_synced().await;
    let mut s = Scheduler {
        client,
        events,
        scoring,
        reported: HashMap::new(),
        assumed: Arc::new(Mutex::new(HashMap::new())),
        wake: wake.clone(),
    };
    loop {
        s.pass(&caches).await;
        wake.notified().await;
    }
}

struct Scheduler {
    client: Client,
    events: EventRecorder,
    scoring: Scoring,
    /// The last FailedScheduling reason told per pod uid.
    reported: HashMap<String, String>,
    /// Pods bound by us (uid → node) that the cache still shows unbound.
    assumed: Arc<Mutex<HashMap<String, String>>>,
    wake: Arc<Notify>,
}

fn bound(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

fn wants_us(pod: &Pod) -> bool {
    !bound(pod)
        && pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .is_none_or(|n| n.is_empty() || n == SCHEDULER_NAME)
        && pod.metadata.deletion_timestamp.is_none()
        && !is_terminal(pod)
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

impl Scheduler {
    /// One pass over everything pending.
    async fn pass(&mut self, c: &Caches) {
        let nodes: Vec<Node> = c.nodes.list().iter().map(|n| (**n).clone()).collect();
        let pods = c.pods.list();
        let class_selectors: HashMap<String, BTreeMap<String, String>> = c
            .classes
            .list()
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
        let assumed: HashMap<String, String> = {
            let Ok(mut a) = self.assumed.lock() else {
                return;
            };
            // Once the cache shows a pod bound (or gone), it speaks for itself.
            let unbound: HashSet<String> =
                pods.iter().filter(|p| !bound(p)).map(|p| uid(p)).collect();
            a.retain(|u, _| unbound.contains(u));
            a.clone()
        };
        let mut free: HashMap<String, Usage> = nodes
            .iter()
            .map(|n| {
                (
                    n.metadata.name.clone().unwrap_or_default(),
                    plugins::allocatable(n),
                )
            })
            .collect();
        for pod in pods.iter().filter(|p| !is_terminal(p)) {
            let node = match pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty())
            {
                Some(n) => n,
                None => match assumed.get(&uid(pod)) {
                    Some(n) => n.clone(),
                    None => continue,
                },
            };
            if let Some(left) = free.get_mut(&node) {
                left.take(&plugins::requests(pod));
            }
        }
        // ReadWriteOncePod claims in use, by a pod bound or being bound (a
        // terminating one too, until it is gone), as Kubernetes'
        // VolumeRestrictions plugin counts them.
        let claim_of = |ns: &str| {
            let ns = ns.to_string();
            move |name: &str| c.claims.get(&format!("{ns}/{name}"))
        };
        let mut single_pod: HashSet<String> = pods
            .iter()
            .filter(|p| !is_terminal(p) && (bound(p) || assumed.contains_key(&uid(p))))
            .flat_map(|p| {
                volumes::single_pod_claims(
                    p,
                    claim_of(p.metadata.namespace.as_deref().unwrap_or_default()),
                )
            })
            .collect();
        let mut pending: Vec<&Arc<Pod>> = pods
            .iter()
            .filter(|p| wants_us(p) && !assumed.contains_key(&uid(p)))
            .collect();
        // Highest priority first, then oldest, as Kubernetes' scheduling
        // queue orders them (its PrioritySort plugin).
        pending.sort_by_key(|p| {
            (
                std::cmp::Reverse(p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)),
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            )
        });
        let live: HashSet<String> = pending.iter().map(|p| uid(p)).collect();
        self.reported.retain(|u, _| live.contains(u));
        let mut binds: Vec<(Arc<Pod>, String, Vec<String>)> = Vec::new();
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
                        self.report_unschedulable(pod, &msg).await;
                        continue;
                    }
                },
                None => BTreeMap::new(),
            };
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let once = volumes::single_pod_claims(pod, claim_of(&ns));
            if once.iter().any(|k| single_pod.contains(k)) {
                let msg = format!(
                    "0/{} nodes are available: 1 node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode.",
                    nodes.len()
                );
                self.report_unschedulable(pod, &msg).await;
                continue;
            }
            let volume_plan = volumes::plan(
                pod,
                |name| c.claims.get(&format!("{ns}/{name}")),
                |name| c.volumes.get(name),
                |name| c.storage_classes.get(name),
            );
            let volume_plan = match volume_plan {
                Ok(p) => p,
                Err(msg) => {
                    let msg = format!("0/{} nodes are available: {msg}.", nodes.len());
                    self.report_unschedulable(pod, &msg).await;
                    continue;
                }
            };
            let reachable: Vec<Node> = nodes
                .iter()
                .filter(|n| volume_plan.fits(n))
                .cloned()
                .collect();
            if reachable.is_empty() && !nodes.is_empty() {
                let msg = format!(
                    "0/{n} nodes are available: {n} node(s) had volume node affinity conflict.",
                    n = nodes.len()
                );
                self.report_unschedulable(pod, &msg).await;
                continue;
            }
            match plugins::pick(pod, &reachable, &free, &extra, self.scoring) {
                Ok(node) => {
                    if let Some(left) = free.get_mut(&node) {
                        left.take(&plugins::requests(pod));
                    }
                    if let Ok(mut a) = self.assumed.lock() {
                        a.insert(uid(pod), node.clone());
                    }
                    single_pod.extend(once);
                    binds.push((pod.clone(), node, volume_plan.delayed));
                }
                Err(msg) => self.report_unschedulable(pod, &msg).await,
            }
        }
        let (client, events, assumed, wake) =
            (&self.client, &self.events, &self.assumed, &self.wake);
        futures::stream::iter(binds)
            .for_each_concurrent(BINDS, |(pod, node, delayed)| async move {
                match bind(client, events, &pod, &node, &delayed).await {
                    Ok(true) => {}
                    Ok(false) => forget(assumed, &pod),
                    Err(e) => {
                        warn!(pod = %name_ns(&pod).0, error = %e, "binding failed; retrying");
                        forget(assumed, &pod);
                        let w = wake.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            w.notify_one();
                        });
                    }
                }
            })
            .await;
    }

    /// Records FailedScheduling and PodScheduled=False, once per distinct
    /// reason.
    async fn report_unschedulable(&mut self, pod: &Pod, msg: &str) {
        let u = uid(pod);
        if self.reported.get(&u).map(String::as_str) == Some(msg) {
            return;
        }
        self.reported.insert(u, msg.to_string());
        let (name, ns) = name_ns(pod);
        debug!(pod = %name, namespace = %ns, reason = msg, "unschedulable");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        // The revision we decided on is a precondition: if the pod was bound
        // or changed meanwhile, our verdict is stale and the write must not land.
        let patch = json!({
            "metadata": {"resourceVersion": pod.metadata.resource_version},
            "status": {"conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": msg, "lastTransitionTime": now()}]},
        });
        match pods
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => {
                warn!(pod = %name, namespace = %ns, error = %e, "recording PodScheduled=False failed")
            }
        }
        // The Event after the condition, so whoever reads the story finds
        // the status already saying it.
        self.events.warning(&pod_ref(pod), "FailedScheduling", msg);
    }
}

fn forget(assumed: &Mutex<HashMap<String, String>>, pod: &Pod) {
    if let Ok(mut a) = assumed.lock() {
        a.remove(&uid(pod));
    }
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

/// Binds; false when someone else bound or deleted the pod first. Claims
/// waiting for their first consumer are told the node first, so the
/// provisioner makes their volumes where the pod will run.
async fn bind(
    client: &Client,
    events: &EventRecorder,
    pod: &Pod,
    node: &str,
    delayed: &[String],
) -> Result<bool, kube::Error> {
    let (name, ns) = name_ns(pod);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    for claim in delayed {
        let mark = json!({"metadata": {"annotations": {
            shoal_sdk::volumes::SELECTED_NODE: node}}});
        claims
            .patch(claim, &PatchParams::default(), &Patch::Merge(mark))
            .await?;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let binding = json!({"apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
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
