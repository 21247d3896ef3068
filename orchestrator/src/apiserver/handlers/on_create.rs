//! Admission that reads the store, run when an object is created: the
//! namespace must be open (NamespaceLifecycle), a pod's ServiceAccount must
//! exist, a pod's priority comes from its PriorityClass (Priority), a claim
//! gets the default StorageClass, and claims and volumes get their
//! protection finalizers (StorageObjectInUseProtection).

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
    if resource == ("scheduling.k8s.io", "priorityclasses") {
        one_global_default(st, obj).await?;
    }
    let Some(ns) = t.namespace.as_deref() else {
        return Ok(());
    };
    check_namespace_open(st, ns).await?;
    match resource {
        ("", "pods") => {
            service_account_admission(st, ns, name, obj).await?;
            priority_admission(st, name, obj).await?;
        }
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

/// The stored PriorityClasses `keep` picks.
async fn priority_classes(
    st: &ApiState,
    keep: &(dyn Fn(&Value) -> bool + Send + Sync),
) -> ApiResult<Vec<Value>> {
    let Some(reg) = st
        .registry
        .get("scheduling.k8s.io", "v1", "priorityclasses")
    else {
        return Ok(Vec::new());
    };
    let page = st
        .store
        .list(&reg.key(None, None), None, None, keep)
        .await
        .map_err(|e| ApiError::from_store(e, "priorityclasses", ""))?;
    Ok(page.items.into_iter().map(|o| (*o.value).clone()).collect())
}

fn global_default(v: &Value) -> bool {
    v.get("globalDefault").and_then(Value::as_bool) == Some(true)
}

/// Kubernetes' Priority admission for a class: only one may be the
/// cluster's default.
async fn one_global_default(st: &ApiState, obj: &Value) -> ApiResult<()> {
    if !global_default(obj) {
        return Ok(());
    }
    if let Some(other) = priority_classes(st, &global_default).await?.first() {
        let other = other
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        return Err(ApiError::forbidden(format!(
            "PriorityClass {other} is already marked as default. Only one default can exist"
        )));
    }
    Ok(())
}

/// Kubernetes' Priority admission for a pod: `spec.priority` (and
/// `preemptionPolicy`) come from the class it names, or from the class
/// marked `globalDefault`, else 0; a pod may not set its own number.
async fn priority_admission(st: &ApiState, pod: &str, obj: &mut Value) -> ApiResult<()> {
    let forbidden = |why: String| {
        let mut e = ApiError::forbidden(format!("pods {pod:?} is forbidden: {why}"));
        e.details = Some(json!({"name": pod, "kind": "pods"}));
        e
    };
    let named = obj
        .pointer("/spec/priorityClassName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    let class = match &named {
        // One read by key: this runs for every pod created.
        Some(n) => {
            let Some(reg) = st
                .registry
                .get("scheduling.k8s.io", "v1", "priorityclasses")
            else {
                return Ok(());
            };
            match st.store.get(&reg.key(None, Some(n))).await {
                Ok(Some(c)) => Some((*c.value).clone()),
                Ok(None) => {
                    return Err(forbidden(format!(
                        "no PriorityClass with name {n} was found"
                    )))
                }
                Err(e) => return Err(ApiError::from_store(e, "priorityclasses", n)),
            }
        }
        // The lowest default wins should several be marked.
        None => priority_classes(st, &global_default)
            .await?
            .into_iter()
            .min_by_key(|c| c.get("value").and_then(Value::as_i64).unwrap_or(0)),
    };
    let value = class
        .as_ref()
        .and_then(|c| c.get("value").and_then(Value::as_i64))
        .unwrap_or(0);
    if let Some(given) = obj.pointer("/spec/priority").and_then(Value::as_i64) {
        if given != value {
            return Err(forbidden(format!(
                "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
            )));
        }
    }
    let spec = crate::apiserver::admission::obj_mut(obj, "spec");
    spec.insert("priority".into(), json!(value));
    if let Some(c) = class {
        if named.is_none() {
            if let Some(n) = c.pointer("/metadata/name") {
                spec.insert("priorityClassName".into(), n.clone());
            }
        }
        if let Some(p) = c.get("preemptionPolicy") {
            spec.insert("preemptionPolicy".into(), p.clone());
        }
    }
    Ok(())
}
