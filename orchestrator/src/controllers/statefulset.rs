//! The StatefulSet controller: pods with stable names `name-0..N-1`,
//! created in order (each after the one before is Ready) under
//! `OrderedReady` or all at once under `Parallel`, removed from the highest
//! ordinal down, and updated from the highest ordinal down to `partition`,
//! one pod at a time. Each pod's claims from `volumeClaimTemplates` are
//! made before it (see `statefulset_volumes`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, PodTemplateSpec};
use kube::api::{Api, DeleteParams, PostParams};
use tracing::debug;

use super::deployment::revision::template_hash;
use super::history::{self, HASH_LABEL};
use super::informer::key_of;
use super::owners::{self, Selector};
use super::pods::{self, object_ref, PodControl};
use super::queue::WorkQueue;
use super::statefulset_handoff::Handoffs;
use super::statefulset_volumes as claims;
use super::wiring;
use super::{api_code, new_queue, Action, ControllerError, Ctx, Reconciler};

pub const NAME: &str = "statefulset-controller";
const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

pub struct StatefulSetController {
    ctx: Arc<Ctx>,
    pods: PodControl,
    handoffs: Arc<Handoffs>,
}

fn ordinal(set: &str, pod: &Pod) -> Option<i32> {
    pod.metadata
        .name
        .as_deref()?
        .strip_prefix(set)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

fn running_ready(p: &Pod) -> bool {
    pods::is_active(p)
        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && pods::is_ready(p)
}

/// What one pass decided to do.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub create: Vec<i32>,
    pub delete: Vec<i32>,
}

/// The next steps for `pods` (by ordinal), pure. `ordered` is
/// `OrderedReady`; `update` is the ordinal floor of a rolling update
/// (`partition`), None for `OnDelete`. The ordinals in `held` are missing
/// but may not be made yet (see `statefulset_handoff`).
pub fn plan(
    pods: &BTreeMap<i32, Arc<Pod>>,
    replicas: i32,
    ordered: bool,
    revision: &str,
    update: Option<i32>,
    held: &BTreeSet<i32>,
) -> Plan {
    let mut out = Plan::default();
    // Failed pods are replaced under the same name.
    for (i, p) in pods {
        if *i < replicas
            && p.metadata.deletion_timestamp.is_none()
            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
        {
            out.delete.push(*i);
            if ordered {
                return out;
            }
        }
    }
    for i in 0..replicas {
        match pods.get(&i) {
            None if held.contains(&i) => {
                if ordered {
                    return out;
                }
            }
            None => {
                out.create.push(i);
                if ordered {
                    return out;
                }
            }
            Some(p) if ordered && !running_ready(p) => return out,
            Some(_) => {}
        }
    }
    let extra: Vec<i32> = pods
        .keys()
        .copied()
        .filter(|i| *i >= replicas)
        .rev()
        .collect();
    if !extra.is_empty() {
        if ordered {
            // One at a time, highest first, once every other pod is ready.
            let settled = pods
                .values()
                .all(|p| p.metadata.deletion_timestamp.is_none() && running_ready(p));
            if settled {
                out.delete.push(extra[0]);
            }
        } else {
            out.delete.extend(extra.iter().filter(|i| {
                pods.get(i)
                    .is_some_and(|p| p.metadata.deletion_timestamp.is_none())
            }));
        }
        return out;
    }
    // A rolling update replaces one pod at a time, highest ordinal first,
    // and only while all are running and ready.
    if let Some(floor) = update {
        let all_ready = (0..replicas).all(|i| pods.get(&i).is_some_and(|p| running_ready(p)));
        if all_ready {
            if let Some(i) = (floor.max(0)..replicas)
                .rev()
                .find(|i| pods.get(i).and_then(|p| history::pod_hash(p)) != Some(revision))
            {
                out.delete.push(i);
            }
        }
    }
    out
}

