//! create, update (including the status subresource) and pods/binding, and
//! the admission pipeline every write shares: decode, type-check, default,
//! validate, then store with optimistic concurrency.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use rand::Rng;
use serde_json::{json, Map, Value};

use super::{object_name, on_create, respond};
use crate::apiserver::admission::meta::object_meta;
use crate::apiserver::apply;
use crate::apiserver::error::{ApiError, ApiResult, Cause};
use crate::apiserver::registry::{unknown_fields, ResourceInfo, Source};
use crate::apiserver::request::{self, Query, Target};
use crate::apiserver::ApiState;
use crate::store::{Revision, StoreError};

pub use shoal_sdk::now_rfc3339 as now;

/// Which part of the object a write may change.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Part {
    /// The object itself: everything but `status` where a status subresource exists.
    Main,
    /// The status subresource: only `status`.
    Status,
    /// A namespace's `finalize` subresource: only `spec.finalizers`.
    Finalize,
}

impl Part {
    pub fn of(t: &Target) -> Part {
        match t.sub.as_deref() {
            Some("status") => Part::Status,
            Some("finalize") => Part::Finalize,
            _ => Part::Main,
        }
    }
}

/// How a write moves field ownership (`metadata.managedFields`).
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Owner {
    /// A plain write: the fields it changes become the request's manager's,
    /// on objects under field management.
    Update,
    /// A server-side apply: the client's object carries the managed fields
    /// the apply worked out.
    Apply,
}

/// Checks `apiVersion`/`kind` against the URL, filling them in when absent.
pub(super) fn check_type(res: &ResourceInfo, obj: &mut Value) -> ApiResult<()> {
    let want = res.api_version();
    let Value::Object(m) = obj else {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    };
    match m.get("apiVersion").and_then(Value::as_str) {
        Some(v) if !v.is_empty() && v != want => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({want})"
            )))
        }
        _ => {
            m.insert("apiVersion".into(), json!(want));
        }
    }
    match m.get("kind").and_then(Value::as_str) {
        Some(k) if !k.is_empty() && k != res.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                res.kind
            )))
        }
        _ => {
            m.insert("kind".into(), json!(res.kind));
        }
    }
    Ok(())
}

/// Reconciles the body's namespace with the URL's.
pub(super) fn check_namespace(
    res: &ResourceInfo,
    ns: Option<&str>,
    obj: &mut Value,
) -> ApiResult<()> {
    let meta = crate::apiserver::admission::obj_mut(obj, "metadata");
    if !res.namespaced {
        meta.remove("namespace");
        return Ok(());
    }
    let url_ns = ns.unwrap_or("");
    match meta.get("namespace").and_then(Value::as_str) {
        Some(b) if !b.is_empty() && b != url_ns => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {
            meta.insert("namespace".into(), json!(url_ns));
            Ok(())
        }
    }
}

/// Decodes into the typed struct and applies `fieldValidation`; returns
/// the normalised object and any warnings.
pub fn type_check(res: &ResourceInfo, obj: &Value, q: &Query) -> ApiResult<(Value, Vec<String>)> {
    let normalized = (res.normalize)(obj).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            res.kind, res.version, res.kind
        ))
    })?;
    let unknown = unknown_fields(obj, &normalized);
    let mut warnings = Vec::new();
    if !unknown.is_empty() {
        let msgs: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        match q.field_validation.as_deref().unwrap_or("Warn") {
            "Strict" => {
                return Err(ApiError::bad_request(format!(
                    "strict decoding error: {}",
                    msgs.join(", ")
                )));
            }
            "Ignore" => {}
            "Warn" | "" => warnings = msgs,
            other => {
                return Err(ApiError::bad_request(format!(
                "fieldValidation must be one of \"Ignore\", \"Warn\" or \"Strict\", got {other:?}"
            )))
            }
        }
    }
    Ok((normalized, warnings))
}

