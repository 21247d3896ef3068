//! The Rust samples, as WASI preview-1 modules and WASI 0.2 command
//! components, built from source by scripts/build-samples.sh.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use shoal_tests::{pod_yaml, rust_sample, Server};

use super::{phase, terminated, wait_logs, wait_pod, wait_running};

fn last_exit(p: &Pod) -> Option<i32> {
    super::first_container(p)?
        .last_state
        .as_ref()?
        .terminated
        .as_ref()
        .map(|t| t.exit_code)
}

#[tokio::test]
async fn rust_modules_and_components_run() -> anyhow::Result<()> {
    let mut images = Vec::new();
    for kind in ["p1", "p2"] {
        for name in ["hello", "ticker", "crasher", "hog", "config-reader"] {
            match rust_sample(kind, name)? {
                Some(url) => images.push((kind, name, url)),
                None => return Ok(()),
            }
        }
    }
    let image = |kind: &str, name: &str| {
        images
            .iter()
            .find(|(k, n, _)| *k == kind && *n == name)
            .map(|(_, _, u)| u.clone())
            .unwrap_or_default()
    };
    let s = Server::up(&[])?;
    let pods: Api<Pod> = Api::namespaced(s.client().await?, "default");
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  colour: blue\n  size: large\n"),
    )?;
    for kind in ["p1", "p2"] {
        // Files in mounted directories are read by the p1 build only:
        // Debian's 2022 wasi-libc looks for preopens in a constructor, before
        // the preview-1 adapter of a p2 build can answer, so it finds none.
        // The host's p2 filesystem is covered by the runtime's adapted-WAT test.
        let files = if kind == "p1" { "colour,size" } else { "" };
        let never = "  restartPolicy: Never\n";
        s.kubectl_in(&["apply", "-f", "-"], Some(&pod_yaml(&format!("hello-{kind}"), &image(kind, "hello"), never, "    args: [\"--greet\", \"$(WHO)\"]\n    env:\n    - name: WHO\n      value: world\n")))?;
        s.kubectl_in(
            &["apply", "-f", "-"],
            Some(&pod_yaml(
                &format!("ticker-{kind}"),
                &image(kind, "ticker"),
                "",
                "",
            )),
        )?;
        s.kubectl_in(
            &["apply", "-f", "-"],
            Some(&pod_yaml(
                &format!("crasher-{kind}"),
                &image(kind, "crasher"),
                "",
                "",
            )),
        )?;
        s.kubectl_in(
            &["apply", "-f", "-"],
            Some(&pod_yaml(
                &format!("hog-{kind}"),
                &image(kind, "hog"),
                never,
                "    resources:\n      limits:\n        memory: 32Mi\n",
            )),
        )?;
        s.kubectl_in(
            &["apply", "-f", "-"],
            Some(&pod_yaml(
                &format!("config-{kind}"),
                &image(kind, "config-reader"),
                &format!("{never}  volumes:\n  - name: cfg\n    configMap:\n      name: app\n"),
                &format!("    env:\n    - name: CONFIG_DIR\n      value: /etc/app\n    - name: CONFIG_FILES\n      value: \"{files}\"\n    envFrom:\n    - configMapRef:\n        name: app\n    volumeMounts:\n    - name: cfg\n      mountPath: /etc/app\n"),
            )),
        )?;
    }
    for kind in ["p1", "p2"] {
        let hello = format!("hello-{kind}");
        wait_pod(&pods, &hello, "to succeed", |p| phase(p) == "Succeeded").await?;
        let out = s.kubectl(&["logs", &hello])?;
        assert!(
            out.contains(r#"argv: ["main", "--greet", "world"]"#),
            "{out}"
        );

        wait_running(&pods, &format!("ticker-{kind}")).await?;
        wait_logs(&s, &[&format!("ticker-{kind}")], "tick 1\n").await?;

        // A core module keeps its exit code; wasi:cli/run only says "failed".
        let want = if kind == "p1" { 3 } else { 1 };
        let p = wait_pod(
            &pods,
            &format!("crasher-{kind}"),
            "to crash and restart",
            |p| super::restarts(p) >= 1 && last_exit(p).is_some(),
        )
        .await?;
        assert_eq!(last_exit(&p), Some(want), "crasher-{kind}");

        let p = wait_pod(&pods, &format!("hog-{kind}"), "to be OOMKilled", |p| {
            phase(p) == "Failed"
        })
        .await?;
        assert_eq!(
            terminated(&p).and_then(|t| t.reason.clone()).as_deref(),
            Some("OOMKilled"),
            "hog-{kind}"
        );

        let config = format!("config-{kind}");
        wait_pod(&pods, &config, "to succeed", |p| phase(p) == "Succeeded").await?;
        let out = s.kubectl(&["logs", &config])?;
        let mut needles = vec!["colour=blue", "CONFIG_DIR=/etc/app"];
        if kind == "p1" {
            needles.extend(["colour: blue", "size: large"]);
        }
        for needle in needles {
            assert!(out.contains(needle), "{config} lacks {needle:?}:\n{out}");
        }
    }
    Ok(())
}
