//! Namespaces, Services, ConfigMaps and Secrets.

use base64::Engine;
use serde_json::{json, Value};

use super::meta::dns1123_label;
use super::{default_field, immutable, obj_mut, str_at};
use crate::apiserver::error::Cause;

pub fn default_namespace(obj: &mut Value) {
    let name = str_at(obj, "/metadata/name").unwrap_or("").to_string();
    let meta = obj_mut(obj, "metadata");
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    if let Value::Object(l) = labels {
        l.insert("kubernetes.io/metadata.name".into(), json!(name));
    }
    default_field(obj_mut(obj, "spec"), "finalizers", json!(["kubernetes"]));
}

pub fn namespace_status(_: &Value) -> Option<Value> {
    Some(json!({"phase": "Active"}))
}

/// DNS-1035: a label that starts with a letter (Service names become DNS names).
pub fn dns1035_label(s: &str) -> Option<String> {
    if let Some(why) = dns1123_label(s) {
        return Some(why.replace("RFC 1123", "RFC 1035"));
    }
    if !s.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
        return Some("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')".into());
    }
    None
}

const SERVICE_TYPES: &[&str] = &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];

pub fn default_service(obj: &mut Value) {
    let spec = obj_mut(obj, "spec");
    default_field(spec, "type", json!("ClusterIP"));
    default_field(spec, "sessionAffinity", json!("None"));
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for p in ports.iter_mut() {
            if let Value::Object(pm) = p {
                default_field(pm, "protocol", json!("TCP"));
                if let Some(port) = pm.get("port").cloned() {
                    default_field(pm, "targetPort", port);
                }
            }
        }
    }
}

pub fn validate_service(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let ty = str_at(obj, "/spec/type").unwrap_or("ClusterIP");
    if !SERVICE_TYPES.contains(&ty) {
        out.push(Cause::not_supported("spec.type", ty, SERVICE_TYPES));
    }
    let headless = str_at(obj, "/spec/clusterIP") == Some("None");
    let ports = obj.pointer("/spec/ports").and_then(Value::as_array);
    if ty == "ExternalName" {
        if str_at(obj, "/spec/externalName").unwrap_or("").is_empty() {
            out.push(Cause::required("spec.externalName"));
        }
    } else if ports.is_none_or(|p| p.is_empty()) && !headless {
        out.push(Cause::required("spec.ports"));
    }
    let many = ports.is_some_and(|p| p.len() > 1);
    let mut names = std::collections::HashSet::new();
    for (i, p) in ports.into_iter().flatten().enumerate() {
        let field = format!("spec.ports[{i}]");
        match str_at(p, "/name") {
            Some(n) if !n.is_empty() => {
                if let Some(why) = dns1123_label(n) {
                    out.push(Cause::invalid(format!("{field}.name"), n, why));
                } else if !names.insert(n) {
                    out.push(Cause::duplicate(format!("{field}.name"), n));
                }
            }
            _ if many => out.push(Cause::required(format!("{field}.name"))),
            _ => {}
        }
        match p.get("port").and_then(Value::as_i64) {
            Some(n) if (1..=65535).contains(&n) => {}
            Some(n) => out.push(Cause::invalid(
                format!("{field}.port"),
                n,
                "must be between 1 and 65535, inclusive",
            )),
            None => out.push(Cause::required(format!("{field}.port"))),
        }
        // 0 is "unset" (typed clients always send it); the range is the
        // allocator's to check, as it knows `--service-node-port-range`.
        let node_port = p.get("nodePort").and_then(Value::as_i64);
        if node_port.is_some_and(|n| n != 0) && ty == "ClusterIP" {
            out.push(Cause::forbidden(
                format!("{field}.nodePort"),
                "may not be used when `type` is 'ClusterIP'",
            ));
        }
        if let Some(proto) = str_at(p, "/protocol") {
            if !["TCP", "UDP", "SCTP"].contains(&proto) {
                out.push(Cause::not_supported(
                    format!("{field}.protocol"),
                    proto,
                    &["TCP", "UDP", "SCTP"],
                ));
            }
        }
    }
    out
}

pub fn validate_service_update(new: &Value, old: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    // A cleared clusterIP on update means "keep it", as kubectl apply sends it.
    if str_at(new, "/spec/clusterIP").is_some_and(|ip| !ip.is_empty()) {
        immutable(new, old, "/spec/clusterIP", "spec.clusterIP", &mut out);
    }
    out
}

fn config_keys(obj: &Value, fields: &[&str], out: &mut Vec<Cause>) {
    for f in fields {
        if let Some(Value::Object(m)) = obj.get(*f) {
            for k in m.keys() {
                let ok = !k.is_empty()
                    && k.len() <= 253
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
                    && k != "."
                    && k != ".."
                    && !k.starts_with("..");
                if !ok {
                    out.push(Cause::invalid(
                        format!("{f}[{k}]"),
                        k,
                        "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                    ));
                }
            }
        }
    }
}

pub fn validate_configmap(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    config_keys(obj, &["data", "binaryData"], &mut out);
    out
}

/// An `immutable: true` ConfigMap or Secret keeps its data forever.
pub fn validate_config_update(new: &Value, old: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    if old.get("immutable").and_then(Value::as_bool) == Some(true) {
        for f in ["data", "binaryData", "immutable"] {
            if new.get(f) != old.get(f) {
                out.push(Cause::forbidden(
                    f,
                    "field is immutable when `immutable` is set",
                ));
            }
        }
    }
    immutable(new, old, "/type", "type", &mut out);
    out
}

/// `stringData` is a write-only convenience folded into `data`.
pub fn default_secret(obj: &mut Value) {
    let Value::Object(m) = obj else { return };
    default_field(m, "type", json!("Opaque"));
    if let Some(Value::Object(sd)) = m.remove("stringData") {
        let data = m.entry("data").or_insert_with(|| json!({}));
        if let Value::Object(d) = data {
            for (k, v) in sd {
                let text = v.as_str().unwrap_or_default();
                d.insert(
                    k,
                    json!(base64::engine::general_purpose::STANDARD.encode(text)),
                );
            }
        }
    }
}

pub fn validate_secret(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    config_keys(obj, &["data"], &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_string_data_folds_into_data() {
        let mut s = json!({"stringData": {"user": "admin"}});
        default_secret(&mut s);
        assert_eq!(s, json!({"type": "Opaque", "data": {"user": "YWRtaW4="}}));
    }

    #[test]
    fn service_rules() {
        let mut svc = json!({"spec": {"ports": [{"port": 80}]}});
        default_service(&mut svc);
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
        assert!(validate_service(&svc).is_empty());
        let bad = json!({"spec": {"type": "Magic", "ports": [{"port": 0}, {"port": 1}]}});
        let fields: Vec<String> = validate_service(&bad)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(
            fields,
            vec![
                "spec.type",
                "spec.ports[0].name",
                "spec.ports[0].port",
                "spec.ports[1].name"
            ]
        );
    }
}
