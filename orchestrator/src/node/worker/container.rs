//! One container's life inside a pod: start, wait, record the ending,
//! restart by policy with back-off. Runs as its own task so a pod's
//! containers live side by side; reports every state change to the pod
//! worker, which owns the pod status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, Fuse, FutureExt};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use shoal_runtime::{Backend, ContainerSpec, Exit};
use tokio::sync::{mpsc, watch};
use tracing::{debug, instrument};

use super::backoff::Backoff;
use super::hooks;
use super::probe::{Outcome, Prober, Reach};
use super::{now, ReadyContainer};
use crate::events::ObjectRef;
use crate::node::gateway::outbound::PodOutbound;
use crate::node::status_sync::PodKey;
use crate::node::NodeCtx;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restart {
    Always,
    OnFailure,
    Never,
}

impl Restart {
    pub(crate) fn parse(policy: &str) -> Restart {
        match policy {
            "OnFailure" => Restart::OnFailure,
            "Never" => Restart::Never,
            _ => Restart::Always,
        }
    }

    fn again(self, exit: &Exit) -> bool {
        match self {
            Restart::Always => true,
            Restart::OnFailure => exit.code() != 0,
            Restart::Never => false,
        }
    }
}

/// A container's status as reported to the pod worker.
pub(crate) struct Update {
    pub init: bool,
    pub index: usize,
    pub status: ContainerStatus,
}

pub(crate) struct ContainerTask {
    pub ctx: Arc<NodeCtx>,
    pub pod: PodKey,
    pub backend: Arc<dyn Backend>,
    pub ready: Arc<ReadyContainer>,
    pub init: bool,
    pub index: usize,
    pub policy: Restart,
    /// Where the count stands (a node agent restart carries it over).
    pub status: ContainerStatus,
    pub object: ObjectRef,
    pub updates: mpsc::UnboundedSender<Update>,
    /// The pod's grace period, once its containers are to stop.
    pub stop: watch::Receiver<Option<Duration>>,
    /// The pod's `terminationGracePeriodSeconds`: how long a process that
    /// is stopped for any reason gets between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// The pod's IP (probes and hooks go there) and network namespace.
    pub pod_ip: String,
    pub netns: Option<std::path::PathBuf>,
}

impl ContainerTask {
    fn send(&self) {
        let _ = self.updates.send(Update {
            init: self.init,
            index: self.index,
            status: self.status.clone(),
        });
    }

    fn set_state(&mut self, state: ContainerState) {
        self.status.ready = state.running.is_some();
        self.status.started = Some(state.running.is_some());
        self.status.state = Some(state);
        self.send();
    }

