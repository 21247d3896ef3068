//! The ReplicaSet controller: keeps `spec.replicas` active pods matching
//! the selector, adopting orphans that match and releasing pods that stop
//! matching, and reports replicas, ready and available counts.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;
use tracing::debug;

use super::informer::key_of;
use super::owners::{self, controller_of, Selector};
use super::pods::{self, object_ref, PodControl};
use super::queue::WorkQueue;
use super::wiring;
use super::{new_queue, Action, ControllerError, Ctx, Reconciler};

pub const NAME: &str = "replicaset-controller";

pub struct ReplicaSetController {
    ctx: Arc<Ctx>,
    pods: PodControl,
}

impl ReplicaSetController {
    /// Wires the controller to the shared caches; returns it and its queue.
    pub fn register(ctx: &Arc<Ctx>) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = new_queue(ctx, NAME);
        wiring::enqueue_self(&ctx.informers.replicasets, &queue);
        let q = queue.clone();
        let sets = Arc::downgrade(&ctx.informers.replicasets);
        ctx.informers.pods.on_change(move |old, new| {
            let mut owners: Vec<String> = Vec::new();
            for p in [old, new].into_iter().flatten() {
                let ns = p.metadata.namespace.as_deref().unwrap_or_default();
                match controller_of(&p.metadata) {
                    Some(r) if r.kind == "ReplicaSet" => owners.push(format!("{ns}/{}", r.name)),
                    Some(_) => {}
                    // An orphan: any ReplicaSet that would adopt it.
                    None => {
                        if let Some(sets) = sets.upgrade() {
                            owners.extend(matching_sets(&sets.list_namespace(ns), p));
                        }
                    }
                }
            }
            owners.dedup();
            for k in owners {
                q.add(k);
            }
        });
        let pods = PodControl::new(ctx);
        let me = Arc::new(ReplicaSetController {
            ctx: ctx.clone(),
            pods,
        });
        (me, queue)
    }

    async fn sync(&self, rs: Arc<ReplicaSet>) -> Result<Action, ControllerError> {
        let key = key_of(rs.as_ref());
        let spec = rs.spec.clone().unwrap_or_default();
        let sel = Selector::new(&spec.selector).map_err(|message| ControllerError::Invalid {
            object: format!("replicaset {key}"),
            message,
        })?;
        let owned = self.claim(&rs, &sel).await?;
        let active: Vec<Arc<Pod>> = owned.into_iter().filter(|p| pods::is_active(p)).collect();
        let want = spec.replicas.unwrap_or(1).max(0) as usize;
        let acts = rs.metadata.deletion_timestamp.is_none() && active.len() != want;
        let failure = if acts {
            self.manage(&rs, &active, want).await
        } else {
            None
        };
        // After creating or deleting, count from the cache, which now
        // includes what was just done; otherwise what was claimed is current.
        let now_active = if acts {
            self.owned_active(&rs, &sel)
        } else {
            active
        };
        let (status, wake) = status_of(&rs, &now_active, failure.as_ref());
        if rs.status.as_ref() != Some(&status) {
            self.write_status(&rs, &status).await?;
        }
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(wake.map_or(Action::AwaitChange, Action::Requeue))
    }

    fn owned_active(&self, rs: &ReplicaSet, sel: &Selector) -> Vec<Arc<Pod>> {
        let uid = rs.metadata.uid.as_deref().unwrap_or_default();
        let ns = rs.metadata.namespace.as_deref().unwrap_or_default();
        self.ctx
            .informers
            .pods
            .list_controlled_by(uid)
            .into_iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(ns)
                    && sel.matches(p.metadata.labels.as_ref())
                    && pods::is_active(p)
            })
            .collect()
    }

    /// The pods this ReplicaSet controls after adopting matching orphans
    /// and releasing owned pods that no longer match.
    async fn claim(
        &self,
        rs: &ReplicaSet,
        sel: &Selector,
    ) -> Result<Vec<Arc<Pod>>, ControllerError> {
        let uid = rs.metadata.uid.as_deref().unwrap_or_default();
        let ns = rs.metadata.namespace.as_deref().unwrap_or_default();
        let deleting = rs.metadata.deletion_timestamp.is_some();
        let pods = &self.ctx.informers.pods;
        let mut owned = Vec::new();
        // Its own pods (an owner reference across namespaces counts for
        // nothing, as in Kubernetes), then the namespace's orphans.
        let candidates = pods
            .list_controlled_by(uid)
            .into_iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
            .chain(pods.list_orphans(ns));
        for p in candidates {
            let matches = sel.matches(p.metadata.labels.as_ref());
            match controller_of(&p.metadata) {
                Some(r) if r.uid == uid => {
                    if matches {
                        owned.push(p);
                    } else {
                        let released = owners::release(&self.ctx.client, p.as_ref(), uid)
                            .await
                            .map_err(ControllerError::api(format!(
                                "releasing pod {}",
                                key_of(p.as_ref())
                            )))?;
                        self.ctx.informers.pods.assume(released);
                    }
                }
                None if matches && !deleting && pods::is_active(&p) => {
                    match owners::adopt(&self.ctx.client, p.as_ref(), owners::controller_ref(rs))
                        .await
                    {
                        Ok(adopted) => {
                            debug!(pod = %key_of(&adopted), replicaset = %key_of(rs), "adopted");
                            let adopted = Arc::new(adopted);
                            self.ctx.informers.pods.assume((*adopted).clone());
                            owned.push(adopted);
                        }
                        // Gone or changed meanwhile: the next pass decides.
                        Err(e) if matches!(super::api_code(&e), Some(404) | Some(409)) => {}
                        Err(e) => {
                            return Err(ControllerError::Api {
                                action: format!("adopting pod {}", key_of(p.as_ref())),
                                source: e,
                            })
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(owned)
    }

    /// Creates or deletes pods toward `want`; the first failure, if any.
    async fn manage(
        &self,
        rs: &ReplicaSet,
        active: &[Arc<Pod>],
        want: usize,
    ) -> Option<ControllerError> {
        let owner = object_ref(rs);
        let ns = owner.namespace.clone();
        if active.len() < want {
            let spec = rs.spec.clone().unwrap_or_default();
            let template = spec.template.unwrap_or_default();
            let generate = format!("{}-", owner.name);
            let fresh: Vec<Pod> = (active.len()..want)
                .map(|_| {
                    pods::from_template(&template, owners::controller_ref(rs), &ns, &generate, None)
                })
                .collect();
            let (made, err) = self.pods.create_all(&owner, fresh).await;
            debug!(replicaset = %key_of(rs), made, want, "created pods");
            return err;
        }
        if active.len() > want {
            let mut doomed: Vec<&Arc<Pod>> = active.iter().collect();
            doomed.sort_by(|a, b| pods::deletion_order(a, b));
            doomed.truncate(active.len() - want);
            let results = join_all(doomed.iter().map(|p| self.pods.delete(&owner, p))).await;
            return results.into_iter().find_map(Result::err);
        }
        None
    }

    async fn write_status(
        &self,
        rs: &ReplicaSet,
        status: &ReplicaSetStatus,
    ) -> Result<(), ControllerError> {
        let mut body = serde_json::to_value(status).unwrap_or(Value::Null);
        if status.conditions.is_none() {
            // Merge patch keeps what it is not told to drop.
            body["conditions"] = Value::Null;
        }
        wiring::write_status(&self.ctx, &self.ctx.informers.replicasets, rs, &body).await
    }
}

#[async_trait]
impl Reconciler for ReplicaSetController {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError> {
        match self.ctx.informers.replicasets.get(key) {
            Some(rs) => self.sync(rs).await,
            None => Ok(Action::AwaitChange),
        }
    }
}

/// ReplicaSets in one namespace whose selector picks `pod`.
fn matching_sets(sets: &[Arc<ReplicaSet>], pod: &Pod) -> Vec<String> {
    sets.iter()
        .filter(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| Selector::new(&s.selector).ok())
                .is_some_and(|sel| sel.matches(pod.metadata.labels.as_ref()))
        })
        .map(|rs| key_of(rs.as_ref()))
        .collect()
}

/// The status a ReplicaSet should report for its `active` pods, and when
/// to look again for pods still serving their `minReadySeconds`.
pub fn status_of(
    rs: &ReplicaSet,
    active: &[Arc<Pod>],
    failure: Option<&ControllerError>,
) -> (ReplicaSetStatus, Option<Duration>) {
    let spec = rs.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let now = Timestamp::now();
    let mut ready = 0;
    let mut available = 0;
    let mut fully_labeled = 0;
    let mut wake: Option<Duration> = None;
    for p in active {
        let labels = p.metadata.labels.as_ref();
        if template_labels
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        {
            fully_labeled += 1;
        }
        if pods::is_ready(p) {
            ready += 1;
        }
        match pods::availability(p, min_ready, now) {
            (true, _) => available += 1,
            (false, Some(left)) => wake = Some(wake.map_or(left, |w| w.min(left))),
            (false, None) => {}
        }
    }
    let previous = rs.status.as_ref().and_then(|s| s.conditions.clone());
    let conditions = match failure {
        Some(e) => {
            let reason = if active.len() < spec.replicas.unwrap_or(1).max(0) as usize {
                "FailedCreate"
            } else {
                "FailedDelete"
            };
            let same = previous
                .as_ref()
                .and_then(|c| c.iter().find(|c| c.type_ == "ReplicaFailure"))
                .filter(|c| c.reason.as_deref() == Some(reason));
            Some(vec![ReplicaSetCondition {
                type_: "ReplicaFailure".into(),
                status: "True".into(),
                reason: Some(reason.into()),
                message: Some(e.to_string()),
                last_transition_time: same
                    .and_then(|c| c.last_transition_time.clone())
                    .or(Some(Time(now))),
            }])
        }
        None => None,
    };
    let status = ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(fully_labeled),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        observed_generation: rs.metadata.generation,
        conditions,
        ..ReplicaSetStatus::default()
    };
    (status, wake)
}
