//! The integration harness: real `shoal` processes on free loopback ports in
//! temporary directories, driven by the real `kubectl` and the `kube` client.
//! A dropped process is killed; if the test failed, its log is printed.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;

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
    /// `server`, or `up` for a server with its embedded node.
    role: &'static str,
    extra_args: Vec<String>,
}

/// The name `Server::up` gives its embedded node.
pub const UP_NODE: &str = "node-up";

impl Server {
    pub fn start() -> Result<Server> {
        Self::start_with(&[])
    }

    /// Starts a server with extra `shoal server` flags.
    pub fn start_with(extra: &[&str]) -> Result<Server> {
        Self::launch(
            "server",
            "127.0.0.1",
            extra.iter().map(|s| s.to_string()).collect(),
        )
    }

    /// `shoal up`: a server plus one embedded node named [`UP_NODE`], with
    /// millisecond back-off so restart tests do not wait.
    pub fn up(extra: &[&str]) -> Result<Server> {
        Self::up_on("127.0.0.1", extra)
    }

    /// [`Server::up`] listening, and serving its node's ports, on `ip`: a
    /// loopback address of the test's own keeps fixed NodePorts from
    /// meeting another test's.
    pub fn up_on(ip: &str, extra: &[&str]) -> Result<Server> {
        let mut args: Vec<String> = ["--node-port", "0", "--node-name", UP_NODE]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::launch("up", ip, args)
    }

    fn launch(role: &'static str, ip: &str, mut extra_args: Vec<String>) -> Result<Server> {
        if !extra_args.iter().any(|a| a.starts_with("--cluster-cidr")) {
            // Tests run side by side on one host: their pod networks (the
            // bridges of nodes running runc pods) must not overlap.
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = 100 + NEXT.fetch_add(1, Ordering::Relaxed) % 150;
            extra_args.extend(["--cluster-cidr".to_string(), format!("10.{n}.0.0/16")]);
        }
        let dir = tempfile::tempdir()?;
        let addr: SocketAddr = format!("{ip}:{}", free_port()?).parse()?;
        let mut s = Server {
            child: None,
            dir,
            addr,
            role,
            extra_args,
        };
        s.spawn()?;
        Ok(s)
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The process id, for benchmarks that read its memory.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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
            .arg(self.role)
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

    /// Waits until each named Node reports Ready.
    pub async fn wait_nodes_ready(&self, names: &[&str]) -> Result<()> {
        use k8s_openapi::api::core::v1::Node as KNode;
        let nodes: kube::Api<KNode> = kube::Api::all(self.client().await?);
        for name in names {
            wait_for(
                &format!("node {name} Ready"),
                Duration::from_secs(90),
                || async {
                    let n = nodes.get(name).await.ok()?;
                    n.status?
                        .conditions?
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                        .then_some(())
                },
            )
            .await?;
        }
        Ok(())
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

    /// Starts `kubectl port-forward` with `args` (local port 0, as in
    /// `pod/x :8080`) and waits until it listens; `env` is added to
    /// kubectl's environment.
    pub fn port_forward(&self, args: &[&str], env: &[(&str, &str)]) -> Result<PortForward> {
        use std::io::Read;
        let mut cmd = self.kubectl_cmd(&[&["port-forward"], args].concat());
        cmd.envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("running kubectl port-forward")?;
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        let stdout = child.stdout.take().context("kubectl's stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                // "Forwarding from 127.0.0.1:41233 -> 8080"
                if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                    let port = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(port);
                }
            }
        });
        let mut pf = PortForward {
            child: Mutex::new(child),
            local: String::new(),
            stderr,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(port) => {
                pf.local = format!("127.0.0.1:{port}");
                Ok(pf)
            }
            Err(_) => bail!(
                "kubectl port-forward {} did not start listening: {}",
                args.join(" "),
                pf.stderr()
            ),
        }
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
        if self.role == "up" {
            remove_node_leftovers(&self.dir.path().join("node"));
        }
        if std::thread::panicking() {
            eprintln!(
                "---- shoal {} log ({}) ----\n{}",
                self.role,
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

/// One `shoal node` process joined to a server.
pub struct Node {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub name: String,
    pub address: String,
    args: Vec<String>,
}

impl Node {
    /// Starts `shoal node` on its own loopback `address` (e.g. 127.0.0.2).
    pub fn start(server: &Server, name: &str, address: &str, extra: &[&str]) -> Result<Node> {
        let dir = tempfile::tempdir()?;
        let mut args: Vec<String> = vec![
            "node".into(),
            "--server".into(),
            server.url(),
            "--token-file".into(),
            server.data_dir().join("node-token").display().to_string(),
            "--name".into(),
            name.into(),
            "--data-dir".into(),
            dir.path().display().to_string(),
            "--address".into(),
            address.into(),
            "--node-port".into(),
            "0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut n = Node {
            child: None,
            dir,
            name: name.into(),
            address: address.into(),
            args,
        };
        n.spawn()?;
        Ok(n)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(shoal_bin())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting shoal node")?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, as in a crash: every guest in the process dies with it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the agent again on the same data directory.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// What a killed node leaves on the host, removed as the node itself would
/// on its next start: runc containers, their overlay mounts (which would
/// also keep the temporary directory from going), its bridge and its pods'
/// network namespaces.
fn remove_node_leftovers(node_dir: &Path) {
    let state = node_dir.join("oci/state");
    if state.is_dir() {
        let runc = |args: &[&str]| {
            Command::new("runc")
                .arg("--root")
                .arg(&state)
                .args(args)
                .output()
        };
        if let Ok(out) = runc(&["list", "-q"]) {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = runc(&["delete", "--force", id]);
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(node_dir.join("oci/containers")) {
        for e in entries.flatten() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(e.path().join("rootfs"))
                .stderr(Stdio::null())
                .status();
        }
    }
    let Ok(bridge) = std::fs::read_to_string(node_dir.join("pod-network-bridge")) else {
        return;
    };
    let bridge = bridge.trim();
    let ip = |args: &[&str]| {
        let _ = Command::new("ip").args(args).stderr(Stdio::null()).status();
    };
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{bridge}-")) {
                ip(&["netns", "del", &name]);
            }
        }
    }
    ip(&["link", "del", bridge]);
    // The node's masquerade table (see runtime/src/oci/network.rs).
    let _ = Command::new("nft")
        .args(["delete", "table", "ip", bridge])
        .stderr(Stdio::null())
        .status();
}

/// Resident memory of a process in bytes (VmRSS), for benchmarks.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        remove_node_leftovers(self.dir.path());
        if std::thread::panicking() {
            eprintln!("---- shoal node {} log ----\n{}", self.name, self.logs());
        }
    }
}

/// The sample guests (`samples/wat`), compiled once per test process into a
/// directory of `.wasm` files. Returns `file://` image URLs by sample name.
pub fn sample(name: &str) -> Result<String> {
    static DIR: std::sync::OnceLock<std::result::Result<PathBuf, String>> =
        std::sync::OnceLock::new();
    let dir = DIR
        .get_or_init(|| build_samples().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("building samples: {e}"))?;
    let path = dir.join(format!("{name}.wasm"));
    if !path.exists() {
        bail!("no sample named {name} in {}", dir.display());
    }
    Ok(format!("file://{}", path.display()))
}

fn build_samples() -> Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/wat");
    let dir = std::env::temp_dir().join(format!("shoal-test-samples-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for entry in std::fs::read_dir(&src).with_context(|| format!("reading {}", src.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("wat") {
            continue;
        }
        // http-*.wat are core modules that orchestrator/build.rs wraps into
        // components (shoal_orchestrator::demo::MODULES has them).
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("http-"))
        {
            continue;
        }
        let wasm =
            wat::parse_file(&path).with_context(|| format!("compiling {}", path.display()))?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        std::fs::write(dir.join(format!("{stem}.wasm")), wasm)?;
    }
    Ok(dir)
}

