//! The "can I?" and "who am I?" reviews: create-only resources the server
//! answers instead of storing, as `kubectl auth can-i`, `kubectl auth
//! whoami` and dashboards such as k9s ask them.
//!
//! Shoal authenticates bearer tokens but does not authorize: every
//! authenticated identity may do everything, so the honest answer to every
//! access review is yes, and to a rules review "everything".

use serde_json::{json, Value};

use super::error::Cause;

/// Works out a review's `status` for the identity asking.
pub type Answer = fn(review: &Value, identity: &str) -> Result<Value, Vec<Cause>>;

const EVERYONE_MAY: &str = "Shoal authorizes every authenticated identity for everything";

/// `authorization.k8s.io/v1` SelfSubjectAccessReview.
pub fn access(review: &Value, _identity: &str) -> Result<Value, Vec<Cause>> {
    let spec = review.get("spec");
    let resource = spec.and_then(|s| s.get("resourceAttributes"));
    let non_resource = spec.and_then(|s| s.get("nonResourceAttributes"));
    match (resource, non_resource) {
        (Some(_), Some(_)) | (None, None) => Err(vec![Cause::invalid(
            "spec.resourceAttributes",
            "",
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )]),
        _ => Ok(json!({"allowed": true, "reason": EVERYONE_MAY})),
    }
}

/// `authorization.k8s.io/v1` SelfSubjectRulesReview.
pub fn rules(review: &Value, _identity: &str) -> Result<Value, Vec<Cause>> {
    let namespace = review
        .pointer("/spec/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    if namespace.is_empty() {
        return Err(vec![Cause::required("spec.namespace")]);
    }
    Ok(json!({
        "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
        "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
        "incomplete": false,
    }))
}

/// `authentication.k8s.io/v1` SelfSubjectReview.
pub fn whoami(_review: &Value, identity: &str) -> Result<Value, Vec<Cause>> {
    let group = match identity {
        "admin" => "system:masters",
        "node" => "system:nodes",
        _ => "system:authenticated",
    };
    Ok(json!({"userInfo": {
        "username": identity,
        "groups": [group, "system:authenticated"],
    }}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_access_review_needs_exactly_one_kind_of_attributes() {
        let ok = json!({"spec": {"resourceAttributes": {"verb": "create", "resource": "pods"}}});
        assert_eq!(access(&ok, "admin").expect("allowed")["allowed"], true);
        let neither = json!({"spec": {}});
        assert_eq!(
            access(&neither, "admin").expect_err("invalid")[0].field,
            "spec.resourceAttributes"
        );
        assert!(rules(&json!({"spec": {}}), "admin").is_err());
        assert_eq!(
            whoami(&json!({}), "node").expect("who")["userInfo"]["groups"][0],
            "system:nodes"
        );
    }
}
