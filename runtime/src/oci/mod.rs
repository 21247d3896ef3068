//! The OCI backend: containers run by runc from image archives, the peer of
//! the Wasm backend for pods with `runtimeClassName: runc`.
//!
//! An image (an OCI image layout or `docker save` archive, named by a
//! `file://` or `https://` URL) is unpacked once per digest into a root
//! filesystem. Each container gets an overlay over it (so containers of one
//! image share its files and write their own), a runtime spec, and a
//! `runc run` process that lives as long as the container.

pub(crate) mod layout;
pub mod network;
pub(crate) mod pack;
mod proxy;
mod pty;
mod runc;
mod spec;
mod unpack;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::{oneshot, Notify};

use crate::backend::{Backend, Container, ContainerSpec, Exit, Prepared};
use crate::image::{ImageStore, PullOptions, Pulled};
use crate::meter::CpuMeter;
use crate::once::PerDigest;
use crate::output::{OutputSink, StdStream};
use crate::RuntimeError;
use runc::{Cgroups, Runc};
use unpack::Unpacked;

pub use layout::ImageConfig;
pub use pack::pack_dir;

/// How long runc may take to start a container: kubelet's default
/// `--runtime-request-timeout`.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How often a running container's cgroup is read for `kubectl top`.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Host files every container gets read-only, as Docker binds them, so
/// name resolution works as on the node.
const HOST_FILES: [&str; 2] = ["/etc/resolv.conf", "/etc/hosts"];

#[derive(Debug, Clone)]
pub struct OciConfig {
    /// The runc binary (looked up in `PATH` when not absolute).
    pub runc: PathBuf,
    /// The backend's own directory: images, containers, runc's state.
    pub root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum OciSetupError {
    #[error("runc is not usable: {0}")]
    Runc(String),
    #[error("the runc backend needs root (it mounts overlays and runs runc as root)")]
    NotRoot,
    #[error("preparing {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Image(#[from] crate::ImageError),
}

pub struct OciBackend {
    runc: Runc,
    version: String,
    images: ImageStore,
    unpacked_dir: PathBuf,
    containers_dir: PathBuf,
    unpacked: PerDigest<Arc<Unpacked>>,
    next_id: AtomicU64,
}

impl OciBackend {
    /// Checks that runc works here and clears what a previous node process
    /// left running: the node starts every pod afresh, as it does for Wasm.
    pub async fn new(config: OciConfig) -> Result<OciBackend, OciSetupError> {
        if !rustix::process::geteuid().is_root() {
            return Err(OciSetupError::NotRoot);
        }
        let state = config.root.join("state");
        let unpacked_dir = config.root.join("rootfs");
        let containers_dir = config.root.join("containers");
        for d in [&state, &unpacked_dir, &containers_dir] {
            std::fs::create_dir_all(d).map_err(|source| OciSetupError::Io {
                path: d.display().to_string(),
                source,
            })?;
        }
        let runc = Runc::new(config.runc.clone(), state);
        let version = runc.version().await.map_err(OciSetupError::Runc)?;
        for id in runc.list().await {
            tracing::info!(id, "removing a container a previous node process left");
            runc.delete(&id).await;
        }
        if let Ok(entries) = std::fs::read_dir(&containers_dir) {
            for e in entries.flatten() {
                remove_container_dir(&e.path());
            }
        }
        Ok(OciBackend {
            runc,
            version,
            images: ImageStore::new(config.root.join("images"))?,
            unpacked_dir,
            containers_dir,
            unpacked: PerDigest::new(),
            next_id: AtomicU64::new(0),
        })
    }

    /// runc's version, as the node reports its container runtime.
    pub fn version(&self) -> &str {
        &self.version
    }

    fn container_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        format!("shoal-{}-{stamp:x}-{n}", std::process::id())
    }
}

