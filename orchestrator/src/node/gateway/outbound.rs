//! A pod's outbound HTTP: Service names go straight to the Service's
//! endpoints through the gateway (no DNS); any other host only if the pod's
//! `shoal.dev/allowed-outbound-hosts` annotation lists it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use k8s_openapi::api::core::v1::ServicePort;
use shoal_runtime::http::{Body, BoxError, Outbound, OutboundError};
use shoal_sdk::http_annotations::ALLOWED_OUTBOUND_HOSTS;

use super::table::service_host;
use super::Gateway;

/// How long an outbound request to a host outside the cluster may take.
const EXTERNAL_TIMEOUT: Duration = Duration::from_secs(30);

type External = Client<HttpsConnector<HttpConnector>, Body>;

pub struct PodOutbound {
    gateway: Arc<Gateway>,
    namespace: String,
    /// Hosts outside the cluster this pod may call (`*`: any).
    allowed: Vec<String>,
}

impl PodOutbound {
    pub fn new(gateway: Arc<Gateway>, namespace: &str, allowed: Vec<String>) -> PodOutbound {
        PodOutbound {
            gateway,
            namespace: namespace.to_string(),
            allowed,
        }
    }

    /// Whether the policy lets the pod reach `host` (with or without the
    /// port it names).
    fn allows(&self, host: &str, port: Option<u16>) -> bool {
        let with_port = port.map(|p| format!("{host}:{p}"));
        self.allowed.iter().any(|a| {
            a == "*"
                || a == host
                || Some(a) == with_port.as_ref()
                || a.strip_prefix("*.")
                    .is_some_and(|suffix| host.ends_with(&format!(".{suffix}")))
        })
    }
}

/// The Service port a request to `port` (or no port: 80, or the only one)
/// means.
fn pick_port(ports: &[ServicePort], port: Option<u16>) -> Option<ServicePort> {
    match port {
        Some(p) => ports.iter().find(|sp| sp.port == i32::from(p)).cloned(),
        None => ports
            .iter()
            .find(|sp| sp.port == 80)
            .or(if ports.len() == 1 {
                ports.first()
            } else {
                None
            })
            .cloned(),
    }
}

fn external() -> Result<&'static External, OutboundError> {
    static CLIENT: OnceLock<Result<External, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_native_roots()
                .map_err(|e| format!("loading the system's CA certificates: {e}"))?
                .https_or_http()
                .enable_http1()
                .build();
            Ok(Client::builder(hyper_util::rt::TokioExecutor::new()).build(https))
        })
        .as_ref()
        .map_err(|e| OutboundError::Failed(e.clone()))
}

#[async_trait::async_trait]
impl Outbound for PodOutbound {
    async fn send(
        &self,
        mut req: http::Request<Body>,
    ) -> Result<http::Response<Body>, OutboundError> {
        let host = req
            .uri()
            .host()
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let port = req.uri().port_u16();
        let named = service_host(&host, &self.namespace);
        let found = match named {
            Some((ns, name)) => self.gateway.table.service(ns, name),
            None => None,
        }
        .or_else(|| self.gateway.table.by_cluster_ip(&host));
        {
            if let Some(svc) = found {
                let ns = svc.metadata.namespace.clone().unwrap_or_default();
                let name = svc.metadata.name.clone().unwrap_or_default();
                let spec = svc.spec.clone().unwrap_or_default();
                if spec.type_.as_deref() == Some("ExternalName") {
                    // The Service names an outside host the cluster's
                    // owner chose: no pod policy needed.
                    let target = spec.external_name.unwrap_or_default();
                    let uri = format!(
                        "{}://{target}{}{}",
                        req.uri().scheme_str().unwrap_or("http"),
                        port.map(|p| format!(":{p}")).unwrap_or_default(),
                        req.uri()
                            .path_and_query()
                            .map(|p| p.as_str())
                            .unwrap_or("/")
                    );
                    *req.uri_mut() = uri
                        .parse()
                        .map_err(|_| OutboundError::NotFound(target.clone()))?;
                    return send_external(req).await;
                }
                let ports = spec.ports.unwrap_or_default();
                let Some(sp) = pick_port(&ports, port) else {
                    return Err(OutboundError::NotFound(format!(
                        "{host}: service {ns}/{name} has no port {}",
                        port.map_or("80".to_string(), |p| p.to_string())
                    )));
                };
                if self.gateway.table.targets(&svc, &sp).is_empty() {
                    return Err(OutboundError::Unavailable(format!(
                        "{host}: service {ns}/{name} has no ready endpoints"
                    )));
                }
                return Ok(self.gateway.to_service(&svc, &sp, req).await);
            }
        }
        if !self.allows(&host, port) {
            return Err(OutboundError::Denied(format!(
                "{host} (not a Service; allow it with the {ALLOWED_OUTBOUND_HOSTS} annotation)"
            )));
        }
        send_external(req).await
    }
}

async fn send_external(req: http::Request<Body>) -> Result<http::Response<Body>, OutboundError> {
    let client = external()?;
    match tokio::time::timeout(EXTERNAL_TIMEOUT, client.request(req)).await {
        Err(_) => Err(OutboundError::Timeout),
        Ok(Err(e)) => Err(OutboundError::Failed(e.to_string())),
        Ok(Ok(resp)) => Ok(resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(n: i32) -> ServicePort {
        ServicePort {
            port: n,
            ..Default::default()
        }
    }

    #[test]
    fn ports_by_request() {
        let ports = vec![port(8080)];
        assert_eq!(pick_port(&ports, None).map(|p| p.port), Some(8080));
        assert_eq!(pick_port(&ports, Some(8080)).map(|p| p.port), Some(8080));
        assert!(pick_port(&ports, Some(9)).is_none());
        let two = vec![port(443), port(80)];
        assert_eq!(pick_port(&two, None).map(|p| p.port), Some(80));
    }
}
