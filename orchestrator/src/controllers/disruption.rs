//! The disruption controller: keeps each PodDisruptionBudget's `status` —
//! how many of its pods are healthy, how many must stay so, how many may be
//! disrupted now — for `kubectl get pdb` and for whoever plans a drain.
//!
//! The arithmetic (`budget`) is shared with the eviction subresource, which
//! works the budget out again at the moment of each eviction rather than
//! trusting a status that may be a moment old; Kubernetes trusts the status
//! and writes `disruptedPods` to cover the gap, which serialised evictions
//! make unnecessary here.
//!
//! Deviation: Kubernetes takes `expectedPods` for a percentage or for
//! `maxUnavailable` from the scale of the pods' controllers; here it is the
//! number of selected pods that have not finished, as it is for an integer
//! `minAvailable` in Kubernetes. The two differ only while a controller is
//! short of pods.

use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{
    PodDisruptionBudget, PodDisruptionBudgetSpec, PodDisruptionBudgetStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use super::informer::key_of;
use super::owners::Selector;
use super::pods;
use super::queue::WorkQueue;
use super::{intstr, new_queue, wiring, Action, ControllerError, Ctx, Reconciler};

pub const NAME: &str = "disruption-controller";

/// The condition Kubernetes' controller keeps on every budget.
const CONDITION: &str = "DisruptionAllowed";

/// A budget in pod counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Selected pods that have not finished.
    pub expected: i32,
    /// Selected pods that are Ready and not being deleted.
    pub healthy: i32,
    /// How many must stay healthy.
    pub desired: i32,
}

impl Budget {
    /// Healthy pods that may be disrupted now.
    pub fn allowed(&self) -> i32 {
        (self.healthy - self.desired).max(0)
    }
}

/// Works a budget out from the pods its selector picks.
pub fn budget<'a>(
    spec: &PodDisruptionBudgetSpec,
    selected: impl Iterator<Item = &'a Pod>,
) -> Budget {
    let (mut expected, mut healthy) = (0, 0);
    for p in selected {
        if pods::is_terminal(p) {
            continue;
        }
        expected += 1;
        if is_healthy(p) {
            healthy += 1;
        }
    }
    let desired = match (&spec.min_available, &spec.max_unavailable) {
        (Some(min), _) => intstr::scaled(min, expected, true),
        (None, Some(max)) => (expected - intstr::scaled(max, expected, true)).max(0),
        // Neither: one pod stays, as policy/v1beta1 defaulted minAvailable.
        (None, None) => 1,
    };
    Budget {
        expected,
        healthy,
        desired,
    }
}

/// Ready, not finished, not being deleted.
pub fn is_healthy(p: &Pod) -> bool {
    pods::is_active(p) && pods::is_ready(p)
}

pub struct DisruptionController {
    ctx: Arc<Ctx>,
}

impl DisruptionController {
    pub fn register(ctx: &Arc<Ctx>) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = new_queue(ctx, NAME);
        wiring::enqueue_self(&ctx.informers.pdbs, &queue);
        // A pod counts in the budgets that select it before or after its
        // change: one whose labels change leaves one budget for another.
        let q = queue.clone();
        let pdbs = Arc::downgrade(&ctx.informers.pdbs);
        ctx.informers.pods.on_change(move |old, new| {
            let Some(pdbs) = pdbs.upgrade() else {
                return;
            };
            let Some(ns) = new.or(old).and_then(|p| p.metadata.namespace.clone()) else {
                return;
            };
            for pdb in pdbs.list() {
                if pdb.metadata.namespace.as_deref() != Some(ns.as_str()) {
                    continue;
                }
                let Some(sel) = pdb.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
                    continue;
                };
                let Ok(sel) = Selector::new(sel) else {
                    continue;
                };
                if [old, new]
                    .into_iter()
                    .flatten()
                    .any(|p| sel.matches(p.metadata.labels.as_ref()))
                {
                    q.add(key_of(&*pdb));
                }
            }
        });
        (Arc::new(DisruptionController { ctx: ctx.clone() }), queue)
    }
}

/// The status a budget should show, keeping the condition's transition
/// time while its status stays.
pub fn status_for(pdb: &PodDisruptionBudget, b: Budget, now: Timestamp) -> serde_json::Value {
    let allowed = b.allowed();
    let (status, reason) = if allowed > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let prev = pdb
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == CONDITION));
    let since = prev
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    let condition = Condition {
        type_: CONDITION.into(),
        status: status.into(),
        reason: reason.into(),
        message: String::new(),
        last_transition_time: since,
        observed_generation: pdb.metadata.generation,
    };
    json!({
        "observedGeneration": pdb.metadata.generation,
        "expectedPods": b.expected,
        "currentHealthy": b.healthy,
        "desiredHealthy": b.desired,
        "disruptionsAllowed": allowed,
        "conditions": [condition],
    })
}

