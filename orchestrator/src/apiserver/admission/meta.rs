//! Validation every object gets: names, labels, annotations, owner refs.

use serde_json::Value;

use crate::apiserver::error::Cause;

pub const DNS1123_LABEL_MAX: usize = 63;
pub const DNS1123_SUBDOMAIN_MAX: usize = 253;

/// Why `s` is not a DNS-1123 label, if it is not.
pub fn dns1123_label(s: &str) -> Option<String> {
    let ok_chars = s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let ends_ok = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric());
    if s.len() > DNS1123_LABEL_MAX {
        Some(format!(
            "must be no more than {DNS1123_LABEL_MAX} characters"
        ))
    } else if !ok_chars || !ends_ok {
        Some("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".into())
    } else {
        None
    }
}

/// Why `s` is not a DNS-1123 subdomain, if it is not.
pub fn dns1123_subdomain(s: &str) -> Option<String> {
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        return Some(format!(
            "must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
        ));
    }
    if s.is_empty()
        || s.split('.')
            .any(|part| part.is_empty() || dns1123_label(part).is_some())
    {
        return Some("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".into());
    }
    None
}

/// A qualified name (`prefix/name` as label and annotation keys use).
fn qualified_name(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if let Some(why) = dns1123_subdomain(p) {
            return Some(format!("prefix part {why}"));
        }
    }
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        None
    } else {
        Some("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with at most 63 characters".into())
    }
}

pub fn label_value(v: &str) -> Option<String> {
    if v.is_empty() {
        return None;
    }
    let ok = v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && v.chars().last().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        None
    } else {
        Some("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character, with at most 63 characters".into())
    }
}

/// Checks label keys and values under `path` (a map of strings).
pub fn labels(map: Option<&Value>, path: &str, out: &mut Vec<Cause>) {
    let Some(Value::Object(m)) = map else { return };
    for (k, v) in m {
        if let Some(why) = qualified_name(k) {
            out.push(Cause::invalid(path, k, why));
        }
        if let Some(why) = v.as_str().and_then(label_value) {
            out.push(Cause::invalid(
                format!("{path}[{k}]"),
                v.as_str().unwrap_or_default(),
                why,
            ));
        }
    }
}

const ANNOTATIONS_MAX: usize = 256 * 1024;

/// The metadata rules every kind shares. `name_rule` is the kind's rule for
/// names (most use a subdomain; namespaces and services a label).
pub fn object_meta(
    obj: &Value,
    namespaced: bool,
    name_rule: fn(&str) -> Option<String>,
) -> Vec<Cause> {
    let mut out = Vec::new();
    let meta = obj.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if name.is_empty() {
        out.push(Cause {
            reason: "FieldValueRequired",
            field: "metadata.name".into(),
            message: "Required value: name or generateName is required".into(),
        });
    } else if let Some(why) = name_rule(name) {
        out.push(Cause::invalid("metadata.name", name, why));
    }
    if namespaced {
        let ns = meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if ns.is_empty() {
            out.push(Cause::required("metadata.namespace"));
        }
    }
    labels(
        meta.and_then(|m| m.get("labels")),
        "metadata.labels",
        &mut out,
    );
    if let Some(Value::Object(a)) = meta.and_then(|m| m.get("annotations")) {
        let mut total = 0;
        for (k, v) in a {
            if let Some(why) = qualified_name(k) {
                out.push(Cause::invalid("metadata.annotations", k, why));
            }
            total += k.len() + v.as_str().map(str::len).unwrap_or(0);
        }
        if total > ANNOTATIONS_MAX {
            out.push(Cause {
                reason: "FieldValueTooLong",
                field: "metadata.annotations".into(),
                message: format!("Too long: must have at most {ANNOTATIONS_MAX} bytes"),
            });
        }
    }
    if let Some(Value::Array(refs)) = meta.and_then(|m| m.get("ownerReferences")) {
        let mut controllers = 0;
        for (i, r) in refs.iter().enumerate() {
            for f in ["apiVersion", "kind", "name", "uid"] {
                if r.get(f).and_then(Value::as_str).unwrap_or("").is_empty() {
                    out.push(Cause::required(format!(
                        "metadata.ownerReferences[{i}].{f}"
                    )));
                }
            }
            if r.get("controller").and_then(Value::as_bool) == Some(true) {
                controllers += 1;
            }
        }
        if controllers > 1 {
            out.push(Cause::invalid(
                "metadata.ownerReferences",
                "",
                "Only one reference can have Controller set to true",
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names() {
        assert!(dns1123_label("web-1").is_none());
        assert!(dns1123_label("Web").is_some());
        assert!(dns1123_label(&"a".repeat(64)).is_some());
        assert!(dns1123_subdomain("a.b-c.d").is_none());
        assert!(dns1123_subdomain("a..b").is_some());
        assert!(dns1123_subdomain("-a").is_some());
    }

    #[test]
    fn meta_causes_name_fields() {
        let obj = json!({"metadata": {"name": "Bad_Name", "labels": {"ok": "x", "bad key!": "v"}}});
        let causes = object_meta(&obj, true, dns1123_subdomain);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["metadata.name", "metadata.namespace", "metadata.labels"]
        );
    }
}
