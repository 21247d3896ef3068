//! Filter and score, as pure functions over a snapshot: which nodes can take
//! a pod, and which of those it should go to.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, NodeSelector, NodeSelectorRequirement, Pod, Toleration};
use shoal_sdk::quantity;

/// What a node has left for new pods.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub cpu_millis: i64,
    pub memory: i64,
    pub pods: i64,
}

impl Usage {
    /// What is left after `used` is placed here.
    pub fn take(&mut self, used: &Usage) {
        self.cpu_millis -= used.cpu_millis;
        self.memory -= used.memory;
        self.pods -= used.pods;
    }
}

/// A pod's requests: explicit requests, else limits (Kubernetes defaults
/// requests to limits), summed over its containers; init containers count
/// by their maximum, since they run one at a time.
pub fn requests(pod: &Pod) -> Usage {
    let Some(spec) = &pod.spec else {
        return Usage {
            pods: 1,
            ..Default::default()
        };
    };
    let one = |c: &k8s_openapi::api::core::v1::Container, name: &str| -> i64 {
        let res = c.resources.as_ref();
        let q = res
            .and_then(|r| r.requests.as_ref())
            .and_then(|m| m.get(name))
            .or_else(|| {
                res.and_then(|r| r.limits.as_ref())
                    .and_then(|m| m.get(name))
            });
        match (q, name) {
            (Some(q), "cpu") => quantity::cpu_millis(&q.0).unwrap_or(0),
            (Some(q), _) => quantity::base_units(&q.0).unwrap_or(0),
            (None, _) => 0,
        }
    };
    let sum = |name: &str| spec.containers.iter().map(|c| one(c, name)).sum::<i64>();
    let init_max = |name: &str| {
        spec.init_containers
            .iter()
            .flatten()
            .map(|c| one(c, name))
            .max()
            .unwrap_or(0)
    };
    Usage {
        cpu_millis: sum("cpu").max(init_max("cpu")),
        memory: sum("memory").max(init_max("memory")),
        pods: 1,
    }
}

pub fn allocatable(node: &Node) -> Usage {
    let a = node
        .status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
    let get = |name: &str, cpu: bool| -> i64 {
        match a.and_then(|m| m.get(name)) {
            Some(q) if cpu => quantity::cpu_millis(&q.0).unwrap_or(0),
            Some(q) => quantity::base_units(&q.0).unwrap_or(0),
            None => 0,
        }
    };
    Usage {
        cpu_millis: get("cpu", true),
        memory: get("memory", false),
        pods: get("pods", false),
    }
}

fn node_labels(node: &Node) -> BTreeMap<String, String> {
    node.metadata.labels.clone().unwrap_or_default()
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.clone().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Why a node cannot take a pod, as Kubernetes words it in FailedScheduling.
pub fn filter(
    pod: &Pod,
    node: &Node,
    free: &Usage,
    extra_selector: &BTreeMap<String, String>,
) -> Result<(), String> {
    let status = node.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if !ready {
        return Err("node(s) were not ready".into());
    }
    matches_node(pod, node, extra_selector)?;
    let want = requests(pod);
    if free.pods < want.pods {
        return Err("Too many pods".into());
    }
    if free.cpu_millis < want.cpu_millis {
        return Err("Insufficient cpu".into());
    }
    if free.memory < want.memory {
        return Err("Insufficient memory".into());
    }
    Ok(())
}

/// Whether a pod may run on a node at all, readiness and room aside:
/// unschedulable, taints, node selector and required node affinity.
pub fn matches_node(
    pod: &Pod,
    node: &Node,
    extra_selector: &BTreeMap<String, String>,
) -> Result<(), String> {
    let spec = pod.spec.clone().unwrap_or_default();
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
        && !tolerates(
            &spec.tolerations.clone().unwrap_or_default(),
            "node.kubernetes.io/unschedulable",
            None,
            "NoSchedule",
        )
    {
        return Err("node(s) were unschedulable".into());
    }
    let tolerations = spec.tolerations.clone().unwrap_or_default();
    for t in node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
    {
        if (t.effect == "NoSchedule" || t.effect == "NoExecute")
            && !tolerates(&tolerations, &t.key, t.value.as_deref(), &t.effect)
        {
            return Err(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.unwrap_or_default()
            ));
        }
    }
    let labels = node_labels(node);
    let wanted = spec
        .node_selector
        .clone()
        .unwrap_or_default()
        .into_iter()
        .chain(extra_selector.clone());
    for (k, v) in wanted {
        if labels.get(&k) != Some(&v) {
            return Err("node(s) didn't match Pod's node affinity/selector".into());
        }
    }
    if let Some(required) = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
    {
        if !selects(required, node) {
            return Err("node(s) didn't match Pod's node affinity/selector".into());
        }
    }
    Ok(())
}

