//! The service account controller: every active namespace has a `default`
//! ServiceAccount, made when the namespace appears and again should it be
//! deleted, as Kubernetes' does. Pods name it when they name none, and
//! `kubectl create token default` needs it.

use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::PostParams;
use kube::Api;
use tracing::info;

use super::queue::WorkQueue;
use super::{api_code, new_queue, Action, ControllerError, Ctx, Reconciler};

pub const NAME: &str = "serviceaccount-controller";
pub const DEFAULT: &str = "default";

/// Whether `ns` should get a `default` ServiceAccount: it is not going
/// away, and it has none.
pub fn needs_default(ns: &Namespace, has_default: bool) -> bool {
    let terminating = ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    !terminating && !has_default
}

pub struct ServiceAccountController {
    ctx: Arc<Ctx>,
}

impl ServiceAccountController {
    pub fn register(ctx: &Arc<Ctx>) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = new_queue(ctx, NAME);
        let q = queue.clone();
        ctx.informers.namespaces.on_change(move |_, new| {
            if let Some(name) = new.and_then(|n| n.metadata.name.as_deref()) {
                q.add(name.to_string());
            }
        });
        let q = queue.clone();
        ctx.informers.service_accounts.on_change(move |old, new| {
            // Only a `default` going away matters.
            let gone = old.filter(|_| new.is_none());
            if let Some(sa) = gone.filter(|sa| sa.metadata.name.as_deref() == Some(DEFAULT)) {
                if let Some(ns) = sa.metadata.namespace.as_deref() {
                    q.add(ns.to_string());
                }
            }
        });
        (
            Arc::new(ServiceAccountController { ctx: ctx.clone() }),
            queue,
        )
    }

    async fn sync(&self, ns: Arc<Namespace>) -> Result<Action, ControllerError> {
        let name = ns.metadata.name.clone().unwrap_or_default();
        let has = self
            .ctx
            .informers
            .service_accounts
            .get(&format!("{name}/{DEFAULT}"))
            .is_some();
        if !needs_default(&ns, has) {
            return Ok(Action::AwaitChange);
        }
        let api: Api<ServiceAccount> = Api::namespaced(self.ctx.client.clone(), &name);
        let sa = ServiceAccount {
            metadata: kube::api::ObjectMeta {
                name: Some(DEFAULT.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => {
                info!(namespace = %name, "created the default service account");
                Ok(Action::AwaitChange)
            }
            // Made meanwhile, or the namespace began terminating (403 from
            // admission for a closing namespace, 404 once it is gone).
            Err(e) if matches!(api_code(&e), Some(409 | 403 | 404)) => Ok(Action::AwaitChange),
            Err(e) => Err(ControllerError::Api {
                action: format!("creating the default service account in {name}"),
                source: e,
            }),
        }
    }
}

#[async_trait]
impl Reconciler for ServiceAccountController {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError> {
        match self.ctx.informers.namespaces.get(key) {
            Some(n) => self.sync(n).await,
            None => Ok(Action::AwaitChange),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_live_namespaces_without_one_get_a_default() {
        let mut ns = Namespace::default();
        assert!(needs_default(&ns, false));
        assert!(!needs_default(&ns, true));
        ns.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert!(!needs_default(&ns, false));
    }
}