#[async_trait]
impl Reconciler for DisruptionController {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError> {
        let Some(pdb) = self.ctx.informers.pdbs.get(key) else {
            return Ok(Action::AwaitChange);
        };
        let spec = pdb.spec.clone().unwrap_or_default();
        let ns = pdb.metadata.namespace.as_deref().unwrap_or_default();
        // No selector selects nothing in policy/v1 (an empty one, everything).
        let selected: Vec<Arc<Pod>> = match &spec.selector {
            None => Vec::new(),
            Some(sel) => {
                let sel = Selector::new(sel).map_err(|message| ControllerError::Invalid {
                    object: format!("poddisruptionbudget {key}"),
                    message,
                })?;
                self.ctx
                    .informers
                    .pods
                    .list()
                    .into_iter()
                    .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
                    .filter(|p| sel.matches(p.metadata.labels.as_ref()))
                    .collect()
            }
        };
        let b = budget(&spec, selected.iter().map(|p| &**p));
        let wanted = status_for(&pdb, b, Timestamp::now());
        // Compared as the typed status, so a field the server writes in
        // another form (or leaves out) cannot make every pass write again.
        let unchanged = serde_json::from_value::<PodDisruptionBudgetStatus>(wanted.clone())
            .is_ok_and(|w| pdb.status.as_ref() == Some(&w));
        if !unchanged {
            wiring::write_status(&self.ctx, &self.ctx.informers.pdbs, &*pdb, &wanted).await?;
        }
        Ok(Action::AwaitChange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn pod(ready: bool, phase: &str, deleting: bool) -> Pod {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {"phase": phase, "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}
            ]}
        }))
        .expect("pod");
        if deleting {
            p.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        }
        p
    }

    fn spec(min: Option<IntOrString>, max: Option<IntOrString>) -> PodDisruptionBudgetSpec {
        PodDisruptionBudgetSpec {
            min_available: min,
            max_unavailable: max,
            ..Default::default()
        }
    }

    #[test]
    fn healthy_pods_beyond_the_minimum_may_go() {
        let pods = [
            pod(true, "Running", false),
            pod(true, "Running", false),
            pod(true, "Running", false),
            pod(false, "Running", false),
            // Being deleted: expected, not healthy. Finished: neither.
            pod(true, "Running", true),
            pod(false, "Succeeded", false),
        ];
        let b = budget(&spec(Some(IntOrString::Int(2)), None), pods.iter());
        assert_eq!(
            b,
            Budget {
                expected: 5,
                healthy: 3,
                desired: 2
            }
        );
        assert_eq!(b.allowed(), 1);
        let pct = budget(
            &spec(Some(IntOrString::String("50%".into())), None),
            pods.iter(),
        );
        assert_eq!((pct.desired, pct.allowed()), (3, 0));
        let max = budget(&spec(None, Some(IntOrString::Int(1))), pods.iter());
        assert_eq!((max.desired, max.allowed()), (4, 0));
        let none = budget(&spec(None, None), pods.iter());
        assert_eq!((none.desired, none.allowed()), (1, 2));
    }

    #[test]
    fn condition_keeps_its_transition_time_while_it_holds() {
        let mut pdb = PodDisruptionBudget::default();
        pdb.metadata.generation = Some(2);
        let b = Budget {
            expected: 3,
            healthy: 3,
            desired: 2,
        };
        let t0 = Timestamp::UNIX_EPOCH;
        let first = status_for(&pdb, b, t0);
        assert_eq!(first["disruptionsAllowed"], 1);
        assert_eq!(first["observedGeneration"], 2);
        assert_eq!(first["conditions"][0]["reason"], "SufficientPods");
        pdb.status = serde_json::from_value(first.clone()).expect("status");
        let later = Timestamp::now();
        assert_eq!(status_for(&pdb, b, later), first, "nothing moved");
        let short = Budget { healthy: 2, ..b };
        let after = status_for(&pdb, short, later);
        assert_eq!(after["conditions"][0]["status"], "False");
        assert_eq!(after["conditions"][0]["reason"], "InsufficientPods");
        assert_ne!(
            after["conditions"][0]["lastTransitionTime"],
            first["conditions"][0]["lastTransitionTime"]
        );
    }
}
