//! Where a Service's traffic may go, read from the shared caches of
//! Services, EndpointSlices and Nodes. Pure lookups: the gateway decides
//! the order in which it tries them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::{Node, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;

use crate::controllers::endpoints::SERVICE_NAME_LABEL;
use crate::controllers::informer::Informer;

/// Node annotation naming the port of a node's gateway, where peers
/// forward requests for the pods it runs.
pub const GATEWAY_PORT_ANNOTATION: &str = "shoal.dev/gateway-port";

/// One pod that may take a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub pod: String,
    pub node: String,
    /// The port the pod serves the Service port on.
    pub port: i32,
}

pub struct Table {
    pub services: Arc<Informer<Service>>,
    pub slices: Arc<Informer<EndpointSlice>>,
    pub nodes: Arc<Informer<Node>>,
    pub ingresses: Arc<Informer<Ingress>>,
    /// [`Table::targets`] answers by (namespace, Service, port name),
    /// emptied whenever an EndpointSlice changes: every request asks, and
    /// working it out walks every slice in the namespace.
    memo: Arc<Memo>,
}

type TargetsKey = (String, String, String);

#[derive(Default)]
struct Memo {
    /// Bumped on every EndpointSlice change, before the map is cleared.
    generation: AtomicU64,
    map: RwLock<HashMap<TargetsKey, Arc<[Target]>>>,
}

impl Table {
    /// A table over these caches (started or not).
    pub fn new(
        services: Arc<Informer<Service>>,
        slices: Arc<Informer<EndpointSlice>>,
        nodes: Arc<Informer<Node>>,
        ingresses: Arc<Informer<Ingress>>,
    ) -> Table {
        let memo: Arc<Memo> = Arc::default();
        let stale = Arc::downgrade(&memo);
        // The informer runs this after its cache changed.
        slices.on_change(move |_, _| {
            if let Some(memo) = stale.upgrade() {
                memo.generation.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut m) = memo.map.write() {
                    m.clear();
                }
            }
        });
        Table {
            services,
            slices,
            nodes,
            ingresses,
            memo,
        }
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.services.get(&format!("{namespace}/{name}"))
    }

    /// Ready endpoints of one Service port; when none is ready, those
    /// still serving while they terminate (as kube-proxy falls back).
    pub fn targets(&self, svc: &Service, port: &ServicePort) -> Arc<[Target]> {
        let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        let port_name = port.name.as_deref().unwrap_or_default();
        let key = (ns.to_string(), name.to_string(), port_name.to_string());
        if let Some(hit) = self.memo.map.read().ok().and_then(|m| m.get(&key).cloned()) {
            return hit;
        }
        // Worked out from the caches without holding the memo's lock; kept
        // only if no slice changed meanwhile (a change after the insert
        // clears it anyway).
        let before = self.memo.generation.load(Ordering::SeqCst);
        let found: Arc<[Target]> = self.compute_targets(ns, name, port_name).into();
        if let Ok(mut m) = self.memo.map.write() {
            if self.memo.generation.load(Ordering::SeqCst) == before {
                m.insert(key, found.clone());
            }
        }
        found
    }

    fn compute_targets(&self, ns: &str, name: &str, port_name: &str) -> Vec<Target> {
        let mut ready = Vec::new();
        let mut serving = Vec::new();
        for slice in self.slices.list_namespace(ns) {
            let labels = slice.metadata.labels.as_ref();
            if labels
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .map(String::as_str)
                != Some(name)
            {
                continue;
            }
            let Some(target_port) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
                .and_then(|p| p.port)
            else {
                continue;
            };
            for ep in &slice.endpoints {
                let (Some(pod), Some(node)) = (
                    ep.target_ref.as_ref().and_then(|r| r.name.clone()),
                    ep.node_name.clone(),
                ) else {
                    continue;
                };
                let c = ep.conditions.clone().unwrap_or_default();
                let t = Target {
                    namespace: ns.to_string(),
                    pod,
                    node,
                    port: target_port,
                };
                if c.ready.unwrap_or(true) {
                    ready.push(t);
                } else if c.serving.unwrap_or(false) {
                    serving.push(t);
                }
            }
        }
        if ready.is_empty() {
            serving
        } else {
            ready
        }
    }

    /// `address:port` of a node's gateway.
    pub fn gateway_of(&self, node: &str) -> Option<String> {
        let n = self.nodes.get(node)?;
        let port = n
            .metadata
            .annotations
            .as_ref()?
            .get(GATEWAY_PORT_ANNOTATION)?
            .clone();
        let address = n
            .status
            .as_ref()?
            .addresses
            .iter()
            .flatten()
            .find(|a| a.type_ == "InternalIP")?
            .address
            .clone();
        Some(format!("{address}:{port}"))
    }

    /// Every (Service, port) a node serves, with the address it listens
    /// on: node ports (and a LoadBalancer's own port, as k3s' ServiceLB
    /// does) on the node's address, and with `cluster_ips` each Service's
    /// cluster IP and port.
    pub fn listeners(
        &self,
        node: IpAddr,
        cluster_ips: bool,
    ) -> Vec<(Arc<Service>, ServicePort, SocketAddr)> {
        let mut out = Vec::new();
        for svc in self.services.list() {
            let spec = svc.spec.clone().unwrap_or_default();
            let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
            let cluster_ip: Option<IpAddr> = spec
                .cluster_ip
                .as_deref()
                .and_then(|ip| ip.parse().ok())
                .filter(|_| cluster_ips && ty != "ExternalName");
            for p in spec.ports.iter().flatten() {
                let port = u16::try_from(p.port).ok();
                if let (Some(ip), Some(port)) = (cluster_ip, port) {
                    out.push((svc.clone(), p.clone(), SocketAddr::new(ip, port)));
                }
                if ty != "NodePort" && ty != "LoadBalancer" {
                    continue;
                }
                if let Some(n) = p.node_port.and_then(|n| u16::try_from(n).ok()) {
                    out.push((svc.clone(), p.clone(), SocketAddr::new(node, n)));
                }
                if let (true, Some(port)) = (ty == "LoadBalancer", port) {
                    out.push((svc.clone(), p.clone(), SocketAddr::new(node, port)));
                }
            }
        }
        out
    }

    /// The Service whose cluster IP is `ip`.
    pub fn by_cluster_ip(&self, ip: &str) -> Option<Arc<Service>> {
        self.services
            .list()
            .into_iter()
            .find(|s| s.spec.as_ref().and_then(|sp| sp.cluster_ip.as_deref()) == Some(ip))
    }
}

