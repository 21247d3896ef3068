//! Ingress routing (`networking.k8s.io/v1`, IngressClass `shoal`): host
//! and path rules to a Service port, the default backend, canaries that
//! take a weighted share of a host's traffic, and TLS certificates from
//! Secrets chosen by SNI.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::warn;

use crate::controllers::informer::Informer;

/// The IngressClass Shoal's gateways serve (also the default class).
pub const CLASS: &str = "shoal";
/// An Ingress that takes a share of another Ingress' host.
pub const CANARY: &str = "shoal.dev/canary";
/// That share, in percent (0–100).
pub const CANARY_WEIGHT: &str = "shoal.dev/canary-weight";

/// Where a request goes: a Service port in the Ingress' namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub namespace: String,
    pub service: String,
    /// Port number, or name when `number` is `None`.
    pub port_number: Option<i32>,
    pub port_name: Option<String>,
}

/// Whether this gateway serves `ing` (class `shoal`, or no class at all:
/// `shoal` is the cluster's default).
pub fn ours(ing: &Ingress) -> bool {
    let class = ing
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.clone())
        .or_else(|| {
            ing.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("kubernetes.io/ingress.class").cloned())
        });
    class.is_none_or(|c| c == CLASS)
}

fn annotation<'a>(ing: &'a Ingress, key: &str) -> Option<&'a str> {
    ing.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn is_canary(ing: &Ingress) -> bool {
    annotation(ing, CANARY) == Some("true")
}

fn canary_weight(ing: &Ingress) -> u32 {
    annotation(ing, CANARY_WEIGHT)
        .and_then(|w| w.trim().parse::<u32>().ok())
        .unwrap_or(0)
        .min(100)
}

/// RFC-style host match: exact, or `*.example.com` matching one label.
fn host_matches(rule: Option<&str>, host: &str) -> bool {
    match rule.filter(|r| !r.is_empty()) {
        None => true,
        Some(r) => match r.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
            None => r.eq_ignore_ascii_case(host),
        },
    }
}

/// How well a rule path matches: `None` for no match, else a rank where a
/// longer path wins and Exact beats Prefix at the same length.
fn path_rank(path_type: &str, rule_path: &str, path: &str) -> Option<(usize, u8)> {
    let rule_path = if rule_path.is_empty() { "/" } else { rule_path };
    match path_type {
        "Exact" => (rule_path == path).then_some((rule_path.len(), 1)),
        // Prefix (and ImplementationSpecific, which Shoal treats alike):
        // whole path elements, so `/foo` matches `/foo/bar` but not `/foobar`.
        _ => {
            let trimmed = rule_path.trim_end_matches('/');
            let ok = trimmed.is_empty()
                || path == trimmed
                || path
                    .strip_prefix(trimmed)
                    .is_some_and(|rest| rest.starts_with('/'));
            ok.then_some((trimmed.len(), 0))
        }
    }
}

fn route_of(ns: &str, b: &IngressBackend) -> Option<Route> {
    let svc = b.service.as_ref()?;
    let port = svc.port.as_ref();
    Some(Route {
        namespace: ns.to_string(),
        service: svc.name.clone(),
        port_number: port.and_then(|p| p.number),
        port_name: port.and_then(|p| p.name.clone()),
    })
}

/// The best rule of `ings` for host and path: (rank, the rule's path,
/// route).
fn best_rule(
    ings: &[&Arc<Ingress>],
    host: &str,
    path: &str,
) -> Option<((usize, u8), String, Route)> {
    let mut best: Option<((usize, u8), String, Route)> = None;
    for ing in ings {
        let ns = ing.metadata.namespace.as_deref().unwrap_or_default();
        for rule in ing.spec.iter().flat_map(|s| s.rules.iter().flatten()) {
            if !host_matches(rule.host.as_deref(), host) {
                continue;
            }
            for p in rule.http.iter().flat_map(|h| h.paths.iter()) {
                let rule_path = p.path.as_deref().unwrap_or("/");
                let Some(rank) = path_rank(&p.path_type, rule_path, path) else {
                    continue;
                };
                if best.as_ref().is_none_or(|(r, _, _)| rank > *r) {
                    if let Some(route) = route_of(ns, &p.backend) {
                        best = Some((rank, rule_path.to_string(), route));
                    }
                }
            }
        }
    }
    best
}

