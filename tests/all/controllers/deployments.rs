//! Deployments: scale 3 → 50 → 0, a deleted pod replaced, a rolling update
//! that never drops below the wanted availability, a broken image that
//! stalls until `rollout undo`, pause/resume/restart, and automatic
//! rollback past the progress deadline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;
use shoal_tests::{sample, wait_for, Server};

use super::{
    app_pods, deployment_yaml, image_copy, image_of, is_ready, wait_deployment, wait_ready_pods,
    PATIENCE,
};

fn container_image(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn scale_up_down_and_replace_a_deleted_pod() -> anyhow::Result<()> {
    let s = Server::up(&[])?;
    let client = s.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deploys: Api<Deployment> = Api::namespaced(client, "default");
    let yaml = deployment_yaml("web", 3, &sample("ticker")?, "", "");
    s.kubectl_in(&["apply", "-f", "-"], Some(&yaml))?;
    let out = s.kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"])?;
    assert!(out.contains("successfully rolled out"), "{out}");
    let three = wait_ready_pods(&pods, "web", 3).await?;

    // Self-healing: a deleted pod is replaced by a new one.
    let victim = three[0].metadata.name.clone().unwrap_or_default();
    s.kubectl(&["delete", "pod", &victim, "--wait=false"])?;
    let after = wait_ready_pods(&pods, "web", 3).await?;
    assert!(
        after
            .iter()
            .all(|p| p.metadata.name.as_deref() != Some(&victim)),
        "{victim} is still counted"
    );

    s.kubectl(&["scale", "deployment", "web", "--replicas=50"])?;
    let out = s.kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"])?;
    assert!(out.contains("successfully rolled out"), "{out}");
    wait_ready_pods(&pods, "web", 50).await?;
    let table = s.kubectl(&["get", "deployment", "web"])?;
    assert!(table.contains("50/50"), "{table}");

    s.kubectl(&["scale", "deployment", "web", "--replicas=0"])?;
    wait_for("web scaled to zero", PATIENCE, || async {
        app_pods(&pods, "web").await.ok()?.is_empty().then_some(())
    })
    .await?;
    let d = wait_deployment(&deploys, "web", "to report 0 replicas", |d| {
        d.status.as_ref().and_then(|s| s.replicas) == Some(0)
    })
    .await?;
    assert_eq!(d.spec.and_then(|s| s.replicas), Some(0));

    let described = s.kubectl(&["describe", "deployment", "web"])?;
    for needle in ["ScalingReplicaSet", "from 3 to 50", "from 50 to 0"] {
        assert!(
            described.contains(needle),
            "{needle} missing in\n{described}"
        );
    }
    let rs_events = s.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "reason=SuccessfulCreate",
    ])?;
    assert!(rs_events.contains("Created pod: web-"), "{rs_events}");
    Ok(())
}

/// Counts, every few milliseconds until stopped, the app's Ready pods
/// that are not being deleted; returns the smallest count seen.
fn watch_availability(
    pods: Api<Pod>,
    app: &'static str,
) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<usize>) {
    let stop = Arc::new(AtomicUsize::new(0));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let mut min = usize::MAX;
        while flag.load(Ordering::SeqCst) == 0 {
            if let Ok(list) = app_pods(&pods, app).await {
                min = min.min(list.iter().filter(|p| is_ready(p)).count());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        min
    });
    (stop, task)
}

