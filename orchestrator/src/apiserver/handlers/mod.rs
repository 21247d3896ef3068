//! Resource handlers: one entry point resolves the request (RequestInfo)
//! and dispatches to the verb; each verb lives in its own module.

mod delete;
mod evict;
mod on_create;
mod patch;
pub(super) mod read;
mod scale;
mod token;
mod watch;
pub mod write;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::auth::UserInfo;
use super::error::{ApiError, ApiResult};
use super::registry::Source;
use super::request::{self, Query, Target};
use super::resource_metrics;
use super::ApiState;

/// What the metrics layer labels a request with.
#[derive(Clone, Debug)]
pub struct RequestLabels {
    pub verb: &'static str,
    pub resource: String,
}

/// The connection's protocol switch, for requests that upgrade
/// (`pods/exec`): taken out of the request so it can be completed later.
pub struct Upgrade(pub Option<hyper::upgrade::OnUpgrade>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Upgrade {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Upgrade, Self::Rejection> {
        Ok(Upgrade(
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>(),
        ))
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn core_resource(
    State(st): State<Arc<ApiState>>,
    Extension(user): Extension<Arc<UserInfo>>,
    Path(rest): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    upgrade: Upgrade,
    body: Body,
) -> Response {
    if let Some(sub) = NodeSub::of(&rest) {
        let mut labels = RequestLabels {
            verb: "unknown",
            resource: String::new(),
        };
        let mut resp = node_subresource(
            &st,
            sub,
            &method,
            &uri,
            &headers,
            upgrade,
            body,
            &mut labels,
        )
        .await
        .unwrap_or_else(IntoResponse::into_response);
        resp.extensions_mut().insert(labels);
        return resp;
    }
    serve(st, user, "", "v1", &rest, method, uri, headers, body).await
}

pub async fn group_resource(
    State(st): State<Arc<ApiState>>,
    Extension(user): Extension<Arc<UserInfo>>,
    Path((group, version, rest)): Path<(String, String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    serve(
        st, user, &group, &version, &rest, method, uri, headers, body,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    st: Arc<ApiState>,
    user: Arc<UserInfo>,
    group: &str,
    version: &str,
    rest: &str,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut labels = RequestLabels {
        verb: "unknown",
        resource: String::new(),
    };
    let result = dispatch(
        &st,
        user,
        group,
        version,
        rest,
        &method,
        &uri,
        &headers,
        body,
        &mut labels,
    )
    .await;
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    resp.extensions_mut().insert(labels);
    resp
}

#[allow(clippy::too_many_arguments)]
async fn dispatch(
    st: &ApiState,
    user: Arc<UserInfo>,
    group: &str,
    version: &str,
    rest: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    labels: &mut RequestLabels,
) -> ApiResult<Response> {
    let t = request::resolve(&st.registry, group, version, rest, uri.path())?;
    let mut q = Query::parse(uri.query())?;
    q.agent = request::agent_manager(headers);
    q.user = Some(user);
    labels.resource = match &t.sub {
        Some(s) => format!("{}/{s}", t.res.plural),
        None => t.res.plural.to_string(),
    };
    let table = request::wants_table(headers);
    let is_watch = request::truthy(&q.watch);
    labels.verb = verb_name(method, &t, is_watch);
    match t.res.source {
        Source::Stored => {}
        Source::Answered(_) => {
            return match (method.as_str(), t.name.is_some()) {
                ("POST", false) => write::review(st, &t, &q, headers, body).await,
                _ => Err(ApiError::method_not_allowed(format!(
                    "{} can only be created: the server answers them and keeps nothing",
                    t.res.plural
                ))),
            };
        }
        Source::Measured => {
            return match (method.as_str(), t.sub.as_deref()) {
                ("GET", None) if !is_watch => resource_metrics::serve(st, &t, &q, table).await,
                _ => Err(ApiError::method_not_allowed(format!(
                    "{} can only be read: they are measured on the nodes when asked",
                    t.res.group_resource()
                ))),
            };
        }
    }
    match (method.as_str(), t.name.is_some(), t.sub.as_deref()) {
        ("GET", false, _) if is_watch => watch::watch(st, &t, &q, table).await,
        ("GET", false, _) => read::list(st, &t, &q, table).await,
        ("GET", true, Some("scale")) => scale::get(st, &t).await,
        ("GET", true, _) => read::get(st, &t, &q, table).await,
        ("POST", false, None) => write::create(st, &t, &q, headers, body).await,
        ("POST", true, Some("binding")) => write::bind(st, &t, headers, body).await,
        ("POST", true, Some("eviction")) => evict::evict(st, &t, &q, headers, body).await,
        ("POST", true, Some("token")) => token::create(st, &t, headers, body).await,
        ("PUT", true, Some("scale")) => scale::put(st, &t, &q, headers, body).await,
        ("PUT", true, _) => write::update(st, &t, &q, headers, body).await,
        ("PATCH", true, Some("scale")) => scale::patch(st, &t, &q, headers, body).await,
        ("PATCH", true, _) => patch::patch(st, &t, &q, headers, body).await,
        ("DELETE", true, None) => delete::delete(st, &t, &q, body).await,
        ("DELETE", false, None) => delete::delete_collection(st, &t, &q, body).await,
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} {})",
            uri.path()
        ))),
    }
}

