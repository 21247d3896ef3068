//! The runc command line, and the cgroup files runc leaves for a container.
//! Shoal drives runc as containerd's shim does: one `runc run` process per
//! container whose stdio are the container's and whose exit status is the
//! container's; `kill` and `delete` by id.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

/// Written by `runc run` once the container's process has been told to
/// exec: the moment the container counts as started.
pub(crate) const PID_FILE: &str = "pid";

#[derive(Debug, Clone)]
pub(crate) struct Runc {
    bin: PathBuf,
    /// runc's state directory (`--root`), Shoal's alone so that cleaning up
    /// after a crash never touches another runtime's containers.
    state: PathBuf,
}

impl Runc {
    pub(crate) fn new(bin: PathBuf, state: PathBuf) -> Runc {
        Runc { bin, state }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(&self.state);
        c.stdin(Stdio::null());
        c.kill_on_drop(false);
        c
    }

    /// `runc --version`'s first line, or why runc cannot be used.
    pub(crate) async fn version(&self) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .arg("--version")
            .output()
            .await
            .map_err(|e| format!("running {} --version: {e}", self.bin.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} --version failed: {}",
                self.bin.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or("unknown")
            .to_string())
    }

    /// Starts `runc run` for the bundle; the child's stdout and stderr are
    /// the container's. `--keep` leaves the stopped container (and its
    /// cgroup, where an OOM kill is recorded) until [`Runc::delete`].
    /// runc's own errors go to `bundle/runc.log` as JSON, apart from the
    /// container's output.
    pub(crate) fn run(&self, id: &str, bundle: &Path) -> std::io::Result<Child> {
        self.command()
            .arg("--log")
            .arg(bundle.join("runc.log"))
            .args(["--log-format", "json"])
            .arg("run")
            .arg("--keep")
            .arg("--pid-file")
            .arg(bundle.join(PID_FILE))
            .arg("--bundle")
            .arg(bundle)
            .arg(id)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    }

    /// Starts `argv` in the running container with the process settings of
    /// its spec (env, user, cwd); stdout and stderr piped, stdin if asked.
    pub(crate) fn exec(&self, id: &str, argv: &[String], stdin: bool) -> std::io::Result<Child> {
        let mut c = self.command();
        if stdin {
            c.stdin(Stdio::piped());
        }
        c.arg("exec")
            .arg(id)
            .args(argv)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A session whose client went away ends its runc exec.
            .kill_on_drop(true)
            .spawn()
    }

    /// `exec` on a terminal: `terminal` (a pty's slave end) becomes runc's
    /// stdio and, through util-linux's `setsid --ctty`, its controlling
    /// terminal, which `runc exec --tty` needs; `--wait` passes runc's
    /// exit code through.
    pub(crate) fn exec_on_terminal(
        &self,
        id: &str,
        argv: &[String],
        terminal: std::os::fd::OwnedFd,
    ) -> std::io::Result<Child> {
        let (out, err) = (terminal.try_clone()?, terminal.try_clone()?);
        Command::new("setsid")
            .args(["--wait", "--ctty"])
            .arg(&self.bin)
            .arg("--root")
            .arg(&self.state)
            .args(["exec", "--tty"])
            .arg(id)
            .args(argv)
            .stdin(Stdio::from(terminal))
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
    }

    /// Sends `signal` (`TERM`, `KILL`) to the container's init process.
    pub(crate) async fn kill(&self, id: &str, signal: &str) {
        let out = self.command().args(["kill", id, signal]).output().await;
        match out {
            Ok(o) if o.status.success() => {}
            // Already gone: nothing to stop.
            Ok(o) => tracing::debug!(
                id,
                signal,
                err = %String::from_utf8_lossy(&o.stderr).trim(),
                "runc kill"
            ),
            Err(e) => tracing::warn!(id, signal, error = %e, "running runc kill"),
        }
    }

    /// Removes the container's state and cgroup, stopping it first if needed.
    pub(crate) async fn delete(&self, id: &str) {
        match self
            .command()
            .args(["delete", "--force", id])
            .output()
            .await
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => tracing::debug!(
                id,
                err = %String::from_utf8_lossy(&o.stderr).trim(),
                "runc delete"
            ),
            Err(e) => tracing::warn!(id, error = %e, "running runc delete"),
        }
    }

    /// Ids of the containers in Shoal's state directory.
    pub(crate) async fn list(&self) -> Vec<String> {
        match self.command().args(["list", "-q"]).output().await {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Where a container's cgroup files are: cgroup v2 keeps one tree, v1 a
/// tree per controller.
#[derive(Debug, Clone)]
pub(crate) enum Cgroups {
    V2(PathBuf),
    V1 { memory: PathBuf, cpuacct: PathBuf },
}

impl Cgroups {
    /// The cgroups of `path` (relative to each hierarchy's root).
    pub(crate) fn of(path: &str) -> Cgroups {
        let base = Path::new("/sys/fs/cgroup");
        let rel = path.trim_start_matches('/');
        if base.join("cgroup.controllers").exists() {
            Cgroups::V2(base.join(rel))
        } else {
            Cgroups::V1 {
                memory: base.join("memory").join(rel),
                cpuacct: base.join("cpuacct").join(rel),
            }
        }
    }

    pub(crate) fn memory_bytes(&self) -> Option<u64> {
        let file = match self {
            Cgroups::V2(d) => d.join("memory.current"),
            Cgroups::V1 { memory, .. } => memory.join("memory.usage_in_bytes"),
        };
        read_number(&file)
    }

    pub(crate) fn cpu_nanos(&self) -> Option<u64> {
        match self {
            Cgroups::V2(d) => {
                let stat = std::fs::read_to_string(d.join("cpu.stat")).ok()?;
                field(&stat, "usage_usec").map(|us| us.saturating_mul(1000))
            }
            Cgroups::V1 { cpuacct, .. } => read_number(&cpuacct.join("cpuacct.usage")),
        }
    }

    /// How many times the kernel's OOM killer struck in this cgroup.
    pub(crate) fn oom_kills(&self) -> u64 {
        let (file, key) = match self {
            Cgroups::V2(d) => (d.join("memory.events"), "oom_kill"),
            Cgroups::V1 { memory, .. } => (memory.join("memory.oom_control"), "oom_kill"),
        };
        std::fs::read_to_string(file)
            .ok()
            .and_then(|t| field(&t, key))
            .unwrap_or(0)
    }
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a `key value` per line file.
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}
