//! Prometheus metrics of the control plane, rendered at `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_latency: HistogramVec,
    pub watches: IntGauge,
    pub watch_delivery: Histogram,
    pub store_latency: HistogramVec,
    pub store_group_writes: Histogram,
    pub controllers: ControllerMetrics,
}

/// What each controller's loop reports, labelled by controller name.
#[derive(Clone)]
pub struct ControllerMetrics {
    pub queue_depth: IntGaugeVec,
    pub reconcile_latency: HistogramVec,
    pub reconcile_errors: IntCounterVec,
}

impl ControllerMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "workqueue_depth",
                "Keys waiting in a controller's work queue",
            ),
            &["name"],
        )?;
        let reconcile_latency = HistogramVec::new(
            HistogramOpts::new(
                "controller_reconcile_duration_seconds",
                "Time one reconcile of one object takes, API calls included",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["controller"],
        )?;
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "controller_reconcile_errors_total",
                "Reconciles that failed and were retried with backoff",
            ),
            &["controller"],
        )?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(reconcile_latency.clone()))?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        Ok(ControllerMetrics {
            queue_depth,
            reconcile_latency,
            reconcile_errors,
        })
    }
}

/// Buckets from 50µs to 10s: API calls on loopback are sub-millisecond.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// Finer buckets for in-process fan-out, which takes microseconds.
const FANOUT_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0004, 0.0005, 0.00075, 0.001, 0.0015, 0.0025,
    0.005, 0.01, 0.1, 1.0,
];

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "apiserver_request_total",
                "API requests by verb, resource and HTTP code",
            ),
            &["verb", "resource", "code"],
        )?;
        let request_latency = HistogramVec::new(
            HistogramOpts::new(
                "apiserver_request_duration_seconds",
                "API request latency by verb and resource",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["verb", "resource"],
        )?;
        let watches = IntGauge::new("apiserver_registered_watchers", "Watches currently open")?;
        let watch_delivery = Histogram::with_opts(
            HistogramOpts::new(
                "shoal_watch_event_delivery_seconds",
                "From an event becoming durable to its frame being handed to a watcher's connection",
            )
            .buckets(FANOUT_BUCKETS.to_vec()),
        )?;
        let store_latency = HistogramVec::new(
            HistogramOpts::new(
                "shoal_store_operation_duration_seconds",
                "Store operation latency, including the durable flush for writes",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["operation"],
        )?;
        // How well group commit groups: writes sharing one durable flush.
        let store_group_writes = Histogram::with_opts(
            HistogramOpts::new(
                "shoal_store_commit_group_writes",
                "Writes made durable by one flush of the store (group commit)",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0,
            ]),
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_latency.clone()))?;
        registry.register(Box::new(watches.clone()))?;
        registry.register(Box::new(watch_delivery.clone()))?;
        registry.register(Box::new(store_latency.clone()))?;
        registry.register(Box::new(store_group_writes.clone()))?;
        let controllers = ControllerMetrics::register(&registry)?;
        Ok(Metrics {
            controllers,
            registry,
            requests,
            request_latency,
            watches,
            watch_delivery,
            store_latency,
            store_group_writes,
        })
    }

    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}
