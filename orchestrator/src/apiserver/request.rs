//! What a resource request asks for: the resource, namespace, name and
//! subresource from the path (Kubernetes' RequestInfo), the query options,
//! and the body, read within the size limit and decoded from JSON or YAML.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::Value;

use super::error::{ApiError, ApiResult};
use super::registry::{Registry, ResourceInfo};

/// etcd's default request limit: bigger objects could not be stored anyway.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub struct Target<'a> {
    pub res: &'a ResourceInfo,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

/// Resolves `/api/v1/...` or `/apis/{g}/{v}/...` segments after the version.
pub fn resolve<'a>(
    reg: &'a Registry,
    group: &str,
    version: &str,
    rest: &str,
    full: &str,
) -> ApiResult<Target<'a>> {
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (namespace, segs) = match segs.as_slice() {
        // A namespace's own subresources, not a resource inside it.
        ["namespaces", _, "status" | "finalize"] => (None, segs),
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(ns.to_string()), tail.to_vec()),
        _ => (None, segs),
    };
    let (plural, name, sub) = match segs.as_slice() {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(s.to_string())),
        _ => return Err(ApiError::path_not_found(full)),
    };
    let res = reg
        .get(group, version, plural)
        .ok_or_else(|| ApiError::path_not_found(full))?;
    if namespace.is_some() && !res.namespaced {
        return Err(ApiError::path_not_found(full));
    }
    if let Some(s) = &sub {
        if !res.subresources.contains(&s.as_str()) {
            return Err(ApiError::path_not_found(full));
        }
    }
    Ok(Target {
        res,
        namespace,
        name,
        sub,
    })
}

/// Every query option the resource verbs take (unknown ones are ignored,
/// as Kubernetes does).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Query {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: Option<String>,
    #[serde(rename = "continue")]
    pub continue_: Option<String>,
    pub watch: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub allow_watch_bookmarks: Option<String>,
    pub send_initial_events: Option<String>,
    pub timeout_seconds: Option<String>,
    pub dry_run: Option<String>,
    pub field_manager: Option<String>,
    pub field_validation: Option<String>,
    pub grace_period_seconds: Option<String>,
    pub propagation_policy: Option<String>,
    pub orphan_dependents: Option<String>,
    pub include_object: Option<String>,
    pub force: Option<String>,
    /// The manager named by the User-Agent, for writes without `fieldManager`.
    #[serde(skip)]
    pub agent: String,
    /// Who the request acts as (after impersonation).
    #[serde(skip)]
    pub user: Option<std::sync::Arc<super::auth::UserInfo>>,
}

pub fn truthy(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true") | Some("1") | Some("True"))
}

impl Query {
    pub fn parse(raw: Option<&str>) -> ApiResult<Query> {
        serde_urlencoded::from_str(raw.unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))
    }

    pub fn int(&self, v: &Option<String>, name: &str) -> ApiResult<Option<i64>> {
        match v.as_deref() {
            None | Some("") => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!("invalid value for {name}: {s:?} is not an integer"))
            }),
        }
    }

    /// Who a write's changed fields belong to: `fieldManager`, else the
    /// User-Agent's product name, as Kubernetes defaults it.
    pub fn manager(&self) -> &str {
        match self.field_manager.as_deref() {
            Some(m) if !m.is_empty() => m,
            _ if !self.agent.is_empty() => &self.agent,
            _ => "unknown",
        }
    }

    pub fn dry_run(&self) -> ApiResult<bool> {
        match self.dry_run.as_deref() {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "invalid dry run value {other:?}: supported values: \"All\""
            ))),
        }
    }
}

/// Does the client want the server-side Table rendering?
pub fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .next()
                .is_some_and(|first| first.contains("as=Table"))
        })
}

/// `kubectl/v1.33.1 (linux/amd64) kubernetes/8adc0f0` → `kubectl`.
pub fn agent_manager(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .map(|m| m.trim().chars().take(128).collect())
        .unwrap_or_default()
}

pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Reads the body, refusing more than `MAX_BODY` bytes.
pub async fn read_body(mut body: Body) -> ApiResult<bytes::Bytes> {
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("reading request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        if seen <= MAX_BODY {
            buf.extend_from_slice(&data);
        } else if seen > DRAIN_LIMIT {
            break;
        }
    }
    if seen > MAX_BODY {
        // The rest was read and dropped so the client, still sending, can
        // read the 413 instead of seeing its stream reset.
        return Err(ApiError::too_large(MAX_BODY));
    }
    Ok(buf.freeze())
}

/// How much of an oversized body is drained before giving up on the client.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// Reads and decodes an object body in the format its Content-Type names.
pub async fn read_object(headers: &HeaderMap, body: Body) -> ApiResult<Value> {
    let bytes = read_body(body).await?;
    decode_object(&content_type(headers), &bytes)
}

/// Decodes a JSON, YAML or (built-in kinds only) protobuf object body;
/// anything else is a 415.
pub fn decode_object(ct: &str, bytes: &[u8]) -> ApiResult<Value> {
    let v: Value = match ct {
        "" | "application/json" | "*/*" => serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (invalid JSON: {e})")))?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => serde_yaml_ng::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (invalid YAML: {e})")))?,
        super::protobuf::CONTENT_TYPE => super::protobuf::decode(bytes)?,
        other => {
            return Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format ({other}) - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf"
            )))
        }
    };
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod resolve_tests {
    use super::*;
    use crate::apiserver::kinds;

    #[test]
    fn namespace_subresources_are_not_namespaced_resources() {
        let reg = kinds::registry();
        let t = resolve(&reg, "", "v1", "namespaces/scratch/finalize", "/x").expect("resolves");
        assert_eq!(
            (
                t.res.plural,
                t.namespace,
                t.name.as_deref(),
                t.sub.as_deref()
            ),
            ("namespaces", None, Some("scratch"), Some("finalize"))
        );
        let t =
            resolve(&reg, "", "v1", "namespaces/scratch/pods/p/status", "/x").expect("resolves");
        assert_eq!(
            (t.res.plural, t.namespace.as_deref(), t.sub.as_deref()),
            ("pods", Some("scratch"), Some("status"))
        );
    }
}