/// Which Service a guest means by an outbound host: `svc`, `svc.ns`,
/// `svc.ns.svc` or `svc.ns.svc.cluster.local` (namespace defaulting to
/// the caller's). `None` for anything else.
pub fn service_host<'a>(host: &'a str, own_namespace: &'a str) -> Option<(&'a str, &'a str)> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let host = host.strip_suffix(".cluster.local").unwrap_or(host);
    let host = host.strip_suffix(".svc").unwrap_or(host);
    let mut parts = host.split('.');
    let svc = parts.next().filter(|s| !s.is_empty())?;
    match (parts.next(), parts.next()) {
        (None, _) => Some((own_namespace, svc)),
        (Some(ns), None) if !ns.is_empty() => Some((ns, svc)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(rv: &str, pods: &[&str]) -> EndpointSlice {
        let endpoints: Vec<_> = pods
            .iter()
            .map(|p| {
                serde_json::json!({
                    "addresses": ["127.0.0.1"], "conditions": {"ready": true},
                    "nodeName": "n1", "targetRef": {"kind": "Pod", "name": p},
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "default", "resourceVersion": rv,
                "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "", "port": 8080}],
            "endpoints": endpoints,
        }))
        .expect("a valid EndpointSlice")
    }

    #[test]
    fn remembered_targets_follow_slice_changes() {
        let table = Table::new(
            Informer::new("services"),
            Informer::new("endpointslices"),
            Informer::new("nodes"),
            Informer::new("ingresses"),
        );
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"ports": [{"port": 80}]},
        }))
        .expect("a valid Service");
        let port = ServicePort {
            port: 80,
            ..ServicePort::default()
        };
        let pods = |t: Arc<[Target]>| t.iter().map(|t| t.pod.clone()).collect::<Vec<_>>();
        assert!(table.targets(&svc, &port).is_empty());
        table.slices.assume(slice("1", &["web-1"]));
        assert_eq!(pods(table.targets(&svc, &port)), ["web-1"]);
        assert_eq!(pods(table.targets(&svc, &port)), ["web-1"]);
        table.slices.assume(slice("2", &["web-1", "web-2"]));
        assert_eq!(pods(table.targets(&svc, &port)), ["web-1", "web-2"]);
    }

    #[test]
    fn service_names_resolve() {
        assert_eq!(service_host("hello", "demo"), Some(("demo", "hello")));
        assert_eq!(service_host("hello.web", "demo"), Some(("web", "hello")));
        assert_eq!(
            service_host("hello.web.svc", "demo"),
            Some(("web", "hello"))
        );
        assert_eq!(
            service_host("hello.web.svc.cluster.local", "demo"),
            Some(("web", "hello"))
        );
        assert_eq!(service_host("example.com.au", "demo"), None);
        assert_eq!(service_host("", "demo"), None);
    }
}
