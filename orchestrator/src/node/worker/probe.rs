//! Startup, readiness and liveness probes of one running container,
//! kubelet's semantics: `initialDelaySeconds`, `periodSeconds`,
//! `timeoutSeconds`, `successThreshold`, `failureThreshold`. A startup probe
//! holds the other two back until it first succeeds, and the container is
//! neither started nor Ready before then. `httpGet` and `tcpSocket` probe
//! a `wasi:http` container through its handler in-process (the port names
//! the pod, which serves every port it declares); any other container is
//! probed over the network at the pod's address. `exec` cannot run inside
//! a Wasm sandbox and always fails, with a message saying so.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use shoal_runtime::exec::Exec;
use shoal_runtime::http::{full, HttpService};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// What a probe round changed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The startup probe succeeded: the container has started, and is
    /// Ready now if it has no readiness probe to pass.
    Started { ready: bool },
    /// The readiness verdict flipped.
    Ready(bool),
    /// The startup or liveness probe failed `failureThreshold` times in a
    /// row; `why` is the last failure.
    Dead { probe: Kind, why: String },
}

/// Which probe gave up on a container, as kubelet names it in Events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Startup,
    Liveness,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
        }
    }
}

struct Schedule {
    probe: Probe,
    next: Instant,
    successes: i32,
    failures: i32,
}

impl Schedule {
    fn new(probe: Probe, started: Instant) -> Schedule {
        let delay = probe.initial_delay_seconds.unwrap_or(0).max(0) as u64;
        Schedule {
            probe,
            next: started + Duration::from_secs(delay),
            successes: 0,
            failures: 0,
        }
    }

    fn period(&self) -> Duration {
        Duration::from_secs(self.probe.period_seconds.unwrap_or(10).max(1) as u64)
    }

    /// One attempt now; the next falls a period later.
    async fn attempt(&mut self, reach: &Reach) -> Result<(), String> {
        let result = check(&self.probe, reach).await;
        self.next = Instant::now() + self.period();
        result
    }

    /// Counts a failure; true once `failureThreshold` failed in a row,
    /// counting afresh from there.
    fn gives_up(&mut self) -> bool {
        self.failures += 1;
        if self.failures >= self.probe.failure_threshold.unwrap_or(3).max(1) {
            self.failures = 0;
            return true;
        }
        false
    }
}

pub(crate) struct Prober {
    /// Dropped once it succeeds: a startup probe runs until then only.
    startup: Option<Schedule>,
    readiness: Option<Schedule>,
    liveness: Option<Schedule>,
    ready: bool,
    reach: Reach,
}

/// How probes and hooks reach a container: a `wasi:http` guest through its
/// handler in-process; a process over TCP at `host` (the pod IP), and by
/// commands its runtime runs beside it (`exec`).
#[derive(Clone, Default)]
pub(crate) struct Reach {
    pub http: Option<Arc<dyn HttpService>>,
    pub host: String,
    pub exec: Option<Arc<dyn Exec>>,
}

impl Reach {
    #[cfg(test)]
    pub(crate) fn handler(svc: Arc<dyn HttpService>) -> Reach {
        Reach {
            http: Some(svc),
            host: "h".into(),
            exec: None,
        }
    }
}

impl Prober {
    /// The probes of container `c`, with named ports resolved against its
    /// ports.
    pub(crate) fn for_container(c: &Container, reach: Reach) -> Prober {
        let resolve = |p: &Option<Probe>| {
            p.clone().map(|mut p| {
                resolve_ports(c, &mut p);
                p
            })
        };
        Prober::new(
            resolve(&c.startup_probe),
            resolve(&c.readiness_probe),
            resolve(&c.liveness_probe),
            reach,
        )
    }

    fn new(
        startup: Option<Probe>,
        readiness: Option<Probe>,
        liveness: Option<Probe>,
        reach: Reach,
    ) -> Prober {
        let now = Instant::now();
        Prober {
            ready: readiness.is_none() && startup.is_none(),
            startup: startup.map(|p| Schedule::new(p, now)),
            readiness: readiness.map(|p| Schedule::new(p, now)),
            liveness: liveness.map(|p| Schedule::new(p, now)),
            reach,
        }
    }

    /// Whether the container counts as ready before any probe has run.
    pub(crate) fn initially_ready(&self) -> bool {
        self.ready
    }

    /// Whether the container counts as started before any probe has run:
    /// unless it has a startup probe to pass.
    pub(crate) fn initially_started(&self) -> bool {
        self.startup.is_none()
    }

