//! Ingress on a node's gateway: host and path rules, a canary taking its
//! weight of a host's traffic, TLS from a Secret, and the load balancer
//! status kubectl shows.

use std::process::Command;

use shoal_tests::{http_get_host, rust_sample, wait_for, Node, Server};

use super::{http_manifest, pod_of, sample_dir, wait_endpoints, PATIENCE};
use crate::controllers::{deployment_yaml, image_copy};

const ADDRESS: &str = "127.0.7.1";
const HTTP: &str = "127.0.7.1:18080";

const INGRESSES: &str = "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: site
spec:
  tls:
  - hosts: [hello.local]
    secretName: hello-tls
  rules:
  - host: hello.local
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: hello, port: {number: 80}}}}
      - {path: /call, pathType: Exact, backend: {service: {name: caller, port: {number: 80}}}}
  - host: ghost.local
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: ghost, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: site-canary
  annotations:
    shoal.dev/canary: \"true\"
    shoal.dev/canary-weight: \"20\"
spec:
  rules:
  - host: hello.local
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: canary, port: {number: 80}}}}
---
apiVersion: v1
kind: Service
metadata:
  name: canary
spec:
  selector: {app: canary}
  ports:
  - {port: 80}
";

#[tokio::test]
async fn ingress_rules_canary_and_tls() -> anyhow::Result<()> {
    let Some(hello) = rust_sample("p2", "http-hello")? else {
        return Ok(());
    };
    let p2_dir = sample_dir(&hello);
    let s = Server::start()?;
    let _n = Node::start(
        &s,
        "node-i",
        ADDRESS,
        &[
            "--ingress-http-port",
            "18080",
            "--ingress-https-port",
            "18443",
        ],
    )?;
    s.wait_nodes_ready(&["node-i"]).await?;
    // A self-signed certificate for hello.local, as a TLS Secret.
    let dir = tempfile::tempdir()?;
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=hello.local",
            "-addext",
            "subjectAltName=DNS:hello.local",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()?;
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    // Rendered client-side and applied: `kubectl create` itself sends
    // protobuf, which Shoal does not decode.
    let secret = s.kubectl(&[
        "create",
        "secret",
        "tls",
        "hello-tls",
        &format!("--cert={}", cert.display()),
        &format!("--key={}", key.display()),
        "--dry-run=client",
        "-o",
        "yaml",
    ])?;
    s.kubectl_in(&["apply", "-f", "-"], Some(&secret))?;
    s.kubectl_in(&["apply", "-f", "-"], Some(&http_manifest(&p2_dir)?))?;
    let canary_image = image_copy(&s, &hello, "http-hello-canary.wasm")?;
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&deployment_yaml("canary", 2, &canary_image, "", "")),
    )?;
    s.kubectl_in(&["apply", "-f", "-"], Some(INGRESSES))?;
    wait_endpoints(&s, "default", "hello", 4).await?;
    wait_endpoints(&s, "default", "caller", 2).await?;
    wait_endpoints(&s, "default", "canary", 2).await?;

    // kubectl shows the node's address as the Ingress' address.
    wait_for("the ingress address", PATIENCE, || async {
        let out = s.kubectl(&["get", "ingress", "site"]).ok()?;
        out.contains(ADDRESS).then_some(())
    })
    .await?;

    // Host and path rules; the canary takes about 20% of hello.local.
    let (code, body) = wait_for("the ingress port", PATIENCE, || async {
        http_get_host(HTTP, "hello.local", "/").await.ok()
    })
    .await?;
    assert_eq!(code, 200, "{body}");
    let mut canary = 0;
    let total = 500;
    for _ in 0..total {
        let (code, body) = http_get_host(HTTP, "hello.local", "/x").await?;
        assert_eq!(code, 200, "{body}");
        if pod_of(&body).is_some_and(|p| p.starts_with("canary-")) {
            canary += 1;
        }
    }
    let share = canary as f64 / total as f64;
    assert!((0.13..=0.27).contains(&share), "canary share {share}");
    let (code, body) = http_get_host(HTTP, "hello.local", "/call").await?;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.starts_with("upstream http://hello answered 200"),
        "{body}"
    );

    // No rule: 404. A rule naming a missing Service: 503 naming it.
    let (code, _) = http_get_host(HTTP, "nobody.local", "/").await?;
    assert_eq!(code, 404);
    let (code, body) = http_get_host(HTTP, "ghost.local", "/").await?;
    assert_eq!(code, 503);
    assert!(body.contains("default/ghost"), "{body}");

    // TLS with the Secret's certificate, chosen by SNI.
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&cert)
        .args(["--resolve", &format!("hello.local:18443:{ADDRESS}")])
        .arg("https://hello.local:18443/secure")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("(GET /secure)"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
