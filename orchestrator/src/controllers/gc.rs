//! The garbage collector: owner references decide lifetimes.
//! - Background: a dependent whose owners are all gone is deleted (and its
//!   own dependents after it).
//! - Foreground: an owner being deleted with the `foregroundDeletion`
//!   finalizer waits until its blocking dependents are gone, then the
//!   finalizer comes off and the owner goes.
//! - Orphan: an owner with the `orphan` finalizer has its references
//!   removed from every dependent, then the finalizer comes off.
//!
//! It tracks the kinds the controllers create (pods, ReplicaSets,
//! Deployments, Jobs, CronJobs, DaemonSets, StatefulSets, and the claims of
//! StatefulSets and ephemeral volumes) from the shared
//! caches; owners of other kinds are looked up through the API.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{debug, info};

use super::informer::{key_of, split_key, Informer};
use super::queue::WorkQueue;
use super::{api_code, new_queue, Action, ControllerError, Ctx, Reconciler};

pub const NAME: &str = "garbage-collector";
const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";

type MetaOf = Box<dyn Fn(&str) -> Option<ObjectMeta> + Send + Sync>;

/// One kind the collector reads from a shared cache.
struct Tracked {
    resource: ApiResource,
    get: MetaOf,
}

fn tracked<K>(inf: &Arc<Informer<K>>) -> Tracked
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let inf = inf.clone();
    Tracked {
        resource: ApiResource::erase::<K>(&()),
        get: Box::new(move |key| inf.get(key).map(|o| o.meta().clone())),
    }
}

pub struct GarbageCollector {
    ctx: Arc<Ctx>,
    kinds: HashMap<String, Tracked>,
    index: OwnerIndex,
}

fn has_owners(m: &ObjectMeta) -> bool {
    m.owner_references.as_ref().is_some_and(|r| !r.is_empty())
}

fn gc_finalizer(m: &ObjectMeta) -> bool {
    m.deletion_timestamp.is_some()
        && m.finalizers
            .iter()
            .flatten()
            .any(|f| f == FOREGROUND || f == ORPHAN)
}

fn meta_key(m: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default()
    )
}

/// Queue keys: `Kind|ns/name` for a dependent to check, `owner:Kind|ns/name`
/// for an owner with a GC finalizer.
fn dependent_key(kind: &str, key: &str) -> String {
    format!("{kind}|{key}")
}

fn owner_key(kind: &str, key: &str) -> String {
    format!("owner:{kind}|{key}")
}

/// Owner uid → the dependents (queue keys) referring to it, kept from
/// the caches' change events so a deletion finds its dependents without
/// scanning every object.
type OwnerIndex = Arc<Mutex<HashMap<String, HashSet<String>>>>;

fn owner_uids(m: &ObjectMeta) -> HashSet<String> {
    m.owner_references
        .iter()
        .flatten()
        .map(|r| r.uid.clone())
        .collect()
}

/// Feeds the queue from one kind's cache: objects with owners are checked
/// as dependents; owners with a GC finalizer are finalized; a deletion
/// brings the dependents it may have orphaned and the owners that may be
/// waiting for it.
fn watch<K>(inf: &Arc<Informer<K>>, queue: &Arc<WorkQueue>, index: OwnerIndex)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let q = queue.clone();
    let kind = K::kind(&()).into_owned();
    inf.on_change(move |old, new| {
        let Some(obj) = new.or(old) else { return };
        // Most changes (status, a pod becoming ready) leave the owners
        // alone; only a change of owners makes a dependent worth a look.
        let owners_changed = old.and_then(|o| o.meta().owner_references.as_ref())
            != new.and_then(|o| o.meta().owner_references.as_ref());
        if !owners_changed && new.is_some() && !new.is_some_and(|o| gc_finalizer(o.meta())) {
            return;
        }
        let me = dependent_key(&kind, &key_of(obj));
        let before = old.map(|o| owner_uids(o.meta())).unwrap_or_default();
        let after = new.map(|o| owner_uids(o.meta())).unwrap_or_default();
        if before != after {
            if let Ok(mut ix) = index.lock() {
                for u in before.difference(&after) {
                    if let Some(set) = ix.get_mut(u) {
                        set.remove(&me);
                        if set.is_empty() {
                            ix.remove(u);
                        }
                    }
                }
                for u in after.difference(&before) {
                    ix.entry(u.clone()).or_default().insert(me.clone());
                }
            }
        }
        if let Some(o) = new {
            let m = o.meta();
            if has_owners(m) && owners_changed {
                q.add(me.clone());
            }
            if gc_finalizer(m) {
                q.add(owner_key(&kind, &key_of(o)));
            }
        }
        if let (Some(o), None) = (old, new) {
            let m = o.meta();
            let ns = m.namespace.as_deref().unwrap_or_default();
            let dependents = m
                .uid
                .as_deref()
                .and_then(|u| index.lock().ok()?.get(u).cloned())
                .unwrap_or_default();
            for d in dependents {
                q.add(d);
            }
            for r in m.owner_references.iter().flatten() {
                q.add(owner_key(&r.kind, &format!("{ns}/{}", r.name)));
            }
        }
    });
}

