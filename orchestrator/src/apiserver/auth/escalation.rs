//! Escalation prevention: a user may only write a role whose rules they
//! already hold, and only bind a role whose rules they hold, unless RBAC
//! grants them `escalate` or `bind` on it. Without this, anyone allowed to
//! edit roles in a namespace could grant themselves anything there.

use k8s_openapi::api::rbac::v1::PolicyRule;

use super::rbac::{listed as has, url_covers};

/// Whether `owned` covers a wanted resource `resource` ("pods", "pods/log",
/// "*/scale" or "*"): a wildcard is only covered by the same wildcard.
fn covers_resource(owned: &PolicyRule, resource: &str) -> bool {
    owned.resources.iter().flatten().any(|x| {
        x == "*"
            || x == resource
            || resource
                .split_once('/')
                .is_some_and(|(_, sub)| x.strip_prefix("*/") == Some(sub))
    })
}

fn covers_name(owned: &PolicyRule, name: Option<&str>) -> bool {
    match owned.resource_names.as_deref() {
        None | Some([]) => true,
        Some(names) => name.is_some_and(|n| names.iter().any(|x| x == n)),
    }
}

/// The parts of `wanted` no rule in `owned` covers, one verb, group,
/// resource and name (or URL) per rule.
pub fn uncovered(owned: &[PolicyRule], wanted: &[PolicyRule]) -> Vec<PolicyRule> {
    let mut missing = Vec::new();
    for rule in wanted {
        for verb in &rule.verbs {
            let verb_ok = |o: &&PolicyRule| has(Some(&o.verbs), verb);
            for url in rule.non_resource_urls.iter().flatten() {
                let covered = owned.iter().filter(verb_ok).any(|o| {
                    o.non_resource_urls
                        .iter()
                        .flatten()
                        .any(|u| url_covers(u, url))
                });
                if !covered {
                    missing.push(PolicyRule {
                        verbs: vec![verb.clone()],
                        non_resource_urls: Some(vec![url.clone()]),
                        ..PolicyRule::default()
                    });
                }
            }
            let names: Vec<Option<&str>> = match rule.resource_names.as_deref() {
                None | Some([]) => vec![None],
                Some(ns) => ns.iter().map(|n| Some(n.as_str())).collect(),
            };
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    for name in &names {
                        let covered = owned.iter().filter(verb_ok).any(|o| {
                            has(o.api_groups.as_ref(), group)
                                && covers_resource(o, resource)
                                && covers_name(o, *name)
                        });
                        if !covered {
                            missing.push(PolicyRule {
                                verbs: vec![verb.clone()],
                                api_groups: Some(vec![group.clone()]),
                                resources: Some(vec![resource.clone()]),
                                resource_names: name.map(|n| vec![n.to_string()]),
                                ..PolicyRule::default()
                            });
                        }
                    }
                }
            }
        }
    }
    missing
}

/// Kubernetes' rendering of a rule in escalation errors.
pub fn render(r: &PolicyRule) -> String {
    let list = |l: &Option<Vec<String>>| {
        l.iter()
            .flatten()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut parts = Vec::new();
    if r.non_resource_urls.is_some() {
        parts.push(format!("NonResourceURLs:[{}]", list(&r.non_resource_urls)));
    } else {
        parts.push(format!("APIGroups:[{}]", list(&r.api_groups)));
        parts.push(format!("Resources:[{}]", list(&r.resources)));
        if r.resource_names.is_some() {
            parts.push(format!("ResourceNames:[{}]", list(&r.resource_names)));
        }
    }
    parts.push(format!("Verbs:[{}]", list(&Some(r.verbs.clone()))));
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(v: serde_json::Value) -> Vec<PolicyRule> {
        serde_json::from_value(v).expect("literal rules")
    }

    #[test]
    fn only_rules_already_held_are_covered() {
        let owned = rules(json!([
            {"apiGroups": [""], "resources": ["pods", "*/log"], "verbs": ["get", "list"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["web"], "verbs": ["*"]},
            {"nonResourceURLs": ["/apis/*"], "verbs": ["get"]},
        ]));
        let fine = rules(json!([
            {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["list"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["web"], "verbs": ["delete"]},
            {"nonResourceURLs": ["/apis/apps"], "verbs": ["get"]},
        ]));
        assert!(uncovered(&owned, &fine).is_empty());
        let more = rules(json!([
            {"apiGroups": [""], "resources": ["pods", "secrets"], "verbs": ["get", "delete"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["*"], "verbs": ["get"]},
            {"nonResourceURLs": ["*"], "verbs": ["get"]},
        ]));
        let missing: Vec<String> = uncovered(&owned, &more).iter().map(render).collect();
        assert_eq!(
            missing,
            vec![
                r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}"#,
                r#"{APIGroups:[""], Resources:["pods"], Verbs:["delete"]}"#,
                r#"{APIGroups:[""], Resources:["secrets"], Verbs:["delete"]}"#,
                r#"{APIGroups:["apps"], Resources:["deployments"], Verbs:["get"]}"#,
                r#"{APIGroups:[""], Resources:["*"], Verbs:["get"]}"#,
                r#"{NonResourceURLs:["*"], Verbs:["get"]}"#,
            ]
        );
    }
}
