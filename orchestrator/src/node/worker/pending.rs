//! Pending: pick the backend, pull and compile every image, resolve every
//! container's configuration. Failures keep the pod Pending with kubelet's
//! waiting reasons and are retried with back-off, as kubelet does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Container;
use shoal_runtime::Backend;
use tracing::{debug, instrument};

use super::backoff::Backoff;
use super::container::human;
use super::{Phase, PodWorker, PreparedPod, ReadyContainer};
use crate::node::config::{self, Sources};

/// A failure that keeps the pod waiting: which container, kubelet's reason
/// for it, and the message naming the cause.
struct Blocked {
    init: bool,
    index: usize,
    reason: &'static str,
    message: String,
    /// ErrImagePull becomes ImagePullBackOff while waiting to retry.
    pull: bool,
    /// Waiting on another component (a claim being bound), not on a fault:
    /// looked at again soon, as kubelet's volume manager polls, rather than
    /// after the crash back-off.
    poll: bool,
}

/// How long a pod waiting on another component waits before looking
/// again: 2 ms doubling to 1 s. A claim is usually bound a few ms after
/// the pod lands (the benchmark's `cold_start_with_volume`), and each look
/// is two GETs to the API server, so the first looks come quickly.
fn poll_delay(attempt: u32) -> Duration {
    Duration::from_millis(2u64 << attempt.saturating_sub(1).min(9)).min(Duration::from_secs(1))
}

#[instrument(skip_all)]
pub(super) async fn run(w: &mut PodWorker) -> Phase {
    w.publish();
    let mut backoff = Backoff::default();
    let mut attempt = 0u32;
    loop {
        if w.stopping() {
            return Phase::Terminating;
        }
        match prepare(w).await {
            Ok(p) => {
                return if p.init.is_empty() {
                    Phase::Running(p)
                } else {
                    Phase::Initializing(p)
                };
            }
            Err(b) => {
                attempt += 1;
                let delay = if b.poll {
                    poll_delay(attempt)
                } else {
                    backoff
                        .next_delay(&w.ctx.backoff, Duration::ZERO)
                        .max(w.ctx.backoff.initial)
                };
                let reason = if b.pull && attempt > 1 {
                    "ImagePullBackOff"
                } else {
                    b.reason
                };
                let message = if reason == "ImagePullBackOff" {
                    format!("Back-off {} pulling image: {}", human(delay), b.message)
                } else {
                    b.message.clone()
                };
                debug!(reason, %message, "pod blocked");
                // A claim is normally bound within moments of the pod
                // landing here: only a wait past a few seconds is news.
                if b.poll && attempt >= 16 && attempt.is_power_of_two() {
                    w.ctx.events.warning(
                        &w.object,
                        "FailedMount",
                        format!("Unable to attach or mount volumes: {}", b.message),
                    );
                }
                w.set_waiting(b.init, b.index, reason, Some(message));
                w.publish();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = w.until_stopping() => return Phase::Terminating,
                }
            }
        }
    }
}

async fn prepare(w: &mut PodWorker) -> Result<PreparedPod, Blocked> {
    let spec = w.pod.spec.clone().unwrap_or_default();
    let class = spec
        .runtime_class_name
        .clone()
        .unwrap_or_else(|| shoal_sdk::RUNTIME_CLASS_WASMTIME.to_string());
    let backend = w
        .ctx
        .backends
        .get(class.as_str())
        .cloned()
        .ok_or_else(|| Blocked {
            init: false,
            index: 0,
            reason: "CreateContainerConfigError",
            message: format!(
                "runtime class {class:?} is not offered by node {:?} (it offers: {})",
                w.ctx.name,
                w.ctx
                    .backends
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            pull: false,
            poll: false,
        })?;
    if let Err(e) = w.attach_network(backend.as_ref()).await {
        w.ctx.events.warning(
            &w.object,
            "FailedCreatePodSandBox",
            format!("Failed to create pod sandbox: setting up the pod network: {e}"),
        );
        return Err(Blocked {
            init: !w.initialized,
            index: 0,
            reason: "ContainerCreating",
            message: format!("setting up the pod network: {e}"),
            pull: false,
            poll: false,
        });
    }
    let services = w
        .ctx
        .gateway
        .table
        .services
        .list_namespace(&w.key.namespace);
    let claims = crate::node::volumes::claim_dirs(&w.ctx.client, &w.pod, &w.ctx.volumes_dir)
        .await
        .map_err(|e| Blocked {
            init: !w.initialized,
            index: 0,
            reason: "ContainerCreating",
            message: format!("waiting for volumes: {e}"),
            pull: false,
            poll: true,
        })?;
    let mut sources = Sources::new(w.ctx.client.clone(), &w.key.namespace, services);
    sources.claims = claims;
    let mut init = Vec::new();
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        init.push(ready(w, &backend, &mut sources, c, true, i).await?);
    }
    let mut app = Vec::new();
    for (i, c) in spec.containers.iter().enumerate() {
        app.push(ready(w, &backend, &mut sources, c, false, i).await?);
    }
    Ok(PreparedPod { backend, init, app })
}

async fn ready(
    w: &mut PodWorker,
    backend: &Arc<dyn Backend>,
    sources: &mut Sources,
    c: &Container,
    init: bool,
    index: usize,
) -> Result<ReadyContainer, Blocked> {
    let image = c.image.clone().unwrap_or_default();
    let object = w.container_object(init, &c.name);
    let started = Instant::now();
    let pull = crate::node::pull::options(sources, &w.pod, c).await;
    let prepared = match backend.prepare_with(&image, &pull).await {
        Ok(p) => p,
        Err(e) => {
            let reason = e.reason();
            w.ctx.events.warning(
                &object,
                "Failed",
                format!("Failed to pull image {image:?}: {e}"),
            );
            return Err(Blocked {
                init,
                index,
                reason,
                message: e.to_string(),
                pull: reason == "ErrImagePull",
                poll: false,
            });
        }
    };
    w.ctx.events.normal(
        &object,
        "Pulled",
        format!(
            "Container image {image:?} ready ({}) in {}",
            prepared.digest,
            human(started.elapsed())
        ),
    );
    let ips = config::Addresses {
        host: &w.ctx.host_ip,
        pod: &w.pod_ip,
    };
    let mut resolved = config::resolve(&w.pod, c, sources, &w.dir, ips)
        .await
        .map_err(|e| {
            w.ctx
                .events
                .warning(&object, "Failed", format!("Error: {e}"));
            Blocked {
                init,
                index,
                reason: "CreateContainerConfigError",
                message: e.to_string(),
                pull: false,
                poll: false,
            }
        })?;
    if w.net.is_some() && !resolved.mounts.iter().any(|m| m.guest_path == "/etc/hosts") {
        resolved.mounts.push(shoal_runtime::Mount {
            host_path: w.hosts_path(),
            guest_path: "/etc/hosts".into(),
            read_only: false,
        });
    }
    Ok(ReadyContainer {
        spec: c.clone(),
        prepared,
        resolved,
    })
}
