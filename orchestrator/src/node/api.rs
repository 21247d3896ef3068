//! The node API (kubelet's port): container logs, stats and metrics. Only
//! the API server talks to it, with the node token; `kubectl logs` and
//! `/api/v1/nodes/{name}/proxy/...` reach it through the API server.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ws::{rejection::WebSocketUpgradeRejection, WebSocketUpgrade};
use axum::extract::{Path, Query, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::logs::ContainerLog;
use super::NodeCtx;

pub async fn serve(listener: TcpListener, ctx: Arc<NodeCtx>) {
    let app = Router::new()
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .route("/exec/{ns}/{pod}/{container}", get(exec).post(exec))
        .route(
            "/portForward/{ns}/{pod}",
            get(port_forward).post(port_forward),
        )
        .route("/attach/{ns}/{pod}/{container}", get(attach).post(attach))
        .route("/stats/summary", get(stats))
        .route("/metrics", get(metrics))
        .route("/pods", get(pods))
        .layer(middleware::from_fn_with_state(ctx.clone(), auth))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(ctx);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "node API stopped");
    }
}

async fn auth(State(ctx): State<Arc<NodeCtx>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if presented.is_some_and(|t| constant_time_eq(t.as_bytes(), ctx.token.as_bytes())) {
        return next.run(req).await;
    }
    status(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "node API: missing or wrong bearer token",
    )
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A Kubernetes `Status` body, so the API server can pass errors through.
fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        Json(
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16()}),
        ),
    )
        .into_response()
}

/// A streaming request's query (`command=…&stdin=true`), in order.
fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, String> {
    serde_urlencoded::from_str(query.unwrap_or("")).map_err(|e| format!("invalid query: {e}"))
}

/// Whether the query turns `name` on (`stdin=true`, `tty=1`).
fn flag(pairs: &[(String, String)], name: &str) -> bool {
    crate::apiserver::request::truthy(
        &pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone()),
    )
}

/// `kubectl attach`: the running container's output from now on, behind
/// a WebSocket speaking the exec protocol (see `attach.rs`).
async fn attach(
    State(ctx): State<Arc<NodeCtx>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let bad = |m: String| status(StatusCode::BAD_REQUEST, "BadRequest", &m);
    let pairs = match query_pairs(query.as_deref()) {
        Ok(p) => p,
        Err(e) => return bad(e),
    };
    let stdin = match (flag(&pairs, "stdin"), ctx.stdins.get(&ns, &pod, &container)) {
        (false, _) => None,
        (true, Some(s)) => Some(s),
        (true, None) => {
            return bad(format!(
                "container {container:?} of pod {ns}/{pod} has no stdin to attach to: it needs stdin: true in its spec, and a Wasm runtime (runc containers start without one); attach without -i to follow its output"
            ))
        }
    };
    let live = ctx
        .pod(&ns, &pod)
        .and_then(|key| ctx.logs.current(&key.uid, &container))
        .filter(|log| !log.is_finished());
    let Some(log) = live else {
        return bad(format!(
            "container {container:?} in pod {ns}/{pod} is not running"
        ));
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return bad(format!(
                "attach needs a WebSocket upgrade speaking {}: {e}",
                super::exec::PROTOCOLS.join(" or ")
            ))
        }
    };
    let tty = flag(&pairs, "tty");
    ws.protocols(super::exec::PROTOCOLS)
        .on_upgrade(move |socket| super::attach::session(socket, log, stdin, tty))
}

