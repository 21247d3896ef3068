//! Field sets: which fields of an object a manager owns, in the `FieldsV1`
//! form `metadata.managedFields` carries (`{"f:spec": {"f:replicas": {}}}`).
//!
//! A path element is `f:<name>` for a field or map key, `k:<json>` for the
//! item of a list keyed by its merge key (`k:{"name":"main"}`), and
//! `v:<json>` for a value of a list merged as a set (finalizers). `.` marks
//! a node that is itself a member as well as having members below it (a
//! keyed list item). Lists are typed as the strategic merge patch types
//! them: merge-keyed lists are keyed, finalizers are a set, the rest are
//! atomic and owned whole.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::strategic::{list_strategy, ListStrategy};

/// One node of a field set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSet {
    /// The node itself is owned.
    pub this: bool,
    pub children: BTreeMap<String, FieldSet>,
}

/// Top-level fields nobody owns: identity and server-maintained metadata.
const UNOWNED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

impl FieldSet {
    fn leaf() -> FieldSet {
        FieldSet {
            this: true,
            children: BTreeMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.this && self.children.is_empty()
    }

    /// The fields `obj` sets. `status` is left out of the main resource
    /// when the kind has a status subresource, and only `status` counts for
    /// the subresource (`part_status`).
    pub fn of_object(obj: &Value, kind: &str, has_status: bool, part_status: bool) -> FieldSet {
        let mut set = FieldSet::default();
        let Value::Object(m) = obj else {
            return set;
        };
        let mut path = Vec::new();
        for (k, v) in m {
            let keep = match k.as_str() {
                "apiVersion" | "kind" => false,
                "status" => part_status || !has_status,
                _ => !part_status,
            };
            if !keep {
                continue;
            }
            let child = if k == "metadata" {
                let mut meta = v.clone();
                if let Value::Object(mm) = &mut meta {
                    mm.retain(|f, _| !UNOWNED_META.contains(&f.as_str()));
                    if mm.is_empty() {
                        continue;
                    }
                }
                path.push(k.clone());
                let c = of_value(&meta, kind, &mut path);
                path.pop();
                c
            } else {
                path.push(k.clone());
                let c = of_value(v, kind, &mut path);
                path.pop();
                c
            };
            set.children.insert(format!("f:{k}"), child);
        }
        set
    }

    /// Parses one `fieldsV1` document; anything malformed is dropped.
    pub fn from_json(v: &Value) -> FieldSet {
        let mut set = FieldSet::default();
        let Value::Object(m) = v else {
            return set;
        };
        if m.is_empty() {
            return FieldSet::leaf();
        }
        for (k, child) in m {
            if k == "." {
                set.this = true;
            } else {
                set.children.insert(k.clone(), FieldSet::from_json(child));
            }
        }
        set
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if self.this && !self.children.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (k, c) in &self.children {
            m.insert(k.clone(), c.to_json());
        }
        Value::Object(m)
    }

    /// Every owned path, parents before children.
    pub fn members(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        self.walk(&mut Vec::new(), &mut out);
        out
    }

    fn walk(&self, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.this && !path.is_empty() {
            out.push(path.clone());
        }
        for (k, c) in &self.children {
            path.push(k.clone());
            c.walk(path, out);
            path.pop();
        }
    }

    pub fn contains(&self, path: &[String]) -> bool {
        match path.split_first() {
            None => self.this,
            Some((first, rest)) => self.children.get(first).is_some_and(|c| c.contains(rest)),
        }
    }

    pub fn insert(&mut self, path: &[String]) {
        match path.split_first() {
            None => self.this = true,
            Some((first, rest)) => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    /// Disowns `path` (not what is below it); empty nodes are pruned.
    pub fn remove(&mut self, path: &[String]) {
        match path.split_first() {
            None => self.this = false,
            Some((first, rest)) => {
                if let Some(c) = self.children.get_mut(first) {
                    c.remove(rest);
                    if c.is_empty() {
                        self.children.remove(first);
                    }
                }
            }
        }
    }

    /// Keeps only the members `keep` accepts.
    pub fn retain(&mut self, keep: &dyn Fn(&[String]) -> bool) {
        for p in self.members() {
            if !keep(&p) {
                self.remove(&p);
            }
        }
    }

    /// Owned paths with nothing owned below them: the values themselves.
    pub fn leaves(&self) -> Vec<Vec<String>> {
        let mut out = self.members();
        out.retain(|p| self.node(p).is_some_and(|n| n.children.is_empty()));
        out
    }

    /// `path` is owned with nothing owned below it.
    pub fn is_leaf(&self, path: &[String]) -> bool {
        self.node(path)
            .is_some_and(|n| n.this && n.children.is_empty())
    }

    /// Something at or below `path` is owned.
    pub fn covers(&self, path: &[String]) -> bool {
        self.node(path).is_some_and(|n| !n.is_empty())
    }

    fn node(&self, path: &[String]) -> Option<&FieldSet> {
        match path.split_first() {
            None => Some(self),
            Some((first, rest)) => self.children.get(first)?.node(rest),
        }
    }

    pub fn union(&mut self, other: &FieldSet) {
        for p in other.members() {
            self.insert(&p);
        }
    }
}

fn of_value(v: &Value, kind: &str, path: &mut Vec<String>) -> FieldSet {
    match v {
        Value::Object(m) if !m.is_empty() => {
            let mut set = FieldSet::default();
            for (k, c) in m {
                path.push(k.clone());
                set.children
                    .insert(format!("f:{k}"), of_value(c, kind, path));
                path.pop();
            }
            set
        }
        Value::Array(items) => match list_strategy(kind, path) {
            ListStrategy::MergeKey(key) => {
                let mut set = FieldSet::default();
                for item in items {
                    let Some(id) = item_key(item, key) else {
                        continue;
                    };
                    let mut node = of_value(item, kind, path);
                    node.this = true;
                    set.children.insert(id, node);
                }
                if set.children.is_empty() {
                    FieldSet::leaf()
                } else {
                    set
                }
            }
            ListStrategy::Union => {
                let mut set = FieldSet::default();
                for item in items {
                    set.children.insert(
                        format!("v:{}", serde_json::to_string(item).unwrap_or_default()),
                        FieldSet::leaf(),
                    );
                }
                if set.children.is_empty() {
                    FieldSet::leaf()
                } else {
                    set
                }
            }
            ListStrategy::Replace => FieldSet::leaf(),
        },
        _ => FieldSet::leaf(),
    }
}

/// `k:{"name":"main"}` for an item of a list keyed by `name`.
fn item_key(item: &Value, key: &str) -> Option<String> {
    let id = item.get(key)?;
    let mut m = Map::new();
    m.insert(key.to_string(), id.clone());
    Some(format!(
        "k:{}",
        serde_json::to_string(&Value::Object(m)).ok()?
    ))
}

/// The value at a field-set path inside `obj`, if it is there.
pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for el in path {
        cur = step(cur, el)?;
    }
    Some(cur)
}

/// The list item a `k:` or `v:` path element names.
enum Item {
    /// A keyed list's item: these key fields with these values.
    Key(Map<String, Value>),
    /// A set's value.
    Val(Value),
}

impl Item {
    /// None for a field element (or a key that does not parse).
    fn parse(el: &str) -> Option<Item> {
        if let Some(k) = el.strip_prefix("k:") {
            return serde_json::from_str(k).ok().map(Item::Key);
        }
        serde_json::from_str(el.strip_prefix("v:")?)
            .ok()
            .map(Item::Val)
    }

    fn is(&self, i: &Value) -> bool {
        match self {
            Item::Key(want) => want.iter().all(|(f, v)| i.get(f) == Some(v)),
            Item::Val(want) => i == want,
        }
    }
}

fn step<'a>(cur: &'a Value, el: &str) -> Option<&'a Value> {
    match el.strip_prefix("f:") {
        Some(f) => cur.as_object()?.get(f),
        None => {
            let item = Item::parse(el)?;
            cur.as_array()?.iter().find(|i| item.is(i))
        }
    }
}

