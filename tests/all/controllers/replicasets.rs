//! ReplicaSets adopt matching orphans and release pods that stop
//! matching; bad specs are refused with the field named.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use shoal_tests::{pod_yaml, sample, wait_for, Server};

use super::{app_pods, is_ready, PATIENCE};

fn rs_yaml(name: &str, replicas: &str, selector_app: &str, label_app: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {selector_app}}}
  template:
    metadata:
      labels: {{app: {label_app}}}
    spec:
      containers:
      - name: main
        image: {image}
"
    )
}

#[tokio::test]
async fn adopts_orphans_and_releases_pods_that_stop_matching() -> anyhow::Result<()> {
    let s = Server::up(&[])?;
    let pods: Api<Pod> = Api::namespaced(s.client().await?, "default");
    let ticker = sample("ticker")?;
    let stray = pod_yaml("stray", &ticker, "", "").replace(
        "metadata:\n  name: stray\n",
        "metadata:\n  name: stray\n  labels: {app: rs1}\n",
    );
    s.kubectl_in(&["apply", "-f", "-"], Some(&stray))?;
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&rs_yaml("rs1", "2", "rs1", "rs1", &ticker)),
    )?;

    // The orphan counts as one of the two.
    let two = wait_for("rs1 to own two ready pods", PATIENCE, || async {
        let list = app_pods(&pods, "rs1").await.ok()?;
        let owned = list
            .iter()
            .filter(|p| {
                p.metadata
                    .owner_references
                    .as_ref()
                    .is_some_and(|r| r.iter().any(|r| r.name == "rs1"))
            })
            .count();
        (list.len() == 2 && owned == 2 && list.iter().all(is_ready)).then_some(list)
    })
    .await?;
    assert!(
        two.iter()
            .any(|p| p.metadata.name.as_deref() == Some("stray")),
        "the orphan was not adopted"
    );

    // Relabelled, it is released and replaced.
    s.kubectl(&["label", "pod", "stray", "app=other", "--overwrite"])?;
    wait_for("rs1 to replace the released pod", PATIENCE, || async {
        let list = app_pods(&pods, "rs1").await.ok()?;
        (list.len() == 2
            && list.iter().all(is_ready)
            && list
                .iter()
                .all(|p| p.metadata.name.as_deref() != Some("stray")))
        .then_some(())
    })
    .await?;
    let released = pods.get("stray").await?;
    assert!(released
        .metadata
        .owner_references
        .as_ref()
        .is_none_or(|r| r.is_empty()));
    assert!(is_ready(&released), "a released pod keeps running");

    // Bad input: 422 naming the field; nothing is stored.
    let err = s.kubectl_err(
        &["apply", "-f", "-"],
        Some(&rs_yaml("bad1", "2", "a", "b", &ticker)),
    )?;
    assert!(
        err.contains("selector") && err.contains("does not match template"),
        "{err}"
    );
    let err = s.kubectl_err(
        &["apply", "-f", "-"],
        Some(&rs_yaml("bad2", "-1", "a", "a", &ticker)),
    )?;
    assert!(err.contains("spec.replicas"), "{err}");
    let zero = super::deployment_yaml(
        "bad3",
        1,
        &ticker,
        "",
        "  strategy:\n    rollingUpdate: {maxSurge: 0, maxUnavailable: 0}\n",
    );
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(&zero))?;
    assert!(err.contains("maxUnavailable"), "{err}");
    let cron = format!("apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: bad4\nspec:\n  schedule: \"61 * * * *\"\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers:\n          - name: main\n            image: {ticker}\n");
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(&cron))?;
    assert!(err.contains("spec.schedule"), "{err}");
    let job = format!("apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: bad5\nspec:\n  completionMode: Sometimes\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: main\n        image: {ticker}\n");
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(&job))?;
    assert!(err.contains("spec.completionMode"), "{err}");
    let listed = s.kubectl(&["get", "rs,deploy,cronjob,job", "-o", "name"])?;
    assert!(!listed.contains("bad"), "{listed}");
    Ok(())
}
