//! `shoal up --demo`, what the README's first command starts: the sample
//! pods run, the wasi:http sample answers through its NodePort Service and
//! its Ingress, and busybox's httpd answers from a runc container.

use std::time::Duration;

use shoal_tests::{free_port, http_get, http_get_host, wait_for, Server};

/// The demo's Service has the fixed NodePort 30080, as does the services
/// tests' sample: each test serves it on a loopback address of its own.
const ADDRESS: &str = "127.0.8.1";

#[tokio::test]
async fn the_demo_runs_its_pods_and_serves_http() -> anyhow::Result<()> {
    let ingress = free_port()?.to_string();
    let s = Server::up_on(
        ADDRESS,
        &[
            "--demo",
            "--ingress-http-port",
            &ingress,
            "--ingress-https-port",
            "0",
        ],
    )?;
    let check = async {
        wait_for("the demo's pods", Duration::from_secs(120), || async {
            let phases = s
                .kubectl(&[
                    "get",
                    "pods",
                    "-n",
                    "demo",
                    "-o",
                    "jsonpath={range .items[*]}{.metadata.name}={.status.phase} {end}",
                ])
                .ok()?;
            let pods: Vec<(&str, &str)> = phases
                .split_whitespace()
                .filter_map(|p| p.split_once('='))
                .collect();
            let http_running = pods
                .iter()
                .filter(|(name, phase)| name.starts_with("http-hello-") && *phase == "Running")
                .count();
            let ready = pods.contains(&("hello", "Succeeded"))
                && pods.contains(&("ticker", "Running"))
                && pods.contains(&("journal-0", "Running"))
                && http_running == 2;
            ready.then_some(())
        })
        .await?;
        assert_eq!(node_port(30080).await?, "hello from Shoal\n");
        // The journal's claim was provisioned and bound; its pod wrote to it.
        wait_for(
            "the journal's first entry",
            Duration::from_secs(60),
            || async {
                let logs = s.kubectl(&["logs", "journal-0", "-n", "demo"]).ok()?;
                (logs == "start 1\n").then_some(())
            },
        )
        .await?;
        let claim = s.kubectl(&[
            "get",
            "pvc",
            "data-journal-0",
            "-n",
            "demo",
            "-o",
            "jsonpath={.status.phase}",
        ])?;
        assert_eq!(claim, "Bound");
        s.kubectl(&["delete", "pod", "journal-0", "-n", "demo", "--timeout=60s"])?;
        wait_for(
            "the journal's second entry",
            Duration::from_secs(60),
            || async {
                let logs = s.kubectl(&["logs", "journal-0", "-n", "demo"]).ok()?;
                (logs == "start 2\n").then_some(())
            },
        )
        .await?;
        let addr = format!("{ADDRESS}:{ingress}");
        let via_ingress = wait_for("the Ingress answering", Duration::from_secs(60), || async {
            match http_get_host(&addr, "hello.demo", "/").await {
                Ok((200, body)) => Some(body),
                _ => None,
            }
        })
        .await?;
        assert_eq!(via_ingress, "hello from Shoal\n");
        // The runc peer: busybox httpd in a container, behind its NodePort.
        assert_eq!(
            node_port(30082).await?,
            "hello from a runc container, beside the Wasm pods\n"
        );
        anyhow::Ok(())
    };
    check.await.map_err(|e| e.context(s.logs()))
}

/// The body of the first 200 the demo's NodePort `port` answers.
async fn node_port(port: u16) -> anyhow::Result<String> {
    wait_for(
        &format!("NodePort {port} answering"),
        Duration::from_secs(60),
        || async {
            match http_get(&format!("{ADDRESS}:{port}"), "/").await {
                Ok((200, body)) => Some(body),
                _ => None,
            }
        },
    )
    .await
}