#[async_trait::async_trait]
impl Backend for OciBackend {
    fn runtime_class(&self) -> &'static str {
        "runc"
    }

    fn isolates_network(&self) -> bool {
        true
    }

    async fn prepare_with(
        &self,
        image: &str,
        pull: &PullOptions,
    ) -> Result<Prepared, RuntimeError> {
        let pulled = self.images.pull(image, pull).await?;
        let digest = pulled.image_digest();
        // Unpacked roots are keyed by what they are built from: the
        // archive, or the platform's manifest.
        let (key, source) = match pulled {
            Pulled::File(blob) => (blob.digest, unpack::Source::Archive(blob.path)),
            Pulled::Manifest(m) => {
                if m.wasm_layer().is_some() {
                    return Err(RuntimeError::Create {
                        image: image.to_string(),
                        reason: "a Wasm OCI artifact, not a container image: it runs with runtimeClassName: wasmtime (the default)".into(),
                    });
                }
                let layers = m.layers.into_iter().map(|l| l.blob.path).collect();
                (
                    m.digest,
                    unpack::Source::Layers {
                        config: m.config.blob.path,
                        layers,
                    },
                )
            }
        };
        let cell = self.unpacked.cell(&key);
        let dest = self.unpacked_dir.join(&key);
        let unpacked = cell
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || unpack::unpack(&source, &dest))
                    .await
                    .map_err(|e| format!("unpacking task failed: {e}"))?
                    .map(Arc::new)
            })
            .await
            .map_err(|reason| RuntimeError::Create {
                image: image.to_string(),
                reason,
            })?;
        Ok(Prepared {
            image: image.to_string(),
            digest,
            inner: unpacked.clone(),
        })
    }

    async fn start(
        &self,
        prepared: &Prepared,
        spec: ContainerSpec,
    ) -> Result<Container, RuntimeError> {
        let create = |reason: String| RuntimeError::Create {
            image: prepared.image.clone(),
            reason,
        };
        let image = prepared
            .inner
            .clone()
            .downcast::<Unpacked>()
            .map_err(|_| create("prepared by another backend".into()))?;
        let id = self.container_id();
        let dir = self.containers_dir.join(&id);
        let rootfs = dir.join("rootfs");
        let cgroups_path = format!("/shoal/{id}");
        // A file the pod mounts itself (its own /etc/hosts) wins.
        let host_files: Vec<&str> = HOST_FILES
            .iter()
            .copied()
            .filter(|f| Path::new(f).is_file())
            .filter(|f| !spec.mounts.iter().any(|m| m.guest_path == *f))
            .collect();
        let written = {
            let (image, dir, rootfs) = (image.clone(), dir.clone(), rootfs.clone());
            let runtime_spec = spec::runtime_spec(
                &image.config,
                &spec,
                &spec::Placement {
                    rootfs: &rootfs,
                    hostname: &spec.hostname,
                    cgroups_path: &cgroups_path,
                    host_files: &host_files,
                },
            );
            tokio::task::spawn_blocking(move || -> Result<(), String> {
                let runtime_spec = runtime_spec?;
                mount_overlay(&image.rootfs, &dir, &rootfs)?;
                let json = serde_json::to_vec_pretty(&runtime_spec).map_err(|e| e.to_string())?;
                std::fs::write(dir.join("config.json"), json)
                    .map_err(|e| format!("writing the runtime spec: {e}"))
            })
            .await
            .map_err(|e| format!("setup task failed: {e}"))
            .and_then(|r| r)
        };
        if let Err(reason) = written {
            remove_container_dir(&dir);
            return Err(create(reason));
        }
        let mut child = match self.runc.run(&id, &dir) {
            Ok(c) => c,
            Err(e) => {
                remove_container_dir(&dir);
                return Err(create(format!("starting runc: {e}")));
            }
        };
        let pumps = [
            child
                .stdout
                .take()
                .map(|r| tokio::spawn(pump(r, StdStream::Stdout, spec.output.clone()))),
            child
                .stderr
                .take()
                .map(|r| tokio::spawn(pump(r, StdStream::Stderr, spec.output.clone()))),
        ];
        if tokio::time::timeout(START_TIMEOUT, started(&mut child, &dir))
            .await
            .is_err()
        {
            // A runc stuck building the container (a hung mount, say): give
            // up on it as kubelet gives up on a CRI call, and leave nothing.
            tracing::warn!(container = %id, "runc did not start the container in time");
            self.runc.delete(&id).await;
            let _ = child.kill().await;
            for p in pumps.into_iter().flatten() {
                p.abort();
            }
            remove_container_dir(&dir);
            return Err(create(format!(
                "runc did not start the container within {} s",
                START_TIMEOUT.as_secs()
            )));
        }
        let cgroups = Cgroups::of(&cgroups_path);
        let memory = Arc::new(AtomicU64::new(0));
        let cpu = CpuMeter::default();
        let kill = Arc::new(Notify::new());
        let draining = Arc::new(AtomicBool::new(false));
        let (exit_tx, exit_rx) = oneshot::channel();
        let http = spec.http_port.map(|port| {
            Arc::new(proxy::PortProxy::new(
                &spec.pod_ip,
                port,
                spec.http,
                draining.clone(),
            )) as Arc<dyn crate::http::HttpService>
        });
        let exec_id = id.clone();
        let run = Running {
            runc: self.runc.clone(),
            id,
            dir,
            cgroups,
            memory: memory.clone(),
            cpu: cpu.clone(),
            kill: kill.clone(),
            draining,
            grace: spec.stop_grace,
        };
        tokio::spawn(async move {
            let exit = run.supervise(child, pumps).await;
            let _ = exit_tx.send(exit);
        });
        Ok(Container {
            exit: Some(exit_rx),
            kill,
            memory,
            cpu,
            http,
            on_network: true,
            exec: Some(Arc::new(RuncExec {
                runc: self.runc.clone(),
                id: exec_id,
            })),
        })
    }
}

