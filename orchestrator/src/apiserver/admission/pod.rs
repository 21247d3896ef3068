//! Pods and pod templates: Kubernetes' defaults (`SetDefaults_Pod…`) and
//! the validation a Wasm or runc backend relies on.

use std::collections::HashSet;

use serde_json::{json, Map, Value};

use super::meta::{dns1123_label, dns1123_subdomain, labels};
use super::{default_field, immutable, obj_mut, str_at};
use crate::apiserver::error::Cause;

const RESTART_POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];

/// Defaults of a pod spec, shared by pods and every template.
pub fn default_spec(spec: &mut Value) {
    let map = match spec {
        Value::Object(m) => m,
        _ => return,
    };
    default_field(map, "restartPolicy", json!("Always"));
    default_field(map, "terminationGracePeriodSeconds", json!(30));
    default_field(map, "dnsPolicy", json!("ClusterFirst"));
    default_field(map, "schedulerName", json!("default-scheduler"));
    default_field(map, "securityContext", json!({}));
    for list in ["initContainers", "containers"] {
        if let Some(Value::Array(cs)) = map.get_mut(list) {
            for c in cs.iter_mut() {
                default_container(c);
            }
        }
    }
}

fn default_container(c: &mut Value) {
    let image = str_at(c, "/image").unwrap_or("").to_string();
    let Value::Object(m) = c else { return };
    // Kubernetes: `:latest` or no tag means always pull. Digests pin.
    let last = image.rsplit('/').next().unwrap_or("");
    let policy = if image.contains('@') {
        "IfNotPresent"
    } else if !last.contains(':') || last.ends_with(":latest") {
        "Always"
    } else {
        "IfNotPresent"
    };
    default_field(m, "imagePullPolicy", json!(policy));
    default_field(m, "terminationMessagePath", json!("/dev/termination-log"));
    default_field(m, "terminationMessagePolicy", json!("File"));
    default_field(m, "resources", json!({}));
    if let Some(Value::Array(ports)) = m.get_mut("ports") {
        for p in ports.iter_mut() {
            if let Value::Object(pm) = p {
                default_field(pm, "protocol", json!("TCP"));
            }
        }
    }
}

pub fn default_pod(obj: &mut Value) {
    let spec = obj_mut(obj, "spec");
    default_field(spec, "serviceAccountName", json!("default"));
    default_field(spec, "enableServiceLinks", json!(true));
    default_tolerations(spec);
    if let Some(spec) = obj.get_mut("spec") {
        default_spec(spec);
    }
}

/// How long a pod stays on a node that is not ready or unreachable before
/// it is evicted, unless it says otherwise (Kubernetes'
/// DefaultTolerationSeconds admission and its 300 s default).
const DEFAULT_TOLERATION_SECONDS: i64 = 300;

/// Adds a `NoExecute` toleration with the default limit for each of the
/// node lifecycle taints the pod does not already tolerate.
fn default_tolerations(spec: &mut Map<String, Value>) {
    let entry = spec.entry("tolerations").or_insert(Value::Null);
    if entry.is_null() {
        *entry = Value::Array(Vec::new());
    }
    let Some(list) = entry.as_array_mut() else {
        // Not a list: validation names the field.
        return;
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let covered = list.iter().any(|t| {
            let k = t.get("key").and_then(Value::as_str).unwrap_or("");
            let e = t.get("effect").and_then(Value::as_str).unwrap_or("");
            (k == key || k.is_empty()) && (e == "NoExecute" || e.is_empty())
        });
        if !covered {
            list.push(
                json!({"key": key, "operator": "Exists", "effect": "NoExecute",
                "tolerationSeconds": DEFAULT_TOLERATION_SECONDS}),
            );
        }
    }
}

/// The status a pod starts with: Pending, QoS class from its resources.
pub fn initial_status(obj: &Value) -> Option<Value> {
    Some(json!({"phase": "Pending", "qosClass": qos_class(obj)}))
}

fn qos_class(obj: &Value) -> &'static str {
    let containers = obj
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in &containers {
        let limits = c.pointer("/resources/limits");
        let requests = c.pointer("/resources/requests");
        if limits.is_some() || requests.is_some() {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let l = limits.and_then(|l| l.get(r));
            let q = requests.and_then(|q| q.get(r)).or(l);
            if l.is_none() || l != q {
                guaranteed = false;
            }
        }
    }
    if guaranteed {
        "Guaranteed"
    } else if any {
        "Burstable"
    } else {
        "BestEffort"
    }
}

