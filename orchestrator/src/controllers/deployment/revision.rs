//! A Deployment's ReplicaSets as revisions: the pod-template hash that
//! names each, the revision annotations `kubectl rollout history|undo`
//! read, and which old revisions history keeps.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;

pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Set on a ReplicaSet once a rollout to it completed: the revision an
/// automatic rollback returns to.
pub const ROLLED_OUT: &str = "shoal.dev/rolled-out";

/// Deployment annotations that stay on the Deployment.
const NOT_COPIED: &[&str] = &[
    REVISION,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deployment.kubernetes.io/revision-history",
    "kubectl.kubernetes.io/last-applied-configuration",
];

/// Kubernetes' alphabet for generated name suffixes: no vowels, no
/// look-alike digits, so no words and no confusion.
const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// FNV-1a over the template's canonical JSON (and the collision count),
/// spelled in the safe alphabet. Same template, same name, on any server.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    feed(
        serde_json::to_string(template)
            .unwrap_or_default()
            .as_bytes(),
    );
    if let Some(c) = collision_count {
        feed(&c.to_le_bytes());
    }
    h.to_string()
        .bytes()
        .map(|b| SAFE[usize::from(b) % SAFE.len()] as char)
        .collect()
}

/// A ReplicaSet's template without the hash label, to compare with its
/// Deployment's.
pub fn template_without_hash(rs: &ReplicaSet) -> PodTemplateSpec {
    let mut t = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    if let Some(m) = t.metadata.as_mut() {
        if let Some(l) = m.labels.as_mut() {
            l.remove(HASH_LABEL);
            if l.is_empty() {
                m.labels = None;
            }
        }
    }
    t
}

pub fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

pub fn max_revision(sets: &[Arc<ReplicaSet>]) -> i64 {
    sets.iter().map(|r| revision_of(r)).max().unwrap_or(0)
}

/// The ReplicaSet running the Deployment's current template, if any: by
/// name first (the hash names it), else by template.
pub fn find_new(d: &Deployment, name: &str, sets: &[Arc<ReplicaSet>]) -> Option<Arc<ReplicaSet>> {
    let template = d
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    sets.iter()
        .find(|rs| rs.metadata.name.as_deref() == Some(name))
        .or_else(|| sets.iter().find(|rs| template_without_hash(rs) == template))
        .cloned()
}

/// The annotations a ReplicaSet carries for revision `revision` of `d`.
pub fn annotations_for(
    d: &Deployment,
    current: Option<&BTreeMap<String, String>>,
    revision: i64,
    replicas: i32,
    max_replicas: i32,
) -> BTreeMap<String, String> {
    let mut out = current.cloned().unwrap_or_default();
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if !NOT_COPIED.contains(&k.as_str()) {
            out.insert(k.clone(), v.clone());
        }
    }
    out.insert(REVISION.into(), revision.to_string());
    out.insert(DESIRED_REPLICAS.into(), replicas.to_string());
    out.insert(MAX_REPLICAS.into(), max_replicas.to_string());
    out
}

/// Old ReplicaSets past `limit` that are scaled to zero and empty, oldest
/// revision first: the ones history cleanup deletes.
pub fn beyond_history(old: &[Arc<ReplicaSet>], limit: i32) -> Vec<Arc<ReplicaSet>> {
    let mut idle: Vec<Arc<ReplicaSet>> = old
        .iter()
        .filter(|rs| {
            rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) == 0
                && rs.status.as_ref().map_or(0, |s| s.replicas) == 0
                && rs.metadata.deletion_timestamp.is_none()
        })
        .cloned()
        .collect();
    let keep = limit.max(0) as usize;
    if idle.len() <= keep {
        return Vec::new();
    }
    idle.sort_by_key(|rs| revision_of(rs));
    idle.truncate(idle.len() - keep);
    idle
}

/// The newest old revision whose rollout once completed: where an
/// automatic rollback goes.
pub fn last_good(old: &[Arc<ReplicaSet>]) -> Option<Arc<ReplicaSet>> {
    old.iter()
        .filter(|rs| {
            rs.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.get(ROLLED_OUT).map(String::as_str) == Some("true"))
        })
        .max_by_key(|rs| revision_of(rs))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": image}]},
        }))
        .unwrap_or_default()
    }

    fn rs(name: &str, rev: i64, replicas: i32) -> Arc<ReplicaSet> {
        Arc::new(ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some([(REVISION.to_string(), rev.to_string())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                ..ReplicaSetSpec::default()
            }),
            status: None,
        })
    }

    #[test]
    fn hashes_are_stable_safe_and_change_with_the_template() {
        let a = template_hash(&template("v1"), None);
        assert_eq!(a, template_hash(&template("v1"), None));
        assert_ne!(a, template_hash(&template("v2"), None));
        assert_ne!(a, template_hash(&template("v1"), Some(1)));
        assert!(a.bytes().all(|b| SAFE.contains(&b)), "{a}");
    }

    #[test]
    fn history_keeps_the_newest_idle_revisions() {
        let old = vec![rs("a", 1, 0), rs("b", 2, 0), rs("c", 3, 0), rs("d", 4, 2)];
        let gone: Vec<_> = beyond_history(&old, 1)
            .iter()
            .map(|r| r.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(gone, ["a", "b"]);
        assert!(beyond_history(&old, 10).is_empty());
    }
}
