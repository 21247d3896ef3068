//! PATCH in the three formats kubectl sends: JSON patch (RFC 6902), JSON
//! merge patch (RFC 7386) and strategic merge patch.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::respond;
use super::write::{precondition_in, type_check, write_with_retry};
use crate::apiserver::error::{ApiError, ApiResult};
use crate::apiserver::request::{self, Query, Target};
use crate::apiserver::{strategic, ApiState};

#[derive(Clone, Copy)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> ApiResult<PatchKind> {
        match ct {
            "application/json-patch+json" => Ok(PatchKind::Json),
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Err(ApiError::unsupported_media_type(
                "server-side apply is not supported by Shoal yet; use client-side `kubectl apply` (the default)",
            )),
            other => Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format ({other}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json"
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
    let doc: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the patch body is not valid JSON: {e}")))?;
    // A resourceVersion inside a merge-style patch is a precondition.
    let precondition = precondition_in(&doc)?;
    let res = t.res;
    let warnings = std::sync::Mutex::new(Vec::new());
    let out = write_with_retry(st, t, q, precondition, |cur| {
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
