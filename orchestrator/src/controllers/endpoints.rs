//! The endpoints controller: for every Service with a selector, the pods it
//! selects as an EndpointSlice (what Shoal's gateways and proxies route by)
//! and as the older core `Endpoints` object (what `kubectl describe service`
//! and older clients read). Ready pods serve; a pod being deleted stays
//! listed as terminating and not ready, so traffic leaves it before it
//! stops.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, ObjectReference, Pod,
    Service,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::PostParams;
use kube::Api;
use tracing::debug;

use super::informer::{key_of, split_key};
use super::owners::controller_ref;
use super::pods::{self, object_ref};
use super::queue::WorkQueue;
use super::wiring;
use super::{new_queue, Action, ControllerError, Ctx, Reconciler};

pub const NAME: &str = "endpointslice-controller";
/// The label tying a slice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

pub struct EndpointsController {
    ctx: Arc<Ctx>,
}

impl EndpointsController {
    pub fn register(ctx: &Arc<Ctx>) -> (Arc<Self>, Arc<WorkQueue>) {
        let queue = new_queue(ctx, NAME);
        wiring::enqueue_self(&ctx.informers.services, &queue);
        // A deleted Service's endpoints go too.
        let q = queue.clone();
        ctx.informers.services.on_change(move |old, new| {
            if let (Some(o), None) = (old, new) {
                q.add(key_of(o));
            }
        });
        let q = queue.clone();
        let services = Arc::downgrade(&ctx.informers.services);
        ctx.informers.pods.on_change(move |old, new| {
            let Some(services) = services.upgrade() else {
                return;
            };
            let mut keys = BTreeSet::new();
            for p in [old, new].into_iter().flatten() {
                let ns = p.metadata.namespace.as_deref().unwrap_or_default();
                for svc in services.list_namespace(ns) {
                    if selects(&svc, p) {
                        keys.insert(key_of(svc.as_ref()));
                    }
                }
            }
            for k in keys {
                q.add(k);
            }
        });
        // Someone else editing a slice we own: put it back.
        let q = queue.clone();
        ctx.informers.endpointslices.on_change(move |old, new| {
            for s in [old, new].into_iter().flatten() {
                let labels = s.metadata.labels.as_ref();
                if labels
                    .and_then(|l| l.get(MANAGED_BY_LABEL))
                    .map(String::as_str)
                    != Some(MANAGED_BY)
                {
                    continue;
                }
                if let Some(svc) = labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) {
                    let ns = s.metadata.namespace.as_deref().unwrap_or_default();
                    q.add(format!("{ns}/{svc}"));
                }
            }
        });
        (Arc::new(EndpointsController { ctx: ctx.clone() }), queue)
    }

    async fn sync(&self, ns: &str, name: &str) -> Result<Action, ControllerError> {
        let key = format!("{ns}/{name}");
        let svc = self.ctx.informers.services.get(&key);
        let selector = svc
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.selector.clone());
        let (Some(svc), Some(_)) = (svc, selector) else {
            // Gone, or a Service without a selector whose endpoints are
            // managed by hand.
            return self.remove_all(ns, name).await;
        };
        if svc.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let pods: Vec<Arc<Pod>> = self
            .ctx
            .informers
            .pods
            .list_namespace(ns)
            .into_iter()
            .filter(|p| selects(&svc, p))
            .collect();
        let plan = plan(&svc, &pods);
        for port in &plan.unresolved {
            self.ctx.events.warning(
                &object_ref(svc.as_ref()),
                "FailedToResolvePort",
                format!("no selected pod has a container port named {port:?}"),
            );
        }
        self.write_slices(&svc, ns, name, plan.slices).await?;
        self.write_endpoints(ns, plan.endpoints).await?;
        Ok(Action::AwaitChange)
    }

    async fn write_slices(
        &self,
        svc: &Service,
        ns: &str,
        name: &str,
        wanted: Vec<EndpointSlice>,
    ) -> Result<(), ControllerError> {
        let api: Api<EndpointSlice> = Api::namespaced(self.ctx.client.clone(), ns);
        let cache = &self.ctx.informers.endpointslices;
        let mut stale: BTreeMap<String, Arc<EndpointSlice>> = cache
            .list_namespace(ns)
            .into_iter()
            .filter(|s| owned_by(s, name))
            .map(|s| (s.metadata.name.clone().unwrap_or_default(), s))
            .collect();
        for mut slice in wanted {
            let slice_name = slice.metadata.name.clone().unwrap_or_default();
            slice.metadata.owner_references = Some(vec![controller_ref(svc)]);
            let written = match stale.remove(&slice_name) {
                Some(cur) if same_slice(&cur, &slice) => continue,
                Some(cur) => {
                    slice.metadata.resource_version = cur.metadata.resource_version.clone();
                    api.replace(&slice_name, &PostParams::default(), &slice)
                        .await
                }
                None => api.create(&PostParams::default(), &slice).await,
            }
            .map_err(ControllerError::api(format!(
                "writing endpointslice {ns}/{slice_name}"
            )))?;
            cache.assume(written);
        }
        for s in stale.values() {
            wiring::delete_cached(&api, cache, s).await?;
        }
        Ok(())
    }

    async fn write_endpoints(&self, ns: &str, mut ep: Endpoints) -> Result<(), ControllerError> {
        let name = ep.metadata.name.clone().unwrap_or_default();
        let cache = &self.ctx.informers.endpoints;
        let api: Api<Endpoints> = Api::namespaced(self.ctx.client.clone(), ns);
        let written = match cache.get(&format!("{ns}/{name}")) {
            Some(cur) if cur.subsets == ep.subsets && cur.metadata.labels == ep.metadata.labels => {
                return Ok(())
            }
            Some(cur) => {
                ep.metadata.resource_version = cur.metadata.resource_version.clone();
                api.replace(&name, &PostParams::default(), &ep).await
            }
            None => api.create(&PostParams::default(), &ep).await,
        }
        .map_err(ControllerError::api(format!(
            "writing endpoints {ns}/{name}"
        )))?;
        cache.assume(written);
        Ok(())
    }

    async fn remove_all(&self, ns: &str, name: &str) -> Result<Action, ControllerError> {
        let slices = &self.ctx.informers.endpointslices;
        let api: Api<EndpointSlice> = Api::namespaced(self.ctx.client.clone(), ns);
        for s in slices
            .list_namespace(ns)
            .into_iter()
            .filter(|s| owned_by(s, name))
        {
            wiring::delete_cached(&api, slices, &s).await?;
        }
        let endpoints = &self.ctx.informers.endpoints;
        if let Some(cur) = endpoints.get(&format!("{ns}/{name}")) {
            let api: Api<Endpoints> = Api::namespaced(self.ctx.client.clone(), ns);
            wiring::delete_cached(&api, endpoints, &cur).await?;
        }
        Ok(Action::AwaitChange)
    }
}

