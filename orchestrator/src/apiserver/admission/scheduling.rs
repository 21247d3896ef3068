//! PriorityClasses (`scheduling.k8s.io/v1`): Kubernetes' defaults and
//! validation. Names starting `system-` belong to the two built-in classes
//! the server makes itself; a user's class may go up to one billion.

use serde_json::{json, Value};

use super::{default_field, immutable, str_at};
use crate::apiserver::error::Cause;

/// The highest value a class not made by the system may have.
pub const MAX_USER_PRIORITY: i64 = 1_000_000_000;
/// The built-in classes, as Kubernetes makes them.
pub const BUILT_IN: [(&str, i64, &str); 2] = [
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
];
const PREEMPTION_POLICIES: &[&str] = &["PreemptLowerPriority", "Never"];

pub fn default_class(obj: &mut Value) {
    if let Value::Object(m) = obj {
        default_field(m, "preemptionPolicy", json!("PreemptLowerPriority"));
    }
}

pub fn validate_class(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let name = str_at(obj, "/metadata/name").unwrap_or_default();
    match obj.get("value") {
        Some(Value::Number(n)) if n.is_i64() => {
            let value = n.as_i64().unwrap_or_default();
            if name.starts_with("system-") {
                if !BUILT_IN.iter().any(|(n, v, _)| *n == name && *v == value) {
                    out.push(Cause::forbidden(
                        "metadata.name",
                        "priority class names with 'system-' prefix are reserved for system use only",
                    ));
                }
            } else if value > MAX_USER_PRIORITY {
                out.push(Cause::forbidden(
                    "value",
                    format!(
                        "maximum allowed value of a user defined priority is {MAX_USER_PRIORITY}"
                    ),
                ));
            }
        }
        None | Some(Value::Null) => out.push(Cause::required("value")),
        Some(other) => out.push(Cause::invalid(
            "value",
            other.to_string(),
            "must be a 32-bit integer",
        )),
    }
    if let Some(p) = str_at(obj, "/preemptionPolicy") {
        if !PREEMPTION_POLICIES.contains(&p) {
            out.push(Cause::not_supported(
                "preemptionPolicy",
                p,
                PREEMPTION_POLICIES,
            ));
        }
    }
    out
}

pub fn validate_class_update(new: &Value, old: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    immutable(new, old, "/value", "value", &mut out);
    immutable(new, old, "/preemptionPolicy", "preemptionPolicy", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, value: Value) -> Value {
        json!({"metadata": {"name": name}, "value": value})
    }

    #[test]
    fn values_and_names_are_checked_as_kubernetes_does() {
        assert!(validate_class(&class("high", json!(1000))).is_empty());
        let fields =
            |o: &Value| -> Vec<String> { validate_class(o).into_iter().map(|c| c.field).collect() };
        assert_eq!(fields(&class("huge", json!(2_000_000_000))), ["value"]);
        assert_eq!(fields(&class("system-mine", json!(5))), ["metadata.name"]);
        assert!(fields(&class("system-node-critical", json!(2_000_001_000))).is_empty());
        assert_eq!(fields(&class("x", json!("high"))), ["value"]);
        assert_eq!(fields(&json!({"metadata": {"name": "x"}})), ["value"]);
        let mut bad = class("x", json!(1));
        bad["preemptionPolicy"] = json!("Sometimes");
        assert_eq!(fields(&bad), ["preemptionPolicy"]);
        let changed = validate_class_update(&class("x", json!(2)), &class("x", json!(1)));
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].field, "value");
    }
}