/// Routes one request. `roll` is a number in 0..100 deciding canaries.
pub fn route(ingresses: &[Arc<Ingress>], host: &str, path: &str, roll: u32) -> Option<Route> {
    let mut ordered: Vec<&Arc<Ingress>> = ingresses.iter().filter(|i| ours(i)).collect();
    // Oldest first, so the default backend is stable when several set one.
    ordered.sort_by_key(|i| {
        (
            i.metadata.creation_timestamp.clone().map(|t| t.0),
            i.metadata.namespace.clone(),
            i.metadata.name.clone(),
        )
    });
    let (canaries, mains): (Vec<&Arc<Ingress>>, Vec<&Arc<Ingress>>) =
        ordered.into_iter().partition(|i| is_canary(i));
    let matched = best_rule(&mains, host, path);
    let main_path = matched.as_ref().map(|(_, p, _)| p.clone());
    let main = matched.map(|(_, _, r)| r).or_else(|| {
        mains.iter().find_map(|i| {
            let ns = i.metadata.namespace.as_deref().unwrap_or_default();
            i.spec
                .as_ref()?
                .default_backend
                .as_ref()
                .and_then(|b| route_of(ns, b))
        })
    })?;
    // A canary takes its weight of the requests the main rule for the same
    // path matched (as ingress-nginx pairs a canary with a location).
    let mut threshold = 0;
    for c in canaries {
        let Some((_, canary_path, r)) = best_rule(&[c], host, path) else {
            continue;
        };
        if Some(&canary_path) == main_path.as_ref() {
            threshold += canary_weight(c);
            if roll < threshold {
                return Some(r);
            }
        }
    }
    Some(main)
}

/// TLS certificates for Ingress hosts, by SNI, from `kubernetes.io/tls`
/// Secrets; parsed once per Secret version.
pub struct Certs {
    pub ingresses: Arc<Informer<Ingress>>,
    pub secrets: Arc<Informer<Secret>>,
    parsed: Mutex<HashMap<String, (String, Arc<CertifiedKey>)>>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Certs")
    }
}

impl Certs {
    pub fn new(ingresses: Arc<Informer<Ingress>>, secrets: Arc<Informer<Secret>>) -> Certs {
        Certs {
            ingresses,
            secrets,
            parsed: Mutex::new(HashMap::new()),
        }
    }

    /// The Secret (`namespace/name`) holding the certificate for `sni`;
    /// without SNI, or with no host matching, the first TLS entry's.
    fn secret_for(&self, sni: Option<&str>) -> Option<String> {
        let mut first = None;
        let mut ings = self.ingresses.list();
        ings.sort_by_key(|i| (i.metadata.namespace.clone(), i.metadata.name.clone()));
        for ing in ings.iter().filter(|i| ours(i)) {
            let ns = ing.metadata.namespace.as_deref().unwrap_or_default();
            for tls in ing.spec.iter().flat_map(|s| s.tls.iter().flatten()) {
                let Some(secret) = tls.secret_name.as_deref() else {
                    continue;
                };
                let key = format!("{ns}/{secret}");
                if first.is_none() {
                    first = Some(key.clone());
                }
                let hosts = tls.hosts.clone().unwrap_or_default();
                if sni.is_some_and(|h| hosts.iter().any(|pat| host_matches(Some(pat), h))) {
                    return Some(key);
                }
            }
        }
        first
    }

