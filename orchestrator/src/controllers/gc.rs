//! The garbage collector: owner references decide lifetimes.
//! - Background: a dependent whose owners are all gone is deleted (and its
//!   own dependents after it).
//! - Foreground: an owner being deleted with the `foregroundDeletion`
//!   finalizer waits until its blocking dependents are gone, then the
//!   finalizer comes off and the owner goes.
//! - Orphan: an owner with the `orphan` finalizer has its references
//!   removed from every dependent, then the finalizer comes off.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::Api;
use serde_json::json;
use tracing::{debug, info};

use super::informer::{key_of, split_key};
use super::owners;
use super::queue::WorkQueue;
use super::{api_code, new_queue, Action, ControllerError, Ctx, Reconciler};

pub const NAME: &str = "garbage-collector";
const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";

/// The kinds the collector tracks, as dependents and as owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pod,
    ReplicaSet,
    Deployment,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        match s {
            "Pod" => Some(Kind::Pod),
            "ReplicaSet" => Some(Kind::ReplicaSet),
            "Deployment" => Some(Kind::Deployment),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::Deployment => "Deployment",
        }
    }
}

pub struct GarbageCollector {
    ctx: Arc<Ctx>,
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

/// Queue key: `Kind|namespace/name`.
fn qkey(kind: Kind, key: String) -> String {
    format!("{}|{key}", kind.name())
}

impl GarbageCollector {
    pub fn register(ctx: &Arc<Ctx>) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = new_queue(ctx, NAME);
        let i = &ctx.informers;
        watch_kind(&i.pods, Kind::Pod, &queue, ctx);
        watch_kind(&i.replicasets, Kind::ReplicaSet, &queue, ctx);
        watch_kind(&i.deployments, Kind::Deployment, &queue, ctx);
        (Arc::new(GarbageCollector { ctx: ctx.clone() }), queue)
    }

    fn meta_of(&self, kind: Kind, key: &str) -> Option<ObjectMeta> {
        let i = &self.ctx.informers;
        match kind {
            Kind::Pod => i.pods.get(key).map(|o| o.metadata.clone()),
            Kind::ReplicaSet => i.replicasets.get(key).map(|o| o.metadata.clone()),
            Kind::Deployment => i.deployments.get(key).map(|o| o.metadata.clone()),
        }
    }

    /// Every tracked object in `ns` with a reference to `uid`.
    fn dependents(&self, ns: &str, uid: &str) -> Vec<(Kind, ObjectMeta)> {
        let refers = |m: &ObjectMeta| m.owner_references.iter().flatten().any(|r| r.uid == uid);
        let i = &self.ctx.informers;
        let mut out: Vec<(Kind, ObjectMeta)> = Vec::new();
        out.extend(
            i.pods
                .list_namespace(ns)
                .iter()
                .filter(|o| refers(&o.metadata))
                .map(|o| (Kind::Pod, o.metadata.clone())),
        );
        out.extend(
            i.replicasets
                .list_namespace(ns)
                .iter()
                .filter(|o| refers(&o.metadata))
                .map(|o| (Kind::ReplicaSet, o.metadata.clone())),
        );
        out.extend(
            i.deployments
                .list_namespace(ns)
                .iter()
                .filter(|o| refers(&o.metadata))
                .map(|o| (Kind::Deployment, o.metadata.clone())),
        );
        out
    }

    /// Does the owner a reference names still exist (same uid)? The cache
    /// can say yes; only the API can say no, since a cache may simply not
    /// have seen a new owner yet.
    async fn owner_exists(&self, ns: &str, r: &OwnerReference) -> Result<bool, ControllerError> {
        let key = format!("{ns}/{}", r.name);
        if let Some(kind) = Kind::parse(&r.kind) {
            if self
                .meta_of(kind, &key)
                .is_some_and(|m| m.uid.as_deref() == Some(r.uid.as_str()))
            {
                return Ok(true);
            }
        }
        let Some(ar) = api_resource(r) else {
            // A kind Shoal does not serve cannot own anything.
            return Ok(false);
        };
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(self.ctx.client.clone(), ns, &ar);
        match api.get(&r.name).await {
            Ok(o) => Ok(o.metadata.uid.as_deref() == Some(r.uid.as_str())),
            Err(e) if api_code(&e) == Some(404) => Ok(false),
            Err(e) => Err(ControllerError::Api {
                action: format!("looking up owner {} {key}", r.kind),
                source: e,
            }),
        }
    }

