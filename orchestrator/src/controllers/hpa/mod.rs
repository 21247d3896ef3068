//! The HorizontalPodAutoscaler controller (autoscaling/v2, resource
//! metrics). Every sync period it reads the target's `scale` subresource,
//! the pods its selector picks and their PodMetrics (metrics.k8s.io, which
//! Shoal's API server measures on the nodes), works out the replicas
//! (`replicas.rs`), and writes them back through `scale`: any kind with a
//! scale subresource can be autoscaled, as in Kubernetes.

mod replicas;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use k8s_openapi::api::autoscaling::v2::{
    HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerStatus,
    MetricStatus, MetricValueStatus, ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
use kube::Api;
use serde_json::json;
use tracing::{debug, info};

use super::informer::{key_of, split_key};
use super::pods::{is_ready, object_ref};
use super::queue::WorkQueue;
use super::{api_code, api_resource, new_queue, wiring, Action, ControllerError, Ctx, Reconciler};
use crate::apiserver::resource_metrics::PodMetrics;
use replicas::{PodFigures, Recommendation, Target, Timed};

pub const NAME: &str = "horizontal-pod-autoscaler";

/// What the controller remembers per autoscaler between syncs.
#[derive(Default)]
struct History {
    /// Recent recommendations, for the stabilization windows.
    recommendations: Vec<Timed>,
    /// Recent scale changes (+ up, − down), for the rate policies.
    changes: Vec<Timed>,
}

pub struct HpaController {
    ctx: Arc<Ctx>,
    history: Mutex<HashMap<String, History>>,
}

/// One metric's outcome, for the status and the Event.
struct Measured {
    resource: String,
    recommendation: Recommendation,
}

impl HpaController {
    pub fn register(ctx: &Arc<Ctx>) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = new_queue(ctx, NAME);
        // New autoscalers and changed specs are looked at at once; after
        // that each one's sync period paces it. Its own status writes must
        // not queue it again: usage moves a little on every read, so each
        // write would bring another pass at once, without end.
        let q = queue.clone();
        ctx.informers.hpas.on_change(move |old, new| {
            let Some(n) = new else { return };
            if old.is_none_or(|o| o.spec != n.spec) {
                q.add(key_of(n));
            }
        });
        (
            Arc::new(HpaController {
                ctx: ctx.clone(),
                history: Mutex::new(HashMap::new()),
            }),
            queue,
        )
    }

    /// Each resource metric's recommendation; the first error stops it, as
    /// Kubernetes will not scale on a partial picture.
    async fn measure(
        &self,
        hpa: &HorizontalPodAutoscaler,
        ns: &str,
        selector: &str,
        current: i32,
    ) -> Result<Vec<Measured>, String> {
        let lp = ListParams::default().labels(selector);
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), ns);
        let pods = pods
            .list(&lp)
            .await
            .map_err(|e| format!("listing the target's pods: {e}"))?
            .items;
        let metrics: Api<PodMetrics> = Api::namespaced(self.ctx.client.clone(), ns);
        let metrics = metrics
            .list(&lp)
            .await
            .map_err(|e| format!("unable to get metrics for resource: {e}"))?
            .items;
        let usage: HashMap<&str, &PodMetrics> = metrics
            .iter()
            .filter_map(|m| Some((m.metadata.name.as_deref()?, m)))
            .collect();
        let spec = hpa.spec.as_ref().ok_or("no spec")?;
        let mut wanted: Vec<(String, Target)> = Vec::new();
        for m in spec.metrics.iter().flatten() {
            let Some(res) = m.resource.as_ref().filter(|_| m.type_ == "Resource") else {
                return Err(format!(
                    "metric type {:?} is not supported; only Resource (cpu, memory) is",
                    m.type_
                ));
            };
            let target = match (res.target.type_.as_str(), &res.target) {
                ("Utilization", t) => Target::Utilization(t.average_utilization.unwrap_or(80)),
                ("AverageValue", t) => Target::AverageValue(
                    t.average_value
                        .as_ref()
                        .and_then(|q| quantity(&res.name, q))
                        .ok_or("averageValue is missing or not a quantity")?,
                ),
                (other, _) => {
                    return Err(format!(
                        "target type {other:?} is not supported for resource metrics"
                    ))
                }
            };
            wanted.push((res.name.clone(), target));
        }
        if wanted.is_empty() {
            // autoscaling/v2 defaults to 80% CPU when no metric is given.
            wanted.push(("cpu".into(), Target::Utilization(80)));
        }
        let mut out = Vec::new();
        for (resource, target) in wanted {
            let figures: Vec<PodFigures> = pods
                .iter()
                .filter(|p| super::pods::is_active(p))
                .map(|p| {
                    let name = p.metadata.name.as_deref().unwrap_or("");
                    figures(p, usage.get(name), &resource)
                })
                .collect();
            let rec = replicas::recommend(current, &figures, target)
                .map_err(|e| format!("failed to get {resource} utilization: {e}"))?;
            out.push(Measured {
                resource,
                recommendation: rec,
            });
        }
        Ok(out)
    }

    async fn write_status(
        &self,
        hpa: &HorizontalPodAutoscaler,
        status: HorizontalPodAutoscalerStatus,
    ) -> Result<(), ControllerError> {
        wiring::write_status(&self.ctx, &self.ctx.informers.hpas, hpa, &status).await
    }
}

