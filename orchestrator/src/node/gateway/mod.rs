//! The node gateway: HTTP traffic for Services. It listens on every
//! NodePort, picks one of the Service's ready endpoints round robin, and
//! hands the request to the pod in-process when the pod runs here or to
//! the gateway of the node that runs it. Guests' outbound requests to
//! Service names take the same path (`outbound.rs`).

pub mod ingress;
pub mod listen;
pub mod metrics;
pub mod outbound;
pub mod table;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderValue, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use shoal_runtime::http::{text_response, Body, BoxError, HttpService};
use tracing::{debug, warn};

use metrics::{GatewayMetrics, Subject};
use table::{Table, Target};

/// Header a gateway sets when it forwards a request to a peer: the pod
/// (`namespace/name`) that should take it.
pub const TARGET_POD_HEADER: &str = "x-shoal-target-pod";
/// Header a peer sets on a 503 when the pod did not take the request, so
/// the sender may try another endpoint.
const TURNED_AWAY_HEADER: &str = "x-shoal-turned-away";

pub struct Gateway {
    pub node: String,
    pub table: Table,
    /// HTTP pods running on this node, by (namespace, name).
    local: Mutex<HashMap<(String, String), Arc<dyn HttpService>>>,
    next: AtomicUsize,
    peers: Client<HttpConnector, Body>,
    /// When each routing problem was last logged, so a broken Ingress does
    /// not log once per request.
    reported: Mutex<HashMap<String, Instant>>,
    pub metrics: GatewayMetrics,
    /// Requests this gateway has outstanding at each pod, for
    /// least-requests balancing.
    sent: Mutex<HashMap<(String, String), usize>>,
}

impl Gateway {
    pub fn new(node: String, table: Table, metrics: GatewayMetrics) -> Gateway {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Gateway {
            node,
            table,
            local: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
            reported: Mutex::new(HashMap::new()),
            metrics,
            sent: Mutex::new(HashMap::new()),
            peers: Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        }
    }

    /// A pod on this node now serves HTTP.
    pub fn register(&self, namespace: &str, pod: &str, svc: Arc<dyn HttpService>) {
        if let Ok(mut m) = self.local.lock() {
            m.insert((namespace.to_string(), pod.to_string()), svc);
        }
    }

    /// The pod stopped serving (only if `svc` is still the one registered:
    /// a restarted container registers its successor first).
    pub fn unregister(&self, namespace: &str, pod: &str, svc: &Arc<dyn HttpService>) {
        if let Ok(mut m) = self.local.lock() {
            let key = (namespace.to_string(), pod.to_string());
            if m.get(&key).is_some_and(|cur| Arc::ptr_eq(cur, svc)) {
                m.remove(&key);
                self.metrics.forget_pod(namespace, pod);
            }
        }
    }

    /// The HTTP component a pod on this node serves, if any.
    pub fn serving(&self, namespace: &str, pod: &str) -> Option<Arc<dyn HttpService>> {
        self.local(namespace, pod)
    }

    fn local(&self, namespace: &str, pod: &str) -> Option<Arc<dyn HttpService>> {
        self.local
            .lock()
            .ok()?
            .get(&(namespace.to_string(), pod.to_string()))
            .cloned()
    }

    /// Sends a request to one of the Service port's endpoints.
    pub async fn to_service(
        &self,
        svc: &Service,
        port: &ServicePort,
        req: http::Request<Body>,
    ) -> http::Response<Body> {
        let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        let subject = Subject::Service(ns, name);
        self.metrics.started(subject);
        let started = Instant::now();
        let resp = self.route(svc, ns, name, port, req).await;
        self.metrics
            .finished(subject, resp.status().as_u16(), started.elapsed());
        resp
    }

