//! PATCH in the three formats kubectl sends: JSON patch (RFC 6902), JSON
//! merge patch (RFC 7386) and strategic merge patch.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::write::{
    check_namespace, check_type, create_object, now, precondition_in, type_check, write_with_retry,
    Owner, Part,
};
use super::{object_name, respond};
use crate::apiserver::apply;
use crate::apiserver::error::{ApiError, ApiResult, Cause};
use crate::apiserver::request::{self, Query, Target};
use crate::apiserver::{strategic, ApiState};

#[derive(Clone, Copy)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
    /// Server-side apply: a partial object in YAML (or JSON), merged by field
    /// ownership rather than applied as a patch document.
    Apply,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> ApiResult<PatchKind> {
        match ct {
            "application/json-patch+json" => Ok(PatchKind::Json),
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
            "application/apply-patch+yaml" => Ok(PatchKind::Apply),
            other => Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format ({other}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
            ))),
        }
    }
}

/// Applies a decoded patch document to `current`.
pub fn apply_patch(
    kind: PatchKind,
    current: &Value,
    patch: &Value,
    obj_kind: &str,
) -> ApiResult<Value> {
    match kind {
        PatchKind::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            let mut doc = current.clone();
            json_patch::patch(&mut doc, &ops).map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!("the JSON patch could not be applied: {e}"),
                )
            })?;
            Ok(doc)
        }
        PatchKind::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            let mut doc = current.clone();
            json_patch::merge(&mut doc, patch);
            Ok(doc)
        }
        PatchKind::Strategic => {
            strategic::apply(current, patch, obj_kind).map_err(ApiError::bad_request)
        }
        PatchKind::Apply => Err(ApiError::unsupported_media_type(format!(
            "server-side apply is not supported on {obj_kind}; use a merge or strategic merge patch"
        ))),
    }
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
    if let PatchKind::Apply = kind {
        return server_side_apply(st, t, q, &bytes).await;
    }
    let doc: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the patch body is not valid JSON: {e}")))?;
    // A resourceVersion inside a merge-style patch is a precondition.
    let precondition = precondition_in(&doc)?;
    let res = t.res;
    let warnings = std::sync::Mutex::new(Vec::new());
    let out = write_with_retry(st, t, q, precondition, Owner::Update, |cur| {
        let patched = apply_patch(kind, cur, &doc, res.kind)?;
        let (normalized, w) = type_check(res, &patched, q)?;
        if let Ok(mut slot) = warnings.lock() {
            *slot = w;
        }
        Ok(normalized)
    })
    .await?;
    let warnings = warnings.into_inner().unwrap_or_default();
    Ok(respond(StatusCode::OK, &out, &warnings))
}

/// `PATCH` with `application/apply-patch+yaml`: creates the object when it
/// does not exist, otherwise merges it by field ownership.
async fn server_side_apply(
    st: &ApiState,
    t: &Target<'_>,
    q: &Query,
    bytes: &[u8],
) -> ApiResult<Response> {
    let manager = match q.field_manager.as_deref() {
        Some(m) if !m.is_empty() => m,
        _ => {
            return Err(ApiError::invalid(
                t.res.kind,
                object_name(t),
                vec![Cause::required("fieldManager")],
            ))
        }
    };
    let force = match q.force.as_deref() {
        None | Some("") | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid value for force: {other:?} (true or false)"
            )))
        }
    };
    let mut applied: Value = serde_yaml_ng::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "the apply configuration is not valid YAML or JSON: {e}"
        ))
    })?;
    if !applied.is_object() {
        return Err(ApiError::bad_request(
            "the apply configuration must be an object",
        ));
    }
    check_type(t.res, &mut applied)?;
    check_namespace(t.res, t.namespace.as_deref(), &mut applied)?;
    let name = object_name(t);
    match applied.pointer("/metadata/name").and_then(Value::as_str) {
        Some(n) if n == name => {}
        Some(n) if !n.is_empty() => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )))
        }
        _ => {
            crate::apiserver::admission::obj_mut(&mut applied, "metadata")
                .insert("name".into(), Value::String(name.to_string()));
        }
    }
    if applied
        .pointer("/metadata/managedFields")
        .is_some_and(|m| !m.is_null())
    {
        return Err(ApiError::invalid(
            t.res.kind,
            name,
            vec![Cause::forbidden(
                "metadata.managedFields",
                "must be nil in an apply configuration",
            )],
        ));
    }
    let (applied, warnings) = type_check(t.res, &applied, q)?;
    let precondition = precondition_in(&applied)?;
    let api_version = t.res.api_version();
    let part = Part::of(t);
    let now = now();
    let request = apply::Request {
        manager,
        force,
        kind: t.res.kind,
        api_version: &api_version,
        has_status: t.res.has_status(),
        status: part == Part::Status,
        now: &now,
    };
    let gr = t.res.group_resource();
    // Most applies update: try that first (one read, inside the retrying
    // write); a missing object is created, and a create that loses a race
    // to another writer is tried again as an update.
    for _ in 0..4 {
        let out = write_with_retry(st, t, q, precondition, Owner::Apply, |cur| {
            apply::apply(Some(cur), &applied, &request).map_err(|c| conflict(&gr, name, c))
        })
        .await;
        match out {
            Ok(v) => return Ok(respond(StatusCode::OK, &v, &warnings)),
            Err(e) if e.reason != "NotFound" || part != Part::Main || precondition.is_some() => {
                return Err(e)
            }
            Err(_) => {}
        }
        let obj = apply::apply(None, &applied, &request).map_err(|c| conflict(&gr, name, c))?;
        match create_object(st, t, q, obj, warnings.clone()).await {
            Err(e) if e.reason == "AlreadyExists" => continue,
            other => return other,
        }
    }
    Err(ApiError::conflict(
        &gr,
        name,
        "the object was created and deleted concurrently; try again",
    ))
}

/// A refused apply: 409 with one `FieldManagerConflict` cause per field.
fn conflict(gr: &str, name: &str, c: apply::Conflicts) -> ApiError {
    let causes: Vec<Value> = c
        .conflicts
        .iter()
        .map(|x| {
            serde_json::json!({"reason": "FieldManagerConflict",
                "message": format!("conflict with {}", x.manager), "field": x.field})
        })
        .collect();
    let mut e = ApiError::new(StatusCode::CONFLICT, "Conflict", c.message);
    e.details = Some(serde_json::json!({"name": name, "kind": gr, "causes": causes}));
    e
}