/// Runs defaults and validation; `old` is the stored object on update.
pub fn admit(res: &ResourceInfo, obj: &mut Value, old: Option<&Value>) -> ApiResult<()> {
    (res.admission.default)(obj);
    let mut causes: Vec<Cause> = object_meta(obj, res.namespaced, res.admission.name_rule);
    causes.extend((res.admission.validate)(obj));
    if let Some(old) = old {
        causes.extend((res.admission.validate_update)(obj, old));
    }
    if causes.is_empty() {
        return Ok(());
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    Err(ApiError::invalid(res.kind, name, causes))
}

const GENERATE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn generate_name(prefix: &str) -> String {
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| GENERATE_ALPHABET[rng.random_range(0..GENERATE_ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{suffix}")
}

pub async fn create(
    st: &ApiState,
    t: &Target<'_>,
    q: &Query,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let mut obj = request::read_object(headers, body).await?;
    check_type(t.res, &mut obj)?;
    check_namespace(t.res, t.namespace.as_deref(), &mut obj)?;
    let (mut obj, warnings) = type_check(t.res, &obj, q)?;
    crate::apiserver::admission::obj_mut(&mut obj, "metadata").remove("managedFields");
    create_object(st, t, q, obj, warnings).await
}

/// Creates a review the server answers (`kubectl auth can-i`, `whoami`):
/// the object comes back with its `status`, and nothing is stored.
pub async fn review(
    st: &ApiState,
    t: &Target<'_>,
    q: &Query,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let Source::Answered(answer) = t.res.source else {
        return Err(ApiError::method_not_allowed("not a review"));
    };
    let mut obj = request::read_object(headers, body).await?;
    check_type(t.res, &mut obj)?;
    // A LocalSubjectAccessReview asks about its own namespace.
    check_namespace(t.res, t.namespace.as_deref(), &mut obj)?;
    let (mut obj, warnings) = type_check(t.res, &obj, q)?;
    let user = q
        .user
        .clone()
        .ok_or_else(|| ApiError::internal("a review reached the server with no user"))?;
    let status = answer(&obj, &user, &st.policy)
        .map_err(|causes| ApiError::invalid(t.res.kind, "", causes))?;
    if let Value::Object(m) = &mut obj {
        m.insert("status".into(), status);
    }
    Ok(respond(StatusCode::CREATED, &obj, &warnings))
}

/// Stores a new object that passed the type checks: names it, stamps the
/// server's metadata, sets its initial status, admits it.
pub async fn create_object(
    st: &ApiState,
    t: &Target<'_>,
    q: &Query,
    mut obj: Value,
    warnings: Vec<String>,
) -> ApiResult<Response> {
    let dry_run = q.dry_run()?;
    let mut generated_from: Option<String> = None;
    {
        let meta = crate::apiserver::admission::obj_mut(&mut obj, "metadata");
        let has_name = meta
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        if !has_name {
            if let Some(prefix) = meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
            {
                generated_from = Some(prefix.to_string());
                let name = generate_name(prefix);
                meta.insert("name".into(), json!(name));
            }
        }
        for f in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(f);
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.insert("generation".into(), json!(1));
    }
    if t.res.has_status() {
        let status = (t.res.admission.initial_status)(&obj);
        if let Value::Object(m) = &mut obj {
            match status {
                Some(s) => m.insert("status".into(), s),
                None => m.remove("status"),
            };
        }
    }
    admit(t.res, &mut obj, None)?;
    guard_escalation(st, t, q, &obj)?;
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    on_create::admit(st, t, &name, &mut obj).await?;
    // Allocation reads every Service, so it is held until this one is stored.
    let _allocating = if (t.res.group, t.res.plural) == ("", "services") {
        let guard = st.services.lock().await;
        let key = t.res.key(t.namespace.as_deref(), Some(&name));
        let mut used = st
            .services
            .used(&*st.store, &t.res.key(None, None), &key)
            .await?;
        st.services.assign(&mut obj, None, &mut used)?;
        Some(guard)
    } else {
        None
    };
    if dry_run {
        return Ok(respond(StatusCode::CREATED, &obj, &warnings));
    }
    let mut name = name;
    // A generated name that happens to be taken is generated again, as
    // Kubernetes does since 1.31: five letters collide now and then when a
    // ReplicaSet creates a thousand pods.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let key = t.res.key(t.namespace.as_deref(), Some(&name));
        match st.store.create(&key, obj.clone()).await {
            Ok(stored) => return Ok(respond(StatusCode::CREATED, &stored.value, &warnings)),
            Err(StoreError::AlreadyExists { .. }) if attempt < 8 && generated_from.is_some() => {
                name = generate_name(generated_from.as_deref().unwrap_or_default());
                crate::apiserver::admission::obj_mut(&mut obj, "metadata")
                    .insert("name".into(), json!(name));
            }
            Err(e) => return Err(ApiError::from_store(e, &t.res.group_resource(), &name)),
        }
    }
}

/// Spec-ish content: what `metadata.generation` counts changes of.
fn spec_view(v: &Value) -> Value {
    let mut c = v.clone();
    if let Value::Object(m) = &mut c {
        m.remove("metadata");
        m.remove("status");
    }
    c
}

/// Builds the object to store from what the client sent and what is stored:
/// server-owned metadata carried over, status or spec kept per `part`.
pub fn merge_for_update(res: &ResourceInfo, new: Value, old: &Value, part: Part) -> Value {
    let mut out = match part {
        Part::Status => {
            let mut o = old.clone();
            if let Value::Object(m) = &mut o {
                match new.get("status") {
                    Some(s) => m.insert("status".into(), s.clone()),
                    None => m.remove("status"),
                };
            }
            o
        }
        Part::Finalize => {
            let mut o = old.clone();
            let finalizers = new
                .pointer("/spec/finalizers")
                .cloned()
                .unwrap_or(json!([]));
            crate::apiserver::admission::obj_mut(&mut o, "spec")
                .insert("finalizers".into(), finalizers);
            o
        }
        Part::Main => {
            let mut n = new;
            if res.has_status() {
                if let Value::Object(m) = &mut n {
                    match old.get("status") {
                        Some(s) => m.insert("status".into(), s.clone()),
                        None => m.remove("status"),
                    };
                }
            }
            n
        }
    };
    let old_meta = old
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let meta = crate::apiserver::admission::obj_mut(&mut out, "metadata");
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "name",
        "namespace",
        "generateName",
    ] {
        match old_meta.get(f) {
            Some(v) => meta.insert(f.into(), v.clone()),
            None => meta.remove(f),
        };
    }
    // Carried over; `write_with_retry` decides whether the request set
    // them (an apply, or a client resetting them) and records ownership.
    match old_meta.get("managedFields") {
        Some(v) => meta.insert("managedFields".into(), v.clone()),
        None => meta.remove("managedFields"),
    };
    meta.remove("selfLink");
    let old_gen = old_meta
        .get("generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let gen = if spec_view(&out) != spec_view(old) {
        old_gen + 1
    } else {
        old_gen
    };
    crate::apiserver::admission::obj_mut(&mut out, "metadata")
        .insert("generation".into(), json!(gen));
    out
}

/// Compare-and-swap write of an admitted update. Removing the last
/// finalizer of an object being deleted completes its deletion.
pub async fn store_update(
    st: &ApiState,
    key: &str,
    obj: Value,
    old: &Value,
    expected: Revision,
) -> Result<Value, StoreError> {
    if obj == *old {
        // Kubernetes does not bump the revision for a no-op write.
        return Ok(old.clone());
    }
    let terminating = obj
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null());
    let non_empty = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty())
    };
    // A namespace also waits for its own finalizers (`spec.finalizers`),
    // which the namespace controller removes once the namespace is empty.
    let namespace = obj.get("kind").and_then(Value::as_str) == Some("Namespace");
    let finalizers_left =
        non_empty("/metadata/finalizers") || (namespace && non_empty("/spec/finalizers"));
    // Kubernetes' rule: a graceful deletion still running (a pod its node is
    // stopping) is finished by its owner's delete, not by this update.
    let grace_left = obj
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .is_some_and(|g| g > 0);
    if terminating && !finalizers_left && !grace_left {
        let gone = st.store.delete(key, Some(expected)).await?;
        return Ok((*gone.value).clone());
    }
    let stored = st.store.update(key, Some(expected), obj).await?;
    Ok((*stored.value).clone())
}

