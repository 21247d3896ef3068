//! What a request asks to do, in the terms RBAC rules are written in:
//! Kubernetes' RequestInfo, worked out from the method, path and query
//! alone (before the registry is consulted, as kube-apiserver does).

use axum::http::{Method, Uri};

/// The resource part of a resource request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resource {
    /// "" for the core group.
    pub group: String,
    pub resource: String,
    /// `status`, `log`, `scale`, `proxy`…; "" when none.
    pub subresource: String,
    /// "" for cluster-scoped resources and for lists across namespaces.
    pub namespace: String,
    /// "" for lists, watches and creates.
    pub name: String,
}

/// One request, as the authorizer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`; for non-resource requests, the lower-case method.
    pub verb: String,
    pub path: String,
    /// None for non-resource requests (`/version`, `/apis`, `/metrics`…).
    pub resource: Option<Resource>,
}

impl Attributes {
    pub fn of(method: &Method, uri: &Uri) -> Attributes {
        let path = uri.path();
        let non_resource = || Attributes {
            verb: method.as_str().to_ascii_lowercase(),
            path: path.to_string(),
            resource: None,
        };
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        // /api/v1/... and /apis/{group}/{version}/...; anything shorter is discovery.
        let (group, rest) = match parts.as_slice() {
            ["api", _version, rest @ ..] if !rest.is_empty() => ("", rest),
            ["apis", group, _version, rest @ ..] if !rest.is_empty() => (*group, rest),
            _ => return non_resource(),
        };
        let (watch_path, rest) = match rest {
            ["watch", tail @ ..] => (true, tail),
            _ => (false, rest),
        };
        let mut r = Resource {
            group: group.to_string(),
            ..Resource::default()
        };
        let mut rest = rest;
        if let ["namespaces", ns, tail @ ..] = rest {
            r.namespace = ns.to_string();
            // A namespace's own subresources (`status`, `finalize`) leave
            // the namespace as the resource.
            if !tail.is_empty() && !matches!(tail, ["status" | "finalize"]) {
                rest = tail;
            }
        }
        match rest {
            [] => return non_resource(),
            [res] => r.resource = res.to_string(),
            [res, name] => {
                r.resource = res.to_string();
                r.name = name.to_string();
            }
            [res, name, sub, ..] => {
                r.resource = res.to_string();
                r.name = name.to_string();
                r.subresource = sub.to_string();
            }
        }
        let query = |key: &str| {
            uri.query().and_then(|q| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.to_string())
            })
        };
        let watch_param = matches!(query("watch").as_deref(), Some("true" | "1" | "True"));
        let named = !r.name.is_empty();
        let verb = match *method {
            Method::GET | Method::HEAD if watch_path => "watch",
            Method::GET | Method::HEAD if named => "get",
            Method::GET | Method::HEAD if watch_param => "watch",
            Method::GET | Method::HEAD => "list",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if named => "delete",
            Method::DELETE => "deletecollection",
            _ => return non_resource(),
        };
        // A list or watch of one object by name (`kubectl get pod x -w`)
        // is authorized as that object, so `resourceNames` rules allow it.
        if !named && matches!(verb, "list" | "watch") {
            if let Some(sel) = query("fieldSelector") {
                let sel = percent_decode(&sel);
                if let Some(name) = sel
                    .strip_prefix("metadata.name=")
                    .filter(|n| !n.contains(','))
                {
                    r.name = name.trim_start_matches('=').to_string();
                }
            }
        }
        Attributes {
            verb: verb.to_string(),
            path: path.to_string(),
            resource: Some(r),
        }
    }

    /// The resource as rules name it: `pods`, or `pods/log` for a subresource.
    pub fn resource_name(&self) -> String {
        match &self.resource {
            Some(r) if r.subresource.is_empty() => r.resource.clone(),
            Some(r) => format!("{}/{}", r.resource, r.subresource),
            None => String::new(),
        }
    }
}

/// `%3D` → `=` and `+` → space, as query strings carry field selectors.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(method: Method, uri: &str) -> Attributes {
        Attributes::of(&method, &uri.parse().expect("a literal URI"))
    }

    fn res(a: &Attributes) -> (&str, &str, String, &str, &str) {
        let r = a.resource.as_ref().expect("a resource request");
        (
            a.verb.as_str(),
            r.group.as_str(),
            a.resource_name(),
            r.namespace.as_str(),
            r.name.as_str(),
        )
    }

    #[test]
    fn requests_read_as_kubernetes_request_info() {
        assert_eq!(
            res(&of(Method::GET, "/api/v1/namespaces/d/pods")),
            ("list", "", "pods".into(), "d", "")
        );
        assert_eq!(
            res(&of(Method::GET, "/api/v1/pods?watch=true")),
            ("watch", "", "pods".into(), "", "")
        );
        assert_eq!(
            res(&of(
                Method::GET,
                "/api/v1/namespaces/d/pods/p/log?follow=true"
            )),
            ("get", "", "pods/log".into(), "d", "p")
        );
        assert_eq!(
            res(&of(
                Method::PATCH,
                "/apis/apps/v1/namespaces/d/deployments/w/scale"
            )),
            ("patch", "apps", "deployments/scale".into(), "d", "w")
        );
        assert_eq!(
            res(&of(Method::DELETE, "/api/v1/namespaces/d/configmaps")),
            ("deletecollection", "", "configmaps".into(), "d", "")
        );
        // A namespace is itself in its namespace.
        assert_eq!(
            res(&of(Method::GET, "/api/v1/namespaces/d")),
            ("get", "", "namespaces".into(), "d", "d")
        );
        assert_eq!(
            res(&of(Method::PUT, "/api/v1/namespaces/d/finalize")),
            ("update", "", "namespaces/finalize".into(), "d", "d")
        );
        assert_eq!(
            res(&of(Method::GET, "/api/v1/nodes/n1/proxy/stats/summary")),
            ("get", "", "nodes/proxy".into(), "", "n1")
        );
        assert_eq!(
            res(&of(
                Method::GET,
                "/api/v1/namespaces/d/pods?fieldSelector=metadata.name%3Dweb&watch=1"
            )),
            ("watch", "", "pods".into(), "d", "web")
        );
    }

    #[test]
    fn discovery_and_other_paths_are_not_resources() {
        for p in [
            "/api",
            "/api/v1",
            "/apis/apps/v1",
            "/version",
            "/openapi/v2",
            "/metrics",
        ] {
            let a = of(Method::GET, p);
            assert!(a.resource.is_none(), "{p}");
            assert_eq!((a.verb.as_str(), a.path.as_str()), ("get", p));
        }
    }
}
