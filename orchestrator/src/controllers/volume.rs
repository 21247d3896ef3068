//! The PersistentVolume controller: binds each claim to a volume, making
//! one when the claim's class is Shoal's local-path provisioner, and
//! reclaims a volume whose claim is gone.
//!
//! Binding follows Kubernetes' order: the volume's `claimRef` first, then
//! the claim's `volumeName`, then both statuses; every step is a write with
//! a precondition, so a pass that lost a race starts again from the caches.
//! A local-path volume is a directory on one node: it is made once the
//! scheduler has marked the claim with the node of its first pod
//! (`volume.kubernetes.io/selected-node`), carries node affinity to that
//! node, and keeps a finalizer until that node has removed the directory.

use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use shoal_sdk::quantity;
use shoal_sdk::volumes as names;
use tracing::{debug, info};

use super::ephemeral::claims_of;
use super::informer::{key_of, split_key};
use super::owners::Selector;
use super::pods::object_ref;
use super::queue::WorkQueue;
use super::wiring;
use super::{api_code, new_queue, Action, ControllerError, Ctx, Reconciler};
use crate::scheduler::plugins::selects;

pub const NAME: &str = "persistentvolume-binder";
const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// Queue keys of volumes (being deleted) start with this; claims' keys are
/// `namespace/name`, and a namespace cannot hold a ':'.
const VOLUME_KEY: &str = "pv:";

pub struct VolumeController {
    ctx: Arc<Ctx>,
}

/// What one pass does for a claim.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Both sides say bound: nothing to do.
    Bound,
    /// This volume is the claim's (its `claimRef` or the claim's
    /// `volumeName` says so): finish whatever half is missing.
    Finish(String),
    /// An available volume fits: claim it.
    Bind(String),
    /// Make a local-path volume on this node.
    Provision(String),
    /// The claim names a volume that does not exist.
    Lost(String),
    /// Nothing fits yet; the reason, for the log.
    Wait(&'static str),
}