/// A quantity of `resource` in the calculator's unit.
fn quantity(resource: &str, q: &Quantity) -> Option<i64> {
    if resource == "cpu" {
        shoal_sdk::quantity::cpu_millis(&q.0)
    } else {
        shoal_sdk::quantity::base_units(&q.0)
    }
}

/// A pod's figures for `resource`: requests (else limits, which admission
/// copies into requests in Kubernetes) summed over its containers.
fn figures(p: &Pod, m: Option<&&PodMetrics>, resource: &str) -> PodFigures {
    let containers = p
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let request = containers
        .iter()
        .map(|c| {
            let r = c.resources.as_ref()?;
            let q = r
                .requests
                .as_ref()
                .and_then(|m| m.get(resource))
                .or_else(|| r.limits.as_ref().and_then(|m| m.get(resource)))?;
            quantity(resource, q)
        })
        .sum::<Option<i64>>();
    let usage = m.map(|m| {
        m.containers
            .iter()
            .filter_map(|c| c.usage.get(resource).and_then(|q| quantity(resource, q)))
            .sum()
    });
    let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    PodFigures {
        ready: running && is_ready(p),
        usage,
        request,
    }
}

/// A condition that keeps its transition time while its status holds.
fn condition(
    old: Option<&HorizontalPodAutoscalerStatus>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
) -> HorizontalPodAutoscalerCondition {
    let status = if ok { "True" } else { "False" };
    let since = old
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(Timestamp::now()));
    HorizontalPodAutoscalerCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(since),
    }
}

fn metric_status(m: &Measured) -> MetricStatus {
    let r = &m.recommendation;
    let average = if m.resource == "cpu" {
        format!("{}m", r.average)
    } else {
        r.average.to_string()
    };
    MetricStatus {
        type_: "Resource".into(),
        resource: Some(ResourceMetricStatus {
            name: m.resource.clone(),
            current: MetricValueStatus {
                average_utilization: r.utilization,
                average_value: Some(Quantity(average)),
                value: None,
            },
        }),
        ..MetricStatus::default()
    }
}