pub async fn update(
    st: &ApiState,
    t: &Target<'_>,
    q: &Query,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let name = object_name(t).to_string();
    let mut obj = request::read_object(headers, body).await?;
    check_type(t.res, &mut obj)?;
    check_namespace(t.res, t.namespace.as_deref(), &mut obj)?;
    let body_name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let (obj, warnings) = type_check(t.res, &obj, q)?;
    let precondition = precondition_in(&obj)?;
    let out = write_with_retry(
        st,
        t,
        q,
        precondition,
        Owner::Update,
        |_old| Ok(obj.clone()),
    )
    .await?;
    Ok(respond(StatusCode::OK, &out, &warnings))
}

/// The resourceVersion a client put in its object or patch: the revision
/// the write must find, or it is a 409.
pub fn precondition_in(doc: &Value) -> ApiResult<Option<Revision>> {
    match doc
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
    {
        Some(rv) if !rv.is_empty() => rv.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "metadata.resourceVersion: Invalid value: {rv:?}: must be an integer"
            ))
        }),
        _ => Ok(None),
    }
}

/// RBAC objects may not give away more than their writer holds.
fn guard_escalation(st: &ApiState, t: &Target<'_>, q: &Query, obj: &Value) -> ApiResult<()> {
    if t.res.group != crate::apiserver::auth::rbac::GROUP {
        return Ok(());
    }
    let user = q
        .user
        .as_deref()
        .ok_or_else(|| ApiError::internal("an RBAC write reached the server with no user"))?;
    crate::apiserver::auth::guard_escalation(
        &st.policy,
        user,
        t.res.plural,
        t.namespace.as_deref().unwrap_or(""),
        obj,
    )
}

