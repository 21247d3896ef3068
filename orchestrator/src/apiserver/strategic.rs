//! Strategic merge patch, as `kubectl apply` and `kubectl patch` send it.
//!
//! Lists merge by key where the Kubernetes types say so
//! (`patchStrategy:"merge"` + `patchMergeKey`), otherwise they are replaced.
//! The directives `$patch` (replace/delete/merge), `$retainKeys`,
//! `$setElementOrder/<field>` and `$deleteFromPrimitiveList/<field>` are honoured.

use serde_json::{Map, Value};

#[derive(Debug, PartialEq)]
pub(crate) enum ListStrategy {
    Replace,
    /// Objects merged by this key.
    MergeKey(&'static str),
    /// Primitive lists merged as sets (finalizers).
    Union,
}

/// The patch strategy of the list at `path` (object keys from the root).
/// These are the lists Kubernetes marks `patchStrategy:"merge"`.
pub(crate) fn list_strategy(kind: &str, path: &[String]) -> ListStrategy {
    let last = path.last().map(String::as_str).unwrap_or("");
    let parent = if path.len() >= 2 {
        path[path.len() - 2].as_str()
    } else {
        ""
    };
    let in_container = matches!(
        parent,
        "containers" | "initContainers" | "ephemeralContainers"
    );
    match last {
        "finalizers" if parent == "metadata" => ListStrategy::Union,
        "ownerReferences" if parent == "metadata" => ListStrategy::MergeKey("uid"),
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates"
            if parent == "spec" =>
        {
            ListStrategy::MergeKey("name")
        }
        "ports" if in_container => ListStrategy::MergeKey("containerPort"),
        "env" if in_container => ListStrategy::MergeKey("name"),
        "volumeMounts" if in_container => ListStrategy::MergeKey("mountPath"),
        "volumeDevices" if in_container => ListStrategy::MergeKey("devicePath"),
        "ports" if kind == "Service" && parent == "spec" => ListStrategy::MergeKey("port"),
        "hostAliases" if parent == "spec" => ListStrategy::MergeKey("ip"),
        "topologySpreadConstraints" if parent == "spec" => ListStrategy::MergeKey("topologyKey"),
        "conditions" if parent == "status" => ListStrategy::MergeKey("type"),
        "addresses" if parent == "status" && kind == "Node" => ListStrategy::MergeKey("type"),
        _ => ListStrategy::Replace,
    }
}

/// Applies `patch` to `original` for an object of `kind`.
pub fn apply(original: &Value, patch: &Value, kind: &str) -> Result<Value, String> {
    let Value::Object(p) = patch else {
        return Err("strategic merge patch must be a JSON object".into());
    };
    let mut out = original.clone();
    let Value::Object(o) = &mut out else {
        return Err("the stored object is not a JSON object".into());
    };
    merge_map(o, p, kind, &mut Vec::new())?;
    Ok(out)
}

fn merge_map(
    orig: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    kind: &str,
    path: &mut Vec<String>,
) -> Result<(), String> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *orig = strip(patch);
            return Ok(());
        }
        Some("delete") => {
            orig.clear();
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch type: {other}")),
    }
    let mut orders = Vec::new();
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            orders.push((field.to_string(), v));
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(del)) = (orig.get_mut(field), v) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        path.push(k.clone());
        match v {
            Value::Null => {
                orig.remove(k);
            }
            Value::Object(pm) => match orig.get_mut(k) {
                Some(Value::Object(om)) => merge_map(om, pm, kind, path)?,
                _ => {
                    if pm.get("$patch").and_then(Value::as_str) != Some("delete") {
                        orig.insert(k.clone(), Value::Object(strip(pm)));
                    }
                }
            },
            Value::Array(pl) => {
                let strategy = list_strategy(kind, path);
                let merged = match orig.get(k) {
                    Some(Value::Array(ol)) => merge_list(ol, pl, &strategy, kind, path)?,
                    _ => merge_list(&[], pl, &strategy, kind, path)?,
                };
                orig.insert(k.clone(), Value::Array(merged));
            }
            other => {
                orig.insert(k.clone(), other.clone());
            }
        }
        path.pop();
    }
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        orig.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (field, order) in orders {
        path.push(field.clone());
        let strategy = list_strategy(kind, path);
        path.pop();
        if let (Some(Value::Array(list)), Value::Array(order)) = (orig.get_mut(&field), order) {
            reorder(list, order, &strategy);
        }
    }
    Ok(())
}

