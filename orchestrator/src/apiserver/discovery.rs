//! Discovery (`/api`, `/apis`, per group-version resource lists), `/version`
//! and the OpenAPI documents kubectl consults before it writes.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::error::ApiError;
use super::handlers::respond;
use super::registry::{Registry, ResourceInfo, Source};
use super::ApiState;

/// The Kubernetes API version Shoal's types come from (k8s-openapi v1_33).
pub const KUBE_MINOR: &str = "33";

pub async fn version() -> Response {
    respond(
        StatusCode::OK,
        &json!({
            "major": "1",
            "minor": KUBE_MINOR,
            "gitVersion": format!("v1.{KUBE_MINOR}.0-shoal.{}", env!("CARGO_PKG_VERSION")),
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "",
            "goVersion": "n/a (rust)",
            "compiler": "rustc",
            "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
        }),
        &[],
    )
}

/// Architecture names as Kubernetes (Go) spells them.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub async fn api_versions(State(st): State<Arc<ApiState>>) -> Response {
    respond(
        StatusCode::OK,
        &json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": st.advertise}],
        }),
        &[],
    )
}

fn group_json(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

pub async fn api_groups(State(st): State<Arc<ApiState>>) -> Response {
    let groups: Vec<Value> = st
        .registry
        .groups()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, v)| group_json(g, v))
        .collect();
    respond(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
        &[],
    )
}

pub async fn api_group(State(st): State<Arc<ApiState>>, Path(group): Path<String>) -> Response {
    match st.registry.groups().into_iter().find(|(g, _)| *g == group) {
        Some((g, v)) => {
            let mut body = group_json(g, v);
            body["kind"] = json!("APIGroup");
            body["apiVersion"] = json!("v1");
            respond(StatusCode::OK, &body, &[])
        }
        None => ApiError::path_not_found(&format!("/apis/{group}")).into_response(),
    }
}

fn resource_entries(r: &ResourceInfo) -> Vec<Value> {
    let mut out = vec![json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": r.source.verbs(),
        "shortNames": r.short_names,
        "categories": r.categories,
    })];
    for sub in r.subresources {
        let entry = match *sub {
            "status" => {
                json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
                "kind": r.kind, "verbs": ["get", "patch", "update"]})
            }
            "scale" => {
                json!({"name": format!("{}/scale", r.plural), "singularName": "", "namespaced": r.namespaced,
                "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]})
            }
            "eviction" => {
                json!({"name": format!("{}/eviction", r.plural), "singularName": "", "namespaced": r.namespaced,
                "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]})
            }
            "binding" => {
                json!({"name": format!("{}/binding", r.plural), "singularName": "", "namespaced": r.namespaced,
                "kind": "Binding", "verbs": ["create"]})
            }
            "log" => {
                json!({"name": format!("{}/log", r.plural), "singularName": "", "namespaced": r.namespaced,
                "kind": r.kind, "verbs": ["get"]})
            }
            "exec" => {
                json!({"name": format!("{}/exec", r.plural), "singularName": "", "namespaced": r.namespaced,
                "kind": "PodExecOptions", "verbs": ["create", "get"]})
            }
            "attach" => {
                json!({"name": format!("{}/attach", r.plural), "singularName": "", "namespaced": r.namespaced,
                "kind": "PodAttachOptions", "verbs": ["create", "get"]})
            }
            "portforward" => {
                json!({"name": format!("{}/portforward", r.plural), "singularName": "", "namespaced": r.namespaced,
                "kind": "PodPortForwardOptions", "verbs": ["create", "get"]})
            }
            "proxy" => {
                json!({"name": format!("{}/proxy", r.plural), "singularName": "", "namespaced": r.namespaced,
                "kind": "NodeProxyOptions", "verbs": ["create", "delete", "get", "patch", "update"]})
            }
            "token" => {
                json!({"name": format!("{}/token", r.plural), "singularName": "", "namespaced": r.namespaced,
                "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]})
            }
            "finalize" => {
                json!({"name": format!("{}/finalize", r.plural), "singularName": "", "namespaced": r.namespaced,
                "kind": r.kind, "verbs": ["update"]})
            }
            _ => continue,
        };
        out.push(entry);
    }
    out
}

fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Value> = reg
        .resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .flat_map(resource_entries)
        .collect();
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

pub async fn core_resources(State(st): State<Arc<ApiState>>) -> Response {
    match resource_list(&st.registry, "", "v1") {
        Some(body) => respond(StatusCode::OK, &body, &[]),
        None => ApiError::path_not_found("/api/v1").into_response(),
    }
}

pub async fn group_resources(
    State(st): State<Arc<ApiState>>,
    Path((group, version)): Path<(String, String)>,
) -> Response {
    match resource_list(&st.registry, &group, &version) {
        Some(body) => respond(StatusCode::OK, &body, &[]),
        None => ApiError::path_not_found(&format!("/apis/{group}/{version}")).into_response(),
    }
}

/// OpenAPI v2 is protobuf-only for kubectl; an empty message is a valid,
/// empty document, so kubectl's client-side schema lookups find nothing and
/// it relies on server-side validation (advertised through v3) and its
/// built-in patch metadata instead.
///
/// kubectl asks with the `…spec.v2@v1.0+protobuf` media type, but an
/// answer must name it `…spec.v2.v1.0+protobuf`, as kube-openapi does: Go's
/// MIME parser refuses the `@`, and `kubectl create -f` of a kind with no
/// PATCH (the access reviews) falls back to v2 and failed on it.
pub async fn openapi_v2() -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
        )],
        Vec::<u8>::new(),
    )
        .into_response()
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

