//! Pod benchmarks on real node agents, printed as one JSON object:
//! - cold start: `POST` of a pod → its Ready condition seen on a watch,
//!   one pod at a time, through the whole API (scheduler, node, status),
//!   for Wasm pods, Wasm pods with a volume of their own each (an
//!   ephemeral local-path claim), and, on the same path, for runc
//!   containers; then Wasm and runc again from a local OCI registry (first
//!   pod includes the pull);
//! - restart latency: a guest's exit → its next guest running (node metric);
//! - memory per idle running ticker pod, node and control plane separately;
//! - how many ticker pods one node holds.
//!
//! `cargo bench -p shoal-benches --bench pods` runs it in full against
//! `target/release/shoal` (`cargo build --release --bin shoal` first; set
//! `SHOAL_BIN` to point there). Under `cargo test` a small smoke version
//! runs so CI keeps it working.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::{json, Value};
use shoal_tests::{fresh_wasm, rss_bytes, sample, Node, Registry, RegistryAuth, Server, UP_NODE};

mod common;
use common::{metrics_histogram, ms, percentile};

struct Sizes {
    cold_pods: usize,
    density_pods: usize,
    crashers: usize,
    crash_for: Duration,
}

/// What the cold-start pods run: a Wasm ticker, or (for the comparison
/// with containers) busybox's `sleep` under runc.
#[derive(Clone, Copy)]
enum Runtime<'a> {
    Wasm(&'a str),
    Runc(&'a str),
    /// A Wasm pod with its own volume (a generic ephemeral volume of the
    /// local-path class): claim made, node chosen, volume provisioned and
    /// bound, directory mounted, all before the guest starts.
    WasmWithVolume(&'a str),
}

fn pod(name: &str, image: &str, labels: Value, node: Option<&str>) -> anyhow::Result<Pod> {
    pod_on(name, Runtime::Wasm(image), labels, node)
}

fn pod_on(name: &str, rt: Runtime<'_>, labels: Value, node: Option<&str>) -> anyhow::Result<Pod> {
    let container = match rt {
        Runtime::Wasm(image) => json!({"name": "main", "image": image}),
        Runtime::WasmWithVolume(image) => json!({"name": "main", "image": image,
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}),
        Runtime::Runc(image) => {
            json!({"name": "main", "image": image, "command": ["sleep", "3600"]})
        }
    };
    let mut spec = json!({
        "terminationGracePeriodSeconds": 0,
        "containers": [container],
    });
    if let Runtime::Runc(_) = rt {
        spec["runtimeClassName"] = json!("runc");
    }
    if let Runtime::WasmWithVolume(_) = rt {
        spec["volumes"] = json!([{"name": "data", "ephemeral": {"volumeClaimTemplate": {
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}}}}]);
    }
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }))?)
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Creates pods one at a time and times each from POST to Ready on a watch.
async fn cold_start(pods: &Api<Pod>, rt: Runtime<'_>, n: usize) -> anyhow::Result<(f64, Vec<f64>)> {
    let rv = pods
        .list_metadata(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let wp = WatchParams::default().labels("bench=cold").timeout(290);
    let mut stream = pods.watch(&wp, &rv).await?.boxed();
    let mut times = Vec::with_capacity(n);
    let mut first = 0.0;
    // Pod 0 compiles the module (or unpacks the image); the rest start
    // from the cache.
    for i in 0..=n {
        let name = format!("cold-{i:04}");
        let started = Instant::now();
        pods.create(
            &PostParams::default(),
            &pod_on(&name, rt, json!({"bench": "cold"}), None)?,
        )
        .await?;
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(60), stream.try_next())
                .await
                .with_context(|| format!("{name} did not become Ready within 60s"))??
                .context("watch ended")?;
            match ev {
                WatchEvent::Added(p) | WatchEvent::Modified(p)
                    if p.metadata.name.as_deref() == Some(name.as_str()) && ready(&p) =>
                {
                    break;
                }
                WatchEvent::Error(e) => anyhow::bail!("watch failed at {name}: {e:?}"),
                _ => {}
            }
        }
        if i == 0 {
            first = ms(started.elapsed());
        } else {
            times.push(ms(started.elapsed()));
        }
    }
    times.sort_by(f64::total_cmp);
    pods.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("bench=cold"),
    )
    .await?;
    Ok((first, times))
}

