//! Role-based access control as Kubernetes defines it: the policy (Roles,
//! ClusterRoles and their bindings) and the pure functions that decide
//! whether it allows a request. Aggregated ClusterRoles are filled in by
//! `controllers::aggregation`; here every role is its stored rules.

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use serde_json::Value;

use super::attributes::Attributes;
use super::user::UserInfo;

pub const GROUP: &str = "rbac.authorization.k8s.io";
/// Where the four kinds are stored.
pub const STORE_PREFIX: &str = "/registry/rbac.authorization.k8s.io/";

/// The RBAC objects of the cluster, kept current from the store.
#[derive(Default, Debug)]
pub struct Policy {
    cluster_roles: BTreeMap<String, ClusterRole>,
    /// By (namespace, name).
    roles: BTreeMap<(String, String), Role>,
    cluster_bindings: BTreeMap<String, ClusterRoleBinding>,
    /// By namespace, then name.
    bindings: BTreeMap<String, BTreeMap<String, RoleBinding>>,
}

/// The binding a rule came to a user through, for the allow reason.
#[derive(Clone, Copy)]
pub enum Grant<'a> {
    Cluster(&'a ClusterRoleBinding),
    Namespaced(&'a RoleBinding),
}

impl Grant<'_> {
    fn describe(&self, user: &UserInfo) -> String {
        let (kind, name, role, subjects, ns) = match self {
            Grant::Cluster(b) => (
                "ClusterRoleBinding",
                b.metadata.name.clone().unwrap_or_default(),
                &b.role_ref,
                b.subjects.as_deref(),
                "",
            ),
            Grant::Namespaced(b) => {
                let ns = b.metadata.namespace.as_deref().unwrap_or_default();
                (
                    "RoleBinding",
                    format!("{}/{ns}", b.metadata.name.as_deref().unwrap_or_default()),
                    &b.role_ref,
                    b.subjects.as_deref(),
                    ns,
                )
            }
        };
        let to = subjects
            .unwrap_or_default()
            .iter()
            .find(|s| applies(s, user, ns))
            .map(|s| format!(" to {} {:?}", s.kind, s.name))
            .unwrap_or_default();
        format!(
            "RBAC: allowed by {kind} {name:?} of {} {:?}{to}",
            role.kind, role.name
        )
    }
}

impl Policy {
    /// Applies one stored change: `object` is None when the key was deleted.
    /// Keys outside the four kinds and undecodable objects are ignored (an
    /// undecodable binding grants nothing).
    pub fn apply(&mut self, key: &str, object: Option<&Value>) {
        let Some(rest) = key.strip_prefix(STORE_PREFIX) else {
            return;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        fn decode<T: serde::de::DeserializeOwned>(o: Option<&Value>) -> Option<T> {
            o.and_then(|v| match serde_json::from_value(v.clone()) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(error = %e, "an RBAC object that does not decode grants nothing");
                    None
                }
            })
        }
        match parts.as_slice() {
            ["clusterroles", name] => match decode(object) {
                Some(r) => {
                    self.cluster_roles.insert(name.to_string(), r);
                }
                None => {
                    self.cluster_roles.remove(*name);
                }
            },
            ["clusterrolebindings", name] => match decode(object) {
                Some(b) => {
                    self.cluster_bindings.insert(name.to_string(), b);
                }
                None => {
                    self.cluster_bindings.remove(*name);
                }
            },
            ["roles", ns, name] => {
                let k = (ns.to_string(), name.to_string());
                match decode(object) {
                    Some(r) => {
                        self.roles.insert(k, r);
                    }
                    None => {
                        self.roles.remove(&k);
                    }
                }
            }
            ["rolebindings", ns, name] => match decode(object) {
                Some(b) => {
                    self.bindings
                        .entry(ns.to_string())
                        .or_default()
                        .insert(name.to_string(), b);
                }
                None => {
                    if let Some(m) = self.bindings.get_mut(*ns) {
                        m.remove(*name);
                        if m.is_empty() {
                            self.bindings.remove(*ns);
                        }
                    }
                }
            },
            _ => {}
        }
    }

    /// The rules a role reference grants; None when the role does not exist.
    /// An aggregated ClusterRole's rules are those the aggregation
    /// controller wrote into it, as in Kubernetes.
    pub fn role_rules(&self, r: &RoleRef, namespace: &str) -> Option<Vec<&PolicyRule>> {
        let rules = match r.kind.as_str() {
            "Role" => self
                .roles
                .get(&(namespace.to_string(), r.name.clone()))?
                .rules
                .as_ref(),
            "ClusterRole" => self.cluster_roles.get(&r.name)?.rules.as_ref(),
            _ => return None,
        };
        Some(rules.into_iter().flatten().collect())
    }

    /// Calls `f` with every rule `user` holds in `namespace` ("" for the
    /// cluster-wide rules only) until it returns true; returns whether it did.
    pub fn visit<'a>(
        &'a self,
        user: &UserInfo,
        namespace: &str,
        f: &mut dyn FnMut(Grant<'a>, &'a PolicyRule) -> bool,
    ) -> bool {
        for b in self.cluster_bindings.values() {
            if !b.subjects.iter().flatten().any(|s| applies(s, user, "")) {
                continue;
            }
            // A ClusterRoleBinding may only name a ClusterRole.
            if b.role_ref.kind != "ClusterRole" {
                continue;
            }
            for rule in self.role_rules(&b.role_ref, "").into_iter().flatten() {
                if f(Grant::Cluster(b), rule) {
                    return true;
                }
            }
        }
        if namespace.is_empty() {
            return false;
        }
        for b in self
            .bindings
            .get(namespace)
            .into_iter()
            .flat_map(|m| m.values())
        {
            if !b
                .subjects
                .iter()
                .flatten()
                .any(|s| applies(s, user, namespace))
            {
                continue;
            }
            for rule in self
                .role_rules(&b.role_ref, namespace)
                .into_iter()
                .flatten()
            {
                if f(Grant::Namespaced(b), rule) {
                    return true;
                }
            }
        }
        false
    }

    /// Some(reason) when the policy allows the request.
    pub fn allows(&self, user: &UserInfo, a: &Attributes) -> Option<String> {
        let namespace = a
            .resource
            .as_ref()
            .map(|r| r.namespace.as_str())
            .unwrap_or("");
        let mut reason = None;
        self.visit(user, namespace, &mut |grant, rule| {
            if rule_allows(rule, a) {
                reason = Some(grant.describe(user));
                true
            } else {
                false
            }
        });
        reason
    }

    /// Every rule `user` holds in `namespace`, cluster-wide ones included.
    pub fn rules_of(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        let mut out: Vec<PolicyRule> = Vec::new();
        self.visit(user, namespace, &mut |_, rule| {
            if !out.contains(rule) {
                out.push(rule.clone());
            }
            false
        });
        out
    }
}