fn step_mut<'a>(cur: &'a mut Value, el: &str) -> Option<&'a mut Value> {
    match el.strip_prefix("f:") {
        Some(f) => cur.as_object_mut()?.get_mut(f),
        None => {
            let item = Item::parse(el)?;
            cur.as_array_mut()?.iter_mut().find(|i| item.is(i))
        }
    }
}

/// Removes what a field-set path names from `obj`: a field, a keyed item
/// or a set value. Missing paths are left alone.
pub fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for el in parents {
        match step_mut(cur, el) {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last.strip_prefix("f:") {
        Some(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        None => {
            if let (Some(item), Some(items)) = (Item::parse(last), cur.as_array_mut()) {
                items.retain(|i| !item.is(i));
            }
        }
    }
}

/// A path as Kubernetes prints it in conflicts:
/// `.spec.template.spec.containers[name="main"].image`.
pub fn display(path: &[String]) -> String {
    let mut out = String::new();
    for el in path {
        if let Some(f) = el.strip_prefix("f:") {
            out.push('.');
            out.push_str(f);
        } else if let Some(k) = el.strip_prefix("k:") {
            let fields: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = fields.iter().map(|(f, v)| format!("{f}={v}")).collect();
            out.push('[');
            out.push_str(&parts.join(","));
            out.push(']');
        } else if let Some(v) = el.strip_prefix("v:") {
            out.push_str(&format!("[={v}]"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_deployment_sets_keyed_items_atomic_lists_and_leaves() {
        let obj = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}, "finalizers": ["a"]},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "main", "image": "v1", "args": ["x"]}]}}},
            "status": {"replicas": 2}});
        let set = FieldSet::of_object(&obj, "Deployment", true, false);
        let json = set.to_json();
        assert_eq!(
            json,
            json!({"f:metadata": {"f:labels": {"f:app": {}}, "f:finalizers": {"v:\"a\"": {}}},
                "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"main\"}": {".": {}, "f:name": {}, "f:image": {}, "f:args": {}}}}}}})
        );
        assert_eq!(FieldSet::from_json(&json), set);
        let image = p(&[
            "f:spec",
            "f:template",
            "f:spec",
            "f:containers",
            "k:{\"name\":\"main\"}",
            "f:image",
        ]);
        assert!(set.contains(&image));
        assert_eq!(value_at(&obj, &image), Some(&json!("v1")));
        assert_eq!(
            display(&image),
            ".spec.template.spec.containers[name=\"main\"].image"
        );
    }

    #[test]
    fn removal_takes_fields_items_and_set_values() {
        let mut obj = json!({"metadata": {"finalizers": ["a", "b"]},
            "spec": {"containers": [{"name": "a"}, {"name": "b", "image": "x"}]}});
        remove_at(&mut obj, &p(&["f:metadata", "f:finalizers", "v:\"a\""]));
        remove_at(
            &mut obj,
            &p(&["f:spec", "f:containers", "k:{\"name\":\"a\"}"]),
        );
        remove_at(
            &mut obj,
            &p(&["f:spec", "f:containers", "k:{\"name\":\"b\"}", "f:image"]),
        );
        remove_at(&mut obj, &p(&["f:spec", "f:missing", "f:deeper"]));
        assert_eq!(
            obj,
            json!({"metadata": {"finalizers": ["b"]}, "spec": {"containers": [{"name": "b"}]}})
        );
    }

    #[test]
    fn removing_a_member_prunes_empty_parents() {
        let mut set = FieldSet::default();
        set.insert(&p(&["f:data", "f:a"]));
        set.insert(&p(&["f:data", "f:b"]));
        set.remove(&p(&["f:data", "f:a"]));
        assert_eq!(set.to_json(), json!({"f:data": {"f:b": {}}}));
        set.remove(&p(&["f:data", "f:b"]));
        assert!(set.is_empty());
    }
}