/// A Rust sample built by `scripts/build-samples.sh`: `kind` is `p1`
/// (core module) or `p2` (WASI 0.2 component). `None` when they have not
/// been built, unless `SHOAL_REQUIRE_RUST_SAMPLES=1` (as the test script
/// sets after building them) makes that an error.
pub fn rust_sample(kind: &str, name: &str) -> Result<Option<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm-samples")
        .join(kind)
        .join(format!("{name}.wasm"));
    if path.exists() {
        let path = path.canonicalize()?;
        return Ok(Some(format!("file://{}", path.display())));
    }
    if std::env::var("SHOAL_REQUIRE_RUST_SAMPLES").as_deref() == Ok("1") {
        bail!(
            "{} is missing: run scripts/build-samples.sh",
            path.display()
        );
    }
    eprintln!(
        "skipping: {} not built (scripts/build-samples.sh builds it)",
        path.display()
    );
    Ok(None)
}

/// A pod manifest (YAML) with one container running `image`.
pub fn pod_yaml(name: &str, image: &str, extra_spec: &str, extra_container: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{extra_spec}  containers:\n  - name: main\n    image: {image}\n{extra_container}"
    )
}

/// One HTTP/1.1 exchange on a fresh connection: `raw` is sent as is (so
/// tests can send malformed requests too); the answer is read to the end.
/// Returns the status and the (de-chunked) body.
pub async fn http_exchange(addr: &str, raw: &[u8]) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.write_all(raw).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP response from {addr}: {text:?}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line from {addr}: {head:?}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// A running `kubectl port-forward`, stopped when dropped.
pub struct PortForward {
    child: Mutex<Child>,
    /// Where it listens: `127.0.0.1:<port>`.
    pub local: String,
    stderr: Arc<Mutex<String>>,
}

