//! Command line: one binary, one subcommand per role. Every flag also reads
//! `SHOAL_<FLAG>` from the environment.

mod node;
mod pack;
mod push;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use shoal_orchestrator::scheduler::Scoring;
use shoal_orchestrator::server::{self, ServerConfig};
use shoal_orchestrator::store::Durability;

#[derive(Parser, Debug)]
#[command(
    name = "shoal",
    version,
    about = "A Kubernetes-style orchestrator for WebAssembly workloads"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the control plane (API server on an embedded store).
    Server(ServerArgs),
    /// Run a node agent that joins a server and runs the pods bound to it.
    Node(node::NodeArgs),
    /// Run a server and one node in one process: the zero-configuration default.
    Up(node::UpArgs),
    /// Pack a directory into an OCI image archive for runc pods; prints its
    /// `file://` image name.
    PackImage(pack::PackArgs),
    /// Push a .wasm file or an image archive to an OCI registry; prints
    /// the pushed image's `name@sha256:` reference.
    Push(push::PushArgs),
}

#[derive(Args, Debug)]
pub(crate) struct ServerArgs {
    /// Where the store, certificates, tokens and kubeconfig live.
    #[arg(long, env = "SHOAL_DATA_DIR", default_value = "./shoal-data")]
    data_dir: PathBuf,
    /// Address the HTTPS API listens on.
    #[arg(long, env = "SHOAL_LISTEN", default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    #[command(flatten)]
    control: ControlArgs,
}

/// Control-plane tuning shared by `server` and `up`.
#[derive(Args, Debug)]
pub(crate) struct ControlArgs {
    /// Events kept for watch resume; older resourceVersions get 410 Gone.
    #[arg(long, env = "SHOAL_WATCH_HISTORY", default_value_t = 20_000)]
    watch_history: usize,
    /// How far a write goes before it is acknowledged: `written` through to
    /// the device (as sled's own flush), or `flushed` out of the device's
    /// write cache too (fdatasync; survives power loss, costs more per write).
    #[arg(long, env = "SHOAL_STORE_SYNC", value_enum, default_value = "written")]
    store_sync: Durability,
    /// How the scheduler ranks nodes: spread (least-allocated) or bin-pack (most-allocated).
    #[arg(
        long,
        env = "SHOAL_SCHEDULER_SCORING",
        value_enum,
        default_value = "least-allocated"
    )]
    scheduler_scoring: Scoring,
    /// Run without the built-in scheduler (another scheduler, or API-only benchmarks).
    #[arg(long, env = "SHOAL_DISABLE_SCHEDULER")]
    disable_scheduler: bool,
    /// Run without the workload controllers (ReplicaSet, Deployment, garbage collector, ...).
    #[arg(long, env = "SHOAL_DISABLE_CONTROLLERS")]
    disable_controllers: bool,
    /// The range Services' cluster IPs are allocated from.
    #[arg(long, env = "SHOAL_SERVICE_CIDR", default_value = "10.43.0.0/16")]
    service_cidr: shoal_orchestrator::apiserver::allocate::Cidr,
    /// The range NodePort Services' ports are allocated from.
    #[arg(long, env = "SHOAL_SERVICE_NODE_PORT_RANGE", default_value = "30000-32767", value_parser = parse_port_range)]
    service_node_port_range: std::ops::RangeInclusive<i64>,
    /// The range pods' addresses come from: each node gets a share of it
    /// as its `spec.podCIDR` ("none" turns allocation off).
    #[arg(long, env = "SHOAL_CLUSTER_CIDR", default_value = shoal_orchestrator::controllers::DEFAULT_CLUSTER_CIDR, value_parser = parse_cluster_cidr)]
    cluster_cidr: OptionalCidr,
    /// The prefix length of each node's share of the cluster CIDR.
    #[arg(long, env = "SHOAL_NODE_CIDR_MASK_SIZE", default_value_t = 24, value_parser = clap::value_parser!(u8).range(8..=30))]
    node_cidr_mask_size: u8,
    /// How long a node may go without a heartbeat before it is marked
    /// Unknown and tainted unreachable (`500ms`, `40s`, `2m`).
    #[arg(long, env = "SHOAL_NODE_MONITOR_GRACE_PERIOD", default_value = "40s", value_parser = parse_duration)]
    node_monitor_grace_period: std::time::Duration,
    /// How often each HorizontalPodAutoscaler re-reads its metrics and rescales.
    #[arg(long, env = "SHOAL_HORIZONTAL_POD_AUTOSCALER_SYNC_PERIOD", default_value = "15s", value_parser = parse_duration)]
    horizontal_pod_autoscaler_sync_period: std::time::Duration,
    /// A CSV file of more users, one `token,user,uid,"group1,group2"` line
    /// each (kube-apiserver's format); what they may do is up to RBAC.
    #[arg(long, env = "SHOAL_TOKEN_AUTH_FILE")]
    token_auth_file: Option<PathBuf>,
}

/// A duration as Kubernetes' flags write them, in one unit: `500ms`, `40s`, `2m`, `1h`.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} needs a unit (ms, s, m or h)"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} does not start with a whole number"))?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m or h)")),
    };
    let d = std::time::Duration::from_millis(n.saturating_mul(ms));
    if d.is_zero() {
        return Err(format!("{s:?} must be more than zero"));
    }
    Ok(d)
}

/// A range, or none: clap takes `Option` to mean "may be left out".
#[derive(Debug, Clone, Copy)]
pub(crate) struct OptionalCidr(Option<shoal_orchestrator::apiserver::allocate::Cidr>);

fn parse_cluster_cidr(s: &str) -> Result<OptionalCidr, String> {
    if s == "none" {
        return Ok(OptionalCidr(None));
    }
    s.parse().map(|c| OptionalCidr(Some(c)))
}

fn parse_port_range(s: &str) -> Result<std::ops::RangeInclusive<i64>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not a port range (low-high)"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=65535).contains(n))
            .ok_or_else(|| format!("{p:?} is not a port"))
    };
    let (a, b) = (port(a)?, port(b)?);
    if a > b {
        return Err(format!("{s:?}: the low end is above the high end"));
    }
    Ok(a..=b)
}

impl ControlArgs {
    pub(crate) fn config(&self, data_dir: PathBuf, listen: SocketAddr) -> ServerConfig {
        ServerConfig {
            data_dir,
            listen,
            watch_history: self.watch_history,
            store_sync: self.store_sync,
            scoring: (!self.disable_scheduler).then_some(self.scheduler_scoring),
            controllers: !self.disable_controllers,
            service_cidr: self.service_cidr,
            node_port_range: self.service_node_port_range.clone(),
            controller_settings: shoal_orchestrator::controllers::Settings {
                node_monitor_grace: self.node_monitor_grace_period,
                hpa_sync_period: self.horizontal_pod_autoscaler_sync_period,
                cluster_cidr: self.cluster_cidr.0.map(|range| {
                    shoal_orchestrator::controllers::nodeipam::ClusterCidr {
                        range,
                        node_mask: self.node_cidr_mask_size,
                    }
                }),
            },
            token_auth_file: self.token_auth_file.clone(),
        }
    }
}

/// Logs go to stderr; `SHOAL_LOG` (or `RUST_LOG`) sets the filter.
pub fn init_tracing() {
    let filter = std::env::var("SHOAL_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Server(a) => server::run(a.control.config(a.data_dir, a.listen)).await,
        Command::Node(a) => node::run_node(a).await,
        Command::Up(a) => node::run_up(a).await,
        Command::PackImage(a) => pack::run(a),
        Command::Push(a) => push::run(a).await,
    }
}