pub async fn openapi_v3_root(State(st): State<Arc<ApiState>>) -> Response {
    let mut paths = serde_json::Map::new();
    for (p, doc) in documents(&st.registry) {
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", doc.hash)}),
        );
    }
    respond(StatusCode::OK, &json!({"paths": paths}), &[])
}

/// One group-version's OpenAPI v3 document, encoded once.
pub struct OpenApiDoc {
    body: bytes::Bytes,
    /// Changes whenever the document does: kubectl caches documents by it.
    hash: String,
}

/// Every group-version's document, built on first use: the schemas come
/// from the types, so they never change while the server runs.
fn documents(reg: &Registry) -> &'static std::collections::BTreeMap<String, OpenApiDoc> {
    static DOCS: std::sync::OnceLock<std::collections::BTreeMap<String, OpenApiDoc>> =
        std::sync::OnceLock::new();
    DOCS.get_or_init(|| {
        reg.groups()
            .into_iter()
            .map(|(g, v)| {
                let body = serde_json::to_vec(&v3_document(reg, g, v)).unwrap_or_default();
                let hash = format!("{:08x}", crc32fast::hash(&body));
                (
                    gv_path(g, v),
                    OpenApiDoc {
                        body: body.into(),
                        hash,
                    },
                )
            })
            .collect()
    })
}

pub async fn openapi_v3_gv(State(st): State<Arc<ApiState>>, Path(rest): Path<String>) -> Response {
    match documents(&st.registry).get(rest.trim_matches('/')) {
        Some(doc) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            doc.body.clone(),
        )
            .into_response(),
        None => ApiError::path_not_found(&format!("/openapi/v3/{rest}")).into_response(),
    }
}

/// Per group-version document: the operations with their
/// group-version-kind and the `fieldValidation` parameter, which tells
/// kubectl to validate on the server (Strict) rather than client-side, and
/// the kinds' schemas.
fn v3_document(reg: &Registry, group: &str, version: &str) -> Value {
    let mut paths = serde_json::Map::new();
    let params = json!([
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
    ]);
    for r in reg
        .resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let base = if r.namespaced {
            format!(
                "/{}/namespaces/{{namespace}}/{}",
                gv_path(group, version),
                r.plural
            )
        } else {
            format!("/{}/{}", gv_path(group, version), r.plural)
        };
        let op = |action: &str| {
            json!({"x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk.clone(),
                   "parameters": params.clone(), "responses": {"200": {"description": "OK"}}})
        };
        match r.source {
            Source::Answered(_) => {
                paths.insert(base, json!({"post": op("post")}));
                continue;
            }
            Source::Measured => {
                paths.insert(base.clone(), json!({"get": op("list")}));
                paths.insert(format!("{base}/{{name}}"), json!({"get": op("get")}));
                continue;
            }
            Source::Stored => {}
        }
        paths.insert(base.clone(), json!({"post": op("post"), "get": op("list")}));
        paths.insert(format!("{base}/{{name}}"), json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}));
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Shoal", "version": format!("v1.{KUBE_MINOR}.0")},
        "paths": paths,
        "components": {"schemas": schemas(reg, group, version)},
    })
}

/// The schemas of a group-version's kinds and of every type they use, as
/// `components.schemas`; each kind's own schema names its
/// group-version-kind, which is how `kubectl explain` finds it.
fn schemas(reg: &Registry, group: &str, version: &str) -> Value {
    let mut gen = schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut kinds = Vec::new();
    for r in reg
        .resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let reference = (r.schema)(&mut gen);
        let name = reference
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|s| s.rsplit('/').next())
            .map(str::to_string);
        if let Some(name) = name {
            kinds.push((name, r.kind));
        }
    }
    let mut defs = gen.take_definitions(true);
    for (name, kind) in kinds {
        if let Some(Value::Object(schema)) = defs.get_mut(&name) {
            schema.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": group, "version": version, "kind": kind}]),
            );
        }
    }
    Value::Object(defs)
}
