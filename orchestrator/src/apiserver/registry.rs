//! The generic registry: one table entry per served resource, built from the
//! `k8s-openapi` type so names and versions cannot drift from the wire
//! format. Adding a kind is one `entry::<T>()` line in `kinds.rs` plus,
//! where Kubernetes has them, its defaults, validation and printer columns.

use std::collections::HashMap;

use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::admission::Admission;
use super::table::Printer;

/// Type check and normalisation: decode into the typed struct (naming the
/// offending field on failure) and encode back, which drops unknown fields
/// exactly as Kubernetes' decoder does.
pub type Normalize = fn(&Value) -> Result<Value, String>;

/// The kind's OpenAPI schema, registered with the generator (which also
/// collects every type it refers to); what `kubectl explain` reads.
pub type SchemaOf = fn(&mut schemars::SchemaGenerator) -> schemars::Schema;

fn schema_of<T: schemars::JsonSchema>(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    g.subschema_for::<T>()
}

/// Where a resource's objects come from.
#[derive(Clone, Copy)]
pub enum Source {
    /// The store, with every verb.
    Stored,
    /// Create-only: the server answers and keeps nothing (access reviews).
    Answered(super::reviews::Answer),
    /// get and list only: measured on the nodes when asked (metrics.k8s.io).
    Measured,
}

impl Source {
    /// The verbs discovery lists.
    pub fn verbs(&self) -> &'static [&'static str] {
        match self {
            Source::Stored => &[
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ],
            Source::Answered(_) => &["create"],
            Source::Measured => &["get", "list"],
        }
    }
}

pub struct ResourceInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Subresources besides the object itself: `status`, `scale`, `binding`…
    pub subresources: &'static [&'static str],
    /// Field selector keys beyond `metadata.name` and `metadata.namespace`.
    pub field_selectors: &'static [&'static str],
    pub normalize: Normalize,
    pub schema: SchemaOf,
    /// Where the objects come from, and so which verbs there are.
    pub source: Source,
    pub admission: Admission,
    pub printer: Printer,
}

impl ResourceInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn has_status(&self) -> bool {
        self.subresources.contains(&"status")
    }

    /// Store key of the collection (with trailing slash) or of one object.
    pub fn key(&self, namespace: Option<&str>, name: Option<&str>) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        let mut k = format!("/registry/{group}/{}/", self.plural);
        if let Some(ns) = namespace.filter(|_| self.namespaced) {
            k.push_str(ns);
            k.push('/');
        }
        if let Some(n) = name {
            k.push_str(n);
        }
        k
    }
}

fn normalize<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    // Tracking the path slows every decode; only a failing object needs
    // it, for the message, so decode again then.
    let typed: T = match T::deserialize(v) {
        Ok(t) => t,
        Err(plain) => {
            return Err(match serde_path_to_error::deserialize::<_, T>(v) {
                Err(e) if e.path().to_string() != "." => format!("{}: {}", e.path(), e.inner()),
                Err(e) => e.inner().to_string(),
                Ok(_) => plain.to_string(),
            })
        }
    };
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

/// Builder for a table entry from the typed resource.
pub struct Entry(ResourceInfo);

pub fn entry<T>() -> Entry
where
    T: Resource + DeserializeOwned + Serialize + schemars::JsonSchema,
    T::Scope: ScopeFlag,
{
    Entry(ResourceInfo {
        group: T::GROUP,
        version: T::VERSION,
        kind: T::KIND,
        plural: T::URL_PATH_SEGMENT,
        singular: T::KIND.to_ascii_lowercase(),
        namespaced: <T::Scope as ScopeFlag>::NAMESPACED,
        short_names: &[],
        categories: &[],
        subresources: &[],
        field_selectors: &[],
        normalize: normalize::<T>,
        schema: schema_of::<T>,
        source: Source::Stored,
        admission: Admission::default(),
        printer: Printer::Default,
    })
}

/// Whether a `k8s-openapi` scope is namespaced.
pub trait ScopeFlag {
    const NAMESPACED: bool;
}
impl ScopeFlag for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}
impl ScopeFlag for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

