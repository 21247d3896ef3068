//! One row's cells for each printer: what Kubernetes' own printers show
//! for each kind, read from the stored JSON.

use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use super::Printer;

/// Kubernetes' `HumanDuration`: "42s", "5m3s", "3h", "12d", "2y".
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        return if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = s / 3600;
    if h < 8 {
        return if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    let d = h / 24;
    if h < 24 * 8 {
        return if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        };
    }
    if d < 365 * 2 {
        return format!("{d}d");
    }
    format!("{}y", d / 365)
}

fn since(ts: Option<&str>) -> String {
    match ts.and_then(|t| t.parse::<Timestamp>().ok()) {
        Some(t) => human_duration(Timestamp::now().as_second() - t.as_second()),
        None => "<unknown>".into(),
    }
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn n(v: &Value, p: &str) -> i64 {
    v.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

fn arr<'a>(v: &'a Value, p: &str) -> impl Iterator<Item = &'a Value> {
    v.pointer(p).and_then(Value::as_array).into_iter().flatten()
}

/// The first three, then "+ N more...", as kubectl prints endpoint lists.
fn few(items: &[&str]) -> String {
    match items.len() {
        0 => "<none>".into(),
        n if n <= 3 => items.join(","),
        n => format!("{} + {} more...", items[..3].join(","), n - 3),
    }
}

/// A size as written (`1Gi`), whether stored as a string or a number.
fn storage_size(v: &Value, p: &str) -> String {
    match v.pointer(p) {
        Some(Value::String(q)) => q.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// Access modes in kubectl's short form (`RWO,ROX`).
fn access_modes(v: &Value, p: &str) -> String {
    arr(v, p)
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn or_none(x: &str) -> String {
    if x.is_empty() {
        "<none>".into()
    } else {
        x.into()
    }
}

fn count(v: &Value, p: &str) -> usize {
    match v.pointer(p) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    }
}

fn containers_images(v: &Value, p: &str) -> (String, String) {
    let cs = v
        .pointer(p)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = cs.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(c, "/image")).collect();
    (names.join(","), images.join(","))
}

fn pairs(m: &serde_json::Map<String, Value>) -> Vec<String> {
    m.iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect()
}

/// Workloads carry a `LabelSelector`, Services a plain map.
fn selector_string(v: &Value, p: &str) -> String {
    let parts = match v.pointer(p) {
        Some(Value::Object(sel))
            if sel.contains_key("matchLabels") || sel.contains_key("matchExpressions") =>
        {
            let mut parts = sel
                .get("matchLabels")
                .and_then(Value::as_object)
                .map(pairs)
                .unwrap_or_default();
            for e in sel
                .get("matchExpressions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let vals: Vec<&str> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                parts.push(format!(
                    "{} {} ({})",
                    s(e, "/key"),
                    s(e, "/operator").to_ascii_lowercase(),
                    vals.join(",")
                ));
            }
            parts
        }
        Some(Value::Object(sel)) => pairs(sel),
        _ => vec![],
    };
    or_none(&parts.join(","))
}

