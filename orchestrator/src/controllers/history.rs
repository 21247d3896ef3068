//! ControllerRevisions: the template history of StatefulSets and
//! DaemonSets, as Kubernetes keeps it. One revision per distinct pod
//! template, named `<owner>-<template hash>`, controlled by its owner and
//! labelled like its pods, whose `data` is the strategic merge patch that
//! puts that template back (`{"spec":{"template":{…,"$patch":"replace"}}}`):
//! `kubectl rollout history` lists them and `kubectl rollout undo` applies
//! one. A StatefulSet also recreates its pods below the `partition` from the
//! current revision's template, which only the history still holds once the
//! spec has moved on.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use tracing::debug;

use super::informer::Informer;
use super::wiring::{self, Namespaced};
use super::{api_code, ControllerError, Ctx};

/// The label a StatefulSet's or DaemonSet's pod carries: the hash of the
/// template (revision) it was made from.
pub const HASH_LABEL: &str = "controller-revision-hash";

/// The label Kubernetes puts on a revision to carry its template hash.
pub const REVISION_HASH_LABEL: &str = "controller.kubernetes.io/hash";

/// Revisions kept when the owner does not say (`revisionHistoryLimit`).
const DEFAULT_HISTORY_LIMIT: i32 = 10;

/// The owner's side of its history: who it is and what it runs now.
pub struct Owner<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub controller_ref: OwnerReference,
    pub template: &'a PodTemplateSpec,
    pub hash: &'a str,
    /// `status.collisionCount`, which went into `hash`.
    pub collision_count: Option<i32>,
}

/// The revision hash `pod` was made from.
pub fn pod_hash(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(HASH_LABEL)
        .map(String::as_str)
}

pub fn revision_name(owner: &str, hash: &str) -> String {
    format!("{owner}-{hash}")
}

/// The patch that restores `template`, in the form `kubectl rollout undo`
/// sends back as a strategic merge patch.
pub fn template_data(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut t {
        m.insert("$patch".into(), Value::String("replace".into()));
    }
    json!({"spec": {"template": t}})
}

/// The pod template a revision restores, if its data holds one.
pub fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = rev.data.as_ref()?.0.pointer("/spec/template")?.clone();
    if let Value::Object(m) = &mut t {
        m.remove("$patch");
    }
    serde_json::from_value(t).ok()
}

/// The owner's revisions, oldest first.
pub fn revisions(ctx: &Ctx, owner: &Owner<'_>) -> Vec<Arc<ControllerRevision>> {
    let mut revs: Vec<Arc<ControllerRevision>> = ctx
        .informers
        .controllerrevisions
        .list_controlled_by(owner.uid)
        .into_iter()
        .filter(|r| r.metadata.namespace.as_deref() == Some(owner.namespace))
        .collect();
    revs.sort_by_key(|r| r.revision);
    revs
}

/// What recording the owner's current template takes.
#[derive(Debug, PartialEq)]
pub enum Record {
    /// The newest revision already holds it.
    Current,
    /// An older revision holds it (a rollback): it becomes the newest.
    Renumber { name: String, revision: i64 },
    /// No revision holds it yet.
    Create { revision: i64 },
    /// A revision of that name holds another template: the owner must bump
    /// its `collisionCount` so the hash changes.
    Collision,
}

/// Decides how to record `owner`'s template among `revs` (oldest first).
pub fn plan_record(revs: &[Arc<ControllerRevision>], owner: &Owner<'_>) -> Record {
    let name = revision_name(owner.name, owner.hash);
    let newest = revs.iter().map(|r| r.revision).max().unwrap_or(0);
    match revs
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(name.as_str()))
    {
        Some(r) if template_of(r).as_ref() != Some(owner.template) => Record::Collision,
        Some(r) if r.revision == newest => Record::Current,
        Some(_) => Record::Renumber {
            name,
            revision: newest + 1,
        },
        None => Record::Create {
            revision: newest + 1,
        },
    }
}

