//! Who may do what: authentication (bearer tokens), impersonation
//! (`kubectl --as`), and authorization by RBAC, with Kubernetes' rules for
//! each and its Forbidden messages.

pub mod attributes;
pub mod cache;
pub mod defaults;
pub mod escalation;
pub mod rbac;
pub mod sa_token;
pub mod user;

use std::sync::Arc;

use axum::http::HeaderMap;
use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef};
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use attributes::{Attributes, Resource};
use cache::PolicyCache;
pub use user::{Tokens, UserInfo};

/// The user of a ServiceAccount token that verifies and whose account (and
/// bound Pod or Secret, if any) still exists with the uid it names.
pub async fn service_account_user(
    st: &super::ApiState,
    headers: &HeaderMap,
) -> Option<Arc<UserInfo>> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let bearer = value.strip_prefix("Bearer ")?.trim();
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let claims = st.sa_tokens.verify(bearer, now)?;
    let k = &claims.kubernetes;
    let account = &k.serviceaccount;
    let mut named = vec![("serviceaccounts", &account.name, &account.uid)];
    named.extend(k.pod.as_ref().map(|p| ("pods", &p.name, &p.uid)));
    named.extend(k.secret.as_ref().map(|s| ("secrets", &s.name, &s.uid)));
    for (plural, name, uid) in named {
        let live = live_uid(st, plural, &k.namespace, name).await.ok()??;
        if live != *uid {
            return None;
        }
    }
    Some(Arc::new(claims.user()))
}

/// The uid of a stored core/v1 object, or None when there is none: what a
/// ServiceAccount token names, both when it is issued and at each use.
pub(crate) async fn live_uid(
    st: &super::ApiState,
    plural: &str,
    namespace: &str,
    name: &str,
) -> ApiResult<Option<String>> {
    let res = st
        .registry
        .get("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))?;
    let obj = st
        .store
        .get(&res.key(Some(namespace), Some(name)))
        .await
        .map_err(|e| ApiError::from_store(e, plural, name))?;
    Ok(obj.map(|o| {
        o.value
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }))
}

/// Checks the request against RBAC; superusers pass without a look.
pub fn authorize(policy: &PolicyCache, user: &UserInfo, a: &Attributes) -> ApiResult<()> {
    if user.is_master() || policy.read().allows(user, a).is_some() {
        return Ok(());
    }
    Err(forbidden(user, a))
}

/// `kubectl auth can-i`'s answer: (allowed, reason).
pub fn decide(policy: &PolicyCache, user: &UserInfo, a: &Attributes) -> (bool, String) {
    if user.is_master() {
        return (true, format!("{} is a superuser", user::MASTERS));
    }
    match policy.read().allows(user, a) {
        Some(reason) => (true, reason),
        None => (false, String::new()),
    }
}

/// The rules `user` holds in `namespace`, for a rules review.
pub fn rules_of(policy: &PolicyCache, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
    if user.is_master() {
        return vec![
            PolicyRule {
                verbs: vec!["*".into()],
                api_groups: Some(vec!["*".into()]),
                resources: Some(vec!["*".into()]),
                ..PolicyRule::default()
            },
            PolicyRule {
                verbs: vec!["*".into()],
                non_resource_urls: Some(vec!["*".into()]),
                ..PolicyRule::default()
            },
        ];
    }
    policy.read().rules_of(user, namespace)
}

/// Kubernetes' Forbidden Status for a denied request.
fn forbidden(user: &UserInfo, a: &Attributes) -> ApiError {
    let who = &user.name;
    let Some(r) = &a.resource else {
        let mut e = ApiError::forbidden(format!(
            "forbidden: User {who:?} cannot {} path {:?}",
            a.verb, a.path
        ));
        e.details = Some(json!({}));
        return e;
    };
    let scope = if r.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace {:?}", r.namespace)
    };
    let why = format!(
        "User {who:?} cannot {} resource {:?} in API group {:?} {scope}",
        a.verb,
        a.resource_name(),
        r.group
    );
    forbidden_status(&r.group, &r.resource, &r.name, &why)
}

fn forbidden_status(group: &str, resource: &str, name: &str, why: &str) -> ApiError {
    let qualified = if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    };
    let message = if name.is_empty() {
        format!("{qualified} is forbidden: {why}")
    } else {
        format!("{qualified} {name:?} is forbidden: {why}")
    };
    let mut e = ApiError::forbidden(message);
    let mut details = json!({"kind": resource});
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    if !name.is_empty() {
        details["name"] = json!(name);
    }
    e.details = Some(details);
    e
}

const IMPERSONATE_USER: &str = "impersonate-user";
const IMPERSONATE_GROUP: &str = "impersonate-group";
const IMPERSONATE_UID: &str = "impersonate-uid";
const IMPERSONATE_EXTRA: &str = "impersonate-extra-";