    fn waiting(&mut self, reason: &str, message: String) {
        self.set_state(ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.to_string()),
                message: Some(message),
            }),
            ..Default::default()
        });
    }

    /// Sleeps unless told to stop first; true when stopped.
    async fn pause(&mut self, d: Duration) -> bool {
        if d.is_zero() {
            return self.stop.borrow().is_some();
        }
        let stopped = tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = stopped(self.stop.clone()) => true,
        };
        stopped || self.stop.borrow().is_some()
    }

    /// Runs the container until it ends for good or the pod stops; returns
    /// the final status.
    #[instrument(skip_all, fields(container = %self.ready.spec.name, pod = %self.pod.name))]
    pub(crate) async fn run(mut self) -> ContainerStatus {
        let mut backoff = Backoff::default();
        let mut exited_at: Option<Instant> = None;
        let name = self.ready.spec.name.clone();
        self.status.image_id = self.ready.prepared.digest.clone();
        loop {
            if self.stop.borrow().is_some() {
                return self.status;
            }
            let ran_from = Instant::now();
            let exit = match self.start_once(exited_at.take()).await {
                Some(exit) => exit,
                None => {
                    // Could not create the sandbox: back off, do not count
                    // it as a restart (kubelet's CreateContainerError).
                    let delay = backoff
                        .next_delay(&self.ctx.backoff, Duration::ZERO)
                        .max(self.ctx.backoff.initial);
                    if self.pause(delay).await {
                        return self.status;
                    }
                    continue;
                }
            };
            if self.stop.borrow().is_some() || !self.policy.again(&exit) {
                return self.status;
            }
            exited_at = Some(Instant::now());
            let delay = backoff.next_delay(&self.ctx.backoff, ran_from.elapsed());
            self.status.last_state = self.status.state.clone();
            self.status.restart_count += 1;
            if !delay.is_zero() {
                self.waiting(
                    "CrashLoopBackOff",
                    format!(
                        "back-off {} restarting failed container={name} pod={}_{}({})",
                        human(delay),
                        self.pod.name,
                        self.pod.namespace,
                        self.pod.uid
                    ),
                );
                self.ctx.events.warning(
                    &self.object,
                    "BackOff",
                    format!(
                        "Back-off restarting failed container {name} in pod {}_{}({})",
                        self.pod.name, self.pod.namespace, self.pod.uid
                    ),
                );
            }
            if self.pause(delay).await {
                return self.status;
            }
        }
    }

    /// Starts the container and waits for it; `None` if it never started.
    /// `exited_at` is when the previous guest of this container ended, for
    /// the restart-latency metric.
    async fn start_once(&mut self, exited_at: Option<Instant>) -> Option<Exit> {
        let name = self.ready.spec.name.clone();
        let restart = self.status.restart_count;
        let log = self.ctx.logs.open(&self.pod, &name, restart);
        let r = &self.ready.resolved;
        // Only a Wasm guest can be given a stdin the node writes to.
        let stdin = (self.ready.spec.stdin == Some(true)
            && self.backend.runtime_class() == shoal_sdk::RUNTIME_CLASS_WASMTIME)
            .then(|| {
                self.ctx.stdins.open(
                    &self.pod.namespace,
                    &self.pod.name,
                    &name,
                    self.ready.spec.stdin_once == Some(true),
                )
            });
        let spec = ContainerSpec {
            argv: r.argv.clone(),
            command: r.command.clone(),
            args: r.args.clone(),
            working_dir: self.ready.spec.working_dir.clone(),
            hostname: self.pod.name.clone(),
            stop_grace: self.grace,
            http_port: http_port(&self.ready.spec),
            pod_ip: self.pod_ip.clone(),
            netns: self.netns.clone(),
            security: r.security.clone(),
            env: r.env.clone(),
            mounts: r.mounts.clone(),
            memory_limit: r.memory_limit,
            cpu_limit_millis: r.cpu_limit_millis,
            output: log.clone(),
            http: r.http,
            outbound: Some(Arc::new(PodOutbound::new(
                self.ctx.gateway.clone(),
                &self.pod.namespace,
                r.allowed_outbound.clone(),
            ))),
            stdin,
        };
        let started_clock = Instant::now();
        let mut running = match self.backend.start(&self.ready.prepared, spec).await {
            Ok(c) => c,
            Err(e) => {
                log.finish();
                self.ctx
                    .stdins
                    .closed(&self.pod.namespace, &self.pod.name, &name);
                self.fail_start(e.to_string());
                return None;
            }
        };
        let started_at = now();
        self.status.container_id = Some(format!(
            "{}://{}-{name}-{restart}",
            self.backend.runtime_class(),
            self.pod.uid
        ));
        self.ctx
            .execs
            .started(&self.pod.namespace, &self.pod.name, &name, running.exec());
        self.ctx.usage.started(
            &self.pod,
            &name,
            running.cpu_meter(),
            running.memory_gauge(),
        );
        let http = running.http();
        // Probes and hooks reach a process over the network, as kubelet's
        // do; a Wasm guest through its handler.
        let local = if running.listens_on_network() {
            None
        } else {
            http.clone()
        };
        let reach = Reach {
            http: local,
            host: self.pod_ip.clone(),
            exec: running.exec(),
        };
        if let Some(Err(why)) = self.post_start(&reach).await {
            // As kubelet: the container is killed and its restart policy
            // decides what follows.
            self.ctx.events.warning(
                &self.object,
                "FailedPostStartHook",
                format!("PostStartHook failed for container {name}: {why}"),
            );
            running.kill_handle().kill();
            let exit = running.wait().await;
            self.ctx.usage.stopped(&self.pod, &name);
            self.ctx
                .execs
                .stopped(&self.pod.namespace, &self.pod.name, &name);
            self.ctx
                .stdins
                .closed(&self.pod.namespace, &self.pod.name, &name);
            log.finish();
            let message = Some(format!("PostStartHook failed: {why}"));
            self.terminated(&exit, "Error", message, started_at);
            return Some(exit);
        }
        let mut prober = Prober::for_container(&self.ready.spec, reach.clone());
        // With a readiness probe the container is Ready only once it passes;
        // with a startup probe it is not even started until that passes.
        self.status.ready = prober.initially_ready();
        self.status.started = Some(prober.initially_started());
        self.status.state = Some(ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(started_at.clone()),
            }),
            ..Default::default()
        });
        self.send();
        self.ctx.metrics.container_started(started_clock.elapsed());
        if let Some(t) = exited_at {
            self.ctx.metrics.container_restarted(t.elapsed());
        }
        if restart == 0 {
            self.ctx
                .events
                .normal(&self.object, "Started", format!("Started container {name}"));
        }
        // An HTTP pod takes Service traffic from now until it stops.
        if let Some(h) = &http {
            self.ctx
                .gateway
                .register(&self.pod.namespace, &self.pod.name, h.clone());
        }
        let mut killed = false;
        // Deleted: the preStop hook runs (the container still serving) and
        // the kill follows it.
        let mut stopping = false;
        let mut pre_stop = Fuse::<BoxFuture<'static, Option<Result<(), String>>>>::terminated();
        let exit = {
            let kill = running.kill_handle();
            let wait = running.wait();
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    e = &mut wait => break e,
                    grace = stopped(self.stop.clone()), if !stopping => {
                        stopping = true;
                        let (c, reach) = (self.ready.spec.clone(), reach.clone());
                        pre_stop = async move { hooks::pre_stop(&c, &reach, grace).await }
                            .boxed()
                            .fuse();
                    }
                    hooked = &mut pre_stop, if !killed => {
                        if let Some(Err(why)) = hooked {
                            self.ctx.events.warning(
                                &self.object,
                                "FailedPreStopHook",
                                format!("PreStopHook failed for container {name}: {why}"),
                            );
                        }
                        // A Wasm guest cannot install a SIGTERM handler, so
                        // SIGTERM's default action applies: it ends now (an
                        // HTTP pod first answers what it has in flight).
                        kill.kill();
                        killed = true;
                    }
                    outcome = prober.next(), if !killed && !stopping => match outcome {
                        Outcome::Started { ready } => {
                            self.status.started = Some(true);
                            self.status.ready = ready;
                            self.send();
                        }
                        Outcome::Ready(ready) => {
                            if !ready {
                                self.ctx.events.warning(
                                    &self.object,
                                    "Unhealthy",
                                    "Readiness probe failed".to_string(),
                                );
                            }
                            self.status.ready = ready;
                            self.send();
                        }
                        Outcome::Dead { probe, why } => {
                            let probe = probe.as_str();
                            self.ctx.events.warning(
                                &self.object,
                                "Unhealthy",
                                format!("{probe} probe failed: {why}"),
                            );
                            self.ctx.events.normal(
                                &self.object,
                                "Killing",
                                format!(
                                    "Container {name} failed {} probe, will be restarted",
                                    probe.to_lowercase()
                                ),
                            );
                            kill.kill();
                            killed = true;
                        }
                    },
                }
            }
        };
        if let Some(h) = &http {
            self.ctx
                .gateway
                .unregister(&self.pod.namespace, &self.pod.name, h);
        }
        self.ctx.usage.stopped(&self.pod, &name);
        self.ctx
            .execs
            .stopped(&self.pod.namespace, &self.pod.name, &name);
        self.ctx
            .stdins
            .closed(&self.pod.namespace, &self.pod.name, &name);
        log.finish();
        let (reason, message) = match &exit {
            Exit::OomKilled => ("OOMKilled", None),
            Exit::Trap(m) => ("Error", Some(m.clone())),
            Exit::StartError(m) => ("StartError", Some(m.clone())),
            Exit::Code(0) if !killed => ("Completed", None),
            _ => ("Error", None),
        };
        debug!(container = %name, exit = ?exit, "container ended");
        self.terminated(&exit, reason, message, started_at);
        Some(exit)
    }

    /// Reports the guest's end as the container's terminated state.
    fn terminated(&mut self, exit: &Exit, reason: &str, message: Option<String>, started_at: Time) {
        self.set_state(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: exit.code(),
                reason: Some(reason.to_string()),
                message,
                started_at: Some(started_at),
                finished_at: Some(now()),
                container_id: self.status.container_id.clone(),
                signal: None,
            }),
            ..Default::default()
        });
        self.ctx.metrics.container_exited(reason);
    }

    /// Runs the postStart hook, if any, unless the pod is deleted first
    /// (then the preStop path takes over).
    async fn post_start(&self, reach: &Reach) -> Option<Result<(), String>> {
        tokio::select! {
            r = hooks::post_start(&self.ready.spec, reach) => r,
            _ = stopped(self.stop.clone()) => None,
        }
    }

    fn fail_start(&mut self, message: String) {
        self.waiting("CreateContainerError", message.clone());
        self.ctx
            .events
            .warning(&self.object, "Failed", format!("Error: {message}"));
    }
}

/// The first TCP port the container declares: where Service traffic for a
/// container on the node's network goes.
fn http_port(c: &k8s_openapi::api::core::v1::Container) -> Option<u16> {
    c.ports
        .iter()
        .flatten()
        .find(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .and_then(|p| u16::try_from(p.container_port).ok())
}

/// Resolves once the pod is told to stop, with its grace period (zero if
/// the worker is gone).
async fn stopped(mut stop: watch::Receiver<Option<Duration>>) -> Duration {
    match stop.wait_for(Option::is_some).await {
        Ok(grace) => grace.unwrap_or_default(),
        Err(_) => Duration::ZERO,
    }
}

/// Durations as Go prints them in kubelet messages ("10ms", "2.5s", "5m0s").
pub(crate) fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(60) {
        format!("{}s", (d.as_millis() as f64 / 1000.0))
    } else {
        format!("{}m{}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}
