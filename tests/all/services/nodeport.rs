//! Two nodes, the HTTP samples behind NodePort Services: every node's port
//! reaches every replica, a guest calls another Service by name, and each
//! kind of bad input gets its status code while the gateway stays up.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use shoal_tests::{http_exchange, http_get, rust_sample, wait_for, Node, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{http_manifest, pod_of, sample_dir, wait_endpoints, PATIENCE};

const A: &str = "127.0.5.1";
const B: &str = "127.0.5.2";

#[tokio::test]
async fn nodeports_spread_forward_and_route_service_names() -> anyhow::Result<()> {
    let Some(hello) = rust_sample("p2", "http-hello")? else {
        return Ok(());
    };
    let p2_dir = sample_dir(&hello);
    let s = Server::start()?;
    // Both nodes also serve cluster IPs (a local route for the range, so
    // only where the tests run as root).
    let proxy: &[&str] = if running_as_root() {
        &["--cluster-ip-proxy", "10.43.0.0/16"]
    } else {
        &[]
    };
    let _a = Node::start(&s, "node-a", A, proxy)?;
    let _b = Node::start(&s, "node-b", B, proxy)?;
    s.wait_nodes_ready(&["node-a", "node-b"]).await?;
    s.kubectl_in(&["apply", "-f", "-"], Some(&http_manifest(&p2_dir)?))?;
    wait_endpoints(&s, "default", "hello", 4).await?;
    wait_endpoints(&s, "default", "caller", 2).await?;

    // Kubernetes' view: the Service got a cluster IP and its node port,
    // and `describe` lists the endpoints.
    let ip = s.kubectl(&["get", "svc", "hello", "-o", "jsonpath={.spec.clusterIP}"])?;
    assert!(ip.starts_with("10.43."), "cluster IP {ip}");
    let described = s.kubectl(&["describe", "service", "hello"])?;
    assert!(
        described.contains("NodePort:") && described.contains("30080/TCP"),
        "{described}"
    );
    let nodes = s.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=hello",
        "-o",
        "jsonpath={.items[*].spec.nodeName}",
    ])?;
    assert!(
        nodes.contains("node-a") && nodes.contains("node-b"),
        "replicas on both nodes: {nodes}"
    );

    // Every replica answers through either node's port: the gateway
    // forwards to the node that runs the chosen pod.
    for node in [A, B] {
        let addr = format!("{node}:30080");
        let mut seen = BTreeSet::new();
        for _ in 0..40 {
            let (code, body) = http_get(&addr, "/hi").await?;
            assert_eq!(code, 200, "{body}");
            seen.extend(pod_of(&body));
        }
        assert_eq!(seen.len(), 4, "through {addr} saw {seen:?}");
    }

    // The cluster IP answers too, through the node's userspace proxy.
    if running_as_root() {
        let (code, body) = wait_for("the cluster IP to answer", PATIENCE, || async {
            http_get(&format!("{ip}:80"), "/via-cluster-ip").await.ok()
        })
        .await?;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("(GET /via-cluster-ip)"), "{body}");
    } else {
        eprintln!("skipping the cluster IP check: adding the local route needs root");
    }

    // A guest calls the Service `hello` by its short name.
    let (code, body) = http_get(&format!("{A}:30081"), "/").await?;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.starts_with("upstream http://hello answered 200: hello from hello-"),
        "{body}"
    );

    // The node counts requests per Service and per pod.
    let metrics = s.kubectl(&["get", "--raw", "/api/v1/nodes/node-a/proxy/metrics"])?;
    for series in [
        "shoal_service_requests_total{code=\"200\",namespace=\"default\",service=\"hello\"}",
        "shoal_service_request_duration_seconds_bucket{namespace=\"default\",service=\"hello\"",
        "shoal_pod_http_requests_total{code=\"200\",namespace=\"default\",pod=\"hello-",
        "shoal_service_requests_in_flight{namespace=\"default\",service=\"hello\"} 0",
    ] {
        assert!(
            metrics.contains(series),
            "{series} missing from the node's metrics"
        );
    }

    core_module_handler(&s, &p2_dir).await?;
    bad_input(&s).await?;
    Ok(())
}

/// The hello handler built as a preview-1 core module (no component step):
/// the node wraps it with the preview-1 adapter and serves it, its pod's
/// environment (HOSTNAME) included.
async fn core_module_handler(s: &Server, p2_dir: &str) -> anyhow::Result<()> {
    let p1_dir = p2_dir.replace("/wasm-samples/p2", "/wasm-samples/p1");
    let manifest = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: hello-p1}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: hello-p1}}}}
  template:
    metadata: {{labels: {{app: hello-p1}}}}
    spec:
      containers:
      - {{name: main, image: "file://{p1_dir}/http-hello.wasm"}}