#[tokio::test]
async fn rolling_update_rollback_pause_and_restart() -> anyhow::Result<()> {
    let s = Server::up(&[])?;
    let client = s.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let deploys: Api<Deployment> = Api::namespaced(client, "default");
    let v1 = sample("ticker")?;
    let v2 = image_copy(&s, &v1, "ticker-v2.wasm")?;
    let strategy = "  progressDeadlineSeconds: 3\n  strategy:\n    type: RollingUpdate\n    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}\n";
    let yaml = deployment_yaml("web", 4, &v1, "", strategy);
    s.kubectl_in(&["apply", "-f", "-"], Some(&yaml))?;
    s.kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"])?;
    wait_ready_pods(&pods, "web", 4).await?;

    // v1 → v2 with maxUnavailable 0: four pods stay Ready throughout.
    let (stop, watcher) = watch_availability(pods.clone(), "web");
    s.kubectl(&["set", "image", "deployment/web", &format!("main={v2}")])?;
    let out = s.kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"])?;
    stop.store(1, Ordering::SeqCst);
    let min_ready = watcher.await?;
    assert!(out.contains("successfully rolled out"), "{out}");
    assert!(
        min_ready >= 4,
        "availability dropped to {min_ready} during the rollout"
    );
    let now = wait_ready_pods(&pods, "web", 4).await?;
    assert!(
        now.iter().all(|p| container_image(p) == v2),
        "not all pods run v2"
    );

    // A broken image stalls: the new pods never become ready, the old
    // ones stay, and rollout status reports the deadline.
    s.kubectl(&[
        "set",
        "image",
        "deployment/web",
        "main=file:///nonexistent/broken.wasm",
    ])?;
    let err = s.kubectl_err(
        &["rollout", "status", "deployment/web", "--timeout=60s"],
        None,
    )?;
    assert!(err.contains("exceeded its progress deadline"), "{err}");
    let list = app_pods(&pods, "web").await?;
    let ready_v2 = list
        .iter()
        .filter(|p| is_ready(p) && container_image(p) == v2)
        .count();
    assert_eq!(
        ready_v2, 4,
        "old ready pods were taken down by a broken rollout"
    );
    let d = deploys.get("web").await?;
    let cond = d.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(
        cond.iter().any(|c| c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")),
        "{cond:?}"
    );

    // Undo brings v2 back and the broken ReplicaSet goes to zero.
    s.kubectl(&["rollout", "undo", "deployment/web"])?;
    let out = s.kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"])?;
    assert!(out.contains("successfully rolled out"), "{out}");
    assert_eq!(image_of(&deploys.get("web").await?), v2);
    wait_for("the broken replicaset to be empty", PATIENCE, || async {
        let all = sets
            .list(&ListParams::default().labels("app=web"))
            .await
            .ok()?;
        let broken = all.items.iter().find(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .and_then(|t| t.spec.as_ref())
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.as_deref())
                == Some("file:///nonexistent/broken.wasm")
        })?;
        (broken.status.as_ref().map(|s| s.replicas) == Some(0)).then_some(())
    })
    .await?;
    let history = s.kubectl(&["rollout", "history", "deployment/web"])?;
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(revisions, ["1", "3", "4"], "{history}");

    // --to-revision=1 goes back to v1.
    s.kubectl(&["rollout", "undo", "deployment/web", "--to-revision=1"])?;
    s.kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"])?;
    assert_eq!(image_of(&deploys.get("web").await?), v1);

    // Paused: a template change waits; resumed: it rolls out.
    let sets_before = sets
        .list(&ListParams::default().labels("app=web"))
        .await?
        .items
        .len();
    s.kubectl(&["rollout", "pause", "deployment/web"])?;
    s.kubectl(&["set", "image", "deployment/web", &format!("main={v2}")])?;
    wait_deployment(&deploys, "web", "to observe the paused change", |d| {
        d.status.as_ref().and_then(|s| s.observed_generation) == d.metadata.generation
    })
    .await?;
    let while_paused = app_pods(&pods, "web").await?;
    assert!(
        while_paused.iter().all(|p| container_image(p) == v1),
        "a paused deployment rolled"
    );
    s.kubectl(&["rollout", "resume", "deployment/web"])?;
    s.kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"])?;
    let now = wait_ready_pods(&pods, "web", 4).await?;
    assert!(now.iter().all(|p| container_image(p) == v2));
    assert_eq!(
        sets.list(&ListParams::default().labels("app=web"))
            .await?
            .items
            .len(),
        sets_before
    );

    // restart replaces every pod with a fresh one.
    let before: Vec<String> = now.iter().filter_map(|p| p.metadata.name.clone()).collect();
    s.kubectl(&["rollout", "restart", "deployment/web"])?;
    s.kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"])?;
    let fresh = wait_ready_pods(&pods, "web", 4).await?;
    assert!(fresh
        .iter()
        .all(|p| !before.contains(&p.metadata.name.clone().unwrap_or_default())));
    Ok(())
}

