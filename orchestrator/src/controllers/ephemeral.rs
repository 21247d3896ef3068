//! Generic ephemeral volumes: a pod volume with `ephemeral.volumeClaimTemplate`
//! gets its own claim `<pod>-<volume>`, owned by the pod, so it is
//! provisioned like any claim and collected with the pod.
//!
//! `claims_of` is the one place that says which claim each of a pod's
//! volumes uses; the scheduler, the node and the volume controller all ask
//! it.

use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, PostParams};
use tracing::info;

use super::informer::key_of;
use super::owners;
use super::pods::object_ref;
use super::queue::WorkQueue;
use super::{api_code, new_queue, Action, ControllerError, Ctx, Reconciler};

pub const NAME: &str = "ephemeral-volume-controller";

/// One of a pod's volumes backed by a claim.
#[derive(Debug, Clone, PartialEq)]
pub struct PodClaim {
    pub volume: String,
    pub claim: String,
    /// Made for this pod from its `ephemeral` template: only a claim the
    /// pod owns may serve it.
    pub ephemeral: bool,
    pub read_only: bool,
}

/// The claims `pod`'s volumes use, in volume order.
pub fn claims_of(pod: &Pod) -> Vec<PodClaim> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            if let Some(c) = &v.persistent_volume_claim {
                return Some(PodClaim {
                    volume: v.name.clone(),
                    claim: c.claim_name.clone(),
                    ephemeral: false,
                    read_only: c.read_only == Some(true),
                });
            }
            v.ephemeral.as_ref().map(|_| PodClaim {
                volume: v.name.clone(),
                claim: format!("{name}-{}", v.name),
                ephemeral: true,
                read_only: false,
            })
        })
        .collect()
}

/// Whether `claim` was made for `pod` (its controller is the pod).
pub fn made_for(claim: &PersistentVolumeClaim, pod: &Pod) -> bool {
    owners::controller_of(&claim.metadata)
        .is_some_and(|r| r.kind == "Pod" && Some(&r.uid) == pod.metadata.uid.as_ref())
}

/// The claims to make for `pod`'s ephemeral volumes.
pub fn wanted(pod: &Pod) -> Vec<PersistentVolumeClaim> {
    let owner = owners::controller_ref(pod);
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            let t = v.ephemeral.as_ref()?.volume_claim_template.as_ref()?;
            let mut meta = t.metadata.clone().unwrap_or_default();
            meta.name = Some(format!("{name}-{}", v.name));
            meta.namespace = pod.metadata.namespace.clone();
            meta.owner_references = Some(vec![owner.clone()]);
            Some(PersistentVolumeClaim {
                metadata: meta,
                spec: Some(t.spec.clone()),
                status: None,
            })
        })
        .collect()
}

pub struct EphemeralController {
    ctx: Arc<Ctx>,
}

impl EphemeralController {
    pub fn register(ctx: &Arc<Ctx>) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = new_queue(ctx, NAME);
        let q = queue.clone();
        ctx.informers.pods.on_change(move |_, new| {
            if let Some(p) = new.filter(|p| claims_of(p).iter().any(|c| c.ephemeral)) {
                q.add(key_of(p));
            }
        });
        (Arc::new(EphemeralController { ctx: ctx.clone() }), queue)
    }

    async fn sync(&self, pod: &Pod) -> Result<Action, ControllerError> {
        if pod.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.ctx.client.clone(), &ns);
        for claim in wanted(pod) {
            let name = claim.metadata.name.clone().unwrap_or_default();
            if let Some(existing) = self.ctx.informers.claims.get(&format!("{ns}/{name}")) {
                if !made_for(&existing, pod) {
                    self.ctx.events.warning(
                        &object_ref(pod),
                        "FailedBinding",
                        format!(
                            "PVC {ns}/{name} was not created for pod {ns}/{} (pod is not owner)",
                            pod.metadata.name.as_deref().unwrap_or_default()
                        ),
                    );
                }
                continue;
            }
            match api.create(&PostParams::default(), &claim).await {
                Ok(made) => {
                    info!(pod = %key_of(pod), claim = %name, "ephemeral claim created");
                    self.ctx.informers.claims.assume(made);
                }
                Err(e) if api_code(&e) == Some(409) => {}
                Err(e) => {
                    return Err(ControllerError::Api {
                        action: format!("creating ephemeral claim {ns}/{name}"),
                        source: e,
                    })
                }
            }
        }
        Ok(Action::AwaitChange)
    }
}

#[async_trait]
impl Reconciler for EphemeralController {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError> {
        match self.ctx.informers.pods.get(key) {
            Some(p) => self.sync(&p).await,
            None => Ok(Action::AwaitChange),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ephemeral_volumes_name_their_claims_after_the_pod() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "job-x", "namespace": "ns", "uid": "p1"},
            "spec": {"containers": [{"name": "a"}], "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "shared", "readOnly": true}},
                {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {
                    "metadata": {"labels": {"kind": "scratch"}},
                    "spec": {"accessModes": ["ReadWriteOnce"],
                             "resources": {"requests": {"storage": "1Gi"}}}}}},
                {"name": "tmp", "emptyDir": {}}]}}))
        .expect("test pod");
        let claims = claims_of(&pod);
        assert_eq!(claims.len(), 2);
        assert_eq!(claims[0].claim, "shared");
        assert!(claims[0].read_only && !claims[0].ephemeral);
        assert_eq!(claims[1].claim, "job-x-scratch");
        assert!(claims[1].ephemeral);
        let made = wanted(&pod);
        assert_eq!(made[0].metadata.name.as_deref(), Some("job-x-scratch"));
        assert!(made_for(&made[0], &pod));
        let mut other = pod.clone();
        other.metadata.uid = Some("p2".into());
        assert!(!made_for(&made[0], &other));
    }
}