/// Whether a required node selector (a pod's node affinity, a
/// PersistentVolume's) admits `node`: terms are ORed, the requirements
/// inside one term ANDed.
pub fn selects(required: &NodeSelector, node: &Node) -> bool {
    let labels = node_labels(node);
    let name = node.metadata.name.clone().unwrap_or_default();
    required.node_selector_terms.iter().any(|term| {
        term.match_expressions
            .iter()
            .flatten()
            .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
            && term
                .match_fields
                .iter()
                .flatten()
                .all(|r| r.key != "metadata.name" || requirement_matches(r, Some(&name)))
    })
}

fn tolerates(tolerations: &[Toleration], key: &str, value: Option<&str>, effect: &str) -> bool {
    tolerations
        .iter()
        .any(|t| toleration_matches(t, key, value, effect))
}

/// Whether one toleration covers the taint `key=value:effect`.
pub fn toleration_matches(t: &Toleration, key: &str, value: Option<&str>, effect: &str) -> bool {
    let effect_ok = t
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == effect);
    let key_ok = t.key.as_deref().is_none_or(|k| k.is_empty() || k == key);
    let op = t.operator.as_deref().unwrap_or("Equal");
    let value_ok = op == "Exists" || t.value.as_deref().unwrap_or("") == value.unwrap_or("");
    // An empty key with Exists tolerates everything.
    effect_ok
        && key_ok
        && value_ok
        && (t.key.as_deref().is_some_and(|k| !k.is_empty()) || op == "Exists")
}

/// How the scheduler ranks feasible nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scoring {
    /// Spread load: prefer the node with the most room left (Kubernetes' default).
    LeastAllocated,
    /// Bin-pack: prefer the fullest node that still fits, so others can scale to zero.
    MostAllocated,
}

/// Score 0–100 from the fraction of CPU and memory that would be in use.
pub fn score(scoring: Scoring, alloc: &Usage, free: &Usage, pod: &Usage) -> i64 {
    let frac = |total: i64, left: i64, want: i64| -> f64 {
        if total <= 0 {
            return 0.0;
        }
        ((total - left + want) as f64 / total as f64).clamp(0.0, 1.0)
    };
    let used = (frac(alloc.cpu_millis, free.cpu_millis, pod.cpu_millis)
        + frac(alloc.memory, free.memory, pod.memory))
        / 2.0;
    let s = match scoring {
        Scoring::LeastAllocated => 1.0 - used,
        Scoring::MostAllocated => used,
    };
    (s * 100.0).round() as i64
}