    /// Runs probes as they fall due; returns when the container starts,
    /// the readiness verdict flips, or startup or liveness gives up.
    /// Without probes it never returns.
    pub(crate) async fn next(&mut self) -> Outcome {
        loop {
            // Until the startup probe passes, it is the only one that runs;
            // the others' initial delays count from the container's start.
            let due = match &self.startup {
                Some(s) => Some(s.next),
                None => [&self.readiness, &self.liveness]
                    .into_iter()
                    .flatten()
                    .map(|s| s.next)
                    .min(),
            };
            let Some(due) = due else {
                return std::future::pending().await;
            };
            tokio::time::sleep_until(due).await;
            let now = Instant::now();
            if let Some(s) = self.startup.as_mut() {
                match s.attempt(&self.reach).await {
                    Ok(()) => {
                        self.startup = None;
                        self.ready = self.readiness.is_none();
                        return Outcome::Started { ready: self.ready };
                    }
                    Err(why) if s.gives_up() => {
                        return Outcome::Dead {
                            probe: Kind::Startup,
                            why,
                        }
                    }
                    Err(_) => {}
                }
                continue;
            }
            if let Some(s) = self.liveness.as_mut().filter(|s| s.next <= now) {
                match s.attempt(&self.reach).await {
                    Ok(()) => s.failures = 0,
                    Err(why) if s.gives_up() => {
                        return Outcome::Dead {
                            probe: Kind::Liveness,
                            why,
                        }
                    }
                    Err(_) => {}
                }
            }
            if let Some(s) = self.readiness.as_mut().filter(|s| s.next <= now) {
                let verdict = match s.attempt(&self.reach).await {
                    Ok(()) => {
                        s.failures = 0;
                        s.successes += 1;
                        (s.successes >= s.probe.success_threshold.unwrap_or(1).max(1))
                            .then_some(true)
                    }
                    Err(_) => {
                        s.successes = 0;
                        s.gives_up().then_some(false)
                    }
                };
                if let Some(v) = verdict.filter(|v| *v != self.ready) {
                    self.ready = v;
                    return Outcome::Ready(v);
                }
            }
        }
    }
}

/// Turns named ports in `p`'s handler into container port numbers; a name
/// no port has stays, and the attempt then fails saying so.
pub(super) fn resolve_ports(c: &Container, p: &mut Probe) {
    let named = |port: &mut IntOrString| {
        if let IntOrString::String(name) = port {
            let found = c
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()));
            if let Some(cp) = found {
                *port = IntOrString::Int(cp.container_port);
            }
        }
    };
    if let Some(g) = p.http_get.as_mut() {
        named(&mut g.port);
    }
    if let Some(t) = p.tcp_socket.as_mut() {
        named(&mut t.port);
    }
}

fn port_number(p: &IntOrString) -> Option<u16> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        // Named ports were resolved against the container's ports; a name
        // left here matched none.
        IntOrString::String(s) => s.parse().ok(),
    }
}

/// One probe attempt within its timeout.
async fn check(probe: &Probe, reach: &Reach) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    match tokio::time::timeout(timeout, attempt(probe, reach)).await {
        Ok(r) => r,
        Err(_) => Err(format!("timeout after {}s", timeout.as_secs())),
    }
}

pub(super) async fn attempt(probe: &Probe, reach: &Reach) -> Result<(), String> {
    let (http, host) = (reach.http.as_ref(), reach.host.as_str());
    if let Some(g) = &probe.http_get {
        let path = g.path.clone().unwrap_or_else(|| "/".into());
        let port = port_number(&g.port).ok_or("httpGet port names no container port")?;
        let target = g.host.clone().unwrap_or_else(|| host.to_string());
        let mut req = http::Request::get(format!("http://{target}:{port}{path}"))
            .header(http::header::HOST, format!("{target}:{port}"))
            .header(http::header::USER_AGENT, "kube-probe/1.33");
        for h in g.http_headers.iter().flatten() {
            req = req.header(h.name.as_str(), h.value.as_str());
        }
        let req = req
            .body(full(bytes::Bytes::new()))
            .map_err(|e| format!("building the probe request: {e}"))?;
        let status = match http {
            Some(svc) => {
                let resp = svc
                    .serve(req)
                    .await
                    .map_err(|_| "the pod is not taking requests".to_string())?;
                let status = resp.status();
                let _ = resp.into_body().collect().await;
                status
            }
            None => network_get(&target, port, req).await?,
        };
        // Kubernetes counts 200–399 as success.
        return if (200..400).contains(&status.as_u16()) {
            Ok(())
        } else {
            Err(format!(
                "HTTP probe failed with statuscode: {}",
                status.as_u16()
            ))
        };
    }
    if let Some(t) = &probe.tcp_socket {
        if http.is_some() {
            // The handler is the pod's socket, open while the pod runs.
            return Ok(());
        }
        let port = port_number(&t.port).ok_or("tcpSocket port must be a number")?;
        let target = t.host.clone().unwrap_or_else(|| host.to_string());
        return dial(&target, port).await.map(|_| ());
    }
    if let Some(e) = &probe.exec {
        let Some(exec) = &reach.exec else {
            return Err(
                "exec probes cannot run inside a Wasm sandbox; use httpGet or tcpSocket".into(),
            );
        };
        return run_command(exec.as_ref(), e.command.as_deref().unwrap_or_default()).await;
    }
    if let Some(g) = &probe.grpc {
        let port =
            u16::try_from(g.port).map_err(|_| format!("grpc port {} is not a port", g.port))?;
        return super::grpc::check(http, host, port, g.service.as_deref().unwrap_or("")).await;
    }
    Err("probe has no handler (httpGet, tcpSocket, grpc, exec)".into())
}

