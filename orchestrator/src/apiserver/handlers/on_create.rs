//! Admission that reads the store, run when an object is created: the
//! namespace must be open (NamespaceLifecycle), a pod's ServiceAccount must
//! exist, a claim gets the default StorageClass, and claims and volumes get
//! their protection finalizers (StorageObjectInUseProtection).

use serde_json::{json, Value};

use crate::apiserver::error::{ApiError, ApiResult};
use crate::apiserver::request::Target;
use crate::apiserver::ApiState;

/// Every create-time check and default for `obj` (named `name`) at `t`.
pub async fn admit(st: &ApiState, t: &Target<'_>, name: &str, obj: &mut Value) -> ApiResult<()> {
    let resource = (t.res.group, t.res.plural);
    if resource == ("", "persistentvolumes") {
        add_finalizer(obj, shoal_sdk::volumes::VOLUME_PROTECTION);
    }
    let Some(ns) = t.namespace.as_deref() else {
        return Ok(());
    };
    check_namespace_open(st, ns).await?;
    match resource {
        ("", "pods") => service_account_admission(st, ns, name, obj).await?,
        ("", "persistentvolumeclaims") => {
            default_storage_class(st, obj).await?;
            add_finalizer(obj, shoal_sdk::volumes::CLAIM_PROTECTION);
        }
        _ => {}
    }
    Ok(())
}

/// NamespaceLifecycle: nothing is created in a missing or terminating namespace.
async fn check_namespace_open(st: &ApiState, ns: &str) -> ApiResult<()> {
    let Some(reg) = st.registry.get("", "v1", "namespaces") else {
        return Ok(());
    };
    let key = reg.key(None, Some(ns));
    match st.store.get(&key).await {
        Ok(Some(n)) => {
            if n.value.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating") {
                return Err(ApiError::forbidden(format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                )));
            }
            Ok(())
        }
        Ok(None) => Err(ApiError::not_found("namespaces", ns)),
        Err(e) => Err(ApiError::from_store(e, "namespaces", ns)),
    }
}

/// Kubernetes' ServiceAccount admission: a pod may only run as an account
/// that exists, and a pod that names no `imagePullSecrets` gets its
/// account's (how a namespace's pods all reach a private registry).
/// `default` is let through while missing: the service account controller
/// makes it moments after its namespace, and a manifest that creates a
/// namespace and its pods together must not race it.
async fn service_account_admission(
    st: &ApiState,
    ns: &str,
    pod: &str,
    obj: &mut Value,
) -> ApiResult<()> {
    let account = obj
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .unwrap_or(crate::controllers::serviceaccount::DEFAULT)
        .to_string();
    let Some(reg) = st.registry.get("", "v1", "serviceaccounts") else {
        return Ok(());
    };
    let found = match st.store.get(&reg.key(Some(ns), Some(&account))).await {
        Ok(found) => found,
        Err(e) => return Err(ApiError::from_store(e, "serviceaccounts", &account)),
    };
    let Some(sa) = found else {
        if account == crate::controllers::serviceaccount::DEFAULT {
            return Ok(());
        }
        let mut e = ApiError::forbidden(format!(
            "pods {pod:?} is forbidden: error looking up service account {ns}/{account}: serviceaccount {account:?} not found"
        ));
        e.details = Some(json!({"name": pod, "kind": "pods"}));
        return Err(e);
    };
    let has_own = obj
        .pointer("/spec/imagePullSecrets")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let inherited = sa
        .value
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty());
    if let (false, Some(secrets)) = (has_own, inherited) {
        let secrets = Value::Array(secrets.clone());
        crate::apiserver::admission::obj_mut(obj, "spec")
            .insert("imagePullSecrets".into(), secrets);
    }
    Ok(())
}

/// Kubernetes' StorageObjectInUseProtection: a new claim carries the
/// finalizer that keeps it (and so its volume's data) while a pod uses it,
/// a new volume the one that keeps it while bound; the volume controller
/// lifts them.
fn add_finalizer(obj: &mut Value, finalizer: &str) {
    let meta = crate::apiserver::admission::obj_mut(obj, "metadata");
    let list = meta.entry("finalizers").or_insert_with(|| json!([]));
    if let Value::Array(fs) = list {
        if !fs.iter().any(|f| f.as_str() == Some(finalizer)) {
            fs.push(json!(finalizer));
        }
    }
}

/// Kubernetes' DefaultStorageClass admission: a claim that names no class
/// (the field absent, not `""`, which asks for none) gets the one marked
/// default; the newest wins if several are.
async fn default_storage_class(st: &ApiState, obj: &mut Value) -> ApiResult<()> {
    if obj
        .pointer("/spec/storageClassName")
        .is_some_and(|v| !v.is_null())
    {
        return Ok(());
    }
    let Some(reg) = st.registry.get("storage.k8s.io", "v1", "storageclasses") else {
        return Ok(());
    };
    let marked = |v: &Value| {
        v.pointer("/metadata/annotations")
            .and_then(|a| a.get(shoal_sdk::volumes::DEFAULT_CLASS_ANNOTATION))
            .and_then(Value::as_str)
            == Some("true")
    };
    let page = st
        .store
        .list(&reg.key(None, None), None, None, &marked)
        .await
        .map_err(|e| ApiError::from_store(e, "storageclasses", ""))?;
    let newest = page.items.iter().max_by_key(|o| {
        o.value
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    });
    if let Some(class) = newest.and_then(|o| o.value.pointer("/metadata/name").cloned()) {
        crate::apiserver::admission::obj_mut(obj, "spec").insert("storageClassName".into(), class);
    }
    Ok(())
}
