//! A Deployment's status from its ReplicaSets, pure: the counts kubectl
//! prints and the `Available`/`Progressing` conditions `kubectl rollout
//! status` reads, including the progress deadline.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

pub const DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

/// What one sync saw and did.
pub struct Observed<'a> {
    pub d: &'a Deployment,
    pub new: Option<&'a ReplicaSet>,
    pub old: &'a [Arc<ReplicaSet>],
    /// The new ReplicaSet was created by this sync.
    pub created_new: bool,
    pub max_unavailable: i32,
}

fn counts(rs: &ReplicaSet) -> (i32, i32, i32) {
    let s = rs.status.clone().unwrap_or_default();
    (
        s.replicas,
        s.ready_replicas.unwrap_or(0),
        s.available_replicas.unwrap_or(0),
    )
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Puts `c` in place of its type's condition; the transition time stays
/// when the status does not change, and nothing changes at all when the
/// reason is the same too, unless `touch` (progress was made).
fn set(conds: &mut Vec<DeploymentCondition>, mut c: DeploymentCondition, touch: bool) {
    if let Some(cur) = conds.iter_mut().find(|x| x.type_ == c.type_) {
        if cur.status == c.status && cur.reason == c.reason && !touch {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
        *cur = c;
    } else {
        conds.push(c);
    }
}

/// The status to write, and when to look again for the progress deadline.
pub fn compute(o: &Observed<'_>, now: Timestamp) -> (DeploymentStatus, Option<Duration>) {
    let d = o.d;
    let spec = d.spec.clone().unwrap_or_default();
    let want = spec.replicas.unwrap_or(1);
    let prev = d.status.clone().unwrap_or_default();
    let all: Vec<&ReplicaSet> = o
        .new
        .into_iter()
        .chain(o.old.iter().map(|r| r.as_ref()))
        .collect();
    let (mut replicas, mut ready, mut available) = (0, 0, 0);
    for rs in &all {
        let (r, re, a) = counts(rs);
        replicas += r;
        ready += re;
        available += a;
    }
    let updated = o.new.map_or(0, |n| counts(n).0);
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(replicas),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((want - available).max(0)),
        collision_count: prev.collision_count,
        conditions: None,
        ..DeploymentStatus::default()
    };
    let mut conds = prev.conditions.clone().unwrap_or_default();
    if available >= want - o.max_unavailable {
        set(
            &mut conds,
            condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                now,
            ),
            false,
        );
    } else {
        set(
            &mut conds,
            condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                now,
            ),
            false,
        );
    }
    let new_name = o
        .new
        .and_then(|n| n.metadata.name.clone())
        .unwrap_or_default();
    let current = conds.iter().find(|c| c.type_ == "Progressing").cloned();
    let new_fresh = o.new.is_some_and(|n| {
        n.status.as_ref().and_then(|s| s.observed_generation) >= n.metadata.generation
    });
    let complete = updated == want && replicas == want && available == want && new_fresh;
    let progressed = updated > prev.updated_replicas.unwrap_or(0)
        || (replicas - updated) < (prev.replicas.unwrap_or(0) - prev.updated_replicas.unwrap_or(0))
        || ready > prev.ready_replicas.unwrap_or(0)
        || available > prev.available_replicas.unwrap_or(0);
    let names_new = current
        .as_ref()
        .and_then(|c| c.message.as_deref())
        .is_some_and(|m| m.contains(&format!("\"{new_name}\"")));
    let mut wake = None;
    if spec.paused == Some(true) {
        set(
            &mut conds,
            condition(
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
                now,
            ),
            false,
        );
    } else if complete {
        set(
            &mut conds,
            condition(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{new_name}\" has successfully progressed."),
                now,
            ),
            false,
        );
    } else if o.created_new {
        set(
            &mut conds,
            condition(
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                format!("Created new replica set \"{new_name}\""),
                now,
            ),
            true,
        );
    } else if o.new.is_some() && !names_new {
        set(
            &mut conds,
            condition(
                "Progressing",
                "True",
                "FoundNewReplicaSet",
                format!("Found new replica set \"{new_name}\""),
                now,
            ),
            true,
        );
    } else if progressed {
        set(
            &mut conds,
            condition(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{new_name}\" is progressing."),
                now,
            ),
            true,
        );
    } else if let Some(cur) = &current {
        let deadline = i64::from(spec.progress_deadline_seconds.unwrap_or(600));
        let since = cur.last_update_time.as_ref().map_or(now, |t| t.0);
        let left_ms = since.as_millisecond() + deadline * 1000 - now.as_millisecond();
        let running = cur.reason.as_deref() != Some(DEADLINE_EXCEEDED)
            && cur.reason.as_deref() != Some("DeploymentPaused");
        if running && left_ms <= 0 {
            set(
                &mut conds,
                condition(
                    "Progressing",
                    "False",
                    DEADLINE_EXCEEDED,
                    format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                    now,
                ),
                false,
            );
        }
    }
    // A rollout in progress is looked at again when its deadline passes.
    if let Some(c) = conds.iter().find(|c| c.type_ == "Progressing") {
        let in_progress =
            c.status == "True" && c.reason.as_deref() != Some("NewReplicaSetAvailable");
        if in_progress && !complete {
            let deadline = i64::from(spec.progress_deadline_seconds.unwrap_or(600));
            let since = c.last_update_time.as_ref().map_or(now, |t| t.0);
            let left_ms = since.as_millisecond() + deadline * 1000 - now.as_millisecond();
            wake = Some(Duration::from_millis(left_ms.max(0) as u64 + 50));
        }
    }
    status.conditions = Some(conds);
    (status, wake)
}

/// Whether `status` says the rollout ran out of time.
pub fn deadline_exceeded(status: &DeploymentStatus) -> bool {
    status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Progressing" && c.reason.as_deref() == Some(DEADLINE_EXCEEDED))
}

/// Whether the Deployment's current template is fully rolled out.
pub fn is_complete(status: &DeploymentStatus) -> bool {
    status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Progressing" && c.reason.as_deref() == Some("NewReplicaSetAvailable"))
}
