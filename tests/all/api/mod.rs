//! The API server against the real kubectl and the kube client.

mod apply;
mod bad_input;
mod durability;
mod kubectl;
mod lists;
mod observability;
mod rbac;
mod watch;

use kube::Client;
use serde_json::Value;

/// Sends a raw request; returns (HTTP code, Status or object body).
pub async fn raw(
    client: &Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> anyhow::Result<(u16, Value)> {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("Content-Type", content_type)
        .body(body)?;
    match client.request_text(req).await {
        Ok(text) => Ok((
            200,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )),
        Err(kube::Error::Api(status)) => Ok((status.code, serde_json::to_value(&*status)?)),
        Err(e) => Err(e.into()),
    }
}
