//! Gateway benchmark, printed as one JSON object: the HTTP hello component
//! (one fresh Wasm instance per request) served by a `shoal node`, driven
//! over keep-alive HTTP/1.1 connections at 1, 16 and 64 concurrent
//! connections, through a NodePort Service and through an Ingress:
//! requests/s and latency p50/p99 for each. Plus the per-request cost in
//! the runtime alone (instantiate, run the handler, collect the answer),
//! measured in-process without any network, for the Rust sample and for the
//! demo's WAT handler (no language runtime: what is left is the host's).
//! `--in-process-only` runs just that part, longer, for `perf record`.
//!
//! `cargo bench -p shoal-benches --bench gateway` runs it in full against
//! `SHOAL_BIN` (build `--release` first); under `cargo test` a short smoke
//! run keeps it working. Needs the Rust samples (scripts/build-samples.sh).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::json;
use shoal_runtime::{Backend, ContainerSpec, HttpLimits, WasmBackend, WasmConfig};
use shoal_tests::{http_get_host, rust_sample, wait_for, Node, Server};

mod common;
use common::percentile;

const ADDRESS: &str = "127.0.8.1";
const NODE_PORT: u16 = 30800;
const INGRESS_PORT: u16 = 18880;

/// One load level's result.
struct Level {
    requests: usize,
    errors: usize,
    /// What the first few failures were, to tell a timeout from a refusal.
    error_samples: Vec<String>,
    seconds: f64,
    latencies_ms: Vec<f64>,
}

/// `connections` keep-alive connections, each sending requests back to
/// back for `duration`.
async fn drive(
    addr: &str,
    host: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Level> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let (stop, host) = (stop.clone(), host.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let req = http::Request::get("/bench")
                    .header(http::header::HOST, &host)
                    .body(Empty::<Bytes>::new())?;
                let started = Instant::now();
                match send.send_request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        match resp.into_body().collect().await {
                            Ok(_) if status == 200 => {
                                lat.push(started.elapsed().as_secs_f64() * 1000.0)
                            }
                            Ok(body) => errors.push(format!(
                                "{status}: {}",
                                String::from_utf8_lossy(&body.to_bytes())
                            )),
                            Err(e) => errors.push(format!("{status}, body: {e}")),
                        }
                    }
                    Err(e) => {
                        errors.push(format!("connection: {e}"));
                        break;
                    }
                }
            }
            anyhow::Ok((lat, errors))
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = Vec::new();
    for t in tasks {
        let (lat, e) = t.await??;
        all.extend(lat);
        errors.extend(e);
    }
    let seconds = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok(Level {
        requests: all.len(),
        errors: errors.len(),
        error_samples: errors.into_iter().take(3).collect(),
        seconds,
        latencies_ms: all,
    })
}

