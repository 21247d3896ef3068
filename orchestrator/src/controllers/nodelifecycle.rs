//! The node lifecycle controller: what happens to a node that stops
//! answering, and to the pods on it.
//! - Health: a node whose heartbeat (its Lease's `renewTime`, or its Ready
//!   condition's `lastHeartbeatTime`) has not moved for the grace period is
//!   marked `Unknown` ("Kubelet stopped posting node status."), and the pods
//!   on it are marked not Ready so Services stop sending them traffic. As in
//!   Kubernetes, the grace period is counted from when this controller saw
//!   the heartbeat move, not from the node's clock, so a controller that
//!   starts late does not condemn every node at once.
//! - Taints follow the Ready condition: `node.kubernetes.io/unreachable`
//!   (Unknown) or `node.kubernetes.io/not-ready` (False), each with
//!   `NoSchedule` and `NoExecute`; they come off when the node is Ready.
//! - Eviction by taint: a pod on a node with a `NoExecute` taint it does not
//!   tolerate is deleted; one that tolerates it for `tolerationSeconds` is
//!   deleted that long after the taint was added. Every pod tolerates both
//!   taints for 300 s unless it says otherwise (admission adds it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;
use tracing::{debug, info};

use super::informer::key_of;
use super::pods::{delete_exact, object_ref};
use super::queue::WorkQueue;
use super::{api_code, new_queue, Action, ControllerError, Ctx, Reconciler};
use crate::scheduler::plugins::toleration_matches;

pub const NAME: &str = "node-lifecycle-controller";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Where nodes keep their heartbeat Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// The reason on the Ready=False condition of a pod whose node went
/// silent; the node agent, back, puts its own status over it.
pub const POD_NOT_READY_REASON: &str = "NodeNotReady";
/// Kubernetes' `--node-monitor-grace-period` default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(40);

/// A heartbeat as last seen, and when this controller saw it change.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    heartbeat: Option<Timestamp>,
    at: Instant,
}

/// Records `heartbeat`; the clock restarts only when it moved.
pub fn observe(prev: Option<&Observed>, heartbeat: Option<Timestamp>, now: Instant) -> Observed {
    match prev {
        Some(p) if p.heartbeat == heartbeat || heartbeat < p.heartbeat => p.clone(),
        _ => Observed { heartbeat, at: now },
    }
}

/// Whether the node has been silent for longer than `grace`; if not, how
/// long until it would have been.
pub fn silent(obs: &Observed, now: Instant, grace: Duration) -> Result<(), Duration> {
    let quiet = now.saturating_duration_since(obs.at);
    if quiet > grace {
        Ok(())
    } else {
        Err(grace - quiet)
    }
}

/// The latest sign of life: the Lease's renewal or the Ready heartbeat.
pub fn heartbeat(node: &Node, lease: Option<&Lease>) -> Option<Timestamp> {
    let renewed = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0);
    let posted = ready_condition(node)
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0);
    renewed.max(posted)
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// The Ready condition's status: "True", "False" or "Unknown" (also when
/// the node never posted one).
pub fn ready_status(node: &Node) -> &str {
    ready_condition(node).map_or("Unknown", |c| c.status.as_str())
}

/// Every condition turned Unknown, as Kubernetes marks a silent node; the
/// heartbeat times stay what the node last posted.
pub fn unknown_conditions(node: &Node, now: Timestamp) -> Vec<NodeCondition> {
    let mut current = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    // A node that never posted a Ready condition is told so, and gets one.
    let (reason, message) = if current.iter().any(|c| c.type_ == "Ready") {
        ("NodeStatusUnknown", "Kubelet stopped posting node status.")
    } else {
        current.push(NodeCondition {
            type_: "Ready".into(),
            status: "Unknown".into(),
            ..NodeCondition::default()
        });
        (
            "NodeStatusNeverUpdated",
            "Kubelet never posted node status.",
        )
    };
    current
        .into_iter()
        .map(|c| NodeCondition {
            status: "Unknown".into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_transition_time: if c.status == "Unknown" {
                c.last_transition_time.clone()
            } else {
                Some(Time(now))
            },
            ..c
        })
        .collect()
}