impl StatefulSetController {
    pub fn register(ctx: &Arc<Ctx>) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = new_queue(ctx, NAME);
        wiring::enqueue_self(&ctx.informers.statefulsets, &queue);
        // Before the queue hears of a pod leaving, so a pass it starts
        // already knows the name is held.
        let handoffs = Arc::new(Handoffs::default());
        let h = handoffs.clone();
        ctx.informers
            .pods
            .on_change(move |old, new| h.observe(old, new, Instant::now()));
        wiring::enqueue_controller(&ctx.informers.pods, &queue, "StatefulSet");
        let pods = PodControl::new(ctx);
        (
            Arc::new(StatefulSetController {
                ctx: ctx.clone(),
                pods,
                handoffs,
            }),
            queue,
        )
    }

    fn owned(&self, sts: &StatefulSet, sel: &Selector) -> BTreeMap<i32, Arc<Pod>> {
        let uid = sts.metadata.uid.as_deref().unwrap_or_default();
        let ns = sts.metadata.namespace.as_deref().unwrap_or_default();
        let name = sts.metadata.name.as_deref().unwrap_or_default();
        self.ctx
            .informers
            .pods
            .list_controlled_by(uid)
            .into_iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(ns)
                    && sel.matches(p.metadata.labels.as_ref())
            })
            .filter_map(|p| Some((ordinal(name, &p)?, p)))
            .collect()
    }

    /// Pod `i` from `template`, the template of revision `hash`.
    fn pod(&self, sts: &StatefulSet, i: i32, template: &PodTemplateSpec, hash: &str) -> Pod {
        let spec = sts.spec.clone().unwrap_or_default();
        let ns = sts.metadata.namespace.as_deref().unwrap_or("default");
        let set = sts.metadata.name.as_deref().unwrap_or_default();
        let name = format!("{set}-{i}");
        let mut p = pods::from_template(
            template,
            owners::controller_ref(sts),
            ns,
            "",
            Some(name.clone()),
        );
        p.metadata.generate_name = None;
        let labels = p.metadata.labels.get_or_insert_with(BTreeMap::new);
        labels.insert(HASH_LABEL.into(), hash.into());
        labels.insert(POD_NAME_LABEL.into(), name.clone());
        labels.insert(POD_INDEX_LABEL.into(), i.to_string());
        if let Some(s) = p.spec.as_mut() {
            claims::mount_claims(s, sts, i);
            s.hostname = Some(name);
            if !spec.service_name.clone().unwrap_or_default().is_empty() {
                s.subdomain = spec.service_name.clone();
            }
        }
        p
    }

    async fn sync(&self, sts: Arc<StatefulSet>) -> Result<Action, ControllerError> {
        if sts.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let key = key_of(sts.as_ref());
        let spec = sts.spec.clone().unwrap_or_default();
        let sel = Selector::new(&spec.selector).map_err(|message| ControllerError::Invalid {
            object: format!("statefulset {key}"),
            message,
        })?;
        let status = sts.status.clone().unwrap_or_default();
        let hash = template_hash(&spec.template, status.collision_count);
        let set = sts.metadata.name.as_deref().unwrap_or_default();
        let ns = sts.metadata.namespace.as_deref().unwrap_or_default();
        let owner_history = history::Owner {
            namespace: ns,
            name: set,
            uid: sts.metadata.uid.as_deref().unwrap_or_default(),
            controller_ref: owners::controller_ref(sts.as_ref()),
            template: &spec.template,
            hash: &hash,
            collision_count: status.collision_count,
        };
        if !history::record(
            &self.ctx,
            &self.ctx.informers.statefulsets,
            &sts,
            &owner_history,
        )
        .await?
        {
            return Ok(Action::AwaitChange);
        }
        let pods = self.owned(&sts, &sel);
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let ordered = spec.pod_management_policy.as_deref() != Some("Parallel");
        let strategy = spec.update_strategy.clone().unwrap_or_default();
        let update = match strategy.type_.as_deref() {
            Some("OnDelete") => None,
            _ => Some(
                strategy
                    .rolling_update
                    .as_ref()
                    .and_then(|r| r.partition)
                    .unwrap_or(0),
            ),
        };
        let now = Instant::now();
        let waits: Vec<(i32, std::time::Duration)> = (0..replicas)
            .filter(|i| !pods.contains_key(i))
            .filter_map(|i| Some((i, self.handoffs.held(&format!("{ns}/{set}-{i}"), now)?)))
            .collect();
        let held: BTreeSet<i32> = waits.iter().map(|(i, _)| *i).collect();
        let p = plan(&pods, replicas, ordered, &hash, update, &held);
        debug!(statefulset = %key, ?p, "plan");
        let owner = object_ref(sts.as_ref());
        // As in Kubernetes, a pod (re)created below the partition (or,
        // without one, below the pods still current) gets the current
        // revision's template: the update has not reached it yet.
        let current_name = status
            .current_revision
            .clone()
            .unwrap_or_else(|| history::revision_name(set, &hash));
        let current_hash = current_name
            .strip_prefix(&format!("{set}-"))
            .unwrap_or_default()
            .to_string();
        let current_template = (current_hash != hash)
            .then(|| {
                history::revisions(&self.ctx, &owner_history)
                    .into_iter()
                    .find(|r| r.metadata.name.as_deref() == Some(current_name.as_str()))
                    .and_then(|r| history::template_of(&r))
            })
            .flatten();
        let below_update = |i: i32| match strategy.type_.as_deref() {
            Some("OnDelete") => false,
            _ => match strategy.rolling_update.as_ref().and_then(|r| r.partition) {
                Some(partition) => i < partition,
                None => i < status.current_replicas.unwrap_or(0),
            },
        };
        let fresh: Vec<Pod> = p
            .create
            .iter()
            .map(|i| match &current_template {
                Some(t) if below_update(*i) => self.pod(&sts, *i, t, &current_hash),
                _ => self.pod(&sts, *i, &spec.template, &hash),
            })
            .collect();
        for i in &p.create {
            self.make_claims(&sts, *i).await?;
        }
        let (_, err) = self.pods.create_all(&owner, fresh).await;
        // A name still held by a pod on its way out: the next pass retries.
        let err = err.filter(
            |e| !matches!(e, ControllerError::Api { source, .. } if api_code(source) == Some(409)),
        );
        for i in &p.delete {
            if let Some(pod) = pods.get(i) {
                self.handoffs.deleting(pod);
                self.pods.delete(&owner, pod).await?;
            }
        }
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.ctx.client.clone(), ns);
        let existing = self.ctx.informers.claims.list_namespace(ns);
        let away = claims::scaled_away(&sts, replicas, existing.iter().map(|c| c.as_ref()), |i| {
            pods.contains_key(&i)
        });
        for name in away {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => debug!(statefulset = %key, claim = %name, "scaled down; claim deleted"),
                Err(e) if api_code(&e) == Some(404) => {}
                Err(e) => {
                    return Err(ControllerError::Api {
                        action: format!("deleting claim {ns}/{name}"),
                        source: e,
                    })
                }
            }
        }
        self.write_status(&sts, &sel, &hash).await?;
        // The status just written names the current revision or the
        // update, both kept already; pods made or deleted this pass run the
        // current or the update revision too.
        history::prune(
            &self.ctx,
            &owner_history,
            pods.values(),
            [status.current_revision, status.update_revision]
                .into_iter()
                .flatten(),
            spec.revision_history_limit,
        )
        .await?;
        match (err, waits.iter().map(|(_, d)| *d).min()) {
            (Some(e), _) => Err(e),
            (None, Some(wait)) => Ok(Action::Requeue(wait)),
            (None, None) => Ok(Action::AwaitChange),
        }
    }

    /// Makes pod `i`'s claims that do not exist yet. One still being
    /// deleted (a scale-down's) must go first: the pod would lose it.
    async fn make_claims(&self, sts: &StatefulSet, i: i32) -> Result<(), ControllerError> {
        let ns = sts.metadata.namespace.as_deref().unwrap_or_default();
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.ctx.client.clone(), ns);
        for claim in claims::claims_for(sts, i, &owners::controller_ref(sts)) {
            let name = claim.metadata.name.clone().unwrap_or_default();
            match self.ctx.informers.claims.get(&format!("{ns}/{name}")) {
                Some(c) if c.metadata.deletion_timestamp.is_some() => {
                    return Err(ControllerError::Invalid {
                        object: format!("persistentvolumeclaim {ns}/{name}"),
                        message: "is being deleted; pod waits for it to go".into(),
                    })
                }
                Some(_) => continue,
                None => {}
            }
            match api.create(&PostParams::default(), &claim).await {
                Ok(made) => {
                    self.ctx.informers.claims.assume(made);
                    self.ctx.events.normal(
                        &object_ref(sts),
                        "SuccessfulCreate",
                        format!(
                            "create Claim {name} Pod {}-{i} in StatefulSet {} success",
                            sts.metadata.name.as_deref().unwrap_or_default(),
                            sts.metadata.name.as_deref().unwrap_or_default()
                        ),
                    );
                }
                Err(e) if api_code(&e) == Some(409) => {}
                Err(e) => {
                    self.ctx.events.warning(
                        &object_ref(sts),
                        "FailedCreate",
                        format!(
                            "create Claim {name} for Pod {}-{i} failed: {e}",
                            sts.metadata.name.as_deref().unwrap_or_default()
                        ),
                    );
                    return Err(ControllerError::Api {
                        action: format!("creating claim {ns}/{name}"),
                        source: e,
                    });
                }
            }
        }
        Ok(())
    }

    async fn write_status(
        &self,
        sts: &StatefulSet,
        sel: &Selector,
        hash: &str,
    ) -> Result<(), ControllerError> {
        let pods = self.owned(sts, sel);
        let name = sts.metadata.name.as_deref().unwrap_or_default();
        let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let min_ready = sts
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0);
        let now = k8s_openapi::jiff::Timestamp::now();
        let live: Vec<&Arc<Pod>> = pods.values().filter(|p| pods::is_active(p)).collect();
        let update_revision = format!("{name}-{hash}");
        let updated = live
            .iter()
            .filter(|p| history::pod_hash(p) == Some(hash))
            .count() as i32;
        let prev = sts.status.clone().unwrap_or_default();
        // The current revision catches up once every pod runs the update.
        let current_revision = if updated == replicas && live.len() as i32 == replicas {
            update_revision.clone()
        } else {
            prev.current_revision
                .clone()
                .unwrap_or_else(|| update_revision.clone())
        };
        let current_hash = current_revision
            .strip_prefix(&format!("{name}-"))
            .unwrap_or_default()
            .to_string();
        let st = StatefulSetStatus {
            observed_generation: sts.metadata.generation,
            replicas: live.len() as i32,
            ready_replicas: Some(live.iter().filter(|p| pods::is_ready(p)).count() as i32),
            available_replicas: Some(
                live.iter()
                    .filter(|p| pods::availability(p, min_ready, now).0)
                    .count() as i32,
            ),
            current_replicas: Some(
                live.iter()
                    .filter(|p| history::pod_hash(p) == Some(current_hash.as_str()))
                    .count() as i32,
            ),
            updated_replicas: Some(updated),
            current_revision: Some(current_revision),
            update_revision: Some(update_revision),
            collision_count: prev.collision_count,
            conditions: prev.conditions.clone(),
        };
        if sts.status.as_ref() == Some(&st) {
            return Ok(());
        }
        wiring::write_status(&self.ctx, &self.ctx.informers.statefulsets, sts, &st).await
    }
}