fn phase_of_volume(pv: &PersistentVolume) -> &str {
    pv.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn claim_ref_is(pv: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    pv.spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .is_some_and(|r| {
            r.namespace == claim.metadata.namespace
                && r.name == claim.metadata.name
                && r.uid
                    .as_ref()
                    .is_none_or(|u| Some(u) == claim.metadata.uid.as_ref())
        })
}

fn size(q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>) -> i64 {
    q.and_then(|q| quantity::base_units(&q.0)).unwrap_or(0)
}

/// Whether `pv` may serve `claim`: class, mode, access modes, size,
/// selector, and (when the claim's node is chosen) reachable from it.
pub fn fits(pv: &PersistentVolume, claim: &PersistentVolumeClaim, node: Option<&Node>) -> bool {
    let (Some(ps), Some(cs)) = (pv.spec.as_ref(), claim.spec.as_ref()) else {
        return false;
    };
    if phase_of_volume(pv) != "Available" || ps.claim_ref.is_some() {
        return false;
    }
    let class = |c: &Option<String>| c.clone().unwrap_or_default();
    if class(&ps.storage_class_name) != class(&cs.storage_class_name) {
        return false;
    }
    let mode = |m: &Option<String>| m.clone().unwrap_or_else(|| "Filesystem".into());
    if mode(&ps.volume_mode) != mode(&cs.volume_mode) {
        return false;
    }
    let offered = ps.access_modes.clone().unwrap_or_default();
    if !cs
        .access_modes
        .iter()
        .flatten()
        .all(|m| offered.contains(m))
    {
        return false;
    }
    let want = size(
        cs.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage")),
    );
    if size(ps.capacity.as_ref().and_then(|c| c.get("storage"))) < want {
        return false;
    }
    if let Some(sel) = &cs.selector {
        match Selector::new(sel) {
            Ok(s) if s.matches(pv.metadata.labels.as_ref()) => {}
            _ => return false,
        }
    }
    let affinity = ps.node_affinity.as_ref().and_then(|a| a.required.as_ref());
    match (affinity, node) {
        (Some(sel), Some(n)) => selects(sel, n),
        _ => true,
    }
}

/// The next step for `claim`, pure.
pub fn decide(
    claim: &PersistentVolumeClaim,
    volumes: &[Arc<PersistentVolume>],
    class: Option<&StorageClass>,
    node: Option<&Node>,
) -> Step {
    let spec = claim.spec.clone().unwrap_or_default();
    if let Some(name) = spec.volume_name.filter(|v| !v.is_empty()) {
        let Some(pv) = volumes
            .iter()
            .find(|v| v.metadata.name.as_deref() == Some(name.as_str()))
        else {
            // Named by its creator before the volume exists: wait for it.
            // Once bound, a missing volume is lost.
            let was_bound = claim
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(BIND_COMPLETED));
            return if was_bound {
                Step::Lost(name)
            } else {
                Step::Wait("waiting for the volume the claim names")
            };
        };
        let claim_bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        return if claim_ref_is(pv, claim) && phase_of_volume(pv) == "Bound" && claim_bound {
            Step::Bound
        } else {
            Step::Finish(name)
        };
    }
    // A volume made for this claim, or pre-bound to it by its creator.
    if let Some(pv) = volumes.iter().find(|v| claim_ref_is(v, claim)) {
        return Step::Finish(pv.metadata.name.clone().unwrap_or_default());
    }
    let best = volumes
        .iter()
        .filter(|v| fits(v, claim, node))
        .min_by_key(|v| {
            (
                size(
                    v.spec
                        .as_ref()
                        .and_then(|s| s.capacity.as_ref())
                        .and_then(|c| c.get("storage")),
                ),
                v.metadata.name.clone(),
            )
        });
    if let Some(pv) = best {
        return Step::Bind(pv.metadata.name.clone().unwrap_or_default());
    }
    match class {
        Some(c) if c.provisioner == names::LOCAL_PATH_PROVISIONER => {
            match claim
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(names::SELECTED_NODE))
            {
                Some(node) => Step::Provision(node.clone()),
                None => Step::Wait("waiting for first consumer to be created before binding"),
            }
        }
        Some(_) => Step::Wait("waiting for a volume to be created by the class's provisioner"),
        None => {
            Step::Wait("no persistent volumes available for this claim and no storage class is set")
        }
    }
}

/// The local-path volume for `claim` on `node`.
pub fn local_volume(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    node: &str,
) -> Result<PersistentVolume, serde_json::Error> {
    let uid = claim.metadata.uid.clone().unwrap_or_default();
    let name = format!("pvc-{uid}");
    let spec = claim.spec.clone().unwrap_or_default();
    let storage = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .cloned();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "labels": {names::NODE_LABEL: node},
            "annotations": {PROVISIONED_BY: names::LOCAL_PATH_PROVISIONER},
            "finalizers": [names::CLEANUP_FINALIZER],
        },
        "spec": {
            "capacity": {"storage": storage},
            "accessModes": spec.access_modes,
            "persistentVolumeReclaimPolicy": class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into()),
            "storageClassName": class.metadata.name,
            "volumeMode": "Filesystem",
            "claimRef": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": claim.metadata.namespace, "name": claim.metadata.name,
                "uid": uid, "resourceVersion": claim.metadata.resource_version,
            },
            "csi": {"driver": names::LOCAL_PATH_PROVISIONER, "volumeHandle": name},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}},
        },
    }))
}

