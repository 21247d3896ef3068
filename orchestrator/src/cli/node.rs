//! `shoal node` and `shoal up`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tracing::info;

use shoal_orchestrator::node::{self, BackoffPolicy, NodeConfig};
use shoal_orchestrator::{demo, server};
use shoal_runtime::WasmConfig;

use super::ControlArgs;

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// The API server, e.g. https://127.0.0.1:6443.
    #[arg(long, env = "SHOAL_SERVER")]
    server: String,
    /// The server's node token (its data directory's `node-token`).
    #[arg(long, env = "SHOAL_TOKEN_FILE")]
    token_file: PathBuf,
    /// The server's CA certificate; defaults to `tls/ca.crt` beside the token file.
    #[arg(long, env = "SHOAL_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// The Node's name; defaults to the host name.
    #[arg(long, env = "SHOAL_NAME")]
    name: Option<String>,
    /// Where images, compiled modules, logs and volumes live.
    #[arg(long, env = "SHOAL_DATA_DIR", default_value = "./shoal-data")]
    data_dir: PathBuf,
    /// This node's address: its API binds here and pods report it.
    #[arg(long, env = "SHOAL_ADDRESS", default_value = "127.0.0.1")]
    address: IpAddr,
    #[command(flatten)]
    tuning: NodeTuning,
}

/// Node tuning shared by `node` and `up`.
#[derive(Args, Debug)]
pub struct NodeTuning {
    /// Port of the node API (logs, stats, metrics); 0 picks a free one.
    #[arg(long, env = "SHOAL_NODE_PORT", default_value_t = 10250)]
    node_port: u16,
    /// Port other nodes forward Service traffic to; 0 picks a free one.
    #[arg(long, env = "SHOAL_GATEWAY_PORT", default_value_t = 0)]
    gateway_port: u16,
    /// Serve Services' cluster IPs from this range (the server's
    /// --service-cidr) on this node: adds a local route for it, so needs root.
    #[arg(long, env = "SHOAL_CLUSTER_IP_PROXY")]
    cluster_ip_proxy: Option<String>,
    /// Port Ingress traffic arrives on (plain HTTP); 0 turns it off.
    #[arg(long, env = "SHOAL_INGRESS_HTTP_PORT", default_value_t = 8080)]
    ingress_http_port: u16,
    /// Port Ingress traffic arrives on (TLS); 0 turns it off.
    #[arg(long, env = "SHOAL_INGRESS_HTTPS_PORT", default_value_t = 8443)]
    ingress_https_port: u16,
    /// Pods this node can hold (sandbox slots reserved in the engine).
    #[arg(long, env = "SHOAL_MAX_PODS", default_value_t = 20_000)]
    max_pods: u32,
    /// Largest linear memory any one sandbox may have, in MiB.
    #[arg(long, env = "SHOAL_MAX_POD_MEMORY_MIB", default_value_t = 256)]
    max_pod_memory_mib: u64,
    /// The runc binary for pods with `runtimeClassName: runc` (needs root);
    /// empty offers Wasm only.
    #[arg(long, env = "SHOAL_RUNC", default_value = "runc")]
    runc: String,
    /// This node's pod address range (e.g. 10.42.7.0/24), instead of the
    /// share of the cluster CIDR the server gives it.
    #[arg(long, env = "SHOAL_POD_CIDR")]
    pod_cidr: Option<shoal_runtime::oci::network::PodCidr>,
    /// First restart back-off after the immediate one, in milliseconds.
    #[arg(long, env = "SHOAL_BACKOFF_INITIAL_MS", default_value_t = 10)]
    backoff_initial_ms: u64,
    /// Longest restart back-off, in seconds.
    #[arg(long, env = "SHOAL_BACKOFF_MAX_SECONDS", default_value_t = 300)]
    backoff_max_seconds: u64,
    /// Running this long resets the back-off, in seconds.
    #[arg(long, env = "SHOAL_BACKOFF_RESET_SECONDS", default_value_t = 600)]
    backoff_reset_seconds: u64,
    /// How often the node renews its Lease, in milliseconds.
    #[arg(long, env = "SHOAL_LEASE_INTERVAL_MS", default_value_t = 1000)]
    lease_interval_ms: u64,
}