impl GarbageCollector {
    pub fn register(ctx: &Arc<Ctx>) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = new_queue(ctx, NAME);
        let i = &ctx.informers;
        let list: Vec<Tracked> = vec![
            tracked(&i.pods),
            tracked(&i.replicasets),
            tracked(&i.deployments),
            tracked(&i.jobs),
            tracked(&i.cronjobs),
            tracked(&i.daemonsets),
            tracked(&i.statefulsets),
            tracked(&i.claims),
        ];
        let index: OwnerIndex = Arc::default();
        watch(&i.pods, &queue, index.clone());
        watch(&i.replicasets, &queue, index.clone());
        watch(&i.deployments, &queue, index.clone());
        watch(&i.jobs, &queue, index.clone());
        watch(&i.cronjobs, &queue, index.clone());
        watch(&i.daemonsets, &queue, index.clone());
        watch(&i.statefulsets, &queue, index.clone());
        watch(&i.claims, &queue, index.clone());
        let kinds = list
            .into_iter()
            .map(|t| (t.resource.kind.clone(), t))
            .collect();
        (
            Arc::new(GarbageCollector {
                ctx: ctx.clone(),
                kinds,
                index,
            }),
            queue,
        )
    }

    fn api(&self, ar: &ApiResource, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.ctx.client.clone(), ns, ar)
    }

    /// Every tracked object with a reference to `uid`.
    fn dependents(&self, uid: &str) -> Vec<(&Tracked, ObjectMeta)> {
        let keys = self
            .index
            .lock()
            .ok()
            .and_then(|ix| ix.get(uid).cloned())
            .unwrap_or_default();
        keys.iter()
            .filter_map(|k| {
                let (kind, key) = k.split_once('|')?;
                let t = self.kinds.get(kind)?;
                Some((t, (t.get)(key)?))
            })
            .collect()
    }

    /// Does the owner a reference names still exist (same uid)? The cache
    /// can say yes; only the API can say no, since a cache may simply not
    /// have seen a new owner yet.
    async fn owner_exists(&self, ns: &str, r: &OwnerReference) -> Result<bool, ControllerError> {
        let key = format!("{ns}/{}", r.name);
        if let Some(t) = self.kinds.get(&r.kind) {
            if (t.get)(&key).is_some_and(|m| m.uid.as_deref() == Some(r.uid.as_str())) {
                return Ok(true);
            }
        }
        let ar = match self.kinds.get(&r.kind) {
            Some(t) => t.resource.clone(),
            None => resource_of(r),
        };
        match self.api(&ar, ns).get(&r.name).await {
            Ok(o) => Ok(o.metadata.uid.as_deref() == Some(r.uid.as_str())),
            Err(e) if matches!(api_code(&e), Some(404)) => Ok(false),
            Err(e) => Err(ControllerError::Api {
                action: format!("looking up owner {} {key}", r.kind),
                source: e,
            }),
        }
    }

    /// A dependent: deleted once all its owners are gone.
    async fn collect(&self, t: &Tracked, key: &str) -> Result<Action, ControllerError> {
        let Some(m) = (t.get)(key) else {
            return Ok(Action::AwaitChange);
        };
        if m.deletion_timestamp.is_some() || !has_owners(&m) {
            return Ok(Action::AwaitChange);
        }
        let (ns, name) = split_key(key);
        if self.any_owner_exists(ns, &m).await? {
            return Ok(Action::AwaitChange);
        }
        // The cache may lag the API: each kind has its own watch, so an
        // owner's deletion can arrive before the dependent's release by
        // that same owner (orphan propagation). Decide on the live object
        // and delete only that version of it.
        let live = match self.api(&t.resource, ns).get(name).await {
            Ok(o) => o.metadata,
            Err(e) if api_code(&e) == Some(404) => return Ok(Action::AwaitChange),
            Err(e) => {
                return Err(ControllerError::Api {
                    action: format!("reading {} {key}", t.resource.kind),
                    source: e,
                })
            }
        };
        if live.uid != m.uid
            || live.deletion_timestamp.is_some()
            || !has_owners(&live)
            || self.any_owner_exists(ns, &live).await?
        {
            return Ok(Action::AwaitChange);
        }
        info!(kind = %t.resource.kind, object = key, "all owners gone; deleting");
        match self
            .delete(t, &live, PropagationPolicy::Background, true)
            .await?
        {
            Deleted::Yes => Ok(Action::AwaitChange),
            // Most changes do not requeue a dependent (see `watch`), so
            // look again rather than wait for one.
            Deleted::Changed => Ok(Action::Requeue(Duration::from_millis(100))),
        }
    }

    async fn any_owner_exists(&self, ns: &str, m: &ObjectMeta) -> Result<bool, ControllerError> {
        for r in m.owner_references.iter().flatten() {
            if self.owner_exists(ns, r).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// An owner being deleted with a GC finalizer.
    async fn finalize(&self, t: &Tracked, key: &str) -> Result<Action, ControllerError> {
        let Some(m) = (t.get)(key) else {
            return Ok(Action::AwaitChange);
        };
        if !gc_finalizer(&m) {
            return Ok(Action::AwaitChange);
        }
        let uid = m.uid.clone().unwrap_or_default();
        let deps = self.dependents(&uid);
        if m.finalizers.iter().flatten().any(|f| f == ORPHAN) {
            for (dt, dm) in &deps {
                self.release(dt, dm, &uid).await?;
            }
            return self.drop_finalizer(t, &m, ORPHAN).await;
        }
        let blocking: Vec<&(&Tracked, ObjectMeta)> = deps
            .iter()
            .filter(|(_, dm)| {
                dm.owner_references
                    .iter()
                    .flatten()
                    .any(|r| r.uid == uid && r.block_owner_deletion == Some(true))
            })
            .collect();
        if blocking.is_empty() {
            return self.drop_finalizer(t, &m, FOREGROUND).await;
        }
        for (dt, dm) in &blocking {
            if dm.deletion_timestamp.is_none() {
                self.delete(dt, dm, PropagationPolicy::Foreground, false)
                    .await?;
            }
        }
        debug!(
            object = key,
            waiting = blocking.len(),
            "foreground deletion waits for dependents"
        );
        // Dependents' deletions wake us; the requeue covers a missed one.
        Ok(Action::Requeue(Duration::from_secs(5)))
    }

    async fn delete(
        &self,
        t: &Tracked,
        m: &ObjectMeta,
        policy: PropagationPolicy,
        exact_version: bool,
    ) -> Result<Deleted, ControllerError> {
        let dp = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(Preconditions {
                uid: m.uid.clone(),
                resource_version: m.resource_version.clone().filter(|_| exact_version),
            }),
            ..DeleteParams::default()
        };
        let ns = m.namespace.as_deref().unwrap_or_default();
        let name = m.name.as_deref().unwrap_or_default();
        match self.api(&t.resource, ns).delete(name, &dp).await {
            Ok(_) => Ok(Deleted::Yes),
            Err(e) if api_code(&e) == Some(404) => Ok(Deleted::Yes),
            Err(e) if api_code(&e) == Some(409) => Ok(Deleted::Changed),
            Err(e) => Err(ControllerError::Api {
                action: format!("deleting {} {}", t.resource.kind, meta_key(m)),
                source: e,
            }),
        }
    }

    async fn release(
        &self,
        t: &Tracked,
        m: &ObjectMeta,
        owner_uid: &str,
    ) -> Result<(), ControllerError> {
        let refs: Vec<&OwnerReference> = m
            .owner_references
            .iter()
            .flatten()
            .filter(|r| r.uid != owner_uid)
            .collect();
        self.patch_meta(
            t,
            m,
            json!({"metadata": {"uid": m.uid, "ownerReferences": refs}}),
            "orphaning",
        )
        .await
    }

    async fn drop_finalizer(
        &self,
        t: &Tracked,
        m: &ObjectMeta,
        which: &str,
    ) -> Result<Action, ControllerError> {
        let left: Vec<&String> = m
            .finalizers
            .iter()
            .flatten()
            .filter(|f| *f != which)
            .collect();
        let body = json!({"metadata": {"uid": m.uid, "resourceVersion": m.resource_version, "finalizers": left}});
        self.patch_meta(t, m, body, "removing a finalizer from")
            .await?;
        info!(kind = %t.resource.kind, object = %meta_key(m), finalizer = which, "finalizer done");
        Ok(Action::AwaitChange)
    }

    async fn patch_meta(
        &self,
        t: &Tracked,
        m: &ObjectMeta,
        body: serde_json::Value,
        what: &str,
    ) -> Result<(), ControllerError> {
        let ns = m.namespace.as_deref().unwrap_or_default();
        let name = m.name.as_deref().unwrap_or_default();
        match self
            .api(&t.resource, ns)
            .patch(name, &PatchParams::default(), &Patch::Merge(body))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if api_code(&e) == Some(404) => Ok(()),
            Err(e) => Err(ControllerError::Api {
                action: format!("{what} {} {}", t.resource.kind, meta_key(m)),
                source: e,
            }),
        }
    }
}

/// What a delete with preconditions came to.
enum Deleted {
    /// Deleted, or already gone.
    Yes,
    /// The object changed (or was replaced) since it was read.
    Changed,
}

/// The API resource for an owner of a kind the collector does not cache.
fn resource_of(r: &OwnerReference) -> ApiResource {
    super::api_resource(&r.api_version, &r.kind)
}

#[async_trait]
impl Reconciler for GarbageCollector {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError> {
        let (owner, rest) = match key.strip_prefix("owner:") {
            Some(r) => (true, r),
            None => (false, key),
        };
        let Some((kind, obj)) = rest.split_once('|') else {
            return Ok(Action::AwaitChange);
        };
        let Some(t) = self.kinds.get(kind) else {
            return Ok(Action::AwaitChange);
        };
        if owner {
            self.finalize(t, obj).await
        } else {
            self.collect(t, obj).await
        }
    }
}
