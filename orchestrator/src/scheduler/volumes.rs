//! Volume binding, the scheduler's part: what a pod's PersistentVolumeClaims
//! ask of its node. A claim already bound ties the pod to the nodes its
//! volume's node affinity admits; a claim whose class waits for its first
//! consumer lets the scheduler choose, and is then marked with the node
//! chosen (`volume.kubernetes.io/selected-node`) for the provisioner.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use shoal_sdk::volumes::LOCAL_PATH_PROVISIONER;

use super::plugins;
use crate::controllers::ephemeral::{claims_of, made_for};

/// What the pod's claims need.
#[derive(Debug, Default)]
pub struct VolumePlan {
    /// Volumes already bound to the pod's claims.
    pub bound: Vec<Arc<PersistentVolume>>,
    /// Claims (in the pod's namespace) to mark with the node picked.
    pub delayed: Vec<String>,
}

impl VolumePlan {
    /// Whether every bound volume can be reached from `node`.
    pub fn fits(&self, node: &Node) -> bool {
        self.bound.iter().all(|pv| {
            pv.spec
                .as_ref()
                .and_then(|s| s.node_affinity.as_ref())
                .and_then(|a| a.required.as_ref())
                .is_none_or(|sel| plugins::selects(sel, node))
        })
    }
}

/// Whether claims of `class` are bound once a pod needs them rather than
/// at once. Shoal's own provisioner always waits: a node-local volume has
/// nowhere to live until a pod has a node.
pub fn waits_for_consumer(class: &StorageClass) -> bool {
    class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
        || class.provisioner == LOCAL_PATH_PROVISIONER
}

/// The plan for `pod`, or why it cannot be placed, in Kubernetes' words.
pub fn plan(
    pod: &Pod,
    claim: impl Fn(&str) -> Option<Arc<PersistentVolumeClaim>>,
    volume: impl Fn(&str) -> Option<Arc<PersistentVolume>>,
    class: impl Fn(&str) -> Option<Arc<StorageClass>>,
) -> Result<VolumePlan, String> {
    let mut out = VolumePlan::default();
    for pc in claims_of(pod) {
        let name = pc.claim.as_str();
        let Some(c) = claim(name) else {
            return Err(if pc.ephemeral {
                format!("waiting for ephemeral volume controller to create the persistentvolumeclaim \"{name}\"")
            } else {
                format!("persistentvolumeclaim \"{name}\" not found")
            });
        };
        if pc.ephemeral && !made_for(&c, pod) {
            return Err(format!(
                "persistentvolumeclaim \"{name}\" was not created for the pod"
            ));
        }
        if c.metadata.deletion_timestamp.is_some() {
            return Err(format!("persistentvolumeclaim \"{name}\" is being deleted"));
        }
        let spec = c.spec.clone().unwrap_or_default();
        let bound_to = spec.volume_name.filter(|v| !v.is_empty());
        let phase = c.status.as_ref().and_then(|s| s.phase.as_deref());
        match bound_to {
            Some(pv) if phase == Some("Bound") => match volume(&pv) {
                Some(v) => out.bound.push(v),
                None => return Err(format!("persistentvolume \"{pv}\" not found")),
            },
            // Named but not yet bound: the binder is finishing it.
            Some(_) => return Err("pod has unbound immediate PersistentVolumeClaims".into()),
            None => {
                let delayed = spec
                    .storage_class_name
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .and_then(&class)
                    .is_some_and(|sc| waits_for_consumer(&sc));
                if !delayed {
                    return Err("pod has unbound immediate PersistentVolumeClaims".into());
                }
                out.delayed.push(name.to_string());
            }
        }
    }
    Ok(out)
}

/// The pod's claims (as `namespace/name`) that allow one pod at a time
/// (`ReadWriteOncePod`): the scheduler places no second pod that uses one.
pub fn single_pod_claims(
    pod: &Pod,
    claim: impl Fn(&str) -> Option<Arc<PersistentVolumeClaim>>,
) -> Vec<String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    claims_of(pod)
        .into_iter()
        .filter(|pc| {
            claim(&pc.claim).is_some_and(|c| {
                c.spec
                    .as_ref()
                    .and_then(|s| s.access_modes.as_ref())
                    .is_some_and(|m| m.iter().any(|m| m == "ReadWriteOncePod"))
            })
        })
        .map(|pc| format!("{ns}/{}", pc.claim))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).expect("test object"))
    }

    fn pod(claims: &[&str]) -> Pod {
        let vols: Vec<_> = claims
            .iter()
            .map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
            .collect();
        serde_json::from_value(json!({"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a"}], "volumes": vols}}))
        .expect("test pod")
    }

    #[test]
    fn bound_volumes_pin_the_node_and_delayed_claims_wait_for_it() {
        let bound = parse::<PersistentVolumeClaim>(json!({"metadata": {"name": "data"},
            "spec": {"volumeName": "pv-a"}, "status": {"phase": "Bound"}}));
        let pending = parse::<PersistentVolumeClaim>(json!({"metadata": {"name": "scratch"},
            "spec": {"storageClassName": "local-path"}, "status": {"phase": "Pending"}}));
        let manual = parse::<PersistentVolumeClaim>(json!({"metadata": {"name": "manual"},
            "spec": {"storageClassName": "slow"}, "status": {"phase": "Pending"}}));
        let pv = parse::<PersistentVolume>(json!({"metadata": {"name": "pv-a"},
            "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}}}}));
        let local = parse::<StorageClass>(json!({"metadata": {"name": "local-path"},
            "provisioner": LOCAL_PATH_PROVISIONER}));
        let slow = parse::<StorageClass>(json!({"metadata": {"name": "slow"},
            "provisioner": "example.com/nas", "volumeBindingMode": "Immediate"}));
        let claims = [bound, pending, manual];
        let claim = |n: &str| {
            claims
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(n))
                .cloned()
        };
        let volume = |n: &str| (n == "pv-a").then(|| pv.clone());
        let class = |n: &str| match n {
            "local-path" => Some(local.clone()),
            "slow" => Some(slow.clone()),
            _ => None,
        };
        let p = plan(&pod(&["data", "scratch"]), claim, volume, class).expect("placeable");
        assert_eq!(p.delayed, ["scratch"]);
        let node = |n: &str| -> Node {
            serde_json::from_value(json!({"metadata": {"name": n,
                "labels": {"kubernetes.io/hostname": n}}}))
            .expect("test node")
        };
        assert!(p.fits(&node("n1")));
        assert!(!p.fits(&node("n2")));
        assert_eq!(
            plan(&pod(&["manual"]), claim, volume, class).expect_err("unbound immediate claim"),
            "pod has unbound immediate PersistentVolumeClaims"
        );
        assert_eq!(
            plan(&pod(&["gone"]), claim, volume, class).expect_err("missing claim"),
            "persistentvolumeclaim \"gone\" not found"
        );
    }

    #[test]
    fn only_read_write_once_pod_claims_are_single_pod() {
        let once = parse::<PersistentVolumeClaim>(json!({"metadata": {"name": "once"},
            "spec": {"accessModes": ["ReadWriteOncePod"]}}));
        let shared = parse::<PersistentVolumeClaim>(json!({"metadata": {"name": "shared"},
            "spec": {"accessModes": ["ReadWriteOnce"]}}));
        let claim = |n: &str| match n {
            "once" => Some(once.clone()),
            "shared" => Some(shared.clone()),
            _ => None,
        };
        let mut p = pod(&["once", "shared", "gone"]);
        p.metadata.namespace = Some("ns".into());
        assert_eq!(single_pod_claims(&p, claim), ["ns/once"]);
    }
}
