//! Server-side apply and field ownership (`metadata.managedFields`).
//!
//! An apply sends the fields a manager wants; the server merges them into
//! the live object, records them as that manager's, removes fields the
//! manager applied before and no longer does (unless someone else owns
//! them), and refuses with 409 when a field another manager owns would
//! change value, unless the request forces it. Plain writes to an object
//! under field management move ownership of the fields they change to
//! their manager, so a later apply sees who changed what.
//!
//! Objects that were never applied carry no `managedFields`: tracking every
//! create would cost every write, and most Shoal objects are never
//! applied. The first apply to such an object hands its existing fields to
//! `before-first-apply`, as Kubernetes does for objects whose managed
//! fields were reset, except those the object's client-side
//! `last-applied-configuration` lists, which go to the applier, so moving
//! from `kubectl apply` to `kubectl apply --server-side` does not conflict
//! with oneself.

use serde_json::{json, Map, Value};

use super::fields::{display, remove_at, value_at, FieldSet};
use super::strategic::{list_strategy, ListStrategy};

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
const BEFORE_FIRST_APPLY: &str = "before-first-apply";

/// One `managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

impl Entry {
    fn is(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == subresource
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), json!(self.manager));
        m.insert("operation".into(), json!(self.operation));
        m.insert("apiVersion".into(), json!(self.api_version));
        if !self.time.is_empty() {
            m.insert("time".into(), json!(self.time));
        }
        m.insert("fieldsType".into(), json!("FieldsV1"));
        m.insert("fieldsV1".into(), self.fields.to_json());
        if let Some(s) = &self.subresource {
            m.insert("subresource".into(), json!(s));
        }
        Value::Object(m)
    }

    /// How Kubernetes names a manager in a conflict message.
    fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if let Some(sub) = &self.subresource {
            s.push_str(&format!(" with subresource {sub:?}"));
        }
        if self.operation == "Update" {
            s.push_str(&format!(" using {}", self.api_version));
            if !self.time.is_empty() {
                s.push_str(&format!(" at {}", self.time));
            }
        }
        s
    }
}

/// The entries stored on `obj`.
pub fn entries(obj: &Value) -> Vec<Entry> {
    match obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    {
        Some(list) => parse_entries(list),
        None => Vec::new(),
    }
}

/// Entries from a `managedFields` list; entries without a manager (the
/// `[{}]` clients send to reset ownership) are dropped.
pub fn parse_entries(list: &[Value]) -> Vec<Entry> {
    list.iter()
        .filter_map(|e| {
            let s = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
            Some(Entry {
                manager: s("manager")?,
                operation: s("operation").unwrap_or_else(|| "Update".into()),
                api_version: s("apiVersion").unwrap_or_default(),
                time: s("time").unwrap_or_default(),
                subresource: s("subresource").filter(|x| !x.is_empty()),
                fields: e
                    .get("fieldsV1")
                    .map(FieldSet::from_json)
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// The object is under field management (it has been applied).
pub fn is_managed(obj: &Value) -> bool {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .is_some_and(|l| !l.is_empty())
}

/// Stores `list` as `obj`'s managed fields, dropping entries that own nothing.
pub fn set_entries(obj: &mut Value, list: &[Entry]) {
    let kept: Vec<Value> = list
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::to_json)
        .collect();
    let meta = super::admission::obj_mut(obj, "metadata");
    if kept.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(kept));
    }
}

/// What an apply request is about.
pub struct Request<'a> {
    pub manager: &'a str,
    pub force: bool,
    pub kind: &'a str,
    pub api_version: &'a str,
    pub has_status: bool,
    /// The apply targets the status subresource.
    pub status: bool,
    pub now: &'a str,
}

impl Request<'_> {
    fn subresource(&self) -> Option<&'static str> {
        self.status.then_some("status")
    }

    /// This manager's `Apply` entry owning `fields`.
    fn entry(&self, fields: FieldSet) -> Entry {
        Entry {
            manager: self.manager.to_string(),
            operation: "Apply".into(),
            api_version: self.api_version.to_string(),
            time: self.now.to_string(),
            subresource: self.subresource().map(str::to_string),
            fields,
        }
    }

    fn fields_of(&self, obj: &Value) -> FieldSet {
        FieldSet::of_object(obj, self.kind, self.has_status, self.status)
    }
}