impl VolumeController {
    pub fn register(ctx: &Arc<Ctx>) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = new_queue(ctx, NAME);
        let q = queue.clone();
        ctx.informers.claims.on_change(move |old, new| {
            for c in [old, new].into_iter().flatten() {
                q.add(key_of(c));
            }
        });
        // A volume wakes the claim it names; a volume that became free may
        // serve any claim still pending.
        let (q, claims) = (queue.clone(), ctx.informers.claims.clone());
        ctx.informers.volumes.on_change(move |old, new| {
            if let Some(v) = new.filter(|v| v.metadata.deletion_timestamp.is_some()) {
                q.add(format!(
                    "{VOLUME_KEY}{}",
                    v.metadata.name.clone().unwrap_or_default()
                ));
            }
            for v in [old, new].into_iter().flatten() {
                match v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
                    Some(r) => q.add(format!(
                        "{}/{}",
                        r.namespace.clone().unwrap_or_default(),
                        r.name.clone().unwrap_or_default()
                    )),
                    None => pending(&claims, &q),
                }
            }
        });
        // A pod going away may free a claim waiting to be deleted.
        let (q, claims) = (queue.clone(), ctx.informers.claims.clone());
        ctx.informers.pods.on_change(move |old, new| {
            for p in [old, new].into_iter().flatten() {
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                for c in claims_of(p) {
                    let key = format!("{ns}/{}", c.claim);
                    if claims
                        .get(&key)
                        .is_some_and(|c| c.metadata.deletion_timestamp.is_some())
                    {
                        q.add(key);
                    }
                }
            }
        });
        let (q, claims) = (queue.clone(), ctx.informers.claims.clone());
        ctx.informers
            .storage_classes
            .on_change(move |_, _| pending(&claims, &q));
        (Arc::new(VolumeController { ctx: ctx.clone() }), queue)
    }

    async fn sync(&self, key: &str) -> Result<Action, ControllerError> {
        let claim = self.ctx.informers.claims.get(key);
        self.reclaim(key, claim.as_deref()).await?;
        let Some(claim) = claim else {
            return Ok(Action::AwaitChange);
        };
        if claim.metadata.deletion_timestamp.is_some() {
            self.unprotect(&claim).await?;
            return Ok(Action::AwaitChange);
        }
        let volumes = self.ctx.informers.volumes.list();
        let class = claim
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref())
            .filter(|c| !c.is_empty())
            .and_then(|c| self.ctx.informers.storage_classes.get(c));
        let node = claim
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(names::SELECTED_NODE))
            .and_then(|n| self.ctx.informers.nodes.get(n));
        let step = decide(&claim, &volumes, class.as_deref(), node.as_deref());
        debug!(claim = %key, ?step, "volume binding");
        match step {
            Step::Bound => {}
            Step::Wait(_) => {}
            Step::Lost(_)
                if claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Lost") => {}
            Step::Lost(pv) => {
                self.claim_status(&claim, json!({"phase": "Lost"})).await?;
                self.ctx.events.warning(
                    &object_ref(claim.as_ref()),
                    "ClaimLost",
                    format!("Bound claim has lost its PersistentVolume {pv:?}. Data on the volume is lost!"),
                );
            }
            Step::Bind(pv) | Step::Finish(pv) => self.bind(&claim, &pv).await?,
            Step::Provision(node) => {
                if let Some(class) = class {
                    self.provision(&claim, &class, &node).await?;
                }
            }
        }
        Ok(Action::AwaitChange)
    }

    /// Lets a volume being deleted go once no claim is bound to it
    /// (pv-protection).
    async fn sync_volume(&self, name: &str) -> Result<Action, ControllerError> {
        let Some(pv) = self.ctx.informers.volumes.get(name) else {
            return Ok(Action::AwaitChange);
        };
        let finalizers = pv.metadata.finalizers.clone().unwrap_or_default();
        if pv.metadata.deletion_timestamp.is_none()
            || phase_of_volume(&pv) == "Bound"
            || !finalizers.iter().any(|f| f == names::VOLUME_PROTECTION)
        {
            return Ok(Action::AwaitChange);
        }
        let volumes: Api<PersistentVolume> = Api::all(self.ctx.client.clone());
        wiring::remove_finalizer(&volumes, pv.as_ref(), names::VOLUME_PROTECTION)
            .await
            .map_err(ControllerError::api(format!("releasing volume {name}")))?;
        Ok(Action::AwaitChange)
    }

    /// Lets a claim being deleted go once no pod that may still run uses it.
    async fn unprotect(&self, claim: &PersistentVolumeClaim) -> Result<(), ControllerError> {
        let finalizers = claim.metadata.finalizers.clone().unwrap_or_default();
        if !finalizers.iter().any(|f| f == names::CLAIM_PROTECTION) {
            return Ok(());
        }
        let key = key_of(claim);
        let (ns, name) = split_key(&key);
        let users: Vec<String> = self
            .ctx
            .informers
            .pods
            .list_namespace(ns)
            .iter()
            .filter(|p| {
                !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded") | Some("Failed")
                ) && claims_of(p).iter().any(|c| c.claim == name)
            })
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        if !users.is_empty() {
            debug!(claim = %key, pods = ?users, "claim in use; kept");
            return Ok(());
        }
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.ctx.client.clone(), ns);
        wiring::remove_finalizer(&claims, claim, names::CLAIM_PROTECTION)
            .await
            .map_err(ControllerError::api(format!("releasing claim {key}")))
    }

    /// Binds `claim` to volume `pv_name`, writing only what is not yet so.
    async fn bind(
        &self,
        claim: &PersistentVolumeClaim,
        pv_name: &str,
    ) -> Result<(), ControllerError> {
        let Some(pv) = self.ctx.informers.volumes.get(pv_name) else {
            return Ok(());
        };
        let key = key_of(claim);
        let (ns, name) = split_key(&key);
        let volumes: Api<PersistentVolume> = Api::all(self.ctx.client.clone());
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.ctx.client.clone(), ns);
        let pp = PatchParams::default();
        let mut pv = (*pv).clone();
        if !claim_ref_is(&pv, claim)
            || pv
                .spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .and_then(|r| r.uid.as_ref())
                .is_none()
        {
            let patch = json!({
                "metadata": {"resourceVersion": pv.metadata.resource_version},
                "spec": {"claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "namespace": ns, "name": name, "uid": claim.metadata.uid,
                    "resourceVersion": claim.metadata.resource_version}},
            });
            pv = volumes
                .patch(pv_name, &pp, &Patch::Merge(patch))
                .await
                .map_err(ControllerError::api(format!(
                    "claiming volume {pv_name} for {key}"
                )))?;
        }
        if phase_of_volume(&pv) != "Bound" {
            pv = volumes
                .patch_status(
                    pv_name,
                    &pp,
                    &Patch::Merge(json!({"status": {"phase": "Bound"}})),
                )
                .await
                .map_err(ControllerError::api(format!(
                    "marking volume {pv_name} bound"
                )))?;
        }
        self.ctx.informers.volumes.assume(pv.clone());
        let mut claim = claim.clone();
        if claim.spec.as_ref().and_then(|s| s.volume_name.as_deref()) != Some(pv_name) {
            let patch = json!({
                "metadata": {"resourceVersion": claim.metadata.resource_version,
                    "annotations": {BIND_COMPLETED: "yes", BOUND_BY_CONTROLLER: "yes"}},
                "spec": {"volumeName": pv_name},
            });
            claim = claims
                .patch(name, &pp, &Patch::Merge(patch))
                .await
                .map_err(ControllerError::api(format!(
                    "binding claim {key} to {pv_name}"
                )))?;
        }
        let spec = pv.spec.clone().unwrap_or_default();
        let want =
            json!({"phase": "Bound", "accessModes": spec.access_modes, "capacity": spec.capacity});
        if serde_json::to_value(&claim.status).ok().as_ref() != Some(&want) {
            self.claim_status(&claim, want).await?;
            info!(claim = %key, volume = pv_name, "bound");
        }
        Ok(())
    }

    async fn claim_status(
        &self,
        claim: &PersistentVolumeClaim,
        status: serde_json::Value,
    ) -> Result<(), ControllerError> {
        wiring::write_status(&self.ctx, &self.ctx.informers.claims, claim, &status).await
    }

    async fn provision(
        &self,
        claim: &PersistentVolumeClaim,
        class: &StorageClass,
        node: &str,
    ) -> Result<(), ControllerError> {
        let key = key_of(claim);
        let pv = local_volume(claim, class, node).map_err(|e| ControllerError::Invalid {
            object: format!("persistentvolumeclaim {key}"),
            message: e.to_string(),
        })?;
        let name = pv.metadata.name.clone().unwrap_or_default();
        let volumes: Api<PersistentVolume> = Api::all(self.ctx.client.clone());
        match volumes.create(&PostParams::default(), &pv).await {
            Ok(made) => {
                self.ctx.informers.volumes.assume(made);
                info!(claim = %key, volume = %name, node, "provisioned");
                self.ctx.events.normal(
                    &object_ref(claim),
                    "ProvisioningSucceeded",
                    format!("Successfully provisioned volume {name} on node {node}"),
                );
            }
            Err(e) if api_code(&e) == Some(409) => {}
            Err(e) => {
                self.ctx.events.warning(
                    &object_ref(claim),
                    "ProvisioningFailed",
                    format!("failed to provision volume on node {node}: {e}"),
                );
                return Err(ControllerError::Api {
                    action: format!("provisioning a volume for {key}"),
                    source: e,
                });
            }
        }
        // The claimRef is set already; the volume's arrival in the cache
        // brings this claim back to finish the bind.
        Ok(())
    }

    /// Volumes whose claim (`key`) is gone, or was made anew under the
    /// same name: deleted under `Delete`, kept as `Released` under `Retain`.
    async fn reclaim(
        &self,
        key: &str,
        claim: Option<&PersistentVolumeClaim>,
    ) -> Result<(), ControllerError> {
        let (ns, name) = split_key(key);
        let orphaned: Vec<Arc<PersistentVolume>> = self
            .ctx
            .informers
            .volumes
            .list()
            .into_iter()
            .filter(|v| {
                let Some(r) = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
                    return false;
                };
                r.namespace.as_deref() == Some(ns)
                    && r.name.as_deref() == Some(name)
                    && r.uid.is_some()
                    && claim.is_none_or(|c| c.metadata.uid != r.uid)
            })
            .collect();
        let volumes: Api<PersistentVolume> = Api::all(self.ctx.client.clone());
        for pv in orphaned {
            let pv_name = pv.metadata.name.clone().unwrap_or_default();
            let policy = pv
                .spec
                .as_ref()
                .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
                .unwrap_or("Retain");
            // Released first, under either policy: the volume serves no
            // claim now, which is what lets pv-protection go.
            if phase_of_volume(&pv) != "Released" {
                let status = json!({"status": {"phase": "Released"}});
                match volumes
                    .patch_status(&pv_name, &PatchParams::default(), &Patch::Merge(status))
                    .await
                {
                    Ok(v) => self.ctx.informers.volumes.assume(v),
                    Err(e) if api_code(&e) == Some(404) => continue,
                    Err(e) => {
                        return Err(ControllerError::Api {
                            action: format!("releasing volume {pv_name}"),
                            source: e,
                        })
                    }
                }
            }
            if policy == "Delete" {
                if pv.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                match volumes.delete(&pv_name, &DeleteParams::default()).await {
                    Ok(_) => info!(volume = %pv_name, claim = key, "claim gone; volume deleted"),
                    Err(e) if api_code(&e) == Some(404) => {}
                    Err(e) => {
                        return Err(ControllerError::Api {
                            action: format!("deleting volume {pv_name}"),
                            source: e,
                        })
                    }
                }
            }
        }
        Ok(())
    }
}