    /// A dependent: deleted once all its owners are gone.
    async fn collect(&self, kind: Kind, key: &str) -> Result<Action, ControllerError> {
        let Some(m) = self.meta_of(kind, key) else {
            return Ok(Action::AwaitChange);
        };
        if m.deletion_timestamp.is_some() || !has_owners(&m) {
            return Ok(Action::AwaitChange);
        }
        let (ns, _) = split_key(key);
        for r in m.owner_references.iter().flatten() {
            if self.owner_exists(ns, r).await? {
                return Ok(Action::AwaitChange);
            }
        }
        // An owner being deleted in the foreground asks its dependents to
        // go the same way, so it can wait for them.
        info!(
            kind = kind.name(),
            object = key,
            "all owners gone; deleting"
        );
        self.delete(kind, key, &m, PropagationPolicy::Background)
            .await?;
        Ok(Action::AwaitChange)
    }

    /// An owner being deleted with a GC finalizer.
    async fn finalize(&self, kind: Kind, key: &str) -> Result<Action, ControllerError> {
        let Some(m) = self.meta_of(kind, key) else {
            return Ok(Action::AwaitChange);
        };
        if !gc_finalizer(&m) {
            return Ok(Action::AwaitChange);
        }
        let (ns, _) = split_key(key);
        let uid = m.uid.clone().unwrap_or_default();
        let finalizers: Vec<String> = m.finalizers.clone().unwrap_or_default();
        let deps = self.dependents(ns, &uid);
        if finalizers.iter().any(|f| f == ORPHAN) {
            for (k, dm) in &deps {
                self.release(*k, dm, &uid).await?;
            }
            return self.drop_finalizer(kind, key, &m, ORPHAN).await;
        }
        let blocking: Vec<&(Kind, ObjectMeta)> = deps
            .iter()
            .filter(|(_, dm)| {
                dm.owner_references
                    .iter()
                    .flatten()
                    .any(|r| r.uid == uid && r.block_owner_deletion == Some(true))
            })
            .collect();
        if blocking.is_empty() {
            return self.drop_finalizer(kind, key, &m, FOREGROUND).await;
        }
        for (k, dm) in &blocking {
            if dm.deletion_timestamp.is_none() {
                self.delete(*k, &meta_key(dm), dm, PropagationPolicy::Foreground)
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
        kind: Kind,
        key: &str,
        m: &ObjectMeta,
        policy: PropagationPolicy,
    ) -> Result<(), ControllerError> {
        let (ns, name) = split_key(key);
        let dp = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(Preconditions {
                uid: m.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let c = self.ctx.client.clone();
        let out = match kind {
            Kind::Pod => Api::<Pod>::namespaced(c, ns)
                .delete(name, &dp)
                .await
                .map(|_| ()),
            Kind::ReplicaSet => Api::<ReplicaSet>::namespaced(c, ns)
                .delete(name, &dp)
                .await
                .map(|_| ()),
            Kind::Deployment => Api::<Deployment>::namespaced(c, ns)
                .delete(name, &dp)
                .await
                .map(|_| ()),
        };
        match out {
            Ok(()) => Ok(()),
            Err(e) if matches!(api_code(&e), Some(404) | Some(409)) => Ok(()),
            Err(e) => Err(ControllerError::Api {
                action: format!("deleting {} {key}", kind.name()),
                source: e,
            }),
        }
    }

    async fn release(
        &self,
        kind: Kind,
        m: &ObjectMeta,
        owner_uid: &str,
    ) -> Result<(), ControllerError> {
        let i = &self.ctx.informers;
        let key = meta_key(m);
        let c = &self.ctx.client;
        let out = match kind {
            Kind::Pod => match i.pods.get(&key) {
                Some(o) => owners::release(c, o.as_ref(), owner_uid)
                    .await
                    .map(|o| i.pods.assume(o)),
                None => Ok(()),
            },
            Kind::ReplicaSet => match i.replicasets.get(&key) {
                Some(o) => owners::release(c, o.as_ref(), owner_uid)
                    .await
                    .map(|o| i.replicasets.assume(o)),
                None => Ok(()),
            },
            Kind::Deployment => match i.deployments.get(&key) {
                Some(o) => owners::release(c, o.as_ref(), owner_uid)
                    .await
                    .map(|o| i.deployments.assume(o)),
                None => Ok(()),
            },
        };
        match out {
            Ok(()) => Ok(()),
            Err(e) if api_code(&e) == Some(404) => Ok(()),
            Err(e) => Err(ControllerError::Api {
                action: format!("orphaning {} {key}", kind.name()),
                source: e,
            }),
        }
    }

    async fn drop_finalizer(
        &self,
        kind: Kind,
        key: &str,
        m: &ObjectMeta,
        which: &str,
    ) -> Result<Action, ControllerError> {
        let (ns, name) = split_key(key);
        let left: Vec<&String> = m
            .finalizers
            .iter()
            .flatten()
            .filter(|f| *f != which)
            .collect();
        let patch = Patch::Merge(
            json!({"metadata": {"uid": m.uid, "resourceVersion": m.resource_version, "finalizers": left}}),
        );
        let pp = PatchParams::default();
        let c = self.ctx.client.clone();
        let out = match kind {
            Kind::Pod => Api::<Pod>::namespaced(c, ns)
                .patch(name, &pp, &patch)
                .await
                .map(|_| ()),
            Kind::ReplicaSet => Api::<ReplicaSet>::namespaced(c, ns)
                .patch(name, &pp, &patch)
                .await
                .map(|_| ()),
            Kind::Deployment => Api::<Deployment>::namespaced(c, ns)
                .patch(name, &pp, &patch)
                .await
                .map(|_| ()),
        };
        match out {
            Ok(()) => {
                info!(
                    kind = kind.name(),
                    object = key,
                    finalizer = which,
                    "finalizer done"
                );
                Ok(Action::AwaitChange)
            }
            Err(e) if api_code(&e) == Some(404) => Ok(Action::AwaitChange),
            Err(e) => Err(ControllerError::Api {
                action: format!("removing finalizer {which} from {} {key}", kind.name()),
                source: e,
            }),
        }
    }
}

fn meta_key(m: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default()
    )
}

/// The API resource for an owner of a kind the collector does not cache.
fn api_resource(r: &OwnerReference) -> Option<kube::api::ApiResource> {
    let (group, version) = match r.api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), r.api_version.clone()),
    };
    let lower = r.kind.to_ascii_lowercase();
    let plural = if lower.ends_with('s') {
        format!("{lower}es")
    } else if let Some(stem) = lower.strip_suffix('y') {
        format!("{stem}ies")
    } else {
        format!("{lower}s")
    };
    Some(kube::api::ApiResource {
        group,
        version,
        api_version: r.api_version.clone(),
        kind: r.kind.clone(),
        plural,
    })
}