/// The node's taints with this controller's set brought in line with the
/// Ready status; None when nothing changes. Taints someone else put there
/// (`kubectl taint`) are kept as they are.
pub fn taints_for(current: &[Taint], ready: &str, now: Timestamp) -> Option<Vec<Taint>> {
    let wanted: &[&str] = match ready {
        "True" => &[],
        "False" => &[NOT_READY],
        _ => &[UNREACHABLE],
    };
    let ours = |t: &Taint| {
        (t.key == UNREACHABLE || t.key == NOT_READY)
            && (t.effect == "NoSchedule" || t.effect == "NoExecute")
    };
    let mut out: Vec<Taint> = current
        .iter()
        .filter(|t| !ours(t) || wanted.contains(&t.key.as_str()))
        .cloned()
        .collect();
    for key in wanted {
        for effect in ["NoSchedule", "NoExecute"] {
            if !out.iter().any(|t| t.key == *key && t.effect == effect) {
                out.push(Taint {
                    key: (*key).into(),
                    effect: effect.into(),
                    time_added: (effect == "NoExecute").then_some(Time(now)),
                    value: None,
                });
            }
        }
    }
    (out != current).then_some(out)
}

/// When a pod on a node with these taints must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    Now,
    At(Timestamp),
    Never,
}

fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    toleration_matches(t, &taint.key, taint.value.as_deref(), &taint.effect)
}

/// A pod's fate under a node's `NoExecute` taints: at once if one is not
/// tolerated, else when the shortest `tolerationSeconds` among the
/// tolerations used runs out (from when its taint was added), else never.
pub fn eviction(pod: &Pod, taints: &[Taint]) -> Eviction {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let mut due: Option<Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let used: Vec<&Toleration> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if used.is_empty() {
            return Eviction::Now;
        }
        // Any toleration without a limit keeps the pod for this taint.
        if used.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        }
        let secs = used
            .iter()
            .filter_map(|t| t.toleration_seconds)
            .min()
            .unwrap_or(0)
            .max(0);
        let added = taint
            .time_added
            .as_ref()
            .map_or(Timestamp::UNIX_EPOCH, |t| t.0);
        let at = added
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(secs))
            .unwrap_or(Timestamp::MAX);
        due = Some(due.map_or(at, |d| d.min(at)));
    }
    due.map_or(Eviction::Never, Eviction::At)
}

pub struct NodeLifecycleController {
    ctx: Arc<Ctx>,
    grace: Duration,
    seen: Mutex<HashMap<String, Observed>>,
}