/// Records the owner's current template as its newest revision. On a hash
/// collision (see [`Record::Collision`]) it bumps the owner's
/// `collisionCount` instead and returns false: the owner's next pass, with
/// a new hash, records it.
pub async fn record<K: Namespaced>(
    ctx: &Ctx,
    owners: &Informer<K>,
    obj: &K,
    owner: &Owner<'_>,
) -> Result<bool, ControllerError> {
    let revs = revisions(ctx, owner);
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), owner.namespace);
    let cache = &ctx.informers.controllerrevisions;
    match plan_record(&revs, owner) {
        Record::Current => Ok(true),
        Record::Collision => {
            let bumped = json!({"collisionCount": owner.collision_count.unwrap_or(0) + 1});
            wiring::write_status(ctx, owners, obj, &bumped).await?;
            Ok(false)
        }
        Record::Renumber { name, revision } => {
            let patch = json!({"revision": revision});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(rev) => cache.assume(rev),
                Err(e) if api_code(&e) == Some(404) => {}
                Err(e) => {
                    return Err(ControllerError::Api {
                        action: format!("renumbering controllerrevision {name}"),
                        source: e,
                    })
                }
            }
            Ok(true)
        }
        Record::Create { revision } => {
            let name = revision_name(owner.name, owner.hash);
            let mut labels: BTreeMap<String, String> = owner
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(REVISION_HASH_LABEL.into(), owner.hash.into());
            let rev = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(owner.namespace.into()),
                    labels: Some(labels),
                    owner_references: Some(vec![owner.controller_ref.clone()]),
                    ..ObjectMeta::default()
                },
                data: Some(RawExtension(template_data(owner.template))),
                revision,
            };
            match api.create(&PostParams::default(), &rev).await {
                Ok(made) => {
                    debug!(revision = %name, number = revision, "recorded revision");
                    cache.assume(made);
                    Ok(true)
                }
                // Made meanwhile (the cache was behind): the next pass sees it.
                Err(e) if api_code(&e) == Some(409) => Ok(true),
                Err(e) => Err(ControllerError::Api {
                    action: format!("creating controllerrevision {name}"),
                    source: e,
                }),
            }
        }
    }
}

/// The revisions beyond `limit` that nothing uses any more, oldest first.
pub fn beyond_limit<'a>(
    revs: &'a [Arc<ControllerRevision>],
    in_use: &HashSet<String>,
    limit: i32,
) -> Vec<&'a Arc<ControllerRevision>> {
    let idle: Vec<&Arc<ControllerRevision>> = revs
        .iter()
        .filter(|r| {
            r.metadata
                .name
                .as_deref()
                .is_some_and(|n| !in_use.contains(n))
        })
        .collect();
    let excess = idle.len().saturating_sub(limit.max(0) as usize);
    idle.into_iter().take(excess).collect()
}

/// Revision names still in use: the owner's current template's, `also`,
/// and those its `pods` were made from.
fn in_use<'p>(
    owner: &Owner<'_>,
    pods: impl IntoIterator<Item = &'p Arc<Pod>>,
    also: impl IntoIterator<Item = String>,
) -> HashSet<String> {
    let mut names: HashSet<String> = also.into_iter().collect();
    names.insert(revision_name(owner.name, owner.hash));
    names.extend(
        pods.into_iter()
            .filter_map(|p| pod_hash(p))
            .map(|h| revision_name(owner.name, h)),
    );
    names
}