#[tokio::test]
async fn auto_rollback_after_the_progress_deadline() -> anyhow::Result<()> {
    let s = Server::up(&[])?;
    let client = s.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deploys: Api<Deployment> = Api::namespaced(client, "default");
    let v1 = sample("ticker")?;
    let meta = "  annotations:\n    shoal.dev/auto-rollback: \"true\"\n";
    let yaml = deployment_yaml("edge", 2, &v1, meta, "");
    s.kubectl_in(&["apply", "-f", "-"], Some(&yaml))?;
    s.kubectl(&["rollout", "status", "deployment/edge", "--timeout=90s"])?;
    // A short deadline only now: the first rollout compiles the module,
    // which on a loaded machine may take longer than 2 s.
    s.kubectl(&[
        "patch",
        "deployment",
        "edge",
        "--type=merge",
        "-p",
        r#"{"spec":{"progressDeadlineSeconds":2}}"#,
    ])?;

    s.kubectl(&[
        "set",
        "image",
        "deployment/edge",
        "main=file:///nonexistent/broken.wasm",
    ])?;
    wait_deployment(&deploys, "edge", "to be rolled back to v1", |d| {
        image_of(d) == v1
    })
    .await?;
    let out = s.kubectl(&["rollout", "status", "deployment/edge", "--timeout=90s"])?;
    assert!(out.contains("successfully rolled out"), "{out}");
    let ready = wait_ready_pods(&pods, "edge", 2).await?;
    assert!(ready.iter().all(|p| container_image(p) == v1));
    let described = s.kubectl(&["describe", "deployment", "edge"])?;
    assert!(described.contains("DeploymentRollback"), "{described}");
    assert!(
        described.contains("ProgressDeadlineExceeded"),
        "{described}"
    );
    Ok(())
}

#[tokio::test]
async fn recreate_stops_every_old_pod_before_starting_new_ones() -> anyhow::Result<()> {
    let s = Server::up(&[])?;
    let pods: Api<Pod> = Api::namespaced(s.client().await?, "default");
    let v1 = sample("ticker")?;
    let v2 = image_copy(&s, &v1, "ticker-v2.wasm")?;
    let yaml = deployment_yaml("batch", 3, &v1, "", "  strategy:\n    type: Recreate\n");
    s.kubectl_in(&["apply", "-f", "-"], Some(&yaml))?;
    s.kubectl(&["rollout", "status", "deployment/batch", "--timeout=90s"])?;
    // Watch every pod event of the rollout: no v2 pod may appear while a
    // v1 pod still exists.
    let rv = pods
        .list_metadata(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut stream = pods
        .watch(&kube::api::WatchParams::default().labels("app=batch"), &rv)
        .await?
        .boxed();
    // The v1 pods, listed before the change: listed after it, a fast
    // controller's first v2 pod could be among them.
    let mut old: std::collections::HashSet<String> = app_pods(&pods, "batch")
        .await?
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    s.kubectl(&["set", "image", "deployment/batch", &format!("main={v2}")])?;
    let mut new_ready = std::collections::HashSet::new();
    while new_ready.len() < 3 {
        let ev =
            tokio::time::timeout(PATIENCE, futures::TryStreamExt::try_next(&mut stream)).await??;
        match ev {
            Some(kube::api::WatchEvent::Added(p)) | Some(kube::api::WatchEvent::Modified(p)) => {
                let name = p.metadata.name.clone().unwrap_or_default();
                if container_image(&p) == v2 {
                    assert!(
                        old.is_empty(),
                        "{name} appeared while {old:?} were still there"
                    );
                    if is_ready(&p) {
                        new_ready.insert(name);
                    }
                }
            }
            Some(kube::api::WatchEvent::Deleted(p)) => {
                old.remove(p.metadata.name.as_deref().unwrap_or_default());
            }
            Some(_) => {}
            None => anyhow::bail!("watch ended"),
        }
    }
    s.kubectl(&["rollout", "status", "deployment/batch", "--timeout=90s"])?;
    Ok(())
}