impl NodeLifecycleController {
    pub fn register(ctx: &Arc<Ctx>) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = new_queue(ctx, NAME);
        // Node changes (a status post, a taint) are looked at as they come;
        // silence is noticed by the requeue at the end of the grace period.
        // Lease renewals only update the cache: queueing on each would be
        // one reconcile per node per second for nothing.
        let q = queue.clone();
        ctx.informers.nodes.on_change(move |_, new| {
            if let Some(n) = new {
                q.add(key_of(n));
            }
        });
        // A pod that lands on a tainted node is judged too.
        let q = queue.clone();
        ctx.informers.pods.on_change(move |old, new| {
            let node_of = |p: Option<&Pod>| p.and_then(|p| p.spec.as_ref()?.node_name.clone());
            let (before, after) = (node_of(old), node_of(new));
            if let Some(n) = after.filter(|a| Some(a) != before.as_ref()) {
                q.add(n);
            }
        });
        (
            Arc::new(NodeLifecycleController {
                ctx: ctx.clone(),
                grace: ctx.settings.node_monitor_grace,
                seen: Mutex::new(HashMap::new()),
            }),
            queue,
        )
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.ctx.client.clone())
    }

    fn pods_on(&self, node: &str) -> Vec<Arc<Pod>> {
        self.ctx
            .informers
            .pods
            .list()
            .into_iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
            .collect()
    }

    /// Marks a silent node's conditions Unknown; the resourceVersion
    /// precondition makes a status post that lands first win.
    async fn mark_unknown(&self, node: &Node) -> Result<(), ControllerError> {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let patch = json!({
            "metadata": {"uid": node.metadata.uid, "resourceVersion": node.metadata.resource_version},
            "status": {"conditions": unknown_conditions(node, Timestamp::now())},
        });
        let out = self
            .nodes()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(ControllerError::api(format!("marking node {name} Unknown")))?;
        info!(node = name, "node stopped posting status; marked Unknown");
        self.ctx.events.normal(
            &object_ref(node),
            "NodeNotReady",
            format!("Node {name} status is now: NodeNotReady"),
        );
        self.ctx.informers.nodes.assume(out);
        Ok(())
    }

    async fn set_taints(&self, node: &Node, taints: Vec<Taint>) -> Result<(), ControllerError> {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let patch = json!({
            "metadata": {"uid": node.metadata.uid, "resourceVersion": node.metadata.resource_version},
            "spec": {"taints": taints},
        });
        let out = self
            .nodes()
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(ControllerError::api(format!(
                "updating taints of node {name}"
            )))?;
        debug!(
            node = name,
            ?taints,
            "node taints follow its Ready condition"
        );
        self.ctx.informers.nodes.assume(out);
        Ok(())
    }

    /// Ready=False on a pod whose node is not Ready, so endpoints drop it.
    async fn mark_pod_not_ready(&self, pod: &Pod) -> Result<(), ControllerError> {
        let key = key_of(pod);
        let conditions: Vec<_> = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|mut c| {
                if c.type_ == "Ready" && c.status != "False" {
                    c.status = "False".into();
                    c.reason = Some(POD_NOT_READY_REASON.into());
                    c.message = Some("the node this pod runs on is not ready".into());
                    c.last_transition_time = Some(Time(Timestamp::now()));
                }
                c
            })
            .collect();
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or_default(),
        );
        let patch =
            json!({"metadata": {"uid": pod.metadata.uid}, "status": {"conditions": conditions}});
        match api
            .patch_status(
                pod.metadata.name.as_deref().unwrap_or_default(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(out) => {
                self.ctx.informers.pods.assume(out);
                Ok(())
            }
            Err(e) if matches!(api_code(&e), Some(404) | Some(409)) => Ok(()),
            Err(e) => Err(ControllerError::Api {
                action: format!("marking pod {key} not ready"),
                source: e,
            }),
        }
    }

    async fn evict(&self, pod: &Pod, node: &str) -> Result<(), ControllerError> {
        let key = key_of(pod);
        let deleted = delete_exact(&self.ctx.client, &self.ctx.informers.pods, pod, None)
            .await
            .map_err(ControllerError::api(format!("evicting pod {key}")))?;
        if deleted {
            info!(pod = %key, node, "evicted by a NoExecute taint");
            self.ctx.events.normal(
                &object_ref(pod),
                "TaintManagerEviction",
                format!("Marking for deletion Pod {key}"),
            );
        }
        Ok(())
    }

    /// Deletes the pods whose time under the node's `NoExecute` taints is
    /// up; returns when the next one's is, if any.
    async fn evict_due(
        &self,
        name: &str,
        taints: &[Taint],
    ) -> Result<Option<Duration>, ControllerError> {
        if !taints.iter().any(|t| t.effect == "NoExecute") {
            return Ok(None);
        }
        let now = Timestamp::now();
        let mut next: Option<Duration> = None;
        for pod in self.pods_on(name) {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            match eviction(&pod, taints) {
                Eviction::Never => {}
                Eviction::At(at) if at > now => {
                    let wait = Duration::from_millis(
                        (at.as_millisecond() - now.as_millisecond()).max(1) as u64,
                    );
                    next = Some(next.map_or(wait, |n| n.min(wait)));
                }
                Eviction::Now | Eviction::At(_) => self.evict(&pod, name).await?,
            }
        }
        Ok(next)
    }
}

