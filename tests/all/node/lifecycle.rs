//! apply → Running → logs → delete, on `shoal up`; and a spinning guest
//! next to a ticker.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use shoal_tests::{pod_yaml, sample, wait_for, Server, UP_NODE};

use super::{wait_logs, wait_running, PATIENCE};

#[tokio::test]
async fn apply_run_logs_and_delete() -> anyhow::Result<()> {
    let s = Server::up(&[])?;
    let client = s.client().await?;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let yaml = pod_yaml("ticker", &sample("ticker")?, "", "");
    s.kubectl_in(&["apply", "-f", "-"], Some(&yaml))?;
    let p = wait_running(&pods, "ticker").await?;
    let spec = p.spec.clone().unwrap_or_default();
    assert_eq!(spec.node_name.as_deref(), Some(UP_NODE));
    let st = p.status.clone().unwrap_or_default();
    assert!(st.pod_ip.is_some() && st.start_time.is_some(), "{st:?}");
    let conds: Vec<(String, String)> = st
        .conditions
        .iter()
        .flatten()
        .map(|c| (c.type_.clone(), c.status.clone()))
        .collect();
    for t in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert!(
            conds.contains(&(t.to_string(), "True".to_string())),
            "{conds:?}"
        );
    }
    let image_id = super::first_container(&p)
        .map(|c| c.image_id.clone())
        .unwrap_or_default();
    assert!(image_id.starts_with("sha256:"), "{image_id}");

    let table = s.kubectl(&["get", "pods", "-o", "wide"])?;
    assert!(
        table.contains("ticker") && table.contains("Running") && table.contains(UP_NODE),
        "{table}"
    );

    wait_logs(&s, &["ticker"], "tick 1\n").await?;
    let tail = s.kubectl(&["logs", "ticker", "--tail=1"])?;
    assert_eq!(tail.lines().count(), 1, "{tail}");
    assert!(tail.starts_with("tick "), "{tail}");
    let stamped = s.kubectl(&["logs", "ticker", "--timestamps", "-c", "main"])?;
    let first = stamped.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("20") && first.ends_with(" tick 0"),
        "{first}"
    );
    let recent = s.kubectl(&["logs", "ticker", "--since=1h"])?;
    assert!(recent.contains("tick 0"), "{recent}");

    // -f streams lines as they are written.
    let mut follow = s
        .kubectl_cmd(&["logs", "-f", "ticker", "--tail=0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let out = follow
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let line = tokio::task::spawn_blocking(move || {
        BufReader::new(out).lines().next().and_then(Result::ok)
    });
    let line = tokio::time::timeout(PATIENCE, line)
        .await??
        .unwrap_or_default();
    let _ = follow.kill();
    assert!(line.starts_with("tick "), "{line}");

    // attach: output from now on, until the container ends (the pod's
    // deletion below), when kubectl exits cleanly.
    let mut attached = s
        .kubectl_cmd(&["attach", "ticker"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let out = attached
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    // Read to the end: a closed pipe would fail kubectl's next write.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if l.starts_with("tick ") {
                let _ = tx.send(l);
            }
        }
    });
    let lines = tokio::task::spawn_blocking(move || rx.iter().take(2).collect::<Vec<String>>());
    let lines = tokio::time::timeout(PATIENCE, lines).await??;
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_ne!(
        lines[0], "tick 0",
        "attach starts at the present: {lines:?}"
    );
    let err = s.kubectl_err(&["attach", "-i", "ticker"], None)?;
    assert!(err.contains("has no stdin to attach to"), "{err}");

    let describe = s.kubectl(&["describe", "pod", "ticker"])?;
    for needle in ["Started", "Pulled", "Scheduled", "Running"] {
        assert!(
            describe.contains(needle),
            "describe lacks {needle}:\n{describe}"
        );
    }

    s.kubectl(&["delete", "pod", "ticker", "--wait=true"])?;
    let err = s.kubectl_err(&["get", "pod", "ticker"], None)?;
    assert!(err.contains("NotFound"), "{err}");
    let ended = tokio::task::spawn_blocking(move || attached.wait());
    let ended = tokio::time::timeout(PATIENCE, ended).await???;
    assert!(ended.success(), "kubectl attach ended with {ended}");
    Ok(())
}

