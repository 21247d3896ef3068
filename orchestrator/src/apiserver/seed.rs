//! Objects every cluster starts with: the system namespaces, the two
//! RuntimeClasses (`wasmtime`, the default, and `runc`), the default
//! IngressClass `shoal`, the default StorageClass `local-path`, and the
//! bootstrap RBAC roles and bindings.

use serde_json::{json, Value};
use tracing::info;

use super::handlers::write::now;
use super::ApiState;
use crate::store::StoreError;

/// A bootstrap role or binding still marked `autoupdate` gets this
/// version's rules and subjects, as Kubernetes reconciles its own on start:
/// a data directory from an older Shoal must not keep its older grants.
fn refreshed_policy(stored: &Option<crate::store::StoredObject>, wanted: &Value) -> Option<Value> {
    let stored = &stored.as_ref()?.value;
    let auto = stored
        .pointer("/metadata/annotations/rbac.authorization.kubernetes.io~1autoupdate")
        .and_then(Value::as_str)
        == Some("true");
    if !auto {
        return None;
    }
    let mut out = Value::clone(stored);
    let mut changed = false;
    for field in ["rules", "subjects", "roleRef"] {
        if let Some(v) = wanted.get(field) {
            if stored.get(field) != Some(v) {
                out[field] = v.clone();
                changed = true;
            }
        }
    }
    changed.then_some(out)
}

fn object(api_version: &str, kind: &str, name: &str, extra: Value) -> Value {
    let mut v = json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": name, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now(), "generation": 1},
    });
    if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
        m.extend(e);
    }
    v
}

/// Creates what is missing; existing objects are left as the user made them.
pub async fn seed(st: &ApiState) -> Result<(), StoreError> {
    let mut wanted = Vec::new();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let mut o = object(
            "v1",
            "Namespace",
            ns,
            json!({"spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
        );
        o["metadata"]["labels"] = json!({"kubernetes.io/metadata.name": ns});
        wanted.push(("", "namespaces", o));
    }
    for handler in [
        shoal_sdk::RUNTIME_CLASS_WASMTIME,
        shoal_sdk::RUNTIME_CLASS_RUNC,
    ] {
        wanted.push((
            "node.k8s.io",
            "runtimeclasses",
            object(
                "node.k8s.io/v1",
                "RuntimeClass",
                handler,
                // Nodes advertise the runtimes they offer with this label.
                json!({"handler": handler, "scheduling": {"nodeSelector": {
                    shoal_sdk::runtime_label(handler): "true"
                }}}),
            ),
        ));
    }
    // The class every node gateway serves, and the default for Ingresses
    // that name none.
    wanted.push(("networking.k8s.io", "ingressclasses", {
        let mut o = object(
            "networking.k8s.io/v1",
            "IngressClass",
            "shoal",
            json!({"spec": {"controller": "shoal.dev/ingress-gateway"}}),
        );
        o["metadata"]["annotations"] =
            json!({"ingressclass.kubernetes.io/is-default-class": "true"});
        o
    }));
    // Node-local volumes, made where a claim's first pod lands (k3s'
    // local-path): the class claims get when they name none.
    wanted.push(("storage.k8s.io", "storageclasses", {
        use shoal_sdk::volumes as v;
        let mut o = object(
            "storage.k8s.io/v1",
            "StorageClass",
            v::LOCAL_PATH_CLASS,
            json!({"provisioner": v::LOCAL_PATH_PROVISIONER, "reclaimPolicy": "Delete",
                   "volumeBindingMode": "WaitForFirstConsumer"}),
        );
        o["metadata"]["annotations"] = json!({v::DEFAULT_CLASS_ANNOTATION: "true"});
        o
    }));
    // The two classes Kubernetes reserves for its own critical pods, which
    // charts name (`priorityClassName: system-node-critical`).
    for (name, value, description) in super::admission::scheduling::BUILT_IN {
        let o = object(
            "scheduling.k8s.io/v1",
            "PriorityClass",
            name,
            json!({"value": value, "description": description,
                   "preemptionPolicy": "PreemptLowerPriority"}),
        );
        wanted.push(("scheduling.k8s.io", "priorityclasses", o));
    }
    // The bootstrap RBAC policy, marked as Kubernetes marks its own.
    for (plural, kind, name, extra) in super::auth::defaults::objects() {
        let mut o = object("rbac.authorization.k8s.io/v1", kind, name, extra);
        o["metadata"]["labels"] = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
        o["metadata"]["annotations"] =
            json!({"rbac.authorization.kubernetes.io/autoupdate": "true"});
        wanted.push(("rbac.authorization.k8s.io", plural, o));
    }
    for (group, plural, obj) in wanted {
        let Some(res) = st.registry.get(group, "v1", plural) else {
            continue;
        };
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = res.key(None, Some(&name));
        match st.store.create(&key, obj.clone()).await {
            Ok(_) => info!(resource = plural, %name, "created"),
            Err(StoreError::AlreadyExists { .. }) => {
                if let Some(updated) = refreshed_policy(&st.store.get(&key).await?, &obj) {
                    st.store.update(&key, None, updated).await?;
                    info!(resource = plural, %name, "bootstrap policy brought up to date");
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
