//! The one boundary between the node agent and anything that runs code.

use std::any::Any;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{oneshot, Notify};

use crate::exec::Exec;
use crate::http::{HttpLimits, HttpService, Outbound};
use crate::image::PullOptions;
use crate::meter::CpuMeter;
use crate::output::OutputSink;
use crate::RuntimeError;

/// A runtime: Wasm (wasmtime) by default, OCI (runc) as a peer.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The RuntimeClass name this backend serves (`wasmtime`, `runc`).
    fn runtime_class(&self) -> &'static str;

    /// Fetches, verifies and compiles an image, pulling by the pod's
    /// policy and with its pull secrets. Cached: preparing the same image
    /// again costs a map lookup.
    async fn prepare_with(&self, image: &str, pull: &PullOptions)
        -> Result<Prepared, RuntimeError>;

    /// `prepare_with` the default policy (IfNotPresent) and no credentials.
    async fn prepare(&self, image: &str) -> Result<Prepared, RuntimeError> {
        self.prepare_with(image, &PullOptions::default()).await
    }

    /// Whether this backend's containers can have a network namespace of
    /// their own (processes with sockets); Wasm guests have no network
    /// stack to isolate, their traffic goes through the node's gateway.
    fn isolates_network(&self) -> bool {
        false
    }

    /// Starts one container from a prepared image. Returns once the sandbox
    /// exists and the guest has been handed to the executor.
    async fn start(
        &self,
        prepared: &Prepared,
        spec: ContainerSpec,
    ) -> Result<Container, RuntimeError>;
}

/// What `prepare` produced: the image's digest plus backend-private state.
#[derive(Clone)]
pub struct Prepared {
    pub image: String,
    /// `sha256:<hex>` of the image's bytes, as Kubernetes reports `imageID`.
    pub digest: String,
    pub(crate) inner: Arc<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("image", &self.image)
            .field("digest", &self.digest)
            .finish()
    }
}

/// A directory the guest sees at `guest_path`.
#[derive(Debug, Clone)]
pub struct Mount {
    pub host_path: PathBuf,
    pub guest_path: String,
    pub read_only: bool,
}

/// Everything a container needs beyond its image, already resolved by the
/// node agent (ConfigMaps and Secrets read, paths created).
pub struct ContainerSpec {
    /// Full argv, `argv[0]` included, for a runtime whose images carry no
    /// entrypoint (Wasm).
    pub argv: Vec<String>,
    /// The container's `command` and `args` as given (variables expanded),
    /// for a runtime whose images carry an Entrypoint and Cmd (OCI).
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: Option<String>,
    /// The pod's name, as its containers' hostname.
    pub hostname: String,
    /// From a stop request (SIGTERM, for processes) to the forced end.
    pub stop_grace: std::time::Duration,
    /// The port a container listening on the network serves HTTP on: where
    /// the node gateway sends it Service traffic.
    pub http_port: Option<u16>,
    /// The pod's IP, where that port is reached: its own in a pod network,
    /// else the node's.
    pub pod_ip: String,
    /// The pod's network namespace to join (see `oci::network`); `None`
    /// shares the node's, as `hostNetwork: true` pods do.
    pub netns: Option<PathBuf>,
    /// The pod's and container's `securityContext`, for runtimes that run
    /// processes (a Wasm sandbox has no users or capabilities to set).
    pub security: Security,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    /// Bytes of linear memory the guest may use in all.
    pub memory_limit: Option<u64>,
    /// CPU share in millicores; `None` means as much as the node has.
    pub cpu_limit_millis: Option<u64>,
    pub output: Arc<dyn OutputSink>,
    /// Bounds on request handling, for images that serve HTTP.
    pub http: HttpLimits,
    /// Where the guest's outbound HTTP requests go; `None` denies them all.
    pub outbound: Option<Arc<dyn Outbound>>,
    /// The container's stdin (`stdin: true`), for runtimes that can give
    /// their guest one; without it stdin reads as empty.
    pub stdin: Option<GuestStdin>,
}

/// The read end of a container's stdin, which the node writes to (`kubectl
/// attach -i`). The runtime takes it once, when the container starts.
pub struct GuestStdin(
    std::sync::Mutex<Option<Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>>>,
);

