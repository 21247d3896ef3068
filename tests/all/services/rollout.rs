//! A rolling update of 10 HTTP replicas while clients keep sending
//! requests: every request is answered 200, because a pod leaves the
//! endpoints and stops taking requests before it stops, and finishes the
//! ones it has.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shoal_tests::{http_get, rust_sample, Node, Server};

use super::{pod_of, wait_endpoints};
use crate::controllers::deployment_yaml;

const ADDRESS: &str = "127.0.6.1";

#[tokio::test]
async fn rolling_update_under_load_fails_no_request() -> anyhow::Result<()> {
    let Some(hello) = rust_sample("p2", "http-hello")? else {
        return Ok(());
    };
    let s = Server::start()?;
    let _n = Node::start(&s, "node-r", ADDRESS, &[])?;
    s.wait_nodes_ready(&["node-r"]).await?;
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&deployment_yaml("hello", 10, &hello, "", "")),
    )?;
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n  type: NodePort\n  selector: {app: hello}\n  ports:\n  - {port: 80, nodePort: 30090}\n"),
    )?;
    wait_endpoints(&s, "default", "hello", 10).await?;
    let before: Vec<String> = s
        .kubectl(&[
            "get",
            "pods",
            "-l",
            "app=hello",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])?
        .split_whitespace()
        .map(str::to_string)
        .collect();

    // Eight clients, each sending one request after another (some of
    // them slow, so requests are in flight when pods are told to stop).
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let addr = format!("{ADDRESS}:30090");
    let mut clients = Vec::new();
    for i in 0..8 {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), addr.clone());
        clients.push(tokio::spawn(async move {
            let path = if i % 2 == 0 { "/" } else { "/sleep/20" };
            while !stop.load(Ordering::Relaxed) {
                match http_get(&addr, path).await {
                    Ok((200, _)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        if let Ok(mut f) = failed.lock() {
                            f.push(format!("{other:?}"));
                        }
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A new image (same bytes, another path) is a new template.
    let copy = tempfile::tempdir()?;
    let new_path = copy.path().join("http-hello-v2.wasm");
    std::fs::copy(hello.trim_start_matches("file://"), &new_path)?;
    s.kubectl(&[
        "set",
        "image",
        "deployment/hello",
        &format!("main=file://{}", new_path.display()),
    ])?;
    s.kubectl(&["rollout", "status", "deployment/hello", "--timeout=90s"])?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await?;
    }
    let failed = failed.lock().map(|f| f.clone()).unwrap_or_default();
    let ok = ok.load(Ordering::Relaxed);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok >= 100, "only {ok} requests were sent during the rollout");

    // Only new pods answer now.
    for _ in 0..20 {
        let (code, body) = http_get(&addr, "/").await?;
        assert_eq!(code, 200);
        let pod = pod_of(&body).unwrap_or_default();
        assert!(!before.contains(&pod), "old pod {pod} still answers");
    }
    Ok(())
}