#[async_trait]
impl Reconciler for NodeLifecycleController {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError> {
        let Some(node) = self.ctx.informers.nodes.get(key) else {
            if let Ok(mut seen) = self.seen.lock() {
                seen.remove(key);
            }
            return Ok(Action::AwaitChange);
        };
        let lease = self
            .ctx
            .informers
            .node_leases
            .get(&format!("{LEASE_NAMESPACE}/{key}"));
        let beat = heartbeat(&node, lease.as_deref());
        let now = Instant::now();
        let obs = {
            let Ok(mut seen) = self.seen.lock() else {
                return Ok(Action::Requeue(self.grace));
            };
            let obs = observe(seen.get(key), beat, now);
            seen.insert(key.to_string(), obs.clone());
            obs
        };
        let mut recheck = match silent(&obs, now, self.grace) {
            Ok(()) if ready_status(&node) != "Unknown" => {
                // The taints follow on the change event this write causes.
                self.mark_unknown(&node).await?;
                return Ok(Action::AwaitChange);
            }
            Ok(()) => None,
            Err(left) => Some(left + Duration::from_millis(10)),
        };
        let ready = ready_status(&node);
        let current = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        if let Some(taints) = taints_for(&current, ready, Timestamp::now()) {
            self.set_taints(&node, taints).await?;
            // Evictions follow on the change event this write causes.
            return Ok(recheck.map_or(Action::AwaitChange, Action::Requeue));
        }
        if ready != "True" {
            for pod in self.pods_on(key) {
                if super::pods::is_ready(&pod) {
                    self.mark_pod_not_ready(&pod).await?;
                }
            }
        }
        if let Some(wait) = self.evict_due(key, &current).await? {
            recheck = Some(recheck.map_or(wait, |r| r.min(wait)));
        }
        Ok(recheck.map_or(Action::AwaitChange, Action::Requeue))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn node(v: Value) -> Node {
        serde_json::from_value(v).expect("node")
    }

    fn pod(tolerations: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": tolerations}}))
            .expect("pod")
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn the_clock_restarts_only_when_the_heartbeat_moves() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(40);
        let first = observe(None, Some(ts("2026-01-01T00:00:00Z")), t0);
        // A controller that starts late counts from now, not from the beat.
        assert_eq!(
            silent(&first, t0 + Duration::from_secs(10), grace),
            Err(Duration::from_secs(30))
        );
        let later = t0 + Duration::from_secs(41);
        let same = observe(Some(&first), Some(ts("2026-01-01T00:00:00Z")), later);
        assert_eq!(same, first);
        assert_eq!(silent(&same, later, grace), Ok(()));
        let moved = observe(Some(&first), Some(ts("2026-01-01T00:00:05Z")), later);
        assert_eq!(silent(&moved, later, grace), Err(grace));
        // A heartbeat going backwards (an old cache entry) is no sign of life.
        let back = observe(
            Some(&moved),
            Some(ts("2026-01-01T00:00:01Z")),
            later + grace,
        );
        assert_eq!(back, moved);
    }

