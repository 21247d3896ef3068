//! A `kube::Client` for the server's own controllers and scheduler that
//! hands each request straight to the API router: the same
//! authentication, admission, handlers and watch streams as any client,
//! without a socket, TLS or HTTP/1 framing in between.
//!
//! Why: in a scale-up every pod is written and watched several times by
//! the in-process controllers (create, bind, status, and a watch event to
//! each informer), and a profile put TLS and hyper on both ends of the
//! loopback connection among the largest costs left. Nodes and kubectl
//! still come over HTTPS; only traffic that never leaves the process
//! skips the wire.

use axum::body::Body as AxumBody;
use axum::Router;
use http::header::{HeaderValue, AUTHORIZATION, USER_AGENT};
use tower::ServiceExt as _;

/// A client that calls `app` in-process with `token` as its bearer token.
/// `agent` is its User-Agent: the field manager its writes are recorded
/// under unless a request names one.
pub fn client(
    app: Router,
    token: &str,
    agent: &str,
) -> Result<kube::Client, http::header::InvalidHeaderValue> {
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))?;
    let agent = HeaderValue::from_str(agent)?;
    let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let (app, bearer, agent) = (app.clone(), bearer.clone(), agent.clone());
        async move {
            let (mut parts, body) = req.into_parts();
            parts.headers.insert(AUTHORIZATION, bearer);
            parts.headers.entry(USER_AGENT).or_insert(agent);
            // Handled on the caller's task: handing each request to a task
            // of its own measured slower in the scale-up (2.5-3.3 s against
            // 1.9-2.4 s), as the handlers' work then migrates between cores.
            app.oneshot(http::Request::from_parts(parts, AxumBody::new(body)))
                .await
        }
    });
    Ok(kube::Client::new(service, "default"))
}
