//! How many replicas a HorizontalPodAutoscaler wants: Kubernetes' replica
//! calculator for resource metrics, then its behaviour rules
//! (stabilization windows and rate policies). Pure functions of the pods'
//! figures and the history the controller keeps.

use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscalerBehavior};

/// Within this fraction of the target nothing changes (Kubernetes'
/// `--horizontal-pod-autoscaler-tolerance`).
pub const TOLERANCE: f64 = 0.1;

/// One pod as the calculation sees it, in the metric's unit (millicores
/// for CPU, bytes for memory).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodFigures {
    /// Running and Ready.
    pub ready: bool,
    /// Measured usage; None when the pod has no metrics yet.
    pub usage: Option<i64>,
    /// The sum of its containers' requests; None if one has none.
    pub request: Option<i64>,
}

/// What a resource metric aims at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Percent of the pods' requests.
    Utilization(i32),
    /// An absolute average per pod.
    AverageValue(i64),
}

/// The calculator's answer for one metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recommendation {
    pub replicas: i32,
    /// Average utilization in percent of requests (Utilization targets).
    pub utilization: Option<i32>,
    /// Average usage per measured pod.
    pub average: i64,
}

/// Kubernetes' `GetResourceReplicas`: the usage ratio over the ready pods
/// with metrics; pods without metrics count as using their request (when
/// scaling down) or nothing (when scaling up), and unready pods as nothing
/// when scaling up, so that neither moves the decision the wrong way.
pub fn recommend(
    current: i32,
    pods: &[PodFigures],
    target: Target,
) -> Result<Recommendation, String> {
    let measured: Vec<&PodFigures> = pods.iter().filter(|p| p.usage.is_some()).collect();
    if measured.is_empty() {
        return Err("did not receive metrics for any ready pods".into());
    }
    // Each pod's request in the target's terms: for AverageValue every pod
    // "requests" the target, so the ratio reads the same way.
    let request_of = |p: &PodFigures| -> Result<i64, String> {
        match target {
            Target::Utilization(_) => p
                .request
                .filter(|r| *r > 0)
                .ok_or_else(|| "missing request for the resource in a pod".to_string()),
            Target::AverageValue(v) => Ok(v.max(1)),
        }
    };
    let target_ratio = |usage: i64, requests: i64| -> f64 {
        let used = usage as f64 / requests.max(1) as f64;
        match target {
            Target::Utilization(u) => used * 100.0 / f64::from(u.max(1)),
            Target::AverageValue(_) => used,
        }
    };
    let ready: Vec<&PodFigures> = measured.iter().copied().filter(|p| p.ready).collect();
    let unready = measured.len() - ready.len();
    let missing: Vec<&PodFigures> = pods.iter().filter(|p| p.usage.is_none()).collect();
    let (mut usage, mut requests) = (0i64, 0i64);
    for p in &ready {
        usage += p.usage.unwrap_or(0);
        requests += request_of(p)?;
    }
    let average = if ready.is_empty() {
        0
    } else {
        usage / ready.len() as i64
    };
    let utilization = match target {
        Target::Utilization(_) if requests > 0 => Some((usage * 100 / requests) as i32),
        _ => None,
    };
    let answer = |replicas: i32| Recommendation {
        replicas,
        utilization,
        average,
    };
    if ready.is_empty() {
        // Only unready pods have metrics: nothing to go on yet.
        return Ok(answer(current));
    }
    let ratio = target_ratio(usage, requests);
    let up_with_unready = unready > 0 && ratio > 1.0;
    if !up_with_unready && missing.is_empty() {
        if (1.0 - ratio).abs() <= TOLERANCE {
            return Ok(answer(current));
        }
        return Ok(answer((ratio * ready.len() as f64).ceil() as i32));
    }
    let mut counted = ready.len();
    for p in &missing {
        let req = request_of(p)?;
        requests += req;
        counted += 1;
        if ratio < 1.0 {
            usage += match target {
                Target::Utilization(u) => req * i64::from(u.max(100)) / 100,
                Target::AverageValue(v) => v,
            };
        }
    }
    if up_with_unready {
        for p in measured.iter().filter(|p| !p.ready) {
            requests += request_of(p)?;
            counted += 1;
        }
    }
    let again = target_ratio(usage, requests);
    if (1.0 - again).abs() <= TOLERANCE || (ratio < 1.0) != (again < 1.0) {
        return Ok(answer(current));
    }
    let replicas = (again * counted as f64).ceil() as i32;
    if (again < 1.0 && replicas > current) || (again > 1.0 && replicas < current) {
        return Ok(answer(current));
    }
    Ok(answer(replicas))
}

/// A recommendation or a scale change, and when.
pub type Timed = (Instant, i32);