/// The STATUS column of `kubectl get pods`, by Kubernetes' printPod rules.
fn pod_status(pod: &Value) -> (String, usize, usize, i64) {
    let mut reason = s(pod, "/status/reason").to_string();
    if reason.is_empty() {
        reason = s(pod, "/status/phase").to_string();
    }
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let total = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let mut ready = 0;
    let mut restarts = 0;
    let inits = pod
        .pointer("/status/initContainerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let init_total = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let mut initializing = false;
    for (i, c) in inits.iter().enumerate() {
        restarts += n(c, "/restartCount");
        if c.pointer("/state/terminated").is_some() && n(c, "/state/terminated/exitCode") == 0 {
            continue;
        }
        initializing = true;
        let w = s(c, "/state/waiting/reason");
        reason = if let Some(t) = c.pointer("/state/terminated") {
            let r = s(t, "/reason");
            if r.is_empty() {
                format!("Init:ExitCode:{}", n(t, "/exitCode"))
            } else {
                format!("Init:{r}")
            }
        } else if !w.is_empty() && w != "PodInitializing" {
            format!("Init:{w}")
        } else {
            format!("Init:{i}/{init_total}")
        };
        break;
    }
    if !initializing {
        for c in statuses.iter().rev() {
            restarts += n(c, "/restartCount");
            let w = s(c, "/state/waiting/reason");
            let t = s(c, "/state/terminated/reason");
            if !w.is_empty() {
                reason = w.to_string();
            } else if !t.is_empty() {
                reason = t.to_string();
            } else if let Some(term) = c.pointer("/state/terminated") {
                let sig = n(term, "/signal");
                reason = if sig != 0 {
                    format!("Signal:{sig}")
                } else {
                    format!("ExitCode:{}", n(term, "/exitCode"))
                };
            } else if c.get("ready").and_then(Value::as_bool) == Some(true)
                && c.pointer("/state/running").is_some()
            {
                ready += 1;
            }
        }
    }
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        reason = if s(pod, "/status/reason") == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    (reason, ready, total, restarts)
}

/// An HPA's resource metrics as kubectl prints them: `cpu: 12%/50%`,
/// `memory: 10Mi/100Mi`, `<unknown>` before the first measurement.
fn hpa_targets(o: &Value) -> String {
    let current: Vec<&Value> = arr(o, "/status/currentMetrics").collect();
    let parts: Vec<String> = arr(o, "/spec/metrics")
        .filter(|m| s(m, "/type") == "Resource")
        .map(|m| {
            let res = s(m, "/resource/name");
            let now = current
                .iter()
                .find(|c| s(c, "/type") == "Resource" && s(c, "/resource/name") == res);
            let (have, want) = match s(m, "/resource/target/type") {
                "Utilization" => (
                    now.and_then(|c| c.pointer("/resource/current/averageUtilization"))
                        .and_then(Value::as_i64)
                        .map(|u| format!("{u}%")),
                    format!("{}%", n(m, "/resource/target/averageUtilization")),
                ),
                _ => (
                    now.and_then(|c| c.pointer("/resource/current/averageValue"))
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    s(m, "/resource/target/averageValue").to_string(),
                ),
            };
            format!(
                "{res}: {}/{want}",
                have.unwrap_or_else(|| "<unknown>".into())
            )
        })
        .collect();
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(", ")
    }
}

