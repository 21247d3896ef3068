//! The Kubernetes-compatible API server: discovery, the generic resource
//! registry, admission, and HTTPS serving with bearer-token auth.

pub mod admission;
pub mod allocate;
pub mod apply;
pub mod auth;
pub mod bootstrap;
mod discovery;
pub mod error;
pub mod fields;
mod handlers;
pub mod kinds;
pub mod local;
mod protobuf;
pub mod proxy;
pub mod registry;
pub mod request;
pub mod resource_metrics;
pub mod reviews;
mod seed;
pub mod selectors;
pub mod serve;
pub mod strategic;
pub mod table;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;

use crate::metrics::Metrics;
use crate::store::Store;
use error::ApiError;
use handlers::RequestLabels;
use registry::Registry;

pub use seed::seed;
pub use serve::serve_tls;

/// Everything a request handler needs.
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    /// Bearer tokens accepted, with the user each stands for.
    pub tokens: auth::Tokens,
    /// Signs and checks ServiceAccount tokens.
    pub sa_tokens: auth::sa_token::Signer,
    /// The RBAC policy requests are authorized against.
    pub policy: Arc<auth::cache::PolicyCache>,
    /// `host:port` clients are told to use.
    pub advertise: String,
    /// Reaches node agents for logs and the node proxy.
    pub nodes: proxy::NodeClient,
    /// Cluster IPs and node ports of Services.
    pub services: allocate::ServiceAllocator,
    /// Evictions are decided one at a time, so two cannot both spend a
    /// disruption budget's last allowed disruption.
    pub evictions: tokio::sync::Mutex<()>,
}

/// Health endpoints answer anyone, as Kubernetes' public-info-viewer role allows.
fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/livez" | "/readyz" | "/version")
}

/// Authenticates, applies impersonation, and authorizes with RBAC; the
/// user a request acts as travels on to the handlers as an extension.
async fn auth(State(st): State<Arc<ApiState>>, mut req: Request, next: Next) -> Response {
    if is_public(req.uri().path()) {
        return next.run(req).await;
    }
    let user = match st.tokens.lookup(req.headers()) {
        Some(u) => Some(u),
        None => auth::service_account_user(&st, req.headers()).await,
    };
    let Some(user) = user else {
        return refused(&req, ApiError::unauthorized());
    };
    let user = match auth::impersonate(&st.policy, user, req.headers()) {
        Ok(u) => u,
        Err(e) => return refused(&req, e),
    };
    // Superusers skip working out the request's attributes at all: the
    // controllers and the API benchmark are all such requests.
    if !user.is_master() {
        let attrs = auth::attributes::Attributes::of(req.method(), req.uri());
        if let Err(e) = auth::authorize(&st.policy, &user, &attrs) {
            tracing::debug!(user = %user.name, verb = %attrs.verb, path = %attrs.path, "forbidden");
            return refused(&req, e);
        }
    }
    req.extensions_mut().insert(user);
    next.run(req).await
}

/// A request turned away before any handler: labelled for `/metrics` by
/// what it asked, so refusals show by verb and resource like other errors.
fn refused(req: &Request, e: ApiError) -> Response {
    let attrs = auth::attributes::Attributes::of(req.method(), req.uri());
    let verb = match attrs.verb.as_str() {
        "get" => "GET",
        "list" => "LIST",
        "watch" => "WATCH",
        "create" => "POST",
        "update" => "PUT",
        "patch" => "PATCH",
        "delete" => "DELETE",
        "deletecollection" => "DELETECOLLECTION",
        _ => "OTHER",
    };
    let mut resp = e.into_response();
    resp.extensions_mut().insert(RequestLabels {
        verb,
        resource: attrs.resource_name(),
    });
    resp
}

/// Request count and latency by verb, resource and code.
async fn observe(State(st): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    tracing::debug!(%method, %path, code = resp.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "request");
    let (verb, resource) = match resp.extensions().get::<RequestLabels>() {
        Some(l) => (l.verb, l.resource.clone()),
        None => ("GET", String::new()),
    };
    let code = resp.status().as_u16().to_string();
    st.metrics
        .requests
        .with_label_values(&[verb, &resource, &code])
        .inc();
    if verb != "WATCH" {
        st.metrics
            .request_latency
            .with_label_values(&[verb, &resource])
            .observe(started.elapsed().as_secs_f64());
    }
    resp
}

async fn healthz() -> &'static str {
    "ok"
}

async fn metrics(State(st): State<Arc<ApiState>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}

async fn not_found(req: Request) -> Response {
    ApiError::path_not_found(req.uri().path()).into_response()
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .route("/readyz", get(healthz))
        .route("/version", get(discovery::version))
        .route("/metrics", get(metrics))
        .route("/api", get(discovery::api_versions))
        .route("/api/v1", get(discovery::core_resources))
        .route("/apis", get(discovery::api_groups))
        .route("/apis/{group}", get(discovery::api_group))
        .route("/apis/{group}/{version}", get(discovery::group_resources))
        .route("/openapi/v2", get(discovery::openapi_v2))
        .route("/openapi/v3", get(discovery::openapi_v3_root))
        .route("/openapi/v3/{*rest}", get(discovery::openapi_v3_gv))
        .route("/api/v1/{*rest}", any(handlers::core_resource))
        .route(
            "/apis/{group}/{version}/{*rest}",
            any(handlers::group_resource),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}
