//! HTTP between the node and its workloads, whatever runs them: a pod that
//! serves HTTP hands the node an [`HttpService`]; a guest's outbound
//! requests go through the node's [`Outbound`] router. Plain `http` types,
//! so the node gateway never sees wasmtime's.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every request and response body the runtime hands across its boundary.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body held in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// A plain-text answer the host gives on a guest's behalf (413, 502, 504…).
pub fn text_response(status: http::StatusCode, message: impl Into<String>) -> http::Response<Body> {
    let mut text = message.into();
    text.push('\n');
    let mut resp = http::Response::new(full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Per-pod bounds on request handling.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Requests handled at once; more are turned away (the gateway tries
    /// another endpoint or answers 503).
    pub max_concurrency: usize,
    /// From accepting a request to the guest's last byte.
    pub timeout: Duration,
    /// Largest request body the guest is handed.
    pub max_body_bytes: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_concurrency: 1000,
            timeout: Duration::from_secs(30),
            max_body_bytes: 10 * 1024 * 1024,
        }
    }
}

/// A running pod's HTTP entry point.
#[async_trait::async_trait]
pub trait HttpService: Send + Sync + 'static {
    /// Handles one request. `Err` gives the request back untouched when the
    /// pod did not take it (draining, or at its concurrency limit), so the
    /// caller may send it elsewhere; every other outcome, guest failures
    /// included, is a response.
    async fn serve(
        &self,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, http::Request<Body>>;

    /// Requests being handled right now.
    fn in_flight(&self) -> usize;
}

/// Why a guest's outbound request was not answered.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// Policy forbids this destination.
    #[error("outbound request to {0} denied")]
    Denied(String),
    /// No such Service, or a name that resolves nowhere.
    #[error("destination {0} not found")]
    NotFound(String),
    /// The Service exists but has no ready endpoint.
    #[error("destination {0} unavailable")]
    Unavailable(String),
    #[error("outbound request timed out")]
    Timeout,
    #[error("outbound request failed: {0}")]
    Failed(String),
}

/// Where a guest's outbound HTTP requests go: the node routes Service
/// names to endpoints and applies the pod's outbound policy.
#[async_trait::async_trait]
pub trait Outbound: Send + Sync + 'static {
    async fn send(&self, req: http::Request<Body>) -> Result<http::Response<Body>, OutboundError>;
}