/// Requests the node running a pod answers, not the store.
enum NodeSub<'a> {
    PodLog {
        namespace: &'a str,
        name: &'a str,
    },
    PodExec {
        what: &'static str,
        namespace: &'a str,
        name: &'a str,
    },
    PodPortForward {
        namespace: &'a str,
        name: &'a str,
    },
    NodeProxy {
        node: &'a str,
        path: String,
    },
}

impl<'a> NodeSub<'a> {
    fn of(rest: &'a str) -> Option<NodeSub<'a>> {
        let segs: Vec<&str> = rest.split('/').collect();
        match segs.as_slice() {
            ["namespaces", namespace, "pods", name, "log"] => {
                Some(NodeSub::PodLog { namespace, name })
            }
            ["namespaces", namespace, "pods", name, what @ ("exec" | "attach")] => {
                Some(NodeSub::PodExec {
                    what: if *what == "exec" { "exec" } else { "attach" },
                    namespace,
                    name,
                })
            }
            ["namespaces", namespace, "pods", name, "portforward"] => {
                Some(NodeSub::PodPortForward { namespace, name })
            }
            ["nodes", node, "proxy", tail @ ..] => Some(NodeSub::NodeProxy {
                node,
                path: tail.join("/"),
            }),
            _ => None,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn node_subresource(
    st: &ApiState,
    sub: NodeSub<'_>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    upgrade: Upgrade,
    body: Body,
    labels: &mut RequestLabels,
) -> ApiResult<Response> {
    match sub {
        NodeSub::PodExec {
            what,
            namespace,
            name,
        } => {
            upgrade_request(labels, format!("pods/{what}"), method, uri)?;
            super::proxy::pod_exec(
                st,
                what,
                namespace,
                name,
                uri.query(),
                method,
                headers,
                upgrade.0,
            )
            .await
        }
        NodeSub::PodPortForward { namespace, name } => {
            upgrade_request(labels, "pods/portforward".into(), method, uri)?;
            super::proxy::pod_port_forward(st, namespace, name, method, headers, upgrade.0).await
        }
        NodeSub::PodLog { namespace, name } => {
            labels.resource = "pods/log".into();
            labels.verb = "GET";
            if method != Method::GET {
                return Err(ApiError::method_not_allowed(format!(
                    "the server does not allow this method on the requested resource ({method} {})",
                    uri.path()
                )));
            }
            super::proxy::pod_log(st, namespace, name, uri.query()).await
        }
        NodeSub::NodeProxy { node, path } => {
            labels.resource = "nodes/proxy".into();
            labels.verb = "PROXY";
            super::proxy::node_proxy(st, node, &path, uri.query(), method.clone(), body).await
        }
    }
}

/// Labels a streaming subresource request (exec, attach, port-forward),
/// which clients open with GET (WebSocket) or POST (SPDY) only.
fn upgrade_request(
    labels: &mut RequestLabels,
    resource: String,
    method: &Method,
    uri: &Uri,
) -> ApiResult<()> {
    labels.resource = resource;
    labels.verb = if method == Method::POST {
        "POST"
    } else {
        "GET"
    };
    if method != Method::GET && method != Method::POST {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} {})",
            uri.path()
        )));
    }
    Ok(())
}

fn verb_name(method: &Method, t: &Target, watch: bool) -> &'static str {
    match (method.as_str(), t.name.is_some()) {
        ("GET", false) if watch => "WATCH",
        ("GET", false) => "LIST",
        ("GET", true) => "GET",
        ("POST", _) => "POST",
        ("PUT", _) => "PUT",
        ("PATCH", _) => "PATCH",
        ("DELETE", true) => "DELETE",
        ("DELETE", false) => "DELETECOLLECTION",
        _ => "OTHER",
    }
}

/// A JSON answer, with `Warning` headers for anything the client should know.
pub fn respond(code: StatusCode, body: &Value, warnings: &[String]) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = (
        code,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response();
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "'"));
        if let Ok(v) = axum::http::HeaderValue::from_str(&text) {
            resp.headers_mut().append("Warning", v);
        }
    }
    resp
}

/// The object's name and namespace from the target; errors name the resource.
pub fn object_name<'a>(t: &'a Target) -> &'a str {
    t.name.as_deref().unwrap_or("")
}