pub(super) fn cells(p: Printer, o: &Value) -> Vec<Value> {
    let name = json!(s(o, "/metadata/name"));
    let age = json!(since(
        o.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
    ));
    match p {
        Printer::Default => vec![name, json!(s(o, "/metadata/creationTimestamp"))],
        Printer::Pod => {
            let (status, ready, total, restarts) = pod_status(o);
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts),
                age,
                json!(or_none(s(o, "/status/podIP"))),
                json!(or_none(s(o, "/spec/nodeName"))),
                json!(or_none(s(o, "/status/nominatedNodeName"))),
                json!("<none>"),
            ]
        }
        Printer::Deployment => {
            let (c, i) = containers_images(o, "/spec/template/spec/containers");
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    n(o, "/status/readyReplicas"),
                    n(o, "/spec/replicas")
                )),
                json!(n(o, "/status/updatedReplicas")),
                json!(n(o, "/status/availableReplicas")),
                age,
                json!(c),
                json!(i),
                json!(selector_string(o, "/spec/selector")),
            ]
        }
        Printer::ReplicaSet => {
            let (c, i) = containers_images(o, "/spec/template/spec/containers");
            vec![
                name,
                json!(n(o, "/spec/replicas")),
                json!(n(o, "/status/replicas")),
                json!(n(o, "/status/readyReplicas")),
                age,
                json!(c),
                json!(i),
                json!(selector_string(o, "/spec/selector")),
            ]
        }
        Printer::Node => {
            let conds = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut status = match conds
                .iter()
                .find(|c| s(c, "/type") == "Ready")
                .map(|c| s(c, "/status"))
            {
                Some("True") => "Ready".to_string(),
                _ => "NotReady".to_string(),
            };
            if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
                status.push_str(",SchedulingDisabled");
            }
            let mut roles: Vec<String> = o
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .map(|l| {
                    l.keys()
                        .filter_map(|k| {
                            k.strip_prefix("node-role.kubernetes.io/").map(String::from)
                        })
                        .collect()
                })
                .unwrap_or_default();
            roles.sort();
            let addr = |t: &str| {
                o.pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .and_then(|a| {
                        a.iter()
                            .find(|x| s(x, "/type") == t)
                            .map(|x| s(x, "/address").to_string())
                    })
                    .unwrap_or_else(|| "<none>".into())
            };
            vec![
                name,
                json!(status),
                json!(or_none(&roles.join(","))),
                age,
                json!(s(o, "/status/nodeInfo/kubeletVersion")),
                json!(addr("InternalIP")),
                json!(addr("ExternalIP")),
                json!(s(o, "/status/nodeInfo/osImage")),
                json!(s(o, "/status/nodeInfo/kernelVersion")),
                json!(s(o, "/status/nodeInfo/containerRuntimeVersion")),
            ]
        }
        Printer::Service => {
            let ports: Vec<String> = o
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| {
                    let np = n(p, "/nodePort");
                    let proto = s(p, "/protocol");
                    if np > 0 {
                        format!("{}:{np}/{proto}", n(p, "/port"))
                    } else {
                        format!("{}/{proto}", n(p, "/port"))
                    }
                })
                .collect();
            let external = match s(o, "/spec/type") {
                "ExternalName" => s(o, "/spec/externalName").to_string(),
                "LoadBalancer" => {
                    let ips: Vec<&str> = o
                        .pointer("/status/loadBalancer/ingress")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .map(|i| s(i, "/ip"))
                        .collect();
                    if ips.is_empty() {
                        "<pending>".into()
                    } else {
                        ips.join(",")
                    }
                }
                _ => "<none>".into(),
            };
            vec![
                name,
                json!(s(o, "/spec/type")),
                json!(or_none(s(o, "/spec/clusterIP"))),
                json!(external),
                json!(if ports.is_empty() {
                    "<none>".into()
                } else {
                    ports.join(",")
                }),
                age,
                json!(selector_string(o, "/spec/selector")),
            ]
        }
        Printer::Event => {
            let last = [
                s(o, "/lastTimestamp"),
                s(o, "/eventTime"),
                s(o, "/metadata/creationTimestamp"),
            ]
            .into_iter()
            .find(|t| !t.is_empty());
            let first = [s(o, "/firstTimestamp"), s(o, "/eventTime")]
                .into_iter()
                .find(|t| !t.is_empty());
            let object = format!(
                "{}/{}",
                s(o, "/involvedObject/kind").to_ascii_lowercase(),
                s(o, "/involvedObject/name")
            );
            let source = [s(o, "/source/component"), s(o, "/reportingComponent")]
                .into_iter()
                .find(|t| !t.is_empty())
                .unwrap_or("");
            vec![
                json!(since(last)),
                json!(s(o, "/type")),
                json!(s(o, "/reason")),
                json!(object),
                json!(s(o, "/involvedObject/fieldPath")),
                json!(source),
                json!(s(o, "/message").trim()),
                json!(since(first)),
                json!(n(o, "/count").max(1)),
                name,
            ]
        }
        Printer::Namespace => vec![name, json!(s(o, "/status/phase")), age],
        Printer::ConfigMap => vec![
            name,
            json!(count(o, "/data") + count(o, "/binaryData")),
            age,
        ],
        Printer::Secret => vec![name, json!(s(o, "/type")), json!(count(o, "/data")), age],
        Printer::Job => {
            let (c, i) = containers_images(o, "/spec/template/spec/containers");
            let conds = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let has = |t: &str| {
                conds
                    .iter()
                    .any(|c| s(c, "/type") == t && s(c, "/status") == "True")
            };
            let status = if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else if has("Suspended") {
                "Suspended"
            } else {
                "Running"
            };
            let dur = match (
                o.pointer("/status/startTime").and_then(Value::as_str),
                o.pointer("/status/completionTime").and_then(Value::as_str),
            ) {
                (Some(a), b) => {
                    let a = a.parse::<Timestamp>().ok();
                    let b = b
                        .and_then(|b| b.parse::<Timestamp>().ok())
                        .unwrap_or_else(Timestamp::now);
                    a.map(|a| human_duration(b.as_second() - a.as_second()))
                        .unwrap_or_default()
                }
                _ => String::new(),
            };
            vec![
                name,
                json!(status),
                json!(format!(
                    "{}/{}",
                    n(o, "/status/succeeded"),
                    n(o, "/spec/completions")
                )),
                json!(dur),
                age,
                json!(c),
                json!(i),
                json!(selector_string(o, "/spec/selector")),
            ]
        }
        Printer::CronJob => vec![
            name,
            json!(s(o, "/spec/schedule")),
            json!(or_none(s(o, "/spec/timeZone"))),
            json!(o
                .pointer("/spec/suspend")
                .and_then(Value::as_bool)
                .unwrap_or(false)),
            json!(count(o, "/status/active")),
            json!(match o
                .pointer("/status/lastScheduleTime")
                .and_then(Value::as_str)
            {
                Some(t) => since(Some(t)),
                None => "<none>".into(),
            }),
            age,
        ],
        Printer::DaemonSet => {
            let sel: Vec<String> = o
                .pointer("/spec/template/spec/nodeSelector")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect()
                })
                .unwrap_or_default();
            vec![
                name,
                json!(n(o, "/status/desiredNumberScheduled")),
                json!(n(o, "/status/currentNumberScheduled")),
                json!(n(o, "/status/numberReady")),
                json!(n(o, "/status/updatedNumberScheduled")),
                json!(n(o, "/status/numberAvailable")),
                json!(or_none(&sel.join(","))),
                age,
            ]
        }
        Printer::StatefulSet => vec![
            name,
            json!(format!(
                "{}/{}",
                n(o, "/status/readyReplicas"),
                n(o, "/spec/replicas")
            )),
            age,
        ],
        Printer::RuntimeClass => vec![name, json!(s(o, "/handler")), age],
        Printer::Ingress => {
            let hosts: Vec<&str> = arr(o, "/spec/rules")
                .map(|r| s(r, "/host"))
                .filter(|h| !h.is_empty())
                .collect();
            let addresses: Vec<&str> = arr(o, "/status/loadBalancer/ingress")
                .map(|i| s(i, "/ip"))
                .collect();
            let ports = if arr(o, "/spec/tls").next().is_some() {
                "80, 443"
            } else {
                "80"
            };
            vec![
                name,
                json!(or_none(s(o, "/spec/ingressClassName"))),
                json!(if hosts.is_empty() {
                    "*".to_string()
                } else {
                    hosts.join(",")
                }),
                json!(addresses.join(",")),
                json!(ports),
                age,
            ]
        }
        Printer::EndpointSlice => {
            let ports: Vec<String> = arr(o, "/ports")
                .map(|p| n(p, "/port").to_string())
                .collect();
            let addresses: Vec<&str> = arr(o, "/endpoints")
                .flat_map(|e| arr(e, "/addresses"))
                .filter_map(Value::as_str)
                .collect();
            vec![
                name,
                json!(s(o, "/addressType")),
                json!(if ports.is_empty() {
                    "<unset>".to_string()
                } else {
                    ports.join(",")
                }),
                json!(few(&addresses)),
                age,
            ]
        }
        Printer::Endpoints => {
            let mut eps: Vec<String> = Vec::new();
            for sub in arr(o, "/subsets") {
                for a in arr(sub, "/addresses") {
                    for p in arr(sub, "/ports") {
                        eps.push(format!("{}:{}", s(a, "/ip"), n(p, "/port")));
                    }
                }
            }
            let refs: Vec<&str> = eps.iter().map(String::as_str).collect();
            vec![name, json!(few(&refs)), age]
        }
        Printer::HorizontalPodAutoscaler => vec![
            name,
            json!(format!(
                "{}/{}",
                s(o, "/spec/scaleTargetRef/kind"),
                s(o, "/spec/scaleTargetRef/name")
            )),
            json!(hpa_targets(o)),
            json!(o
                .pointer("/spec/minReplicas")
                .and_then(Value::as_i64)
                .unwrap_or(1)
                .to_string()),
            json!(n(o, "/spec/maxReplicas").to_string()),
            json!(n(o, "/status/currentReplicas").to_string()),
            age,
        ],
        Printer::PodDisruptionBudget => {
            // An int or a percentage; "N/A" when the budget uses the other.
            let either = |p: &str| match o.pointer(p) {
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::String(s)) => s.clone(),
                _ => "N/A".to_string(),
            };
            vec![
                name,
                json!(either("/spec/minAvailable")),
                json!(either("/spec/maxUnavailable")),
                json!(n(o, "/status/disruptionsAllowed")),
                age,
            ]
        }
        Printer::PersistentVolumeClaim => {
            // Capacity and modes are what the bound volume gives, so empty
            // while Pending, as kubectl shows them.
            vec![
                name,
                json!(s(o, "/status/phase")),
                json!(s(o, "/spec/volumeName")),
                json!(storage_size(o, "/status/capacity/storage")),
                json!(access_modes(o, "/status/accessModes")),
                json!(s(o, "/spec/storageClassName")),
                json!("<unset>"),
                age,
                json!(s(o, "/spec/volumeMode")),
            ]
        }
        Printer::PersistentVolume => {
            let claim = match (
                s(o, "/spec/claimRef/namespace"),
                s(o, "/spec/claimRef/name"),
            ) {
                (_, "") => String::new(),
                (ns, n) => format!("{ns}/{n}"),
            };
            vec![
                name,
                json!(storage_size(o, "/spec/capacity/storage")),
                json!(access_modes(o, "/spec/accessModes")),
                json!(s(o, "/spec/persistentVolumeReclaimPolicy")),
                json!(s(o, "/status/phase")),
                json!(claim),
                json!(s(o, "/spec/storageClassName")),
                json!("<unset>"),
                json!(s(o, "/status/reason")),
                age,
                json!(s(o, "/spec/volumeMode")),
            ]
        }
        Printer::PriorityClass => vec![
            json!(s(o, "/metadata/name")),
            json!(o.get("value").and_then(Value::as_i64).unwrap_or(0)),
            json!(o
                .get("globalDefault")
                .and_then(Value::as_bool)
                .unwrap_or(false)),
            age,
            json!(s(o, "/preemptionPolicy")),
        ],
        Printer::StorageClass => {
            let default = s(
                o,
                "/metadata/annotations/storageclass.kubernetes.io~1is-default-class",
            ) == "true";
            vec![
                json!(if default {
                    format!("{} (default)", s(o, "/metadata/name"))
                } else {
                    s(o, "/metadata/name").to_string()
                }),
                json!(s(o, "/provisioner")),
                json!(s(o, "/reclaimPolicy")),
                json!(s(o, "/volumeBindingMode")),
                json!(o
                    .get("allowVolumeExpansion")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    .to_string()),
                age,
            ]
        }
        Printer::RoleBinding => {
            // Subjects of one kind, comma separated; service accounts as ns:name.
            let of = |kind: &str| {
                arr(o, "/subjects")
                    .filter(|x| s(x, "/kind") == kind)
                    .map(|x| match (kind, s(x, "/namespace")) {
                        ("ServiceAccount", ns) => format!("{ns}:{}", s(x, "/name")),
                        _ => s(x, "/name").to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    s(o, "/roleRef/kind"),
                    s(o, "/roleRef/name")
                )),
                age,
                json!(of("User")),
                json!(of("Group")),
                json!(of("ServiceAccount")),
            ]
        }
    }
}
