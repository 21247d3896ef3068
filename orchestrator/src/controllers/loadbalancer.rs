//! Load balancer status, as k3s' ServiceLB does it: every node's gateway
//! serves LoadBalancer Services and `shoal` Ingresses, so their
//! `status.loadBalancer.ingress` lists the Ready nodes' addresses.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::{json, Value};

use super::informer::{key_of, split_key};
use super::queue::WorkQueue;
use super::{api_code, new_queue, Action, ControllerError, Ctx, Reconciler};
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
        let current = serde_json::to_value(
            svc.status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.clone())
                .unwrap_or_default(),
        )
        .unwrap_or(Value::Null);
        let wanted = if is_lb { self.addresses() } else { json!([]) };
        if current == wanted {
            return Ok(Action::AwaitChange);
        }
        let (ns, name) = split_key(key);
        let api: Api<Service> = Api::namespaced(self.ctx.client.clone(), ns);
        let patch = json!({"metadata": {"uid": svc.metadata.uid}, "status": {"loadBalancer": {"ingress": wanted}}});
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(out) => self.ctx.informers.services.assume(out),
            Err(e) if api_code(&e) == Some(404) => {}
            Err(e) => {
                return Err(ControllerError::api(format!(
                    "updating load balancer status of service {key}"
                ))(e))
            }
        }
        Ok(Action::AwaitChange)
    }

    async fn sync_ingress(&self, key: &str) -> Result<Action, ControllerError> {
        let Some(ing) = self.ctx.informers.ingresses.get(key) else {
            return Ok(Action::AwaitChange);
        };
        if !ingress::ours(&ing) {
            return Ok(Action::AwaitChange);
        }
        let current = serde_json::to_value(
            ing.status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.clone())
                .unwrap_or_default(),
        )
        .unwrap_or(Value::Null);
        let wanted = self.addresses();
        if current == wanted {
            return Ok(Action::AwaitChange);
        }
        let (ns, name) = split_key(key);
        let api: Api<Ingress> = Api::namespaced(self.ctx.client.clone(), ns);
        let patch = json!({"metadata": {"uid": ing.metadata.uid}, "status": {"loadBalancer": {"ingress": wanted}}});
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(out) => self.ctx.informers.ingresses.assume(out),
            Err(e) if api_code(&e) == Some(404) => {}
            Err(e) => {
                return Err(ControllerError::api(format!(
                    "updating load balancer status of ingress {key}"
                ))(e))
            }
        }
        Ok(Action::AwaitChange)
    }
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
