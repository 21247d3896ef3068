//! PersistentVolumeClaims, PersistentVolumes and StorageClasses: Kubernetes'
//! defaults, and validation that refuses up front what no Shoal node can
//! serve (block volumes, volume types other than `hostPath`, `local` and the
//! local-path driver, resizing).

use serde_json::{json, Value};
use shoal_sdk::quantity;
use shoal_sdk::volumes::LOCAL_PATH_PROVISIONER;

use super::{default_field, immutable, obj_mut, str_at};
use crate::apiserver::error::Cause;

const ACCESS_MODES: &[&str] = &[
    "ReadWriteOnce",
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOncePod",
];
const RECLAIM_POLICIES: &[&str] = &["Delete", "Retain"];
const BINDING_MODES: &[&str] = &["Immediate", "WaitForFirstConsumer"];

fn access_modes(obj: &Value, out: &mut Vec<Cause>) {
    match obj.pointer("/spec/accessModes").and_then(Value::as_array) {
        Some(ms) if !ms.is_empty() => {
            for (i, m) in ms.iter().enumerate() {
                let m = m.as_str().unwrap_or_default();
                if !ACCESS_MODES.contains(&m) {
                    out.push(Cause::not_supported(
                        format!("spec.accessModes[{i}]"),
                        m,
                        ACCESS_MODES,
                    ));
                }
            }
        }
        _ => out.push(Cause::required("spec.accessModes")),
    }
}

/// A storage size at `pointer`: present, a quantity, more than zero.
fn storage_size(obj: &Value, pointer: &str, field: &str, out: &mut Vec<Cause>) {
    match obj.pointer(pointer) {
        None | Some(Value::Null) => out.push(Cause::required(field)),
        Some(v) => {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            match quantity::base_units(&text) {
                Some(n) if n > 0 => {}
                Some(_) => out.push(Cause::invalid(field, &text, "must be greater than zero")),
                None => out.push(Cause::invalid(
                    field,
                    &text,
                    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                )),
            }
        }
    }
}

fn filesystem_only(obj: &Value, out: &mut Vec<Cause>) {
    if let Some(m) = str_at(obj, "/spec/volumeMode") {
        if m != "Filesystem" {
            out.push(Cause::not_supported("spec.volumeMode", m, &["Filesystem"]));
        }
    }
}

pub fn default_claim(obj: &mut Value) {
    default_field(obj_mut(obj, "spec"), "volumeMode", json!("Filesystem"));
}

pub fn validate_claim(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    access_modes(obj, &mut out);
    storage_size(
        obj,
        "/spec/resources/requests/storage",
        "spec.resources.requests.storage",
        &mut out,
    );
    filesystem_only(obj, &mut out);
    out
}

/// A claim's spec is fixed once made, except that the controller names its
/// volume once. Kubernetes lets a bound claim grow; no Shoal volume can.
pub fn validate_claim_update(new: &Value, old: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let size = |v: &Value| v.pointer("/spec/resources/requests/storage").cloned();
    if size(new) != size(old) {
        out.push(Cause::forbidden(
            "spec.resources.requests.storage",
            "field can not be changed: Shoal's volumes cannot be resized",
        ));
    }
    let strip = |v: &Value| {
        let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
        if let Value::Object(m) = &mut s {
            m.remove("resources");
            if str_at(old, "/spec/volumeName")
                .unwrap_or_default()
                .is_empty()
            {
                m.remove("volumeName");
            }
        }
        s
    };
    if strip(new) != strip(old) {
        out.push(Cause::forbidden(
            "spec",
            "spec is immutable after creation except resources.requests for bound claims",
        ));
    }
    out
}

pub fn claim_status(_: &Value) -> Option<Value> {
    Some(json!({"phase": "Pending"}))
}

