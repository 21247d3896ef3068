//! The node agent's Prometheus metrics, served by the node API.

use std::time::Duration;

use k8s_openapi::api::core::v1::PodStatus;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct NodeMetrics {
    registry: Registry,
    pods: IntGaugeVec,
    running_containers: IntGauge,
    start_latency: Histogram,
    restart_latency: Histogram,
    exits: IntCounterVec,
}

/// Sandbox starts take microseconds to milliseconds.
const START_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002,
    0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.25, 1.0,
];

impl NodeMetrics {
    pub fn new() -> Result<NodeMetrics, prometheus::Error> {
        let registry = Registry::new();
        let pods = IntGaugeVec::new(
            Opts::new("shoal_node_pods", "Pods on this node by phase"),
            &["phase"],
        )?;
        let running_containers = IntGauge::new(
            "shoal_node_running_containers",
            "Containers currently running on this node",
        )?;
        let start_latency = Histogram::with_opts(
            HistogramOpts::new(
                "shoal_container_start_seconds",
                "From asking the runtime to start a container to the guest running",
            )
            .buckets(START_BUCKETS.to_vec()),
        )?;
        let restart_latency = Histogram::with_opts(
            HistogramOpts::new(
                "shoal_container_restart_seconds",
                "From a container's guest ending to its next guest running, back-off included",
            )
            .buckets(START_BUCKETS.to_vec()),
        )?;
        let exits = IntCounterVec::new(
            Opts::new("shoal_container_exits_total", "Container endings by reason"),
            &["reason"],
        )?;
        registry.register(Box::new(pods.clone()))?;
        registry.register(Box::new(running_containers.clone()))?;
        registry.register(Box::new(start_latency.clone()))?;
        registry.register(Box::new(restart_latency.clone()))?;
        registry.register(Box::new(exits.clone()))?;
        Ok(NodeMetrics {
            registry,
            pods,
            running_containers,
            start_latency,
            restart_latency,
            exits,
        })
    }

    /// Where other parts of the node (the gateway) register their metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn observe_phase(&self, before: Option<&PodStatus>, after: &PodStatus) {
        if let Some(p) = before.and_then(|s| s.phase.as_deref()) {
            self.pods.with_label_values(&[p]).dec();
        }
        if let Some(p) = after.phase.as_deref() {
            self.pods.with_label_values(&[p]).inc();
        }
    }

    pub fn pod_removed(&self, last: Option<&PodStatus>) {
        if let Some(p) = last.and_then(|s| s.phase.as_deref()) {
            self.pods.with_label_values(&[p]).dec();
        }
    }

    pub fn container_started(&self, took: Duration) {
        self.running_containers.inc();
        self.start_latency.observe(took.as_secs_f64());
    }

    pub fn container_restarted(&self, took: Duration) {
        self.restart_latency.observe(took.as_secs_f64());
    }

    pub fn container_exited(&self, reason: &str) {
        self.running_containers.dec();
        self.exits.with_label_values(&[reason]).inc();
    }

    pub fn running_containers(&self) -> i64 {
        self.running_containers.get()
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
