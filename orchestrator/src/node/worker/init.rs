//! Initializing: init containers run one at a time, in order, each to
//! success before the next; under `restartPolicy: Never` a failed one
//! fails the pod, otherwise it is retried with back-off.

use std::sync::Arc;

use tracing::instrument;

use super::container::Restart;
use super::running::{Outcome, Supervisor};
use super::{Phase, PodWorker, PreparedPod};

#[instrument(skip_all)]
pub(super) async fn run(w: &mut PodWorker, mut p: PreparedPod) -> Phase {
    let policy = match Restart::parse(w.restart_policy()) {
        Restart::Never => Restart::Never,
        _ => Restart::OnFailure,
    };
    let init = std::mem::take(&mut p.init);
    for (i, rc) in init.into_iter().enumerate() {
        let mut sup = Supervisor::new();
        sup.spawn(w, &p.backend, Arc::new(rc), true, i, policy);
        w.publish();
        if let Outcome::Stopping = sup.drive(w).await {
            return Phase::Terminating;
        }
        if !w.init.get(i).is_some_and(super::status::completed_ok) {
            w.terminal = Some("Failed");
            w.publish();
            return Phase::Finished;
        }
    }
    w.initialized = true;
    for i in 0..w.containers.len() {
        w.set_waiting(false, i, "ContainerCreating", None);
    }
    Phase::Running(p)
}
