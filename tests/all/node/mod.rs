//! Pods on real node agents: `shoal up`, and a server with two `shoal node`
//! processes. Guests are the samples in `samples/wat`.

mod bad_input;
mod config;
mod lifecycle;
mod registry;
mod restarts;
mod runc;
mod rust_samples;
mod top;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, Pod};
use kube::Api;
use shoal_tests::wait_for;

/// Generous: CI machines are slow and shared. Nothing waits this long
/// unless something is wrong.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn first_container(p: &Pod) -> Option<&ContainerStatus> {
    p.status.as_ref()?.container_statuses.as_ref()?.first()
}

pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

pub fn waiting(p: &Pod) -> Option<(String, String)> {
    let w = first_container(p)?.state.as_ref()?.waiting.as_ref()?;
    Some((
        w.reason.clone().unwrap_or_default(),
        w.message.clone().unwrap_or_default(),
    ))
}

pub fn terminated(p: &Pod) -> Option<&ContainerStateTerminated> {
    first_container(p)?.state.as_ref()?.terminated.as_ref()
}

pub fn restarts(p: &Pod) -> i32 {
    first_container(p).map_or(0, |c| c.restart_count)
}

/// Waits until pod `name` satisfies `ok`, returning it.
pub async fn wait_pod(
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    ok: impl Fn(&Pod) -> bool,
) -> anyhow::Result<Pod> {
    let last = std::sync::Mutex::new(None::<Pod>);
    let r = wait_for(&format!("pod {name} {what}"), PATIENCE, || async {
        let p = pods.get(name).await.ok()?;
        let good = ok(&p);
        if let Ok(mut l) = last.lock() {
            *l = Some(p.clone());
        }
        good.then_some(p)
    })
    .await;
    r.map_err(|e| {
        let seen = last.lock().ok().and_then(|l| {
            l.as_ref()
                .map(|p| serde_json::to_string(&p.status).unwrap_or_default())
        });
        anyhow::anyhow!("{e}; last status seen: {}", seen.unwrap_or_default())
    })
}

pub async fn wait_running(pods: &Api<Pod>, name: &str) -> anyhow::Result<Pod> {
    wait_pod(pods, name, "to run", |p| {
        phase(p) == "Running" && first_container(p).is_some_and(|c| c.ready)
    })
    .await
}

/// Waits until `kubectl logs` of a pod contains `needle`.
pub async fn wait_logs(
    s: &shoal_tests::Server,
    args: &[&str],
    needle: &str,
) -> anyhow::Result<String> {
    wait_for(
        &format!("logs {args:?} to contain {needle:?}"),
        PATIENCE,
        || async {
            let mut full = vec!["logs"];
            full.extend_from_slice(args);
            s.kubectl(&full).ok().filter(|out| out.contains(needle))
        },
    )
    .await
}