/// Whether a binding's subject is this user.
pub fn applies(s: &Subject, user: &UserInfo, binding_namespace: &str) -> bool {
    match s.kind.as_str() {
        "User" => s.name == user.name,
        "Group" => user.in_group(&s.name),
        "ServiceAccount" => {
            let ns = s
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_namespace);
            !ns.is_empty()
                && user
                    .name
                    .strip_prefix("system:serviceaccount:")
                    .and_then(|rest| rest.split_once(':'))
                    == Some((ns, s.name.as_str()))
        }
        _ => false,
    }
}

/// Whether a rule's list names `value` or holds the wildcard.
pub(super) fn listed(list: Option<&Vec<String>>, value: &str) -> bool {
    list.into_iter().flatten().any(|x| x == "*" || x == value)
}

/// Whether one rule allows the request.
pub fn rule_allows(rule: &PolicyRule, a: &Attributes) -> bool {
    if !listed(Some(&rule.verbs), &a.verb) {
        return false;
    }
    match &a.resource {
        Some(r) => {
            if !listed(rule.api_groups.as_ref(), &r.group) {
                return false;
            }
            let resource_ok = rule.resources.iter().flatten().any(|x| {
                x == "*"
                    || (r.subresource.is_empty() && *x == r.resource)
                    || (!r.subresource.is_empty()
                        && (x.split_once('/') == Some((r.resource.as_str(), &r.subresource))
                            || x.split_once('/') == Some(("*", &r.subresource))))
            });
            resource_ok
                && match rule.resource_names.as_deref() {
                    None | Some([]) => true,
                    Some(names) => names.contains(&r.name),
                }
        }
        None => rule
            .non_resource_urls
            .iter()
            .flatten()
            .any(|u| url_covers(u, &a.path)),
    }
}

