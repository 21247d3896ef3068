//! Finished (Succeeded or Failed): nothing runs; the pod waits to be
//! deleted. Also where a worker resumes a pod it finds after a node agent
//! restart, so nothing is lost and nothing runs twice.

use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus};
use tracing::instrument;

use super::container::Restart;
use super::{now, Phase, PodWorker};

#[instrument(skip_all)]
pub(super) async fn run(w: &mut PodWorker) -> Phase {
    // Nothing will run in it again: free the address (Jobs leave many
    // finished pods behind).
    w.detach_network().await;
    w.until_stopping().await;
    Phase::Terminating
}

/// Where a fresh worker starts, given what the API last heard about the
/// pod. Guests die with the agent, so a container that was running is
/// reported lost and, by policy, restarted (one more restart) or ended.
pub(super) fn resume_phase(w: &mut PodWorker) -> Phase {
    let Some(prev) = w.last.clone() else {
        return Phase::Pending;
    };
    if w.stopping() {
        return Phase::Terminating;
    }
    let policy = Restart::parse(w.restart_policy());
    match prev.phase.as_deref() {
        Some("Succeeded") => {
            carry_all(w, &prev.container_statuses);
            w.terminal = Some("Succeeded");
            return Phase::Finished;
        }
        Some("Failed") => {
            carry_all(w, &prev.container_statuses);
            w.terminal = Some("Failed");
            return Phase::Finished;
        }
        _ => {}
    }
    for (slot, old) in w
        .containers
        .iter_mut()
        .zip(prev.container_statuses.iter().flatten())
    {
        if slot.name != old.name {
            continue;
        }
        slot.restart_count = old.restart_count;
        slot.last_state = old.last_state.clone();
        let was_running = old.state.as_ref().is_some_and(|s| s.running.is_some());
        if let Some(t) = old.state.as_ref().and_then(|s| s.terminated.clone()) {
            slot.state = Some(ContainerState {
                terminated: Some(t),
                ..Default::default()
            });
        } else if was_running {
            let lost = lost_state();
            if policy == Restart::Never {
                slot.state = Some(lost);
            } else {
                slot.last_state = Some(lost);
                slot.restart_count += 1;
            }
        }
    }
    Phase::Pending
}

fn carry_all(w: &mut PodWorker, old: &Option<Vec<ContainerStatus>>) {
    if let Some(old) = old {
        for (slot, o) in w.containers.iter_mut().zip(old) {
            if slot.name == o.name {
                *slot = o.clone();
            }
        }
    }
}

fn lost_state() -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: 137,
            reason: Some("ContainerStatusUnknown".into()),
            message: Some(
                "The container could not be located when the node agent restarted".into(),
            ),
            finished_at: Some(now()),
            ..Default::default()
        }),
        ..Default::default()
    }
}