/// A field another manager owns that the apply would change.
#[derive(Debug, PartialEq)]
pub struct Conflict {
    pub manager: String,
    pub field: String,
}

/// Why an apply was refused: the message and each conflict, as
/// Kubernetes words them.
#[derive(Debug)]
pub struct Conflicts {
    pub message: String,
    pub conflicts: Vec<Conflict>,
}

/// Merges the applied configuration into the live object (or makes the
/// object from it when there is none), with the managed fields updated.
pub fn apply(live: Option<&Value>, applied: &Value, req: &Request) -> Result<Value, Conflicts> {
    let new_set = req.fields_of(applied);
    let Some(live) = live else {
        let mut obj = applied.clone();
        set_entries(&mut obj, &[req.entry(new_set)]);
        return Ok(obj);
    };
    let mut list = entries(live);
    if list.is_empty() {
        list = first_apply_owners(live, req);
    }
    let own_at = list
        .iter()
        .position(|e| e.is(req.manager, "Apply", req.subresource()));
    let old_set = own_at.map(|i| list[i].fields.clone()).unwrap_or_default();

    let mut conflicts = Vec::new();
    for path in new_set.leaves() {
        let (before, after) = (value_at(live, &path), value_at(applied, &path));
        if before.is_none() || before == after {
            continue;
        }
        for (i, e) in list.iter().enumerate() {
            if Some(i) != own_at && e.fields.contains(&path) {
                conflicts.push((i, path.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !req.force {
        return Err(refusal(&list, &conflicts));
    }
    // Forced: the other managers lose what this apply takes.
    for (i, path) in &conflicts {
        list[*i].fields.remove(path);
    }

    let mut out = live.clone();
    merge(&mut out, applied, req.kind, &mut Vec::new(), true);
    // What this manager applied before and no longer does goes, unless it
    // or another manager still owns something there.
    let mut dropped: Vec<Vec<String>> = old_set
        .members()
        .into_iter()
        .filter(|p| !new_set.covers(p))
        .filter(|p| {
            !list
                .iter()
                .enumerate()
                .any(|(i, e)| Some(i) != own_at && e.fields.covers(p))
        })
        .collect();
    // A map applied empty (`annotations: {}`) owned its emptiness, not
    // what others have put in it since.
    dropped.retain(|p| {
        let filled = matches!(value_at(&out, p), Some(Value::Object(m)) if !m.is_empty());
        !(filled && old_set.is_leaf(p))
    });
    // Shallowest first: a keyed item is found by its key fields, so it has
    // to go before they do (its fields then go with it).
    dropped.sort_by_key(Vec::len);
    for p in &dropped {
        remove_at(&mut out, p);
    }

    let own = req.entry(new_set);
    match own_at {
        Some(i) => list[i] = own,
        None => list.push(own),
    }
    set_entries(&mut out, &list);
    Ok(out)
}

/// Owners for an object that has no managed fields yet.
fn first_apply_owners(live: &Value, req: &Request) -> Vec<Entry> {
    let mut rest = req.fields_of(live);
    let mut list = Vec::new();
    let last_applied = live
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED))
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str::<Value>(s).ok());
    if let Some(last) = last_applied {
        let mut mine = req.fields_of(&last);
        // Only what is still there.
        mine.retain(&|p| value_at(live, p).is_some());
        for p in mine.members() {
            rest.remove(&p);
        }
        // The annotation itself is left to nobody: this apply must not
        // remove it, and kubectl takes an `Update` owner of it for a
        // client-side-apply manager whose fields it moves to its own
        // (all of `before-first-apply`'s here). kubectl then applies it
        // under `kubectl-last-applied`, as it does against Kubernetes.
        rest.remove(&[
            "f:metadata".to_string(),
            "f:annotations".to_string(),
            format!("f:{LAST_APPLIED}"),
        ]);
        list.push(req.entry(mine));
    }
    list.push(Entry {
        manager: BEFORE_FIRST_APPLY.into(),
        operation: "Update".into(),
        api_version: req.api_version.to_string(),
        time: req.now.to_string(),
        subresource: None,
        fields: rest,
    });
    list
}

fn refusal(list: &[Entry], conflicts: &[(usize, Vec<String>)]) -> Conflicts {
    let described: Vec<Conflict> = conflicts
        .iter()
        .map(|(i, p)| Conflict {
            manager: list[*i].describe(),
            field: display(p),
        })
        .collect();
    let message = if let [only] = described.as_slice() {
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            only.manager, only.field
        )
    } else {
        let mut managers: Vec<&str> = described.iter().map(|c| c.manager.as_str()).collect();
        managers.sort();
        managers.dedup();
        let mut lines = Vec::new();
        for m in managers {
            lines.push(format!("conflicts with {m}:"));
            for c in described.iter().filter(|c| c.manager == m) {
                lines.push(format!("- {}", c.field));
            }
        }
        format!(
            "Apply failed with {} conflicts: {}",
            described.len(),
            lines.join("\n")
        )
    };
    Conflicts {
        message,
        conflicts: described,
    }
}

/// Applied values into live ones: maps field by field, keyed lists item by
/// item, set lists as unions, everything else replaced.
fn merge(live: &mut Value, applied: &Value, kind: &str, path: &mut Vec<String>, top: bool) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, av) in a {
                if top && (k == "apiVersion" || k == "kind") {
                    continue;
                }
                path.push(k.clone());
                match l.get_mut(k) {
                    Some(lv) if !av.is_null() => merge(lv, av, kind, path, false),
                    _ => {
                        l.insert(k.clone(), av.clone());
                    }
                }
                path.pop();
            }
        }
        (Value::Array(l), Value::Array(a)) => match list_strategy(kind, path) {
            ListStrategy::MergeKey(key) => {
                for item in a {
                    let id = item.get(key);
                    match l.iter_mut().find(|x| id.is_some() && x.get(key) == id) {
                        Some(existing) => merge(existing, item, kind, path, false),
                        None => l.push(item.clone()),
                    }
                }
            }
            ListStrategy::Union => {
                for item in a {
                    if !l.contains(item) {
                        l.push(item.clone());
                    }
                }
            }
            ListStrategy::Replace => *l = a.clone(),
        },
        (l, a) => *l = a.clone(),
    }
}