    #[test]
    fn the_heartbeat_is_the_later_of_lease_and_ready_condition() {
        let n = node(json!({"metadata": {"name": "n"}, "status": {"conditions": [
            {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-01T00:00:10Z"}]}}));
        let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "n"},
            "spec": {"renewTime": "2026-01-01T00:00:20.500000Z"}}))
        .expect("lease");
        assert_eq!(
            heartbeat(&n, Some(&lease)),
            Some(ts("2026-01-01T00:00:20.5Z"))
        );
        assert_eq!(heartbeat(&n, None), Some(ts("2026-01-01T00:00:10Z")));
        assert_eq!(
            heartbeat(&node(json!({"metadata": {"name": "n"}})), None),
            None
        );
    }

    #[test]
    fn silent_nodes_turn_every_condition_unknown() {
        let now = ts("2026-01-01T00:01:00Z");
        let n = node(json!({"metadata": {"name": "n"}, "status": {"conditions": [
            {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": "2026-01-01T00:00:10Z", "lastTransitionTime": "2025-12-01T00:00:00Z"},
            {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-01T00:00:10Z", "lastTransitionTime": "2025-12-01T00:00:00Z"}]}}));
        let out = unknown_conditions(&n, now);
        assert_eq!(out.len(), 2);
        for c in &out {
            assert_eq!(c.status, "Unknown");
            assert_eq!(c.reason.as_deref(), Some("NodeStatusUnknown"));
            assert_eq!(
                c.message.as_deref(),
                Some("Kubelet stopped posting node status.")
            );
            assert_eq!(c.last_transition_time, Some(Time(now)));
            assert_eq!(
                c.last_heartbeat_time,
                Some(Time(ts("2026-01-01T00:00:10Z")))
            );
        }
        let never = unknown_conditions(&node(json!({"metadata": {"name": "n"}})), now);
        assert_eq!(never.len(), 1);
        assert_eq!(never[0].type_, "Ready");
        assert_eq!(never[0].reason.as_deref(), Some("NodeStatusNeverUpdated"));
    }

    #[test]
    fn taints_follow_the_ready_condition_and_keep_the_users() {
        let now = ts("2026-01-01T00:00:00Z");
        let user = Taint {
            key: "dedicated".into(),
            value: Some("edge".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        assert_eq!(taints_for(std::slice::from_ref(&user), "True", now), None);
        let unreachable = taints_for(std::slice::from_ref(&user), "Unknown", now).expect("changed");
        let keys: Vec<(&str, &str)> = unreachable
            .iter()
            .map(|t| (t.key.as_str(), t.effect.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("dedicated", "NoSchedule"),
                (UNREACHABLE, "NoSchedule"),
                (UNREACHABLE, "NoExecute")
            ]
        );
        assert_eq!(unreachable[2].time_added, Some(Time(now)));
        assert_eq!(unreachable[1].time_added, None);
        // Already there: nothing to write, and timeAdded is not reset.
        assert_eq!(
            taints_for(&unreachable, "Unknown", ts("2026-01-01T00:05:00Z")),
            None
        );
        let not_ready = taints_for(&unreachable, "False", now).expect("changed");
        assert!(not_ready.iter().all(|t| t.key != UNREACHABLE));
        assert_eq!(not_ready.iter().filter(|t| t.key == NOT_READY).count(), 2);
        assert_eq!(taints_for(&not_ready, "True", now), Some(vec![user]));
    }

    #[test]
    fn evictions_follow_tolerations() {
        let added = ts("2026-01-01T00:00:00Z");
        let taints = vec![
            Taint {
                key: UNREACHABLE.into(),
                effect: "NoSchedule".into(),
                value: None,
                time_added: None,
            },
            Taint {
                key: UNREACHABLE.into(),
                effect: "NoExecute".into(),
                value: None,
                time_added: Some(Time(added)),
            },
        ];
        assert_eq!(eviction(&pod(json!([])), &taints), Eviction::Now);
        // A NoSchedule toleration does not cover NoExecute.
        assert_eq!(
            eviction(
                &pod(json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoSchedule"}])),
                &taints
            ),
            Eviction::Now
        );
        assert_eq!(
            eviction(
                &pod(
                    json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}])
                ),
                &taints
            ),
            Eviction::At(ts("2026-01-01T00:05:00Z"))
        );
        // The shortest limit among the tolerations that match wins.
        assert_eq!(
            eviction(
                &pod(json!([
                {"key": UNREACHABLE, "operator": "Exists", "tolerationSeconds": 300},
                {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}])),
                &taints
            ),
            Eviction::At(ts("2026-01-01T00:00:02Z"))
        );
        // No limit: stays (DaemonSet pods).
        assert_eq!(
            eviction(
                &pod(json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}])),
                &taints
            ),
            Eviction::Never
        );
        // Equal needs the value to match.
        assert_eq!(
            eviction(
                &pod(json!([{"key": UNREACHABLE, "value": "x", "effect": "NoExecute"}])),
                &taints
            ),
            Eviction::Now
        );
        assert_eq!(eviction(&pod(json!([])), &taints[..1]), Eviction::Never);
    }
}