/// The user a request acts as: `user`, or whom its `Impersonate-*` headers
/// name, if `user` may impersonate them.
pub fn impersonate(
    policy: &PolicyCache,
    user: Arc<UserInfo>,
    headers: &HeaderMap,
) -> ApiResult<Arc<UserInfo>> {
    let values = |name: &str| -> ApiResult<Vec<String>> {
        headers
            .get_all(name)
            .iter()
            .map(|v| {
                v.to_str().map(str::to_string).map_err(|_| {
                    ApiError::bad_request(format!("the {name} header is not valid text"))
                })
            })
            .collect()
    };
    let names = values(IMPERSONATE_USER)?;
    let groups = values(IMPERSONATE_GROUP)?;
    let uids = values(IMPERSONATE_UID)?;
    let extras = headers
        .keys()
        .any(|k| k.as_str().starts_with(IMPERSONATE_EXTRA));
    if names.is_empty() {
        if !groups.is_empty() || !uids.is_empty() || extras {
            return Err(ApiError::bad_request(
                "impersonating groups, a uid or extras needs Impersonate-User too",
            ));
        }
        return Ok(user);
    }
    if extras {
        return Err(ApiError::bad_request(
            "impersonating user extras (Impersonate-Extra-*) is not supported",
        ));
    }
    let [name] = names.as_slice() else {
        return Err(ApiError::bad_request(
            "only one Impersonate-User header may be given",
        ));
    };
    let may = |resource: &str, namespace: &str, target: &str| -> ApiResult<()> {
        let a = Attributes {
            verb: "impersonate".into(),
            path: String::new(),
            resource: Some(Resource {
                group: String::new(),
                resource: resource.into(),
                subresource: String::new(),
                namespace: namespace.into(),
                name: target.into(),
            }),
        };
        authorize(policy, &user, &a)
    };
    let mut impersonated_groups = groups.clone();
    match name
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    {
        Some((ns, sa)) => {
            may("serviceaccounts", ns, sa)?;
            if groups.is_empty() {
                impersonated_groups = vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{ns}"),
                ];
            }
        }
        None => may("users", "", name)?,
    }
    for g in &groups {
        may("groups", "", g)?;
    }
    for u in &uids {
        may("uids", "", u)?;
    }
    let uid = uids.first().cloned().unwrap_or_default();
    let mut target = UserInfo::new(name.as_str(), uid, impersonated_groups);
    if name == "system:anonymous" {
        target.groups.retain(|g| g != user::AUTHENTICATED);
    }
    tracing::debug!(user = %user.name, as_user = %target.name, "impersonating");
    Ok(Arc::new(target))
}

/// Refuses a Role, ClusterRole or binding that would give away more than
/// `user` holds, unless RBAC grants `escalate` (roles) or `bind` (bindings).
pub fn guard_escalation(
    policy: &PolicyCache,
    user: &UserInfo,
    resource: &str,
    namespace: &str,
    obj: &Value,
) -> ApiResult<()> {
    if user.is_master() {
        return Ok(());
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // One read guard for the whole check: a second read while a writer
    // waits could deadlock.
    let policy = policy.read();
    let allowed = |verb: &str, resource: &str, target: &str| {
        let a = Attributes {
            verb: verb.into(),
            path: String::new(),
            resource: Some(Resource {
                group: rbac::GROUP.into(),
                resource: resource.into(),
                subresource: String::new(),
                namespace: namespace.into(),
                name: target.into(),
            }),
        };
        policy.allows(user, &a).is_some()
    };
    let wanted: Vec<PolicyRule> = match resource {
        "roles" | "clusterroles" => {
            if allowed("escalate", resource, name) {
                return Ok(());
            }
            let rules = obj.get("rules").cloned().unwrap_or(Value::Null);
            serde_json::from_value::<Option<Vec<PolicyRule>>>(rules)
                .map_err(|e| ApiError::bad_request(format!("rules: {e}")))?
                .unwrap_or_default()
        }
        "rolebindings" | "clusterrolebindings" => {
            let role_ref: RoleRef = obj
                .get("roleRef")
                .cloned()
                .and_then(|r| serde_json::from_value(r).ok())
                .unwrap_or_default();
            let ref_resource = if role_ref.kind == "Role" {
                "roles"
            } else {
                "clusterroles"
            };
            if allowed("bind", ref_resource, &role_ref.name) {
                return Ok(());
            }
            match policy.role_rules(&role_ref, namespace) {
                Some(rules) => rules.into_iter().cloned().collect(),
                None => {
                    return Err(forbidden_status(
                        rbac::GROUP,
                        resource,
                        name,
                        &format!(
                            "user {:?} cannot bind {} {:?}: it does not exist, and binding it needs the bind verb",
                            user.name, role_ref.kind, role_ref.name
                        ),
                    ))
                }
            }
        }
        _ => return Ok(()),
    };
    // Worked out only now: `escalate` or `bind` above makes it unneeded.
    let held = policy.rules_of(user, namespace);
    let missing = escalation::uncovered(&held, &wanted);
    if missing.is_empty() {
        return Ok(());
    }
    let rendered: Vec<String> = missing.iter().map(escalation::render).collect();
    Err(forbidden_status(
        rbac::GROUP,
        resource,
        name,
        &format!(
            "user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
            user.name,
            user.groups
                .iter()
                .map(|g| format!("{g:?}"))
                .collect::<Vec<_>>()
                .join(" "),
            rendered.join("\n")
        ),
    ))
}
