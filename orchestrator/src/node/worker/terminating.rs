//! Terminating: the containers are stopped (by the phase that ran them);
//! remove the pod from the API (kubelet's final delete with grace 0 and the
//! uid as precondition) and clean up the node's files.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Preconditions};
use kube::Api;
use tracing::{instrument, warn};

use super::{Phase, PodWorker};

#[instrument(skip_all)]
pub(super) async fn run(w: &mut PodWorker) -> Phase {
    w.detach_network().await;
    w.ctx.status.forget(&w.key);
    if !w.gone() {
        let api: Api<Pod> = Api::namespaced(w.ctx.client.clone(), &w.key.namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(w.key.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let mut backoff = Duration::from_millis(50);
        loop {
            match api.delete(&w.key.name, &params).await {
                Ok(_) => break,
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => break,
                Err(e) => {
                    warn!(error = %e, "removing the pod from the API failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
    w.ctx.logs.remove_pod(&w.key.uid);
    // Its volumes, if it had any.
    let _ = std::fs::remove_dir_all(&w.dir);
    w.ctx.metrics.pod_removed(w.last.as_ref());
    Phase::Done
}
