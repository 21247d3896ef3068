//! The pod garbage collector: pods nobody is left to finish.
//! - A pod bound to a node that no longer exists is force-deleted: no node
//!   agent will ever stop it and confirm its deletion.
//! - A pod being deleted on a node that is not Ready and carries the
//!   `node.kubernetes.io/out-of-service` taint is force-deleted too:
//!   Kubernetes' non-graceful node shutdown, how an operator tells the
//!   cluster that a dead node's pods are really gone (so a StatefulSet may
//!   start their replacements).
//!
//! A node the cache has never seen is given a quarantine before its pods
//! go, as in Kubernetes: a pod may name a node that is registering right
//! now. A node seen being deleted gets none.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use tracing::info;

use super::informer::key_of;
use super::nodelifecycle::ready_status;
use super::pods::delete_exact;
use super::queue::WorkQueue;
use super::{new_queue, Action, ControllerError, Ctx, Reconciler};

pub const NAME: &str = "pod-garbage-collector";
pub const OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service";
/// How long a node may be missing before its pods count as orphans.
const QUARANTINE: Duration = Duration::from_secs(40);

/// Nodes missing from the cache: since when, or None when seen deleted.
type Missing = Arc<Mutex<HashMap<String, Option<Instant>>>>;

fn node_of(p: &Pod) -> Option<&str> {
    p.spec.as_ref()?.node_name.as_deref()
}

/// Whether the operator declared the node gone for good.
pub fn out_of_service(node: &Node) -> bool {
    ready_status(node) != "True"
        && node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|ts| {
                ts.iter()
                    .any(|t| t.key == OUT_OF_SERVICE && t.effect == "NoExecute")
            })
}

pub struct PodGarbageCollector {
    ctx: Arc<Ctx>,
    missing: Missing,
}

impl PodGarbageCollector {
    pub fn register(ctx: &Arc<Ctx>) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = new_queue(ctx, NAME);
        let q = queue.clone();
        let nodes = Arc::downgrade(&ctx.informers.nodes);
        ctx.informers.pods.on_change(move |_, new| {
            let (Some(p), Some(nodes)) = (new, nodes.upgrade()) else {
                return;
            };
            let Some(n) = node_of(p) else { return };
            match nodes.get(n) {
                None => q.add(key_of(p)),
                Some(node) if p.metadata.deletion_timestamp.is_some() && out_of_service(&node) => {
                    q.add(key_of(p))
                }
                Some(_) => {}
            }
        });
        let q = queue.clone();
        let pods = Arc::downgrade(&ctx.informers.pods);
        let missing: Missing = Arc::default();
        let gone = missing.clone();
        ctx.informers.nodes.on_change(move |old, new| {
            let Some(pods) = pods.upgrade() else { return };
            let Some(name) = new.or(old).and_then(|n| n.metadata.name.clone()) else {
                return;
            };
            let all = new.is_none();
            if let Ok(mut m) = gone.lock() {
                if all {
                    m.insert(name.clone(), None);
                } else {
                    m.remove(&name);
                }
            }
            if !all && !new.is_some_and(out_of_service) {
                return;
            }
            for p in pods.list() {
                if node_of(&p) == Some(name.as_str())
                    && (all || p.metadata.deletion_timestamp.is_some())
                {
                    q.add(key_of(p.as_ref()));
                }
            }
        });
        (
            Arc::new(PodGarbageCollector {
                ctx: ctx.clone(),
                missing,
            }),
            queue,
        )
    }

    /// Whether the node exists, asked of the API when the cache says no:
    /// a cache may not have seen a node that just registered.
    async fn node_exists(&self, name: &str) -> Result<bool, ControllerError> {
        if self.ctx.informers.nodes.get(name).is_some() {
            return Ok(true);
        }
        let nodes: Api<Node> = Api::all(self.ctx.client.clone());
        match nodes.get_opt(name).await {
            Ok(n) => Ok(n.is_some()),
            Err(e) => Err(ControllerError::Api {
                action: format!("looking up node {name}"),
                source: e,
            }),
        }
    }

    async fn force_delete(&self, pod: &Pod, why: &str) -> Result<(), ControllerError> {
        let key = key_of(pod);
        let deleted = delete_exact(&self.ctx.client, &self.ctx.informers.pods, pod, Some(0))
            .await
            .map_err(ControllerError::api(format!("force-deleting pod {key}")))?;
        if deleted {
            info!(pod = %key, node = node_of(pod).unwrap_or_default(), why, "force-deleted pod");
        }
        Ok(())
    }
}

#[async_trait]
impl Reconciler for PodGarbageCollector {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError> {
        let Some(pod) = self.ctx.informers.pods.get(key) else {
            return Ok(Action::AwaitChange);
        };
        let Some(node_name) = node_of(&pod) else {
            return Ok(Action::AwaitChange);
        };
        match self.ctx.informers.nodes.get(node_name) {
            Some(node) => {
                if pod.metadata.deletion_timestamp.is_some() && out_of_service(&node) {
                    self.force_delete(&pod, "terminating on an out-of-service node")
                        .await?;
                }
            }
            None => {
                let since = self.missing.lock().ok().map(|mut m| {
                    *m.entry(node_name.to_string())
                        .or_insert_with(|| Some(Instant::now()))
                });
                if let Some(Some(at)) = since {
                    let waited = at.elapsed();
                    if waited < QUARANTINE {
                        return Ok(Action::Requeue(QUARANTINE - waited));
                    }
                }
                if self.node_exists(node_name).await? {
                    if let Ok(mut m) = self.missing.lock() {
                        m.remove(node_name);
                    }
                } else {
                    self.force_delete(&pod, "its node is gone").await?;
                }
            }
        }
        Ok(Action::AwaitChange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn out_of_service_needs_the_taint_and_a_node_that_is_not_ready() {
        let node = |ready: &str, taint: &str| -> Node {
            serde_json::from_value(json!({"metadata": {"name": "n"},
                "spec": {"taints": [{"key": taint, "effect": "NoExecute"}]},
                "status": {"conditions": [{"type": "Ready", "status": ready}]}}))
            .expect("node")
        };
        assert!(out_of_service(&node("Unknown", OUT_OF_SERVICE)));
        assert!(out_of_service(&node("False", OUT_OF_SERVICE)));
        assert!(!out_of_service(&node("True", OUT_OF_SERVICE)));
        assert!(!out_of_service(&node("Unknown", "something-else")));
    }
}