impl PortForward {
    /// What kubectl has printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Whether kubectl is still running.
    pub fn running(&self) -> bool {
        self.child
            .lock()
            .is_ok_and(|mut c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for kubectl to report that forwarding `port` failed, and
    /// returns what it said.
    pub async fn refusal(&self, port: u16) -> Result<String> {
        let needle = format!("error forwarding port {port}");
        wait_for(
            &format!("kubectl's error about port {port}"),
            Duration::from_secs(90),
            || async {
                let said = self.stderr();
                said.contains(&needle).then_some(said)
            },
        )
        .await
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        if let Ok(c) = self.child.get_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `GET path` on a fresh connection.
pub async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    http_get_host(addr, addr, path).await
}

/// `GET path` with the given `Host` header (for Ingress rules).
pub async fn http_get_host(addr: &str, host: &str, path: &str) -> Result<(u16, String)> {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    http_exchange(addr, raw.as_bytes()).await
}

/// An OCI image archive of Debian's static busybox (every applet linked,
/// `/www/index.html` to serve), packed once per test process by `shoal
/// pack-image`. Returns its `file://` image name.
pub fn busybox_image() -> Result<String> {
    static IMAGE: std::sync::OnceLock<std::result::Result<String, String>> =
        std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| build_busybox().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!("packing the busybox image: {e}"))
}

fn build_busybox() -> Result<String> {
    let dir = std::env::temp_dir().join(format!("shoal-test-busybox-{}", std::process::id()));
    let root = dir.join("root");
    for d in ["bin", "etc", "tmp", "www"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copying /bin/busybox (Debian's busybox-static; .ci/run installs it)")?;
    let list = Command::new("/bin/busybox").arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n")?;
    std::fs::write(root.join("www/index.html"), "hello from a runc pod\n")?;
    let out = dir.join("busybox.tar");
    let packed = Command::new(shoal_bin())
        .args(["pack-image", "--cmd", "sh"])
        .arg(&root)
        .arg("--output")
        .arg(&out)
        .output()?;
    if !packed.status.success() {
        bail!(
            "shoal pack-image failed: {}",
            String::from_utf8_lossy(&packed.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&packed.stdout).trim().to_string())
}

/// A copy of a sample's module, in `dir`, that no store has seen: the same
/// program with a custom section naming `tag` (so its digest is new, and a
/// pull of it really downloads and compiles).
pub fn fresh_wasm(sample_url: &str, dir: &Path, tag: &str) -> Result<PathBuf> {
    let mut bytes = std::fs::read(sample_url.trim_start_matches("file://"))?;
    let name = b"shoal";
    let body_len = 1 + name.len() + tag.len();
    let len = u8::try_from(body_len).context("tag too long for a one-byte section size")?;
    bytes.push(0);
    bytes.push(len);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(tag.as_bytes());
    let path = dir.join(format!("fresh-{tag}.wasm"));
    std::fs::write(&path, bytes)?;
    Ok(path)
}

/// The user a private `Registry` lets pull and push, and the password.
pub const REGISTRY_USER: &str = "puller";
pub const REGISTRY_PASSWORD: &str = "pull-s3cret";
/// bcrypt of `REGISTRY_PASSWORD` at cost 4 (docker-registry's htpasswd
/// takes only bcrypt).
const REGISTRY_HTPASSWD: &str =
    "puller:$2b$04$jmqwkrUX9TwJR9hJ2s.ECeRPxv9n3A4AKgjV31kQxtiID2NnOfKPu";

/// How a test registry lets clients in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryAuth {
    /// Anyone may pull and push.
    Open,
    /// Basic auth against an htpasswd file (`REGISTRY_USER`).
    Basic,
    /// Bearer tokens from a token service, as Docker Hub and GHCR work:
    /// the service grants `REGISTRY_USER` what it asks, anyone else
    /// nothing.
    Token,
}

/// A real OCI registry: Debian's `docker-registry` (the CNCF distribution
/// server, which `.ci/run` installs) on a free loopback port, storing in
/// a temporary directory. Stopped when dropped.
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    /// `127.0.0.1:<port>`: the registry part of image references.
    pub host: String,
    tokens: Option<tokio::task::JoinHandle<()>>,
}

/// The token service's name for the registry and its own, as the tokens
/// it signs carry them.
const TOKEN_SERVICE: &str = "shoal-registry";
const TOKEN_ISSUER: &str = "shoal-tests";

impl Registry {
    pub async fn start(auth: RegistryAuth) -> Result<Registry> {
        let dir = tempfile::tempdir()?;
        let host = format!("127.0.0.1:{}", free_port()?);
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n  secret: shoal-tests\n",
            dir.path().join("data").display()
        );
        let mut tokens = None;
        match auth {
            RegistryAuth::Open => {}
            RegistryAuth::Basic => {
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{REGISTRY_HTPASSWD}\n"))?;
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: shoal-tests\n    path: {}\n",
                    htpasswd.display()
                ));
            }
            RegistryAuth::Token => {
                let (realm, cert, task) = token_service().await?;
                let bundle = dir.path().join("token.pem");
                std::fs::write(&bundle, cert)?;
                config.push_str(&format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                    bundle.display()
                ));
                tokens = Some(task);
            }
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry (Debian's docker-registry; .ci/run installs it)")?;
        let r = Registry {
            child,
            dir,
            host,
            tokens,
        };
        let addr = r.host.clone();
        wait_for(
            "the registry to answer",
            Duration::from_secs(20),
            || async {
                let (status, _) = http_get(&addr, "/v2/").await.ok()?;
                matches!(status, 200 | 401).then_some(())
            },
        )
        .await?;
        Ok(r)
    }

    /// The registry's log, access lines included: what clients fetched.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `shoal push file reference` (as `REGISTRY_USER` when `login`);
    /// returns the `name@sha256:` it printed. Async, so a token service on
    /// this test's runtime can answer meanwhile.
    pub async fn push(&self, file: &str, reference: &str, login: bool) -> Result<String> {
        let file = file.strip_prefix("file://").unwrap_or(file);
        let mut cmd = tokio::process::Command::new(shoal_bin());
        cmd.args(["push", file, reference]);
        if login {
            cmd.args(["--username", REGISTRY_USER])
                .env("SHOAL_REGISTRY_PASSWORD", REGISTRY_PASSWORD);
        }
        let out = cmd.output().await?;
        if !out.status.success() {
            bail!(
                "shoal push {file} {reference} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// A token service as the distribution spec describes one: `GET
/// /token?service=…&scope=repository:<name>:<actions>`, Basic credentials
/// optional, answering `{"token": <JWT>}` signed with ES256 by a
/// self-signed key whose certificate the registry trusts (`x5c`). Returns
/// its realm URL, that certificate (PEM) and the serving task.
async fn token_service() -> Result<(String, String, tokio::task::JoinHandle<()>)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = rcgen::CertificateParams::new(vec!["shoal-token-service".to_string()])?
        .self_signed(&key)?;
    let rng = ring::rand::SystemRandom::new();
    let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &key.serialize_der(),
        &rng,
    )
    .map_err(|e| anyhow!("loading the token key: {e}"))?;
    let x5c = base64::engine::general_purpose::STANDARD.encode(cert.der());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let realm = format!("http://{}/token", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let signer = std::sync::Arc::new((signer, rng, x5c));
        while let Ok((mut conn, _)) = listener.accept().await {
            let signer = signer.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let (signer, rng, x5c) = &*signer;
                let body = grant(
                    &head,
                    |msg| {
                        signer
                            .sign(rng, msg)
                            .map(|s| s.as_ref().to_vec())
                            .unwrap_or_default()
                    },
                    x5c,
                );
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    });
    Ok((realm, cert.pem(), task))
}

/// The token service's answer to one request head: every scope asked for
/// is granted to `REGISTRY_USER` with the right password, none to anyone
/// else (the registry then refuses them, as a private repository does).
fn grant(head: &str, sign: impl Fn(&[u8]) -> Vec<u8>, x5c: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let target = head.split_whitespace().nth(1).unwrap_or_default();
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    let expected = base64::engine::general_purpose::STANDARD
        .encode(format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}"));
    let authorized = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("authorization:")
            && l.trim_end().ends_with(&format!("Basic {expected}"))
    });
    let mut access = Vec::new();
    for (_, scope) in pairs.iter().filter(|(k, _)| k == "scope") {
        let mut parts = scope.splitn(3, ':');
        if let (Some(kind), Some(name), Some(actions), true) =
            (parts.next(), parts.next(), parts.next(), authorized)
        {
            let actions: Vec<&str> = actions.split(',').collect();
            access.push(serde_json::json!({"type": kind, "name": name, "actions": actions}));
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER, "sub": if authorized { REGISTRY_USER } else { "" },
        "aud": TOKEN_SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", access.len()), "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let token = format!(
        "{signing_input}.{}",
        b64.encode(sign(signing_input.as_bytes()))
    );
    serde_json::json!({"token": token, "expires_in": 300}).to_string()
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(t) = &self.tokens {
            t.abort();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default();
            eprintln!("---- docker-registry log ----\n{log}");
        }
    }
}
