//! The namespace controller: a namespace being deleted (phase
//! `Terminating`, finalizer `kubernetes`) has everything in it deleted,
//! waits until it is all gone (pods stop within their grace period), and
//! only then gives up its finalizer so the namespace itself goes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::Api;
use tracing::{debug, info};

use super::informer::key_of;
use super::queue::WorkQueue;
use super::{api_code, new_queue, Action, ControllerError, Ctx, Reconciler};
use crate::apiserver::kinds;
use crate::apiserver::registry::Source;

pub const NAME: &str = "namespace-controller";
const FINALIZER: &str = "kubernetes";

pub struct NamespaceController {
    ctx: Arc<Ctx>,
    /// Every namespaced resource the server serves.
    resources: Vec<ApiResource>,
}

impl NamespaceController {
    pub fn register(ctx: &Arc<Ctx>) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = new_queue(ctx, NAME);
        let q = queue.clone();
        ctx.informers.namespaces.on_change(move |_, new| {
            if let Some(n) = new.filter(|n| n.metadata.deletion_timestamp.is_some()) {
                q.add(key_of(n));
            }
        });
        let resources = kinds::registry()
            .resources
            .iter()
            // Only what is stored can be left in a namespace: reviews are
            // answered and metrics measured, never kept.
            .filter(|r| r.namespaced && matches!(r.source, Source::Stored))
            .map(|r| ApiResource {
                group: r.group.to_string(),
                version: r.version.to_string(),
                api_version: r.api_version(),
                kind: r.kind.to_string(),
                plural: r.plural.to_string(),
            })
            .collect();
        (
            Arc::new(NamespaceController {
                ctx: ctx.clone(),
                resources,
            }),
            queue,
        )
    }

    async fn sync(&self, ns: Arc<Namespace>) -> Result<Action, ControllerError> {
        if ns.metadata.deletion_timestamp.is_none() {
            return Ok(Action::AwaitChange);
        }
        let finalizers = ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.clone())
            .unwrap_or_default();
        if !finalizers.iter().any(|f| f == FINALIZER) {
            return Ok(Action::AwaitChange);
        }
        let name = ns.metadata.name.clone().unwrap_or_default();
        let mut left = 0;
        for ar in &self.resources {
            let api: Api<DynamicObject> = Api::namespaced_with(self.ctx.client.clone(), &name, ar);
            let remaining =
                api.list_metadata(&ListParams::default())
                    .await
                    .map_err(ControllerError::api(format!(
                        "listing {} in namespace {name}",
                        ar.plural
                    )))?;
            let live = remaining
                .items
                .iter()
                .filter(|o| o.metadata.deletion_timestamp.is_none())
                .count();
            left += remaining.items.len();
            if live == 0 {
                continue;
            }
            match api
                .delete_collection(&DeleteParams::background(), &ListParams::default())
                .await
            {
                Ok(_) => {
                    debug!(namespace = %name, resource = %ar.plural, count = live, "deleting contents")
                }
                Err(e) if matches!(api_code(&e), Some(404) | Some(405)) => {}
                Err(e) => {
                    return Err(ControllerError::Api {
                        action: format!("deleting {} in namespace {name}", ar.plural),
                        source: e,
                    })
                }
            }
        }
        if left > 0 {
            // Deletions in flight (pods stopping, finalizers): look again soon.
            return Ok(Action::Requeue(Duration::from_millis(250)));
        }
        let api: Api<Namespace> = Api::all(self.ctx.client.clone());
        let mut done = (*ns).clone();
        if let Some(spec) = done.spec.as_mut() {
            spec.finalizers = Some(finalizers.into_iter().filter(|f| f != FINALIZER).collect());
        }
        match api
            .replace_subresource("finalize", &name, &PostParams::default(), &done)
            .await
        {
            Ok(_) => {
                info!(namespace = %name, "namespace emptied; finalized");
                Ok(Action::AwaitChange)
            }
            Err(e) if api_code(&e) == Some(404) => Ok(Action::AwaitChange),
            Err(e) => Err(ControllerError::Api {
                action: format!("finalizing namespace {name}"),
                source: e,
            }),
        }
    }
}

#[async_trait]
impl Reconciler for NamespaceController {
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
