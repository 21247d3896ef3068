//! delete and deletecollection, with DeleteOptions: preconditions, grace
//! period and propagation policy.
//!
//! Objects with finalizers (and Foreground/Orphan deletions, which add the
//! `foregroundDeletion`/`orphan` finalizer) are marked with a
//! deletionTimestamp and removed when the last finalizer goes. A pod bound
//! to a node is marked for graceful termination; its node removes it.

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::read::Selection;
use super::write::{meta_mut, now};
use super::{object_name, respond};
use crate::apiserver::error::{ApiError, ApiResult};
use crate::apiserver::request::{self, Query, Target};
use crate::apiserver::ApiState;
use crate::store::StoreError;

#[derive(Debug, Default)]
pub(super) struct DeleteOptions {
    grace: Option<i64>,
    propagation: Option<String>,
    uid: Option<String>,
    rv: Option<u64>,
    dry_run: bool,
}

async fn options(q: &Query, body: Body) -> ApiResult<DeleteOptions> {
    let bytes = request::read_body(body).await?;
    let b: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    options_from(q, &b)
}

/// DeleteOptions from a decoded body (a delete's, or an eviction's
/// `deleteOptions`) and the query.
pub(super) fn options_from(q: &Query, b: &Value) -> ApiResult<DeleteOptions> {
    let mut o = DeleteOptions {
        grace: b
            .get("gracePeriodSeconds")
            .and_then(Value::as_i64)
            .or(q.int(&q.grace_period_seconds, "gracePeriodSeconds")?),
        propagation: b
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(String::from)
            .or_else(|| q.propagation_policy.clone()),
        uid: b
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(String::from),
        rv: match b
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
        {
            Some(rv) => Some(rv.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid precondition resourceVersion {rv:?}"))
            })?),
            None => None,
        },
        dry_run: q.dry_run()?
            || b.get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|d| !d.is_empty()),
    };
    let orphan = b.get("orphanDependents").and_then(Value::as_bool).or(
        match q.orphan_dependents.as_deref() {
            Some("true") => Some(true),
            _ => None,
        },
    );
    if orphan == Some(true) && o.propagation.is_none() {
        o.propagation = Some("Orphan".into());
    }
    if let Some(p) = &o.propagation {
        if !["Orphan", "Background", "Foreground"].contains(&p.as_str()) {
            return Err(ApiError::bad_request(format!(
                "propagationPolicy: Unsupported value: \"{p}\": supported values: \"Orphan\", \"Background\", \"Foreground\""
            )));
        }
    }
    if let Some(g) = o.grace {
        if g < 0 {
            return Err(ApiError::bad_request(format!(
                "gracePeriodSeconds: Invalid value: {g}: must be >= 0"
            )));
        }
    }
    Ok(o)
}

/// Deletes (or marks for deletion) one object; returns what the client sees.
pub(super) async fn delete_one(
    st: &ApiState,
    t: &Target<'_>,
    name: &str,
    o: &DeleteOptions,
) -> ApiResult<Value> {
    let gr = t.res.group_resource();
    let key = t.res.key(t.namespace.as_deref(), Some(name));
    loop {
        let cur = st
            .store
            .get(&key)
            .await
            .map_err(|e| ApiError::from_store(e, &gr, name))?
            .ok_or_else(|| ApiError::not_found(&gr, name))?;
        let uid = cur
            .value
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("");
        if let Some(want) = o.uid.as_deref().filter(|u| *u != uid) {
            return Err(ApiError::conflict(
                &gr,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"
                ),
            ));
        }
        if let Some(want) = o.rv.filter(|rv| *rv != cur.rv) {
            return Err(ApiError::conflict(&gr, name, &format!("Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {}", cur.rv)));
        }
        let Some(marked) = mark_for_deletion(t, &cur.value, o) else {
            if o.dry_run {
                return Ok((*cur.value).clone());
            }
            match st.store.delete(&key, Some(cur.rv)).await {
                Ok(gone) => return Ok((*gone.value).clone()),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_store(e, &gr, name)),
            }
        };
        if o.dry_run || marked == *cur.value {
            return Ok(marked);
        }
        match st.store.update(&key, Some(cur.rv), marked).await {
            Ok(v) => return Ok((*v.value).clone()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e, &gr, name)),
        }
    }
}

