//! Pod status writes, coalesced (kubelet's status manager): workers set the
//! latest status of a pod and move on; a few writer tasks send only the
//! newest one per pod, retrying while the API server is away.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Writers in flight at once. Status writes are fsync-bound on the server;
/// its group commit folds concurrent ones into one flush, so throughput
/// grows with this until the server's CPU is the limit.
const WRITERS: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

#[derive(Default)]
struct Pending {
    latest: HashMap<PodKey, PodStatus>,
    queued: HashSet<PodKey>,
    /// Pods a writer is sending right now: one write per pod at a time, or
    /// an older status could land after a newer one.
    inflight: HashSet<PodKey>,
}

#[derive(Clone)]
pub struct StatusSync {
    pending: Arc<Mutex<Pending>>,
    tx: mpsc::UnboundedSender<PodKey>,
}

impl StatusSync {
    pub fn start(client: kube::Client) -> StatusSync {
        let (tx, rx) = mpsc::unbounded_channel();
        let sync = StatusSync {
            pending: Arc::new(Mutex::new(Pending::default())),
            tx,
        };
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..WRITERS {
            tokio::spawn(writer(client.clone(), sync.clone(), rx.clone()));
        }
        sync
    }

    /// Records the newest status; it is written soon, once.
    pub fn set(&self, key: &PodKey, status: PodStatus) {
        let enqueue = match self.pending.lock() {
            Ok(mut p) => {
                p.latest.insert(key.clone(), status);
                p.queued.insert(key.clone())
            }
            Err(_) => false,
        };
        if enqueue {
            let _ = self.tx.send(key.clone());
        }
    }

    /// The pod is gone: drop anything not yet written.
    pub fn forget(&self, key: &PodKey) {
        if let Ok(mut p) = self.pending.lock() {
            p.latest.remove(key);
        }
    }

    /// Claims the newest status of a pod for writing. `None` if there is
    /// nothing new or another writer holds the pod (it requeues on finish).
    fn take(&self, key: &PodKey) -> Option<PodStatus> {
        let mut p = self.pending.lock().ok()?;
        p.queued.remove(key);
        if p.inflight.contains(key) {
            return None;
        }
        let status = p.latest.remove(key)?;
        p.inflight.insert(key.clone());
        Some(status)
    }

    /// A write finished; anything that arrived meanwhile goes next.
    fn finish(&self, key: &PodKey) {
        let enqueue = match self.pending.lock() {
            Ok(mut p) => {
                p.inflight.remove(key);
                p.latest.contains_key(key) && p.queued.insert(key.clone())
            }
            Err(_) => false,
        };
        if enqueue {
            let _ = self.tx.send(key.clone());
        }
    }

    fn requeue(&self, key: PodKey, status: PodStatus) {
        let enqueue = match self.pending.lock() {
            Ok(mut p) => {
                p.inflight.remove(&key);
                // A newer status may have arrived meanwhile; it wins.
                p.latest.entry(key.clone()).or_insert(status);
                p.queued.insert(key.clone())
            }
            Err(_) => false,
        };
        if enqueue {
            let _ = self.tx.send(key);
        }
    }
}

async fn writer(
    client: kube::Client,
    sync: StatusSync,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<PodKey>>>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(key) = rx.lock().await.recv().await else {
            return;
        };
        let Some(status) = sync.take(&key) else {
            continue;
        };
        let api: Api<Pod> = Api::namespaced(client.clone(), &key.namespace);
        // The uid precondition stops a late write from landing on a new
        // pod that reused the name.
        let patch = json!({"metadata": {"uid": key.uid}, "status": status});
        match api
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                backoff = Duration::from_millis(50);
                sync.finish(&key);
            }
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                debug!(pod = %key.name, code = e.code, "status for a pod that is gone; dropped");
                sync.finish(&key);
            }
            Err(e) => {
                warn!(pod = %key.name, error = %e, "writing pod status failed; will retry");
                let sync = sync.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(backoff).await;
                    sync.requeue(key, status);
                });
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