    fn certified(&self, key: &str) -> Option<Arc<CertifiedKey>> {
        let secret = self.secrets.get(key)?;
        let version = secret.metadata.resource_version.clone().unwrap_or_default();
        if let Ok(cache) = self.parsed.lock() {
            if let Some((v, ck)) = cache.get(key) {
                if *v == version {
                    return Some(ck.clone());
                }
            }
        }
        let data = secret.data.as_ref()?;
        let (cert, pem_key) = (data.get("tls.crt")?, data.get("tls.key")?);
        let parsed = (|| -> Result<CertifiedKey, String> {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert.0)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("tls.crt: {e}"))?;
            if chain.is_empty() {
                return Err("tls.crt holds no certificate".into());
            }
            let der =
                PrivateKeyDer::from_pem_slice(&pem_key.0).map_err(|e| format!("tls.key: {e}"))?;
            let signer = rustls::crypto::ring::sign::any_supported_type(&der)
                .map_err(|e| format!("tls.key: {e}"))?;
            Ok(CertifiedKey::new(chain, signer))
        })();
        match parsed {
            Ok(ck) => {
                let ck = Arc::new(ck);
                if let Ok(mut cache) = self.parsed.lock() {
                    cache.insert(key.to_string(), (version, ck.clone()));
                }
                Some(ck)
            }
            Err(e) => {
                warn!(secret = key, error = %e, "ingress TLS secret is unusable");
                None
            }
        }
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let key = self.secret_for(hello.server_name())?;
        self.certified(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ing(name: &str, annotations: serde_json::Value, spec: serde_json::Value) -> Arc<Ingress> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "web", "annotations": annotations},
                "spec": spec
            }))
            .expect("ingress"),
        )
    }

    fn backend(svc: &str) -> serde_json::Value {
        json!({"service": {"name": svc, "port": {"number": 80}}})
    }

    fn to(svc: &str) -> Option<String> {
        Some(svc.to_string())
    }

    #[test]
    fn hosts_paths_default_and_canary() {
        let main = ing(
            "main",
            json!({}),
            json!({
                "defaultBackend": backend("fallback"),
                "rules": [
                    {"host": "shop.example", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix", "backend": backend("shop")},
                        {"path": "/api", "pathType": "Prefix", "backend": backend("api")},
                        {"path": "/api/health", "pathType": "Exact", "backend": backend("health")}
                    ]}},
                    {"host": "*.wild.example", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix", "backend": backend("wild")}
                    ]}}
                ]
            }),
        );
        let canary = ing(
            "canary",
            json!({CANARY: "true", CANARY_WEIGHT: "20"}),
            json!({"rules": [{"host": "shop.example", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": backend("shop-v2")}
            ]}}]}),
        );
        let all = vec![main.clone(), canary];
        let svc =
            |host: &str, path: &str, roll: u32| route(&all, host, path, roll).map(|r| r.service);
        assert_eq!(svc("shop.example", "/", 50), to("shop"));
        assert_eq!(svc("shop.example", "/api/x", 50), to("api"));
        assert_eq!(svc("shop.example", "/apix", 50), to("shop"));
        assert_eq!(svc("shop.example", "/api/health", 50), to("health"));
        assert_eq!(svc("a.wild.example", "/", 50), to("wild"));
        assert_eq!(svc("a.b.wild.example", "/", 50), to("fallback"));
        assert_eq!(svc("other.example", "/", 50), to("fallback"));
        // The canary takes rolls below its weight for its host only.
        assert_eq!(svc("shop.example", "/", 19), to("shop-v2"));
        assert_eq!(svc("shop.example", "/", 20), to("shop"));
        // Only for the path it pairs with: /api is the main rule's own.
        assert_eq!(svc("shop.example", "/api/x", 0), to("api"));
        assert_eq!(svc("other.example", "/", 0), to("fallback"));
        // Another class is not ours.
        let foreign = ing(
            "x",
            json!({}),
            json!({"ingressClassName": "nginx", "defaultBackend": backend("x")}),
        );
        assert_eq!(route(&[foreign], "h", "/", 0), None);
    }
}
