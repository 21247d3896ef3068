//! What every controller does the same way: feeding its queue from the
//! shared caches, and writing its object's status back.

use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use super::informer::{key_of, split_key, Informer};
use super::owners::controller_of;
use super::queue::WorkQueue;
use super::{api_code, ControllerError, Ctx};

/// A namespaced kind a controller reads from the shared caches and writes
/// back through the API.
pub trait Namespaced:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Namespaced for K where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// Queues an object's own key whenever it is added or changes.
pub fn enqueue_self<K>(inf: &Arc<Informer<K>>, queue: &Arc<WorkQueue>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let q = queue.clone();
    inf.on_change(move |_, new| {
        if let Some(o) = new {
            q.add(key_of(o));
        }
    });
}

/// Queues the controller (of kind `owner_kind`) of any dependent that
/// changes, before and after the change.
pub fn enqueue_controller<K>(
    inf: &Arc<Informer<K>>,
    queue: &Arc<WorkQueue>,
    owner_kind: &'static str,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let q = queue.clone();
    inf.on_change(move |old, new| {
        for o in [old, new].into_iter().flatten() {
            let m = o.meta();
            if let Some(r) = controller_of(m).filter(|r| r.kind == owner_kind) {
                let ns = m.namespace.as_deref().unwrap_or_default();
                q.add(format!("{ns}/{}", r.name));
            }
        }
    });
}

/// Merge-patches `status` onto `obj` (with its uid as a precondition) and
/// puts the answer in the cache. A deleted object is not an error.
pub async fn write_status<K: Namespaced, S: Serialize>(
    ctx: &Ctx,
    cache: &Informer<K>,
    obj: &K,
    status: &S,
) -> Result<(), ControllerError> {
    let key = key_of(obj);
    let (ns, name) = split_key(&key);
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let patch = json!({"metadata": {"uid": obj.meta().uid}, "status": status});
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(out) => {
            cache.assume(out);
            Ok(())
        }
        Err(e) if api_code(&e) == Some(404) => Ok(()),
        Err(e) => Err(ControllerError::Api {
            action: format!("updating status of {} {key}", K::kind(&()).to_lowercase()),
            source: e,
        }),
    }
}

/// Deletes `obj` and drops it from the cache; already gone is fine.
pub async fn delete_cached<K>(
    api: &Api<K>,
    cache: &Informer<K>,
    obj: &K,
) -> Result<(), ControllerError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {
            cache.assume_deleted(obj);
            Ok(())
        }
        Err(e) if api_code(&e) == Some(404) => {
            cache.assume_deleted(obj);
            Ok(())
        }
        Err(e) => Err(ControllerError::Api {
            action: format!("deleting {} {}", K::kind(&()).to_lowercase(), key_of(obj)),
            source: e,
        }),
    }
}

/// Takes `finalizer` off `obj`, with its revision as a precondition (a
/// stale view fails with 409 and is looked at again); already gone is fine.
pub async fn remove_finalizer<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let m = obj.meta();
    let rest: Vec<&String> = m
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != finalizer)
        .collect();
    let patch = json!({"metadata": {"resourceVersion": m.resource_version, "finalizers": rest}});
    let name = m.name.clone().unwrap_or_default();
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if api_code(&e) == Some(404) => Ok(()),
        Err(e) => Err(e),
    }
}
