//! The gateway's request metrics on the node's `/metrics`: per Service
//! (every request this node's gateway routed to it) and per pod (every
//! request a pod on this node handled, whoever routed it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

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
    /// Each subject's series, looked up once: finding them in the vectors
    /// hashes and allocates the label values, several times per request.
    services: Handles,
    pods: Handles,
}

/// namespace → name → series.
type Handles = RwLock<HashMap<String, HashMap<String, Arc<Series>>>>;

/// One Service's or pod's series.
struct Series {
    in_flight: IntGauge,
    latency: Histogram,
    /// Per status code; the few codes a handler answers with.
    requests: Mutex<Vec<(u16, IntCounter)>>,
}

/// Which series a request counts in: a Service or a pod, by namespace and
/// name.
#[derive(Clone, Copy)]
pub enum Subject<'a> {
    Service(&'a str, &'a str),
    Pod(&'a str, &'a str),
}

impl<'a> Subject<'a> {
    /// (namespace, name): the labels every series of the subject carries.
    fn names(self) -> (&'a str, &'a str) {
        match self {
            Subject::Service(ns, name) | Subject::Pod(ns, name) => (ns, name),
        }
    }
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
            services: RwLock::default(),
            pods: RwLock::default(),
        };
        registry.register(Box::new(m.service_requests.clone()))?;
        registry.register(Box::new(m.service_latency.clone()))?;
        registry.register(Box::new(m.service_in_flight.clone()))?;
        registry.register(Box::new(m.pod_requests.clone()))?;
        registry.register(Box::new(m.pod_latency.clone()))?;
        registry.register(Box::new(m.pod_in_flight.clone()))?;
        Ok(m)
    }

    fn parts(&self, s: Subject<'_>) -> (&IntCounterVec, &HistogramVec, &IntGaugeVec, &Handles) {
        match s {
            Subject::Service(..) => (
                &self.service_requests,
                &self.service_latency,
                &self.service_in_flight,
                &self.services,
            ),
            Subject::Pod(..) => (
                &self.pod_requests,
                &self.pod_latency,
                &self.pod_in_flight,
                &self.pods,
            ),
        }
    }

    fn series(&self, s: Subject<'_>) -> Option<Arc<Series>> {
        let (ns, name) = s.names();
        let (_, latency, in_flight, handles) = self.parts(s);
        if let Some(hit) = handles
            .read()
            .ok()
            .and_then(|h| h.get(ns).and_then(|m| m.get(name)).cloned())
        {
            return Some(hit);
        }
        let mut h = handles.write().ok()?;
        let series = h
            .entry(ns.to_string())
            .or_default()
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Series {
                    in_flight: in_flight.with_label_values(&[ns, name]),
                    latency: latency.with_label_values(&[ns, name]),
                    requests: Mutex::new(Vec::new()),
                })
            });
        Some(series.clone())
    }

    pub fn started(&self, s: Subject<'_>) {
        if let Some(series) = self.series(s) {
            series.in_flight.inc();
        }
    }

    /// A request the pod turned away: it leaves the in-flight count only.
    pub fn not_taken(&self, s: Subject<'_>) {
        if let Some(series) = self.series(s) {
            series.in_flight.dec();
        }
    }

    pub fn finished(&self, s: Subject<'_>, code: u16, took: Duration) {
        let Some(series) = self.series(s) else {
            return;
        };
        series.in_flight.dec();
        series.latency.observe(took.as_secs_f64());
        let Ok(mut requests) = series.requests.lock() else {
            return;
        };
        match requests.iter().find(|(c, _)| *c == code) {
            Some((_, counter)) => counter.inc(),
            None => {
                let (ns, name) = s.names();
                let counter = self
                    .parts(s)
                    .0
                    .with_label_values(&[ns, name, &code.to_string()]);
                counter.inc();
                requests.push((code, counter));
            }
        }
    }

    /// Forgets a pod that left this node, so its series do not linger.
    pub fn forget_pod(&self, namespace: &str, pod: &str) {
        let gone = self.pods.write().ok().and_then(|mut h| {
            let in_ns = h.get_mut(namespace)?;
            let gone = in_ns.remove(pod);
            if in_ns.is_empty() {
                h.remove(namespace);
            }
            gone
        });
        let _ = self.pod_latency.remove_label_values(&[namespace, pod]);
        let _ = self.pod_in_flight.remove_label_values(&[namespace, pod]);
        let codes: Vec<u16> = gone
            .and_then(|g| {
                g.requests
                    .lock()
                    .ok()
                    .map(|r| r.iter().map(|(c, _)| *c).collect())
            })
            .unwrap_or_default();
        for code in codes {
            let _ = self
                .pod_requests
                .remove_label_values(&[namespace, pod, &code.to_string()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series_of(registry: &Registry, family: &str) -> Vec<(Vec<String>, f64)> {
        registry
            .gather()
            .into_iter()
            .filter(|f| f.name() == family)
            .flat_map(|f| {
                let counter = f.get_field_type() == prometheus::proto::MetricType::COUNTER;
                f.get_metric()
                    .iter()
                    .map(|m| {
                        let labels = m
                            .get_label()
                            .iter()
                            .map(|l| l.value().to_string())
                            .collect();
                        let value = if counter {
                            m.get_counter().get_value()
                        } else {
                            m.get_gauge().get_value()
                        };
                        (labels, value)
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn counts_by_code_and_forgets_a_pod_entirely() -> Result<(), prometheus::Error> {
        let registry = Registry::new();
        let m = GatewayMetrics::register(&registry)?;
        let pod = Subject::Pod("default", "web-1");
        for code in [200, 200, 503] {
            m.started(pod);
            m.finished(pod, code, Duration::from_micros(50));
        }
        m.started(pod);
        m.not_taken(pod);
        let mut requests = series_of(&registry, "shoal_pod_http_requests_total");
        requests.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            requests,
            vec![
                (vec!["200".into(), "default".into(), "web-1".into()], 2.0),
                (vec!["503".into(), "default".into(), "web-1".into()], 1.0),
            ]
        );
        assert_eq!(
            series_of(&registry, "shoal_pod_http_requests_in_flight"),
            vec![(vec!["default".into(), "web-1".into()], 0.0)]
        );

        m.forget_pod("default", "web-1");
        assert!(series_of(&registry, "shoal_pod_http_requests_total").is_empty());
        assert!(series_of(&registry, "shoal_pod_http_requests_in_flight").is_empty());
        // A pod of the same name later starts from zero.
        m.started(pod);
        m.finished(pod, 200, Duration::from_micros(50));
        assert_eq!(
            series_of(&registry, "shoal_pod_http_requests_total"),
            vec![(vec!["200".into(), "default".into(), "web-1".into()], 1.0)]
        );
        Ok(())
    }
}
