//! The `scale` subresource (autoscaling/v1 Scale) of Deployments,
//! ReplicaSets and StatefulSets: what `kubectl scale` reads and patches.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use super::patch::{apply_patch, PatchKind};
use super::write::{precondition_in, write_with_retry, Owner};
use super::{object_name, respond};
use crate::apiserver::error::{ApiError, ApiResult, Cause};
use crate::apiserver::request::{self, Query, Target};
use crate::apiserver::ApiState;
use crate::store::Revision;

fn selector_string(obj: &Value) -> String {
    obj.pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// The Scale view of a workload.
fn scale_of(obj: &Value) -> Value {
    let m = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m.get("name"), "namespace": m.get("namespace"), "uid": m.get("uid"),
            "resourceVersion": m.get("resourceVersion"), "creationTimestamp": m.get("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)},
        "status": {
            "replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector_string(obj),
        },
    })
}

async fn current(st: &ApiState, t: &Target<'_>) -> ApiResult<Value> {
    let name = object_name(t);
    let gr = t.res.group_resource();
    let key = t.res.key(t.namespace.as_deref(), Some(name));
    let obj = st
        .store
        .get(&key)
        .await
        .map_err(|e| ApiError::from_store(e, &gr, name))?
        .ok_or_else(|| ApiError::not_found(&gr, name))?;
    Ok((*obj.value).clone())
}

pub async fn get(st: &ApiState, t: &Target<'_>) -> ApiResult<Response> {
    Ok(respond(
        StatusCode::OK,
        &scale_of(&current(st, t).await?),
        &[],
    ))
}

/// The replicas a Scale object asks for, validated as Kubernetes does.
fn wanted_replicas(scale: &Value, name: &str) -> ApiResult<i64> {
    let replicas = match scale.pointer("/spec/replicas") {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(-1),
        Some(Value::Null) | None => 0,
        Some(other) => {
            return Err(ApiError::bad_request(format!("Scale in version \"v1\" cannot be handled as a Scale: spec.replicas: invalid type: {other}, expected i32")))
        }
    };
    if replicas < 0 {
        return Err(ApiError::invalid(
            "Scale",
            name,
            vec![Cause::invalid(
                "spec.replicas",
                replicas,
                "must be greater than or equal to 0",
            )],
        ));
    }
    Ok(replicas)
}

/// Writes the replicas of the Scale that `client` makes of the workload's
/// current Scale. `client` runs again on the fresh object when another
/// writer got in first, so only a `precondition` the client itself sent
/// can end in 409: the Scale view carries the workload's resourceVersion,
/// and taking that as a precondition made `kubectl scale` fail whenever a
/// controller wrote the status meanwhile.
async fn set_replicas(
    st: &ApiState,
    t: &Target<'_>,
    q: &Query,
    precondition: Option<Revision>,
    client: impl Fn(&Value) -> ApiResult<Value>,
) -> ApiResult<Response> {
    let name = object_name(t).to_string();
    let main = Target {
        res: t.res,
        namespace: t.namespace.clone(),
        name: t.name.clone(),
        sub: None,
    };
    let out = write_with_retry(st, &main, q, precondition, Owner::Update, |cur| {
        let replicas = wanted_replicas(&client(&scale_of(cur))?, &name)?;
        let mut next = cur.clone();
        crate::apiserver::admission::obj_mut(&mut next, "spec")
            .insert("replicas".into(), json!(replicas));
        Ok(next)
    })
    .await?;
    Ok(respond(StatusCode::OK, &scale_of(&out), &[]))
}

pub async fn put(
    st: &ApiState,
    t: &Target<'_>,
    q: &Query,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let scale = request::read_object(headers, body).await?;
    set_replicas(st, t, q, precondition_in(&scale)?, |_| Ok(scale.clone())).await
}

pub async fn patch(
    st: &ApiState,
    t: &Target<'_>,
    q: &Query,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let kind = PatchKind::from_content_type(&request::content_type(headers))?;
    let bytes = request::read_body(body).await?;
    let doc: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the patch body is not valid JSON: {e}")))?;
    set_replicas(st, t, q, precondition_in(&doc)?, |view| {
        apply_patch(kind, view, &doc, "Scale")
    })
    .await
}
