//! The integration harness: real `shoal` processes on free loopback ports in
//! temporary directories, driven by the real `kubectl` and the `kube` client.
//! A dropped process is killed; if the test failed, its log is printed.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// The `shoal` binary: `SHOAL_BIN`, or the one cargo built next to this test.
pub fn shoal_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SHOAL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> → target/<profile>/shoal
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    profile_dir.join("shoal")
}

/// A loopback port nobody is listening on right now.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// One `shoal server` process and its data directory.
pub struct Server {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub addr: SocketAddr,
    extra_args: Vec<String>,
}

impl Server {
    pub fn start() -> Result<Server> {
        Self::start_with(&[])
    }

    /// Starts a server with extra `shoal server` flags.
    pub fn start_with(extra: &[&str]) -> Result<Server> {
        let dir = tempfile::tempdir()?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let mut s = Server {
            child: None,
            dir,
            addr,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn()?;
        Ok(s)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig.yaml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = shoal_bin();
        if !bin.exists() {
            bail!(
                "{} is missing: build it first (`cargo build --bin shoal`)",
                bin.display()
            );
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut child = Command::new(&bin)
            .arg("server")
            .arg("--data-dir")
            .arg(self.dir.path())
            .arg("--listen")
            .arg(self.addr.to_string())
            .args(&self.extra_args)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        self.child = Some(child);
        // The server prints its KUBECONFIG line once it is listening.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("export KUBECONFIG=") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .map_err(|_| anyhow!("server did not become ready:\n{}", self.logs()))?;
        Ok(())
    }

    /// SIGKILL: no shutdown path runs, as in a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same data directory and port.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub async fn client(&self) -> Result<kube::Client> {
        Ok(shoal_sdk::client_from_kubeconfig(&self.kubeconfig()).await?)
    }

    pub fn token(&self) -> Result<String> {
        Ok(
            std::fs::read_to_string(self.dir.path().join("admin-token"))?
                .trim()
                .to_string(),
        )
    }

    /// `kubectl` with this server's kubeconfig and a private cache.
    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.dir.path().join("kube-cache"))
            .args(args);
        c
    }

    pub fn kubectl_raw(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut cmd = self.kubectl_cmd(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("running kubectl")?;
        if let Some(mut pipe) = child.stdin.take() {
            if let Some(input) = stdin {
                pipe.write_all(input.as_bytes())?;
            }
        }
        Ok(child.wait_with_output()?)
    }

    /// Runs kubectl and returns stdout; fails with stderr if it fails.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_in(args, None)
    }

    pub fn kubectl_in(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.kubectl_raw(args, stdin)?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn kubectl_err(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.kubectl_raw(args, stdin)?;
        if out.status.success() {
            bail!(
                "kubectl {} succeeded but should have failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- shoal server log ({}) ----\n{}",
                self.addr,
                self.logs()
            );
        }
    }
}

/// Polls `check` until it returns Some, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