pub fn validate_pod(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    match obj.get("spec") {
        Some(spec) => validate_spec(spec, "spec", &mut out),
        None => out.push(Cause::required("spec")),
    }
    out
}

/// Validation of a pod spec at `path`.
pub fn validate_spec(spec: &Value, path: &str, out: &mut Vec<Cause>) {
    let volumes: HashSet<&str> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .map(|vs| vs.iter().filter_map(|v| str_at(v, "/name")).collect())
        .unwrap_or_default();
    let mut vol_seen = HashSet::new();
    if let Some(vs) = spec.get("volumes").and_then(Value::as_array) {
        for (i, v) in vs.iter().enumerate() {
            let name = str_at(v, "/name").unwrap_or("");
            let field = format!("{path}.volumes[{i}].name");
            if name.is_empty() {
                out.push(Cause::required(field));
            } else if let Some(why) = dns1123_label(name) {
                out.push(Cause::invalid(field, name, why));
            } else if !vol_seen.insert(name) {
                out.push(Cause::duplicate(field, name));
            }
            if let Some(e) = v.get("ephemeral") {
                let tpath = format!("{path}.volumes[{i}].ephemeral.volumeClaimTemplate");
                match e.get("volumeClaimTemplate") {
                    Some(t) => {
                        for mut c in super::storage::validate_claim(t) {
                            c.field = format!("{tpath}.{}", c.field);
                            out.push(c);
                        }
                    }
                    None => out.push(Cause::required(tpath)),
                }
            }
        }
    }
    let mut names = HashSet::new();
    match spec.get("containers").and_then(Value::as_array) {
        Some(cs) if !cs.is_empty() => {
            for (i, c) in cs.iter().enumerate() {
                validate_container(
                    c,
                    &format!("{path}.containers[{i}]"),
                    &volumes,
                    &mut names,
                    out,
                );
            }
        }
        _ => out.push(Cause::required(format!("{path}.containers"))),
    }
    if let Some(cs) = spec.get("initContainers").and_then(Value::as_array) {
        for (i, c) in cs.iter().enumerate() {
            validate_container(
                c,
                &format!("{path}.initContainers[{i}]"),
                &volumes,
                &mut names,
                out,
            );
        }
    }
    if let Some(p) = spec.get("restartPolicy").and_then(Value::as_str) {
        if !RESTART_POLICIES.contains(&p) {
            out.push(Cause::not_supported(
                format!("{path}.restartPolicy"),
                p,
                RESTART_POLICIES,
            ));
        }
    }
    if let Some(g) = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
    {
        if g < 0 {
            out.push(Cause::invalid(
                format!("{path}.terminationGracePeriodSeconds"),
                g,
                "must be greater than or equal to 0",
            ));
        }
    }
    if let Some(rc) = spec.get("runtimeClassName").and_then(Value::as_str) {
        if let Some(why) = dns1123_subdomain(rc) {
            out.push(Cause::invalid(format!("{path}.runtimeClassName"), rc, why));
        }
    }
    labels(
        spec.get("nodeSelector"),
        &format!("{path}.nodeSelector"),
        out,
    );
}