impl NodeTuning {
    fn config(
        &self,
        server: String,
        token: String,
        ca_pem: String,
        name: String,
        data_dir: PathBuf,
        address: IpAddr,
    ) -> NodeConfig {
        NodeConfig {
            server,
            token,
            ca_pem,
            name,
            data_dir,
            address,
            port: self.node_port,
            gateway_port: self.gateway_port,
            cluster_ip_proxy: self.cluster_ip_proxy.clone(),
            ingress_http_port: self.ingress_http_port,
            ingress_https_port: self.ingress_https_port,
            wasm: WasmConfig {
                max_instances: self.max_pods,
                max_memory_bytes: self.max_pod_memory_mib.saturating_mul(1024 * 1024),
            },
            runc: Some(PathBuf::from(&self.runc)).filter(|_| !self.runc.is_empty()),
            pod_cidr: self.pod_cidr,
            backoff: BackoffPolicy {
                initial: Duration::from_millis(self.backoff_initial_ms),
                max: Duration::from_secs(self.backoff_max_seconds),
                reset_after: Duration::from_secs(self.backoff_reset_seconds),
            },
            lease_interval: Duration::from_millis(self.lease_interval_ms.max(10)),
            client: None,
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "shoal-node".into())
}

pub async fn run_node(a: NodeArgs) -> anyhow::Result<()> {
    let token = std::fs::read_to_string(&a.token_file)
        .with_context(|| format!("reading the node token {}", a.token_file.display()))?
        .trim()
        .to_string();
    let ca_file = a.ca_file.clone().unwrap_or_else(|| {
        a.token_file
            .parent()
            .unwrap_or_else(|| std::path::Path::new("."))
            .join("tls/ca.crt")
    });
    let ca_pem = std::fs::read_to_string(&ca_file).with_context(|| {
        format!(
            "reading the server's CA certificate {} (pass --ca-file)",
            ca_file.display()
        )
    })?;
    let name = a.name.clone().unwrap_or_else(hostname);
    let cfg = a.tuning.config(
        a.server.clone(),
        token,
        ca_pem,
        name,
        a.data_dir.clone(),
        a.address,
    );
    node::run(cfg).await
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Where the store, certificates, tokens, kubeconfig and the node's files live.
    #[arg(long, env = "SHOAL_DATA_DIR", default_value = "./shoal-data")]
    data_dir: PathBuf,
    /// Address the HTTPS API listens on.
    #[arg(long, env = "SHOAL_LISTEN", default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// The embedded node's name; defaults to the host name.
    #[arg(long, env = "SHOAL_NODE_NAME")]
    node_name: Option<String>,
    /// Write the sample modules and apply their manifests once the node is up.
    #[arg(long, env = "SHOAL_DEMO")]
    demo: bool,
    #[command(flatten)]
    control: ControlArgs,
    #[command(flatten)]
    tuning: NodeTuning,
}

pub async fn run_up(a: UpArgs) -> anyhow::Result<()> {
    let started = server::start(a.control.config(a.data_dir.clone(), a.listen)).await?;
    println!("export KUBECONFIG={}", started.kubeconfig.display());
    let data_dir = a.data_dir.canonicalize().unwrap_or(a.data_dir.clone());
    let address = if a.listen.ip().is_unspecified() {
        "127.0.0.1".parse()?
    } else {
        a.listen.ip()
    };
    let name = a.node_name.clone().unwrap_or_else(hostname);
    let mut cfg = a.tuning.config(
        started.url.clone(),
        started.node_token.clone(),
        started.ca_pem.clone(),
        name,
        data_dir.join("node"),
        address,
    );
    // The embedded node shares the server's process: it needs no socket.
    cfg.client = Some(started.local_client(&started.node_token, "shoal-node")?);
    if a.demo {
        let kubeconfig = started.kubeconfig.clone();
        let samples = data_dir.join("samples");
        tokio::spawn(async move {
            if let Err(e) = run_demo(&kubeconfig, &samples).await {
                tracing::error!(error = %format!("{e:#}"), "applying the demo failed");
            }
        });
    }
    tokio::select! {
        r = node::run(cfg) => r,
        _ = started.serving => Ok(()),
        _ = tokio::signal::ctrl_c() => {
            info!("interrupted; shutting down");
            Ok(())
        }
    }
}

async fn run_demo(kubeconfig: &std::path::Path, samples: &std::path::Path) -> anyhow::Result<()> {
    let manifest = demo::write_samples(samples)?;
    let client = shoal_sdk::client_from_kubeconfig(kubeconfig).await?;
    demo::apply(&client, &manifest).await?;
    let runc = match demo::write_runc_sample(samples)? {
        Ok(m) => {
            demo::apply(&client, &m).await?;
            "  curl http://127.0.0.1:30082/             # busybox httpd in a runc container\n"
                .to_string()
        }
        Err(why) => format!("  (no runc demo: {why})\n"),
    };
    println!(
        "\nThe demo is running (manifest: {manifest}). Try:\n  export KUBECONFIG={kc}\n  kubectl get pods -n demo -o wide\n  kubectl logs -f ticker -n demo\n  kubectl logs config-reader -n demo\n  kubectl describe pod crasher -n demo     # restarts with back-off\n  kubectl get pod hog -n demo              # OOMKilled under its 16Mi limit\n  kubectl delete pod ticker -n demo\n  curl http://127.0.0.1:30080/             # wasi:http, a fresh instance per request\n  curl -H 'Host: hello.demo' http://127.0.0.1:8080/   # the same through the Ingress\n{runc}",
        manifest = manifest.display(),
        kc = kubeconfig.display()
    );
    Ok(())
}
