//! What the API server forwards to node agents, as it does to kubelets:
//! `pods/log` and `nodes/{name}/proxy/...`. The node API speaks plain HTTP
//! on the node's address and trusts only the node token.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

use super::error::{ApiError, ApiResult};
use super::ApiState;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct NodeClient {
    client: Client<HttpConnector, Body>,
    token: String,
}

impl NodeClient {
    pub fn new(token: String) -> NodeClient {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        NodeClient {
            client: Client::builder(TokioExecutor::new()).build(http),
            token,
        }
    }

    /// GETs `path` from a node's API and decodes its JSON answer, within
    /// `timeout`.
    pub async fn get_json(
        &self,
        node: &str,
        base: &str,
        path: &str,
        timeout: Duration,
    ) -> ApiResult<Value> {
        let unavailable = |why: String| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!("node {node:?} at {base}: {why}"),
            )
        };
        let fetch = async {
            let resp = self
                .forward(node, base, Method::GET, path, Body::empty())
                .await?;
            if !resp.status().is_success() {
                return Err(unavailable(format!("{path} answered {}", resp.status())));
            }
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unavailable(format!("reading {path}: {e}")))?
                .to_bytes();
            serde_json::from_slice(&bytes)
                .map_err(|e| unavailable(format!("{path} is not JSON: {e}")))
        };
        tokio::time::timeout(timeout, fetch)
            .await
            .map_err(|_| unavailable(format!("no answer to {path} within {timeout:?}")))?
    }

    async fn forward(
        &self,
        node: &str,
        base: &str,
        method: Method,
        path_and_query: &str,
        body: Body,
    ) -> ApiResult<Response> {
        let resp = self
            .send(node, base, method, path_and_query, &HeaderMap::new(), body)
            .await?;
        let (parts, incoming) = resp.into_parts();
        let body = Body::new(incoming.map_err(axum::Error::new));
        Ok(Response::from_parts(parts, body))
    }

    /// One request to a node's API with the node token, and `headers`.
    async fn send(
        &self,
        node: &str,
        base: &str,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> ApiResult<http::Response<hyper::body::Incoming>> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{base}{path_and_query}"))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req
            .body(body)
            .map_err(|e| ApiError::internal(format!("building the request to node {node}: {e}")))?;
        self.client.request(req).await.map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!("node {node:?} at {base} is unreachable: {}", chain(&e)),
            )
        })
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

async fn stored(st: &ApiState, plural: &str, ns: Option<&str>, name: &str) -> ApiResult<Value> {
    let res = st
        .registry
        .get("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not registered")))?;
    let key = res.key(ns, Some(name));
    let obj = st
        .store
        .get(&key)
        .await
        .map_err(|e| ApiError::from_store(e, plural, name))?
        .ok_or_else(|| ApiError::not_found(plural, name))?;
    Ok((*obj.value).clone())
}

/// `host:port` of a node's API, from its status as the node reported it.
async fn node_endpoint(st: &ApiState, node: &str) -> ApiResult<String> {
    let n = stored(st, "nodes", None, node).await?;
    endpoint_of(node, &n)
}

/// `host:port` of the API of the node object `n` (named `node`).
pub fn endpoint_of(node: &str, n: &Value) -> ApiResult<String> {
    let ip = n
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|x| x.get("type").and_then(Value::as_str) == Some("InternalIP"))
        })
        .and_then(|x| x.get("address"))
        .and_then(Value::as_str);
    let port = n
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64);
    match (ip, port) {
        (Some(ip), Some(port)) if port > 0 => Ok(if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        }),
        _ => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("node {node:?} has not reported an address and port for its API"),
        )),
    }
}

/// The container a `log` or `exec` request names (`container=`), or the
/// pod's only one; and the node the pod runs on.
fn target(pod: &Value, name: &str, pairs: &[(String, String)]) -> ApiResult<(String, String)> {
    let names = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
            .collect()
    };
    let app = names("containers");
    let init = names("initContainers");
    let container = match pairs
        .iter()
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.clone())
    {
        Some(c) if app.contains(&c) || init.contains(&c) => c,
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )))
        }
        None if app.len() == 1 => app[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                app.join(" ")
            )))
        }
    };
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: the pod is not scheduled yet"
            ))
        })?
        .to_string();
    Ok((container, node))
}

/// The query without `container=`, for the node's path that names it.
fn rest_of(pairs: Vec<(String, String)>) -> String {
    let rest: Vec<(String, String)> = pairs
        .into_iter()
        .filter(|(k, _)| k != "container")
        .collect();
    serde_urlencoded::to_string(&rest).unwrap_or_default()
}

fn query_pairs(query: Option<&str>) -> ApiResult<Vec<(String, String)>> {
    serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))
}

/// `GET /api/v1/namespaces/{ns}/pods/{name}/log`
pub async fn pod_log(
    st: &ApiState,
    ns: &str,
    name: &str,
    query: Option<&str>,
) -> ApiResult<Response> {
    let pod = stored(st, "pods", Some(ns), name).await?;
    let pairs = query_pairs(query)?;
    let (container, node) = target(&pod, name, &pairs)?;
    let base = node_endpoint(st, &node).await?;
    let path = format!("/containerLogs/{ns}/{name}/{container}?{}", rest_of(pairs));
    st.nodes
        .forward(&node, &base, Method::GET, &path, Body::empty())
        .await
}

