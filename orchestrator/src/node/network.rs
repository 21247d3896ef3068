//! The node's pod network, set up on first use: the bridge and address
//! range (the Node's `spec.podCIDR`) runc pods get their own IPs from.
//! Nodes that only ever run Wasm pods never make a bridge.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use shoal_runtime::oci::network::{self, PodCidr, PodNetwork};
use tokio::sync::OnceCell;
use tracing::warn;

/// The file in a node's data directory naming its bridge.
pub const BRIDGE_FILE: &str = "pod-network-bridge";

/// How long the first runc pod waits for the node IPAM controller.
const CIDR_WAIT: Duration = Duration::from_secs(10);

pub struct PodNetworks {
    client: kube::Client,
    node: String,
    bridge: String,
    network: OnceCell<Arc<PodNetwork>>,
}

impl PodNetworks {
    /// Also removes what a previous run of this node left on the host.
    pub async fn new(client: kube::Client, node: &str, data_dir: &Path) -> PodNetworks {
        let unique = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        let bridge = network::bridge_name(&unique.to_string_lossy());
        network::remove_leftovers(&bridge).await;
        // Named in the data directory, so whoever cleans up after a node
        // that cannot (killed, its directory about to go) finds it.
        let note = data_dir.join(BRIDGE_FILE);
        if let Err(e) = std::fs::write(&note, format!("{bridge}\n")) {
            warn!(path = %note.display(), error = %e, "recording the bridge name");
        }
        PodNetworks {
            client,
            node: node.to_string(),
            bridge,
            network: OnceCell::new(),
        }
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The network, made the first time a pod needs it. A failure is not
    /// kept: the next pod tries again.
    pub async fn get(&self) -> Result<Arc<PodNetwork>, String> {
        self.network
            .get_or_try_init(|| async {
                let cidr = self.pod_cidr().await?;
                PodNetwork::create(&self.bridge, cidr)
                    .await
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .await
            .cloned()
    }

    /// The Node's `spec.podCIDR`, waiting a little for the server to set it.
    async fn pod_cidr(&self) -> Result<PodCidr, String> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let deadline = Instant::now() + CIDR_WAIT;
        loop {
            let node = nodes
                .get(&self.node)
                .await
                .map_err(|e| format!("reading node {}: {e}", self.node))?;
            if let Some(c) = node.spec.and_then(|s| s.pod_cidr).filter(|c| !c.is_empty()) {
                return c
                    .parse()
                    .map_err(|e| format!("node {}'s spec.podCIDR: {e}", self.node));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "node {} has no spec.podCIDR: start the server with a --cluster-cidr, or this node with --pod-cidr",
                    self.node
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Takes the bridge down with every pod namespace on it.
    pub async fn shutdown(&self) {
        if let Some(n) = self.network.get() {
            n.remove().await;
        }
    }
}

/// The `/etc/hosts` a pod's containers see, as kubelet writes it for pods
/// with their own network: localhost, the pod's own name at its IP, and
/// the pod's `hostAliases`.
pub fn hosts_file(pod: &Pod, ip: &str) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    let spec = pod.spec.as_ref();
    let name = spec
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    let fqdn = spec
        .and_then(|s| s.subdomain.as_deref())
        .filter(|d| !d.is_empty())
        .map(|d| {
            format!(
                "{name}.{d}.{}.svc.cluster.local\t",
                pod.metadata.namespace.as_deref().unwrap_or("default")
            )
        })
        .unwrap_or_default();
    out.push_str(&format!("{ip}\t{fqdn}{name}\n"));
    let aliases = spec.and_then(|s| s.host_aliases.as_ref());
    if let Some(aliases) = aliases.filter(|a| !a.is_empty()) {
        out.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases {
            let names = a.hostnames.as_deref().unwrap_or_default().join("\t");
            if a.ip.is_empty() || names.is_empty() {
                warn!(ip = %a.ip, "skipping an empty hostAliases entry");
                continue;
            }
            out.push_str(&format!("{}\t{names}\n", a.ip));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hosts_name_the_pod_and_its_aliases() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-0", "namespace": "shop"},
            "spec": {"containers": [], "subdomain": "web",
                "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["db", "db.local"]}]}
        }))
        .expect("pod");
        let hosts = hosts_file(&pod, "10.42.0.7");
        assert!(hosts.contains("127.0.0.1\tlocalhost\n"));
        assert!(hosts.contains("10.42.0.7\tweb-0.web.shop.svc.cluster.local\tweb-0\n"));
        assert!(hosts.contains("10.1.2.3\tdb\tdb.local\n"));
    }
}
