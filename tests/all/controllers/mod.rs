//! Workload controllers on `shoal up`, driven by the real kubectl: scaling,
//! self-healing, rolling updates and rollback, and garbage collection.

mod autoscaling;
mod daemonsets;
mod deployments;
mod drain;
mod gc;
mod jobs;
mod namespaces;
mod replicasets;
mod statefulsets;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;
use shoal_tests::{wait_for, Server};

/// Generous: nothing waits this long unless something is wrong.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// An `apps/v1` workload of `kind` running `image`, labelled and
/// selected by `app=<name>`. `spec` lines go at the top of `spec`,
/// `pod_spec` lines at the top of the pod template's spec.
pub fn workload_yaml(
    kind: &str,
    name: &str,
    image: &str,
    extra_meta: &str,
    spec: &str,
    pod_spec: &str,
) -> String {
    format!(
        "apiVersion: apps/v1
kind: {kind}
metadata:
  name: {name}
{extra_meta}spec:
{spec}  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
{pod_spec}      containers:
      - name: main
        image: {image}
"
    )
}

/// A Deployment of `replicas` copies of `image`, labelled `app=<name>`.
pub fn deployment_yaml(
    name: &str,
    replicas: i32,
    image: &str,
    extra_meta: &str,
    extra_spec: &str,
) -> String {
    let spec = format!("  replicas: {replicas}\n{extra_spec}");
    workload_yaml("Deployment", name, image, extra_meta, &spec, "")
}

/// A copy of a sample under another name: a different image for the same
/// program, as a new version of an app would be.
pub fn image_copy(s: &Server, image: &str, name: &str) -> anyhow::Result<String> {
    let src = image.trim_start_matches("file://");
    let dst = s.data_dir().join(name);
    std::fs::copy(src, &dst)?;
    Ok(format!("file://{}", dst.display()))
}

/// The revision numbers `kubectl rollout history <what>` lists.
pub fn history_rows(s: &Server, what: &str) -> anyhow::Result<Vec<i64>> {
    let out = s.kubectl(&["rollout", "history", what])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|w| w.parse().ok())
        .collect())
}

/// `kubectl rollout undo <kind>/<name>`, then the first container's image
/// its template names.
pub fn undo_to_image(s: &Server, kind: &str, name: &str) -> anyhow::Result<String> {
    s.kubectl(&["rollout", "undo", &format!("{kind}/{name}")])?;
    let image = s.kubectl(&[
        "get",
        kind,
        name,
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ])?;
    Ok(image.trim().to_string())
}

pub fn is_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Pods labelled `app=<app>`.
pub async fn app_pods(pods: &Api<Pod>, app: &str) -> anyhow::Result<Vec<Pod>> {
    Ok(pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?
        .items)
}

/// Waits until `app` has exactly `n` pods, all of them Ready and none
/// terminating.
pub async fn wait_ready_pods(pods: &Api<Pod>, app: &str, n: usize) -> anyhow::Result<Vec<Pod>> {
    wait_for(&format!("{n} ready pods of {app}"), PATIENCE, || async {
        let list = app_pods(pods, app).await.ok()?;
        (list.len() == n && list.iter().all(is_ready)).then_some(list)
    })
    .await
}

/// Waits until the Deployment's status satisfies `ok`.
pub async fn wait_deployment(
    api: &Api<Deployment>,
    name: &str,
    what: &str,
    ok: impl Fn(&Deployment) -> bool,
) -> anyhow::Result<Deployment> {
    wait_for(&format!("deployment {name} {what}"), PATIENCE, || async {
        let d = api.get(name).await.ok()?;
        ok(&d).then_some(d)
    })
    .await
}

/// The image of a Deployment's first container.
pub fn image_of(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}