fn validate_container<'a>(
    c: &'a Value,
    path: &str,
    volumes: &HashSet<&str>,
    names: &mut HashSet<&'a str>,
    out: &mut Vec<Cause>,
) {
    let name = str_at(c, "/name").unwrap_or("");
    if name.is_empty() {
        out.push(Cause::required(format!("{path}.name")));
    } else if let Some(why) = dns1123_label(name) {
        out.push(Cause::invalid(format!("{path}.name"), name, why));
    } else if !names.insert(name) {
        out.push(Cause::duplicate(format!("{path}.name"), name));
    }
    if str_at(c, "/image").unwrap_or("").trim().is_empty() {
        out.push(Cause::required(format!("{path}.image")));
    }
    if let Some(p) = str_at(c, "/imagePullPolicy") {
        if !PULL_POLICIES.contains(&p) {
            out.push(Cause::not_supported(
                format!("{path}.imagePullPolicy"),
                p,
                PULL_POLICIES,
            ));
        }
    }
    if let Some(ports) = c.get("ports").and_then(Value::as_array) {
        for (i, p) in ports.iter().enumerate() {
            let field = format!("{path}.ports[{i}]");
            match p.get("containerPort").and_then(Value::as_i64) {
                Some(n) if (1..=65535).contains(&n) => {}
                Some(n) => out.push(Cause::invalid(
                    format!("{field}.containerPort"),
                    n,
                    "must be between 1 and 65535, inclusive",
                )),
                None => out.push(Cause::required(format!("{field}.containerPort"))),
            }
            if let Some(proto) = str_at(p, "/protocol") {
                if !PROTOCOLS.contains(&proto) {
                    out.push(Cause::not_supported(
                        format!("{field}.protocol"),
                        proto,
                        PROTOCOLS,
                    ));
                }
            }
        }
    }
    if let Some(env) = c.get("env").and_then(Value::as_array) {
        for (i, e) in env.iter().enumerate() {
            let n = str_at(e, "/name").unwrap_or("");
            if n.is_empty() {
                out.push(Cause::required(format!("{path}.env[{i}].name")));
            } else if n.contains('=') || n.chars().any(|ch| ch.is_control()) {
                out.push(Cause::invalid(
                    format!("{path}.env[{i}].name"),
                    n,
                    "a valid environment variable name must consist only of printable ASCII characters other than '='",
                ));
            }
        }
    }
    for (field, must_succeed_once) in [
        ("startupProbe", true),
        ("livenessProbe", true),
        ("readinessProbe", false),
    ] {
        if let Some(probe) = c.get(field).filter(|p| !p.is_null()) {
            validate_probe(probe, &format!("{path}.{field}"), must_succeed_once, out);
        }
    }
    if let Some(mounts) = c.get("volumeMounts").and_then(Value::as_array) {
        for (i, m) in mounts.iter().enumerate() {
            let n = str_at(m, "/name").unwrap_or("");
            if !volumes.contains(n) {
                out.push(Cause {
                    reason: "FieldValueNotFound",
                    field: format!("{path}.volumeMounts[{i}].name"),
                    message: format!("Not found: \"{n}\""),
                });
            }
            if str_at(m, "/mountPath").unwrap_or("").is_empty() {
                out.push(Cause::required(format!(
                    "{path}.volumeMounts[{i}].mountPath"
                )));
            }
        }
    }
}

/// Kubernetes' probe rules: exactly one handler, no negative timings, and
/// a startup or liveness probe that succeeds once (`successThreshold: 1`).
fn validate_probe(probe: &Value, path: &str, must_succeed_once: bool, out: &mut Vec<Cause>) {
    let handlers = ["exec", "httpGet", "tcpSocket", "grpc"]
        .iter()
        .filter(|h| probe.get(**h).is_some_and(|v| !v.is_null()))
        .count();
    match handlers {
        0 => out.push(Cause {
            reason: "FieldValueRequired",
            field: path.to_string(),
            message: "Required value: must specify a handler type".into(),
        }),
        1 => {}
        _ => out.push(Cause::forbidden(
            path,
            "may not specify more than 1 handler type",
        )),
    }
    for field in [
        "initialDelaySeconds",
        "periodSeconds",
        "timeoutSeconds",
        "successThreshold",
        "failureThreshold",
        "terminationGracePeriodSeconds",
    ] {
        if let Some(n) = probe.get(field).and_then(Value::as_i64).filter(|n| *n < 0) {
            out.push(Cause::invalid(
                format!("{path}.{field}"),
                n,
                "must be greater than or equal to 0",
            ));
        }
    }
    if must_succeed_once {
        if let Some(n) = probe
            .get("successThreshold")
            .and_then(Value::as_i64)
            .filter(|n| *n != 1)
        {
            out.push(Cause::invalid(
                format!("{path}.successThreshold"),
                n,
                "must be 1",
            ));
        }
    }
}