/// Crash-looping guests with no back-off: the node's restart histogram.
async fn restarts(
    client: &kube::Client,
    image: &str,
    s: &Sizes,
) -> anyhow::Result<(f64, f64, u64)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 0..s.crashers {
        pods.create(
            &PostParams::default(),
            &pod(
                &format!("crash-{i}"),
                image,
                json!({"bench": "crash"}),
                None,
            )?,
        )
        .await?;
    }
    tokio::time::sleep(s.crash_for).await;
    let h = metrics_histogram(
        client,
        &format!("/api/v1/nodes/{UP_NODE}/proxy/metrics"),
        "shoal_container_restart_seconds",
        "",
    )
    .await?;
    pods.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("bench=crash"),
    )
    .await?;
    Ok(h)
}

/// Running containers as the node counts them (cheap to poll, unlike a
/// list of thousands of pods).
async fn running_on(client: &kube::Client, node: &str) -> anyhow::Result<u64> {
    let text = client
        .request_text(
            http::Request::get(format!("/api/v1/nodes/{node}/proxy/metrics")).body(vec![])?,
        )
        .await?;
    Ok(text
        .lines()
        .find(|l| l.starts_with("shoal_node_running_containers "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}

/// Fills one node with ticker pods and reads what they cost.
async fn density(image: &str, n: usize) -> anyhow::Result<Value> {
    let server = Server::start_with(&["--disable-scheduler"])?;
    let max = (n + 100).to_string();
    let node = Node::start(&server, "dense", "127.0.0.2", &["--max-pods", &max])?;
    let client = server.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // Warm up: the node is registered and the module compiled.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if pods
            .create(
                &PostParams::default(),
                &pod("warm", image, json!({"bench": "warm"}), Some("dense"))?,
            )
            .await
            .is_ok()
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "could not create the warm-up pod"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while running_on(&client, "dense").await.unwrap_or(0) < 1 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the warm-up pod never ran:\n{}",
            node.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let node_pid = node.pid().context("node pid")?;
    let server_pid = server.pid().context("server pid")?;
    let node_before = rss_bytes(node_pid).context("node rss")?;
    let server_before = rss_bytes(server_pid).context("server rss")?;
    let started = Instant::now();
    // Bound straight to the node, as a DaemonSet's or static pods are: this
    // measures the node, not the scheduler.
    futures::stream::iter(0..n)
        .map(|i| {
            let pods = pods.clone();
            let p = pod(
                &format!("dense-{i:05}"),
                image,
                json!({"bench": "dense"}),
                Some("dense"),
            );
            async move {
                pods.create(&PostParams::default(), &p?)
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    let created_s = started.elapsed().as_secs_f64();
    let want = n as u64 + 1;
    let wait_until = Instant::now() + Duration::from_secs(600);
    let mut running = 0;
    while Instant::now() < wait_until {
        running = running_on(&client, "dense").await.unwrap_or(running);
        if running >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_running_s = started.elapsed().as_secs_f64();
    let running_in_api = || async {
        pods.list_metadata(
            &ListParams::default()
                .labels("bench=dense")
                .fields("status.phase=Running"),
        )
        .await
        .map(|l| l.items.len())
        .unwrap_or(0)
    };
    // The API learns of each start from the node's (coalesced) status writes.
    let mut in_api = running_in_api().await;
    while in_api < n && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        in_api = running_in_api().await;
    }
    let api_all_running_s = started.elapsed().as_secs_f64();
    // Let the first status writes and log lines settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let node_after = rss_bytes(node_pid).context("node rss")?;
    let server_after = rss_bytes(server_pid).context("server rss")?;
    let held = running.saturating_sub(1);
    let per = |before: u64, after: u64| {
        if held == 0 {
            0.0
        } else {
            (after.saturating_sub(before)) as f64 / held as f64 / 1024.0
        }
    };
    Ok(json!({
        "requested": n,
        "held_running": held,
        "running_in_api": in_api,
        "create_s": created_s,
        "node_all_running_s": all_running_s,
        "api_all_running_s": api_all_running_s,
        "node_rss_mib": node_after as f64 / 1048576.0,
        "node_kib_per_pod": per(node_before, node_after),
        "server_kib_per_pod": per(server_before, server_after),
        "total_kib_per_pod": per(node_before + server_before, node_after + server_after),
    }))
}

/// One cold-start series as the report shows it; `first` (the pod that
/// filled the cache) is reported apart under `first_key`.
fn starts(times: &[f64], first_key: &str, first: f64) -> Value {
    let mut v = json!({
        "pods": times.len(),
        "ms_p50": percentile(times, 0.5),
        "ms_p99": percentile(times, 0.99),
        "ms_max": percentile(times, 1.0),
    });
    v[first_key] = json!(first);
    v
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = if full {
        Sizes {
            cold_pods: 200,
            density_pods: 20_000,
            crashers: 4,
            crash_for: Duration::from_secs(2),
        }
    } else {
        Sizes {
            cold_pods: 10,
            density_pods: 20,
            crashers: 1,
            crash_for: Duration::from_millis(300),
        }
    };
    let ticker = sample("ticker")?;
    let crasher = sample("crasher")?;
    // No back-off, so restart latency is the machinery alone.
    let up = Server::up(&["--backoff-initial-ms", "0", "--backoff-max-seconds", "0"])?;
    let client = up.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let saved_log = |e: anyhow::Error| {
        let saved = std::env::temp_dir().join("shoal-pods-bench-up.log");
        let _ = std::fs::write(&saved, up.logs());
        e.context(format!("the server's log is in {}", saved.display()))
    };
    let (first_ms, cold) = cold_start(&pods, Runtime::Wasm(&ticker), sizes.cold_pods)
        .await
        .map_err(saved_log)?;
    // With a volume of its own per pod (provisioned on the node, mounted).
    let (vol_first_ms, vol_cold) = cold_start(
        &pods,
        Runtime::WasmWithVolume(&ticker),
        sizes.cold_pods.min(50),
    )
    .await
    .map_err(saved_log)?;
    // The same path with a container: what Shoal's Wasm pods are measured
    // against (a static busybox `sleep`, the smallest image there is).
    let busybox = shoal_tests::busybox_image()?;
    let (runc_first_ms, runc_cold) = cold_start(&pods, Runtime::Runc(&busybox), sizes.cold_pods)
        .await
        .map_err(saved_log)?;
    // Both again from a registry on loopback (Debian's docker-registry):
    // the first pod pulls (manifest, config, layers), then compiles or
    // unpacks; the rest find it all on the node. The Wasm module is one
    // no store here has seen.
    let registry = Registry::start(RegistryAuth::Open).await?;
    let nonce = std::process::id().to_string();
    let fresh = fresh_wasm(&ticker, up.data_dir(), &nonce)?;
    let wasm_ref = format!("{}/bench/ticker:{nonce}", registry.host);
    registry
        .push(&fresh.display().to_string(), &wasm_ref, false)
        .await?;
    let runc_ref = format!("{}/bench/busybox:{nonce}", registry.host);
    registry.push(&busybox, &runc_ref, false).await?;
    let from_registry = sizes.cold_pods.min(20);
    let (reg_first_ms, reg_cold) = cold_start(&pods, Runtime::Wasm(&wasm_ref), from_registry)
        .await
        .map_err(saved_log)?;
    let (reg_runc_first_ms, reg_runc_cold) =
        cold_start(&pods, Runtime::Runc(&runc_ref), from_registry)
            .await
            .map_err(saved_log)?;
    let (restart_p50, restart_p99, restart_n) = restarts(&client, &crasher, &sizes).await?;
    drop(up);
    let dense = density(&ticker, sizes.density_pods).await?;
    let report = json!({
        "benchmark": "pods",
        "mode": if full { "full" } else { "smoke" },
        "shoal": shoal_tests::shoal_bin().display().to_string(),
        "cold_start": starts(&cold, "first_pod_ms_incl_compile", first_ms),
        "cold_start_with_volume": starts(&vol_cold, "first_pod_ms", vol_first_ms),
        "cold_start_runc": starts(&runc_cold, "first_pod_ms_incl_unpack", runc_first_ms),
        "cold_start_registry": starts(&reg_cold, "first_pod_ms_incl_pull_and_compile", reg_first_ms),
        "cold_start_registry_runc": starts(&reg_runc_cold, "first_pod_ms_incl_pull_and_unpack", reg_runc_first_ms),
        "restart": {
            "restarts": restart_n,
            // Node-side, bucket upper bounds, with back-off set to zero.
            "ms_p50_le": restart_p50,
            "ms_p99_le": restart_p99,
        },
        "density": dense,
    });
    anyhow::ensure!(cold.len() == sizes.cold_pods, "not every pod became Ready");
    anyhow::ensure!(
        runc_cold.len() == sizes.cold_pods,
        "not every runc pod became Ready"
    );
    anyhow::ensure!(restart_n > 0, "no restarts were observed");
    println!("{report}");
    Ok(())
}
