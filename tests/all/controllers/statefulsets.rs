//! StatefulSets: stable names created in order, each after the previous
//! is Ready; scale-down from the highest ordinal; rolling update from the
//! top; Parallel creates at once.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::Api;
use shoal_tests::{sample, wait_for, Server};

use super::{
    history_rows, image_copy, is_ready, undo_to_image, wait_ready_pods, workload_yaml, PATIENCE,
};

fn sts_yaml(name: &str, replicas: i32, image: &str, policy: &str) -> String {
    let spec =
        format!("  serviceName: {name}\n  replicas: {replicas}\n  podManagementPolicy: {policy}\n");
    workload_yaml("StatefulSet", name, image, "", &spec, "")
}

#[tokio::test]
async fn ordered_names_scale_down_and_update() -> anyhow::Result<()> {
    let s = Server::up(&[])?;
    let pods: Api<Pod> = Api::namespaced(s.client().await?, "default");
    let v1 = sample("ticker")?;
    let rv = pods
        .list_metadata(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut events = pods
        .watch(&WatchParams::default().labels("app=db"), &rv)
        .await?
        .boxed();
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&sts_yaml("db", 3, &v1, "OrderedReady")),
    )?;
    // Every pod is created only once all lower ordinals are Ready.
    let mut ready: BTreeMap<String, bool> = BTreeMap::new();
    let mut created = Vec::new();
    while ready.len() < 3 || ready.values().any(|r| !r) {
        let ev = tokio::time::timeout(PATIENCE, events.try_next()).await??;
        let (p, added) = match ev {
            Some(WatchEvent::Added(p)) => (p, true),
            Some(WatchEvent::Modified(p)) => (p, false),
            Some(_) => continue,
            None => anyhow::bail!("watch ended"),
        };
        let name = p.metadata.name.clone().unwrap_or_default();
        if added {
            let ordinal: usize = name.trim_start_matches("db-").parse()?;
            for lower in 0..ordinal {
                assert_eq!(
                    ready.get(&format!("db-{lower}")),
                    Some(&true),
                    "{name} created before db-{lower} was ready"
                );
            }
            created.push(name.clone());
        }
        ready.insert(name, is_ready(&p));
    }
    assert_eq!(created, ["db-0", "db-1", "db-2"]);
    let db0 = pods.get("db-0").await?;
    assert_eq!(
        db0.spec.as_ref().and_then(|s| s.hostname.as_deref()),
        Some("db-0")
    );
    assert_eq!(
        db0.spec.as_ref().and_then(|s| s.subdomain.as_deref()),
        Some("db")
    );

    // Scale down: the highest ordinal goes first.
    s.kubectl(&["scale", "statefulset", "db", "--replicas=1"])?;
    let mut order = Vec::new();
    while order.len() < 2 {
        let ev = tokio::time::timeout(PATIENCE, events.try_next()).await??;
        if let Some(WatchEvent::Modified(p)) | Some(WatchEvent::Deleted(p)) = ev {
            let name = p.metadata.name.clone().unwrap_or_default();
            if p.metadata.deletion_timestamp.is_some() && !order.contains(&name) {
                order.push(name);
            }
        }
    }
    assert_eq!(order, ["db-2", "db-1"]);
    wait_ready_pods(&pods, "db", 1).await?;

    // A rolling update replaces pods from the top, ending with all on v2.
    s.kubectl(&["scale", "statefulset", "db", "--replicas=3"])?;
    wait_ready_pods(&pods, "db", 3).await?;
    let v2 = image_copy(&s, &v1, "ticker-v2.wasm")?;
    s.kubectl(&["set", "image", "statefulset/db", &format!("main={v2}")])?;
    let out = s.kubectl(&["rollout", "status", "statefulset/db", "--timeout=90s"])?;
    assert!(
        out.contains("complete") || out.contains("rolling update complete"),
        "{out}"
    );
    let now = wait_ready_pods(&pods, "db", 3).await?;
    for p in &now {
        let image = p
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone());
        assert_eq!(image.as_deref(), Some(v2.as_str()), "{:?}", p.metadata.name);
    }

    // Parallel: all at once, no waiting on each other.
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&sts_yaml("cache", 3, &v1, "Parallel")),
    )?;
    let names = wait_for("three cache pods", PATIENCE, || async {
        let list = pods
            .list(&ListParams::default().labels("app=cache"))
            .await
            .ok()?;
        let mut names: Vec<String> = list
            .items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        names.sort();
        (names.len() == 3).then_some(names)
    })
    .await?;
    assert_eq!(names, ["cache-0", "cache-1", "cache-2"]);
    Ok(())
}