#[async_trait]
impl Reconciler for EndpointsController {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError> {
        let (ns, name) = split_key(key);
        debug!(service = key, "syncing endpoints");
        self.sync(ns, name).await
    }
}

fn owned_by(s: &EndpointSlice, service: &str) -> bool {
    let labels = s.metadata.labels.as_ref();
    labels
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(String::as_str)
        == Some(service)
        && labels
            .and_then(|l| l.get(MANAGED_BY_LABEL))
            .map(String::as_str)
            == Some(MANAGED_BY)
}

fn same_slice(a: &EndpointSlice, b: &EndpointSlice) -> bool {
    a.endpoints == b.endpoints
        && a.ports == b.ports
        && a.address_type == b.address_type
        && a.metadata.labels == b.metadata.labels
}

/// Whether `svc`'s selector picks `pod` (an empty selector picks nothing,
/// as Kubernetes treats a Service without one as manually managed).
pub fn selects(svc: &Service, pod: &Pod) -> bool {
    let Some(sel) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    if sel.is_empty() {
        return false;
    }
    let labels = pod.metadata.labels.as_ref();
    sel.iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// What a Service's endpoints should be.
#[derive(Debug, Default)]
pub struct Plan {
    /// One slice per distinct set of resolved ports (pods of one template
    /// share one).
    pub slices: Vec<EndpointSlice>,
    pub endpoints: Endpoints,
    /// Named target ports no selected pod declares.
    pub unresolved: Vec<String>,
}

/// Pure: the slices and Endpoints for `svc` given the pods it selects.
pub fn plan(svc: &Service, pods: &[Arc<Pod>]) -> Plan {
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let spec = svc.spec.clone().unwrap_or_default();
    let service_ports = spec.ports.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    // Endpoints grouped by their resolved ports.
    let mut groups: BTreeMap<Vec<(String, i32, String)>, Vec<Endpoint>> = BTreeMap::new();
    let mut subsets: BTreeMap<Vec<(String, i32, String)>, EndpointSubset> = BTreeMap::new();
    let mut named_ok: BTreeSet<String> = BTreeSet::new();
    let mut named_all: BTreeSet<String> = BTreeSet::new();
    let mut sorted: Vec<&Arc<Pod>> = pods.iter().collect();
    sorted.sort_by_key(|p| p.metadata.name.clone());
    for pod in sorted {
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        if pods::is_terminal(pod) {
            continue;
        }
        let mut ports = Vec::new();
        for sp in &service_ports {
            let target = sp.target_port.clone().unwrap_or(IntOrString::Int(sp.port));
            let resolved = match &target {
                IntOrString::Int(n) => Some(*n),
                IntOrString::String(port_name) => {
                    named_all.insert(port_name.clone());
                    let found = container_port(pod, port_name);
                    if found.is_some() {
                        named_ok.insert(port_name.clone());
                    }
                    found
                }
            };
            if let Some(n) = resolved {
                ports.push((
                    sp.name.clone().unwrap_or_default(),
                    n,
                    sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ));
            }
        }
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let pod_ready = pods::is_ready(pod);
        let ready = publish_not_ready || (pod_ready && !terminating);
        let target = ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        };
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        groups.entry(ports.clone()).or_default().push(Endpoint {
            addresses: vec![ip.clone()],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(publish_not_ready || pod_ready),
                terminating: Some(terminating),
            }),
            node_name: node.clone(),
            target_ref: Some(target.clone()),
            ..Default::default()
        });
        let subset = subsets.entry(ports).or_default();
        let address = EndpointAddress {
            ip,
            node_name: node,
            target_ref: Some(target),
            ..Default::default()
        };
        // Endpoints lists a terminating pod nowhere, as Kubernetes does.
        if ready {
            subset.addresses.get_or_insert_with(Vec::new).push(address);
        } else if !terminating {
            subset
                .not_ready_addresses
                .get_or_insert_with(Vec::new)
                .push(address);
        }
    }
    let labels = BTreeMap::from([
        (SERVICE_NAME_LABEL.to_string(), name.clone()),
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
    ]);
    // With no pod (yet) there is still one empty slice carrying the ports,
    // so watchers see the Service has none.
    if groups.is_empty() {
        let ports = service_ports
            .iter()
            .filter_map(|sp| match &sp.target_port {
                Some(IntOrString::String(_)) => None,
                t => Some((
                    sp.name.clone().unwrap_or_default(),
                    match t {
                        Some(IntOrString::Int(n)) => *n,
                        _ => sp.port,
                    },
                    sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                )),
            })
            .collect();
        groups.insert(ports, Vec::new());
    }
    let slices = groups
        .into_iter()
        .enumerate()
        .map(|(i, (ports, endpoints))| EndpointSlice {
            metadata: ObjectMeta {
                name: Some(if i == 0 {
                    name.clone()
                } else {
                    format!("{name}-{i}")
                }),
                namespace: Some(ns.clone()),
                labels: Some(labels.clone()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints,
            ports: Some(
                ports
                    .into_iter()
                    .map(|(n, port, protocol)| EndpointPort {
                        name: Some(n),
                        port: Some(port),
                        protocol: Some(protocol),
                        app_protocol: None,
                    })
                    .collect(),
            ),
        })
        .collect();
    let endpoints = Endpoints {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns),
            labels: Some(BTreeMap::from([(
                SERVICE_NAME_LABEL.to_string(),
                name.clone(),
            )])),
            ..Default::default()
        },
        subsets: {
            let subsets: Vec<EndpointSubset> = subsets
                .into_iter()
                .filter(|(_, s)| s.addresses.is_some() || s.not_ready_addresses.is_some())
                .map(|(ports, mut s)| {
                    s.ports = Some(
                        ports
                            .into_iter()
                            .map(|(n, port, protocol)| CorePort {
                                name: (!n.is_empty()).then_some(n),
                                port,
                                protocol: Some(protocol),
                                app_protocol: None,
                            })
                            .collect(),
                    );
                    s
                })
                .collect();
            (!subsets.is_empty()).then_some(subsets)
        },
    };
    Plan {
        slices,
        endpoints,
        unresolved: named_all.difference(&named_ok).cloned().collect(),
    }
}

