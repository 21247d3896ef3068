//! Load balancer status, as k3s' ServiceLB does it: every node's gateway
//! serves LoadBalancer Services and `shoal` Ingresses, so their
//! `status.loadBalancer.ingress` lists the Ready nodes' addresses.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::networking::v1::Ingress;
use serde_json::{json, Value};

use super::informer::key_of;
use super::queue::WorkQueue;
use super::wiring;
use super::{new_queue, Action, ControllerError, Ctx, Reconciler};
use crate::node::gateway::ingress;

pub const NAME: &str = "service-lb-controller";

pub struct LoadBalancerController {
    ctx: Arc<Ctx>,
}

/// Queue keys say which kind they are: `svc/ns/name` or `ing/ns/name`.
fn svc_key(s: &Service) -> String {
    format!("svc/{}", key_of(s))
}

fn ing_key(i: &Ingress) -> String {
    format!("ing/{}", key_of(i))
}

impl LoadBalancerController {
    pub fn register(ctx: &Arc<Ctx>) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = new_queue(ctx, NAME);
        let q = queue.clone();
        ctx.informers.services.on_change(move |_, new| {
            if let Some(s) = new {
                q.add(svc_key(s));
            }
        });
        let q = queue.clone();
        ctx.informers.ingresses.on_change(move |_, new| {
            if let Some(i) = new {
                q.add(ing_key(i));
            }
        });
        // Nodes coming, going or changing readiness move every address list.
        let q = queue.clone();
        let (services, ingresses) = (
            Arc::downgrade(&ctx.informers.services),
            Arc::downgrade(&ctx.informers.ingresses),
        );
        ctx.informers.nodes.on_change(move |old, new| {
            let before = old.map(address);
            let after = new.map(address);
            if before == after {
                return;
            }
            if let Some(s) = services.upgrade() {
                for svc in s.list() {
                    q.add(svc_key(&svc));
                }
            }
            if let Some(i) = ingresses.upgrade() {
                for ing in i.list() {
                    q.add(ing_key(&ing));
                }
            }
        });
        (Arc::new(LoadBalancerController { ctx: ctx.clone() }), queue)
    }

    /// `[{ip}]` of every Ready node, sorted.
    fn addresses(&self) -> Value {
        let ips: BTreeSet<String> = self
            .ctx
            .informers
            .nodes
            .list()
            .iter()
            .filter_map(|n| address(n))
            .collect();
        Value::Array(ips.into_iter().map(|ip| json!({"ip": ip})).collect())
    }

    async fn sync_service(&self, key: &str) -> Result<Action, ControllerError> {
        let Some(svc) = self.ctx.informers.services.get(key) else {
            return Ok(Action::AwaitChange);
        };
        let is_lb = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
        let wanted = if is_lb { self.addresses() } else { json!([]) };
        if current(&svc.status) != wanted {
            let status = json!({"loadBalancer": {"ingress": wanted}});
            wiring::write_status(&self.ctx, &self.ctx.informers.services, &*svc, &status).await?;
        }
        Ok(Action::AwaitChange)
    }

    async fn sync_ingress(&self, key: &str) -> Result<Action, ControllerError> {
        let Some(ing) = self.ctx.informers.ingresses.get(key) else {
            return Ok(Action::AwaitChange);
        };
        let wanted = self.addresses();
        if ingress::ours(&ing) && current(&ing.status) != wanted {
            let status = json!({"loadBalancer": {"ingress": wanted}});
            wiring::write_status(&self.ctx, &self.ctx.informers.ingresses, &*ing, &status).await?;
        }
        Ok(Action::AwaitChange)
    }
}

/// `status.loadBalancer.ingress` as JSON (`[]` when unset).
fn current<S: serde::Serialize>(status: &Option<S>) -> Value {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.pointer("/loadBalancer/ingress").cloned())
        .filter(|v| !v.is_null())
        .unwrap_or_else(|| json!([]))
}

/// A Ready node's InternalIP.
fn address(n: &Node) -> Option<String> {
    let status = n.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        return None;
    }
    status
        .addresses
        .iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone())
}

#[async_trait]
impl Reconciler for LoadBalancerController {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError> {
        match key.split_once('/') {
            Some(("svc", rest)) => self.sync_service(rest).await,
            Some(("ing", rest)) => self.sync_ingress(rest).await,
            _ => Ok(Action::AwaitChange),
        }
    }
}