/// `/apis/*` covers `/apis/apps/v1`; `*` covers everything.
pub fn url_covers(rule: &str, path: &str) -> bool {
    match rule.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => rule == path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;
    use serde_json::json;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo::new(name, "", groups.iter().map(|g| g.to_string()).collect())
    }

    fn req(method: Method, uri: &str) -> Attributes {
        Attributes::of(&method, &uri.parse().expect("a literal URI"))
    }

    fn policy(objects: &[(&str, Value)]) -> Policy {
        let mut p = Policy::default();
        for (key, o) in objects {
            p.apply(&format!("{STORE_PREFIX}{key}"), Some(o));
        }
        p
    }

    fn view_in_team() -> Policy {
        policy(&[
            (
                "clusterroles/reader",
                json!({"metadata": {"name": "reader"}, "rules": [
                    {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]},
                    {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["web"], "verbs": ["get"]},
                ]}),
            ),
            (
                "rolebindings/team/jane-reads",
                json!({"metadata": {"name": "jane-reads", "namespace": "team"},
                       "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "reader"},
                       "subjects": [{"kind": "User", "apiGroup": GROUP, "name": "jane"}]}),
            ),
            (
                "clusterrolebindings/ops-discovery",
                json!({"metadata": {"name": "ops-discovery"},
                       "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "paths"},
                       "subjects": [{"kind": "Group", "apiGroup": GROUP, "name": "ops"}]}),
            ),
            (
                "clusterroles/paths",
                json!({"metadata": {"name": "paths"}, "rules": [
                    {"nonResourceURLs": ["/apis/*", "/version"], "verbs": ["get"]},
                ]}),
            ),
        ])
    }

    #[test]
    fn a_role_binding_grants_its_role_in_its_namespace_only() {
        let p = view_in_team();
        let jane = user("jane", &[]);
        let why = p
            .allows(&jane, &req(Method::GET, "/api/v1/namespaces/team/pods"))
            .expect("allowed");
        assert!(
            why.contains(
                "RoleBinding \"jane-reads/team\" of ClusterRole \"reader\" to User \"jane\""
            ),
            "{why}"
        );
        assert!(p
            .allows(
                &jane,
                &req(Method::GET, "/api/v1/namespaces/team/pods/p/log")
            )
            .is_some());
        assert!(p
            .allows(&jane, &req(Method::GET, "/api/v1/namespaces/other/pods"))
            .is_none());
        assert!(p.allows(&jane, &req(Method::GET, "/api/v1/pods")).is_none());
        assert!(p
            .allows(
                &jane,
                &req(Method::DELETE, "/api/v1/namespaces/team/pods/p")
            )
            .is_none());
        assert!(
            p.allows(
                &jane,
                &req(Method::GET, "/api/v1/namespaces/team/pods/p/status")
            )
            .is_none(),
            "a subresource needs its own rule"
        );
        assert!(p
            .allows(
                &user("bob", &[]),
                &req(Method::GET, "/api/v1/namespaces/team/pods")
            )
            .is_none());
    }

    #[test]
    fn resource_names_and_non_resource_urls() {
        let p = view_in_team();
        let jane = user("jane", &[]);
        assert!(p
            .allows(
                &jane,
                &req(Method::GET, "/apis/apps/v1/namespaces/team/deployments/web")
            )
            .is_some());
        assert!(p
            .allows(
                &jane,
                &req(Method::GET, "/apis/apps/v1/namespaces/team/deployments/db")
            )
            .is_none());
        assert!(
            p.allows(
                &jane,
                &req(Method::GET, "/apis/apps/v1/namespaces/team/deployments")
            )
            .is_none(),
            "a list has no name to match"
        );
        let ops = user("sam", &["ops"]);
        assert!(p.allows(&ops, &req(Method::GET, "/apis/apps/v1")).is_some());
        assert!(p.allows(&ops, &req(Method::GET, "/version")).is_some());
        assert!(p.allows(&ops, &req(Method::GET, "/metrics")).is_none());
        assert!(p.allows(&ops, &req(Method::POST, "/version")).is_none());
    }

    #[test]
    fn deleting_a_binding_takes_its_grant_away() {
        let mut p = view_in_team();
        let jane = user("jane", &[]);
        let pods = req(Method::GET, "/api/v1/namespaces/team/pods");
        assert!(p.allows(&jane, &pods).is_some());
        p.apply(&format!("{STORE_PREFIX}rolebindings/team/jane-reads"), None);
        assert!(p.allows(&jane, &pods).is_none());
    }

    #[test]
    fn service_account_subjects_default_to_the_binding_namespace() {
        let p = policy(&[
            (
                "clusterroles/endpoints-reader",
                json!({"metadata": {"name": "endpoints-reader"},
                       "rules": [{"apiGroups": [""], "resources": ["endpoints"], "verbs": ["list"]}]}),
            ),
            (
                "rolebindings/team/bot",
                json!({"metadata": {"name": "bot", "namespace": "team"},
                       "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "endpoints-reader"},
                       "subjects": [{"kind": "ServiceAccount", "name": "bot"}]}),
            ),
        ]);
        let bot = user("system:serviceaccount:team:bot", &[]);
        assert!(p
            .allows(&bot, &req(Method::GET, "/api/v1/namespaces/team/endpoints"))
            .is_some());
        let other = user("system:serviceaccount:other:bot", &[]);
        assert!(p
            .allows(
                &other,
                &req(Method::GET, "/api/v1/namespaces/team/endpoints")
            )
            .is_none());
    }
}
