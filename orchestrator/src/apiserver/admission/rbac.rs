//! Roles, ClusterRoles and their bindings: Kubernetes' validation, with a
//! cause per field.

use serde_json::Value;

use super::super::auth::rbac::GROUP;
use super::super::error::Cause;

/// RBAC names may hold colons (`system:node`): anything that is one URL
/// path segment.
pub fn path_segment_name(name: &str) -> Option<String> {
    if name == "." || name == ".." {
        return Some(format!("may not be '{name}'"));
    }
    for bad in ["/", "%"] {
        if name.contains(bad) {
            return Some(format!("may not contain '{bad}'"));
        }
    }
    None
}

fn strings<'a>(rule: &'a Value, key: &str) -> Vec<&'a str> {
    rule.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn validate_rules(obj: &Value, namespaced: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    let rules = obj.get("rules").and_then(Value::as_array);
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        let at = |f: &str| format!("rules[{i}].{f}");
        if strings(rule, "verbs").is_empty() {
            causes.push(Cause {
                message: "Required value: verbs must contain at least one value".into(),
                ..Cause::required(at("verbs"))
            });
        }
        let urls = strings(rule, "nonResourceURLs");
        if !urls.is_empty() {
            if namespaced {
                causes.push(Cause::invalid(
                    at("nonResourceURLs"),
                    format!("{urls:?}"),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            let mixed = ["apiGroups", "resources", "resourceNames"]
                .iter()
                .any(|k| !strings(rule, k).is_empty());
            if mixed {
                causes.push(Cause::invalid(
                    at("nonResourceURLs"),
                    format!("{urls:?}"),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if rule.get("apiGroups").and_then(Value::as_array).is_none() {
            causes.push(Cause {
                message: "Required value: resource rules must supply at least one api group".into(),
                ..Cause::required(at("apiGroups"))
            });
        }
        if strings(rule, "resources").is_empty() {
            causes.push(Cause {
                message: "Required value: resource rules must supply at least one resource".into(),
                ..Cause::required(at("resources"))
            });
        }
    }
    causes
}

pub fn validate_role(obj: &Value) -> Vec<Cause> {
    validate_rules(obj, true)
}

pub fn validate_cluster_role(obj: &Value) -> Vec<Cause> {
    validate_rules(obj, false)
}

fn validate_binding(obj: &Value, cluster: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    let role_ref = obj.get("roleRef");
    let field = |k: &str| {
        role_ref
            .and_then(|r| r.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let kinds: &[&str] = if cluster {
        &["ClusterRole"]
    } else {
        &["Role", "ClusterRole"]
    };
    match field("kind") {
        "" => causes.push(Cause::required("roleRef.kind")),
        k if !kinds.contains(&k) => causes.push(Cause::not_supported("roleRef.kind", k, kinds)),
        _ => {}
    }
    match field("apiGroup") {
        "" => causes.push(Cause::required("roleRef.apiGroup")),
        GROUP => {}
        g => causes.push(Cause::not_supported("roleRef.apiGroup", g, &[GROUP])),
    }
    match field("name") {
        "" => causes.push(Cause::required("roleRef.name")),
        n => {
            if let Some(why) = path_segment_name(n) {
                causes.push(Cause::invalid("roleRef.name", n, why));
            }
        }
    }
    let subjects = obj.get("subjects").and_then(Value::as_array);
    for (i, s) in subjects.into_iter().flatten().enumerate() {
        let at = |f: &str| format!("subjects[{i}].{f}");
        let get = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or("");
        if get("name").is_empty() {
            causes.push(Cause::required(at("name")));
        }
        match get("kind") {
            "ServiceAccount" => {
                if !get("apiGroup").is_empty() {
                    causes.push(Cause::not_supported(at("apiGroup"), get("apiGroup"), &[""]));
                }
                if cluster && get("namespace").is_empty() {
                    causes.push(Cause::required(at("namespace")));
                }
            }
            "User" | "Group" => {
                if get("apiGroup") != GROUP {
                    causes.push(Cause::not_supported(
                        at("apiGroup"),
                        get("apiGroup"),
                        &[GROUP],
                    ));
                }
            }
            "" => causes.push(Cause::required(at("kind"))),
            k => causes.push(Cause::not_supported(
                at("kind"),
                k,
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
    causes
}

pub fn validate_role_binding(obj: &Value) -> Vec<Cause> {
    validate_binding(obj, false)
}

pub fn validate_cluster_role_binding(obj: &Value) -> Vec<Cause> {
    validate_binding(obj, true)
}

/// A binding's role cannot change: what it grants would change under the
/// subjects' feet; delete and recreate it instead.
pub fn validate_binding_update(new: &Value, old: &Value) -> Vec<Cause> {
    match (new.get("roleRef"), old.get("roleRef")) {
        (n, o) if n == o => Vec::new(),
        (n, _) => vec![Cause::invalid(
            "roleRef",
            n.map(Value::to_string).unwrap_or_default(),
            "cannot change roleRef",
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(c: Vec<Cause>) -> Vec<String> {
        c.into_iter().map(|c| c.field).collect()
    }

    #[test]
    fn rules_need_verbs_and_either_resources_or_urls() {
        let role = json!({"rules": [
            {"apiGroups": [""], "resources": ["pods"]},
            {"verbs": ["get"], "nonResourceURLs": ["/healthz"]},
            {"verbs": ["get"], "resources": ["pods"]},
        ]});
        assert_eq!(
            fields(validate_role(&role)),
            vec![
                "rules[0].verbs",
                "rules[1].nonResourceURLs",
                "rules[2].apiGroups"
            ]
        );
        assert_eq!(
            fields(validate_cluster_role(&role)),
            vec!["rules[0].verbs", "rules[2].apiGroups"]
        );
    }

    #[test]
    fn bindings_name_a_role_and_valid_subjects() {
        let b = json!({
        "roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "r"},
        "subjects": [
            {"kind": "ServiceAccount", "name": "bot"},
            {"kind": "User", "name": "jane"},
            {"kind": "Robot", "name": "x"},
        ]});
        assert_eq!(
            fields(validate_role_binding(&b)),
            vec!["subjects[1].apiGroup", "subjects[2].kind"]
        );
        assert_eq!(
            fields(validate_cluster_role_binding(&b)),
            vec![
                "roleRef.kind",
                "subjects[0].namespace",
                "subjects[1].apiGroup",
                "subjects[2].kind"
            ]
        );
        let moved = json!({"roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "r"}});
        assert_eq!(fields(validate_binding_update(&moved, &b)), vec!["roleRef"]);
        assert!(path_segment_name("system:node").is_none());
        assert!(path_segment_name("a/b").is_some());
    }
}
