//! `shoal server`: opens the store, prepares certificates, tokens and the
//! kubeconfig, seeds the cluster's built-in objects and serves the API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::info;

use crate::apiserver::{self, bootstrap, kinds, ApiState};
use crate::controllers;
use crate::metrics::Metrics;
use crate::scheduler::{self, Scoring};
use crate::store::{SledStore, SledStoreConfig};

pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub watch_history: usize,
    /// How the built-in scheduler scores nodes; None runs no scheduler.
    pub scoring: Option<Scoring>,
    /// Whether to run the controller manager in this process.
    pub controllers: bool,
    /// Where Services' cluster IPs come from.
    pub service_cidr: apiserver::allocate::Cidr,
    /// Where NodePort Services' ports come from.
    pub node_port_range: std::ops::RangeInclusive<i64>,
}

/// A server that is up and serving.
pub struct Started {
    pub kubeconfig: PathBuf,
    /// `https://host:port` nodes and clients use.
    pub url: String,
    pub ca_pem: String,
    pub node_token: String,
    pub serving: JoinHandle<()>,
}

/// Prepares everything and starts serving in the background.
pub async fn start(cfg: ServerConfig) -> anyhow::Result<Started> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    let data_dir = cfg.data_dir.canonicalize().unwrap_or(cfg.data_dir.clone());
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let store = SledStore::open(SledStoreConfig {
        path: data_dir.join("store"),
        history: cfg.watch_history,
        op_latency: Some(metrics.store_latency.clone()),
        group_writes: Some(metrics.store_group_writes.clone()),
    })
    .with_context(|| format!("opening the store in {}", data_dir.join("store").display()))?;
    let admin = bootstrap::token(&data_dir.join("admin-token"))?;
    let node = bootstrap::token(&data_dir.join("node-token"))?;
    let advertise_ip = if cfg.listen.ip().is_unspecified() {
        "127.0.0.1".parse()?
    } else {
        cfg.listen.ip()
    };
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    // The real port, should the caller have asked for port 0.
    let advertise = SocketAddr::new(advertise_ip, listener.local_addr()?.port()).to_string();
    let state = Arc::new(ApiState {
        store,
        registry: kinds::registry(),
        metrics: metrics.clone(),
        tokens: vec![(admin.clone(), "admin"), (node.clone(), "node")],
        advertise: advertise.clone(),
        nodes: apiserver::proxy::NodeClient::new(node.clone()),
        services: apiserver::allocate::ServiceAllocator::new(
            cfg.service_cidr,
            cfg.node_port_range.clone(),
        ),
    });
    apiserver::seed(&state)
        .await
        .context("creating built-in namespaces and runtime classes")?;
    let tls = bootstrap::tls(&data_dir, &[advertise_ip])?;
    let url = format!("https://{advertise}");
    let kubeconfig = bootstrap::kubeconfig(&data_dir, &url, &tls.ca_pem, &admin)?;
    let acceptor = apiserver::serve::acceptor(&tls)?;
    info!(listen = %advertise, data_dir = %data_dir.display(), "shoal server ready");
    let app = apiserver::router(state);
    let serving = tokio::spawn(async move {
        apiserver::serve_tls(listener, acceptor, app).await;
    });
    // The scheduler is an API client like any other, here in-process.
    if let Some(scoring) = cfg.scoring {
        let client = shoal_sdk::client_from_kubeconfig(&kubeconfig).await?;
        tokio::spawn(scheduler::run(client, scoring));
    }
    if cfg.controllers {
        let client = shoal_sdk::client_from_kubeconfig(&kubeconfig).await?;
        let identity = controllers::leader::identity(&data_dir);
        tokio::spawn(controllers::run(
            client,
            metrics.controllers.clone(),
            identity,
        ));
    }
    Ok(Started {
        kubeconfig,
        url,
        ca_pem: tls.ca_pem.clone(),
        node_token: node,
        serving,
    })
}

/// `shoal server`: serve until interrupted.
pub async fn run(cfg: ServerConfig) -> anyhow::Result<()> {
    let started = start(cfg).await?;
    println!("export KUBECONFIG={}", started.kubeconfig.display());
    tokio::select! {
        _ = started.serving => {}
        _ = tokio::signal::ctrl_c() => info!("interrupted; shutting down"),
    }
    Ok(())
}
