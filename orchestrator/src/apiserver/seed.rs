//! Objects every cluster starts with: the system namespaces, the two
//! RuntimeClasses (`wasmtime`, the default, and `runc`), the default
//! IngressClass `shoal`, and the bootstrap RBAC roles and bindings.

use serde_json::{json, Value};
use tracing::info;

use super::handlers::write::now;
use super::ApiState;
use crate::store::StoreError;

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
        match st.store.create(&key, obj).await {
            Ok(_) => info!(resource = plural, %name, "created"),
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
