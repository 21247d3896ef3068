//! `kubectl top`: CPU and memory measured on the node, served by the API
//! server as `metrics.k8s.io`.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use serde_json::Value;
use shoal_tests::{pod_yaml, sample, wait_for, Server, UP_NODE};

use super::{wait_running, PATIENCE};

/// The CPU column of `kubectl top pod NAME --no-headers`, in millicores.
fn millicores(top: &str) -> Option<u64> {
    top.split_whitespace()
        .nth(1)?
        .strip_suffix('m')?
        .parse()
        .ok()
}

#[tokio::test]
async fn kubectl_top_shows_what_pods_use() -> anyhow::Result<()> {
    let s = Server::up(&[])?;
    let pods: Api<Pod> = Api::namespaced(s.client().await?, "default");
    let capped = "    resources:\n      limits:\n        cpu: 300m\n";
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&pod_yaml("spin", &sample("spinner")?, "", capped)),
    )?;
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&pod_yaml("idle", &sample("ticker")?, "", "")),
    )?;
    s.kubectl(&["label", "pod", "spin", "app=busy"])?;
    wait_running(&pods, "spin").await?;
    wait_running(&pods, "idle").await?;

    // A spinning guest uses CPU, up to its limit; a ticker almost none.
    let spin = wait_for("the spinner's CPU in kubectl top", PATIENCE, || async {
        let top = s.kubectl(&["top", "pod", "spin", "--no-headers"]).ok()?;
        millicores(&top).filter(|m| *m >= 20)
    })
    .await?;
    let idle = millicores(&s.kubectl(&["top", "pod", "idle", "--no-headers"])?)
        .ok_or_else(|| anyhow::anyhow!("no CPU figure for idle"))?;
    assert!(idle < spin, "idle {idle}m, spin {spin}m");
    let busy = s.kubectl(&["top", "pods", "-l", "app=busy", "--no-headers"])?;
    assert!(busy.contains("spin") && !busy.contains("idle"), "{busy}");
    let containers = s.kubectl(&["top", "pod", "spin", "--containers", "--no-headers"])?;
    assert!(containers.contains("main"), "{containers}");
    let node = s.kubectl(&["top", "node", "--no-headers"])?;
    assert!(node.starts_with(UP_NODE), "{node}");

    // The objects themselves, as metrics-server writes them.
    let raw = s.kubectl(&[
        "get",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/spin",
    ])?;
    let pm: Value = serde_json::from_str(&raw)?;
    assert_eq!(pm["kind"], "PodMetrics");
    assert_eq!(pm["metadata"]["labels"]["app"], "busy");
    assert_eq!(pm["containers"][0]["name"], "main");
    let cpu = pm["containers"][0]["usage"]["cpu"]
        .as_str()
        .unwrap_or_default();
    assert!(cpu.ends_with('n'), "{pm}");
    assert!(
        pm["window"].as_str().is_some_and(|w| w.ends_with('s')),
        "{pm}"
    );

    // Read-only, and only for pods that run.
    let err = s.kubectl_err(&["delete", "podmetrics", "spin"], None)?;
    assert!(
        err.contains("MethodNotAllowed") || err.contains("not allowed"),
        "{err}"
    );
    let err = s.kubectl_err(&["top", "pod", "nope"], None)?;
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
    s.kubectl(&["delete", "pod", "spin", "--wait=true"])?;
    let left = s.kubectl(&["top", "pods", "--no-headers"])?;
    assert!(!left.contains("spin") && left.contains("idle"), "{left}");
    Ok(())
}