/// Headers of a protocol switch, passed both ways unchanged: the node
/// answers the client's WebSocket handshake or SPDY upgrade.
const UPGRADE_HEADERS: [&str; 7] = [
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-accept",
    "x-stream-protocol-version",
];

/// `GET|POST /api/v1/namespaces/{ns}/pods/{name}/exec` (`what` "exec")
/// and `.../attach` ("attach"): the WebSocket is handed to the node's
/// `/exec/...` or `/attach/...`.
#[allow(clippy::too_many_arguments)]
pub async fn pod_exec(
    st: &ApiState,
    what: &'static str,
    ns: &str,
    name: &str,
    query: Option<&str>,
    method: &Method,
    headers: &HeaderMap,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> ApiResult<Response> {
    let pod = stored(st, "pods", Some(ns), name).await?;
    let pairs = query_pairs(query)?;
    let (container, node) = target(&pod, name, &pairs)?;
    let path = format!("/{what}/{ns}/{name}/{container}?{}", rest_of(pairs));
    let switch = Switch {
        what,
        needs: "a connection upgrade to a WebSocket (v5.channel.k8s.io); kubectl does this",
        ns,
        name,
    };
    to_node(st, &node, &path, method, headers, upgrade, switch).await
}

/// `GET|POST /api/v1/namespaces/{ns}/pods/{name}/portforward`: the
/// WebSocket tunnel (or SPDY upgrade) is handed to the node's
/// `/portForward/...`; the ports travel inside, one SPDY stream pair per
/// connection.
pub async fn pod_port_forward(
    st: &ApiState,
    ns: &str,
    name: &str,
    method: &Method,
    headers: &HeaderMap,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> ApiResult<Response> {
    let pod = stored(st, "pods", Some(ns), name).await?;
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(|v| v.as_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "pod {name} is not scheduled to a node yet; it has no ports to forward"
            ))
        })?
        .to_string();
    if pod.pointer("/status/phase").and_then(|v| v.as_str()) != Some("Running") {
        return Err(ApiError::bad_request(format!(
            "unable to upgrade connection: pod {name} is not running"
        )));
    }
    let path = format!("/portForward/{ns}/{name}");
    let switch = Switch {
        what: "port-forward",
        needs: "a WebSocket (SPDY/3.1+portforward.k8s.io) or an upgrade to SPDY/3.1; kubectl port-forward does this",
        ns,
        name,
    };
    to_node(st, &node, &path, method, headers, upgrade, switch).await
}

/// What a protocol switch is for, to name it in answers and logs.
struct Switch<'a> {
    what: &'static str,
    needs: &'static str,
    ns: &'a str,
    name: &'a str,
}

/// Sends the upgrade request to the node, and once both sides have
/// switched protocols relays the bytes as they are, as kube-apiserver's
/// upgrade-aware proxy does for kubelet.
async fn to_node(
    st: &ApiState,
    node: &str,
    path: &str,
    method: &Method,
    headers: &HeaderMap,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    switch: Switch<'_>,
) -> ApiResult<Response> {
    let Some(client_side) = upgrade.filter(|_| headers.contains_key(header::UPGRADE)) else {
        return Err(ApiError::bad_request(format!(
            "{} needs {}",
            switch.what, switch.needs
        )));
    };
    let base = node_endpoint(st, node).await?;
    let mut upgrade_headers = HeaderMap::new();
    for h in UPGRADE_HEADERS {
        for v in headers.get_all(h) {
            upgrade_headers.append(h, v.clone());
        }
    }
    let mut resp = st
        .nodes
        .send(
            node,
            &base,
            method.clone(),
            path,
            &upgrade_headers,
            Body::empty(),
        )
        .await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The node's refusal (a Status naming why) goes back as it is.
        let (parts, incoming) = resp.into_parts();
        return Ok(Response::from_parts(
            parts,
            Body::new(incoming.map_err(axum::Error::new)),
        ));
    }
    let node_side = hyper::upgrade::on(&mut resp);
    let mut answer = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for h in UPGRADE_HEADERS {
        for v in resp.headers().get_all(h) {
            answer = answer.header(h, v);
        }
    }
    let (what, pod_name, ns_name) = (switch.what, switch.name.to_string(), switch.ns.to_string());
    tokio::spawn(async move {
        match (client_side.await, node_side.await) {
            (Ok(c), Ok(n)) => {
                let (mut c, mut n) = (TokioIo::new(c), TokioIo::new(n));
                if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut n).await {
                    tracing::debug!(pod = %pod_name, namespace = %ns_name, error = %e, "{what} relay ended");
                }
            }
            (c, n) => tracing::warn!(
                pod = %pod_name,
                namespace = %ns_name,
                client = ?c.err(),
                node = ?n.err(),
                "{what}: a side did not switch protocols"
            ),
        }
    });
    answer
        .body(Body::empty())
        .map_err(|e| ApiError::internal(format!("answering the {what} upgrade: {e}")))
}

/// `/api/v1/nodes/{name}/proxy/{path}`: any method, passed through.
pub async fn node_proxy(
    st: &ApiState,
    node: &str,
    path: &str,
    query: Option<&str>,
    method: Method,
    body: Body,
) -> ApiResult<Response> {
    let base = node_endpoint(st, node).await?;
    let pq = match query {
        Some(q) => format!("/{path}?{q}"),
        None => format!("/{path}"),
    };
    st.nodes.forward(node, &base, method, &pq, body).await
}
