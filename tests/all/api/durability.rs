//! `kill -9` of the server loses no acknowledged write, and watches resume.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use shoal_tests::Server;

#[tokio::test]
async fn kill_9_and_restart_loses_nothing() -> anyhow::Result<()> {
    let mut s = Server::start()?;
    let c = s.client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let start_rv = cms
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    // Concurrent writers, so acknowledgements ride on shared flushes.
    let writes = futures::stream::iter(0..200)
        .map(|i| {
            let cms = cms.clone();
            async move {
                cms.create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({
                    "metadata": {"name": format!("k{i:03}")}, "data": {"i": i.to_string()}}))?,
                )
                .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>();
    writes.await?;
    s.kill9();
    s.restart()?;

    let c = s.client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    let items = cms.list(&ListParams::default()).await?.items;
    let mut names: Vec<String> = items
        .iter()
        .filter_map(|o| o.metadata.name.clone())
        .collect();
    names.sort();
    let expected: Vec<String> = (0..200).map(|i| format!("k{i:03}")).collect();
    assert_eq!(names, expected);
    // A watch from before the crash replays every write after it.
    let replayed: Vec<_> = cms
        .watch(&WatchParams::default().timeout(2), &start_rv)
        .await?
        .take(200)
        .try_collect()
        .await?;
    assert_eq!(
        replayed
            .iter()
            .filter(|e| matches!(e, WatchEvent::Added(_)))
            .count(),
        200
    );
    // And the store keeps counting from where it was.
    let next = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "after"}}))?,
        )
        .await?;
    let after_rv: u64 = next.metadata.resource_version.unwrap_or_default().parse()?;
    assert!(after_rv > start_rv.parse::<u64>()? + 200);
    Ok(())
}