---
apiVersion: v1
kind: Service
metadata: {{name: hello-p1}}
spec:
  type: NodePort
  selector: {{app: hello-p1}}
  ports: [{{port: 80, nodePort: 30085}}]
"#
    );
    s.kubectl_in(&["apply", "-f", "-"], Some(&manifest))?;
    wait_endpoints(s, "default", "hello-p1", 1).await?;
    let (code, body) = http_get(&format!("{B}:30085"), "/from-a-module").await?;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.starts_with("hello from hello-p1-") && body.contains("(GET /from-a-module)"),
        "{body}"
    );
    Ok(())
}

async fn bad_input(s: &Server) -> anyhow::Result<()> {
    let addr = format!("{A}:30080");
    // A guest that traps: 502; one that never answers: 504 at the pod's
    // 2 s timeout, not later.
    let (code, body) = http_get(&addr, "/trap").await?;
    assert_eq!(code, 502, "{body}");
    let started = Instant::now();
    let (code, body) = http_get(&addr, "/hang").await?;
    assert_eq!(code, 504, "{body}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // A body over the pod's limit (10 MiB by default): 413 before the
    // guest runs.
    let raw = format!(
        "POST /echo HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 20000000\r\nConnection: close\r\n\r\n"
    );
    let (code, body) = http_exchange(&addr, raw.as_bytes()).await?;
    assert_eq!(code, 413, "{body}");
    // Headers past 64 KiB: 431. Garbage: 400.
    let raw = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(100_000)
    );
    let (code, _) = http_exchange(&addr, raw.as_bytes()).await?;
    assert_eq!(code, 431);
    let (code, _) = http_exchange(&addr, b"NOT HTTP AT ALL\r\n\r\n").await?;
    assert_eq!(code, 400);
    // A slow client that never finishes its headers is cut off.
    let mut slow = tokio::net::TcpStream::connect(&addr).await?;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await?;
    let mut buf = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(15), slow.read_to_end(&mut buf)).await;
    assert!(
        cut.is_ok(),
        "a slowloris connection is closed by the gateway"
    );

    // A Service selecting nothing, and one naming a port no pod has: 503,
    // and the second shows in the Service's events.
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: nobody\nspec:\n  type: NodePort\n  selector: {app: nobody}\n  ports:\n  - {port: 80, nodePort: 30082}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: badport\nspec:\n  type: NodePort\n  selector: {app: hello}\n  ports:\n  - {port: 80, targetPort: nope, nodePort: 30083}\n",
        ),
    )?;
    for port in [30082, 30083] {
        let code = wait_for(&format!("node port {port} open"), PATIENCE, || async {
            http_get(&format!("{A}:{port}"), "/")
                .await
                .ok()
                .map(|(c, _)| c)
        })
        .await?;
        assert_eq!(code, 503, "port {port}");
    }
    wait_for("FailedToResolvePort event", PATIENCE, || async {
        let d = s.kubectl(&["describe", "service", "badport"]).ok()?;
        d.contains("FailedToResolvePort").then_some(())
    })
    .await?;
    // A node port already taken: 422 naming the field, nothing stored.
    let err = s.kubectl_err(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Service\nmetadata:\n  name: clash\nspec:\n  type: NodePort\n  selector: {app: hello}\n  ports:\n  - {port: 80, nodePort: 30080}\n"),
    )?;
    assert!(
        err.contains("spec.ports[0].nodePort") && err.contains("already allocated"),
        "{err}"
    );
    assert!(s
        .kubectl_err(&["get", "svc", "clash"], None)?
        .contains("NotFound"));

    // A guest calling a host that is no Service and not allowed: the call
    // is denied, the caller says so.
    s.kubectl(&[
        "set",
        "env",
        "deployment/caller",
        "UPSTREAM=http://example.com",
    ])?;
    let body = wait_for("the caller to use the new upstream", PATIENCE, || async {
        let (code, body) = http_get(&format!("{A}:30081"), "/").await.ok()?;
        (code == 502 && body.contains("example.com")).then_some(body)
    })
    .await?;
    assert!(body.contains("HttpRequestDenied"), "{body}");

    // Through all of it the gateway kept serving.
    let (code, _) = http_get(&addr, "/").await?;
    assert_eq!(code, 200);
    Ok(())
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
