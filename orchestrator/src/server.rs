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
    /// How far a write goes before it is acknowledged.
    pub store_sync: crate::store::Durability,
    /// How the built-in scheduler scores nodes; None runs no scheduler.
    pub scoring: Option<Scoring>,
    /// Whether to run the controller manager in this process.
    pub controllers: bool,
    /// Where Services' cluster IPs come from.
    pub service_cidr: apiserver::allocate::Cidr,
    /// Where NodePort Services' ports come from.
    pub node_port_range: std::ops::RangeInclusive<i64>,
    pub controller_settings: controllers::Settings,
    /// More users: kube-apiserver's `--token-auth-file` format.
    pub token_auth_file: Option<PathBuf>,
}

/// A server that is up and serving.
pub struct Started {
    pub kubeconfig: PathBuf,
    /// `https://host:port` nodes and clients use.
    pub url: String,
    pub ca_pem: String,
    pub node_token: String,
    pub admin_token: String,
    pub serving: JoinHandle<()>,
    app: axum::Router,
}

impl Started {
    /// A client of this server that calls its API in-process with `token`.
    pub fn local_client(&self, token: &str, agent: &str) -> anyhow::Result<kube::Client> {
        local_client(&self.app, token, agent)
    }
}

fn local_client(app: &axum::Router, token: &str, agent: &str) -> anyhow::Result<kube::Client> {
    apiserver::local::client(app.clone(), token, agent).context("the in-process API client")
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
        sync: cfg.store_sync,
    })
    .with_context(|| format!("opening the store in {}", data_dir.join("store").display()))?;
    let admin = bootstrap::token(&data_dir.join("admin-token"))?;
    let node = bootstrap::token(&data_dir.join("node-token"))?;
    let sa_key = bootstrap::token(&data_dir.join("service-account.key"))?;
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
    let mut tokens = apiserver::auth::Tokens::new(&admin, &node);
    if let Some(file) = &cfg.token_auth_file {
        let n = tokens.add_file(file)?;
        info!(users = n, file = %file.display(), "static token users loaded");
    }
    let policy = apiserver::auth::cache::PolicyCache::start(store.clone())
        .await
        .context("loading the RBAC policy")?;
    let state = Arc::new(ApiState {
        store,
        registry: kinds::registry(),
        metrics: metrics.clone(),
        tokens,
        sa_tokens: apiserver::auth::sa_token::Signer::new(sa_key.as_bytes()),
        policy,
        advertise: advertise.clone(),
        nodes: apiserver::proxy::NodeClient::new(node.clone()),
        services: apiserver::allocate::ServiceAllocator::new(
            cfg.service_cidr,
            cfg.node_port_range.clone(),
        ),
        evictions: tokio::sync::Mutex::new(()),
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
    // The scheduler and controllers are API clients like any other; being
    // in this process, theirs call the router without the network.
    if let Some(scoring) = cfg.scoring {
        tokio::spawn(scheduler::run(
            local_client(&app, &admin, "shoal-scheduler")?,
            scoring,
        ));
    }
    if cfg.controllers {
        let client = local_client(&app, &admin, "shoal-controller-manager")?;
        let identity = controllers::leader::identity(&data_dir);
        tokio::spawn(controllers::run(
            client,
            metrics.controllers.clone(),
            identity,
            cfg.controller_settings,
        ));
    }
    let serving = tokio::spawn({
        let app = app.clone();
        async move { apiserver::serve_tls(listener, acceptor, app).await }
    });
    Ok(Started {
        kubeconfig,
        url,
        ca_pem: tls.ca_pem.clone(),
        node_token: node,
        admin_token: admin,
        serving,
        app,
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, PostParams, WatchEvent, WatchParams};
    use std::time::Duration;

    fn config(dir: &std::path::Path) -> ServerConfig {
        ServerConfig {
            data_dir: dir.to_path_buf(),
            listen: "127.0.0.1:0".parse().expect("a literal address"),
            watch_history: 1000,
            // The stronger mode here; every other test runs the default.
            store_sync: crate::store::Durability::Flushed,
            scoring: None,
            controllers: false,
            service_cidr: "10.43.0.0/16".parse().expect("a literal range"),
            node_port_range: 30000..=32767,
            controller_settings: controllers::Settings::default(),
            token_auth_file: None,
        }
    }

    /// The in-process client goes through the same router as the network:
    /// writes, reads and watches work, and its token is checked.
    #[tokio::test]
    async fn the_in_process_client_is_a_client_like_any_other() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let started = start(config(dir.path())).await.expect("the server starts");
        let client = started
            .local_client(&started.admin_token, "test")
            .expect("an in-process client");
        let cms: Api<ConfigMap> = Api::namespaced(client, "default");
        let mut events = cms
            .watch(&WatchParams::default().timeout(30), "0")
            .await
            .expect("a watch")
            .boxed();
        let cm: ConfigMap = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "local"}, "data": {"a": "1"}}),
        )
        .expect("a literal ConfigMap");
        let made = cms
            .create(&PostParams::default(), &cm)
            .await
            .expect("created");
        assert!(made.metadata.uid.is_some(), "the server filled in the uid");
        let got = cms.get("local").await.expect("read back");
        assert_eq!(got.data, cm.data);
        let seen = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(ev) = events.next().await {
                if let Ok(WatchEvent::Added(c)) = ev {
                    return c.metadata.name;
                }
            }
            None
        })
        .await
        .expect("the watch delivers within 10 s");
        assert_eq!(seen.as_deref(), Some("local"));
        // The router still authenticates what the in-process client sends.
        let stranger = started
            .local_client("not-a-token", "test")
            .expect("a client");
        let denied = Api::<ConfigMap>::namespaced(stranger, "default")
            .get("local")
            .await;
        assert!(
            matches!(denied, Err(kube::Error::Api(ref s)) if s.code == 401),
            "an unknown token is refused: {denied:?}"
        );
        started.serving.abort();
    }
}