/// Queues every claim not yet bound.
fn pending(claims: &super::informer::Informer<PersistentVolumeClaim>, q: &WorkQueue) {
    for c in claims.list() {
        if c.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
            q.add(key_of(c.as_ref()));
        }
    }
}

#[async_trait]
impl Reconciler for VolumeController {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError> {
        match key.strip_prefix(VOLUME_KEY) {
            Some(name) => self.sync_volume(name).await,
            None => self.sync(key).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("test object")
    }

    fn claim(size: &str, class: &str, extra: serde_json::Value) -> PersistentVolumeClaim {
        let mut c = json!({"metadata": {"name": "data", "namespace": "ns", "uid": "u1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                     "resources": {"requests": {"storage": size}}},
            "status": {"phase": "Pending"}});
        if let (Some(m), serde_json::Value::Object(e)) = (c["metadata"].as_object_mut(), extra) {
            m.extend(e);
        }
        parse(c)
    }

    fn volume(name: &str, size: &str, class: &str) -> Arc<PersistentVolume> {
        Arc::new(parse(
            json!({"metadata": {"name": name, "labels": {"tier": "fast"}},
            "spec": {"accessModes": ["ReadWriteOnce", "ReadOnlyMany"], "storageClassName": class,
                     "capacity": {"storage": size}, "hostPath": {"path": "/srv"}},
            "status": {"phase": "Available"}}),
        ))
    }

    #[test]
    fn the_smallest_fitting_volume_wins() {
        let vols = [
            volume("big", "10Gi", "manual"),
            volume("small", "2Gi", "manual"),
            volume("tiny", "1Mi", "manual"),
            volume("other-class", "2Gi", "fast"),
        ];
        let c = claim("1Gi", "manual", json!({}));
        assert_eq!(decide(&c, &vols, None, None), Step::Bind("small".into()));
        let huge = claim("20Gi", "manual", json!({}));
        assert!(matches!(decide(&huge, &vols, None, None), Step::Wait(_)));
        let mut picky = claim("1Gi", "manual", json!({}));
        if let Some(s) = picky.spec.as_mut() {
            s.selector = Some(parse(json!({"matchLabels": {"tier": "slow"}})));
        }
        assert!(matches!(decide(&picky, &vols, None, None), Step::Wait(_)));
    }

    #[test]
    fn local_path_claims_wait_for_a_node_then_get_a_volume_there() {
        let class: StorageClass = parse(json!({"metadata": {"name": "local-path"},
            "provisioner": names::LOCAL_PATH_PROVISIONER, "reclaimPolicy": "Delete"}));
        let c = claim("1Gi", "local-path", json!({}));
        assert!(matches!(decide(&c, &[], Some(&class), None), Step::Wait(_)));
        let chosen = claim(
            "1Gi",
            "local-path",
            json!({"annotations": {names::SELECTED_NODE: "n1"}}),
        );
        assert_eq!(
            decide(&chosen, &[], Some(&class), None),
            Step::Provision("n1".into())
        );
        let mut pv = local_volume(&chosen, &class, "n1").expect("volume");
        assert_eq!(pv.metadata.name.as_deref(), Some("pvc-u1"));
        pv.status = Some(parse(json!({"phase": "Available"})));
        // Made for the claim: finished, not offered to others.
        let vols = [Arc::new(pv)];
        assert_eq!(
            decide(&chosen, &vols, Some(&class), None),
            Step::Finish("pvc-u1".into())
        );
        let mut stranger = claim("1Gi", "local-path", json!({}));
        stranger.metadata.uid = Some("u2".into());
        assert!(matches!(
            decide(&stranger, &vols, Some(&class), None),
            Step::Wait(_)
        ));
    }

    #[test]
    fn a_bound_claim_whose_volume_is_gone_is_lost() {
        let mut named = claim("1Gi", "manual", json!({}));
        if let Some(s) = named.spec.as_mut() {
            s.volume_name = Some("gone".into());
        }
        // Pre-bound by its creator: the volume may still come.
        assert!(matches!(decide(&named, &[], None, None), Step::Wait(_)));
        let mut bound = named.clone();
        bound.metadata.annotations = Some([(BIND_COMPLETED.to_string(), "yes".to_string())].into());
        assert_eq!(decide(&bound, &[], None, None), Step::Lost("gone".into()));
    }
}