/// Picks a node for `pod`, or explains every node's refusal in Kubernetes'
/// "0/N nodes are available: …" form.
pub fn pick(
    pod: &Pod,
    nodes: &[Node],
    free: &HashMap<String, Usage>,
    extra_selector: &BTreeMap<String, String>,
    scoring: Scoring,
) -> Result<String, String> {
    let want = requests(pod);
    // (score, pods the node would hold, name)
    let mut best: Option<(i64, i64, String)> = None;
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        let alloc = allocatable(node);
        let left = free.get(&name).cloned().unwrap_or_else(|| alloc.clone());
        match filter(pod, node, &left, extra_selector) {
            Ok(()) => {
                let s = score(scoring, &alloc, &left, &want);
                // Pods without requests score alike everywhere: between
                // equal scores, the pod count decides (fewest pods when
                // spreading, most when packing), then the lexically first
                // name, so placement is repeatable.
                let held = alloc.pods - left.pods;
                let better = |(bs, bh, bn): &(i64, i64, String)| {
                    let fewer = match scoring {
                        Scoring::LeastAllocated => held < *bh,
                        Scoring::MostAllocated => held > *bh,
                    };
                    s > *bs || (s == *bs && (fewer || (held == *bh && name < *bn)))
                };
                if best.as_ref().is_none_or(better) {
                    best = Some((s, held, name));
                }
            }
            Err(why) => *reasons.entry(why).or_default() += 1,
        }
    }
    match best {
        Some((_, _, name)) => Ok(name),
        None => {
            let parts: Vec<String> = reasons
                .iter()
                .map(|(why, n)| format!("{n} {why}"))
                .collect();
            let mut msg = format!("0/{} nodes are available", nodes.len());
            if !parts.is_empty() {
                msg.push_str(": ");
                msg.push_str(&parts.join(", "));
            }
            msg.push('.');
            Err(msg)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, extra: serde_json::Value) -> Node {
        let mut n = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "allocatable": {"cpu": "2", "memory": "1Gi", "pods": "1000"}}});
        json_patch::merge(&mut n, &extra);
        serde_json::from_value(n).expect("node")
    }

    fn pod(extra: serde_json::Value) -> Pod {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x",
            "resources": {"requests": {"cpu": "500m", "memory": "100Mi"}}}]}});
        json_patch::merge(&mut p, &extra);
        serde_json::from_value(p).expect("pod")
    }

    #[test]
    fn filters_explain_themselves() {
        let nodes = vec![
            node(
                "a",
                json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            ),
            node(
                "b",
                json!({"spec": {"taints": [{"key": "edge", "value": "yes", "effect": "NoSchedule"}]}}),
            ),
            node("c", json!({"status": {"allocatable": {"cpu": "100m"}}})),
        ];
        let err = pick(
            &pod(json!({})),
            &nodes,
            &HashMap::new(),
            &BTreeMap::new(),
            Scoring::LeastAllocated,
        )
        .expect_err("no node fits");
        assert_eq!(err, "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {edge: yes}, 1 node(s) were not ready.");
        let tolerant =
            pod(json!({"spec": {"tolerations": [{"key": "edge", "operator": "Exists"}]}}));
        assert_eq!(
            pick(
                &tolerant,
                &nodes,
                &HashMap::new(),
                &BTreeMap::new(),
                Scoring::LeastAllocated
            ),
            Ok("b".into())
        );
    }

    #[test]
    fn selectors_affinity_and_scoring() {
        let nodes = vec![
            node("a", json!({"metadata": {"labels": {"zone": "x"}}})),
            node("b", json!({"metadata": {"labels": {"zone": "y"}}})),
        ];
        let sel = pod(json!({"spec": {"nodeSelector": {"zone": "y"}}}));
        assert_eq!(
            pick(
                &sel,
                &nodes,
                &HashMap::new(),
                &BTreeMap::new(),
                Scoring::LeastAllocated
            ),
            Ok("b".into())
        );
        let aff = pod(
            json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["y"]}]}]}}}}}),
        );
        assert_eq!(
            pick(
                &aff,
                &nodes,
                &HashMap::new(),
                &BTreeMap::new(),
                Scoring::LeastAllocated
            ),
            Ok("a".into())
        );
        // a is half full: least-allocated spreads to b, most-allocated packs onto a.
        let mut free = HashMap::new();
        free.insert(
            "a".to_string(),
            Usage {
                cpu_millis: 1000,
                memory: 512 * 1024 * 1024,
                pods: 999,
            },
        );
        let p = pod(json!({}));
        assert_eq!(
            pick(&p, &nodes, &free, &BTreeMap::new(), Scoring::LeastAllocated),
            Ok("b".into())
        );
        assert_eq!(
            pick(&p, &nodes, &free, &BTreeMap::new(), Scoring::MostAllocated),
            Ok("a".into())
        );
    }
}
