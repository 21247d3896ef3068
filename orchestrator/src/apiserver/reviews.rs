//! The "can I?" and "who am I?" reviews: create-only resources the server
//! answers instead of storing, as `kubectl auth can-i`, `kubectl auth
//! whoami` and dashboards such as k9s ask them. They are answered by the
//! same RBAC policy that authorizes requests.

use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{json, Value};

use super::auth::attributes::{Attributes, Resource};
use super::auth::cache::PolicyCache;
use super::auth::{self, UserInfo};
use super::error::Cause;

/// Works out a review's `status` for the user asking.
pub type Answer =
    fn(review: &Value, user: &UserInfo, policy: &PolicyCache) -> Result<Value, Vec<Cause>>;

fn text<'a>(v: Option<&'a Value>, key: &str) -> &'a str {
    v.and_then(|v| v.get(key))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The request an access review's spec describes.
fn attributes(spec: Option<&Value>) -> Result<Attributes, Vec<Cause>> {
    let resource = spec.and_then(|s| s.get("resourceAttributes"));
    let non_resource = spec.and_then(|s| s.get("nonResourceAttributes"));
    match (resource, non_resource) {
        (Some(r), None) => Ok(Attributes {
            verb: text(Some(r), "verb").to_string(),
            path: String::new(),
            resource: Some(Resource {
                group: text(Some(r), "group").to_string(),
                resource: text(Some(r), "resource").to_string(),
                subresource: text(Some(r), "subresource").to_string(),
                namespace: text(Some(r), "namespace").to_string(),
                name: text(Some(r), "name").to_string(),
            }),
        }),
        (None, Some(n)) => Ok(Attributes {
            verb: text(Some(n), "verb").to_string(),
            path: text(Some(n), "path").to_string(),
            resource: None,
        }),
        _ => Err(vec![Cause::invalid(
            "spec.resourceAttributes",
            "",
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )]),
    }
}

fn verdict(policy: &PolicyCache, user: &UserInfo, a: &Attributes) -> Value {
    let (allowed, reason) = auth::decide(policy, user, a);
    if allowed {
        json!({"allowed": true, "reason": reason})
    } else {
        json!({"allowed": false})
    }
}

/// `authorization.k8s.io/v1` SelfSubjectAccessReview: may I?
pub fn access(review: &Value, user: &UserInfo, policy: &PolicyCache) -> Result<Value, Vec<Cause>> {
    let a = attributes(review.get("spec"))?;
    Ok(verdict(policy, user, &a))
}

/// `authorization.k8s.io/v1` SubjectAccessReview, and the namespaced
/// LocalSubjectAccessReview (`kubectl`-less tools ask these): may the user
/// the spec names?
pub fn subject_access(
    review: &Value,
    _asking: &UserInfo,
    policy: &PolicyCache,
) -> Result<Value, Vec<Cause>> {
    let spec = review.get("spec");
    let mut a = attributes(spec)?;
    let local = review
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    if let Some(ns) = local {
        match a.resource.as_mut() {
            Some(r) if r.namespace.is_empty() => r.namespace = ns.to_string(),
            Some(r) if r.namespace != ns => {
                return Err(vec![Cause::invalid(
                    "spec.resourceAttributes.namespace",
                    &r.namespace,
                    "must match metadata.namespace",
                )])
            }
            Some(_) => {}
            None => {
                return Err(vec![Cause::invalid(
                    "spec.nonResourceAttributes",
                    "",
                    "disallowed on this kind of request",
                )])
            }
        }
    }
    let name = text(spec, "user");
    let groups: Vec<String> = spec
        .and_then(|s| s.get("groups"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|g| g.as_str().map(String::from))
        .collect();
    if name.is_empty() && groups.is_empty() {
        return Err(vec![Cause::invalid(
            "spec.user",
            "",
            "at least one of user or group must be specified",
        )]);
    }
    // Groups are as the review gives them: no system:authenticated added.
    let subject = UserInfo {
        name: name.to_string(),
        uid: text(spec, "uid").to_string(),
        groups,
    };
    Ok(verdict(policy, &subject, &a))
}

/// `authorization.k8s.io/v1` SelfSubjectRulesReview: what may I do here?
pub fn rules(review: &Value, user: &UserInfo, policy: &PolicyCache) -> Result<Value, Vec<Cause>> {
    let namespace = review
        .pointer("/spec/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    if namespace.is_empty() {
        return Err(vec![Cause::required("spec.namespace")]);
    }
    let held = auth::rules_of(policy, user, namespace);
    let (urls, resources): (Vec<&PolicyRule>, Vec<&PolicyRule>) =
        held.iter().partition(|r| r.non_resource_urls.is_some());
    let resource_rules: Vec<Value> = resources
        .iter()
        .map(|r| {
            json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources,
                   "resourceNames": r.resource_names})
        })
        .collect();
    let url_rules: Vec<Value> = urls
        .iter()
        .map(|r| json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}))
        .collect();
    Ok(json!({
        "resourceRules": resource_rules,
        "nonResourceRules": url_rules,
        "incomplete": false,
    }))
}

/// `authentication.k8s.io/v1` SelfSubjectReview: who am I?
pub fn whoami(_review: &Value, user: &UserInfo, _: &PolicyCache) -> Result<Value, Vec<Cause>> {
    Ok(json!({"userInfo": {
        "username": user.name,
        "uid": user.uid,
        "groups": user.groups,
    }}))
}
