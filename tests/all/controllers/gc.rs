//! Garbage collection through owner references: background, foreground
//! and orphan propagation.

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;
use shoal_tests::{sample, wait_for, Server};

use super::{app_pods, deployment_yaml, wait_ready_pods, PATIENCE};

#[tokio::test]
async fn each_propagation_policy() -> anyhow::Result<()> {
    let s = Server::up(&[])?;
    let client = s.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(client, "default");
    let ticker = sample("ticker")?;
    for app in ["bg", "orphan", "fg"] {
        s.kubectl_in(
            &["apply", "-f", "-"],
            Some(&deployment_yaml(app, 2, &ticker, "", "")),
        )?;
    }
    for app in ["bg", "orphan", "fg"] {
        wait_ready_pods(&pods, app, 2).await?;
    }
    let sets_of = |app: &'static str| {
        let sets = sets.clone();
        async move {
            sets.list(&ListParams::default().labels(&format!("app={app}")))
                .await
                .map(|l| l.items)
        }
    };

    // Background (kubectl's default): the Deployment goes at once, its
    // ReplicaSet and pods after it.
    s.kubectl(&["delete", "deployment", "bg"])?;
    wait_for(
        "bg's replicaset and pods to be collected",
        PATIENCE,
        || async {
            let rs = sets_of("bg").await.ok()?;
            let p = app_pods(&pods, "bg").await.ok()?;
            (rs.is_empty() && p.is_empty()).then_some(())
        },
    )
    .await?;

    // Orphan: the ReplicaSet stays, without its owner, and keeps its pods.
    s.kubectl(&["delete", "deployment", "orphan", "--cascade=orphan"])?;
    let left = sets_of("orphan").await?;
    assert_eq!(left.len(), 1);
    assert!(
        left[0]
            .metadata
            .owner_references
            .clone()
            .unwrap_or_default()
            .is_empty(),
        "{:?}",
        left[0].metadata
    );
    wait_ready_pods(&pods, "orphan", 2).await?;

    // Foreground: when kubectl returns, the Deployment is gone and so is
    // everything it owned.
    s.kubectl(&[
        "delete",
        "deployment",
        "fg",
        "--cascade=foreground",
        "--timeout=90s",
    ])?;
    assert!(sets_of("fg").await?.is_empty());
    assert!(app_pods(&pods, "fg").await?.is_empty());
    Ok(())
}