#[async_trait]
impl Reconciler for HpaController {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError> {
        let period = self.ctx.settings.hpa_sync_period;
        let Some(hpa) = self.ctx.informers.hpas.get(key) else {
            if let Ok(mut h) = self.history.lock() {
                h.remove(key);
            }
            return Ok(Action::AwaitChange);
        };
        if hpa.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let (ns, _) = split_key(key);
        let Some(spec) = hpa.spec.clone() else {
            return Ok(Action::AwaitChange);
        };
        let old = hpa.status.as_ref();
        let target_ref = &spec.scale_target_ref;
        let what = format!("{}/{}", target_ref.kind, target_ref.name);
        let ar = api_resource(
            target_ref.api_version.as_deref().unwrap_or("apps/v1"),
            &target_ref.kind,
        );
        let targets: Api<DynamicObject> = Api::namespaced_with(self.ctx.client.clone(), ns, &ar);
        let scale = match targets.get_scale(&target_ref.name).await {
            Ok(s) => s,
            Err(e) if matches!(api_code(&e), Some(404) | Some(405)) => {
                let msg = format!(
                    "the HPA controller was unable to get the target's current scale: {what}: {e}"
                );
                self.ctx
                    .events
                    .warning(&object_ref(hpa.as_ref()), "FailedGetScale", msg.clone());
                let mut status = old.cloned().unwrap_or_default();
                status.conditions = Some(vec![condition(
                    old,
                    "AbleToScale",
                    false,
                    "FailedGetScale",
                    msg,
                )]);
                self.write_status(&hpa, status).await?;
                return Ok(Action::Requeue(period));
            }
            Err(e) => {
                return Err(ControllerError::Api {
                    action: format!("reading the scale of {what}"),
                    source: e,
                })
            }
        };
        let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let actual = scale.status.as_ref().map_or(0, |s| s.replicas);
        let selector = scale
            .status
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        let mut status = HorizontalPodAutoscalerStatus {
            current_replicas: Some(actual),
            desired_replicas: current,
            last_scale_time: old.and_then(|s| s.last_scale_time.clone()),
            observed_generation: hpa.metadata.generation,
            current_metrics: old.and_then(|s| s.current_metrics.clone()),
            conditions: None,
        };
        // Not scaling this round: the scale was read, but `why` stops it.
        let inactive = |status: &mut HorizontalPodAutoscalerStatus, reason: &str, why: String| {
            status.conditions = Some(vec![
                condition(
                    old,
                    "AbleToScale",
                    true,
                    "SucceededGetScale",
                    "the HPA controller was able to get the target's current scale".into(),
                ),
                condition(old, "ScalingActive", false, reason, why),
            ]);
        };
        if current == 0 {
            inactive(
                &mut status,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero".into(),
            );
            self.write_status(&hpa, status).await?;
            return Ok(Action::Requeue(period));
        }
        let measured = match self.measure(&hpa, ns, &selector, current).await {
            Ok(m) => m,
            Err(msg) => {
                debug!(hpa = key, error = %msg, "no metrics to scale on");
                self.ctx.events.warning(
                    &object_ref(hpa.as_ref()),
                    "FailedGetResourceMetric",
                    msg.clone(),
                );
                inactive(&mut status, "FailedGetResourceMetric", msg);
                self.write_status(&hpa, status).await?;
                return Ok(Action::Requeue(period));
            }
        };
        let Some(best) = measured.iter().max_by_key(|m| m.recommendation.replicas) else {
            return Ok(Action::Requeue(period));
        };
        let now = Instant::now();
        let behavior = spec.behavior.as_ref();
        let min = spec.min_replicas.unwrap_or(1).max(1);
        let (wanted, stabilized) = {
            let Ok(mut all) = self.history.lock() else {
                return Ok(Action::Requeue(period));
            };
            let h = all.entry(key.to_string()).or_default();
            let keep = replicas::longest_memory(behavior);
            h.recommendations
                .retain(|(at, _)| now.saturating_duration_since(*at) <= keep);
            h.changes
                .retain(|(at, _)| now.saturating_duration_since(*at) <= keep);
            h.recommendations.push((now, best.recommendation.replicas));
            let stabilized = replicas::stabilize(
                behavior,
                &h.recommendations,
                now,
                current,
                best.recommendation.replicas,
            );
            (
                replicas::limit(
                    behavior,
                    &h.changes,
                    now,
                    current,
                    stabilized,
                    min,
                    spec.max_replicas,
                ),
                stabilized,
            )
        };
        let (desired, limited_by) = wanted;
        let reason = match &best.recommendation.utilization {
            Some(_) => format!(
                "{} resource utilization (percentage of request)",
                best.resource
            ),
            None => format!("{} resource", best.resource),
        };
        let mut able = condition(
            old,
            "AbleToScale",
            true,
            "ReadyForNewScale",
            "recommended size matches current size".into(),
        );
        if desired != current {
            let patch = json!({"spec": {"replicas": desired}});
            targets
                .patch_scale(
                    &target_ref.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .map_err(ControllerError::api(format!("scaling {what} to {desired}")))?;
            let direction = if desired > current { "above" } else { "below" };
            let msg = format!("New size: {desired}; reason: {reason} {direction} target");
            info!(hpa = key, from = current, to = desired, reason = %reason, "rescaled");
            self.ctx
                .events
                .normal(&object_ref(hpa.as_ref()), "SuccessfulRescale", msg);
            if let Ok(mut all) = self.history.lock() {
                all.entry(key.to_string())
                    .or_default()
                    .changes
                    .push((now, desired - current));
            }
            status.last_scale_time = Some(Time(Timestamp::now()));
            able = condition(
                old,
                "AbleToScale",
                true,
                "SucceededRescale",
                format!("the HPA controller was able to update the target scale to {desired}"),
            );
        } else if stabilized != best.recommendation.replicas {
            able = condition(old, "AbleToScale", true, "ScaleDownStabilized", "recent recommendations were higher than current one, applying the highest recent recommendation".into());
        }
        status.desired_replicas = desired;
        status.current_metrics = Some(measured.iter().map(metric_status).collect());
        let limited = match limited_by {
            Some(why @ ("TooManyReplicas" | "TooFewReplicas")) => condition(
                old,
                "ScalingLimited",
                true,
                why,
                format!(
                    "the desired replica count is {} the {} replica count",
                    if why == "TooManyReplicas" {
                        "more than"
                    } else {
                        "less than"
                    },
                    if why == "TooManyReplicas" {
                        "maximum"
                    } else {
                        "minimum"
                    }
                ),
            ),
            Some(why) => condition(
                old,
                "ScalingLimited",
                true,
                why,
                format!("the desired replica count is limited by the {why} behavior policy"),
            ),
            None => condition(
                old,
                "ScalingLimited",
                false,
                "DesiredWithinRange",
                "the desired count is within the acceptable range".into(),
            ),
        };
        status.conditions = Some(vec![
            able,
            condition(
                old,
                "ScalingActive",
                true,
                "ValidMetricFound",
                format!("the HPA was able to successfully calculate a replica count from {reason}"),
            ),
            limited,
        ]);
        self.write_status(&hpa, status).await?;
        debug!(hpa = %key_of(hpa.as_ref()), current, desired, "autoscaler synced");
        Ok(Action::Requeue(period))
    }
}