/// An exec probe or hook: the command's exit code decides; its output
/// (the first 10 KiB, as kubelet keeps) says why it failed. Dropped at the
/// probe's timeout, which ends the command.
async fn run_command(exec: &dyn Exec, argv: &[String]) -> Result<(), String> {
    const KEEP: usize = 10 * 1024;
    let s = exec
        .exec(argv, shoal_runtime::exec::ExecOptions::default())
        .await?;
    let (mut out, mut err) = (s.stdout, s.stderr);
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let _ = tokio::join!(out.read_to_end(&mut o), err.read_to_end(&mut e));
    let code = s.exit.await?;
    if code == 0 {
        return Ok(());
    }
    o.extend_from_slice(&e);
    o.truncate(KEEP);
    Err(format!(
        "command {argv:?} exited with {code}: {}",
        String::from_utf8_lossy(&o).trim()
    ))
}

/// A TCP connection to a container for a probe, failing as kubelet words it.
pub(super) async fn dial(host: &str, port: u16) -> Result<tokio::net::TcpStream, String> {
    tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("dial tcp {host}:{port}: {e}"))
}

async fn network_get(
    target: &str,
    port: u16,
    mut req: http::Request<shoal_runtime::http::Body>,
) -> Result<http::StatusCode, String> {
    // On the wire the target is origin-form (`GET /path`), as kubelet sends
    // it: small servers (busybox httpd) answer 400 to the absolute form.
    if let Some(origin) = req.uri().path_and_query().cloned() {
        *req.uri_mut() = http::Uri::from(origin);
    }
    let stream = dial(target, port).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP probe: {e}"))?;
    tokio::spawn(conn);
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP probe: {e}"))?;
    Ok(resp.status())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_runtime::http::{text_response, Body};

    /// Answers with the status its path names (`/200`, `/500`).
    struct ByPath;

    #[async_trait::async_trait]
    impl HttpService for ByPath {
        async fn serve(
            &self,
            req: http::Request<Body>,
        ) -> Result<http::Response<Body>, http::Request<Body>> {
            let code: u16 = req.uri().path()[1..].parse().unwrap_or(500);
            Ok(text_response(
                http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
                "",
            ))
        }
        fn in_flight(&self) -> usize {
            0
        }
    }

    fn probe(path: &str, failure_threshold: i32) -> Probe {
        serde_json::from_value(serde_json::json!({
            "httpGet": {"path": path, "port": 8080},
            "periodSeconds": 1,
            "failureThreshold": failure_threshold,
        }))
        .expect("probe")
    }

    #[tokio::test]
    async fn readiness_flips_and_liveness_gives_up() {
        let svc: Arc<dyn HttpService> = Arc::new(ByPath);
        let mut ok = Prober::new(
            None,
            Some(probe("/204", 3)),
            None,
            Reach::handler(svc.clone()),
        );
        assert!(!ok.initially_ready());
        assert!(ok.initially_started());
        assert_eq!(ok.next().await, Outcome::Ready(true));

        let mut dead = Prober::new(None, None, Some(probe("/500", 2)), Reach::handler(svc));
        assert!(dead.initially_ready());
        let started = Instant::now();
        match dead.next().await {
            Outcome::Dead {
                probe: Kind::Liveness,
                why,
            } => assert!(why.contains("statuscode: 500"), "{why}"),
            other => panic!("unexpected {other:?}"),
        }
        // Two failures, a period apart.
        assert!(started.elapsed() >= Duration::from_secs(1));
    }

    #[tokio::test]
    async fn startup_holds_the_other_probes_back() {
        let svc: Arc<dyn HttpService> = Arc::new(ByPath);
        // Started, then Ready through its readiness probe.
        let mut p = Prober::new(
            Some(probe("/200", 3)),
            Some(probe("/200", 3)),
            None,
            Reach::handler(svc.clone()),
        );
        assert!(!p.initially_started() && !p.initially_ready());
        assert_eq!(p.next().await, Outcome::Started { ready: false });
        assert_eq!(p.next().await, Outcome::Ready(true));
        // No readiness probe: Ready as soon as started.
        let mut p = Prober::new(
            Some(probe("/200", 3)),
            None,
            None,
            Reach::handler(svc.clone()),
        );
        assert!(!p.initially_ready());
        assert_eq!(p.next().await, Outcome::Started { ready: true });
        // A liveness probe that would fail at once never runs while the
        // startup probe is failing; the startup probe gives up instead.
        let mut p = Prober::new(
            Some(probe("/503", 2)),
            None,
            Some(probe("/500", 1)),
            Reach::handler(svc),
        );
        match p.next().await {
            Outcome::Dead {
                probe: Kind::Startup,
                why,
            } => assert!(why.contains("statuscode: 503"), "{why}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
