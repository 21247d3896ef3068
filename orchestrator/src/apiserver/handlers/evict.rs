//! `pods/eviction`: a delete that honours PodDisruptionBudgets, as `kubectl
//! drain` sends it.
//!
//! Kubernetes reads a budget's `status.disruptionsAllowed`, kept by its
//! disruption controller; Shoal has no such controller, so the budget is
//! worked out here from the pods it selects: healthy means Ready and not
//! being deleted, expected means every selected pod that has not finished.
//! Evictions are taken one at a time, so two cannot both spend the last
//! allowed disruption.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::delete::{delete_one, options_from};
use super::{object_name, respond};
use crate::apiserver::error::{ApiError, ApiResult};
use crate::apiserver::request::{self, Query, Target};
use crate::apiserver::selectors::label_selector_matches;
use crate::apiserver::ApiState;

pub async fn evict(
    st: &ApiState,
    t: &Target<'_>,
    q: &Query,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let name = object_name(t);
    let eviction = request::read_object(headers, body).await?;
    if let Some(n) = eviction.pointer("/metadata/name").and_then(Value::as_str) {
        if !n.is_empty() && n != name {
            return Err(ApiError::bad_request(format!(
                "name in URL does not match name in Eviction object ({n} and {name})"
            )));
        }
    }
    let delete_options = eviction.get("deleteOptions").cloned().unwrap_or(json!({}));
    let options = options_from(q, &delete_options)?;
    let ns = t.namespace.as_deref().unwrap_or("");
    let pod_target = Target {
        res: t.res,
        namespace: t.namespace.clone(),
        name: t.name.clone(),
        sub: None,
    };
    let _one_at_a_time = st.evictions.lock().await;
    let pod = st
        .store
        .get(&t.res.key(Some(ns), Some(name)))
        .await
        .map_err(|e| ApiError::from_store(e, "pods", name))?
        .ok_or_else(|| ApiError::not_found("pods", name))?;
    // A pod that has finished or is already going costs no budget.
    let spent = finished(&pod.value) || terminating(&pod.value);
    if !spent {
        check_budgets(st, ns, &pod.value).await?;
    }
    delete_one(st, &pod_target, name, &options).await?;
    Ok(respond(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        &[],
    ))
}

/// 429 when the pod's budget has no disruption to spare.
async fn check_budgets(st: &ApiState, ns: &str, pod: &Value) -> ApiResult<()> {
    let Some(pdbs) = st.registry.get("policy", "v1", "poddisruptionbudgets") else {
        return Ok(());
    };
    let empty = Map::new();
    let labels = pod
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let page = st
        .store
        .list(&pdbs.key(Some(ns), None), None, None, &|_| true)
        .await
        .map_err(|e| ApiError::from_store(e, "poddisruptionbudgets.policy", ""))?;
    let mut covering = Vec::new();
    for pdb in &page.items {
        let Some(sel) = pdb.value.pointer("/spec/selector") else {
            continue;
        };
        if label_selector_matches(sel, labels).unwrap_or(false) {
            covering.push(pdb.value.clone());
        }
    }
    let pdb = match covering.as_slice() {
        [] => return Ok(()),
        [one] => one,
        _ => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ))
        }
    };
    let selector = pdb.pointer("/spec/selector").cloned().unwrap_or(json!({}));
    let pods = st
        .registry
        .get("", "v1", "pods")
        .ok_or_else(|| ApiError::bad_request("pods are not served"))?;
    let selected = st
        .store
        .list(&pods.key(Some(ns), None), None, None, &|p| {
            let l = p
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            label_selector_matches(&selector, l).unwrap_or(false)
        })
        .await
        .map_err(|e| ApiError::from_store(e, "pods", ""))?;
    let expected = selected
        .items
        .iter()
        .filter(|p| !finished(&p.value))
        .count() as i64;
    let healthy = selected.items.iter().filter(|p| healthy(&p.value)).count() as i64;
    let desired = desired_healthy(pdb, expected);
    // An unhealthy pod may go while the budget is met; a healthy one only
    // if one more can be spared.
    let allowed = if healthy_pod(pod) {
        healthy - desired > 0
    } else {
        healthy >= desired
    };
    if allowed {
        return Ok(());
    }
    let pdb_name = pdb
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequests",
        "Cannot evict pod as it would violate the pod's disruption budget.",
    );
    e.details = Some(json!({"causes": [{"reason": "DisruptionBudget",
        "message": format!("The disruption budget {pdb_name} needs {desired} healthy pods and has {healthy} currently")}]}));
    Err(e)
}

/// How many selected pods must stay healthy.
fn desired_healthy(pdb: &Value, expected: i64) -> i64 {
    let spec = pdb.get("spec");
    if let Some(min) = spec.and_then(|s| s.get("minAvailable")) {
        return scaled(min, expected);
    }
    if let Some(max) = spec.and_then(|s| s.get("maxUnavailable")) {
        return (expected - scaled(max, expected)).max(0);
    }
    // Neither: one pod stays, as policy/v1beta1 defaulted minAvailable.
    1
}

/// An int-or-percent against `total`, percentages rounded up.
fn scaled(v: &Value, total: i64) -> i64 {
    if let Some(n) = v.as_i64() {
        return n;
    }
    let pct = v
        .as_str()
        .and_then(|s| s.strip_suffix('%'))
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(0);
    (pct * total + 99) / 100
}

fn finished(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

fn terminating(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

fn healthy_pod(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn healthy(pod: &Value) -> bool {
    healthy_pod(pod) && !terminating(pod) && !finished(pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_in_numbers_and_percentages() {
        let pdb = |spec: Value| json!({"spec": spec});
        assert_eq!(desired_healthy(&pdb(json!({"minAvailable": 2})), 3), 2);
        assert_eq!(desired_healthy(&pdb(json!({"minAvailable": "50%"})), 3), 2);
        assert_eq!(desired_healthy(&pdb(json!({"maxUnavailable": 1})), 3), 2);
        assert_eq!(
            desired_healthy(&pdb(json!({"maxUnavailable": "50%"})), 3),
            1
        );
        assert_eq!(desired_healthy(&pdb(json!({})), 3), 1);
    }
}
