//! gRPC probes: one call of the standard health service
//! (`grpc.health.v1.Health/Check`), as kubelet makes it: plaintext HTTP/2
//! to the pod IP, the probe's `service` in the request, and only a
//! `SERVING` answer passes. The two messages are one string and one enum,
//! so they are encoded by hand rather than through a protobuf toolchain.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use shoal_runtime::http::{full, Body, HttpService};

const PATH: &str = "/grpc.health.v1.Health/Check";
/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

/// The request: one length-prefixed, uncompressed `HealthCheckRequest`.
fn request_body(service: &str) -> Bytes {
    let mut msg = BytesMut::new();
    if !service.is_empty() {
        // Field 1 (service), wire type 2 (length-delimited).
        msg.put_u8(0x0a);
        put_varint(&mut msg, service.len() as u64);
        msg.put_slice(service.as_bytes());
    }
    let mut framed = BytesMut::with_capacity(5 + msg.len());
    framed.put_u8(0);
    framed.put_u32(msg.len() as u32);
    framed.put_slice(&msg);
    framed.freeze()
}

fn put_varint(b: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        b.put_u8((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    b.put_u8(v as u8);
}

fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// The `status` of a framed `HealthCheckResponse` (0, UNKNOWN, when absent).
fn response_status(body: &[u8]) -> Result<u64, String> {
    let msg = body
        .get(5..)
        .filter(|_| body.first() == Some(&0))
        .ok_or("the health check answer is not an uncompressed gRPC message")?;
    let mut at = 0;
    let mut status = 0;
    while at < msg.len() {
        let (key, n) = varint(&msg[at..]).ok_or("a malformed health check answer")?;
        at += n;
        match key & 7 {
            0 => {
                let (v, n) = varint(&msg[at..]).ok_or("a malformed health check answer")?;
                at += n;
                if key >> 3 == 1 {
                    status = v;
                }
            }
            2 => {
                let (len, n) = varint(&msg[at..]).ok_or("a malformed health check answer")?;
                at += n + len as usize;
            }
            _ => return Err("a malformed health check answer".into()),
        }
    }
    Ok(status)
}

fn status_name(s: u64) -> &'static str {
    match s {
        0 => "UNKNOWN",
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "an unknown status",
    }
}

/// One health check of `service` at `host:port`, or through the
/// container's handler when it has one.
pub(super) async fn check(
    http: Option<&Arc<dyn HttpService>>,
    host: &str,
    port: u16,
    service: &str,
) -> Result<(), String> {
    let req = http::Request::post(format!("http://{host}:{port}{PATH}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .header(http::header::USER_AGENT, "kube-probe/1.33")
        .body(full(request_body(service)))
        .map_err(|e| format!("building the gRPC request: {e}"))?;
    let resp = match http {
        Some(svc) => svc
            .serve(req)
            .await
            .map_err(|_| "the pod is not taking requests".to_string())?,
        None => call(host, port, req).await?,
    };
    if resp.status() != http::StatusCode::OK {
        return Err(format!(
            "gRPC health check answered HTTP {}",
            resp.status().as_u16()
        ));
    }
    let headers = resp.headers().clone();
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the health check answer: {e}"))?;
    // A failed call may come as headers only ("trailers-only").
    let trailers = collected.trailers().cloned().unwrap_or(headers);
    let code = trailers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0");
    if code != "0" {
        let message = trailers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        return Err(format!("gRPC health check failed: status {code} {message}"));
    }
    match response_status(&collected.to_bytes())? {
        SERVING => Ok(()),
        s => Err(format!(
            "service unhealthy (responded with \"{}\")",
            status_name(s)
        )),
    }
}

/// Plaintext HTTP/2 (h2c, prior knowledge), as gRPC servers take it.
async fn call(
    host: &str,
    port: u16,
    req: http::Request<Body>,
) -> Result<http::Response<Body>, String> {
    let stream = super::probe::dial(host, port).await?;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .map_err(|e| format!("gRPC probe: {e}"))?;
    tokio::spawn(conn);
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("gRPC probe: {e}"))?;
    Ok(resp.map(|b| {
        b.map_err(|e| Box::new(e) as shoal_runtime::http::BoxError)
            .boxed_unsync()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    #[test]
    fn messages_encode_and_decode() {
        assert_eq!(&request_body("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &request_body("db")[..],
            &[0, 0, 0, 0, 4, 0x0a, 2, b'd', b'b']
        );
        assert_eq!(response_status(&[0, 0, 0, 0, 2, 0x08, 1]), Ok(SERVING));
        assert_eq!(response_status(&[0, 0, 0, 0, 0]), Ok(0));
        assert!(response_status(&[1, 0, 0, 0, 0]).is_err());
    }

    /// A real HTTP/2 server on loopback answering health checks: SERVING
    /// for service "", NOT_SERVING for "down", a gRPC error otherwise.
    async fn health_server() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let frame = |status: u8| Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]);
                        let trailers = |code: &str| {
                            let mut t = http::HeaderMap::new();
                            t.insert(
                                "grpc-status",
                                http::HeaderValue::from_str(code).expect("value"),
                            );
                            t
                        };
                        let (data, code) = match &body[5..] {
                            [] => (frame(1), "0"),
                            [.., b'd', b'o', b'w', b'n'] => (frame(2), "0"),
                            _ => (Bytes::new(), "5"),
                        };
                        let b = http_body_util::StreamBody::new(futures::stream::iter(vec![
                            Ok::<_, Infallible>(hyper::body::Frame::data(data)),
                            Ok(hyper::body::Frame::trailers(trailers(code))),
                        ]));
                        Ok::<_, Infallible>(http::Response::new(b))
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc),
                );
            }
        });
        port
    }

    #[tokio::test]
    async fn only_serving_passes() {
        let port = health_server().await;
        assert_eq!(check(None, "127.0.0.1", port, "").await, Ok(()));
        let down = check(None, "127.0.0.1", port, "down").await;
        assert!(
            matches!(&down, Err(e) if e.contains("NOT_SERVING")),
            "{down:?}"
        );
        let missing = check(None, "127.0.0.1", port, "other").await;
        assert!(
            matches!(&missing, Err(e) if e.contains("status 5")),
            "{missing:?}"
        );
        let closed = check(None, "127.0.0.1", 1, "").await;
        assert!(
            matches!(&closed, Err(e) if e.contains("dial tcp")),
            "{closed:?}"
        );
    }
}
