//! `kubectl port-forward` on the node (kubelet's `/portForward/{ns}/{pod}`).
//!
//! kubectl speaks `portforward.k8s.io` over SPDY/3.1: either inside a
//! WebSocket (subprotocol `SPDY/3.1+portforward.k8s.io`, what kubectl
//! tries first since 1.31) or on a connection upgraded to `SPDY/3.1`
//! (its fallback). Each local connection opens two streams with the same
//! `requestID`: an error stream, which the node writes a message to if the
//! connection fails, and a data stream carrying the bytes.
//!
//! Where the bytes go depends on the pod: a `wasi:http` component is served
//! HTTP/1.1 on the stream itself, a fresh instance per request as through
//! its Services; a runc container is dialled at its pod IP.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures::{SinkExt, Stream, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use shoal_runtime::http::{text_response, BoxError, HttpService};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::debug;

use super::spdy::{Decoder, Encoder, Frame, CANCEL, PROTOCOL_ERROR};

/// The WebSocket subprotocol kubectl asks for.
pub const WS_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The `X-Stream-Protocol-Version` of a plain SPDY upgrade.
pub const STREAM_PROTOCOL: &str = "portforward.k8s.io";

/// Bytes per data frame from the pod; kubectl reads in 32 KiB pieces too.
const CHUNK: usize = 32 << 10;
/// Connections a session may have half-open or sending before more
/// streams are refused.
const MAX_STREAMS: usize = 4096;
/// How long a runc container's port may take to accept.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// What a forwarded connection reaches.
pub enum Listener {
    /// A `wasi:http` component, served on the stream.
    Http(Arc<dyn HttpService>),
    /// A TCP port, already connected.
    Tcp(TcpStream),
}

/// The pod a session forwards to, as the node saw it when it began.
pub struct PodPorts {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The pod's `wasi:http` component, when it runs one here.
    pub http: Option<Arc<dyn HttpService>>,
    /// The container ports the pod declares.
    pub declared: Vec<u16>,
    /// Where a container (not a Wasm guest) listens: its pod IP.
    pub dial: Option<IpAddr>,
}

impl PodPorts {
    /// `containers`: the pod runs containers (runc), not Wasm guests.
    pub fn of(pod: &Pod, http: Option<Arc<dyn HttpService>>, containers: bool) -> PodPorts {
        let spec = pod.spec.clone().unwrap_or_default();
        let declared = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| u16::try_from(p.container_port).ok())
            .collect();
        let dial = containers
            .then(|| pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok())
            .flatten();
        PodPorts {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            // A container's gateway entry relays HTTP only; its port is
            // dialled instead, whatever it speaks.
            http: http.filter(|_| !containers),
            declared,
            dial,
        }
    }

    async fn connect(&self, port: u16) -> Result<Listener, String> {
        if let Some(svc) = &self.http {
            if !self.declared.is_empty() && !self.declared.contains(&port) {
                return Err(format!(
                    "its wasi:http component serves the pod's declared container ports ({}), not {port}",
                    self.declared
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            return Ok(Listener::Http(svc.clone()));
        }
        let Some(ip) = self.dial else {
            return Err(
                "the pod runs a Wasm guest that listens on no port (wasi:http components and runc containers can be forwarded to)"
                    .into(),
            );
        };
        match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect((ip, port))).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(Listener::Tcp(s))
            }
            Ok(Err(e)) => Err(format!("dial tcp {ip}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {ip}:{port}: timed out")),
        }
    }
}

