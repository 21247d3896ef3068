//! Lists with selectors and pages, generateName, status, binding,
//! deletecollection and finalizers.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use shoal_tests::Server;

#[tokio::test]
async fn selectors_pages_and_deletecollection() -> anyhow::Result<()> {
    let s = Server::start()?;
    let c = s.client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    for i in 0..25 {
        let tier = if i % 2 == 0 { "even" } else { "odd" };
        cms.create(&PostParams::default(), &serde_json::from_value(json!({
            "metadata": {"name": format!("cm-{i:02}"), "labels": {"tier": tier, "n": i.to_string()}}}))?).await?;
    }
    assert_eq!(
        cms.list(&ListParams::default().labels("tier=even"))
            .await?
            .items
            .len(),
        13
    );
    assert_eq!(
        cms.list(&ListParams::default().labels("tier in (odd),n notin (1,3)"))
            .await?
            .items
            .len(),
        10
    );
    assert_eq!(
        cms.list(&ListParams::default().fields("metadata.name=cm-07"))
            .await?
            .items
            .len(),
        1
    );
    // Unsupported field selectors are refused, as Kubernetes does.
    assert!(cms
        .list(&ListParams::default().fields("data.x=1"))
        .await
        .is_err());

    // Pages of 10 via limit/continue cover everything once, in order.
    let mut names = Vec::new();
    let mut lp = ListParams::default().limit(10);
    loop {
        let page = cms.list(&lp).await?;
        names.extend(page.items.iter().filter_map(|o| o.metadata.name.clone()));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => lp = lp.continue_token(&token),
            _ => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("cm-{i:02}")).collect();
    assert_eq!(names, expected);

    // deletecollection with a selector removes exactly those.
    cms.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("tier=odd"),
    )
    .await?;
    assert_eq!(cms.list(&ListParams::default()).await?.items.len(), 13);
    let out = s.kubectl(&["delete", "configmaps", "-l", "tier=even"])?;
    assert!(out.contains("cm-00"), "{out}");
    assert!(cms.list(&ListParams::default()).await?.items.is_empty());
    Ok(())
}

#[tokio::test]
async fn status_binding_generation_and_finalizers() -> anyhow::Result<()> {
    let s = Server::start()?;
    let c = s.client().await?;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let p = pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
        "metadata": {"generateName": "web-"},
        "spec": {"containers": [{"name": "c", "image": "file:///x.wasm"}]}}))?,
        )
        .await?;
    let name = p.metadata.name.clone().unwrap_or_default();
    assert!(name.starts_with("web-") && name.len() == 9, "{name}");
    assert!(p.metadata.uid.is_some() && p.metadata.creation_timestamp.is_some());
    let spec = p.spec.clone().unwrap_or_default();
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    assert_eq!(spec.termination_grace_period_seconds, Some(30));
    assert_eq!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );

    // Status is written only through the status subresource.
    let main = pods
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await?;
    assert_eq!(
        main.status.and_then(|s| s.phase).as_deref(),
        Some("Pending")
    );
    let st = pods
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await?;
    assert_eq!(st.status.and_then(|s| s.phase).as_deref(), Some("Running"));
    // A pod's spec is immutable but for images.
    let err = pods
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"restartPolicy": "Never"}})),
        )
        .await;
    assert!(
        matches!(err, Err(kube::Error::Api(ref s)) if s.code == 422),
        "{err:?}"
    );

    // Binding assigns a node once and records PodScheduled.
    let (code, _) = super::raw(&c, "POST", &format!("/api/v1/namespaces/default/pods/{name}/binding"), "application/json",
        serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": {"kind": "Node", "name": "n1"}}))?).await?;
    assert_eq!(code, 200);
    let bound = pods.get(&name).await?;
    assert_eq!(bound.spec.and_then(|s| s.node_name).as_deref(), Some("n1"));
    let conds = bound.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(conds
        .iter()
        .any(|c| c.type_ == "PodScheduled" && c.status == "True"));
    let (code, _) = super::raw(
        &c,
        "POST",
        &format!("/api/v1/namespaces/default/pods/{name}/binding"),
        "application/json",
        serde_json::to_vec(&json!({"target": {"kind": "Node", "name": "n2"}}))?,
    )
    .await?;
    assert_eq!(code, 409);

    // generation counts spec changes only; observedGeneration is the controller's.
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let d = deploys.create(&PostParams::default(), &serde_json::from_value(json!({
        "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"app": "d"}},
            "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}}))?).await?;
    assert_eq!(d.metadata.generation, Some(1));
    let d = deploys
        .patch(
            "d",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await?;
    assert_eq!(d.metadata.generation, Some(1));
    let d = deploys
        .patch(
            "d",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 7}})),
        )
        .await?;
    assert_eq!(d.metadata.generation, Some(2));
    let d = deploys
        .patch_status(
            "d",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"observedGeneration": 2, "replicas": 7}})),
        )
        .await?;
    assert_eq!(
        (
            d.metadata.generation,
            d.status.and_then(|s| s.observed_generation)
        ),
        (Some(2), Some(2))
    );
    // The selector of a Deployment is immutable.
    let err = deploys
        .patch(
            "d",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"selector": {"matchLabels": {"app": "e"}},
        "template": {"metadata": {"labels": {"app": "e"}}}}})),
        )
        .await;
    assert!(
        matches!(err, Err(kube::Error::Api(ref s)) if s.code == 422 && s.message.contains("spec.selector")),
        "{err:?}"
    );

    // A finalizer holds deletion until it is removed.
    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "f", "finalizers": ["shoal.dev/test"]}}),
        )?,
    )
    .await?;
    cms.delete("f", &DeleteParams::default()).await?;
    let held = cms.get("f").await?;
    assert!(held.metadata.deletion_timestamp.is_some());
    cms.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    assert!(cms.get_opt("f").await?.is_none());
    Ok(())
}
