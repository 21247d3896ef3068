//! HorizontalPodAutoscaler on CPU utilization: `kubectl autoscale` scales a
//! busy Deployment up to its maximum and an idle one back down.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::Api;
use shoal_tests::{sample, wait_for, Server};

use super::{workload_yaml, PATIENCE};

fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn condition(h: &HorizontalPodAutoscaler, type_: &str) -> Option<(String, String)> {
    h.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

#[tokio::test]
async fn cpu_utilization_scales_a_deployment_up_and_down() -> anyhow::Result<()> {
    let s = Server::up(&["--horizontal-pod-autoscaler-sync-period", "1s"])?;
    let client = s.client().await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client, "default");
    // A spinner uses its whole 100m limit: five times its 20m request.
    let mut manifest = workload_yaml(
        "Deployment",
        "busy",
        &sample("spinner")?,
        "",
        "  replicas: 1\n",
        "",
    );
    manifest.push_str(
        "        resources:\n          requests: {cpu: 20m}\n          limits: {cpu: 100m}\n",
    );
    s.kubectl_in(&["apply", "-f", "-"], Some(&manifest))?;
    s.kubectl(&[
        "autoscale",
        "deployment",
        "busy",
        "--cpu-percent=50",
        "--min=1",
        "--max=3",
    ])?;
    s.kubectl(&[
        "patch",
        "hpa",
        "busy",
        "--type=merge",
        "-p",
        r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":0}}}}"#,
    ])?;
    wait_for("busy scaled up to its maximum", PATIENCE, || async {
        let d = deployments.get("busy").await.ok()?;
        (replicas(&d) == 3).then_some(())
    })
    .await?;
    let h = wait_for("the autoscaler's status", PATIENCE, || async {
        let h = hpas.get("busy").await.ok()?;
        (condition(&h, "ScalingLimited")? == ("True".into(), "TooManyReplicas".into())).then_some(h)
    })
    .await?;
    assert_eq!(
        condition(&h, "ScalingActive"),
        Some(("True".into(), "ValidMetricFound".into()))
    );
    let table = s.kubectl(&["get", "hpa", "busy", "--no-headers"])?;
    let cols: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(cols.get(1), Some(&"Deployment/busy"), "{table}");
    let used: u32 = table
        .split("cpu: ")
        .nth(1)
        .and_then(|t| t.split('%').next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no utilization in {table}"))?;
    assert!(used > 50, "{table}");
    assert!(table.contains("%/50%"), "{table}");
    let events = s.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=HorizontalPodAutoscaler",
        "-o",
        "jsonpath={.items[*].message}",
    ])?;
    assert!(events.contains("New size: 3"), "{events}");

    // Idle now: back down to the minimum.
    let ticker = sample("ticker")?;
    s.kubectl(&["set", "image", "deployment/busy", &format!("main={ticker}")])?;
    wait_for("busy scaled down to its minimum", PATIENCE, || async {
        let d = deployments.get("busy").await.ok()?;
        (replicas(&d) == 1).then_some(())
    })
    .await?;

    // A target that does not exist: the autoscaler says so and waits.
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: ghost}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: ghost}
  maxReplicas: 2
",
        ),
    )?;
    wait_for("ghost's FailedGetScale", PATIENCE, || async {
        let h = hpas.get("ghost").await.ok()?;
        (condition(&h, "AbleToScale")? == ("False".into(), "FailedGetScale".into())).then_some(())
    })
    .await?;
    Ok(())
}