/// Runs a session over a WebSocket tunnel: each binary message is a run
/// of SPDY bytes.
pub async fn over_websocket(socket: WebSocket, pod: Arc<PodPorts>) {
    let (mut sink, stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if sink.send(Message::Binary(frame.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let incoming = Box::pin(stream.filter_map(|m| async move {
        match m {
            Ok(Message::Binary(b)) => Some(Ok(b.to_vec())),
            Ok(Message::Close(_)) => Some(Err(())),
            Ok(_) => None,
            Err(_) => Some(Err(())),
        }
    }));
    session(incoming, out_tx, pod).await;
    let _ = writer.await;
}

/// Runs a session on a connection upgraded to `SPDY/3.1`.
pub async fn over_upgrade<I>(io: I, pod: Arc<PodPorts>)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (rd, mut wr) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if wr.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let incoming = read_chunks(rd);
    session(incoming, out_tx, pod).await;
    let _ = writer.await;
}

/// The bytes `rd` yields, as a stream of chunks ending at EOF.
fn read_chunks<R: AsyncRead + Unpin + Send + 'static>(
    rd: R,
) -> impl Stream<Item = Result<Vec<u8>, ()>> + Unpin + Send {
    Box::pin(futures::stream::unfold(rd, |mut rd| async move {
        let mut buf = vec![0u8; CHUNK];
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), rd))
            }
        }
    }))
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Error,
    Data,
}

/// The streams of one forwarded connection, as they arrive.
#[derive(Default)]
struct Pair {
    port: u16,
    error: Option<u32>,
    data: Option<u32>,
}

async fn session<S>(mut incoming: S, out: mpsc::Sender<Vec<u8>>, pod: Arc<PodPorts>)
where
    S: Stream<Item = Result<Vec<u8>, ()>> + Unpin,
{
    let mut decoder = Decoder::default();
    let mut encoder = Encoder::default();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // The data stream of each forwarded connection, towards the pod.
    let mut to_pod: HashMap<u32, mpsc::Sender<Option<Vec<u8>>>> = HashMap::new();
    'read: while let Some(Ok(chunk)) = incoming.next().await {
        decoder.push(&chunk);
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    debug!(pod = %pod.name, namespace = %pod.namespace, error = %e, "port-forward: bad SPDY; closing");
                    break 'read;
                }
            };
            match frame {
                Frame::SynStream {
                    stream, headers, ..
                } => {
                    // Streams not yet paired, and connections still sending.
                    let open = pairs.len() + to_pod.len();
                    match opened(&headers) {
                        Ok((kind, port, request)) if open < MAX_STREAMS => {
                            if out.send(encoder.syn_reply(stream, false)).await.is_err() {
                                break 'read;
                            }
                            let pair = pairs.entry(request.clone()).or_default();
                            pair.port = port;
                            match kind {
                                Kind::Error => pair.error = Some(stream),
                                Kind::Data => pair.data = Some(stream),
                            }
                            if let Pair {
                                port,
                                error: Some(error),
                                data: Some(data),
                            } = *pair
                            {
                                pairs.remove(&request);
                                let (tx, rx) = mpsc::channel(16);
                                to_pod.insert(data, tx);
                                tokio::spawn(forward(
                                    pod.clone(),
                                    port,
                                    error,
                                    data,
                                    rx,
                                    out.clone(),
                                ));
                            }
                        }
                        Ok(_) | Err(_) => {
                            debug!(pod = %pod.name, ?headers, "port-forward: stream refused");
                            if out
                                .send(Encoder::rst_stream(stream, PROTOCOL_ERROR))
                                .await
                                .is_err()
                            {
                                break 'read;
                            }
                        }
                    }
                }
                Frame::Data { stream, fin, data } => {
                    if let Some(tx) = to_pod.get(&stream) {
                        if !data.is_empty() && tx.send(Some(data)).await.is_err() {
                            to_pod.remove(&stream);
                        } else if fin {
                            // Nothing more comes on it: the pod's side
                            // hears the end, the session forgets it.
                            let _ = tx.send(None).await;
                            to_pod.remove(&stream);
                        }
                    }
                }
                Frame::RstStream { stream, .. } => {
                    // Dropping the sender ends that connection.
                    to_pod.remove(&stream);
                }
                Frame::Ping(id) => {
                    if out.send(Encoder::ping(id)).await.is_err() {
                        break 'read;
                    }
                }
                Frame::GoAway => break 'read,
                Frame::SynReply { .. } | Frame::Headers { .. } | Frame::Ignored => {}
            }
        }
    }
}

