//! The node agent (`shoal node`): registers a Node, keeps its Lease fresh,
//! runs the pods bound to it through the runtime backends, and serves the
//! node API (logs, stats, metrics) that the API server proxies to.

pub mod api;
pub mod attach;
pub mod config;
pub mod exec;
pub mod gateway;
pub mod logs;
pub mod metrics;
pub mod network;
pub mod portforward;
pub mod pull;
pub mod registration;
pub mod spdy;
pub mod status_sync;
pub mod sync;
pub mod usage;
pub mod volumes;
pub mod worker;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use shoal_runtime::{Backend, OciBackend, OciConfig, WasmBackend, WasmConfig};
use tracing::{info, warn};

use crate::controllers::informer::Informer;
use crate::events::EventRecorder;
use gateway::table::Table;
use gateway::Gateway;
use logs::{LogStore, PREFILLED_FREE_FILES};
use metrics::NodeMetrics;
use status_sync::{PodKey, StatusSync};
pub use worker::BackoffPolicy;

/// The component name kubectl shows as the source of node Events.
pub const COMPONENT: &str = "kubelet";

pub struct NodeConfig {
    /// `https://host:port` of the API server.
    pub server: String,
    pub token: String,
    /// PEM of the CA that signed the API server's certificate.
    pub ca_pem: String,
    pub name: String,
    pub data_dir: PathBuf,
    /// The node's own address: its API binds here and pods report it.
    pub address: IpAddr,
    /// Port of the node API; 0 picks a free one.
    pub port: u16,
    /// Port peers forward Service traffic to; 0 picks a free one.
    pub gateway_port: u16,
    /// With the Services' cluster IP range: serve cluster IPs too (adds a
    /// local route for the range; needs CAP_NET_ADMIN).
    pub cluster_ip_proxy: Option<String>,
    /// Ingress ports (plain, TLS); 0 turns one off.
    pub ingress_http_port: u16,
    pub ingress_https_port: u16,
    pub wasm: WasmConfig,
    /// The runc binary for `runtimeClassName: runc` pods; `None` offers
    /// Wasm only.
    pub runc: Option<PathBuf>,
    /// This node's pod range, instead of the one the server allocates.
    pub pod_cidr: Option<shoal_runtime::oci::network::PodCidr>,
    pub backoff: BackoffPolicy,
    pub lease_interval: Duration,
    /// A client to use instead of one for `server`: `shoal up` hands its
    /// embedded node one that calls the API in-process.
    pub client: Option<kube::Client>,
}

/// What every pod worker and the node API share.
pub struct NodeCtx {
    pub client: kube::Client,
    pub name: String,
    pub host_ip: String,
    pub backends: HashMap<&'static str, Arc<dyn Backend>>,
    pub logs: LogStore,
    /// Where each pod's volumes are materialised, one directory per pod.
    pub pods_dir: PathBuf,
    /// Where local-path PersistentVolumes live, one directory each.
    pub volumes_dir: PathBuf,
    pub status: StatusSync,
    pub events: EventRecorder,
    pub backoff: BackoffPolicy,
    pub metrics: NodeMetrics,
    pub token: String,
    /// Pods this node runs, by namespace and name: what the node API needs
    /// to find a pod's files.
    pub pods: Mutex<HashMap<(String, String), PodKey>>,
    pub gateway: Arc<Gateway>,
    /// CPU and memory of the running containers, for `/stats/summary`.
    pub usage: Arc<usage::Usage>,
    /// Pod IPs and network namespaces, when a backend can use them.
    pub network: Option<Arc<network::PodNetworks>>,
    /// Running containers, for `kubectl exec`.
    pub execs: exec::Execs,
    /// The stdin of running containers that have one, for `kubectl attach -i`.
    pub stdins: attach::Stdins,
}