/// The number of the container port called `name`, in any container.
fn container_port(pod: &Pod, name: &str) -> Option<i32> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(target: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "s1"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": target, "protocol": "TCP"}]}
        }))
        .expect("service")
    }

    fn pod(name: &str, ready: bool, terminating: bool) -> Arc<Pod> {
        let mut p = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "main", "image": "x", "ports": [{"name": "web", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        });
        if terminating {
            p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        Arc::new(serde_json::from_value(p).expect("pod"))
    }

    #[test]
    fn ready_not_ready_and_terminating() {
        let pods = vec![
            pod("a", true, false),
            pod("b", false, false),
            pod("c", true, true),
        ];
        let p = plan(&svc(json!(8080)), &pods);
        assert_eq!(p.slices.len(), 1);
        let eps = &p.slices[0].endpoints;
        let cond = |i: usize| eps[i].conditions.clone().unwrap_or_default();
        assert_eq!(cond(0).ready, Some(true));
        assert_eq!(cond(1).ready, Some(false));
        assert_eq!(
            (cond(2).ready, cond(2).serving, cond(2).terminating),
            (Some(false), Some(true), Some(true))
        );
        let subsets = p.endpoints.subsets.unwrap_or_default();
        assert_eq!(subsets[0].addresses.as_ref().map(Vec::len), Some(1));
        assert_eq!(
            subsets[0].not_ready_addresses.as_ref().map(Vec::len),
            Some(1)
        );
    }

    #[test]
    fn named_ports_resolve_or_are_reported() {
        let pods = vec![pod("a", true, false)];
        let p = plan(&svc(json!("web")), &pods);
        let ports = p.slices[0].ports.clone().unwrap_or_default();
        assert_eq!(ports[0].port, Some(8080));
        assert!(p.unresolved.is_empty());
        let p = plan(&svc(json!("nope")), &pods);
        assert_eq!(p.unresolved, vec!["nope".to_string()]);
        assert!(p.slices[0].ports.clone().unwrap_or_default().is_empty());
    }
}
