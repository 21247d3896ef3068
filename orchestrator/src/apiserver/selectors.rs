//! Label selectors (the `labelSelector` query string and the structured
//! `LabelSelector` objects workloads carry) and field selectors.

use serde_json::{Map, Value};

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
    Gt(i64),
    Lt(i64),
}

#[derive(Clone, Debug, PartialEq)]
struct Requirement {
    key: String,
    op: Op,
}

impl Requirement {
    /// `get` looks a label up by reference: selectors run over every pod
    /// on every reconcile, so nothing is copied.
    fn matches<'a>(&self, get: &dyn Fn(&str) -> Option<&'a str>) -> bool {
        let v = get(&self.key);
        match &self.op {
            Op::Eq(x) => v == Some(x.as_str()),
            Op::NotEq(x) => v != Some(x.as_str()),
            Op::In(xs) => v.is_some_and(|v| xs.iter().any(|x| x == v)),
            Op::NotIn(xs) => v.is_none_or(|v| !xs.iter().any(|x| x == v)),
            Op::Exists => v.is_some(),
            Op::NotExists => v.is_none(),
            Op::Gt(n) => v
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            Op::Lt(n) => v
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        }
    }
}

/// A parsed `labelSelector`: all requirements must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector(Vec<Requirement>);

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn set_values(s: &str) -> Result<Vec<String>, String> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised list of values, found {s:?}"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in split_top(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = if let Some(key) = part.strip_prefix('!') {
                Requirement {
                    key: key.trim().into(),
                    op: Op::NotExists,
                }
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement {
                    key: k.trim().into(),
                    op: Op::NotEq(v.trim().into()),
                }
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement {
                    key: k.trim().into(),
                    op: Op::Eq(v.trim().into()),
                }
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement {
                    key: k.trim().into(),
                    op: Op::Eq(v.trim().into()),
                }
            } else if let Some((k, v)) = part.split_once(" notin ") {
                Requirement {
                    key: k.trim().into(),
                    op: Op::NotIn(set_values(v)?),
                }
            } else if let Some((k, v)) = part.split_once(" in ") {
                Requirement {
                    key: k.trim().into(),
                    op: Op::In(set_values(v)?),
                }
            } else if let Some((k, v)) = part.split_once('>') {
                let n = v
                    .trim()
                    .parse()
                    .map_err(|_| format!("invalid number in {part:?}"))?;
                Requirement {
                    key: k.trim().into(),
                    op: Op::Gt(n),
                }
            } else if let Some((k, v)) = part.split_once('<') {
                let n = v
                    .trim()
                    .parse()
                    .map_err(|_| format!("invalid number in {part:?}"))?;
                Requirement {
                    key: k.trim().into(),
                    op: Op::Lt(n),
                }
            } else if part.contains(char::is_whitespace) || part.contains('(') {
                return Err(format!("unable to parse requirement: {part:?}"));
            } else {
                Requirement {
                    key: part.into(),
                    op: Op::Exists,
                }
            };
            if req.key.is_empty() {
                return Err(format!(
                    "unable to parse requirement: {part:?}: key is empty"
                ));
            }
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| r.matches(&get))
    }
}

/// Does a structured `LabelSelector` (matchLabels + matchExpressions) select `labels`?
pub fn label_selector_matches(sel: &Value, labels: &Map<String, Value>) -> Result<bool, String> {
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    Ok(LabelSelector::from_structured(sel)?.matches_by(&get))
}

impl LabelSelector {
    /// Compiles a structured selector (matchLabels + matchExpressions), so
    /// a controller checks many objects against it without re-reading JSON.
    pub fn from_structured(sel: &Value) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if let Some(Value::Object(ml)) = sel.get("matchLabels") {
            for (k, v) in ml {
                let value = v.as_str().unwrap_or_default().to_string();
                reqs.push(Requirement {
                    key: k.clone(),
                    op: Op::Eq(value),
                });
            }
        }
        if let Some(Value::Array(exprs)) = sel.get("matchExpressions") {
            for e in exprs {
                let key = e
                    .get("key")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let values: Vec<String> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|vs| {
                        vs.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                let op = match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                    "In" => Op::In(values),
                    "NotIn" => Op::NotIn(values),
                    "Exists" => Op::Exists,
                    "DoesNotExist" => Op::NotExists,
                    other => {
                        return Err(format!("{other:?} is not a valid label selector operator"))
                    }
                };
                reqs.push(Requirement { key, op });
            }
        }
        Ok(LabelSelector(reqs))
    }

    /// Matches labels looked up through `get`.
    pub fn matches_by<'a>(&self, get: &dyn Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|r| r.matches(get))
    }
}

/// A parsed `fieldSelector`: `=`, `==` and `!=` on dotted field paths.
#[derive(Clone, Debug, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses and checks every field against what the resource supports.
    pub fn parse(
        s: &str,
        supported: &dyn Fn(&str) -> bool,
        resource: &str,
    ) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, eq, v) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                ));
            };
            let k = k.trim();
            if !supported(k) {
                return Err(format!("field label not supported: {k} (for {resource})"));
            }
            out.push((k.to_string(), eq, v.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `metadata.name` this selector pins, if any (kubectl's delete and
    /// wait watch a single object that way).
    pub fn exact_name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, eq, _)| k == "metadata.name" && *eq)
            .map(|(_, _, v)| v.as_str())
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(k, eq, want)| {
            let pointer = format!("/{}", k.replace('.', "/"));
            let have = match obj.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (have == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selector_syntax() {
        let pod = json!({"metadata": {"labels": {"app": "web", "tier": "front", "n": "5"}}});
        for (sel, want) in [
            ("app=web", true),
            ("app==web,tier!=back", true),
            ("app in (web, api)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("n>3", true),
            ("n<3", false),
            ("", true),
        ] {
            let s = LabelSelector::parse(sel).expect(sel);
            assert_eq!(s.matches(&pod), want, "{sel}");
        }
        assert!(LabelSelector::parse("app in web").is_err());
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "a", "namespace": "d"}, "spec": {"nodeName": "n1"}});
        let ok = |_: &str| true;
        assert!(
            FieldSelector::parse("metadata.name=a,spec.nodeName!=n2", &ok, "pods")
                .expect("parse")
                .matches(&pod)
        );
        assert!(!FieldSelector::parse("spec.nodeName=", &ok, "pods")
            .expect("parse")
            .matches(&pod));
        assert!(
            FieldSelector::parse("spec.foo=1", &|k| k.starts_with("metadata."), "pods").is_err()
        );
    }

    #[test]
    fn structured_selector() {
        let labels = json!({"app": "a", "env": "prod"});
        let labels = labels.as_object().expect("object");
        let sel = json!({"matchLabels": {"app": "a"}, "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]});
        assert_eq!(label_selector_matches(&sel, labels), Ok(true));
        let bad = json!({"matchExpressions": [{"key": "env", "operator": "Near"}]});
        assert!(label_selector_matches(&bad, labels).is_err());
    }
}