    async fn route(
        &self,
        svc: &Service,
        ns: &str,
        name: &str,
        port: &ServicePort,
        req: http::Request<Body>,
    ) -> http::Response<Body> {
        let targets = self.table.targets(svc, port);
        if targets.is_empty() {
            return text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("service {ns}/{name} has no ready endpoints"),
            );
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        // Counts read under the lock, not copied: this runs per request.
        let order = match (least_requests(svc), self.sent.lock()) {
            (true, Ok(counts)) => by_least_requests(&targets, start, |t| {
                counts
                    .get(&(t.namespace.clone(), t.pod.clone()))
                    .copied()
                    .unwrap_or(0)
            }),
            _ => (0..targets.len())
                .map(|i| (start + i) % targets.len())
                .collect(),
        };
        // A request without a body can be re-sent when an endpoint turns
        // it away; one with a body goes to one endpoint only once it left.
        let replay = replayable(&req);
        let mut pending = Some(req);
        for i in order {
            let t = &targets[i];
            let req = match pending.take() {
                Some(r) => r,
                None => match &replay {
                    Some(parts) => rebuild(parts),
                    None => break,
                },
            };
            let _sent = Sent::new(&self.sent, t);
            match self.to_pod(t, req).await {
                Ok(resp) => return resp,
                Err(back) => pending = back,
            }
        }
        text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no endpoint of service {ns}/{name} could take the request"),
        )
    }

    /// One attempt at one endpoint. `Err` when it did not take the
    /// request, with the request if it is still unsent.
    async fn to_pod(
        &self,
        t: &Target,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, Option<http::Request<Body>>> {
        if t.node == self.node {
            let Some(svc) = self.local(&t.namespace, &t.pod) else {
                debug!(pod = %t.pod, "endpoint not serving here (yet or any more)");
                return Err(Some(req));
            };
            return self.serve_local(&t.namespace, &t.pod, &svc, req).await;
        }
        let Some(peer) = self.table.gateway_of(&t.node) else {
            return Err(Some(req));
        };
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let Ok(uri) = format!("http://{peer}{path}").parse::<http::Uri>() else {
            return Err(None);
        };
        if parts.headers.get(http::header::HOST).is_none() {
            if let Some(a) = parts.uri.authority() {
                if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                    parts.headers.insert(http::header::HOST, v);
                }
            }
        }
        parts.uri = uri;
        if let Ok(v) = HeaderValue::from_str(&format!("{}/{}", t.namespace, t.pod)) {
            parts.headers.insert(TARGET_POD_HEADER, v);
        }
        match self
            .peers
            .request(http::Request::from_parts(parts, body))
            .await
        {
            Ok(resp) if resp.headers().contains_key(TURNED_AWAY_HEADER) => Err(None),
            Ok(resp) => Ok(resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync())),
            Err(e) => {
                debug!(peer = %peer, error = %e, "forwarding to a peer gateway failed");
                Err(None)
            }
        }
    }

    /// A request arriving on the Ingress port, routed by host and path.
    pub async fn from_ingress(&self, req: http::Request<Body>) -> http::Response<Body> {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or_default();
        // The port, if any, is not part of the rule's host.
        let host = match host.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
        .to_ascii_lowercase();
        let path = req.uri().path().to_string();
        let roll = rand::random_range(0..100u32);
        let Some(route) = ingress::route(&self.table.ingresses.list(), &host, &path, roll) else {
            return text_response(
                StatusCode::NOT_FOUND,
                format!("no ingress rule for host {host:?} and path {path:?}"),
            );
        };
        let backend = self.table.service(&route.namespace, &route.service);
        let port = backend.as_ref().and_then(|svc| {
            svc.spec
                .as_ref()?
                .ports
                .iter()
                .flatten()
                .find(|p| {
                    route.port_number == Some(p.port)
                        || (route.port_number.is_none() && p.name == route.port_name)
                })
                .cloned()
        });
        match (backend, port) {
            (Some(svc), Some(port)) => self.to_service(&svc, &port, req).await,
            (svc, _) => {
                let what = if svc.is_none() {
                    format!(
                        "ingress backend service {}/{} does not exist",
                        route.namespace, route.service
                    )
                } else {
                    format!(
                        "ingress backend service {}/{} has no port {}",
                        route.namespace,
                        route.service,
                        route.port_number.map_or_else(
                            || route.port_name.clone().unwrap_or_default(),
                            |n| n.to_string()
                        )
                    )
                };
                self.report(&what);
                text_response(StatusCode::SERVICE_UNAVAILABLE, what)
            }
        }
    }

    /// Logs a routing problem at most once a minute.
    fn report(&self, what: &str) {
        let Ok(mut seen) = self.reported.lock() else {
            return;
        };
        let now = Instant::now();
        if seen
            .get(what)
            .is_none_or(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            warn!(node = %self.node, "{what}");
            seen.insert(what.to_string(), now);
        }
    }

    /// A peer's forwarded request for a pod here.
    pub async fn from_peer(&self, req: http::Request<Body>) -> http::Response<Body> {
        let target = req
            .headers()
            .get(TARGET_POD_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once('/'))
            .map(|(ns, pod)| (ns.to_string(), pod.to_string()));
        let Some((ns, pod)) = target else {
            return text_response(
                StatusCode::BAD_REQUEST,
                format!("missing {TARGET_POD_HEADER} header"),
            );
        };
        let turned_away = || {
            let mut r = text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "pod {ns}/{pod} is not taking requests on node {}",
                    self.node
                ),
            );
            r.headers_mut()
                .insert(TURNED_AWAY_HEADER, HeaderValue::from_static("1"));
            r
        };
        let Some(svc) = self.local(&ns, &pod) else {
            return turned_away();
        };
        let (mut parts, body) = req.into_parts();
        parts.headers.remove(TARGET_POD_HEADER);
        match self
            .serve_local(&ns, &pod, &svc, http::Request::from_parts(parts, body))
            .await
        {
            Ok(resp) => resp,
            Err(_) => turned_away(),
        }
    }

    /// Hands a request to a pod on this node, counting it in the pod's
    /// metrics if the pod takes it.
    async fn serve_local(
        &self,
        namespace: &str,
        pod: &str,
        svc: &Arc<dyn HttpService>,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, Option<http::Request<Body>>> {
        let subject = Subject::Pod(namespace, pod);
        self.metrics.started(subject);
        let started = Instant::now();
        match svc.serve(req).await {
            Ok(resp) => {
                self.metrics
                    .finished(subject, resp.status().as_u16(), started.elapsed());
                Ok(resp)
            }
            Err(req) => {
                // Not taken: not a request of this pod's.
                self.metrics.not_taken(subject);
                Err(Some(req))
            }
        }
    }
}