impl GuestStdin {
    pub fn new(r: impl tokio::io::AsyncRead + Send + Sync + Unpin + 'static) -> GuestStdin {
        GuestStdin(std::sync::Mutex::new(Some(Box::new(r))))
    }

    pub fn take(&self) -> Option<Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>> {
        self.0.lock().ok()?.take()
    }
}

/// What a `securityContext` asks of a process, the container's settings
/// already laid over the pod's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub run_as_non_root: bool,
    pub read_only_root: bool,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privileges: bool,
    /// Capability names as Kubernetes writes them (`NET_ADMIN`, `ALL`).
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The guest exited by itself with this code.
    Code(i32),
    /// The guest tried to grow memory past its limit.
    OomKilled,
    /// The guest trapped (a crash); the message says where.
    Trap(String),
    /// Stopped by [`Container::kill`].
    Killed,
    /// The runtime could not start the process (a missing executable, say).
    StartError(String),
}

impl Exit {
    /// The exit code kubelet would report for this ending.
    pub fn code(&self) -> i32 {
        match self {
            Exit::Code(c) => *c,
            // What a container killed by the OOM killer or SIGKILL reports.
            Exit::OomKilled | Exit::Killed => 137,
            Exit::Trap(_) => 1,
            // What kubelet reports for a container that never ran.
            Exit::StartError(_) => 128,
        }
    }
}

/// Live numbers about one container.
#[derive(Debug, Clone, Copy, Default)]
pub struct ContainerStats {
    pub memory_bytes: u64,
    /// CPU time used since the container started (see [`crate::meter`]).
    pub cpu_nanos: u64,
}

/// A running container. Dropping it does not stop the guest; call `kill`.
pub struct Container {
    pub(crate) exit: Option<oneshot::Receiver<Exit>>,
    pub(crate) kill: Arc<Notify>,
    pub(crate) memory: Arc<AtomicU64>,
    pub(crate) cpu: CpuMeter,
    pub(crate) http: Option<Arc<dyn HttpService>>,
    /// The guest listens on real sockets in the node's network, so probes
    /// and hooks reach it over TCP rather than through [`Container::http`].
    pub(crate) on_network: bool,
    pub(crate) exec: Option<Arc<dyn Exec>>,
}

impl Container {
    /// Waits for the guest to end. Calling it again after it returned gives
    /// `Killed`, as there is nothing left to wait for.
    pub async fn wait(&mut self) -> Exit {
        match self.exit.take() {
            Some(rx) => rx.await.unwrap_or(Exit::Killed),
            None => Exit::Killed,
        }
    }

    /// The container's HTTP entry point, when its image serves HTTP
    /// (a `wasi:http/incoming-handler` component).
    pub fn http(&self) -> Option<Arc<dyn HttpService>> {
        self.http.clone()
    }

    /// Where commands can be run beside the guest, if the runtime can.
    pub fn exec(&self) -> Option<Arc<dyn Exec>> {
        self.exec.clone()
    }

    /// See the `on_network` field.
    pub fn listens_on_network(&self) -> bool {
        self.on_network
    }

    /// Stops the guest at its next yield point or host call. A container
    /// serving HTTP stops taking requests and ends once those in flight
    /// have been answered. A process (runc) gets SIGTERM, and SIGKILL once
    /// its `stop_grace` is up.
    pub fn kill(&self) {
        self.kill.notify_one();
    }

    /// A handle that stops the guest like [`Container::kill`], usable while
    /// another task waits on the container.
    pub fn kill_handle(&self) -> KillHandle {
        KillHandle(self.kill.clone())
    }

    pub fn stats(&self) -> ContainerStats {
        ContainerStats {
            memory_bytes: self.memory.load(Ordering::Relaxed),
            cpu_nanos: self.cpu.nanos(),
        }
    }

    /// The container's CPU meter, readable after the container is gone
    /// from the caller's hands (a stats endpoint keeps a clone).
    pub fn cpu_meter(&self) -> CpuMeter {
        self.cpu.clone()
    }

    /// Bytes of linear memory the guest holds now, kept live like the meter.
    pub fn memory_gauge(&self) -> Arc<AtomicU64> {
        self.memory.clone()
    }
}

/// Stops a container from anywhere; see [`Container::kill`].
#[derive(Clone)]
pub struct KillHandle(Arc<Notify>);

impl KillHandle {
    pub fn kill(&self) {
        self.0.notify_one();
    }
}