/// Read-modify-write: `change` maps the stored object to the client's
/// version; without a precondition, conflicts with concurrent writers are
/// retried (as Kubernetes' GuaranteedUpdate does).
pub async fn write_with_retry(
    st: &ApiState,
    t: &Target<'_>,
    q: &Query,
    precondition: Option<Revision>,
    owner: Owner,
    change: impl Fn(&Value) -> ApiResult<Value>,
) -> ApiResult<Value> {
    let name = object_name(t).to_string();
    let gr = t.res.group_resource();
    let key = t.res.key(t.namespace.as_deref(), Some(&name));
    let part = Part::of(t);
    let dry_run = q.dry_run()?;
    let services = (t.res.group, t.res.plural) == ("", "services") && part == Part::Main;
    let _allocating = if services {
        Some(st.services.lock().await)
    } else {
        None
    };
    // As etcd's GuaranteedUpdate: a write without a precondition re-reads
    // and tries again for as long as others keep winning, so contention
    // alone never fails it; only a pathologically hot object gives up.
    let deadline = std::time::Instant::now() + CONTENDED_WRITE_BUDGET;
    loop {
        let cur = st
            .store
            .get(&key)
            .await
            .map_err(|e| ApiError::from_store(e, &gr, &name))?
            .ok_or_else(|| ApiError::not_found(&gr, &name))?;
        if let Some(p) = precondition {
            if p != cur.rv {
                return Err(ApiError::from_store(
                    StoreError::Conflict {
                        key: key.clone(),
                        expected: p,
                        actual: cur.rv,
                    },
                    &gr,
                    &name,
                ));
            }
        }
        let client = change(&cur.value)?;
        check_uid(&client, &cur.value, &gr, &name)?;
        // A plain write may set the managed fields outright (kubectl does,
        // moving client-side apply's fields to server-side apply); absent
        // or empty means unchanged, as in Kubernetes.
        let sent_fields = client
            .pointer("/metadata/managedFields")
            .and_then(Value::as_array)
            .filter(|l| !l.is_empty())
            .filter(|l| {
                cur.value
                    .pointer("/metadata/managedFields")
                    .and_then(Value::as_array)
                    != Some(*l)
            })
            .map(|l| apply::parse_entries(l));
        let applied_fields = match owner {
            Owner::Apply => Some(apply::entries(&client)),
            Owner::Update => sent_fields,
        };
        let mut merged = merge_for_update(t.res, client, &cur.value, part);
        crate::store::stamp_revision(&mut merged, cur.rv);
        admit(t.res, &mut merged, Some(&cur.value))?;
        guard_escalation(st, t, q, &merged)?;
        match applied_fields {
            Some(entries) => apply::set_entries(&mut merged, &entries),
            // Most objects are never applied: skip the bookkeeping for them.
            None if !apply::is_managed(&cur.value) => {}
            None => {
                let api_version = t.res.api_version();
                let now = now();
                let req = apply::Request {
                    manager: q.manager(),
                    force: false,
                    kind: t.res.kind,
                    api_version: &api_version,
                    has_status: t.res.has_status(),
                    status: part == Part::Status,
                    now: &now,
                };
                let sub = (part == Part::Status).then_some("status");
                apply::track_update(&cur.value, &mut merged, q.manager(), sub, &req);
            }
        }
        if services {
            let mut used = st
                .services
                .used(&*st.store, &t.res.key(None, None), &key)
                .await?;
            st.services
                .assign(&mut merged, Some(&cur.value), &mut used)?;
        }
        if dry_run {
            return Ok(merged);
        }
        match store_update(st, &key, merged, &cur.value, cur.rv).await {
            Ok(v) => return Ok(v),
            Err(StoreError::Conflict { .. })
                if precondition.is_none() && std::time::Instant::now() < deadline =>
            {
                // Let the writer that won finish before reading again.
                tokio::task::yield_now().await;
            }
            Err(StoreError::Conflict { .. }) if precondition.is_none() => {
                return Err(ApiError::conflict(
                    &gr,
                    &name,
                    "too many concurrent writers; try again",
                ))
            }
            Err(e) => return Err(ApiError::from_store(e, &gr, &name)),
        }
    }
}

