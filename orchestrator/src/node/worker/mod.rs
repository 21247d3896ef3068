//! The pod worker: one task per pod, an explicit state machine with one
//! file per phase (krustlet's shape). Each phase runs until it knows the
//! next one; all of them stop promptly when the pod is deleted.
//!
//! ```text
//! Pending ──► Initializing ──► Running ──► Finished
//!    │              │             │           │
//!    └──────────────┴──────┬──────┴───────────┘
//!                          ▼
//!                     Terminating ──► (gone)
//! ```

mod backoff;
mod container;
mod finished;
mod grpc;
mod hooks;
mod init;
mod pending;
mod probe;
mod running;
mod status;
mod terminating;

use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateWaiting, ContainerStatus, Pod, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use shoal_runtime::oci::network::PodNet;
use shoal_runtime::{Backend, Prepared};
use tokio::sync::watch;
use tracing::{info_span, Instrument};

pub use backoff::BackoffPolicy;

use super::config::Resolved;
use super::status_sync::PodKey;
use super::NodeCtx;
use crate::controllers::nodelifecycle::POD_NOT_READY_REASON;
use crate::events::ObjectRef;

/// What the sync loop tells a worker: the newest pod, or that it is gone
/// from the API altogether (force-deleted).
#[derive(Clone)]
pub struct PodSignal {
    pub pod: Arc<Pod>,
    pub gone: bool,
}

impl PodSignal {
    fn stopping(&self) -> bool {
        self.gone || self.pod.metadata.deletion_timestamp.is_some()
    }
}

/// A container ready to start: its image prepared and config resolved.
pub(crate) struct ReadyContainer {
    pub spec: Container,
    pub prepared: Prepared,
    pub resolved: Resolved,
}

/// Everything `Pending` produced for the later phases.
pub(crate) struct PreparedPod {
    pub backend: Arc<dyn Backend>,
    pub init: Vec<ReadyContainer>,
    pub app: Vec<ReadyContainer>,
}

pub(crate) enum Phase {
    Pending,
    Initializing(PreparedPod),
    Running(PreparedPod),
    Finished,
    Terminating,
    Done,
}

pub struct PodWorker {
    ctx: Arc<NodeCtx>,
    key: PodKey,
    signal: watch::Receiver<PodSignal>,
    pod: Arc<Pod>,
    dir: PathBuf,
    object: ObjectRef,
    start_time: Time,
    init: Vec<ContainerStatus>,
    containers: Vec<ContainerStatus>,
    initialized: bool,
    terminal: Option<&'static str>,
    last: Option<PodStatus>,
    /// The pod's own network namespace and address, while it has them.
    net: Option<PodNet>,
    /// What the pod reports as its IP: its own, else the node's.
    pod_ip: String,
}