impl Entry {
    pub fn short(mut self, names: &'static [&'static str]) -> Self {
        self.0.short_names = names;
        self
    }
    pub fn categories(mut self, c: &'static [&'static str]) -> Self {
        self.0.categories = c;
        self
    }
    pub fn subresources(mut self, s: &'static [&'static str]) -> Self {
        self.0.subresources = s;
        self
    }
    pub fn fields(mut self, f: &'static [&'static str]) -> Self {
        self.0.field_selectors = f;
        self
    }
    pub fn admission(mut self, a: Admission) -> Self {
        self.0.admission = a;
        self
    }
    pub fn printer(mut self, p: Printer) -> Self {
        self.0.printer = p;
        self
    }
    pub fn answered_by(mut self, a: super::reviews::Answer) -> Self {
        self.0.source = Source::Answered(a);
        self
    }
    /// Read-only objects measured on the nodes when asked (metrics.k8s.io).
    pub fn measured(mut self) -> Self {
        self.0.source = Source::Measured;
        self
    }
    pub fn build(self) -> ResourceInfo {
        self.0
    }
}

/// Lookup by group/version/resource and by group/kind.
pub struct Registry {
    pub resources: Vec<ResourceInfo>,
    by_gvr: HashMap<(String, String, String), usize>,
}

impl Registry {
    pub fn new(resources: Vec<ResourceInfo>) -> Self {
        let by_gvr = resources
            .iter()
            .enumerate()
            .map(|(i, r)| ((r.group.into(), r.version.into(), r.plural.into()), i))
            .collect();
        Registry { resources, by_gvr }
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceInfo> {
        self.by_gvr
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .map(|i| &self.resources[*i])
    }

    /// Groups in the order discovery lists them (core first).
    pub fn groups(&self) -> Vec<(&'static str, &'static str)> {
        let mut out: Vec<(&'static str, &'static str)> = Vec::new();
        for r in &self.resources {
            if !out.contains(&(r.group, r.version)) {
                out.push((r.group, r.version));
            }
        }
        out
    }
}

/// Paths of fields present in `input` that the typed decode dropped: what
/// `fieldValidation=Strict` rejects and `Warn` reports.
pub fn unknown_fields(input: &Value, normalized: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk_unknown(input, normalized, &mut String::new(), &mut out);
    out
}

/// `path` is one buffer grown and cut back as the walk descends, so a
/// known field costs no allocation.
fn walk_unknown(input: &Value, norm: &Value, path: &mut String, out: &mut Vec<String>) {
    let depth = path.len();
    match (input, norm) {
        (Value::Object(i), Value::Object(n)) => {
            for (k, v) in i {
                if v.is_null() {
                    continue;
                }
                if depth > 0 {
                    path.push('.');
                }
                path.push_str(k);
                match n.get(k) {
                    Some(nv) => walk_unknown(v, nv, path, out),
                    None if is_empty(v) => {}
                    None => out.push(path.clone()),
                }
                path.truncate(depth);
            }
        }
        (Value::Array(i), Value::Array(n)) => {
            for (idx, (iv, nv)) in i.iter().zip(n.iter()).enumerate() {
                use std::fmt::Write as _;
                let _ = write!(path, "[{idx}]");
                walk_unknown(iv, nv, path, out);
                path.truncate(depth);
            }
        }
        _ => {}
    }
}

/// Empty collections are dropped by the typed encoder without being unknown.
fn is_empty(v: &Value) -> bool {
    matches!(v, Value::Object(m) if m.is_empty()) || matches!(v, Value::Array(a) if a.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_named_by_their_paths() {
        let input = json!({
            "extra": 1,
            "metadata": {"name": "a", "labels": {}},
            "spec": {"containers": [{"name": "c", "bogus": true}, {"name": "d"}], "gone": {}},
        });
        let normalized = json!({
            "metadata": {"name": "a"},
            "spec": {"containers": [{"name": "c"}, {"name": "d"}]},
        });
        assert_eq!(
            unknown_fields(&input, &normalized),
            vec!["extra", "spec.containers[0].bogus"]
        );
    }

    #[test]
    fn a_failed_decode_names_the_field() {
        let err = normalize::<k8s_openapi::api::core::v1::Pod>(
            &json!({"spec": {"containers": [{"name": 5}]}}),
        )
        .expect_err("a number is not a name");
        assert!(err.starts_with("spec.containers[0].name: "), "{err}");
    }
}
