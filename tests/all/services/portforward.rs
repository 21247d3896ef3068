//! `kubectl port-forward` to Wasm pods: a `wasi:http` component answers on
//! the forwarded port itself (through kubectl's WebSocket tunnel and its
//! SPDY fallback, to a pod or a Service), and a port nothing serves gets
//! kubectl's error naming why.

use shoal_tests::{http_get, pod_yaml, rust_sample, sample, wait_for, Node, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{http_manifest, pod_of, sample_dir, wait_endpoints, PATIENCE};

const ADDRESS: &str = "127.0.11.1";

#[tokio::test]
async fn port_forward_reaches_http_components_and_names_refusals() -> anyhow::Result<()> {
    let Some(hello) = rust_sample("p2", "http-hello")? else {
        return Ok(());
    };
    let s = Server::start()?;
    let _n = Node::start(&s, "pf-node", ADDRESS, &[])?;
    s.wait_nodes_ready(&["pf-node"]).await?;
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&http_manifest(&sample_dir(&hello))?),
    )?;
    wait_endpoints(&s, "default", "hello", 4).await?;
    let pods = s.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=hello",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])?;
    let target = pods
        .split_whitespace()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no hello pod"))?
        .to_string();

    // The WebSocket tunnel (kubectl's default since 1.31), then the plain
    // SPDY upgrade kubectl falls back to: every connection reaches the
    // named pod, and one connection carries several requests.
    for env in [&[][..], &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")][..]] {
        let pf = s.port_forward(&[&format!("pod/{target}"), ":8080"], env)?;
        for _ in 0..3 {
            let (code, body) = http_get(&pf.local, "/").await?;
            assert_eq!(code, 200, "{body}");
            assert_eq!(pod_of(&body).as_deref(), Some(target.as_str()), "{body}");
        }
        let mut conn = tokio::net::TcpStream::connect(&pf.local).await?;
        conn.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).await?;
        let raw = String::from_utf8_lossy(&raw);
        assert_eq!(raw.matches("HTTP/1.1 200").count(), 2, "{raw}");
        assert!(
            raw.contains("GET /a") && raw.contains("GET /b"),
            "both answers on one connection: {raw}"
        );
        assert!(!pf.stderr().contains("error"), "{}", pf.stderr());
    }

    // A Service: kubectl picks one of its pods and the target port.
    let pf = s.port_forward(&["svc/hello", ":80"], &[])?;
    let (code, body) = http_get(&pf.local, "/").await?;
    assert_eq!(code, 200);
    let answered = pod_of(&body).unwrap_or_default();
    assert!(pods.split_whitespace().any(|p| p == answered), "{body}");
    drop(pf);

    // A port the component does not declare: the connection closes and
    // kubectl says why.
    let pf = s.port_forward(&[&format!("pod/{target}"), ":9999"], &[])?;
    assert!(http_get(&pf.local, "/").await.is_err());
    let said = pf.refusal(9999).await?;
    assert!(said.contains("declared container ports (8080)"), "{said}");
    // kubectl gives up on the session after a remote error.
    wait_for("kubectl to exit", PATIENCE, || async {
        (!pf.running()).then_some(())
    })
    .await?;
    drop(pf);

    // A Wasm guest that serves no HTTP listens on nothing.
    let ticker = sample("ticker")?;
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&pod_yaml("ticker", &ticker, "", "")),
    )?;
    s.kubectl(&[
        "wait",
        "--for=jsonpath={.status.phase}=Running",
        "pod/ticker",
        "--timeout=90s",
    ])?;
    let pf = s.port_forward(&["pod/ticker", ":80"], &[])?;
    assert!(http_get(&pf.local, "/").await.is_err());
    let said = pf.refusal(80).await?;
    assert!(said.contains("listens on no port"), "{said}");
    drop(pf);

    // Bad input: no such pod, and a pod that is not running.
    let err = s.kubectl_err(&["port-forward", "pod/nope", ":80"], None)?;
    assert!(err.contains("not found"), "{err}");
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Pod\nmetadata: {name: nowhere}\nspec:\n  nodeSelector: {absent: label}\n  containers:\n  - {name: main, image: \"file:///none.wasm\"}\n"),
    )?;
    let err = s.kubectl_err(&["port-forward", "pod/nowhere", ":80"], None)?;
    assert!(
        err.contains("not running") || err.contains("Pending"),
        "{err}"
    );
    Ok(())
}
