//! Broken images and guests: each pod says why, in kubelet's words, and
//! nothing else on the node is disturbed.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use shoal_tests::{pod_yaml, sample, Server};

use super::{wait_pod, wait_running};

#[tokio::test]
async fn broken_images_and_guests_report_reasons() -> anyhow::Result<()> {
    let s = Server::up(&[])?;
    let pods: Api<Pod> = Api::namespaced(s.client().await?, "default");
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&pod_yaml("bystander", &sample("ticker")?, "", "")),
    )?;
    wait_running(&pods, "bystander").await?;

    let dir = tempfile::tempdir()?;
    let text = dir.path().join("readme.wasm");
    std::fs::write(&text, "this is not webassembly")?;
    let imports = dir.path().join("imports.wasm");
    std::fs::write(
        &imports,
        wat::parse_str(
            r#"(module (import "env" "launch_missiles" (func)) (memory (export "memory") 1) (func (export "_start")))"#,
        )?,
    )?;
    let trap = dir.path().join("trap.wasm");
    std::fs::write(
        &trap,
        wat::parse_str(
            r#"(module (memory (export "memory") 1) (func (export "_start") unreachable))"#,
        )?,
    )?;
    let ticker = sample("ticker")?;
    let cases: Vec<(&str, String, &[&str], &str)> = vec![
        (
            "not-wasm",
            format!("file://{}", text.display()),
            &["CreateContainerError"],
            "not a WebAssembly",
        ),
        (
            "bad-digest",
            format!("{ticker}@sha256:{}", "0".repeat(64)),
            &["ErrImagePull", "ImagePullBackOff"],
            "digest mismatch",
        ),
        (
            "missing",
            "file:///no/such/module.wasm".to_string(),
            &["ErrImagePull", "ImagePullBackOff"],
            "/no/such/module.wasm",
        ),
        (
            "unreachable",
            "http://127.0.0.1:1/module.wasm".to_string(),
            &["ErrImagePull", "ImagePullBackOff"],
            "127.0.0.1:1",
        ),
        (
            "bad-name",
            "Nginx:1.27".to_string(),
            &["InvalidImageName"],
            "lower-case",
        ),
        (
            "imports",
            format!("file://{}", imports.display()),
            &["CreateContainerError"],
            "launch_missiles",
        ),
    ];
    for (name, image, _, _) in &cases {
        s.kubectl_in(&["apply", "-f", "-"], Some(&pod_yaml(name, image, "", "")))?;
    }
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&pod_yaml(
            "trap",
            &format!("file://{}", trap.display()),
            "",
            "",
        )),
    )?;
    for (name, _, reasons, needle) in &cases {
        let p = wait_pod(&pods, name, &format!("to wait with {reasons:?}"), |p| {
            super::waiting(p)
                .is_some_and(|(r, m)| reasons.contains(&r.as_str()) && m.contains(needle))
        })
        .await?;
        assert_eq!(super::phase(&p), "Pending", "{name}");
        let describe = s.kubectl(&["describe", "pod", name])?;
        assert!(
            describe.contains(needle),
            "describe {name} lacks {needle}:\n{describe}"
        );
    }
    // A digest that fails keeps failing, as ImagePullBackOff.
    wait_pod(&pods, "bad-digest", "to back off", |p| {
        super::waiting(p).is_some_and(|(r, _)| r == "ImagePullBackOff")
    })
    .await?;
    // A trap at start-up is a crash: it restarts and says where it died.
    let p = wait_pod(&pods, "trap", "to crash-loop", |p| super::restarts(p) >= 2).await?;
    let msg = super::first_container(&p)
        .and_then(|c| c.last_state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .and_then(|t| t.message.clone())
        .unwrap_or_default();
    assert!(msg.contains("unreachable"), "{msg}");
    let events = s.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=not-wasm",
    ])?;
    assert!(events.contains("Failed"), "{events}");
    // The bystander never noticed.
    let p = wait_running(&pods, "bystander").await?;
    assert_eq!(super::restarts(&p), 0);
    super::wait_logs(&s, &["bystander"], "tick 2\n").await?;
    Ok(())
}
