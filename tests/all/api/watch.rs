//! Watches: kubectl's `-w`, resume by resourceVersion, 410 past
//! compaction, and selector-aware events.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use shoal_tests::Server;

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": "w"}},
        "spec": {"containers": [{"name": "c", "image": "file:///x.wasm"}]}}))
    .expect("valid pod")
}

#[tokio::test]
async fn kubectl_get_pods_watch_sees_events() -> anyhow::Result<()> {
    let s = Server::start()?;
    let c = s.client().await?;
    let pods: Api<Pod> = Api::namespaced(c, "default");
    pods.create(&PostParams::default(), &pod("before")).await?;
    let mut child = s
        .kubectl_cmd(&["get", "pods", "-w", "--request-timeout=60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let next_line = |seen: &mut Vec<String>| -> anyhow::Result<String> {
        let l = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| anyhow::anyhow!("kubectl printed nothing more; saw {seen:?}"))?;
        seen.push(l.clone());
        Ok(l)
    };
    // Header and the existing pod first.
    while !next_line(&mut seen)?.starts_with("before") {}
    pods.create(&PostParams::default(), &pod("during")).await?;
    while !next_line(&mut seen)?.starts_with("during") {}
    pods.delete("during", &Default::default()).await?;
    // The deletion shows as one more row for the pod.
    while !next_line(&mut seen)?.starts_with("during") {}
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen[0].starts_with("NAME") && seen[0].contains("STATUS"),
        "{seen:?}"
    );
    Ok(())
}

/// Creates an empty ConfigMap; returns the revision it was written at.
async fn create_cm(cms: &Api<ConfigMap>, name: &str) -> anyhow::Result<String> {
    let cm = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    let created = cms.create(&PostParams::default(), &cm).await?;
    Ok(created.metadata.resource_version.unwrap_or_default())
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version() -> anyhow::Result<()> {
    let s = Server::start()?;
    let c = s.client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    let rv = create_cm(&cms, "a").await?;
    create_cm(&cms, "b").await?;
    cms.patch(
        "a",
        &PatchParams::default(),
        &kube::api::Patch::Merge(json!({"data": {"x": "1"}})),
    )
    .await?;
    cms.delete("b", &Default::default()).await?;
    let events: Vec<_> = cms
        .watch(&WatchParams::default().timeout(2), &rv)
        .await?
        .take(3)
        .try_collect()
        .await?;
    let got: Vec<(String, String)> = events
        .iter()
        .map(|e| match e {
            WatchEvent::Added(o) => ("ADDED".into(), o.metadata.name.clone().unwrap_or_default()),
            WatchEvent::Modified(o) => (
                "MODIFIED".into(),
                o.metadata.name.clone().unwrap_or_default(),
            ),
            WatchEvent::Deleted(o) => (
                "DELETED".into(),
                o.metadata.name.clone().unwrap_or_default(),
            ),
            other => (format!("{other:?}"), String::new()),
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("ADDED".into(), "b".into()),
            ("MODIFIED".into(), "a".into()),
            ("DELETED".into(), "b".into())
        ]
    );
    Ok(())
}

#[tokio::test]
async fn compacted_history_answers_410_gone() -> anyhow::Result<()> {
    let s = Server::start_with(&["--watch-history", "5"])?;
    let c = s.client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    for i in 0..12 {
        create_cm(&cms, &format!("c{i}")).await?;
    }
    match cms.watch(&WatchParams::default(), "1").await {
        Err(kube::Error::Api(st)) => assert_eq!((st.code, st.reason.as_str()), (410, "Expired")),
        Ok(stream) => match stream.boxed().next().await {
            Some(Ok(WatchEvent::Error(e))) => assert_eq!(e.code, 410),
            other => panic!("expected 410 Gone, got {other:?}"),
        },
        Err(e) => panic!("expected 410 Gone, got {e}"),
    }
    Ok(())
}

#[tokio::test]
async fn selector_watch_sees_objects_enter_and_leave() -> anyhow::Result<()> {
    let s = Server::start()?;
    let c = s.client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    let rv = create_cm(&cms, "m").await?;
    let label = |v: &str| kube::api::Patch::Merge(json!({"metadata": {"labels": {"tier": v}}}));
    cms.patch("m", &PatchParams::default(), &label("gold"))
        .await?;
    cms.patch("m", &PatchParams::default(), &label("silver"))
        .await?;
    let events: Vec<_> = cms
        .watch(&WatchParams::default().labels("tier=gold").timeout(2), &rv)
        .await?
        .take(2)
        .try_collect()
        .await?;
    assert!(matches!(events[0], WatchEvent::Added(_)), "{:?}", events[0]);
    assert!(
        matches!(events[1], WatchEvent::Deleted(_)),
        "{:?}",
        events[1]
    );
    Ok(())
}

#[tokio::test]
async fn bookmarks_carry_the_current_revision() -> anyhow::Result<()> {
    let s = Server::start()?;
    let c = s.client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    let rv = create_cm(&cms, "bm").await?;
    let mut stream = cms
        .watch(&WatchParams::default().timeout(10), &rv)
        .await?
        .boxed();
    let ev = tokio::time::timeout(Duration::from_secs(9), stream.next()).await?;
    match ev {
        Some(Ok(WatchEvent::Bookmark(b))) => {
            assert!(b.metadata.resource_version.parse::<u64>()? >= rv.parse::<u64>()?)
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
    Ok(())
}