/// `kubectl port-forward`: SPDY streams inside a WebSocket, or on a
/// connection upgraded to SPDY/3.1 (see `portforward.rs`).
async fn port_forward(
    State(ctx): State<Arc<NodeCtx>>,
    Path((ns, name)): Path<(String, String)>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    mut req: Request,
) -> Response {
    use super::portforward::{self as pf, PodPorts};
    if ctx.pod(&ns, &name).is_none() {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pod {ns}/{name} does not run on node {}", ctx.name),
        );
    }
    let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(ctx.client.clone(), &ns);
    let pod = match api.get(&name).await {
        Ok(p) => p,
        Err(e) => {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("pod {ns}/{name}: {e}"),
            )
        }
    };
    let class = pod
        .spec
        .as_ref()
        .and_then(|s| s.runtime_class_name.as_deref())
        .unwrap_or(shoal_sdk::RUNTIME_CLASS_WASMTIME);
    let containers = class != shoal_sdk::RUNTIME_CLASS_WASMTIME;
    let target = Arc::new(PodPorts::of(
        &pod,
        ctx.gateway.serving(&ns, &name),
        containers,
    ));
    if let Ok(ws) = ws {
        return ws
            .protocols([pf::WS_PROTOCOL])
            .on_upgrade(move |socket| async move {
                if socket.protocol().and_then(|p| p.to_str().ok()) == Some(pf::WS_PROTOCOL) {
                    pf::over_websocket(socket, target).await;
                }
            });
    }
    let spdy = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("SPDY/3.1"));
    let offered = req
        .headers()
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim() == pf::STREAM_PROTOCOL);
    if !spdy || !offered {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!(
                "port-forward needs a WebSocket speaking {} or an upgrade to SPDY/3.1 with X-Stream-Protocol-Version {}",
                pf::WS_PROTOCOL,
                pf::STREAM_PROTOCOL
            ),
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(io) => pf::over_upgrade(hyper_util::rt::TokioIo::new(io), target).await,
            Err(e) => tracing::debug!(error = %e, "port-forward: the upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1")
        .header("X-Stream-Protocol-Version", pf::STREAM_PROTOCOL)
        .body(Body::empty())
        .unwrap_or_default()
}

/// `kubectl exec`: the command from the query's `command` values, run in
/// the container behind a WebSocket (see `exec.rs`).
async fn exec(
    State(ctx): State<Arc<NodeCtx>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let bad = |m: String| status(StatusCode::BAD_REQUEST, "BadRequest", &m);
    let pairs = match query_pairs(query.as_deref()) {
        Ok(p) => p,
        Err(e) => return bad(e),
    };
    let argv: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if argv.is_empty() {
        return bad("you must specify at least one command for the container".into());
    }
    let flag = |name: &str| flag(&pairs, name);
    let opts = shoal_runtime::exec::ExecOptions {
        stdin: flag("stdin"),
        tty: flag("tty"),
    };
    let target = match ctx.execs.get(&ns, &pod, &container) {
        Ok(e) => e,
        Err(super::exec::Refusal::NotRunning) => {
            return bad(format!(
                "container {container:?} of pod {ns}/{pod} is not running on this node"
            ))
        }
        Err(super::exec::Refusal::NoProcesses) => {
            return bad(format!(
                "container {container:?} of pod {ns}/{pod} is a Wasm sandbox: it runs one guest and has no processes to exec into (runtimeClassName: runc containers do)"
            ))
        }
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return bad(format!(
                "exec needs a WebSocket upgrade speaking {}: {e}",
                super::exec::PROTOCOLS.join(" or ")
            ))
        }
    };
    ws.protocols(super::exec::PROTOCOLS)
        .on_upgrade(move |socket| async move {
            let started = target.exec(&argv, opts).await;
            super::exec::session(socket, argv, started).await;
        })
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogQuery {
    follow: Option<String>,
    previous: Option<String>,
    tail_lines: Option<i64>,
    since_seconds: Option<i64>,
    since_time: Option<String>,
    timestamps: Option<String>,
    limit_bytes: Option<i64>,
}

fn truthy(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true") | Some("1") | Some(""))
}

/// How lines are selected and shown.
struct Render {
    since_nanos: Option<i128>,
    timestamps: bool,
    /// The previous record was partial: this one continues its line.
    continuing: bool,
}

