//! PersistentVolumeClaims on the node: finding the directory behind each of
//! a pod's claims, and removing a local-path volume's directory once its
//! PersistentVolume is deleted.
//!
//! A local-path volume (CSI driver `shoal.dev/local-path`) is the directory
//! `<data dir>/volumes/<volume handle>` on the node its node affinity names;
//! `hostPath` and `local` volumes are the directories they name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::Api;
use shoal_sdk::volumes as names;
use tracing::{info, warn};

use crate::controllers::ephemeral::{claims_of, made_for};
use crate::controllers::informer::Informer;
use crate::controllers::wiring::remove_finalizer;

/// A claim's directory and whether the pod mounts it read-only.
#[derive(Clone, Debug)]
pub struct ClaimDir {
    pub path: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct VolumeError(String);

/// The directory of every claim `pod` mounts, by volume name. A claim not
/// bound yet is an error the pod worker retries, as kubelet waits.
pub async fn claim_dirs(
    client: &kube::Client,
    pod: &Pod,
    root: &Path,
) -> Result<HashMap<String, ClaimDir>, VolumeError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let mut out = HashMap::new();
    for pc in claims_of(pod) {
        let name = &pc.claim;
        let claim = claims
            .get_opt(name)
            .await
            .map_err(|e| VolumeError(format!("reading persistentvolumeclaim {name:?}: {e}")))?
            .ok_or_else(|| VolumeError(format!("persistentvolumeclaim {name:?} not found")))?;
        // An ephemeral volume's claim is the pod's own: one of that name
        // made by someone else must not hand over its data.
        if pc.ephemeral && !made_for(&claim, pod) {
            return Err(VolumeError(format!(
                "persistentvolumeclaim {name:?} was not created for this pod"
            )));
        }
        let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        let pv_name = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|n| !n.is_empty() && bound)
            .ok_or_else(|| {
                VolumeError(format!("persistentvolumeclaim {name:?} is not bound yet"))
            })?;
        let pv = volumes
            .get_opt(&pv_name)
            .await
            .map_err(|e| VolumeError(format!("reading persistentvolume {pv_name:?}: {e}")))?
            .ok_or_else(|| VolumeError(format!("persistentvolume {pv_name:?} not found")))?;
        let path = directory(&pv, root)?;
        out.insert(
            pc.volume.clone(),
            ClaimDir {
                path,
                read_only: pc.read_only,
            },
        );
    }
    Ok(out)
}

/// Where `pv`'s data is on this node, made if it is Shoal's to make.
fn directory(pv: &PersistentVolume, root: &Path) -> Result<PathBuf, VolumeError> {
    let name = pv.metadata.name.clone().unwrap_or_default();
    let spec = pv.spec.clone().unwrap_or_default();
    let mkdir = |p: &Path| {
        std::fs::create_dir_all(p)
            .map_err(|e| VolumeError(format!("creating {} for volume {name}: {e}", p.display())))
    };
    if let Some(csi) = &spec.csi {
        let handle = local_handle(pv).ok_or_else(|| {
            VolumeError(format!(
                "volume {name}: csi driver {:?} is not one this node serves",
                csi.driver
            ))
        })?;
        let dir = root.join(handle);
        mkdir(&dir)?;
        return Ok(dir);
    }
    if let Some(hp) = &spec.host_path {
        let dir = PathBuf::from(&hp.path);
        // Kubernetes' hostPath volumes with no type check nothing; a
        // directory is what a guest can mount, so make it.
        mkdir(&dir)?;
        return Ok(dir);
    }
    if let Some(local) = &spec.local {
        let dir = PathBuf::from(&local.path);
        if !dir.is_dir() {
            return Err(VolumeError(format!(
                "volume {name}: local path {} is not a directory on this node",
                local.path
            )));
        }
        return Ok(dir);
    }
    Err(VolumeError(format!(
        "volume {name}: only hostPath, local and {} volumes can be mounted",
        names::LOCAL_PATH_PROVISIONER
    )))
}

/// The handle of a local-path volume: a plain directory name.
fn local_handle(pv: &PersistentVolume) -> Option<&str> {
    let csi = pv.spec.as_ref()?.csi.as_ref()?;
    (csi.driver == names::LOCAL_PATH_PROVISIONER).then_some(())?;
    let h = csi.volume_handle.as_str();
    let plain = !h.is_empty() && !h.contains('/') && !h.starts_with('.');
    plain.then_some(h)
}

/// Removes the directory of each of this node's local-path volumes being
/// deleted (unless its reclaim policy is now `Retain`), then lets the
/// object go. Runs until the process ends.
pub async fn clean_up(client: kube::Client, node: String, root: PathBuf) {
    let volumes: Arc<Informer<PersistentVolume>> = Informer::new("persistentvolumes");
    let wake = Arc::new(tokio::sync::Notify::new());
    let w = wake.clone();
    volumes.on_change(move |_, _| w.notify_one());
    volumes.start(Api::all(client.clone()));
    volumes.wait_synced().await;
    let api: Api<PersistentVolume> = Api::all(client);
    loop {
        for pv in volumes.list() {
            let mine = pv
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(names::NODE_LABEL))
                == Some(&node);
            let finalizers = pv.metadata.finalizers.clone().unwrap_or_default();
            // While pv-protection holds, a claim still uses the volume:
            // its data stays until the volume controller lets go.
            if !mine
                || pv.metadata.deletion_timestamp.is_none()
                || !finalizers.iter().any(|f| f == names::CLEANUP_FINALIZER)
                || finalizers.iter().any(|f| f == names::VOLUME_PROTECTION)
            {
                continue;
            }
            let name = pv.metadata.name.clone().unwrap_or_default();
            // Retain means the data outlives the object: an operator set it
            // (often on a bound volume, to keep it) and reclaims by hand.
            let retain = pv
                .spec
                .as_ref()
                .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
                == Some("Retain");
            if let Some(handle) = local_handle(&pv).filter(|_| !retain) {
                let dir = root.join(handle);
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => info!(volume = %name, dir = %dir.display(), "volume data removed"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        // The finalizer stays, so the object shows the
                        // volume is still there; the next change retries.
                        warn!(volume = %name, dir = %dir.display(), error = %e, "removing volume data failed");
                        continue;
                    }
                }
            }
            if let Err(e) = remove_finalizer(&api, pv.as_ref(), names::CLEANUP_FINALIZER).await {
                warn!(volume = %name, error = %e, "releasing the volume's finalizer failed");
            }
        }
        wake.notified().await;
    }
}