pub fn default_volume(obj: &mut Value) {
    let spec = obj_mut(obj, "spec");
    default_field(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
    default_field(spec, "volumeMode", json!("Filesystem"));
}

/// The volume sources a Shoal node mounts.
const SOURCES: &[&str] = &["hostPath", "local", "csi"];

pub fn validate_volume(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    access_modes(obj, &mut out);
    storage_size(
        obj,
        "/spec/capacity/storage",
        "spec.capacity.storage",
        &mut out,
    );
    filesystem_only(obj, &mut out);
    if let Some(p) = str_at(obj, "/spec/persistentVolumeReclaimPolicy") {
        if !RECLAIM_POLICIES.contains(&p) {
            out.push(Cause::not_supported(
                "spec.persistentVolumeReclaimPolicy",
                p,
                RECLAIM_POLICIES,
            ));
        }
    }
    let spec = obj.get("spec").and_then(Value::as_object);
    let given: Vec<&str> = SOURCES
        .iter()
        .copied()
        .filter(|s| spec.is_some_and(|m| m.get(*s).is_some_and(|v| !v.is_null())))
        .collect();
    let other = spec.and_then(|m| {
        m.keys()
            .find(|k| {
                !SOURCES.contains(&k.as_str())
                    && ![
                        "accessModes",
                        "capacity",
                        "claimRef",
                        "mountOptions",
                        "nodeAffinity",
                        "persistentVolumeReclaimPolicy",
                        "storageClassName",
                        "volumeMode",
                        "volumeAttributesClassName",
                    ]
                    .contains(&k.as_str())
            })
            .cloned()
    });
    match (given.len(), other) {
        (_, Some(o)) => out.push(Cause::forbidden(
            format!("spec.{o}"),
            "Shoal nodes mount hostPath, local and shoal.dev/local-path csi volumes only",
        )),
        (0, None) => out.push(Cause::required_msg("spec", "must specify a volume type")),
        (1, None) => {}
        (_, None) => out.push(Cause::forbidden(
            format!("spec.{}", given[1]),
            "may not specify more than 1 volume type",
        )),
    }
    for (source, field) in [("hostPath", "path"), ("local", "path")] {
        if given.contains(&source) && str_at(obj, &format!("/spec/{source}/{field}")).is_none() {
            out.push(Cause::required(format!("spec.{source}.{field}")));
        }
    }
    if given.contains(&"local") && obj.pointer("/spec/nodeAffinity").is_none() {
        out.push(Cause::required_msg(
            "spec.nodeAffinity",
            "Local volumes require node affinity",
        ));
    }
    if given.contains(&"csi") {
        match str_at(obj, "/spec/csi/driver") {
            Some(LOCAL_PATH_PROVISIONER) => {}
            Some(d) => out.push(Cause::not_supported(
                "spec.csi.driver",
                d,
                &[LOCAL_PATH_PROVISIONER],
            )),
            None => out.push(Cause::required("spec.csi.driver")),
        }
        if str_at(obj, "/spec/csi/volumeHandle")
            .is_none_or(|h| h.is_empty() || h.contains('/') || h.starts_with('.'))
        {
            out.push(Cause::invalid(
                "spec.csi.volumeHandle",
                str_at(obj, "/spec/csi/volumeHandle").unwrap_or_default(),
                "must be a plain directory name",
            ));
        }
    }
    out
}

/// Where a volume's data lives may not move under its users.
pub fn validate_volume_update(new: &Value, old: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    for s in SOURCES {
        immutable(
            new,
            old,
            &format!("/spec/{s}"),
            &format!("spec.{s}"),
            &mut out,
        );
    }
    out
}

pub fn volume_status(_: &Value) -> Option<Value> {
    Some(json!({"phase": "Available"}))
}

pub fn default_class(obj: &mut Value) {
    let Value::Object(m) = obj else { return };
    default_field(m, "reclaimPolicy", json!("Delete"));
    default_field(m, "volumeBindingMode", json!("Immediate"));
}

pub fn validate_class(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    if str_at(obj, "/provisioner").is_none_or(str::is_empty) {
        out.push(Cause::required("provisioner"));
    }
    for (field, allowed) in [
        ("reclaimPolicy", RECLAIM_POLICIES),
        ("volumeBindingMode", BINDING_MODES),
    ] {
        if let Some(v) = str_at(obj, &format!("/{field}")) {
            if !allowed.contains(&v) {
                out.push(Cause::not_supported(field, v, allowed));
            }
        }
    }
    out
}

pub fn validate_class_update(new: &Value, old: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    for f in [
        "provisioner",
        "parameters",
        "reclaimPolicy",
        "volumeBindingMode",
    ] {
        immutable(new, old, &format!("/{f}"), f, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(size: &str) -> Value {
        json!({"spec": {"accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": size}}}})
    }

    #[test]
    fn claims_need_modes_and_a_size_and_keep_their_spec() {
        assert!(validate_claim(&claim("1Gi")).is_empty());
        let bad = validate_claim(&json!({"spec": {"accessModes": ["Sometimes"]}}));
        let fields: Vec<&str> = bad.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.accessModes[0]", "spec.resources.requests.storage"]
        );
        assert_eq!(
            validate_claim(&claim("0"))[0].field,
            "spec.resources.requests.storage"
        );
        assert_eq!(
            validate_claim(&claim("lots"))[0].reason,
            "FieldValueInvalid"
        );

        let old = claim("1Gi");
        let mut bound = old.clone();
        bound["spec"]["volumeName"] = json!("pv-1");
        assert!(validate_claim_update(&bound, &old).is_empty());
        let mut moved = bound.clone();
        moved["spec"]["volumeName"] = json!("pv-2");
        assert_eq!(validate_claim_update(&moved, &bound)[0].field, "spec");
        let grown = claim("2Gi");
        let causes = validate_claim_update(&grown, &old);
        assert_eq!(causes[0].field, "spec.resources.requests.storage");
        assert!(causes[0].message.contains("resized"));
    }

    #[test]
    fn volumes_take_one_source_shoal_can_mount() {
        let pv = |source: Value| {
            let mut v = json!({"spec": {"accessModes": ["ReadWriteOnce"],
                                        "capacity": {"storage": "1Gi"}}});
            if let (Value::Object(spec), Value::Object(s)) = (&mut v["spec"], source) {
                spec.extend(s);
            }
            v
        };
        assert!(validate_volume(&pv(json!({"hostPath": {"path": "/srv"}}))).is_empty());
        assert_eq!(validate_volume(&pv(json!({})))[0].field, "spec");
        let nfs = validate_volume(&pv(json!({"nfs": {"server": "x", "path": "/"}})));
        assert_eq!(nfs[0].field, "spec.nfs");
        let local = validate_volume(&pv(json!({"local": {"path": "/srv"}})));
        assert_eq!(local[0].field, "spec.nodeAffinity");
        let csi = validate_volume(&pv(
            json!({"csi": {"driver": "ebs", "volumeHandle": "../x"}}),
        ));
        let fields: Vec<&str> = csi.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["spec.csi.driver", "spec.csi.volumeHandle"]);
    }

    #[test]
    fn classes_default_like_kubernetes() {
        let mut sc = json!({"provisioner": "shoal.dev/local-path"});
        default_class(&mut sc);
        assert_eq!(sc["reclaimPolicy"], "Delete");
        assert_eq!(sc["volumeBindingMode"], "Immediate");
        assert!(validate_class(&sc).is_empty());
        sc["volumeBindingMode"] = json!("Later");
        assert_eq!(validate_class(&sc)[0].field, "volumeBindingMode");
    }
}
