//! The HTTP entry point of a container that listens on a real socket: the
//! node gateway hands it requests, it forwards them to the container's port
//! at the pod's IP (the node's address: containers share its network).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use crate::http::{text_response, Body, BoxError, HttpLimits, HttpService};

pub(crate) struct PortProxy {
    /// `ip:port`, bracketed for IPv6.
    authority: String,
    limits: HttpLimits,
    client: Client<HttpConnector, Body>,
    in_flight: AtomicUsize,
    pub(crate) draining: Arc<AtomicBool>,
}

impl PortProxy {
    pub(crate) fn new(
        ip: &str,
        port: u16,
        limits: HttpLimits,
        draining: Arc<AtomicBool>,
    ) -> PortProxy {
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let authority = if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        };
        PortProxy {
            authority,
            limits,
            client,
            in_flight: AtomicUsize::new(0),
            draining,
        }
    }
}

/// Decrements the in-flight count however the request ends.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait::async_trait]
impl HttpService for PortProxy {
    async fn serve(
        &self,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, http::Request<Body>> {
        if self.draining.load(Ordering::Acquire) {
            return Err(req);
        }
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.limits.max_concurrency {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(req);
        }
        let _guard = InFlight(&self.in_flight);
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        parts.uri = match format!("http://{}{path}", self.authority).parse() {
            Ok(u) => u,
            Err(e) => {
                return Ok(text_response(
                    http::StatusCode::BAD_REQUEST,
                    format!("bad request target: {e}"),
                ))
            }
        };
        let limited = http_body_util::Limited::new(body, self.limits.max_body_bytes as usize)
            .map_err(|e| -> BoxError { e })
            .boxed_unsync();
        let sent = self
            .client
            .request(http::Request::from_parts(parts, limited));
        match tokio::time::timeout(self.limits.timeout, sent).await {
            Ok(Ok(resp)) => {
                Ok(resp.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync()))
            }
            Ok(Err(e)) => Ok(text_response(
                http::StatusCode::BAD_GATEWAY,
                format!("the container does not answer at {}: {e}", self.authority),
            )),
            Err(_) => Ok(text_response(
                http::StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the container did not answer within {}s",
                    self.limits.timeout.as_secs()
                ),
            )),
        }
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}