#[async_trait]
impl Reconciler for StatefulSetController {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError> {
        match self.ctx.informers.statefulsets.get(key) {
            Some(s) => self.sync(s).await,
            None => Ok(Action::AwaitChange),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(i: i32, ready: bool, rev: &str) -> (i32, Arc<Pod>) {
        let p = Pod {
            metadata: ObjectMeta {
                name: Some(format!("db-{i}")),
                labels: Some([(HASH_LABEL.to_string(), rev.to_string())].into()),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        };
        (i, Arc::new(p))
    }

    #[test]
    fn ordered_creation_waits_for_each_pod() {
        let none_held = BTreeSet::new();
        let none = BTreeMap::new();
        assert_eq!(
            plan(&none, 3, true, "a", Some(0), &none_held).create,
            vec![0]
        );
        let one_not_ready: BTreeMap<_, _> = [pod(0, false, "a")].into();
        assert_eq!(
            plan(&one_not_ready, 3, true, "a", Some(0), &none_held),
            Plan::default()
        );
        let one_ready: BTreeMap<_, _> = [pod(0, true, "a")].into();
        assert_eq!(
            plan(&one_ready, 3, true, "a", Some(0), &none_held).create,
            vec![1]
        );
        assert_eq!(
            plan(&none, 3, false, "a", Some(0), &none_held).create,
            vec![0, 1, 2]
        );
    }

    #[test]
    fn scale_down_goes_from_the_top_and_updates_respect_the_partition() {
        let none_held = BTreeSet::new();
        let three: BTreeMap<_, _> =
            [pod(0, true, "a"), pod(1, true, "a"), pod(2, true, "a")].into();
        assert_eq!(
            plan(&three, 1, true, "a", Some(0), &none_held).delete,
            vec![2]
        );
        assert_eq!(
            plan(&three, 1, false, "a", Some(0), &none_held).delete,
            vec![2, 1]
        );
        assert_eq!(
            plan(&three, 3, true, "b", Some(0), &none_held).delete,
            vec![2]
        );
        assert_eq!(
            plan(&three, 3, true, "b", Some(3), &none_held).delete,
            Vec::<i32>::new()
        );
        let mixed: BTreeMap<_, _> =
            [pod(0, true, "a"), pod(1, true, "b"), pod(2, true, "b")].into();
        assert_eq!(
            plan(&mixed, 3, true, "b", Some(1), &none_held).delete,
            Vec::<i32>::new()
        );
        assert_eq!(
            plan(&mixed, 3, true, "b", None, &none_held).delete,
            Vec::<i32>::new()
        );
    }

    #[test]
    fn a_held_name_is_skipped_and_stops_an_ordered_set() {
        let held: BTreeSet<i32> = [1].into();
        let first: BTreeMap<_, _> = [pod(0, true, "a")].into();
        assert_eq!(plan(&first, 3, true, "a", Some(0), &held), Plan::default());
        assert_eq!(plan(&first, 3, false, "a", Some(0), &held).create, vec![2]);
    }
}
