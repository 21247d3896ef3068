//! The Deployment controller: one ReplicaSet per pod template (named by
//! its hash), rolled from old to new by `RollingUpdate` or `Recreate`,
//! with revisions `kubectl rollout history|undo` understand, a progress
//! deadline, and — Shoal's addition — automatic rollback to the last good
//! revision when `shoal.dev/auto-rollback: "true"` and the deadline passes.

pub mod revision;
pub mod rollout;
mod sets;
pub mod status;

use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::Api;
use tracing::{debug, info};

use super::informer::{key_of, split_key};
use super::owners::{self, controller_of, Selector};
use super::pods::{self, object_ref};
use super::queue::WorkQueue;
use super::wiring;
use super::{new_queue, Action, ControllerError, Ctx, Reconciler};
use rollout::Old;
use sets::SetWriter;

pub const NAME: &str = "deployment-controller";
pub const AUTO_ROLLBACK: &str = "shoal.dev/auto-rollback";

pub struct DeploymentController {
    ctx: Arc<Ctx>,
}

fn size(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

impl DeploymentController {
    pub fn register(ctx: &Arc<Ctx>) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = new_queue(ctx, NAME);
        wiring::enqueue_self(&ctx.informers.deployments, &queue);
        let q = queue.clone();
        let deployments = Arc::downgrade(&ctx.informers.deployments);
        ctx.informers.replicasets.on_change(move |old, new| {
            for rs in [old, new].into_iter().flatten() {
                let ns = rs.metadata.namespace.as_deref().unwrap_or_default();
                match controller_of(&rs.metadata) {
                    Some(r) if r.kind == "Deployment" => q.add(format!("{ns}/{}", r.name)),
                    Some(_) => {}
                    None => {
                        let Some(ds) = deployments.upgrade() else {
                            continue;
                        };
                        for d in ds.list_namespace(ns) {
                            let selects = d
                                .spec
                                .as_ref()
                                .and_then(|s| Selector::new(&s.selector).ok())
                                .is_some_and(|s| s.matches(rs.metadata.labels.as_ref()));
                            if selects {
                                q.add(key_of(d.as_ref()));
                            }
                        }
                    }
                }
            }
        });
        // Recreate waits for the old pods to be gone: their deletion wakes
        // the Deployment through its ReplicaSet.
        let q = queue.clone();
        let sets = Arc::downgrade(&ctx.informers.replicasets);
        ctx.informers.pods.on_change(move |old, new| {
            let (Some(p), None) = (old, new) else { return };
            let ns = p.metadata.namespace.as_deref().unwrap_or_default();
            let Some(r) = controller_of(&p.metadata).filter(|r| r.kind == "ReplicaSet") else {
                return;
            };
            let Some(sets) = sets.upgrade() else { return };
            if let Some(rs) = sets.get(&format!("{ns}/{}", r.name)) {
                if let Some(d) = controller_of(&rs.metadata).filter(|r| r.kind == "Deployment") {
                    q.add(format!("{ns}/{}", d.name));
                }
            }
        });
        (Arc::new(DeploymentController { ctx: ctx.clone() }), queue)
    }

    /// The Deployment's ReplicaSets after adopting matching orphans and
    /// releasing those that stopped matching.
    async fn claim(
        &self,
        d: &Deployment,
        sel: &Selector,
    ) -> Result<Vec<Arc<ReplicaSet>>, ControllerError> {
        let uid = d.metadata.uid.as_deref().unwrap_or_default();
        let ns = d.metadata.namespace.as_deref().unwrap_or_default();
        let mut owned = Vec::new();
        for rs in self.ctx.informers.replicasets.list_namespace(ns) {
            let matches = sel.matches(rs.metadata.labels.as_ref());
            match controller_of(&rs.metadata) {
                Some(r) if r.uid == uid && matches => owned.push(rs),
                Some(r) if r.uid == uid => {
                    let out = owners::release(&self.ctx.client, rs.as_ref(), uid)
                        .await
                        .map_err(ControllerError::api(format!(
                            "releasing replicaset {}",
                            key_of(rs.as_ref())
                        )))?;
                    self.ctx.informers.replicasets.assume(out);
                }
                None if matches && rs.metadata.deletion_timestamp.is_none() => {
                    let out =
                        owners::adopt(&self.ctx.client, rs.as_ref(), owners::controller_ref(d))
                            .await
                            .map_err(ControllerError::api(format!(
                                "adopting replicaset {}",
                                key_of(rs.as_ref())
                            )))?;
                    let out = Arc::new(out);
                    self.ctx.informers.replicasets.assume((*out).clone());
                    owned.push(out);
                }
                _ => {}
            }
        }
        Ok(owned)
    }

    async fn sync(&self, d: Arc<Deployment>) -> Result<Action, ControllerError> {
        if d.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let key = key_of(d.as_ref());
        let spec = d.spec.clone().unwrap_or_default();
        let sel = Selector::new(&spec.selector).map_err(|message| ControllerError::Invalid {
            object: format!("deployment {key}"),
            message,
        })?;
        let sets = self.claim(&d, &sel).await?;
        let hash = revision::template_hash(
            &spec.template,
            d.status.as_ref().and_then(|s| s.collision_count),
        );
        let new_name = format!("{}-{hash}", d.metadata.name.as_deref().unwrap_or_default());
        let found = revision::find_new(&d, &new_name, &sets);
        let old: Vec<Arc<ReplicaSet>> = sets
            .iter()
            .filter(|rs| {
                found
                    .as_ref()
                    .is_none_or(|n| n.metadata.uid != rs.metadata.uid)
            })
            .cloned()
            .collect();
        let want = spec.replicas.unwrap_or(1);
        let rolling = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) != Some("Recreate");
        let ru = spec
            .strategy
            .as_ref()
            .and_then(|s| s.rolling_update.clone())
            .unwrap_or_default();
        let (surge, max_unavailable) = if rolling {
            rollout::fenceposts(want, ru.max_surge.as_ref(), ru.max_unavailable.as_ref())
        } else {
            (0, want)
        };
        let w = SetWriter {
            ctx: &self.ctx,
            d: &d,
        };
        let max_old = revision::max_revision(&old);
        let mut created_new = false;
        let new = match found {
            _ if spec.paused == Some(true) => {
                self.scale_paused(&w, found.as_ref(), &old, want, surge)
                    .await?;
                found
            }
            Some(n) => {
                // A rollback makes an old revision current again: it takes
                // the next revision number, as in Kubernetes.
                let rev = match revision::revision_of(&n) {
                    r if r > max_old => r,
                    _ => max_old + 1,
                };
                let ann = revision::annotations_for(
                    &d,
                    n.metadata.annotations.as_ref(),
                    rev,
                    want,
                    want + surge,
                );
                Some(w.annotate(&n, ann).await?)
            }
            None => {
                let all: i32 = old.iter().map(|r| size(r)).sum();
                let first = if rolling {
                    rollout::new_replicas(want, surge, all, 0)
                } else {
                    0
                };
                created_new = true;
                Some(w.create(&hash, max_old + 1, first, want + surge).await?)
            }
        };
        if spec.paused != Some(true) {
            if let Some(n) = &new {
                if rolling {
                    self.roll(&w, n, &old, want, surge, max_unavailable).await?;
                } else {
                    self.recreate(&w, n, &old, want).await?;
                }
            }
        }
        self.finish(&d, new, old, created_new, max_unavailable)
            .await
    }

    /// While paused only the size follows `replicas`: the active
    /// ReplicaSet (or the current one, if none is active) is resized.
    async fn scale_paused(
        &self,
        w: &SetWriter<'_>,
        new: Option<&Arc<ReplicaSet>>,
        old: &[Arc<ReplicaSet>],
        want: i32,
        surge: i32,
    ) -> Result<(), ControllerError> {
        let active: Vec<&Arc<ReplicaSet>> = new
            .into_iter()
            .chain(old.iter())
            .filter(|r| size(r) > 0)
            .collect();
        let target = match active.as_slice() {
            [one] => Some(*one),
            [] => new,
            _ => None,
        };
        if let Some(rs) = target.filter(|r| size(r) != want) {
            w.scale(rs, want, want + surge).await?;
        }
        Ok(())
    }

    async fn roll(
        &self,
        w: &SetWriter<'_>,
        new: &Arc<ReplicaSet>,
        old: &[Arc<ReplicaSet>],
        want: i32,
        surge: i32,
        max_unavailable: i32,
    ) -> Result<(), ControllerError> {
        let all: i32 = size(new) + old.iter().map(|r| size(r)).sum::<i32>();
        let target = rollout::new_replicas(want, surge, all, size(new));
        if target != size(new) {
            w.scale(new, target, want + surge).await?;
            // Kubernetes moves one side per pass; the ReplicaSet's status
            // change brings the next.
            return Ok(());
        }
        let mut ordered: Vec<&Arc<ReplicaSet>> = old.iter().collect();
        ordered.sort_by_key(|r| revision::revision_of(r));
        let view: Vec<Old> = ordered
            .iter()
            .map(|r| Old {
                size: size(r),
                available: available(r),
            })
            .collect();
        let sizes =
            rollout::scale_down_old(want, max_unavailable, size(new), available(new), &view);
        for (rs, to) in ordered.iter().zip(sizes) {
            if to != size(rs) {
                w.scale(rs, to, want + surge).await?;
            }
        }
        Ok(())
    }

    /// Recreate: every old pod gone before the new ReplicaSet grows.
    async fn recreate(
        &self,
        w: &SetWriter<'_>,
        new: &Arc<ReplicaSet>,
        old: &[Arc<ReplicaSet>],
        want: i32,
    ) -> Result<(), ControllerError> {
        let mut scaled_down = false;
        for rs in old.iter().filter(|r| size(r) > 0) {
            w.scale(rs, 0, want).await?;
            scaled_down = true;
        }
        if scaled_down {
            return Ok(());
        }
        let ns = new.metadata.namespace.as_deref().unwrap_or_default();
        let old_uids: Vec<&str> = old
            .iter()
            .filter_map(|r| r.metadata.uid.as_deref())
            .collect();
        let old_pods_left = self.ctx.informers.pods.list_namespace(ns).iter().any(|p| {
            !pods::is_terminal(p)
                && controller_of(&p.metadata).is_some_and(|r| old_uids.contains(&r.uid.as_str()))
        });
        if !old_pods_left && size(new) != want {
            w.scale(new, want, want).await?;
        }
        Ok(())
    }

    /// Status, history cleanup, the rolled-out mark and auto-rollback.
    async fn finish(
        &self,
        d: &Deployment,
        new: Option<Arc<ReplicaSet>>,
        old: Vec<Arc<ReplicaSet>>,
        created_new: bool,
        max_unavailable: i32,
    ) -> Result<Action, ControllerError> {
        let o = status::Observed {
            d,
            new: new.as_deref(),
            old: &old,
            created_new,
            max_unavailable,
        };
        let (st, wake) = status::compute(&o, Timestamp::now());
        let w = SetWriter { ctx: &self.ctx, d };
        if status::is_complete(&st) {
            if let Some(n) = &new {
                let mark = [(revision::ROLLED_OUT.to_string(), "true".to_string())].into();
                w.annotate(n, mark).await?;
            }
            let limit = d
                .spec
                .as_ref()
                .and_then(|s| s.revision_history_limit)
                .unwrap_or(10);
            for rs in revision::beyond_history(&old, limit) {
                w.delete(&rs).await?;
            }
        }
        let exceeded_now = status::deadline_exceeded(&st)
            && !d.status.as_ref().is_some_and(status::deadline_exceeded);
        if d.status.as_ref() != Some(&st) {
            self.write_status(d, &st).await?;
        }
        if exceeded_now {
            self.ctx.events.warning(
                &object_ref(d),
                "ProgressDeadlineExceeded",
                format!("Deployment {} has timed out progressing", key_of(d)),
            );
        }
        if status::deadline_exceeded(&st) && wants_auto_rollback(d) {
            self.auto_rollback(d, &old).await?;
        }
        Ok(wake.map_or(Action::AwaitChange, Action::Requeue))
    }

    async fn write_status(
        &self,
        d: &Deployment,
        st: &k8s_openapi::api::apps::v1::DeploymentStatus,
    ) -> Result<(), ControllerError> {
        wiring::write_status(&self.ctx, &self.ctx.informers.deployments, d, st).await
    }

    /// Puts the last revision that rolled out completely back in place, as
    /// `kubectl rollout undo` would.
    async fn auto_rollback(
        &self,
        d: &Deployment,
        old: &[Arc<ReplicaSet>],
    ) -> Result<(), ControllerError> {
        let Some(good) = revision::last_good(old) else {
            debug!(deployment = %key_of(d), "deadline exceeded but no earlier revision rolled out; nothing to roll back to");
            return Ok(());
        };
        let template = revision::template_without_hash(&good);
        if Some(&template) == d.spec.as_ref().map(|s| &s.template) {
            return Ok(());
        }
        let key = key_of(d);
        let (ns, name) = split_key(&key);
        let api: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), ns);
        // An update from the revision we decided on: if the Deployment
        // changed meanwhile, the conflict sends us round again.
        let mut next = d.clone();
        if let Some(spec) = next.spec.as_mut() {
            spec.template = template;
        }
        next.status = None;
        let out = api
            .replace(name, &PostParams::default(), &next)
            .await
            .map_err(ControllerError::api(format!(
                "rolling back deployment {key}"
            )))?;
        let rev = revision::revision_of(&good);
        info!(deployment = %key, revision = rev, "progress deadline exceeded; rolled back");
        self.ctx.events.normal(
            &object_ref(d),
            "DeploymentRollback",
            format!("Rolled back deployment \"{name}\" to revision {rev} after its progress deadline passed"),
        );
        self.ctx.informers.deployments.assume(out);
        Ok(())
    }
}

fn wants_auto_rollback(d: &Deployment) -> bool {
    d.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(AUTO_ROLLBACK))
        .is_some_and(|v| v == "true")
}

#[async_trait]
impl Reconciler for DeploymentController {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError> {
        match self.ctx.informers.deployments.get(key) {
            Some(d) => self.sync(d).await,
            None => Ok(Action::AwaitChange),
        }
    }
}