impl NodeCtx {
    /// A pod's own directory (its volumes), made only when it has some.
    pub fn pod_dir(&self, pod: &PodKey) -> PathBuf {
        self.pods_dir
            .join(format!("{}_{}_{}", pod.namespace, pod.name, pod.uid))
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<PodKey> {
        self.pods
            .lock()
            .ok()?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }
}

/// Runs the node agent until the process ends.
pub async fn run(cfg: NodeConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating node data directory {}", cfg.data_dir.display()))?;
    registration::raise_map_count(cfg.wasm.max_instances);
    let client = match &cfg.client {
        Some(c) => c.clone(),
        None => {
            let kubeconfig = crate::apiserver::bootstrap::kubeconfig(
                &cfg.data_dir,
                &cfg.server,
                &cfg.ca_pem,
                &cfg.token,
            )
            .context("writing the node's kubeconfig")?;
            shoal_sdk::client_from_kubeconfig(&kubeconfig).await?
        }
    };
    let wasm = WasmBackend::new(&cfg.data_dir.join("wasm"), cfg.wasm.clone())
        .context("starting the wasmtime backend")?;
    let mut backends: HashMap<&'static str, Arc<dyn Backend>> = HashMap::new();
    backends.insert(wasm.runtime_class(), Arc::new(wasm));
    if let Some(runc) = &cfg.runc {
        let oci = OciConfig {
            runc: runc.clone(),
            root: cfg.data_dir.join("oci"),
        };
        // A node without runc still serves Wasm: runc pods then wait for a
        // node that offers it, and the scheduler says so.
        match OciBackend::new(oci).await {
            Ok(b) => {
                info!(version = b.version(), "runc backend ready");
                backends.insert(b.runtime_class(), Arc::new(b));
            }
            Err(e) => warn!(error = %e, "not offering runtime class runc"),
        }
    }
    let network = if backends.values().any(|b| b.isolates_network()) {
        Some(Arc::new(
            network::PodNetworks::new(client.clone(), &cfg.name, &cfg.data_dir).await,
        ))
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(cfg.address, cfg.port))
        .await
        .with_context(|| format!("node API listening on {}:{}", cfg.address, cfg.port))?;
    let port = listener.local_addr()?.port();
    let metrics = NodeMetrics::new().context("registering node metrics")?;
    let gateway = start_gateway(&client, &cfg, &metrics).await?;
    let gateway_port = gateway.1;
    let logs_dir = cfg.data_dir.join("logs");
    let logs = {
        let dir = logs_dir.clone();
        tokio::task::spawn_blocking(move || LogStore::new(dir, PREFILLED_FREE_FILES))
            .await
            .context("opening the logs directory")?
            .with_context(|| format!("opening {}", logs_dir.display()))?
    };
    let ctx = Arc::new(NodeCtx {
        gateway: gateway.0,
        events: EventRecorder::start(client.clone(), COMPONENT, Some(cfg.name.clone())),
        status: StatusSync::start(client.clone()),
        client: client.clone(),
        name: cfg.name.clone(),
        host_ip: cfg.address.to_string(),
        backends,
        logs,
        pods_dir: cfg.data_dir.join("pods"),
        volumes_dir: cfg.data_dir.join("volumes"),
        backoff: cfg.backoff,
        metrics,
        token: cfg.token.clone(),
        pods: Mutex::new(HashMap::new()),
        usage: Arc::default(),
        network,
        execs: exec::Execs::default(),
        stdins: attach::Stdins::default(),
    });
    tokio::spawn(usage::sampler(ctx.usage.clone()));
    tokio::spawn(volumes::clean_up(
        ctx.client.clone(),
        ctx.name.clone(),
        ctx.volumes_dir.clone(),
    ));
    tokio::spawn(api::serve(listener, ctx.clone()));
    let reg = registration::Registration {
        client,
        name: cfg.name.clone(),
        address: cfg.address,
        port,
        gateway_port,
        max_pods: cfg.wasm.max_instances,
        runtimes: ctx.backends.keys().copied().collect(),
        pod_cidr: cfg.pod_cidr.map(|c| c.to_string()),
        lease_interval: cfg.lease_interval,
    };
    // Register before taking pods, retrying while the server is away.
    let mut delay = Duration::from_millis(100);
    loop {
        match reg.register().await {
            Ok(()) => break,
            Err(e) => {
                warn!(error = %e, "registering the node failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    info!(node = %cfg.name, address = %cfg.address, port, "shoal node ready");
    tokio::spawn(reg.heartbeat());
    sync::run(ctx).await;
    Ok(())
}

/// The gateway's caches (Services, EndpointSlices, Nodes), its peer
/// listener and its NodePort listeners; returns it and its peer port.
async fn start_gateway(
    client: &kube::Client,
    cfg: &NodeConfig,
    metrics: &NodeMetrics,
) -> anyhow::Result<(Arc<Gateway>, u16)> {
    let table = Table::new(
        Informer::new("services"),
        Informer::new("endpointslices"),
        Informer::new("nodes"),
        Informer::new("ingresses"),
    );
    let secrets = Informer::new("secrets");
    table.ingresses.start(kube::Api::all(client.clone()));
    secrets.start(kube::Api::all(client.clone()));
    let certs = Arc::new(gateway::ingress::Certs::new(
        table.ingresses.clone(),
        secrets,
    ));
    table.services.start(kube::Api::all(client.clone()));
    table.slices.start(kube::Api::all(client.clone()));
    table.nodes.start(kube::Api::all(client.clone()));
    let gateway_metrics = gateway::metrics::GatewayMetrics::register(metrics.registry())
        .context("registering gateway metrics")?;
    let gateway = Arc::new(Gateway::new(cfg.name.clone(), table, gateway_metrics));
    let peer = tokio::net::TcpListener::bind(SocketAddr::new(cfg.address, cfg.gateway_port))
        .await
        .with_context(|| {
            format!(
                "node gateway listening on {}:{}",
                cfg.address, cfg.gateway_port
            )
        })?;
    let peer_port = peer.local_addr()?.port();
    tokio::spawn(gateway::listen::serve(
        peer,
        gateway.clone(),
        gateway::listen::Role::Peer,
        None,
    ));
    tokio::spawn(gateway::listen::follow_ingresses(
        gateway.clone(),
        certs,
        cfg.address,
        cfg.ingress_http_port,
        cfg.ingress_https_port,
    ));
    let mut cluster_ips = false;
    if let Some(cidr) = &cfg.cluster_ip_proxy {
        match gateway::listen::route_cluster_ips(cidr).await {
            Ok(()) => {
                info!(cidr = %cidr, "serving cluster IPs on this node");
                cluster_ips = true;
            }
            Err(e) => {
                warn!(cidr = %cidr, error = %e, "cannot route cluster IPs here; only node ports will be served")
            }
        }
    }
    tokio::spawn(gateway::listen::follow_node_ports(
        gateway.clone(),
        cfg.address,
        cluster_ips,
    ));
    Ok((gateway, peer_port))
}
