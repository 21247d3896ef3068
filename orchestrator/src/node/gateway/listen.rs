//! The gateway's sockets: one listener per NodePort (opened and closed as
//! Services come and go) and the peer port other nodes forward to. HTTP/1
//! with bounds on what a client may make the node hold: header size, time
//! to send the headers, idle keep-alive.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::Gateway;
use shoal_runtime::http::{text_response, Body, BoxError};

/// A client has this long to send its request headers (slowloris).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head (request line plus headers) accepted; hyper
/// answers 431 past it.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// What a listener does with each request.
#[derive(Clone)]
pub enum Role {
    /// A NodePort: the Service port it exposes.
    NodePort {
        namespace: String,
        service: String,
        port: i32,
    },
    /// The peer port: requests forwarded by other nodes' gateways.
    Peer,
}

/// Serves connections from `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, role: Role) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "gateway accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (gateway, role) = (gateway.clone(), role.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let (gateway, role) = (gateway.clone(), role.clone());
                async move {
                    let req = req.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync());
                    Ok::<_, std::convert::Infallible>(handle(&gateway, &role, req).await)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_header_size(MAX_HEAD_BYTES)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(client = %peer, error = %e, "gateway connection ended with an error");
            }
        });
    }
}

async fn handle(gateway: &Gateway, role: &Role, req: http::Request<Body>) -> http::Response<Body> {
    match role {
        Role::Peer => gateway.from_peer(req).await,
        Role::NodePort {
            namespace,
            service,
            port,
        } => {
            // Looked up per request: a Service edited in place (new
            // selector, new target port) applies at once.
            let svc = gateway.table.service(namespace, service);
            let found = svc.as_ref().and_then(|s| {
                s.spec
                    .as_ref()?
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.port == *port)
                    .cloned()
                    .map(|p| (s.clone(), p))
            });
            match found {
                Some((svc, p)) => gateway.to_service(&svc, &p, req).await,
                None => text_response(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    format!("service {namespace}/{service} no longer exposes this port"),
                ),
            }
        }
    }
}

/// Keeps one listener open per NodePort, following Services.
pub async fn follow_node_ports(gateway: Arc<Gateway>, address: IpAddr) {
    let mut open: HashMap<u16, (String, JoinHandle<()>)> = HashMap::new();
    let wake = Arc::new(tokio::sync::Notify::new());
    let w = wake.clone();
    gateway.table.services.on_change(move |_, _| w.notify_one());
    gateway.table.services.wait_synced().await;
    loop {
        let mut failed = false;
        let mut wanted: HashMap<u16, Role> = HashMap::new();
        for (svc, p, node_port) in gateway.table.node_ports() {
            wanted.insert(
                node_port,
                Role::NodePort {
                    namespace: svc.metadata.namespace.clone().unwrap_or_default(),
                    service: svc.metadata.name.clone().unwrap_or_default(),
                    port: p.port,
                },
            );
        }
        open.retain(|port, (what, task)| {
            let keep = wanted.get(port).is_some_and(|r| describe(r) == *what);
            if !keep {
                info!(port, "closing node port");
                task.abort();
            }
            keep
        });
        for (port, role) in wanted {
            if open.contains_key(&port) {
                continue;
            }
            match TcpListener::bind(SocketAddr::new(address, port)).await {
                Ok(l) => {
                    info!(port, target = %describe(&role), "serving node port");
                    let what = describe(&role);
                    let task = tokio::spawn(serve(l, gateway.clone(), role));
                    open.insert(port, (what, task));
                }
                Err(e) => {
                    failed = true;
                    warn!(port, error = %e, "cannot open node port; retrying");
                }
            }
        }
        if failed {
            let _ = tokio::time::timeout(Duration::from_secs(2), wake.notified()).await;
        } else {
            wake.notified().await;
        }
    }
}

fn describe(role: &Role) -> String {
    match role {
        Role::NodePort {
            namespace,
            service,
            port,
        } => format!("{namespace}/{service}:{port}"),
        Role::Peer => "peers".into(),
    }
}