/// Kubernetes' default behaviour: scale up at once by up to 4 pods or
/// 100% per 15 s, whichever is more; scale down to the highest
/// recommendation of the last 5 minutes, by up to 100% per 15 s.
fn rules(b: Option<&HorizontalPodAutoscalerBehavior>, up: bool) -> HPAScalingRules {
    let given = b.and_then(|b| {
        if up {
            b.scale_up.clone()
        } else {
            b.scale_down.clone()
        }
    });
    let policy = |type_: &str, value: i32| k8s_openapi::api::autoscaling::v2::HPAScalingPolicy {
        type_: type_.into(),
        value,
        period_seconds: 15,
    };
    let default = if up {
        HPAScalingRules {
            stabilization_window_seconds: Some(0),
            select_policy: Some("Max".into()),
            policies: Some(vec![policy("Pods", 4), policy("Percent", 100)]),
            tolerance: None,
        }
    } else {
        HPAScalingRules {
            stabilization_window_seconds: Some(300),
            select_policy: Some("Max".into()),
            policies: Some(vec![policy("Percent", 100)]),
            tolerance: None,
        }
    };
    match given {
        None => default,
        Some(g) => HPAScalingRules {
            stabilization_window_seconds: g
                .stabilization_window_seconds
                .or(default.stabilization_window_seconds),
            select_policy: g.select_policy.or(default.select_policy),
            policies: g.policies.or(default.policies),
            tolerance: g.tolerance,
        },
    }
}

fn window(r: &HPAScalingRules) -> Duration {
    Duration::from_secs(r.stabilization_window_seconds.unwrap_or(0).max(0) as u64)
}

/// The longest period any policy looks back over, for pruning history.
pub fn longest_memory(b: Option<&HorizontalPodAutoscalerBehavior>) -> Duration {
    [rules(b, true), rules(b, false)]
        .iter()
        .flat_map(|r| {
            let periods = r
                .policies
                .iter()
                .flatten()
                .map(|p| Duration::from_secs(p.period_seconds.max(0) as u64));
            periods.chain([window(r)])
        })
        .max()
        .unwrap_or_default()
}

/// Kubernetes' `stabilizeRecommendationWithBehaviors`: no higher than the
/// lowest recommendation within the scale-up window, no lower than the
/// highest within the scale-down window (`recent` includes `desired`).
pub fn stabilize(
    b: Option<&HorizontalPodAutoscalerBehavior>,
    recent: &[Timed],
    now: Instant,
    current: i32,
    desired: i32,
) -> i32 {
    let (up, down) = (window(&rules(b, true)), window(&rules(b, false)));
    let mut up_rec = desired;
    let mut down_rec = desired;
    for (at, rec) in recent {
        let age = now.saturating_duration_since(*at);
        if age <= up {
            up_rec = up_rec.min(*rec);
        }
        if age <= down {
            down_rec = down_rec.max(*rec);
        }
    }
    current.max(up_rec).min(down_rec)
}