/// The object marked as terminating, or None when it can go right away.
fn mark_for_deletion(t: &Target<'_>, cur: &Value, o: &DeleteOptions) -> Option<Value> {
    let mut next = cur.clone();
    let already = cur
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null());
    let finalizer = match o.propagation.as_deref() {
        Some("Foreground") => Some("foregroundDeletion"),
        Some("Orphan") => Some("orphan"),
        _ => None,
    };
    let bound_pod = t.res.kind == "Pod"
        && cur
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
    let pod_grace = cur
        .pointer("/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(30);
    let grace = o.grace.unwrap_or(if bound_pod { pod_grace } else { 0 });
    let meta = meta_mut(&mut next);
    if let Some(f) = finalizer {
        let list = meta.entry("finalizers").or_insert_with(|| json!([]));
        if let Value::Array(l) = list {
            if !l.iter().any(|x| x == f) {
                l.push(json!(f));
            }
        }
    }
    let has_finalizers = meta
        .get("finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    let graceful_pod = bound_pod && grace > 0;
    // A namespace waits for its own finalizers (the namespace controller
    // empties it first); without any it goes at once.
    let namespace = t.res.kind == "Namespace"
        && cur
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
    if !has_finalizers && !graceful_pod && !namespace {
        return None;
    }
    if !already {
        meta.insert("deletionTimestamp".into(), json!(now()));
        meta.insert(
            "deletionGracePeriodSeconds".into(),
            json!(if graceful_pod { grace } else { 0 }),
        );
    } else if bound_pod {
        // A second delete may shorten the grace period, never lengthen it;
        // the node's final delete (grace 0) of a pod still held by a
        // finalizer must land, or the pod waits for a node that is done.
        let current = meta
            .get("deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(grace);
        meta.insert(
            "deletionGracePeriodSeconds".into(),
            json!(grace.min(current)),
        );
    }
    if namespace {
        crate::apiserver::admission::obj_mut(&mut next, "status")
            .insert("phase".into(), json!("Terminating"));
    }
    Some(next)
}

pub async fn delete(st: &ApiState, t: &Target<'_>, q: &Query, body: Body) -> ApiResult<Response> {
    let o = options(q, body).await?;
    let out = delete_one(st, t, object_name(t), &o).await?;
    Ok(respond(StatusCode::OK, &out, &[]))
}

pub async fn delete_collection(
    st: &ApiState,
    t: &Target<'_>,
    q: &Query,
    body: Body,
) -> ApiResult<Response> {
    let o = options(q, body).await?;
    let sel = Selection::from_query(t, q)?;
    let prefix = t.res.key(t.namespace.as_deref(), None);
    let page = st
        .store
        .list(&prefix, None, None, &|v| sel.matches(v))
        .await
        .map_err(|e| ApiError::from_store(e, &t.res.group_resource(), ""))?;
    let mut deleted = Vec::new();
    for item in &page.items {
        let name = item
            .value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let ns = item
            .value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(String::from);
        let one = Target {
            res: t.res,
            namespace: ns,
            name: Some(name.clone()),
            sub: None,
        };
        match delete_one(st, &one, &name, &o).await {
            Ok(v) => deleted.push(v),
            // Someone else deleted it first: that is what we wanted.
            Err(e) if e.code == StatusCode::NOT_FOUND => {}
            Err(e) => return Err(e),
        }
    }
    let body = json!({
        "kind": format!("{}List", t.res.kind),
        "apiVersion": t.res.api_version(),
        "metadata": {"resourceVersion": st.store.current_revision().to_string()},
        "items": deleted,
    });
    Ok(respond(StatusCode::OK, &body, &[]))
}