/// How long a write without a precondition keeps retrying on conflicts.
const CONTENDED_WRITE_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

/// A body naming a uid acts as a precondition, as in Kubernetes: a late
/// writer cannot land on a different object that reused the name.
fn check_uid(client: &Value, current: &Value, gr: &str, name: &str) -> ApiResult<()> {
    let sent = client.pointer("/metadata/uid").and_then(Value::as_str);
    let stored = current.pointer("/metadata/uid").and_then(Value::as_str);
    match (sent, stored) {
        (Some(s), Some(c)) if !s.is_empty() && s != c => Err(ApiError::conflict(
            gr,
            name,
            &format!("Precondition failed: UID in precondition: {s}, UID in object meta: {c}"),
        )),
        _ => Ok(()),
    }
}

/// `POST pods/{name}/binding`: assigns a node, once, and records
/// PodScheduled=True in the same write (as the scheduler's bind does).
pub async fn bind(
    st: &ApiState,
    t: &Target<'_>,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let binding = request::read_object(headers, body).await?;
    let name = object_name(t).to_string();
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::invalid("Binding", &name, vec![Cause::required("target.name")]))?
        .to_string();
    let key = t.res.key(t.namespace.as_deref(), Some(&name));
    loop {
        let cur = st
            .store
            .get(&key)
            .await
            .map_err(|e| ApiError::from_store(e, "pods", &name))?
            .ok_or_else(|| ApiError::not_found("pods", &name))?;
        if let Some(existing) = cur
            .value
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            return Err(ApiError::conflict(
                "pods/binding",
                &name,
                &format!("pod {name} is already assigned to node \"{existing}\""),
            ));
        }
        if cur
            .value
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null())
        {
            return Err(ApiError::conflict(
                "pods/binding",
                &name,
                "pod is being deleted, cannot be assigned to a host",
            ));
        }
        let mut next = (*cur.value).clone();
        crate::apiserver::admission::obj_mut(&mut next, "spec")
            .insert("nodeName".into(), json!(node));
        set_condition(
            &mut next,
            json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now()}),
        );
        match st.store.update(&key, Some(cur.rv), next).await {
            Ok(_) => break,
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e, "pods", &name)),
        }
    }
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
    Ok(respond(StatusCode::CREATED, &status, &[]))
}

/// Replaces or appends `status.conditions[type]`.
pub fn set_condition(obj: &mut Value, cond: Value) {
    let status = crate::apiserver::admission::obj_mut(obj, "status");
    let list = status.entry("conditions").or_insert_with(|| json!([]));
    if let Value::Array(items) = list {
        let ty = cond.get("type").cloned();
        match items.iter_mut().find(|c| c.get("type") == ty.as_ref()) {
            Some(existing) => *existing = cond,
            None => items.push(cond),
        }
    }
}

/// The subresource-free metadata map, for handlers that edit it.
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    crate::apiserver::admission::obj_mut(obj, "metadata")
}