impl Render {
    /// One CRI record as `kubectl logs` shows it; false if filtered out.
    fn line(&mut self, raw: &str, out: &mut Vec<u8>) -> bool {
        let Some(super::logs::Record { ts, full, text, .. }) = super::logs::parse_record(raw)
        else {
            return false;
        };
        if let Some(since) = self.since_nanos {
            if parse_nanos(ts).is_some_and(|t| t < since) {
                return false;
            }
        }
        if self.timestamps && !self.continuing {
            out.extend_from_slice(ts.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(text.as_bytes());
        self.continuing = !full;
        if !self.continuing {
            out.push(b'\n');
        }
        true
    }
}

fn parse_nanos(ts: &str) -> Option<i128> {
    ts.parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .map(|t| t.as_nanosecond())
}

async fn container_logs(
    State(ctx): State<Arc<NodeCtx>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    let Some(key) = ctx.pod(&ns, &pod) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pod {ns}/{pod} is not running on this node"),
        );
    };
    let starts = ctx.logs.starts(&key.uid, &container);
    let previous = truthy(&q.previous);
    let chosen = if previous {
        starts
            .len()
            .checked_sub(2)
            .and_then(|i| starts.get(i))
            .cloned()
    } else {
        // A running container that has written nothing yet has no file:
        // its log is empty, not missing.
        starts.last().cloned().or_else(|| {
            let live = ctx.logs.current(&key.uid, &container)?;
            Some((0, live.path().to_path_buf()))
        })
    };
    let Some((restart, path)) = chosen else {
        let msg = if previous {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            format!(
                "container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
            )
        };
        return status(StatusCode::BAD_REQUEST, "BadRequest", &msg);
    };
    let since_nanos = match (&q.since_time, q.since_seconds) {
        (Some(t), _) => parse_nanos(t),
        (None, Some(s)) => Some(
            k8s_openapi::jiff::Timestamp::now().as_nanosecond() - i128::from(s) * 1_000_000_000,
        ),
        _ => None,
    };
    let mut render = Render {
        since_nanos,
        timestamps: truthy(&q.timestamps),
        continuing: false,
    };
    let mut files = vec![path.with_extension("log.1"), path.clone()];
    files.retain(|f| f.exists());
    let (mut body, offset) = snapshot(&files, &mut render, q.tail_lines);
    let limit = q.limit_bytes.and_then(|l| usize::try_from(l).ok());
    if let Some(l) = limit {
        body.truncate(l);
    }
    let live = ctx
        .logs
        .current(&key.uid, &container)
        .filter(|l| l.path() == path && !l.is_finished());
    match (truthy(&q.follow) && !previous, live) {
        (true, Some(log)) => follow(body, log, path, offset, render, limit),
        _ => {
            tracing::debug!(pod = %pod, container = %container, restart, bytes = body.len(), "serving logs");
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
        }
    }
}

/// Everything logged so far (the last `tail` lines, if asked), and where
/// the current file ended.
fn snapshot(files: &[PathBuf], render: &mut Render, tail: Option<i64>) -> (Vec<u8>, u64) {
    let mut text = String::new();
    let mut offset = 0;
    for f in files {
        if let Ok(mut file) = std::fs::File::open(f) {
            let mut s = String::new();
            let _ = file.read_to_string(&mut s);
            offset = s.len() as u64;
            text.push_str(&s);
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    let skip = match tail {
        Some(t) if t >= 0 => lines.len().saturating_sub(t as usize),
        _ => 0,
    };
    let mut out = Vec::new();
    for l in &lines[skip..] {
        render.line(l, &mut out);
    }
    (out, offset)
}

/// Streams what is there, then new lines as the container writes them,
/// until it ends or the client goes away.
fn follow(
    first: Vec<u8>,
    log: Arc<ContainerLog>,
    path: PathBuf,
    mut offset: u64,
    mut render: Render,
    limit: Option<usize>,
) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut sent = first.len();
        if !first.is_empty() && tx.send(Bytes::from(first)).await.is_err() {
            return;
        }
        let mut carry = String::new();
        loop {
            let notified = log.changed.notified();
            let finished = log.is_finished();
            let fresh = super::logs::read_from(&path, &mut offset);
            if !fresh.is_empty() {
                carry.push_str(&fresh);
                let mut out = Vec::new();
                while let Some(nl) = carry.find('\n') {
                    let line: String = carry.drain(..=nl).collect();
                    render.line(line.trim_end_matches('\n'), &mut out);
                }
                if let Some(l) = limit {
                    out.truncate(l.saturating_sub(sent));
                }
                sent += out.len();
                if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                    return;
                }
                if limit.is_some_and(|l| sent >= l) {
                    return;
                }
                continue;
            }
            if finished {
                return;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Kubelet's Summary API: CPU and memory of the node and of each pod's
/// running containers.
async fn stats(State(ctx): State<Arc<NodeCtx>>) -> Response {
    Json(ctx.usage.summary(&ctx.name)).into_response()
}

async fn metrics(State(ctx): State<Arc<NodeCtx>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ctx.metrics.render(),
    )
        .into_response()
}

async fn pods(State(ctx): State<Arc<NodeCtx>>) -> Response {
    let names: Vec<String> = ctx
        .pods
        .lock()
        .map(|p| {
            p.values()
                .map(|k| format!("{}/{}", k.namespace, k.name))
                .collect()
        })
        .unwrap_or_default();
    Json(json!({"pods": names})).into_response()
}