/// Feeds the queue from one kind's informer: objects with owners are
/// checked as dependents; owners that disappear or start a GC-finalized
/// deletion bring their dependents and themselves.
fn watch_kind<K>(
    inf: &Arc<super::informer::Informer<K>>,
    kind: Kind,
    queue: &Arc<WorkQueue>,
    ctx: &Arc<Ctx>,
) where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let q = queue.clone();
    let weak = Arc::downgrade(ctx);
    inf.on_change(move |old, new| {
        if let Some(o) = new {
            let m = o.meta();
            if has_owners(m) {
                q.add(qkey(kind, key_of(o)));
            }
            if gc_finalizer(m) {
                q.add(format!("owner:{}", qkey(kind, key_of(o))));
            }
        }
        // An object deleted: its dependents may now be garbage, and a
        // foreground owner may be waiting on it.
        if let (Some(o), None) = (old, new) {
            let m = o.meta();
            let Some(ctx) = weak.upgrade() else { return };
            let gc = GarbageCollector { ctx };
            let ns = m.namespace.as_deref().unwrap_or_default();
            for (k, dm) in gc.dependents(ns, m.uid.as_deref().unwrap_or_default()) {
                q.add(qkey(k, meta_key(&dm)));
            }
            for r in m.owner_references.iter().flatten() {
                if let Some(k) = Kind::parse(&r.kind) {
                    q.add(format!("owner:{}", qkey(k, format!("{ns}/{}", r.name))));
                }
            }
        }
    });
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
        let Some(kind) = Kind::parse(kind) else {
            return Ok(Action::AwaitChange);
        };
        if owner {
            self.finalize(kind, obj).await
        } else {
            self.collect(kind, obj).await
        }
    }
}