/// Deletes the owner's idle revisions beyond `limit` (the owner's
/// `revisionHistoryLimit`, 10 when unset). In use, and kept: the owner's
/// current template, `also` (revision names its status holds) and any of
/// its `pods`' revisions.
pub async fn prune(
    ctx: &Ctx,
    owner: &Owner<'_>,
    pods: impl IntoIterator<Item = &Arc<Pod>>,
    also: impl IntoIterator<Item = String>,
    limit: Option<i32>,
) -> Result<(), ControllerError> {
    let in_use = in_use(owner, pods, also);
    let limit = limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
    let revs = revisions(ctx, owner);
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), owner.namespace);
    for rev in beyond_limit(&revs, &in_use, limit) {
        let name = rev.metadata.name.clone().unwrap_or_default();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => ctx.informers.controllerrevisions.assume_deleted(rev),
            Err(e) if api_code(&e) == Some(404) => {
                ctx.informers.controllerrevisions.assume_deleted(rev)
            }
            Err(e) => {
                return Err(ControllerError::Api {
                    action: format!("deleting controllerrevision {name}"),
                    source: e,
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_string(), "db".to_string())].into()),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "main".into(),
                    image: Some(image.into()),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
        }
    }

    fn rev(name: &str, revision: i64, image: &str) -> Arc<ControllerRevision> {
        Arc::new(ControllerRevision {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            data: Some(RawExtension(template_data(&template(image)))),
            revision,
        })
    }

    fn owner<'a>(t: &'a PodTemplateSpec, hash: &'a str) -> Owner<'a> {
        Owner {
            namespace: "default",
            name: "db",
            uid: "uid-db",
            controller_ref: OwnerReference::default(),
            template: t,
            hash,
            collision_count: None,
        }
    }

    #[test]
    fn data_is_the_replace_patch_kubectl_applies_and_reads_back() {
        let t = template("v1.wasm");
        let data = template_data(&t);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        assert_eq!(
            data["spec"]["template"]["spec"]["containers"][0]["image"],
            "v1.wasm"
        );
        assert_eq!(template_of(&rev("db-a", 1, "v1.wasm")), Some(t));
    }

    #[test]
    fn a_new_template_gets_the_next_number_and_an_old_one_is_renumbered() {
        let (v1, v2, v3) = (
            template("v1.wasm"),
            template("v2.wasm"),
            template("v3.wasm"),
        );
        let revs = vec![rev("db-a", 1, "v1.wasm"), rev("db-b", 2, "v2.wasm")];
        assert_eq!(plan_record(&revs, &owner(&v2, "b")), Record::Current);
        assert_eq!(
            plan_record(&revs, &owner(&v3, "c")),
            Record::Create { revision: 3 }
        );
        // Rolled back to v1: its revision becomes the newest, as in Kubernetes.
        assert_eq!(
            plan_record(&revs, &owner(&v1, "a")),
            Record::Renumber {
                name: "db-a".into(),
                revision: 3
            }
        );
        // Same name, other template: the hash collided.
        assert_eq!(plan_record(&revs, &owner(&v3, "a")), Record::Collision);
        assert_eq!(
            plan_record(&[], &owner(&v1, "a")),
            Record::Create { revision: 1 }
        );
    }

    #[test]
    fn pruning_keeps_the_limit_and_whatever_is_in_use() {
        let revs: Vec<_> = (1..=5)
            .map(|i| rev(&format!("db-{i}"), i, "x.wasm"))
            .collect();
        let in_use: HashSet<String> = ["db-1".to_string(), "db-5".to_string()].into();
        let doomed: Vec<&str> = beyond_limit(&revs, &in_use, 1)
            .iter()
            .filter_map(|r| r.metadata.name.as_deref())
            .collect();
        assert_eq!(doomed, ["db-2", "db-3"], "oldest idle first, db-4 kept");
        assert!(beyond_limit(&revs, &in_use, 10).is_empty());
    }

    #[test]
    fn in_use_is_the_template_the_status_and_every_pods_revision() {
        let t = template("v3.wasm");
        let pod = |hash: &str| {
            let mut p = Pod::default();
            p.metadata.labels = Some([(HASH_LABEL.to_string(), hash.to_string())].into());
            Arc::new(p)
        };
        let pods = [pod("a"), pod("b"), Arc::new(Pod::default())];
        let names = in_use(&owner(&t, "c"), &pods, ["db-x".to_string()]);
        let mut names: Vec<String> = names.into_iter().collect();
        names.sort();
        assert_eq!(names, ["db-a", "db-b", "db-c", "db-x"]);
    }
}