/// One container from `runc run` to `runc delete`.
struct Running {
    runc: Runc,
    id: String,
    dir: PathBuf,
    cgroups: Cgroups,
    memory: Arc<AtomicU64>,
    cpu: CpuMeter,
    kill: Arc<Notify>,
    draining: Arc<AtomicBool>,
    grace: Duration,
}

impl Running {
    async fn supervise(
        self,
        mut child: tokio::process::Child,
        pumps: [Option<tokio::task::JoinHandle<()>>; 2],
    ) -> Exit {
        let stop = async {
            self.kill.notified().await;
            self.draining.store(true, Ordering::Release);
            // As kubelet: SIGTERM, then SIGKILL once the grace period is up.
            self.runc.kill(&self.id, "TERM").await;
            tokio::time::sleep(self.grace).await;
            self.runc.kill(&self.id, "KILL").await;
        };
        let stats = async {
            let mut seen_cpu = 0;
            loop {
                tokio::time::sleep(STATS_INTERVAL).await;
                if let Some(m) = self.cgroups.memory_bytes() {
                    self.memory.store(m, Ordering::Relaxed);
                }
                if let Some(total) = self.cgroups.cpu_nanos() {
                    self.cpu
                        .add(Duration::from_nanos(total.saturating_sub(seen_cpu)));
                    seen_cpu = seen_cpu.max(total);
                }
            }
        };
        let status = {
            tokio::pin!(stop, stats);
            let mut stopped = false;
            loop {
                tokio::select! {
                    s = child.wait() => break s,
                    () = &mut stop, if !stopped => stopped = true,
                    () = &mut stats => {}
                }
            }
        };
        // Output written just before the end is in the log before the end
        // is reported.
        for p in pumps.into_iter().flatten() {
            let _ = p.await;
        }
        let oom = self.cgroups.oom_kills() > 0;
        let start_error = read_start_error(&self.dir);
        self.runc.delete(&self.id).await;
        let dir = self.dir.clone();
        let _ = tokio::task::spawn_blocking(move || remove_container_dir(&dir)).await;
        let code = match status {
            Ok(s) => s.code().unwrap_or_else(|| {
                use std::os::unix::process::ExitStatusExt;
                128 + s.signal().unwrap_or(9)
            }),
            Err(e) => {
                tracing::warn!(id = %self.id, error = %e, "waiting for runc");
                return Exit::Killed;
            }
        };
        match (code, start_error) {
            (_, Some(why)) if code != 0 => Exit::StartError(why),
            (137, _) if oom => Exit::OomKilled,
            _ => Exit::Code(code),
        }
    }
}

/// `kubectl exec` into a runc container: `runc exec` by its id.
struct RuncExec {
    runc: Runc,
    id: String,
}