/// Kubernetes' rate policies: how far from `current` one step may go, given
/// the scale changes already made (`changes`: +n up, −n down) within each
/// policy's period; then `[min, max]`. Returns the replicas and, when a
/// bound held the answer back, why.
pub fn limit(
    b: Option<&HorizontalPodAutoscalerBehavior>,
    changes: &[Timed],
    now: Instant,
    current: i32,
    wanted: i32,
    min: i32,
    max: i32,
) -> (i32, Option<&'static str>) {
    let within = |period: i32, up: bool| -> i32 {
        changes
            .iter()
            .filter(|(at, n)| {
                now.saturating_duration_since(*at) <= Duration::from_secs(period.max(0) as u64)
                    && (*n > 0) == up
            })
            .map(|(_, n)| n.abs())
            .sum()
    };
    let mut out = wanted;
    let mut why = None;
    if wanted > current {
        let r = rules(b, true);
        let limits = r.policies.iter().flatten().map(|p| {
            let start = current - within(p.period_seconds, true);
            match p.type_.as_str() {
                "Percent" => (f64::from(start) * (1.0 + f64::from(p.value) / 100.0)).ceil() as i32,
                _ => start + p.value,
            }
        });
        let cap = match r.select_policy.as_deref() {
            Some("Disabled") => current,
            Some("Min") => limits.min().unwrap_or(current),
            _ => limits.max().unwrap_or(current),
        };
        if out > cap {
            out = cap.max(current);
            why = Some("ScaleUpLimit");
        }
    } else if wanted < current {
        let r = rules(b, false);
        let limits = r.policies.iter().flatten().map(|p| {
            let start = current + within(p.period_seconds, false);
            match p.type_.as_str() {
                "Percent" => (f64::from(start) * (1.0 - f64::from(p.value) / 100.0)).floor() as i32,
                _ => start - p.value,
            }
        });
        // The most permissive policy lets the count fall furthest.
        let floor = match r.select_policy.as_deref() {
            Some("Disabled") => current,
            Some("Min") => limits.max().unwrap_or(current),
            _ => limits.min().unwrap_or(current),
        };
        if out < floor {
            out = floor.min(current);
            why = Some("ScaleDownLimit");
        }
    }
    if out > max {
        (max, Some("TooManyReplicas"))
    } else if out < min {
        (min, Some("TooFewReplicas"))
    } else {
        (out, why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(usage: Option<i64>, request: i64) -> PodFigures {
        PodFigures {
            ready: true,
            usage,
            request: Some(request),
        }
    }

    #[test]
    fn replicas_follow_the_usage_ratio() {
        let target = Target::Utilization(50);
        // 2 pods at 90% of a 100m request against 50%: 3.6 → 4.
        let r = recommend(2, &[pod(Some(90), 100), pod(Some(90), 100)], target).expect("ok");
        assert_eq!(
            r,
            Recommendation {
                replicas: 4,
                utilization: Some(90),
                average: 90
            }
        );
        // Within 10% of the target: stay.
        let r = recommend(2, &[pod(Some(53), 100), pod(Some(54), 100)], target).expect("ok");
        assert_eq!(r.replicas, 2);
        // Idle: down to what the usage needs, at least one.
        let r = recommend(4, &[pod(Some(1), 100); 4], target).expect("ok");
        assert_eq!(r.replicas, 1);
        // Absolute targets: 300 Mi used per pod against 100 Mi.
        let mib = 1 << 20;
        let r = recommend(
            1,
            &[pod(Some(300 * mib), 0)],
            Target::AverageValue(100 * mib),
        )
        .expect("ok");
        assert_eq!((r.replicas, r.average), (3, 300 * mib));
    }

    #[test]
    fn missing_and_unready_pods_never_push_the_wrong_way() {
        let target = Target::Utilization(50);
        // Scaling down, a pod without metrics counts as fully used, which
        // keeps the ratio above 1 here: stay.
        let r = recommend(2, &[pod(Some(40), 100), pod(None, 100)], target).expect("ok");
        assert_eq!(r.replicas, 2);
        // Scaling up, it counts as idle: 200% of one pod over two → 2, not 4.
        let r = recommend(2, &[pod(Some(100), 100), pod(None, 100)], target).expect("ok");
        assert_eq!(r.replicas, 2);
        let unready = PodFigures {
            ready: false,
            usage: Some(500),
            request: Some(100),
        };
        let r = recommend(2, &[pod(Some(150), 100), unready], target).expect("ok");
        assert_eq!(r.replicas, 3);
        // No metrics at all, or a pod without a request: an error.
        assert!(recommend(1, &[pod(None, 100)], target).is_err());
        let bare = PodFigures {
            ready: true,
            usage: Some(10),
            request: None,
        };
        assert!(recommend(1, &[bare], target).is_err());
    }

    #[test]
    fn scale_down_waits_for_the_window_and_up_is_rate_limited() {
        let now = Instant::now();
        let ago = |s: u64| now - Duration::from_secs(s);
        // Default: the highest recommendation of the last 5 minutes holds.
        let recent = [(ago(200), 6), (ago(100), 3), (now, 2)];
        assert_eq!(stabilize(None, &recent, now, 5, 2), 5);
        let recent = [(ago(400), 6), (ago(100), 3), (now, 2)];
        assert_eq!(stabilize(None, &recent, now, 5, 2), 3);
        let quick: HorizontalPodAutoscalerBehavior =
            serde_json::from_value(json!({"scaleDown": {"stabilizationWindowSeconds": 0}}))
                .expect("behavior");
        assert_eq!(stabilize(Some(&quick), &recent, now, 5, 2), 2);

        // Default scale-up: max(+4 pods, +100%) per 15 s.
        assert_eq!(
            limit(None, &[], now, 2, 20, 1, 50),
            (6, Some("ScaleUpLimit"))
        );
        assert_eq!(
            limit(None, &[], now, 10, 40, 1, 50),
            (20, Some("ScaleUpLimit"))
        );
        // Already +4 in this period from 2: the period started at 2.
        assert_eq!(
            limit(None, &[(ago(5), 4)], now, 6, 20, 1, 50),
            (6, Some("ScaleUpLimit"))
        );
        assert_eq!(
            limit(None, &[(ago(20), 4)], now, 6, 20, 1, 50),
            (12, Some("ScaleUpLimit"))
        );
        // Bounds.
        assert_eq!(
            limit(None, &[], now, 2, 3, 1, 2),
            (2, Some("TooManyReplicas"))
        );
        assert_eq!(
            limit(None, &[], now, 2, 0, 1, 5),
            (1, Some("TooFewReplicas"))
        );
        assert_eq!(limit(None, &[], now, 4, 2, 1, 5), (2, None));
        let slow: HorizontalPodAutoscalerBehavior = serde_json::from_value(json!({
            "scaleDown": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}}))
        .expect("behavior");
        assert_eq!(
            limit(Some(&slow), &[], now, 4, 1, 1, 5),
            (3, Some("ScaleDownLimit"))
        );
        assert_eq!(longest_memory(None), Duration::from_secs(300));
    }
}
