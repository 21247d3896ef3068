//! Shoal's API contract, shared by the server, node agents, tests and users:
//! the Kubernetes types (one version, re-exported so every crate agrees),
//! Shoal's own names, and a client built from a kubeconfig.

pub use k8s_openapi;
pub use kube;

pub mod quantity;

/// RuntimeClass (and handler) of the default Wasm backend.
pub const RUNTIME_CLASS_WASMTIME: &str = "wasmtime";
/// RuntimeClass (and handler) of the OCI container backend.
pub const RUNTIME_CLASS_RUNC: &str = "runc";
/// Node label a node agent sets for each runtime it offers; the seeded
/// RuntimeClasses select nodes by it (`scheduling.nodeSelector`).
pub fn runtime_label(runtime_class: &str) -> String {
    format!("runtime.shoal.dev/{runtime_class}")
}
/// Now, as Kubernetes writes timestamps (RFC 3339, whole seconds, UTC).
pub fn now_rfc3339() -> String {
    let t = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", t).unwrap_or_default()
}

/// Prefix of Shoal's annotations.
pub const ANNOTATION_PREFIX: &str = "shoal.dev/";

/// Pod annotations bounding how a `wasi:http` pod handles requests.
pub mod http_annotations {
    /// Requests one pod handles at once (default 1000).
    pub const MAX_CONCURRENCY: &str = "shoal.dev/http-max-concurrency";
    /// Seconds from accepting a request to its last byte (default 30).
    pub const TIMEOUT_SECONDS: &str = "shoal.dev/http-timeout-seconds";
    /// Largest request body in bytes (default 10 MiB).
    pub const MAX_BODY_BYTES: &str = "shoal.dev/http-max-body-bytes";
    /// Hosts a pod's guest may call besides cluster Services: comma
    /// separated, `*` for any.
    pub const ALLOWED_OUTBOUND_HOSTS: &str = "shoal.dev/allowed-outbound-hosts";
}

/// Names shared by the volume controller, the scheduler and the node for
/// node-local persistent volumes (k3s' local-path model).
pub mod volumes {
    /// The provisioner of the seeded StorageClass `local-path`, and the CSI
    /// driver name its PersistentVolumes carry: the node holding a volume
    /// keeps it as a directory of its own.
    pub const LOCAL_PATH_PROVISIONER: &str = "shoal.dev/local-path";
    /// The seeded default StorageClass.
    pub const LOCAL_PATH_CLASS: &str = "local-path";
    /// Set on a claim by the scheduler once its first pod has a node
    /// (`WaitForFirstConsumer`), as Kubernetes' scheduler does.
    pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
    /// Kept on a provisioned PersistentVolume until its node has removed
    /// the directory, so deleting the object never leaks the data.
    pub const CLEANUP_FINALIZER: &str = "shoal.dev/local-path-cleanup";
    /// Kubernetes' finalizer keeping a claim while a pod uses it.
    pub const CLAIM_PROTECTION: &str = "kubernetes.io/pvc-protection";
    /// Kubernetes' finalizer keeping a volume while it is bound to a claim.
    pub const VOLUME_PROTECTION: &str = "kubernetes.io/pv-protection";
    /// Label naming the node a provisioned volume lives on, so each node
    /// watches only its own.
    pub const NODE_LABEL: &str = "volumes.shoal.dev/node";
    /// StorageClass annotation marking the class claims get when they name none.
    pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("building a client from kubeconfig {path}: {source}")]
    Client {
        path: String,
        #[source]
        source: kube::Error,
    },
}

/// A `kube::Client` for the kubeconfig at `path` (its current context).
pub async fn client_from_kubeconfig(path: &std::path::Path) -> Result<kube::Client, ClientError> {
    let shown = path.display().to_string();
    let kc =
        kube::config::Kubeconfig::read_from(path).map_err(|source| ClientError::Kubeconfig {
            path: shown.clone(),
            source,
        })?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|source| ClientError::Kubeconfig {
            path: shown.clone(),
            source,
        })?;
    kube::Client::try_from(config).map_err(|source| ClientError::Client {
        path: shown,
        source,
    })
}
