//! The Deployment controller's writes to ReplicaSets: creating the one for
//! a new template, resizing, stamping revisions, and trimming history.
//! Each write lands in the shared cache at once and is told as an Event
//! on the Deployment, as `kubectl describe deployment` shows them.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::Api;
use serde_json::json;

use super::revision::{self, HASH_LABEL};
use crate::controllers::informer::key_of;
use crate::controllers::owners::{controlled_by, controller_ref};
use crate::controllers::pods::object_ref;
use crate::controllers::{api_code, ControllerError, Ctx};

pub struct SetWriter<'a> {
    pub ctx: &'a Ctx,
    pub d: &'a Deployment,
}

impl SetWriter<'_> {
    fn api(&self) -> Api<ReplicaSet> {
        let ns = self.d.metadata.namespace.as_deref().unwrap_or("default");
        Api::namespaced(self.ctx.client.clone(), ns)
    }

    /// Creates the ReplicaSet for the Deployment's current template, or
    /// finds it if an earlier pass already did.
    pub async fn create(
        &self,
        hash: &str,
        revision: i64,
        replicas: i32,
        max_replicas: i32,
    ) -> Result<Arc<ReplicaSet>, ControllerError> {
        let d = self.d;
        let spec = d.spec.clone().unwrap_or_default();
        let name = format!("{}-{hash}", d.metadata.name.as_deref().unwrap_or_default());
        let mut template = spec.template.clone();
        let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
        meta.labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.into());
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.into());
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: d.metadata.namespace.clone(),
                labels: meta.labels.clone(),
                annotations: Some(revision::annotations_for(
                    d,
                    None,
                    revision,
                    spec.replicas.unwrap_or(1),
                    max_replicas,
                )),
                owner_references: Some(vec![controller_ref(d)]),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let made = match self.api().create(&PostParams::default(), &rs).await {
            Ok(made) => {
                self.ctx.events.normal(
                    &object_ref(d),
                    "ScalingReplicaSet",
                    format!("Scaled up replica set {name} from 0 to {replicas}"),
                );
                made
            }
            Err(e) if api_code(&e) == Some(409) => {
                let existing =
                    self.api()
                        .get(&name)
                        .await
                        .map_err(ControllerError::api(format!(
                            "reading replicaset {}",
                            key_of(&rs)
                        )))?;
                let uid = d.metadata.uid.as_deref().unwrap_or_default();
                if !controlled_by(&existing.metadata, uid) {
                    return Err(ControllerError::Invalid {
                        object: format!("deployment {}", key_of(d)),
                        message: format!(
                            "replicaset {name} exists and is not controlled by this deployment"
                        ),
                    });
                }
                existing
            }
            Err(e) => {
                return Err(ControllerError::Api {
                    action: format!("creating replicaset {}", key_of(&rs)),
                    source: e,
                })
            }
        };
        self.ctx.informers.replicasets.assume(made.clone());
        Ok(Arc::new(made))
    }

    /// Sets a ReplicaSet's size (and the annotations that record the
    /// Deployment's size alongside it).
    pub async fn scale(
        &self,
        rs: &ReplicaSet,
        to: i32,
        max_replicas: i32,
    ) -> Result<Arc<ReplicaSet>, ControllerError> {
        let from = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let want = self.d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let name = rs.metadata.name.clone().unwrap_or_default();
        let patch = json!({
            "metadata": {"uid": rs.metadata.uid, "annotations": {
                revision::DESIRED_REPLICAS: want.to_string(),
                revision::MAX_REPLICAS: max_replicas.to_string(),
            }},
            "spec": {"replicas": to},
        });
        let out = self
            .api()
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(ControllerError::api(format!(
                "scaling replicaset {}",
                key_of(rs)
            )))?;
        if from != to {
            let dir = if to > from { "up" } else { "down" };
            self.ctx.events.normal(
                &object_ref(self.d),
                "ScalingReplicaSet",
                format!("Scaled {dir} replica set {name} from {from} to {to}"),
            );
        }
        self.ctx.informers.replicasets.assume(out.clone());
        Ok(Arc::new(out))
    }

    /// Sets annotations on a ReplicaSet (revision, change cause, rolled-out
    /// mark) when they differ.
    pub async fn annotate(
        &self,
        rs: &ReplicaSet,
        annotations: std::collections::BTreeMap<String, String>,
    ) -> Result<Arc<ReplicaSet>, ControllerError> {
        let current = rs.metadata.annotations.clone().unwrap_or_default();
        if annotations.iter().all(|(k, v)| current.get(k) == Some(v)) {
            return Ok(Arc::new(rs.clone()));
        }
        let name = rs.metadata.name.clone().unwrap_or_default();
        let patch = json!({"metadata": {"uid": rs.metadata.uid, "annotations": annotations}});
        let out = self
            .api()
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(ControllerError::api(format!(
                "annotating replicaset {}",
                key_of(rs)
            )))?;
        self.ctx.informers.replicasets.assume(out.clone());
        Ok(Arc::new(out))
    }

    /// Deletes an old, empty ReplicaSet past the history limit.
    pub async fn delete(&self, rs: &ReplicaSet) -> Result<(), ControllerError> {
        let name = rs.metadata.name.clone().unwrap_or_default();
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: rs.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match self.api().delete(&name, &dp).await {
            Ok(_) => {
                self.ctx.informers.replicasets.assume_deleted(rs);
                Ok(())
            }
            Err(e) if matches!(api_code(&e), Some(404) | Some(409)) => Ok(()),
            Err(e) => Err(ControllerError::Api {
                action: format!("deleting old replicaset {}", key_of(rs)),
                source: e,
            }),
        }
    }
}