impl PodWorker {
    pub fn new(ctx: Arc<NodeCtx>, signal: watch::Receiver<PodSignal>) -> PodWorker {
        let pod = signal.borrow().pod.clone();
        let key = PodKey {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
        };
        let dir = ctx.pod_dir(&key);
        let object = ObjectRef {
            kind: "Pod",
            api_version: "v1",
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            uid: key.uid.clone(),
            field_path: None,
        };
        let previous = pod.status.clone();
        if let Some(prev) = &previous {
            // Counted from here on, so the gauge moves with every publish.
            ctx.metrics.observe_phase(None, prev);
        }
        // A finished pod keeps reporting the address it had.
        let pod_ip = previous
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_else(|| ctx.host_ip.clone());
        let start_time = previous
            .as_ref()
            .and_then(|s| s.start_time.clone())
            .unwrap_or_else(now);
        let spec = pod.spec.clone().unwrap_or_default();
        let waiting = |c: &Container, reason: &str| ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.to_string()),
                    message: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let has_init = spec.init_containers.as_ref().is_some_and(|v| !v.is_empty());
        let app_reason = if has_init {
            "PodInitializing"
        } else {
            "ContainerCreating"
        };
        PodWorker {
            init: spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| waiting(c, "PodInitializing"))
                .collect(),
            containers: spec
                .containers
                .iter()
                .map(|c| waiting(c, app_reason))
                .collect(),
            initialized: !has_init,
            terminal: None,
            last: previous,
            net: None,
            pod_ip,
            ctx,
            key,
            signal,
            pod,
            dir,
            object,
            start_time,
        }
    }

    /// Drives the pod from wherever it is to gone.
    pub async fn run(mut self) {
        let span = info_span!("pod", namespace = %self.key.namespace, name = %self.key.name);
        async move {
            let mut phase = finished::resume_phase(&mut self);
            loop {
                phase = match phase {
                    Phase::Pending => pending::run(&mut self).await,
                    Phase::Initializing(p) => init::run(&mut self, p).await,
                    Phase::Running(p) => running::run(&mut self, p).await,
                    Phase::Finished => finished::run(&mut self).await,
                    Phase::Terminating => terminating::run(&mut self).await,
                    Phase::Done => break,
                };
            }
        }
        .instrument(span)
        .await
    }

    fn stopping(&self) -> bool {
        self.signal.borrow().stopping()
    }

    fn gone(&self) -> bool {
        self.signal.borrow().gone
    }

    /// Waits until the pod is being deleted (or gone); keeps `pod` fresh.
    async fn until_stopping(&mut self) {
        loop {
            if self.stopping() {
                return;
            }
            if self.signal.changed().await.is_err() {
                // The sync loop dropped us: the node is shutting down.
                std::future::pending::<()>().await;
            }
            self.pod = self.signal.borrow().pod.clone();
            self.repair_status();
        }
    }

    /// While this node could not reach the API server, the node lifecycle
    /// controller marked the pod not Ready. Nothing here changed, so
    /// nothing would be published: send the status this worker knows again.
    /// Only that marker counts, not any difference, since the API copy
    /// lags this worker's own writes all the time.
    fn repair_status(&mut self) {
        let ready = |s: Option<&PodStatus>| {
            s?.conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| (c.status.clone(), c.reason.clone()))
        };
        let marked = ready(self.pod.status.as_ref()).is_some_and(|(status, reason)| {
            status == "False" && reason.as_deref() == Some(POD_NOT_READY_REASON)
        });
        let ours = ready(self.last.as_ref()).is_some_and(|(status, _)| status == "True");
        if let (true, true, Some(last)) = (marked, ours, self.last.clone()) {
            tracing::info!(pod = %self.key.name, "restoring the status the node lifecycle controller overwrote");
            self.ctx.status.set(&self.key, last);
        }
    }

    /// Sends the pod's status as it stands now (coalesced by the writer).
    fn publish(&mut self) {
        let st = status::pod_status(&status::PodFacts {
            pod: &self.pod,
            init: &self.init,
            containers: &self.containers,
            initialized: self.initialized,
            terminal_phase: self.terminal,
            host_ip: &self.ctx.host_ip,
            pod_ip: &self.pod_ip,
            start_time: &self.start_time,
            now: now(),
            previous: self.last.as_ref(),
        });
        if self.last.as_ref() == Some(&st) {
            return;
        }
        self.ctx.metrics.observe_phase(self.last.as_ref(), &st);
        self.ctx.status.set(&self.key, st.clone());
        self.last = Some(st);
    }

    fn set_waiting(&mut self, init: bool, index: usize, reason: &str, message: Option<String>) {
        let list = if init {
            &mut self.init
        } else {
            &mut self.containers
        };
        if let Some(c) = list.get_mut(index) {
            c.state = Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.to_string()),
                    message,
                }),
                ..Default::default()
            });
            c.ready = false;
        }
    }

    fn container_object(&self, init: bool, name: &str) -> ObjectRef {
        let mut o = self.object.clone();
        let list = if init { "initContainers" } else { "containers" };
        o.field_path = Some(format!("spec.{list}{{{name}}}"));
        o
    }

    /// Gives the pod its network namespace and IP, and writes the hosts
    /// file its containers get. Only for backends that isolate networks,
    /// and not for `hostNetwork: true` pods.
    async fn attach_network(&mut self, backend: &dyn Backend) -> Result<(), String> {
        let host_network = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        if self.net.is_some() || host_network || !backend.isolates_network() {
            return Ok(());
        }
        let Some(networks) = self.ctx.network.clone() else {
            return Ok(());
        };
        let network = networks.get().await?;
        let net = network
            .attach(&self.key.uid)
            .await
            .map_err(|e| e.to_string())?;
        let ip = net.ip.to_string();
        let hosts = crate::node::network::hosts_file(&self.pod, &ip);
        let path = self.hosts_path();
        let written =
            std::fs::create_dir_all(&self.dir).and_then(|()| std::fs::write(&path, hosts));
        if let Err(e) = written {
            network.detach(&self.key.uid).await;
            return Err(format!("writing {}: {e}", path.display()));
        }
        self.pod_ip = ip;
        self.net = Some(net);
        Ok(())
    }

    fn hosts_path(&self) -> PathBuf {
        self.dir.join("etc-hosts")
    }

    /// The pod leaves the network; its containers have stopped. It keeps
    /// reporting its last IP, as a finished pod in Kubernetes does.
    async fn detach_network(&mut self) {
        if self.net.take().is_none() {
            return;
        }
        if let Some(networks) = &self.ctx.network {
            if let Ok(network) = networks.get().await {
                network.detach(&self.key.uid).await;
            }
        }
    }

    fn restart_policy(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always")
    }
}

pub(crate) fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}