fn image_of(p: &Pod) -> Option<String> {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
}

/// A partitioned update stops at the partition; a pod recreated below it
/// comes back on the current revision's template, which only the
/// StatefulSet's ControllerRevisions still hold; `kubectl rollout history`
/// lists them and `kubectl rollout undo` puts the previous one back.
#[tokio::test]
async fn partition_keeps_history_and_undo_restores() -> anyhow::Result<()> {
    let s = Server::up(&[])?;
    let client = s.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let v1 = sample("ticker")?;
    let spec = "  serviceName: web\n  replicas: 3\n  podManagementPolicy: Parallel\n  updateStrategy:\n    type: RollingUpdate\n    rollingUpdate: {partition: 2}\n";
    s.kubectl_in(
        &["apply", "-f", "-"],
        Some(&workload_yaml("StatefulSet", "web", &v1, "", spec, "")),
    )?;
    wait_ready_pods(&pods, "web", 3).await?;
    let v2 = image_copy(&s, &v1, "ticker-v2.wasm")?;
    s.kubectl(&["set", "image", "statefulset/web", &format!("main={v2}")])?;
    let out = s.kubectl(&["rollout", "status", "statefulset/web", "--timeout=90s"])?;
    assert!(out.contains("partitioned roll out complete"), "{out}");
    let images = |list: &[Pod]| -> BTreeMap<String, Option<String>> {
        list.iter()
            .map(|p| (p.metadata.name.clone().unwrap_or_default(), image_of(p)))
            .collect()
    };
    let now = wait_ready_pods(&pods, "web", 3).await?;
    let want: BTreeMap<String, Option<String>> = [
        ("web-0".to_string(), Some(v1.clone())),
        ("web-1".to_string(), Some(v1.clone())),
        ("web-2".to_string(), Some(v2.clone())),
    ]
    .into();
    assert_eq!(images(&now), want, "the update stops at the partition");

    // web-0 deleted: it comes back, on v1 still. kubectl's own wait for
    // the deletion returns each time, though the set makes web-0 again
    // within milliseconds (see controllers/statefulset_handoff.rs).
    for round in 0..5 {
        let old_uid = pods.get("web-0").await?.metadata.uid;
        s.kubectl(&["delete", "pod", "web-0", "--timeout=60s"])
            .map_err(|e| anyhow::anyhow!("round {round}: {e}"))?;
        let back = wait_for("web-0 recreated and Ready", PATIENCE, || async {
            let p = pods.get("web-0").await.ok()?;
            (p.metadata.uid != old_uid && is_ready(&p)).then_some(p)
        })
        .await?;
        assert_eq!(
            image_of(&back),
            Some(v1.clone()),
            "recreated below the partition"
        );
    }

    // Two revisions, the newest holding v2.
    let revs: Api<k8s_openapi::api::apps::v1::ControllerRevision> =
        Api::namespaced(client.clone(), "default");
    let mut list = revs
        .list(&ListParams::default().labels("app=web"))
        .await?
        .items;
    list.sort_by_key(|r| r.revision);
    let numbers: Vec<i64> = list.iter().map(|r| r.revision).collect();
    assert_eq!(numbers, [1, 2]);
    let newest = list.last().and_then(|r| r.data.clone()).map(|d| d.0);
    assert_eq!(
        newest
            .as_ref()
            .and_then(|d| d.pointer("/spec/template/spec/containers/0/image"))
            .and_then(|i| i.as_str()),
        Some(v2.as_str())
    );
    assert_eq!(history_rows(&s, "statefulset/web")?, [1, 2]);

    // Undo: the template is v1 again, and its revision is now the newest.
    assert_eq!(undo_to_image(&s, "statefulset", "web")?, v1);
    let renumbered = wait_for("v1's revision renumbered", PATIENCE, || async {
        let list = revs
            .list(&ListParams::default().labels("app=web"))
            .await
            .ok()?;
        list.items
            .iter()
            .find(|r| {
                r.data
                    .as_ref()
                    .and_then(|d| d.0.pointer("/spec/template/spec/containers/0/image"))
                    .and_then(|i| i.as_str())
                    == Some(v1.as_str())
            })
            .filter(|r| r.revision == 3)
            .map(|r| r.revision)
    })
    .await?;
    assert_eq!(renumbered, 3);
    Ok(())
}