#[async_trait::async_trait]
impl crate::exec::Exec for RuncExec {
    async fn exec(
        &self,
        argv: &[String],
        opts: crate::exec::ExecOptions,
    ) -> Result<crate::exec::ExecSession, String> {
        if argv.is_empty() {
            return Err("no command given".into());
        }
        if opts.tty {
            return self.exec_tty(argv, opts.stdin);
        }
        let mut child = self
            .runc
            .exec(&self.id, argv, opts.stdin)
            .map_err(|e| format!("starting runc exec: {e}"))?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err("runc exec has no output pipes".into());
        };
        let input = child.stdin.take();
        Ok(crate::exec::ExecSession {
            stdin: input.map(|i| Box::pin(i) as _),
            stdout: Box::pin(stdout),
            stderr: Box::pin(stderr),
            exit: exit_code(child),
            resize: None,
        })
    }
}

impl RuncExec {
    /// The command on a terminal: runc's stdio is a pty's slave end (what
    /// runc itself says lands on it too), the session holds the master.
    fn exec_tty(&self, argv: &[String], stdin: bool) -> Result<crate::exec::ExecSession, String> {
        let (master, slave) = pty::open().map_err(|e| format!("opening a terminal: {e}"))?;
        let child = self
            .runc
            .exec_on_terminal(&self.id, argv, slave)
            .map_err(|e| format!("starting runc exec: {e}"))?;
        let resizer = master.clone();
        Ok(crate::exec::ExecSession {
            stdin: stdin.then(|| Box::pin(master.clone()) as _),
            stdout: Box::pin(master),
            stderr: Box::pin(tokio::io::empty()),
            exit: exit_code(child),
            resize: Some(Box::new(move |columns, rows| resizer.resize(columns, rows))),
        })
    }
}

/// runc's exit code is the command's.
fn exit_code(
    mut child: tokio::process::Child,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<i32, String>> + Send>> {
    Box::pin(async move {
        let status = child
            .wait()
            .await
            .map_err(|e| format!("waiting for runc exec: {e}"))?;
        Ok(status.code().unwrap_or(137))
    })
}

/// Waits until runc has started the process (its pid file appears) or has
/// given up (it exited: `supervise` reports why). Returning before that
/// would count a container as running while runc is still setting it up.
async fn started(child: &mut tokio::process::Child, dir: &Path) {
    let pid = dir.join(runc::PID_FILE);
    loop {
        if tokio::fs::try_exists(&pid).await.unwrap_or(false)
            || !matches!(child.try_wait(), Ok(None))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Copies one of the container's streams into its log.
async fn pump(
    mut r: impl tokio::io::AsyncRead + Unpin,
    stream: StdStream,
    out: Arc<dyn OutputSink>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => out.write(stream, &buf[..n]),
        }
    }
}

/// runc's own complaint when it could not start the process (an `exec`
/// of a missing binary, a bad mount), which it logs, not the container.
fn read_start_error(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("runc.log")).ok()?;
    text.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        if v.get("level").and_then(|l| l.as_str()) != Some("error") {
            return None;
        }
        v.get("msg")
            .and_then(|m| m.as_str())
            .map(|m| m.trim_start_matches("runc run failed: ").to_string())
    })
}

/// Mounts the container's root: the image's files below, its own writes
/// above in `dir/upper`.
fn mount_overlay(lower: &Path, dir: &Path, target: &Path) -> Result<(), String> {
    let upper = dir.join("upper");
    let work = dir.join("work");
    for d in [&upper, &work, &target.to_path_buf()] {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let options = std::ffi::CString::new(options)
        .map_err(|_| "a path of the overlay holds a NUL byte".to_string())?;
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        rustix::mount::MountFlags::empty(),
        Some(options.as_c_str()),
    )
    .map_err(|e| format!("mounting the container's overlay root: {e}"))
}

/// Unmounts and removes a container's directory; what cannot be removed is
/// logged and left.
fn remove_container_dir(dir: &Path) {
    let rootfs = dir.join("rootfs");
    if rootfs.exists() {
        // Not mounted (a start that failed early) is fine.
        let _ = rustix::mount::unmount(&rootfs, rustix::mount::UnmountFlags::DETACH);
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "removing a container's directory");
        }
    }
}
