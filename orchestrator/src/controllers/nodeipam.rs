//! Node IPAM: gives each Node a `spec.podCIDR` cut from the cluster CIDR,
//! as kube-controller-manager does with `--allocate-node-cidrs`. A node's
//! pod network (its bridge, and the addresses of its runc pods) comes from
//! that range, so pods on different nodes never share an address.
//!
//! A range a node already names (given with `shoal node --pod-cidr`) is
//! kept and counted as taken.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;
use tracing::info;

use super::pods::object_ref;
use super::queue::WorkQueue;
use super::{new_queue, Action, ControllerError, Ctx, Reconciler};
use crate::apiserver::allocate::Cidr;

pub const NAME: &str = "node-ipam-controller";
/// How soon a node that found the cluster CIDR full looks again.
const FULL_RETRY: Duration = Duration::from_secs(30);

/// The cluster's pod range and how big each node's share is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterCidr {
    pub range: Cidr,
    /// Prefix length of each node's range (`--node-cidr-mask-size`).
    pub node_mask: u8,
}

fn pod_cidr(node: &Node) -> Option<&str> {
    node.spec
        .as_ref()?
        .pod_cidr
        .as_deref()
        .filter(|c| !c.is_empty())
}

/// The first node-sized range of `cluster` that overlaps none of `used`.
pub fn next_free(cluster: ClusterCidr, used: &[Cidr]) -> Option<Cidr> {
    cluster
        .range
        .subnets(cluster.node_mask)
        .find(|c| !used.iter().any(|u| u.overlaps(*c)))
}

pub struct NodeIpamController {
    ctx: Arc<Ctx>,
    cluster: ClusterCidr,
    /// Ranges this controller handed out, until the cache shows them:
    /// the next node must not get the same one from a stale cache.
    assigned: Mutex<HashMap<String, Cidr>>,
}

impl NodeIpamController {
    pub fn register(ctx: &Arc<Ctx>, cluster: ClusterCidr) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = new_queue(ctx, NAME);
        let q = queue.clone();
        ctx.informers.nodes.on_change(move |_, new| {
            if let Some(n) = new.filter(|n| pod_cidr(n).is_none()) {
                if let Some(name) = &n.metadata.name {
                    q.add(name.clone());
                }
            }
        });
        (
            Arc::new(NodeIpamController {
                ctx: ctx.clone(),
                cluster,
                assigned: Mutex::new(HashMap::new()),
            }),
            queue,
        )
    }

    fn assigned(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cidr>> {
        self.assigned.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Reconciler for NodeIpamController {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError> {
        let Some(node) = self.ctx.informers.nodes.get(key) else {
            self.assigned().remove(key);
            return Ok(Action::AwaitChange);
        };
        if pod_cidr(&node).is_some() {
            self.assigned().remove(key);
            return Ok(Action::AwaitChange);
        }
        // Bound first: a guard in the match's scrutinee would live through
        // the arms, which take the lock again.
        let written = self.assigned().get(key).copied();
        let pick = match written {
            // Already written; the cache has not caught up (or the write
            // was lost to a conflict): write the same range again.
            Some(c) => Some(c),
            None => {
                let mut used: Vec<Cidr> = self
                    .ctx
                    .informers
                    .nodes
                    .list()
                    .iter()
                    .filter_map(|n| pod_cidr(n)?.parse().ok())
                    .collect();
                used.extend(self.assigned().values().copied());
                next_free(self.cluster, &used)
            }
        };
        let Some(cidr) = pick else {
            self.ctx.events.warning(
                &object_ref(node.as_ref()),
                "CIDRNotAvailable",
                format!(
                    "node {key}: no /{} range left in the cluster CIDR {}",
                    self.cluster.node_mask, self.cluster.range
                ),
            );
            return Ok(Action::Requeue(FULL_RETRY));
        };
        self.assigned().insert(key.to_string(), cidr);
        let nodes: Api<Node> = Api::all(self.ctx.client.clone());
        let patch = json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
        nodes
            .patch(key, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(ControllerError::api(format!(
                "setting node {key}'s podCIDR"
            )))?;
        info!(node = key, pod_cidr = %cidr, "allocated the node's pod CIDR");
        Ok(Action::AwaitChange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().expect("cidr")
    }

    #[test]
    fn ranges_go_in_order_around_what_is_taken() {
        let cluster = ClusterCidr {
            range: c("10.42.0.0/16"),
            node_mask: 24,
        };
        assert_eq!(next_free(cluster, &[]), Some(c("10.42.0.0/24")));
        assert_eq!(
            next_free(cluster, &[c("10.42.0.0/24"), c("10.42.1.0/24")]),
            Some(c("10.42.2.0/24"))
        );
        // A node's own, larger range blocks every /24 inside it.
        assert_eq!(
            next_free(cluster, &[c("10.42.0.0/23"), c("10.42.3.0/24")]),
            Some(c("10.42.2.0/24"))
        );
        // Ranges outside the cluster's do not matter.
        assert_eq!(
            next_free(cluster, &[c("10.1.0.0/24")]),
            Some(c("10.42.0.0/24"))
        );
    }

    #[test]
    fn a_full_cluster_range_gives_nothing() {
        let cluster = ClusterCidr {
            range: c("10.42.0.0/23"),
            node_mask: 24,
        };
        assert_eq!(
            next_free(cluster, &[c("10.42.0.0/24"), c("10.42.1.0/24")]),
            None
        );
        let too_small = ClusterCidr {
            range: c("10.42.0.0/24"),
            node_mask: 16,
        };
        assert_eq!(next_free(too_small, &[]), None);
    }
}