/// The kind, port and request of a stream kubectl opened.
fn opened(headers: &BTreeMap<String, String>) -> Result<(Kind, u16, String), String> {
    let kind = match headers.get("streamtype").map(String::as_str) {
        Some("error") => Kind::Error,
        Some("data") => Kind::Data,
        other => return Err(format!("unknown streamType {other:?}")),
    };
    let port = headers
        .get("port")
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("invalid port {:?}", headers.get("port")))?;
    // Clients before requestID paired streams by port alone.
    let request = headers
        .get("requestid")
        .cloned()
        .unwrap_or_else(|| format!("port-{port}"));
    Ok((kind, port, request))
}

/// One forwarded connection: dial the pod's port, then copy both ways.
/// The error stream ends last, as kubectl waits on it before closing the
/// local connection.
async fn forward(
    pod: Arc<PodPorts>,
    port: u16,
    error: u32,
    data: u32,
    from_client: mpsc::Receiver<Option<Vec<u8>>>,
    out: mpsc::Sender<Vec<u8>>,
) {
    let result = match pod.connect(port).await {
        Ok(Listener::Tcp(s)) => relay(s, data, from_client, &out).await,
        Ok(Listener::Http(svc)) => {
            let (ours, theirs) = tokio::io::duplex(CHUNK * 2);
            tokio::spawn(serve_http(theirs, svc));
            relay(ours, data, from_client, &out).await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        let message = format!(
            "error forwarding port {port} to pod {}/{}, uid {}: {e}",
            pod.namespace, pod.name, pod.uid
        );
        debug!(%message, "port-forward");
        let _ = out
            .send(Encoder::data(error, false, message.as_bytes()))
            .await;
        let _ = out.send(Encoder::data(data, true, b"")).await;
    }
    let _ = out.send(Encoder::data(error, true, b"")).await;
}

/// Copies between `io` and the data stream until both directions end.
async fn relay<I>(
    io: I,
    data: u32,
    mut from_client: mpsc::Receiver<Option<Vec<u8>>>,
    out: &mpsc::Sender<Vec<u8>>,
) -> Result<(), String>
where
    I: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let inbound = async move {
        while let Some(msg) = from_client.recv().await {
            match msg {
                Some(bytes) => {
                    if wr.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                None => break,
            }
        }
        // The client is done sending (FIN), or reset the stream.
        let _ = wr.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => {
                    let _ = out.send(Encoder::data(data, true, b"")).await;
                    return Ok(());
                }
                Ok(n) => {
                    if out
                        .send(Encoder::data(data, false, &buf[..n]))
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                }
                Err(e) => {
                    let _ = out.send(Encoder::rst_stream(data, CANCEL)).await;
                    return Err(format!("reading from the pod: {e}"));
                }
            }
        }
    };
    let (_, result) = tokio::join!(inbound, outbound);
    result
}

/// Serves HTTP/1.1 from the pod's component on one end of a pipe.
async fn serve_http(io: tokio::io::DuplexStream, svc: Arc<dyn HttpService>) {
    let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let svc = svc.clone();
        async move {
            let req = req.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync());
            let resp = match svc.serve(req).await {
                Ok(r) => r,
                Err(_) => text_response(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    "the pod is not taking requests (draining, or at its concurrency limit)",
                ),
            };
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .await
    {
        debug!(error = %e, "port-forward HTTP connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_named_by_type_port_and_request() {
        let h = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            opened(&h(&[
                ("streamtype", "data"),
                ("port", "80"),
                ("requestid", "3")
            ])),
            Ok((Kind::Data, 80, "3".to_string()))
        );
        assert_eq!(
            opened(&h(&[("streamtype", "error"), ("port", "8080")])),
            Ok((Kind::Error, 8080, "port-8080".to_string()))
        );
        assert!(opened(&h(&[("streamtype", "data"), ("port", "0")])).is_err());
        assert!(opened(&h(&[("streamtype", "resize"), ("port", "80")])).is_err());
    }
}
