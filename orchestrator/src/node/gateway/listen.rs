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
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::ingress::{self, Certs};
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
    /// The Ingress port (plain or TLS): routed by host and path.
    Ingress,
}

/// Serves connections from `listener` until the task is aborted; with
/// `tls`, each connection is a TLS handshake first.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    role: Role,
    tls: Option<TlsAcceptor>,
) {
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
        let (gateway, role, tls) = (gateway.clone(), role.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => serve_conn(TokioIo::new(stream), gateway, role, peer).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_conn(TokioIo::new(s), gateway, role, peer).await,
                        Ok(Err(e)) => debug!(client = %peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(client = %peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_conn<I>(io: I, gateway: Arc<Gateway>, role: Role, peer: SocketAddr)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
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
        .serve_connection(io, service);
    if let Err(e) = conn.await {
        debug!(client = %peer, error = %e, "gateway connection ended with an error");
    }
}

async fn handle(gateway: &Gateway, role: &Role, req: http::Request<Body>) -> http::Response<Body> {
    match role {
        Role::Peer => gateway.from_peer(req).await,
        Role::Ingress => gateway.from_ingress(req).await,
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
pub async fn follow_node_ports(gateway: Arc<Gateway>, address: IpAddr, cluster_ips: bool) {
    let mut open: HashMap<SocketAddr, (String, JoinHandle<()>)> = HashMap::new();
    let wake = Arc::new(tokio::sync::Notify::new());
    let w = wake.clone();
    gateway.table.services.on_change(move |_, _| w.notify_one());
    gateway.table.services.wait_synced().await;
    loop {
        let mut failed = false;
        let mut wanted: HashMap<SocketAddr, Role> = HashMap::new();
        for (svc, p, at) in gateway.table.listeners(address, cluster_ips) {
            wanted.insert(
                at,
                Role::NodePort {
                    namespace: svc.metadata.namespace.clone().unwrap_or_default(),
                    service: svc.metadata.name.clone().unwrap_or_default(),
                    port: p.port,
                },
            );
        }
        open.retain(|at, (what, task)| {
            let keep = wanted.get(at).is_some_and(|r| describe(r) == *what);
            if !keep {
                info!(%at, "closing service port");
                task.abort();
            }
            keep
        });
        for (at, role) in wanted {
            if open.contains_key(&at) {
                continue;
            }
            match bind(at, at.ip() != address) {
                Ok(l) => {
                    info!(%at, target = %describe(&role), "serving service port");
                    let what = describe(&role);
                    let task = tokio::spawn(serve(l, gateway.clone(), role, None));
                    open.insert(at, (what, task));
                }
                Err(e) => {
                    failed = true;
                    warn!(%at, error = %e, "cannot open service port; retrying");
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
        Role::Ingress => "ingress".into(),
    }
}

/// Opens the Ingress ports once the first Ingress of class `shoal` exists
/// (a node with no Ingress holds no port 8080), plain HTTP on `http_port`
/// and TLS on `https_port` with certificates from the Ingresses' Secrets.
pub async fn follow_ingresses(
    gateway: Arc<Gateway>,
    certs: Arc<Certs>,
    address: IpAddr,
    http_port: u16,
    https_port: u16,
) {
    let wake = Arc::new(tokio::sync::Notify::new());
    let w = wake.clone();
    gateway
        .table
        .ingresses
        .on_change(move |_, _| w.notify_one());
    gateway.table.ingresses.wait_synced().await;
    let mut tls_config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(certs);
    tls_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls_config));
    let mut open: [Option<JoinHandle<()>>; 2] = [None, None];
    loop {
        let wanted = gateway
            .table
            .ingresses
            .list()
            .iter()
            .any(|i| ingress::ours(i));
        let mut failed = false;
        for (slot, port, tls) in [
            (0, http_port, None),
            (1, https_port, Some(acceptor.clone())),
        ] {
            if !wanted || open[slot].is_some() || port == 0 {
                continue;
            }
            match TcpListener::bind(SocketAddr::new(address, port)).await {
                Ok(l) => {
                    info!(port, tls = tls.is_some(), "serving ingress");
                    open[slot] = Some(tokio::spawn(serve(l, gateway.clone(), Role::Ingress, tls)));
                }
                Err(e) => {
                    failed = true;
                    warn!(port, error = %e, "cannot open the ingress port; retrying");
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

/// Binds a service port. A cluster IP is `shared` (`SO_REUSEPORT`): every
/// node agent on one machine serves the same cluster IPs, and the kernel
/// spreads connections among them.
fn bind(at: SocketAddr, shared: bool) -> std::io::Result<TcpListener> {
    let socket = if at.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if shared {
        socket.set_reuseport(true)?;
    }
    socket.bind(at)?;
    socket.listen(1024)
}

/// Makes every address of `cidr` local to this machine (a `local` route on
/// the loopback device), so the gateway can listen on cluster IPs: the
/// userspace proxy's half of what kube-proxy's first mode did with
/// iptables. Needs CAP_NET_ADMIN.
pub async fn route_cluster_ips(cidr: &str) -> Result<(), String> {
    let out = tokio::process::Command::new("ip")
        .args([
            "route", "replace", "local", cidr, "dev", "lo", "table", "local",
        ])
        .output()
        .await
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}