fn key_of<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_object().and_then(|m| m.get(key))
}

fn merge_list(
    orig: &[Value],
    patch: &[Value],
    strategy: &ListStrategy,
    kind: &str,
    path: &mut Vec<String>,
) -> Result<Vec<Value>, String> {
    // A `{"$patch": "replace"}` element replaces the whole list with the rest.
    let replace_all = patch
        .iter()
        .any(|e| key_of(e, "$patch").and_then(Value::as_str) == Some("replace"));
    if replace_all || *strategy == ListStrategy::Replace {
        return Ok(patch
            .iter()
            .filter(|e| key_of(e, "$patch").is_none())
            .map(|e| match e {
                Value::Object(m) => Value::Object(strip(m)),
                other => other.clone(),
            })
            .collect());
    }
    let mut out: Vec<Value> = orig.to_vec();
    match strategy {
        ListStrategy::Union => {
            for e in patch {
                if !out.contains(e) {
                    out.push(e.clone());
                }
            }
        }
        ListStrategy::MergeKey(key) => {
            for e in patch {
                let Some(Value::Object(pm)) = Some(e) else {
                    return Err(format!(
                        "{}: list elements must be objects keyed by {key}",
                        path.join(".")
                    ));
                };
                let id = pm.get(*key).cloned().unwrap_or(Value::Null);
                let pos = out.iter().position(|o| key_of(o, key) == Some(&id));
                let delete = pm.get("$patch").and_then(Value::as_str) == Some("delete");
                match (pos, delete) {
                    (Some(i), true) => {
                        out.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => {
                        if let Value::Object(om) = &mut out[i] {
                            merge_map(om, pm, kind, path)?;
                        }
                    }
                    (None, false) => out.push(Value::Object(strip(pm))),
                }
            }
        }
        ListStrategy::Replace => {}
    }
    Ok(out)
}

/// Orders `list` as `order` says; elements it does not name keep their
/// relative order after those it does.
fn reorder(list: &mut [Value], order: &[Value], strategy: &ListStrategy) {
    let rank = |v: &Value| -> usize {
        let pos = match strategy {
            ListStrategy::MergeKey(key) => order
                .iter()
                .position(|o| key_of(o, key).is_some() && key_of(o, key) == key_of(v, key)),
            _ => order.iter().position(|o| o == v),
        };
        pos.unwrap_or(usize::MAX)
    };
    list.sort_by_key(rank);
}

/// Drops directive keys from a map being inserted as-is.
fn strip(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| {
            let v = match v {
                Value::Object(inner) => Value::Object(strip(inner)),
                other => other.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_merge_by_name_and_env_by_name() {
        let orig = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "v1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b1"}]}}}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
            "containers": [{"name": "a", "image": "v2", "env": [{"name": "Y", "value": "2"}]}]}}}});
        let out = apply(&orig, &patch, "Deployment").expect("patch");
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs[0]["name"], "b");
        assert_eq!(cs[1]["image"], "v2");
        assert_eq!(cs[1]["env"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn directives() {
        let orig = json!({"metadata": {"finalizers": ["a"], "labels": {"x": "1", "y": "2"}},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "tolerations": [{"key": "t"}]}});
        let patch = json!({"metadata": {"finalizers": ["b"], "labels": {"x": null}},
            "spec": {"containers": [{"name": "a", "$patch": "delete"}], "tolerations": [{"key": "u"}]}});
        let out = apply(&orig, &patch, "Pod").expect("patch");
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(out["metadata"]["labels"], json!({"y": "2"}));
        assert_eq!(out["spec"]["containers"], json!([{"name": "b"}]));
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "u"}]));
    }

    #[test]
    fn retain_keys_and_replace() {
        let orig = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}});
        let out = apply(&orig, &patch, "Deployment").expect("patch");
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        let rep = json!({"spec": {"$patch": "replace", "x": 1}});
        assert_eq!(
            apply(&orig, &rep, "Deployment").expect("patch")["spec"],
            json!({"x": 1})
        );
    }
}
