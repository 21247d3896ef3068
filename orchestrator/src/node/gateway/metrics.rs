//! The gateway's request metrics on the node's `/metrics`: per Service
//! (every request this node's gateway routed to it) and per pod (every
//! request a pod on this node handled, whoever routed it).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// HTTP handlers answer in microseconds to seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0,
];

pub struct GatewayMetrics {
    service_requests: IntCounterVec,
    service_latency: HistogramVec,
    service_in_flight: IntGaugeVec,
    pod_requests: IntCounterVec,
    pod_latency: HistogramVec,
    pod_in_flight: IntGaugeVec,
    /// Status codes each pod's counter has series for, to remove them all
    /// when the pod goes.
    pod_codes: Mutex<HashMap<(String, String), BTreeSet<u16>>>,
}

/// Which series a request counts in: a Service or a pod, by namespace and
/// name.
#[derive(Clone, Copy)]
pub enum Subject<'a> {
    Service(&'a str, &'a str),
    Pod(&'a str, &'a str),
}

impl GatewayMetrics {
    pub fn register(registry: &Registry) -> Result<GatewayMetrics, prometheus::Error> {
        let counter = |name: &str, help: &str, who: &str| {
            IntCounterVec::new(Opts::new(name, help), &["namespace", who, "code"])
        };
        let histogram = |name: &str, help: &str, who: &str| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                &["namespace", who],
            )
        };
        let gauge = |name: &str, help: &str, who: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["namespace", who])
        };
        let m = GatewayMetrics {
            service_requests: counter(
                "shoal_service_requests_total",
                "HTTP requests this node's gateway routed to a Service, by status code",
                "service",
            )?,
            service_latency: histogram(
                "shoal_service_request_duration_seconds",
                "From a Service request's arrival to its response headers",
                "service",
            )?,
            service_in_flight: gauge(
                "shoal_service_requests_in_flight",
                "Service requests being answered now",
                "service",
            )?,
            pod_requests: counter(
                "shoal_pod_http_requests_total",
                "HTTP requests a pod on this node handled, by status code",
                "pod",
            )?,
            pod_latency: histogram(
                "shoal_pod_http_request_duration_seconds",
                "From a pod taking a request to its response headers",
                "pod",
            )?,
            pod_in_flight: gauge(
                "shoal_pod_http_requests_in_flight",
                "Requests a pod on this node is handling now",
                "pod",
            )?,
            pod_codes: Mutex::new(HashMap::new()),
        };
        registry.register(Box::new(m.service_requests.clone()))?;
        registry.register(Box::new(m.service_latency.clone()))?;
        registry.register(Box::new(m.service_in_flight.clone()))?;
        registry.register(Box::new(m.pod_requests.clone()))?;
        registry.register(Box::new(m.pod_latency.clone()))?;
        registry.register(Box::new(m.pod_in_flight.clone()))?;
        Ok(m)
    }

    fn parts(&self, s: Subject<'_>) -> (&IntCounterVec, &HistogramVec, &IntGaugeVec, [String; 2]) {
        match s {
            Subject::Service(ns, n) => (
                &self.service_requests,
                &self.service_latency,
                &self.service_in_flight,
                [ns.to_string(), n.to_string()],
            ),
            Subject::Pod(ns, n) => (
                &self.pod_requests,
                &self.pod_latency,
                &self.pod_in_flight,
                [ns.to_string(), n.to_string()],
            ),
        }
    }

    pub fn started(&self, s: Subject<'_>) {
        let (_, _, g, [ns, n]) = self.parts(s);
        g.with_label_values(&[ns.as_str(), n.as_str()]).inc();
    }

    /// A request the pod turned away: it leaves the in-flight count only.
    pub fn not_taken(&self, s: Subject<'_>) {
        let (_, _, g, [ns, n]) = self.parts(s);
        g.with_label_values(&[ns.as_str(), n.as_str()]).dec();
    }

    pub fn finished(&self, s: Subject<'_>, code: u16, took: Duration) {
        let (c, h, g, [ns, n]) = self.parts(s);
        g.with_label_values(&[ns.as_str(), n.as_str()]).dec();
        h.with_label_values(&[ns.as_str(), n.as_str()])
            .observe(took.as_secs_f64());
        c.with_label_values(&[ns.as_str(), n.as_str(), &code.to_string()])
            .inc();
        if let (Subject::Pod(..), Ok(mut codes)) = (s, self.pod_codes.lock()) {
            codes.entry((ns, n)).or_default().insert(code);
        }
    }

    /// Forgets a pod that left this node, so its series do not linger.
    pub fn forget_pod(&self, namespace: &str, pod: &str) {
        let _ = self.pod_latency.remove_label_values(&[namespace, pod]);
        let _ = self.pod_in_flight.remove_label_values(&[namespace, pod]);
        let codes = self
            .pod_codes
            .lock()
            .ok()
            .and_then(|mut c| c.remove(&(namespace.to_string(), pod.to_string())))
            .unwrap_or_default();
        for code in codes {
            let _ = self
                .pod_requests
                .remove_label_values(&[namespace, pod, &code.to_string()]);
        }
    }
}