/// Per-request cost inside the runtime: `serve` on an HTTP hello
/// container, one request at a time.
async fn in_process(image: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let dir = tempfile::tempdir()?;
    let backend = WasmBackend::new(
        dir.path(),
        WasmConfig {
            max_instances: 64,
            max_memory_bytes: 64 << 20,
        },
    )?;
    let prepared = backend.prepare(image).await?;
    let container = backend
        .start(
            &prepared,
            ContainerSpec {
                argv: vec!["hello".into()],
                command: vec![],
                args: vec![],
                working_dir: None,
                hostname: "bench".into(),
                stop_grace: std::time::Duration::ZERO,
                http_port: None,
                pod_ip: "127.0.0.1".into(),
                netns: None,
                security: Default::default(),
                env: vec![("HOSTNAME".into(), "bench".into())],
                mounts: vec![],
                memory_limit: None,
                cpu_limit_millis: None,
                output: Arc::new(shoal_runtime::output::Discard),
                http: HttpLimits::default(),
                outbound: None,
                stdin: None,
            },
        )
        .await?;
    let svc = container
        .http()
        .ok_or_else(|| anyhow::anyhow!("the sample is not an HTTP component"))?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 50 {
        let req = http::Request::get("http://bench/")
            .header(http::header::HOST, "bench")
            .body(shoal_runtime::http::full(Bytes::new()))?;
        let started = Instant::now();
        let resp = svc
            .serve(req)
            .await
            .map_err(|_| anyhow::anyhow!("turned away"))?;
        let _ = resp.into_body().collect().await;
        // The first requests warm caches; they are not the steady cost.
        if i >= 50 {
            out.push(started.elapsed().as_secs_f64() * 1_000_000.0);
        }
    }
    container.kill();
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// The demo's hand-written WAT handler, written out to a file: a guest
/// that does nothing but answer, so its cost is the host's.
fn wat_hello() -> anyhow::Result<(tempfile::TempDir, String)> {
    let (_, bytes) = shoal_orchestrator::demo::MODULES
        .iter()
        .find(|(name, _)| *name == "http-hello.wasm")
        .ok_or_else(|| anyhow::anyhow!("the demo has no http-hello.wasm"))?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("http-hello.wasm");
    std::fs::write(&path, bytes)?;
    Ok((dir, format!("file://{}", path.display())))
}

/// Per-request cost in the runtime for the Rust sample (std start-up,
/// allocation, memory growth included) and for the WAT handler.
async fn in_process_report(
    rust: &str,
    wat: &(tempfile::TempDir, String),
    n: usize,
) -> anyhow::Result<serde_json::Value> {
    let mut out = serde_json::Map::new();
    for (name, image) in [
        ("rust_http_hello", rust),
        ("wat_http_hello", wat.1.as_str()),
    ] {
        let us = in_process(image, n).await?;
        out.insert(
            name.into(),
            json!({
                "samples": us.len(),
                "us_p50": percentile(&us, 0.5),
                "us_p99": percentile(&us, 0.99),
            }),
        );
    }
    Ok(serde_json::Value::Object(out))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let Some(hello) = rust_sample("p2", "http-hello")? else {
        return Ok(());
    };
    let (per_level, replicas, in_process_n) = if full {
        (Duration::from_secs(5), 2, 5000)
    } else {
        (Duration::from_millis(300), 1, 100)
    };
    // `--in-process-only` runs the runtime part alone, longer: the thing to
    // put under `perf record`.
    let wat = wat_hello()?;
    if std::env::args().any(|a| a == "--in-process-only") {
        let report = json!({
            "benchmark": "gateway",
            "mode": "in-process-only",
            "in_process_request": in_process_report(&hello, &wat, 50_000).await?,
        });
        println!("{report}");
        return Ok(());
    }
    let inst = in_process_report(&hello, &wat, in_process_n).await?;
    // `--guest wat` drives the WAT handler through the network paths too,
    // to tell the gateway's cost from the Rust guest's start-up.
    let guest = match std::env::args().skip_while(|a| a != "--guest").nth(1) {
        None => "rust".to_string(),
        Some(g) if g == "rust" || g == "wat" => g,
        Some(other) => anyhow::bail!("--guest takes rust or wat, not {other}"),
    };
    let image = if guest == "wat" {
        wat.1.clone()
    } else {
        hello.clone()
    };

    let s = Server::start()?;
    let node = Node::start(
        &s,
        "bench-node",
        ADDRESS,
        &[
            "--ingress-http-port",
            &INGRESS_PORT.to_string(),
            "--ingress-https-port",
            "0",
        ],
    )?;
    let manifest = format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: hello}}
  template:
    metadata:
      labels: {{app: hello}}
    spec:
      containers:
      - name: main
        image: {image}
---
apiVersion: v1
kind: Service
metadata:
  name: hello
spec:
  type: NodePort
  selector: {{app: hello}}
  ports:
  - {{port: 80, nodePort: {NODE_PORT}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: hello
spec:
  rules:
  - host: hello.bench
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: hello, port: {{number: 80}}}}}}}}
"
    );
    s.kubectl_in(&["apply", "-f", "-"], Some(&manifest))?;
    let node_port = format!("{ADDRESS}:{NODE_PORT}");
    let ingress = format!("{ADDRESS}:{INGRESS_PORT}");
    let ready = async {
        for (addr, host) in [(&node_port, node_port.as_str()), (&ingress, "hello.bench")] {
            wait_for(
                &format!("{addr} answering"),
                Duration::from_secs(120),
                || async {
                    matches!(http_get_host(addr, host, "/").await, Ok((200, _))).then_some(())
                },
            )
            .await?;
        }
        anyhow::Ok(())
    };
    if let Err(e) = ready.await {
        let saved = std::env::temp_dir().join("shoal-gateway-bench-node.log");
        let _ = std::fs::write(&saved, node.logs());
        return Err(e.context(format!("the node's log is in {}", saved.display())));
    }

    let mut results = Vec::new();
    for (path, addr, host) in [
        ("nodeport", &node_port, node_port.as_str()),
        ("ingress", &ingress, "hello.bench"),
    ] {
        for connections in [1usize, 16, 64] {
            let l = drive(addr, host, connections, per_level).await?;
            results.push(json!({
                "path": path,
                "connections": connections,
                "requests": l.requests,
                "errors": l.errors,
                "error_samples": l.error_samples,
                "requests_per_s": (l.requests as f64 / l.seconds).round(),
                "ms_p50": percentile(&l.latencies_ms, 0.5),
                "ms_p99": percentile(&l.latencies_ms, 0.99),
            }));
        }
    }
    let report = json!({
        "benchmark": "gateway",
        "mode": if full { "full" } else { "smoke" },
        "shoal": shoal_tests::shoal_bin().display().to_string(),
        "replicas": replicas,
        "guest": guest,
        "seconds_per_level": per_level.as_secs_f64(),
        "levels": results,
        "in_process_request": inst,
    });
    println!("{report}");
    Ok(())
}