/// Ownership after a plain write (create aside) by `manager`: the fields
/// whose value it changed become its own and leave everyone else's, and
/// fields that no longer exist leave every set. Objects not under field
/// management stay that way.
pub fn track_update(
    old: &Value,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
    req: &Request,
) {
    let mut list = entries(old);
    if list.is_empty() {
        return;
    }
    let mut changed = FieldSet::default();
    for p in req.fields_of(new).members() {
        let after = value_at(new, &p);
        let before = value_at(old, &p);
        // A keyed item counts as changed only when it is new; its fields
        // speak for themselves.
        let leaf = !matches!(p.last(), Some(el) if el.starts_with("k:"));
        if before.is_none() || (leaf && before != after) {
            changed.insert(&p);
        }
    }
    for e in list.iter_mut() {
        if !e.is(manager, "Update", subresource) {
            for p in changed.members() {
                e.fields.remove(&p);
            }
        }
        e.fields.retain(&|p| value_at(new, p).is_some());
    }
    if !changed.is_empty() {
        match list
            .iter_mut()
            .find(|e| e.is(manager, "Update", subresource))
        {
            Some(e) => {
                e.fields.union(&changed);
                e.time = req.now.to_string();
                e.api_version = req.api_version.to_string();
            }
            None => list.push(Entry {
                manager: manager.to_string(),
                operation: "Update".into(),
                api_version: req.api_version.to_string(),
                time: req.now.to_string(),
                subresource: subresource.map(str::to_string),
                fields: changed,
            }),
        }
    }
    set_entries(new, &list);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(manager: &'a str, force: bool) -> Request<'a> {
        Request {
            manager,
            force,
            kind: "Deployment",
            api_version: "apps/v1",
            has_status: true,
            status: false,
            now: "2026-11-24T00:00:00Z",
        }
    }

    fn deployment(replicas: i64, image: &str, extra_label: bool) -> Value {
        let mut labels = json!({"app": "web"});
        if extra_label {
            labels["tier"] = json!("front");
        }
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": labels},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [
                {"name": "main", "image": image}]}}}})
    }

    #[test]
    fn apply_creates_then_removes_what_is_no_longer_applied() {
        let first = apply(None, &deployment(2, "v1", true), &req("alice", false)).expect("create");
        let e = entries(&first);
        assert_eq!(e.len(), 1);
        assert!(e[0]
            .fields
            .contains(&["f:metadata".into(), "f:labels".into(), "f:tier".into()]));
        let second = apply(
            Some(&first),
            &deployment(3, "v1", false),
            &req("alice", false),
        )
        .expect("apply");
        assert_eq!(second["spec"]["replicas"], 3);
        assert_eq!(second["metadata"]["labels"], json!({"app": "web"}));
        // A keyed item left out goes whole.
        let mut one = deployment(3, "v1", false);
        one["spec"]["template"]["spec"]["containers"] = json!([{"name": "side", "image": "s"}]);
        let third = apply(Some(&second), &one, &req("alice", false)).expect("apply");
        assert_eq!(
            third["spec"]["template"]["spec"]["containers"],
            json!([{"name": "side", "image": "s"}])
        );
    }

    #[test]
    fn another_manager_conflicts_unless_forced() {
        let live = apply(None, &deployment(2, "v1", false), &req("alice", false)).expect("create");
        let err = apply(Some(&live), &deployment(5, "v1", false), &req("bob", false))
            .expect_err("conflict");
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"alice\": .spec.replicas"
        );
        // The same value is shared ownership, not a conflict.
        let shared =
            apply(Some(&live), &deployment(2, "v1", false), &req("bob", false)).expect("shared");
        assert_eq!(entries(&shared).len(), 2);
        let forced =
            apply(Some(&live), &deployment(5, "v1", false), &req("bob", true)).expect("forced");
        assert_eq!(forced["spec"]["replicas"], 5);
        let alice = entries(&forced)
            .into_iter()
            .find(|e| e.manager == "alice")
            .expect("alice keeps the rest");
        assert!(!alice
            .fields
            .contains(&["f:spec".into(), "f:replicas".into()]));
    }

    #[test]
    fn an_update_takes_ownership_of_what_it_changes() {
        let live = apply(None, &deployment(2, "v1", false), &req("alice", false)).expect("create");
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(7);
        track_update(&live, &mut scaled, "kubectl-scale", None, &req("", false));
        let e = entries(&scaled);
        let scaler = e
            .iter()
            .find(|e| e.manager == "kubectl-scale")
            .expect("entry");
        assert_eq!(scaler.operation, "Update");
        assert_eq!(
            scaler.fields.to_json(),
            json!({"f:spec": {"f:replicas": {}}})
        );
        let err = apply(
            Some(&scaled),
            &deployment(2, "v1", false),
            &req("alice", false),
        )
        .expect_err("alice's replicas now conflict");
        assert!(
            err.message.contains("\"kubectl-scale\" using apps/v1"),
            "{}",
            err.message
        );
        // Leaving replicas out of the apply gives it up without a conflict.
        let mut without = deployment(2, "v2", false);
        if let Some(spec) = without["spec"].as_object_mut() {
            spec.remove("replicas");
        }
        let out = apply(Some(&scaled), &without, &req("alice", false)).expect("apply");
        assert_eq!(out["spec"]["replicas"], 7);
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["image"],
            "v2"
        );
    }

    #[test]
    fn first_apply_after_client_side_apply_owns_the_last_applied_fields() {
        let mut live = deployment(2, "v1", false);
        let mut last_applied = deployment(2, "v1", false);
        last_applied["metadata"]["annotations"] = json!({});
        let last = serde_json::to_string(&last_applied).expect("json");
        live["metadata"]["annotations"] = json!({LAST_APPLIED: last});
        live["spec"]["paused"] = json!(false);
        let out = apply(
            Some(&live),
            &deployment(3, "v2", false),
            &req("kubectl", false),
        )
        .expect("no conflict with oneself");
        assert_eq!(out["spec"]["replicas"], 3);
        let before = entries(&out)
            .into_iter()
            .find(|e| e.manager == BEFORE_FIRST_APPLY)
            .expect("the rest");
        assert!(before
            .fields
            .contains(&["f:spec".into(), "f:paused".into()]));
        assert!(out["metadata"]["annotations"].get(LAST_APPLIED).is_some());
        // kubectl's last-applied configuration carries `annotations: {}`;
        // not applying it again leaves the annotations alone.
        let again = apply(
            Some(&out),
            &deployment(3, "v2", false),
            &req("kubectl", false),
        )
        .expect("apply");
        assert!(again["metadata"]["annotations"].get(LAST_APPLIED).is_some());
    }
}
