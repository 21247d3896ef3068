//! The ClusterRole aggregation controller: a ClusterRole with an
//! `aggregationRule` holds the rules of every ClusterRole its selectors
//! match, written into its `rules` as Kubernetes' controller writes them.
//! Authorization then reads plain rules, and `kubectl get clusterrole -o
//! yaml` shows what the role grants.

use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::{json, Map, Value};
use tracing::info;

use super::queue::WorkQueue;
use super::{api_code, new_queue, Action, ControllerError, Ctx, Reconciler};
use crate::apiserver::selectors::label_selector_matches;

pub const NAME: &str = "clusterrole-aggregation-controller";
/// Any ClusterRole change may change any aggregate: one key recomputes all.
const ALL: &str = "*";

/// The rules `role` should hold, or None when it aggregates nothing:
/// those of every other ClusterRole a selector matches, in name order,
/// each rule once.
pub fn aggregated_rules(role: &ClusterRole, all: &[Arc<ClusterRole>]) -> Option<Vec<PolicyRule>> {
    let selectors: Vec<Value> = role
        .aggregation_rule
        .as_ref()?
        .cluster_role_selectors
        .iter()
        .flatten()
        .filter_map(|s| serde_json::to_value(s).ok())
        .collect();
    let mut sources: Vec<&Arc<ClusterRole>> = all
        .iter()
        .filter(|o| o.metadata.name != role.metadata.name)
        .filter(|o| {
            let labels: Map<String, Value> = o
                .metadata
                .labels
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            selectors
                .iter()
                .any(|s| label_selector_matches(s, &labels).unwrap_or(false))
        })
        .collect();
    sources.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut rules: Vec<PolicyRule> = Vec::new();
    for rule in sources.iter().flat_map(|o| o.rules.iter().flatten()) {
        if !rules.contains(rule) {
            rules.push(rule.clone());
        }
    }
    Some(rules)
}

pub struct AggregationController {
    ctx: Arc<Ctx>,
}

impl AggregationController {
    pub fn register(ctx: &Arc<Ctx>) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = new_queue(ctx, NAME);
        let q = queue.clone();
        ctx.informers
            .cluster_roles
            .on_change(move |_, _| q.add(ALL.to_string()));
        (Arc::new(AggregationController { ctx: ctx.clone() }), queue)
    }
}

#[async_trait]
impl Reconciler for AggregationController {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn reconcile(&self, _key: &str) -> Result<Action, ControllerError> {
        let all = self.ctx.informers.cluster_roles.list();
        let api: Api<ClusterRole> = Api::all(self.ctx.client.clone());
        for role in &all {
            let Some(rules) = aggregated_rules(role, &all) else {
                continue;
            };
            if role.rules.as_deref().unwrap_or_default() == rules.as_slice() {
                continue;
            }
            let name = role.metadata.name.clone().unwrap_or_default();
            let patch = json!({"rules": rules});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => info!(clusterrole = %name, rules = rules.len(), "aggregated rules"),
                Err(e) if api_code(&e) == Some(404) => {}
                Err(e) => {
                    return Err(ControllerError::Api {
                        action: format!("aggregating the rules of ClusterRole {name}"),
                        source: e,
                    })
                }
            }
        }
        Ok(Action::AwaitChange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(v: Value) -> Arc<ClusterRole> {
        Arc::new(serde_json::from_value(v).expect("a literal ClusterRole"))
    }

    #[test]
    fn an_aggregate_holds_the_rules_of_the_roles_it_selects() {
        let monitoring = role(json!({"metadata": {"name": "monitoring"},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"aggregate-to-monitoring": "true"}}]},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}));
        let endpoints = role(
            json!({"metadata": {"name": "b-endpoints", "labels": {"aggregate-to-monitoring": "true"}},
            "rules": [{"apiGroups": [""], "resources": ["endpoints"], "verbs": ["list"]}]}),
        );
        let pods = role(
            json!({"metadata": {"name": "a-pods", "labels": {"aggregate-to-monitoring": "true"}},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
                      {"apiGroups": [""], "resources": ["endpoints"], "verbs": ["list"]}]}),
        );
        let other = role(json!({"metadata": {"name": "other"},
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]}));
        let all = vec![monitoring.clone(), endpoints.clone(), pods, other.clone()];
        let rules = aggregated_rules(&monitoring, &all).expect("an aggregate");
        let resources: Vec<&str> = rules
            .iter()
            .flat_map(|r| r.resources.iter().flatten())
            .map(String::as_str)
            .collect();
        // Its own hand-written rule is replaced, as Kubernetes replaces it.
        assert_eq!(resources, vec!["pods", "endpoints"]);
        assert!(aggregated_rules(&other, &all).is_none());
    }
}
