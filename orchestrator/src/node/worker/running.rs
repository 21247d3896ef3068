//! Running: every app container on its own task, restarted by policy; the
//! pod worker folds their reports into the pod status. Ends when every
//! container is done for good (Succeeded/Failed) or the pod is deleted.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ContainerStatus;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::instrument;

use super::container::{ContainerTask, Restart, Update};
use super::{Phase, PodWorker, PreparedPod, ReadyContainer};

/// Container tasks of one phase, and the channels to them.
pub(super) struct Supervisor {
    tasks: JoinSet<ContainerStatus>,
    updates: mpsc::UnboundedReceiver<Update>,
    tx: mpsc::UnboundedSender<Update>,
    /// Set to the pod's grace period when its containers are to stop.
    stop: watch::Sender<Option<Duration>>,
}

pub(super) enum Outcome {
    AllDone,
    Stopping,
}

/// Extra time past the grace period before container tasks are abandoned:
/// a kill lands at the guest's next epoch tick, so this is generous.
const KILL_SLACK: Duration = Duration::from_secs(2);

impl Supervisor {
    pub(super) fn new() -> Supervisor {
        let (tx, updates) = mpsc::unbounded_channel();
        let (stop, _) = watch::channel(None);
        Supervisor {
            tasks: JoinSet::new(),
            updates,
            tx,
            stop,
        }
    }

    pub(super) fn spawn(
        &mut self,
        w: &PodWorker,
        backend: &Arc<dyn shoal_runtime::Backend>,
        ready: Arc<ReadyContainer>,
        init: bool,
        index: usize,
        policy: Restart,
    ) {
        let list = if init { &w.init } else { &w.containers };
        let status = list.get(index).cloned().unwrap_or_default();
        let task = ContainerTask {
            ctx: w.ctx.clone(),
            pod: w.key.clone(),
            backend: backend.clone(),
            object: w.container_object(init, &ready.spec.name),
            ready,
            init,
            index,
            policy,
            status,
            updates: self.tx.clone(),
            pod_ip: w.pod_ip.clone(),
            netns: w.net.as_ref().map(|n| n.netns.clone()),
            stop: self.stop.subscribe(),
            grace: Duration::from_secs(
                w.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
                    .map_or(30, |g| u64::try_from(g).unwrap_or(0)),
            ),
        };
        self.tasks.spawn(task.run());
    }

    fn apply(w: &mut PodWorker, u: Update) {
        let list = if u.init {
            &mut w.init
        } else {
            &mut w.containers
        };
        if let Some(slot) = list.get_mut(u.index) {
            *slot = u.status;
        }
    }

    /// Folds reports into the pod status until every task has ended or
    /// the pod is being deleted (then stops them first).
    pub(super) async fn drive(&mut self, w: &mut PodWorker) -> Outcome {
        loop {
            tokio::select! {
                Some(u) = self.updates.recv() => {
                    Self::apply(w, u);
                    while let Ok(u) = self.updates.try_recv() {
                        Self::apply(w, u);
                    }
                    w.publish();
                }
                done = self.tasks.join_next() => {
                    if done.is_none() {
                        self.drain(w);
                        return Outcome::AllDone;
                    }
                }
                _ = w.until_stopping() => {
                    self.shutdown(w).await;
                    return Outcome::Stopping;
                }
            }
        }
    }

    fn drain(&mut self, w: &mut PodWorker) {
        while let Ok(u) = self.updates.try_recv() {
            Self::apply(w, u);
        }
    }

    /// Stops every container within the pod's grace period.
    async fn shutdown(&mut self, w: &mut PodWorker) {
        let grace = w
            .pod
            .metadata
            .deletion_grace_period_seconds
            .unwrap_or(0)
            .max(0) as u64;
        let _ = self.stop.send(Some(Duration::from_secs(grace)));
        let deadline = Duration::from_secs(grace) + KILL_SLACK;
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!(pod = %w.key.name, "containers did not stop in time; abandoning them");
            self.tasks.abort_all();
        }
        self.drain(w);
    }
}

#[instrument(skip_all)]
pub(super) async fn run(w: &mut PodWorker, p: PreparedPod) -> Phase {
    w.initialized = true;
    let policy = Restart::parse(w.restart_policy());
    let mut sup = Supervisor::new();
    for (i, rc) in p.app.into_iter().enumerate() {
        if done_for_good(w.containers.get(i), policy) {
            continue;
        }
        sup.spawn(w, &p.backend, Arc::new(rc), false, i, policy);
    }
    w.publish();
    match sup.drive(w).await {
        Outcome::Stopping => Phase::Terminating,
        Outcome::AllDone => {
            let all_ok = w.containers.iter().all(super::status::completed_ok);
            w.terminal = Some(if all_ok { "Succeeded" } else { "Failed" });
            w.publish();
            Phase::Finished
        }
    }
}

/// A container that already ended and whose policy will not restart it
/// (known from before a node agent restart).
fn done_for_good(status: Option<&ContainerStatus>, policy: Restart) -> bool {
    let Some(t) = status
        .and_then(|s| s.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
    else {
        return false;
    };
    match policy {
        Restart::Always => false,
        Restart::OnFailure => t.exit_code == 0,
        Restart::Never => true,
    }
}
