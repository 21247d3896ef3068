//! A StatefulSet's `volumeClaimTemplates`: pod `i` of set `web` mounts the
//! claim `<template>-web-<i>`, made before the pod and kept when the pod
//! goes, so a replacement finds its predecessor's data. What happens to the
//! claims when the set is deleted or scaled down follows
//! `persistentVolumeClaimRetentionPolicy` (default: keep them).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, PodSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

fn templates(sts: &StatefulSet) -> &[PersistentVolumeClaim] {
    sts.spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_deref())
        .unwrap_or_default()
}

fn template_name(t: &PersistentVolumeClaim) -> &str {
    t.metadata.name.as_deref().unwrap_or_default()
}

/// The claim pod `i` mounts for template `t`.
pub fn claim_name(t: &PersistentVolumeClaim, set: &str, i: i32) -> String {
    format!("{}-{set}-{i}", template_name(t))
}

fn retention(
    sts: &StatefulSet,
    when: fn(
        &k8s_openapi::api::apps::v1::StatefulSetPersistentVolumeClaimRetentionPolicy,
    ) -> Option<&String>,
) -> bool {
    sts.spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref())
        .and_then(when)
        .map(String::as_str)
        == Some("Delete")
}

/// The claims pod `i` needs, as they would be made. Under `whenDeleted:
/// Delete` the set owns them, so deleting the set deletes them too.
pub fn claims_for(sts: &StatefulSet, i: i32, owner: &OwnerReference) -> Vec<PersistentVolumeClaim> {
    let set = sts.metadata.name.as_deref().unwrap_or_default();
    let selector_labels = sts
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    let owned = retention(sts, |p| p.when_deleted.as_ref());
    templates(sts)
        .iter()
        .map(|t| {
            let mut c = t.clone();
            c.metadata.name = Some(claim_name(t, set, i));
            c.metadata.namespace = sts.metadata.namespace.clone();
            let labels: &mut BTreeMap<String, String> =
                c.metadata.labels.get_or_insert_with(BTreeMap::new);
            for (k, v) in &selector_labels {
                labels.entry(k.clone()).or_insert_with(|| v.clone());
            }
            c.metadata.owner_references = owned.then(|| {
                vec![OwnerReference {
                    controller: Some(false),
                    ..owner.clone()
                }]
            });
            c.status = None;
            c
        })
        .collect()
}

/// Points the pod's volumes named after each template at pod `i`'s claim,
/// adding them where the template does not declare them.
pub fn mount_claims(spec: &mut PodSpec, sts: &StatefulSet, i: i32) {
    let set = sts.metadata.name.as_deref().unwrap_or_default();
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    for t in templates(sts) {
        let source = PersistentVolumeClaimVolumeSource {
            claim_name: claim_name(t, set, i),
            read_only: None,
        };
        let volume = Volume {
            name: template_name(t).to_string(),
            persistent_volume_claim: Some(source),
            ..Volume::default()
        };
        match volumes.iter_mut().find(|v| v.name == volume.name) {
            Some(v) => *v = volume,
            None => volumes.push(volume),
        }
    }
}

/// Under `whenScaled: Delete`, the claims of ordinals at or above
/// `replicas` whose pods are gone.
pub fn scaled_away<'a>(
    sts: &StatefulSet,
    replicas: i32,
    claims: impl Iterator<Item = &'a PersistentVolumeClaim>,
    has_pod: impl Fn(i32) -> bool,
) -> Vec<String> {
    if !retention(sts, |p| p.when_scaled.as_ref()) {
        return Vec::new();
    }
    let set = sts.metadata.name.as_deref().unwrap_or_default();
    let prefixes: Vec<String> = templates(sts)
        .iter()
        .map(|t| format!("{}-{set}-", template_name(t)))
        .collect();
    claims
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .filter_map(|c| c.metadata.name.clone())
        .filter(|name| {
            prefixes.iter().any(|p| {
                name.strip_prefix(p.as_str())
                    .and_then(|rest| rest.parse::<i32>().ok())
                    .is_some_and(|i| i >= replicas && !has_pod(i))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(policy: serde_json::Value) -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "s1"},
            "spec": {"serviceName": "web", "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "a"}]}},
                "persistentVolumeClaimRetentionPolicy": policy,
                "volumeClaimTemplates": [{"metadata": {"name": "data", "labels": {"tier": "db"}},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}
        }))
        .expect("test set")
    }

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            name: "web".into(),
            uid: "s1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    #[test]
    fn each_pod_gets_its_own_claim() {
        let sts = set(json!({}));
        let claims = claims_for(&sts, 2, &owner());
        assert_eq!(claims[0].metadata.name.as_deref(), Some("data-web-2"));
        let labels = claims[0].metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(labels.get("tier").map(String::as_str), Some("db"));
        assert!(claims[0].metadata.owner_references.is_none());
        let mut spec = sts
            .spec
            .clone()
            .and_then(|s| s.template.spec)
            .unwrap_or_default();
        mount_claims(&mut spec, &sts, 2);
        let v = &spec.volumes.unwrap_or_default()[0];
        assert_eq!(v.name, "data");
        assert_eq!(
            v.persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            Some("data-web-2")
        );
    }

    #[test]
    fn retention_policy_decides_who_deletes_claims() {
        let keep = set(json!({}));
        let gone = set(json!({"whenDeleted": "Delete", "whenScaled": "Delete"}));
        assert!(claims_for(&gone, 0, &owner())[0]
            .metadata
            .owner_references
            .is_some());
        let existing: Vec<PersistentVolumeClaim> = (0..4)
            .map(|i| claims_for(&keep, i, &owner()).remove(0))
            .collect();
        let no_pod_3 = |i: i32| i != 3;
        assert!(scaled_away(&keep, 2, existing.iter(), no_pod_3).is_empty());
        assert_eq!(
            scaled_away(&gone, 2, existing.iter(), no_pod_3),
            ["data-web-3"]
        );
    }
}
