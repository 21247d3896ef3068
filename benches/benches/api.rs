//! API server benchmark: creates/s, gets/s, a list of 10,000 pods, and watch
//! delivery latency with 100 watchers, printed as one JSON object.
//!
//! `cargo bench -p shoal-benches --bench api` runs it in full against
//! `target/release/shoal` (build it first: `cargo build --release --bin shoal`).
//! Under `cargo test` it runs a small smoke version, so CI keeps it working.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use shoal_tests::Server;

mod common;
use common::{ms, percentile, server_histogram};

#[derive(Clone, Copy)]
struct Sizes {
    pods: usize,
    gets: usize,
    concurrency: usize,
    lists: usize,
    watchers: usize,
    watch_events: usize,
}

fn pod(i: usize) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("bench-{i:06}"), "labels": {"app": "bench", "shard": (i % 10).to_string()}},
        "spec": {"containers": [{"name": "app", "image": "file:///opt/shoal/samples/hello.wasm",
            "resources": {"limits": {"memory": "32Mi", "cpu": "100m"}}}]},
    }))
    .expect("the benchmark pod is valid")
}

async fn creates(pods: &Api<Pod>, s: &Sizes) -> anyhow::Result<f64> {
    let started = Instant::now();
    futures::stream::iter(0..s.pods)
        .map(|i| {
            let pods = pods.clone();
            async move {
                pods.create(&PostParams::default(), &pod(i))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(s.concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(s.pods as f64 / started.elapsed().as_secs_f64())
}

async fn gets(pods: &Api<Pod>, s: &Sizes) -> anyhow::Result<f64> {
    let started = Instant::now();
    futures::stream::iter(0..s.gets)
        .map(|i| {
            let pods = pods.clone();
            let n = s.pods;
            async move { pods.get(&format!("bench-{:06}", i % n)).await.map(|_| ()) }
        })
        .buffer_unordered(s.concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(s.gets as f64 / started.elapsed().as_secs_f64())
}

async fn lists(pods: &Api<Pod>, s: &Sizes) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::new();
    for _ in 0..s.lists {
        let started = Instant::now();
        let n = pods.list(&ListParams::default()).await?.items.len();
        anyhow::ensure!(n == s.pods, "listed {n} pods, expected {}", s.pods);
        times.push(ms(started.elapsed()));
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// A watch reduced to what the bench needs: the names of added objects,
/// yielded once their event is decoded into a typed ConfigMap.
type Added = futures::stream::BoxStream<'static, String>;

fn added_name(ev: WatchEvent<ConfigMap>) -> Option<String> {
    match ev {
        WatchEvent::Added(cm) => cm.metadata.name,
        _ => None,
    }
}

/// A watch through the `kube` client: HTTP/1.1, one connection per watch
/// (kube-client 5 offers nothing else).
async fn kube_watch(cms: Api<ConfigMap>, rv: String) -> anyhow::Result<Added> {
    let stream = cms.watch(&WatchParams::default().timeout(120), &rv).await?;
    Ok(stream
        .filter_map(|ev| async move { ev.ok().and_then(added_name) })
        .boxed())
}

/// One HTTP/2 connection carrying every watch as a stream of its own, as
/// kubectl and client-go connect.
#[derive(Clone)]
struct H2 {
    send: hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    authority: String,
    token: String,
}

impl H2 {
    async fn connect(server: &Server) -> anyhow::Result<H2> {
        use rustls::pki_types::pem::PemObject;
        let authority = server.url().trim_start_matches("https://").to_string();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from_pem_file(
            server.data_dir().join("tls").join("ca.crt"),
        )?)?;
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(&authority).await?;
        tcp.set_nodelay(true)?;
        let host = authority
            .rsplit_once(':')
            .map_or(authority.as_str(), |(h, _)| h);
        let name = rustls::pki_types::ServerName::try_from(host.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await?;
        anyhow::ensure!(
            stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice()),
            "the server did not agree to HTTP/2"
        );
        let (send, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .handshake(hyper_util::rt::TokioIo::new(stream))
                .await?;
        tokio::spawn(conn);
        Ok(H2 {
            send,
            authority,
            token: server.token()?,
        })
    }

    async fn watch(self, rv: String) -> anyhow::Result<Added> {
        let req = http::Request::get(format!(
            "https://{}/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=120",
            self.authority
        ))
        .header(http::header::AUTHORIZATION, format!("Bearer {}", self.token))
        .body(http_body_util::Empty::new())?;
        let mut send = self.send;
        send.ready().await?;
        let resp = send.send_request(req).await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "watch answered {}",
            resp.status()
        );
        // Frames do not follow event lines: cut the body at newlines.
        let lines = futures::stream::unfold(
            (resp.into_body(), Vec::<u8>::new()),
            |(mut body, mut buf)| async move {
                use http_body_util::BodyExt;
                loop {
                    if let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=nl).collect();
                        return Some((line, (body, buf)));
                    }
                    match body.frame().await {
                        Some(Ok(f)) => {
                            if let Ok(data) = f.into_data() {
                                buf.extend_from_slice(&data);
                            }
                        }
                        _ => return None,
                    }
                }
            },
        );
        Ok(lines
            .filter_map(|line| async move {
                serde_json::from_slice::<WatchEvent<ConfigMap>>(&line)
                    .ok()
                    .and_then(added_name)
            })
            .boxed())
    }
}

/// Opens `watchers` watches with `open`, then creates objects named
/// `{prefix}{i}` one at a time; each delivery is timed from the moment its
/// create request was sent. Returns the deliveries and the creates' own
/// round trips, sorted.
async fn watch_latency<F, Fut>(
    client: kube::Client,
    s: &Sizes,
    prefix: &'static str,
    open: F,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Added>>,
{
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let rv = cms
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let sent: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; s.watch_events]));
    let deliveries: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..s.watchers {
        let mut stream = open(rv.clone()).await?;
        let (sent, deliveries, want) = (sent.clone(), deliveries.clone(), s.watch_events);
        tasks.push(tokio::spawn(async move {
            let mut got = 0;
            while let Some(name) = stream.next().await {
                let now = Instant::now();
                let Some(idx) = name
                    .strip_prefix(prefix)
                    .and_then(|n| n.parse::<usize>().ok())
                else {
                    continue;
                };
                let at = sent.lock().ok().and_then(|s| s.get(idx).copied().flatten());
                if let (Some(at), Ok(mut d)) = (at, deliveries.lock()) {
                    d.push(ms(now.duration_since(at)));
                }
                got += 1;
                if got == want {
                    break;
                }
            }
        }));
    }
    let mut create_ms = Vec::new();
    for i in 0..s.watch_events {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("{prefix}{i}")}}))?;
        let at = Instant::now();
        if let Ok(mut s) = sent.lock() {
            s[i] = Some(at);
        }
        cms.create(&PostParams::default(), &cm).await?;
        create_ms.push(ms(at.elapsed()));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .context("a watcher stalled")??;
    }
    let mut d = deliveries.lock().map(|d| d.clone()).unwrap_or_default();
    d.sort_by(f64::total_cmp);
    create_ms.sort_by(f64::total_cmp);
    anyhow::ensure!(
        d.len() == s.watchers * s.watch_events,
        "some watch events were not delivered ({prefix}: {} of {})",
        d.len(),
        s.watchers * s.watch_events
    );
    Ok((d, create_ms))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; `cargo test` does not: then smoke-test.
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = if full {
        Sizes {
            pods: 10_000,
            gets: 20_000,
            concurrency: 64,
            lists: 5,
            watchers: 100,
            watch_events: 200,
        }
    } else {
        Sizes {
            pods: 50,
            gets: 50,
            concurrency: 8,
            lists: 1,
            watchers: 3,
            watch_events: 5,
        }
    };
    // The API alone: with no nodes, the scheduler would add an Event and a
    // status write per pod and distort what is measured here.
    let server = Server::start_with(&["--disable-scheduler"])?;
    let client = server.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let creates_per_sec = creates(&pods, &sizes).await?;
    let gets_per_sec = gets(&pods, &sizes).await?;
    let list_ms = lists(&pods, &sizes).await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    // One watcher first: the floor the fan-out to 100 adds to.
    let one = Sizes {
        watchers: 1,
        ..sizes
    };
    let (delivery_one, _) =
        watch_latency(client.clone(), &one, "o-", |rv| kube_watch(cms.clone(), rv)).await?;
    let (delivery, create_ms) = watch_latency(client.clone(), &sizes, "w-", |rv| {
        kube_watch(cms.clone(), rv)
    })
    .await?;
    let h2 = H2::connect(&server).await?;
    let (delivery_h2, create_h2_ms) =
        watch_latency(client.clone(), &sizes, "h-", |rv| h2.clone().watch(rv)).await?;
    let (fanout_p50, fanout_p99, fanout_n) =
        server_histogram(&client, "shoal_watch_event_delivery_seconds", "").await?;
    let (list_server_p50, _, _) = server_histogram(
        &client,
        "apiserver_request_duration_seconds",
        "resource=\"pods\",verb=\"LIST\"",
    )
    .await?;
    let report = json!({
        "benchmark": "api",
        "mode": if full { "full" } else { "smoke" },
        "server": shoal_tests::shoal_bin().display().to_string(),
        "concurrency": sizes.concurrency,
        "creates": {"count": sizes.pods, "per_sec": creates_per_sec.round()},
        "gets": {"count": sizes.gets, "per_sec": gets_per_sec.round()},
        "list": {"pods": sizes.pods, "ms_p50": percentile(&list_ms, 0.5), "ms_max": percentile(&list_ms, 1.0),
            // Server side only (the client's decoding into typed Pods excluded): bucket upper bound.
            "server_ms_p50_le": list_server_p50},
        "watch": {
            "watchers": sizes.watchers,
            "events": sizes.watch_events,
            "deliveries": delivery.len(),
            "delivery_ms_p50": percentile(&delivery, 0.5),
            "delivery_ms_p99": percentile(&delivery, 0.99),
            "create_ack_ms_p50": percentile(&create_ms, 0.5),
            "create_ack_ms_p99": percentile(&create_ms, 0.99),
            // The same events to a single watcher: what the fan-out adds to.
            "one_watcher": {
                "delivery_ms_p50": percentile(&delivery_one, 0.5),
                "delivery_ms_p99": percentile(&delivery_one, 0.99),
            },
            // The same, with every watch a stream on one HTTP/2 connection
            // (kubectl's and client-go's way); the creates still go
            // through the kube client.
            "http2": {
                "deliveries": delivery_h2.len(),
                "delivery_ms_p50": percentile(&delivery_h2, 0.5),
                "delivery_ms_p99": percentile(&delivery_h2, 0.99),
                "create_ack_ms_p50": percentile(&create_h2_ms, 0.5),
                "create_ack_ms_p99": percentile(&create_h2_ms, 0.99),
            },
            // Server side, from durable to handed to the connection: bucket upper bounds.
            "fanout_ms_p50_le": fanout_p50,
            "fanout_ms_p99_le": fanout_p99,
            "fanout_observations": fanout_n,
        },
    });
    println!("{report}");
    Ok(())
}
