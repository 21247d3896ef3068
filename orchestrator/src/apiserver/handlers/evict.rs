//! `pods/eviction`: a delete that honours PodDisruptionBudgets, as `kubectl
//! drain` sends it.
//!
//! Kubernetes reads a budget's `status.disruptionsAllowed`, kept by its
//! disruption controller, and records evicted pods in `disruptedPods` until
//! the controller catches up. Here the budget is worked out afresh from the
//! pods it selects, with the disruption controller's own arithmetic
//! (`controllers::disruption::budget`), and evictions are taken one at a
//! time, so two cannot both spend the last allowed disruption.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::{json, Map, Value};

use super::delete::{delete_one, options_from};
use super::{object_name, respond};
use crate::apiserver::error::{ApiError, ApiResult};
use crate::apiserver::request::{self, Query, Target};
use crate::apiserver::selectors::label_selector_matches;
use crate::apiserver::ApiState;
use crate::controllers::{disruption, pods};

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
    let typed: Pod = serde_json::from_value((*pod.value).clone())
        .map_err(|e| ApiError::internal(format!("stored pod {name} does not decode: {e}")))?;
    if pods::is_active(&typed) {
        let empty = Map::new();
        let labels = pod
            .value
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        check_budgets(st, ns, labels, &typed).await?;
    }
    delete_one(st, &pod_target, name, &options).await?;
    Ok(respond(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        &[],
    ))
}

/// 429 when the pod's budget has no disruption to spare.
async fn check_budgets(
    st: &ApiState,
    ns: &str,
    labels: &Map<String, Value>,
    pod: &Pod,
) -> ApiResult<()> {
    let Some(pdbs) = st.registry.get("policy", "v1", "poddisruptionbudgets") else {
        return Ok(());
    };
    let empty = Map::new();
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
    let typed = |v: &Value| serde_json::from_value::<Pod>(v.clone()).ok();
    let selected: Vec<Pod> = selected
        .items
        .iter()
        .filter_map(|p| typed(&p.value))
        .collect();
    let pdb_typed: PodDisruptionBudget = serde_json::from_value((**pdb).clone()).map_err(|e| {
        ApiError::internal(format!("stored PodDisruptionBudget does not decode: {e}"))
    })?;
    let spec = pdb_typed.spec.unwrap_or_default();
    let b = disruption::budget(&spec, selected.iter());
    let (healthy, desired) = (b.healthy, b.desired);
    let always_unhealthy = spec.unhealthy_pod_eviction_policy.as_deref() == Some("AlwaysAllow");
    // An unhealthy pod may go while the budget is met (or always, if the
    // budget says so); a healthy one only if one more can be spared.
    let allowed = if disruption::is_healthy(pod) {
        b.allowed() > 0
    } else {
        always_unhealthy || healthy >= desired
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
