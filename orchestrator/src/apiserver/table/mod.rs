//! The server-side `Table` format `kubectl get` asks for, with the columns
//! Kubernetes' own printers produce for each kind.

mod cells;

use serde_json::{json, Value};

use cells::cells;
pub use cells::human_duration;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Printer {
    Default,
    Pod,
    Deployment,
    ReplicaSet,
    Node,
    Service,
    Event,
    Namespace,
    ConfigMap,
    Secret,
    Job,
    CronJob,
    DaemonSet,
    StatefulSet,
    RuntimeClass,
    Ingress,
    EndpointSlice,
    Endpoints,
    HorizontalPodAutoscaler,
    PodDisruptionBudget,
    RoleBinding,
    PersistentVolumeClaim,
    PersistentVolume,
    StorageClass,
    PriorityClass,
}

/// (name, type, priority): priority 1 columns show only with `-o wide`.
type Col = (&'static str, &'static str, u8);

fn columns(p: Printer) -> Vec<Col> {
    let name = ("Name", "string", 0);
    let age = ("Age", "string", 0);
    match p {
        Printer::Default => vec![name, ("Created At", "date", 0)],
        Printer::Pod => vec![
            name,
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            age,
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ],
        Printer::Deployment => vec![
            name,
            ("Ready", "string", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            age,
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        Printer::ReplicaSet => vec![
            name,
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            age,
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        Printer::Node => vec![
            name,
            ("Status", "string", 0),
            ("Roles", "string", 0),
            age,
            ("Version", "string", 0),
            ("Internal-IP", "string", 1),
            ("External-IP", "string", 1),
            ("OS-Image", "string", 1),
            ("Kernel-Version", "string", 1),
            ("Container-Runtime", "string", 1),
        ],
        Printer::Service => vec![
            name,
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            age,
            ("Selector", "string", 1),
        ],
        Printer::Event => vec![
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Subobject", "string", 1),
            ("Source", "string", 1),
            ("Message", "string", 0),
            ("First Seen", "string", 1),
            ("Count", "string", 1),
            ("Name", "string", 1),
        ],
        Printer::Namespace => vec![name, ("Status", "string", 0), age],
        Printer::ConfigMap => vec![name, ("Data", "string", 0), age],
        Printer::Secret => vec![name, ("Type", "string", 0), ("Data", "string", 0), age],
        Printer::Job => vec![
            name,
            ("Status", "string", 0),
            ("Completions", "string", 0),
            ("Duration", "string", 0),
            age,
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        Printer::CronJob => vec![
            name,
            ("Schedule", "string", 0),
            ("Timezone", "string", 0),
            ("Suspend", "boolean", 0),
            ("Active", "integer", 0),
            ("Last Schedule", "string", 0),
            age,
        ],
        Printer::DaemonSet => vec![
            name,
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Node Selector", "string", 0),
            age,
        ],
        Printer::StatefulSet => vec![name, ("Ready", "string", 0), age],
        Printer::RuntimeClass => vec![name, ("Handler", "string", 0), age],
        Printer::Ingress => vec![
            name,
            ("Class", "string", 0),
            ("Hosts", "string", 0),
            ("Address", "string", 0),
            ("Ports", "string", 0),
            age,
        ],
        Printer::EndpointSlice => vec![
            name,
            ("AddressType", "string", 0),
            ("Ports", "string", 0),
            ("Endpoints", "string", 0),
            age,
        ],
        Printer::Endpoints => vec![name, ("Endpoints", "string", 0), age],
        Printer::HorizontalPodAutoscaler => vec![
            name,
            ("Reference", "string", 0),
            ("Targets", "string", 0),
            ("MinPods", "string", 0),
            ("MaxPods", "string", 0),
            ("Replicas", "string", 0),
            age,
        ],
        Printer::PodDisruptionBudget => vec![
            name,
            ("Min Available", "string", 0),
            ("Max Unavailable", "string", 0),
            ("Allowed Disruptions", "integer", 0),
            age,
        ],
        Printer::PersistentVolumeClaim => vec![
            name,
            ("Status", "string", 0),
            ("Volume", "string", 0),
            ("Capacity", "string", 0),
            ("Access Modes", "string", 0),
            ("StorageClass", "string", 0),
            ("VolumeAttributesClass", "string", 0),
            age,
            ("VolumeMode", "string", 1),
        ],
        Printer::PersistentVolume => vec![
            name,
            ("Capacity", "string", 0),
            ("Access Modes", "string", 0),
            ("Reclaim Policy", "string", 0),
            ("Status", "string", 0),
            ("Claim", "string", 0),
            ("StorageClass", "string", 0),
            ("VolumeAttributesClass", "string", 0),
            ("Reason", "string", 0),
            age,
            ("VolumeMode", "string", 1),
        ],
        Printer::PriorityClass => vec![
            name,
            ("Value", "integer", 0),
            ("Global-Default", "boolean", 0),
            age,
            ("PreemptionPolicy", "string", 0),
        ],
        Printer::StorageClass => vec![
            name,
            ("Provisioner", "string", 0),
            ("ReclaimPolicy", "string", 0),
            ("VolumeBindingMode", "string", 0),
            ("AllowVolumeExpansion", "string", 0),
            age,
        ],
        Printer::RoleBinding => vec![
            name,
            ("Role", "string", 0),
            age,
            ("Users", "string", 1),
            ("Groups", "string", 1),
            ("ServiceAccounts", "string", 1),
        ],
    }
}

/// The metadata a row carries for kubectl (name, namespace, rv, …).
fn partial_metadata(o: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": o.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// What each row's `object` holds, per the request's `includeObject`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

fn row(p: Printer, o: &Value, include: IncludeObject) -> Value {
    let mut r = json!({"cells": cells(p, o)});
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => r["object"] = partial_metadata(o),
        IncludeObject::Object => r["object"] = o.clone(),
    }
    r
}

/// A Table of `objects`; `list_meta` is the list's metadata when listing.
pub fn table(p: Printer, objects: &[&Value], list_meta: Value, include: IncludeObject) -> Value {
    let defs: Vec<Value> = columns(p)
        .into_iter()
        .map(|(name, ty, priority)| {
            json!({"name": name, "type": ty, "format": if name == "Name" { "name" } else { "" },
                   "description": "", "priority": priority})
        })
        .collect();
    let rows: Vec<Value> = objects.iter().map(|o| row(p, o, include)).collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": defs,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(185), "3m5s");
        assert_eq!(human_duration(60 * 30), "30m");
        assert_eq!(human_duration(3600 * 5 + 60), "5h1m");
        assert_eq!(human_duration(86400 * 3), "3d");
    }

    #[test]
    fn pod_row_shows_crash_loop_and_restarts() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": false, "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let t = table(Printer::Pod, &[&pod], json!({}), IncludeObject::Metadata);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "0/1");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], 4);
    }
}
