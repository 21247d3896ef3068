//! Admission: Kubernetes' defaults and validation per kind, plus the
//! server-owned metadata every write gets (uid, timestamps, generation).
//!
//! Each kind's rules are plain functions over the JSON object, so one table
//! entry can name them; `path` arguments are the field path Kubernetes would
//! report, so a template's rules report `spec.template.spec.…`.

pub mod core;
pub mod cron;
pub mod meta;
pub mod pod;
pub mod rbac;
pub mod scheduling;
pub mod storage;
pub mod workloads;

use serde_json::{Map, Value};

use super::error::Cause;

/// The rules of one kind.
#[derive(Clone, Copy)]
pub struct Admission {
    pub default: fn(&mut Value),
    /// Name rule: most kinds take a DNS-1123 subdomain.
    pub name_rule: fn(&str) -> Option<String>,
    pub validate: fn(&Value) -> Vec<Cause>,
    /// Rules comparing the new object with the stored one (immutability).
    pub validate_update: fn(&Value, &Value) -> Vec<Cause>,
    /// The status a new object starts with (status is not the client's to set).
    pub initial_status: fn(&Value) -> Option<Value>,
}

fn no_default(_: &mut Value) {}
fn no_causes(_: &Value) -> Vec<Cause> {
    Vec::new()
}
fn no_update_causes(_: &Value, _: &Value) -> Vec<Cause> {
    Vec::new()
}
fn empty_status(_: &Value) -> Option<Value> {
    None
}

/// For kinds whose creator reports status up front (a node agent
/// registering its Node), as Kubernetes allows.
pub fn keep_status(obj: &Value) -> Option<Value> {
    obj.get("status").cloned()
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            default: no_default,
            name_rule: meta::dns1123_subdomain,
            validate: no_causes,
            validate_update: no_update_causes,
            initial_status: empty_status,
        }
    }
}

/// `obj[key]` as a mutable JSON object, created when missing or not an object.
pub fn obj_mut<'a>(obj: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let Value::Object(map) = obj else {
        unreachable!("just made an object")
    };
    let slot = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

/// Sets `map[key] = value` unless a non-null value is there.
pub fn default_field(map: &mut Map<String, Value>, key: &str, value: Value) {
    match map.get(key) {
        Some(v) if !v.is_null() => {}
        _ => {
            map.insert(key.to_string(), value);
        }
    }
}

pub fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// Validates a non-negative integer field.
pub fn non_negative(v: &Value, pointer: &str, field: &str, out: &mut Vec<Cause>) {
    if let Some(n) = v.pointer(pointer).and_then(Value::as_i64) {
        if n < 0 {
            out.push(Cause::invalid(
                field,
                n,
                "must be greater than or equal to 0",
            ));
        }
    }
}

/// Same value in old and new, else "field is immutable".
pub fn immutable(new: &Value, old: &Value, pointer: &str, field: &str, out: &mut Vec<Cause>) {
    let a = new.pointer(pointer).unwrap_or(&Value::Null);
    let b = old.pointer(pointer).unwrap_or(&Value::Null);
    if a != b {
        out.push(Cause::immutable(field));
    }
}
