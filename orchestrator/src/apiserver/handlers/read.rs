//! get and list.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Value};

use super::{object_name, respond};
use crate::apiserver::error::{ApiError, ApiResult};
use crate::apiserver::request::{Query, Target};
use crate::apiserver::selectors::{FieldSelector, LabelSelector};
use crate::apiserver::table::{self, IncludeObject};
use crate::apiserver::ApiState;

pub async fn get(st: &ApiState, t: &Target<'_>, q: &Query, as_table: bool) -> ApiResult<Response> {
    let name = object_name(t);
    let key = t.res.key(t.namespace.as_deref(), Some(name));
    let obj = st
        .store
        .get(&key)
        .await
        .map_err(|e| ApiError::from_store(e, &t.res.group_resource(), name))?
        .ok_or_else(|| ApiError::not_found(&t.res.group_resource(), name))?;
    if as_table {
        let meta = json!({"resourceVersion": obj.rv.to_string()});
        let include = IncludeObject::parse(q.include_object.as_deref());
        return Ok(respond(
            StatusCode::OK,
            &table::table(t.res.printer, &[&obj.value], meta, include),
            &[],
        ));
    }
    Ok(respond(StatusCode::OK, &obj.value, &[]))
}

/// The label and field selectors of a list, watch or deletecollection.
pub struct Selection {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selection {
    pub fn from_query(t: &Target<'_>, q: &Query) -> ApiResult<Selection> {
        let labels = LabelSelector::parse(q.label_selector.as_deref().unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let res = t.res;
        let supported = |k: &str| {
            k == "metadata.name"
                || (k == "metadata.namespace" && res.namespaced)
                || res.field_selectors.contains(&k)
        };
        let fields = FieldSelector::parse(
            q.field_selector.as_deref().unwrap_or(""),
            &supported,
            &res.group_resource(),
        )
        .map_err(ApiError::bad_request)?;
        Ok(Selection { labels, fields })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

/// A list's metadata: its revision and, when cut short, how to go on.
fn list_meta(rv: u64, continue_after: Option<&str>, remaining: u64) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(after) = continue_after {
        meta["continue"] = json!(encode_continue(rv, after));
        meta["remainingItemCount"] = json!(remaining);
    }
    meta
}

fn encode_continue(rv: u64, key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"rv": rv, "start": key}).to_string())
}

fn decode_continue(token: &str, prefix: &str) -> ApiResult<(u64, String)> {
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: the token is malformed; restart the list without it",
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v.get("rv").and_then(Value::as_u64).ok_or_else(bad)?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    // A token from another collection must not page through this one.
    if !start.starts_with(prefix) {
        return Err(bad());
    }
    Ok((rv, start.to_string()))
}

pub async fn list(st: &ApiState, t: &Target<'_>, q: &Query, as_table: bool) -> ApiResult<Response> {
    let sel = Selection::from_query(t, q)?;
    let prefix = t.res.key(t.namespace.as_deref(), None);
    let limit = q
        .int(&q.limit, "limit")?
        .filter(|l| *l > 0)
        .map(|l| l as usize);
    let start = match q.continue_.as_deref().filter(|c| !c.is_empty()) {
        Some(token) => Some(decode_continue(token, &prefix)?),
        None => None,
    };
    check_list_rv(st, q)?;
    if sel.labels.is_empty() && sel.fields.is_empty() && !as_table {
        return list_raw(st, t, limit, start).await;
    }
    let page = st
        .store
        .list(
            &prefix,
            start.as_ref().map(|(_, k)| k.as_str()),
            limit,
            &|v| sel.matches(v),
        )
        .await
        .map_err(|e| ApiError::from_store(e, &t.res.group_resource(), ""))?;
    // Pages after the first report the revision the listing began at.
    let rv = start.as_ref().map(|(rv, _)| *rv).unwrap_or(page.rv);
    let meta = list_meta(rv, page.continue_after.as_deref(), page.remaining);
    if as_table {
        let objs: Vec<&Value> = page.items.iter().map(|o| &*o.value).collect();
        let include = IncludeObject::parse(q.include_object.as_deref());
        return Ok(respond(
            StatusCode::OK,
            &table::table(t.res.printer, &objs, meta, include),
            &[],
        ));
    }
    let items: Vec<&Value> = page.items.iter().map(|o| &*o.value).collect();
    let body = json!({
        "kind": format!("{}List", t.res.kind),
        "apiVersion": t.res.api_version(),
        "metadata": meta,
        "items": items,
    });
    Ok(respond(StatusCode::OK, &body, &[]))
}

/// An unfiltered JSON list: the stored objects spliced into the answer
/// without decoding them (they are stored as the JSON clients receive).
async fn list_raw(
    st: &ApiState,
    t: &Target<'_>,
    limit: Option<usize>,
    start: Option<(u64, String)>,
) -> ApiResult<Response> {
    let prefix = t.res.key(t.namespace.as_deref(), None);
    let page = st
        .store
        .list_raw(&prefix, start.as_ref().map(|(_, k)| k.as_str()), limit)
        .await
        .map_err(|e| ApiError::from_store(e, &t.res.group_resource(), ""))?;
    let rv = start.as_ref().map(|(rv, _)| *rv).unwrap_or(page.rv);
    let meta = list_meta(rv, page.continue_after.as_deref(), page.remaining);
    let head = json!({"kind": format!("{}List", t.res.kind), "apiVersion": t.res.api_version(), "metadata": meta});
    let head = serde_json::to_vec(&head).map_err(|e| ApiError::internal(e.to_string()))?;
    let size: usize = page.items.iter().map(|(_, b)| b.len() + 1).sum();
    let mut body = Vec::with_capacity(head.len() + size + 16);
    // `{"kind":…,"metadata":{…}}` becomes `{"kind":…,"metadata":{…},"items":[…]}`.
    body.extend_from_slice(&head[..head.len() - 1]);
    body.extend_from_slice(b",\"items\":[");
    for (i, (_, item)) in page.items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(b"]}");
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// Shoal serves lists from the newest state; an `Exact` request for an
/// older revision cannot be honoured and says so, as Kubernetes does past
/// compaction.
fn check_list_rv(st: &ApiState, q: &Query) -> ApiResult<()> {
    let Some(rv) = q
        .resource_version
        .as_deref()
        .filter(|r| !r.is_empty() && *r != "0")
    else {
        return Ok(());
    };
    let rv: u64 = rv
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?;
    let current = st.store.current_revision();
    match q.resource_version_match.as_deref() {
        Some("Exact") if rv != current => Err(ApiError::gone(format!(
            "too old resource version: {rv} ({current})"
        ))),
        _ if rv > current => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            format!("Too large resource version: {rv}, current: {current}"),
        )),
        _ => Ok(()),
    }
}
