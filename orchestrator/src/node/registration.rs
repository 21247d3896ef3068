//! The Node object, its Lease and its Ready condition: how the control
//! plane learns that this node exists, what it offers, and that it lives.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};
use shoal_sdk::now_rfc3339;
use tracing::{info, warn};

/// Seconds without a renewal after which the Lease counts as expired.
const LEASE_DURATION_SECONDS: i64 = 40;
/// How often the Node's status (Ready heartbeat) is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(10);

pub struct Registration {
    pub client: kube::Client,
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    /// Where peers forward Service traffic for this node's pods.
    pub gateway_port: u16,
    pub max_pods: u32,
    pub runtimes: Vec<&'static str>,
    /// The node's own pod range (`--pod-cidr`); else the server's IPAM
    /// controller sets one.
    pub pod_cidr: Option<String>,
    pub lease_interval: Duration,
}

impl Registration {
    fn labels(&self) -> BTreeMap<String, String> {
        let mut l = BTreeMap::new();
        l.insert("kubernetes.io/hostname".into(), self.name.clone());
        l.insert("kubernetes.io/os".into(), std::env::consts::OS.into());
        l.insert("kubernetes.io/arch".into(), go_arch().into());
        for r in &self.runtimes {
            l.insert(shoal_sdk::runtime_label(r), "true".into());
        }
        l
    }

    fn annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(
            crate::node::gateway::table::GATEWAY_PORT_ANNOTATION.to_string(),
            self.gateway_port.to_string(),
        )])
    }

    fn status(&self) -> Value {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let memory = format!("{}Ki", mem_total_kib());
        let resources =
            json!({"cpu": cpus.to_string(), "memory": memory, "pods": self.max_pods.to_string()});
        let now = now_rfc3339();
        let cond = |t: &str, status: &str, reason: &str, message: &str| {
            json!({"type": t, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": now})
        };
        json!({
            "capacity": resources,
            "allocatable": resources,
            "addresses": [
                {"type": "InternalIP", "address": self.address.to_string()},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": {
                "machineID": read_trimmed("/etc/machine-id"),
                "systemUUID": read_trimmed("/sys/class/dmi/id/product_uuid"),
                "bootID": read_trimmed("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": read_trimmed("/proc/sys/kernel/osrelease"),
                "osImage": os_image(),
                "containerRuntimeVersion": format!("wasmtime://{}", shoal_runtime::WASMTIME_VERSION),
                "kubeletVersion": format!("v1.33.0-shoal.{}", env!("CARGO_PKG_VERSION")),
                "kubeProxyVersion": "",
                "operatingSystem": std::env::consts::OS,
                "architecture": go_arch(),
            },
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                cond("Ready", "True", "KubeletReady", "shoal node agent is posting ready status"),
            ],
        })
    }

    /// Creates the Node, or takes over an existing one of the same name (a
    /// restarted agent), refreshing labels and status.
    pub async fn register(&self) -> Result<(), kube::Error> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let spec = match &self.pod_cidr {
            Some(c) => json!({"podCIDR": c, "podCIDRs": [c]}),
            None => json!({}),
        };
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.name, "labels": self.labels(), "annotations": self.annotations()},
            "spec": spec.clone(),
        });
        let node: Node = serde_json::from_value(node).map_err(kube::Error::SerdeError)?;
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => info!(node = %self.name, "registered node"),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let mut patch = json!({"metadata": {"labels": self.labels(), "annotations": self.annotations()}});
                if self.pod_cidr.is_some() {
                    patch["spec"] = spec;
                }
                nodes
                    .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                info!(node = %self.name, "node already registered; taking it over");
            }
            Err(e) => return Err(e),
        }
        self.post_status().await?;
        self.renew_lease().await
    }

    async fn post_status(&self) -> Result<(), kube::Error> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        nodes
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": self.status()})),
            )
            .await
            .map(|_| ())
    }

    async fn renew_lease(&self) -> Result<(), kube::Error> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let spec = json!({"holderIdentity": self.name, "leaseDurationSeconds": LEASE_DURATION_SECONDS, "renewTime": now});
        let patch = json!({"spec": spec});
        match leases
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => {
                let lease = json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": "kube-node-lease",
                        "ownerReferences": []},
                    "spec": spec,
                });
                let lease: Lease =
                    serde_json::from_value(lease).map_err(kube::Error::SerdeError)?;
                leases
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    /// Renews the Lease every interval and the Node status now and then,
    /// for as long as the process lives; failures are retried next tick.
    pub async fn heartbeat(self) {
        let mut tick = tokio::time::interval(self.lease_interval);
        let mut last_status = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            if let Err(e) = self.renew_lease().await {
                warn!(node = %self.name, error = %e, "renewing the node lease failed");
                continue;
            }
            if last_status.elapsed() >= STATUS_EVERY {
                match self.post_status().await {
                    Ok(()) => last_status = tokio::time::Instant::now(),
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        // Someone deleted our Node: register again.
                        if let Err(e) = self.register().await {
                            warn!(node = %self.name, error = %e, "re-registering the node failed");
                        }
                    }
                    Err(e) => warn!(node = %self.name, error = %e, "posting node status failed"),
                }
            }
        }
    }
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_image() -> String {
    read_trimmed("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| std::env::consts::OS.to_string())
}

fn mem_total_kib() -> u64 {
    read_trimmed("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Each live sandbox holds a few memory mappings; the kernel's default
/// `vm.max_map_count` (65530) stops one process near 21,000 sandboxes.
/// Raise it when we may (root), and say plainly when we may not.
pub fn raise_map_count(max_instances: u32) {
    const PATH: &str = "/proc/sys/vm/max_map_count";
    let wanted = u64::from(max_instances) * 6 + 65_536;
    let current: u64 = read_trimmed(PATH).parse().unwrap_or(0);
    if current >= wanted {
        return;
    }
    match std::fs::write(PATH, wanted.to_string()) {
        Ok(()) => info!(
            from = current,
            to = wanted,
            "raised vm.max_map_count for sandbox density"
        ),
        Err(e) => warn!(
            current, wanted, error = %e,
            "cannot raise vm.max_map_count (needs root): this node will fail to start sandboxes past roughly {} pods",
            current / 3
        ),
    }
}