/// Kubernetes lets a running pod change only images, the active deadline,
/// tolerations and the grace period; everything else in `spec` is fixed.
pub fn validate_pod_update(new: &Value, old: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let mask = |v: &Value| {
        let mut spec = v.get("spec").cloned().unwrap_or(Value::Null);
        if let Value::Object(m) = &mut spec {
            for f in [
                "activeDeadlineSeconds",
                "tolerations",
                "terminationGracePeriodSeconds",
            ] {
                m.remove(f);
            }
            for list in ["containers", "initContainers"] {
                if let Some(Value::Array(cs)) = m.get_mut(list) {
                    for c in cs {
                        if let Value::Object(cm) = c {
                            cm.remove("image");
                        }
                    }
                }
            }
        }
        spec
    };
    if mask(new) != mask(old) {
        out.push(Cause::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
    immutable(new, old, "/spec/nodeName", "spec.nodeName", &mut out);
    out
}

/// Defaults for a template at `obj.spec.template` (or a deeper pointer).
pub fn default_template(obj: &mut Value, pointer: &str) {
    if let Some(spec) = obj.pointer_mut(&format!("{pointer}/spec")) {
        default_spec(spec);
    }
}

/// Validation of a template; `path` is the template's field path.
pub fn validate_template(obj: &Value, pointer: &str, path: &str, out: &mut Vec<Cause>) {
    let Some(t) = obj.pointer(pointer) else {
        out.push(Cause::required(path));
        return;
    };
    labels(
        t.pointer("/metadata/labels"),
        &format!("{path}.metadata.labels"),
        out,
    );
    match t.get("spec") {
        Some(spec) => validate_spec(spec, &format!("{path}.spec"), out),
        None => out.push(Cause::required(format!("{path}.spec"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "file:///x.wasm"}]}});
        default_pod(&mut pod);
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 30);
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(
            pod["spec"]["tolerations"],
            json!([
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            ])
        );
        assert!(validate_pod(&pod).is_empty());
        // A pod's own toleration for a taint stands; an empty key covers both.
        let mut own = json!({"spec": {"tolerations": [
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}]}});
        default_pod(&mut own);
        let keys: Vec<&str> = own["spec"]["tolerations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["key"].as_str())
            .collect();
        assert_eq!(
            keys,
            [
                "node.kubernetes.io/unreachable",
                "node.kubernetes.io/not-ready"
            ]
        );
        let mut all = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        default_pod(&mut all);
        assert_eq!(all["spec"]["tolerations"], json!([{"operator": "Exists"}]));

        let bad = json!({"spec": {"restartPolicy": "Sometimes", "containers": [
            {"name": "A", "image": ""}, {"name": "b", "image": "x", "ports": [{"containerPort": 70000}]}]}});
        let fields: Vec<String> = validate_pod(&bad).into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            vec![
                "spec.containers[0].name",
                "spec.containers[0].image",
                "spec.containers[1].ports[0].containerPort",
                "spec.restartPolicy"
            ]
        );
    }

    #[test]
    fn probes_need_one_handler_and_liveness_succeeds_once() {
        let pod = json!({"spec": {"containers": [{"name": "a", "image": "x",
            "startupProbe": {"httpGet": {"port": 80}, "successThreshold": 2},
            "livenessProbe": {"periodSeconds": -1},
            "readinessProbe": {"httpGet": {"port": 80}, "tcpSocket": {"port": 80}, "successThreshold": 3}}]}});
        let got: Vec<(String, String)> = validate_pod(&pod)
            .into_iter()
            .map(|c| (c.field, c.message))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "spec.containers[0].startupProbe.successThreshold".into(),
                    "Invalid value: 2: must be 1".into()
                ),
                (
                    "spec.containers[0].livenessProbe".into(),
                    "Required value: must specify a handler type".into()
                ),
                (
                    "spec.containers[0].livenessProbe.periodSeconds".into(),
                    "Invalid value: -1: must be greater than or equal to 0".into()
                ),
                (
                    "spec.containers[0].readinessProbe".into(),
                    "Forbidden: may not specify more than 1 handler type".into()
                ),
            ]
        );
    }

    #[test]
    fn pod_spec_is_immutable_but_image_is_not() {
        let old = json!({"spec": {"containers": [{"name": "a", "image": "v1"}]}});
        let new_image = json!({"spec": {"containers": [{"name": "a", "image": "v2"}]}});
        let new_name = json!({"spec": {"containers": [{"name": "b", "image": "v1"}]}});
        assert!(validate_pod_update(&new_image, &old).is_empty());
        assert_eq!(validate_pod_update(&new_name, &old)[0].field, "spec");
    }
}