/// Method, URI and headers of a request whose body is known to be empty.
struct Replay {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
}

fn replayable(req: &http::Request<Body>) -> Option<Replay> {
    (http_body::Body::size_hint(req.body()).exact() == Some(0)).then(|| Replay {
        method: req.method().clone(),
        uri: req.uri().clone(),
        headers: req.headers().clone(),
    })
}

fn rebuild(r: &Replay) -> http::Request<Body> {
    let mut req = http::Request::new(shoal_runtime::http::full(bytes::Bytes::new()));
    *req.method_mut() = r.method.clone();
    *req.uri_mut() = r.uri.clone();
    *req.headers_mut() = r.headers.clone();
    req
}

/// Service annotation choosing how the gateway balances: `round-robin`
/// (the default) or `least-requests`.
pub const LOAD_BALANCING_ANNOTATION: &str = "shoal.dev/load-balancing";

fn least_requests(svc: &Service) -> bool {
    svc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LOAD_BALANCING_ANNOTATION))
        .is_some_and(|v| v == "least-requests")
}

/// Target indices, fewest outstanding requests first; among equals in
/// round-robin order from `start`.
fn by_least_requests(
    targets: &[Target],
    start: usize,
    outstanding: impl Fn(&Target) -> usize,
) -> Vec<usize> {
    let n = targets.len();
    let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
    order.sort_by_key(|i| outstanding(&targets[*i]));
    order
}

/// Counts one request outstanding at a pod while it lives.
struct Sent<'a> {
    map: &'a Mutex<HashMap<(String, String), usize>>,
    key: (String, String),
}

impl<'a> Sent<'a> {
    fn new(map: &'a Mutex<HashMap<(String, String), usize>>, t: &Target) -> Sent<'a> {
        let key = (t.namespace.clone(), t.pod.clone());
        if let Ok(mut m) = map.lock() {
            *m.entry(key.clone()).or_default() += 1;
        }
        Sent { map, key }
    }
}

impl Drop for Sent<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.lock() {
            if let Some(n) = m.get_mut(&self.key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(pod: &str) -> Target {
        Target {
            namespace: "ns".into(),
            pod: pod.into(),
            node: "n".into(),
            port: 80,
        }
    }

    #[test]
    fn least_requests_first_then_round_robin() {
        let targets = vec![t("a"), t("b"), t("c")];
        let busy = |x: &Target| if x.pod == "a" { 5 } else { 1 };
        // b and c tie at 1: round robin from start 2 puts c before b.
        assert_eq!(by_least_requests(&targets, 2, busy), vec![2, 1, 0]);
        assert_eq!(by_least_requests(&targets, 1, busy), vec![1, 2, 0]);
    }
}