#[tokio::test]
async fn a_spinning_guest_does_not_stop_a_neighbour() -> anyhow::Result<()> {
    let s = Server::up(&[])?;
    let pods: Api<Pod> = Api::namespaced(s.client().await?, "default");
    // Spinners with no CPU limit, more of them than the node has cores.
    let spin = sample("spinner")?;
    for i in 0..4 {
        s.kubectl_in(
            &["apply", "-f", "-"],
            Some(&pod_yaml(&format!("spin-{i}"), &spin, "", "")),
        )?;
    }
    let capped = pod_yaml(
        "spin-capped",
        &spin,
        "",
        "    resources:\n      limits:\n        cpu: 100m\n",
    );
    s.kubectl_in(&["apply", "-f", "-"], Some(&capped))?;
    for i in 0..4 {
        wait_running(&pods, &format!("spin-{i}")).await?;
    }
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&pod_yaml("ticker", &sample("ticker")?, "", "")),
    )?;
    wait_running(&pods, "ticker").await?;
    // A second apart each: three lines means the ticker got the CPU it
    // needed, repeatedly, while the spinners spun.
    wait_logs(&s, &["ticker"], "tick 2\n").await?;
    // The API server (same process) still answers, too.
    let listed = s.kubectl(&["get", "pods"])?;
    assert!(listed.contains("spin-capped"), "{listed}");
    // A running guest that never wrote has an empty log, not a missing one.
    assert_eq!(s.kubectl(&["logs", "spin-0"])?, "");
    wait_for("spinners to be deleted", PATIENCE, || async {
        s.kubectl(&["delete", "pods", "--all", "--wait=true"]).ok()
    })
    .await?;
    Ok(())
}

/// Serves one file over plain HTTP on loopback, for image pulls.
fn serve_file(bytes: Vec<u8>) -> anyhow::Result<u16> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/wasm\r\nConnection: close\r\n\r\n",
                bytes.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&bytes);
        }
    });
    Ok(port)
}

#[tokio::test]
async fn images_over_http_are_pulled_and_verified() -> anyhow::Result<()> {
    use sha2::Digest;
    let s = Server::up(&[])?;
    let pods: Api<Pod> = Api::namespaced(s.client().await?, "default");
    let path = sample("ticker")?.trim_start_matches("file://").to_string();
    let bytes = std::fs::read(&path)?;
    let digest: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let port = serve_file(bytes)?;
    let image = format!("http://127.0.0.1:{port}/ticker.wasm@sha256:{digest}");
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&pod_yaml("fetched", &image, "", "")),
    )?;
    let p = wait_running(&pods, "fetched").await?;
    let id = super::first_container(&p)
        .map(|c| c.image_id.clone())
        .unwrap_or_default();
    assert_eq!(id, format!("sha256:{digest}"));
    wait_logs(&s, &["fetched"], "tick 0\n").await?;
    Ok(())
}

#[tokio::test]
async fn attach_feeds_a_wasm_guests_stdin() -> anyhow::Result<()> {
    let s = Server::up(&[])?;
    let pods: Api<Pod> = Api::namespaced(s.client().await?, "default");
    let echo = sample("echo")?;
    // Without stdinOnce the input stays open between attaches.
    let yaml = |name: &str, once: bool| {
        pod_yaml(
            name,
            &echo,
            "  restartPolicy: Never\n",
            &format!("    stdin: true\n    stdinOnce: {once}\n"),
        )
    };
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&format!(
            "{}---\n{}",
            yaml("once", true),
            yaml("kept", false)
        )),
    )?;
    wait_running(&pods, "once").await?;
    wait_running(&pods, "kept").await?;

    // stdinOnce: the guest sees the end of its input when kubectl's ends,
    // echoes it all, exits, and kubectl returns with it.
    let out = s.kubectl_in(&["attach", "-i", "once"], Some("hello\nfrom stdin\n"))?;
    assert_eq!(out, "hello\nfrom stdin\n");
    wait_logs(&s, &["once"], "hello\nfrom stdin\n").await?;
    wait_for("the guest to finish", PATIENCE, || async {
        let p = pods.get("once").await.ok()?;
        (p.status?.phase.as_deref() == Some("Succeeded")).then_some(())
    })
    .await?;

    // Input from two attaches in turn, the guest still running between.
    let kept = |text: &'static str| {
        let s = &s;
        async move {
            let mut child = s
                .kubectl_cmd(&["attach", "-i", "kept"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            if let Some(mut pipe) = child.stdin.take() {
                use std::io::Write;
                pipe.write_all(text.as_bytes())?;
            }
            anyhow::Ok(child)
        }
    };
    let mut first = kept("one\n").await?;
    wait_logs(&s, &["kept"], "one\n").await?;
    let _ = first.kill();
    let _ = first.wait();
    let mut second = kept("two\n").await?;
    wait_logs(&s, &["kept"], "one\ntwo\n").await?;
    let _ = second.kill();
    let _ = second.wait();
    assert_eq!(
        pods.get("kept")
            .await?
            .status
            .and_then(|s| s.phase)
            .as_deref(),
        Some("Running")
    );
    Ok(())
}
