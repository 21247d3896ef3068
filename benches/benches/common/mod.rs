//! Helpers shared by the benchmarks: percentiles and Prometheus histograms.

#![allow(dead_code)]

use std::time::Duration;

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Reads a histogram from Prometheus text and returns the upper bounds (ms)
/// of the buckets holding the 50th and 99th percentiles, and the count.
pub fn histogram(text: &str, name: &str, labels: &str) -> (f64, f64, u64) {
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket")) && l.contains(labels))
    {
        let le = line
            .split("le=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("+Inf");
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::INFINITY)
        };
        let count = line
            .rsplit(' ')
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        buckets.push((bound, count));
    }
    let total = buckets.last().map(|b| b.1).unwrap_or(0);
    let at = |q: f64| {
        let want = (total as f64 * q).ceil() as u64;
        buckets
            .iter()
            .find(|b| b.1 >= want)
            .map(|b| b.0 * 1000.0)
            .unwrap_or(f64::INFINITY)
    };
    (at(0.5), at(0.99), total)
}

/// A histogram from the API server's own /metrics.
pub async fn server_histogram(
    client: &kube::Client,
    name: &str,
    labels: &str,
) -> anyhow::Result<(f64, f64, u64)> {
    metrics_histogram(client, "/metrics", name, labels).await
}

/// A histogram from any /metrics the API server can reach (its own, or a
/// node's through `/api/v1/nodes/{name}/proxy/metrics`).
pub async fn metrics_histogram(
    client: &kube::Client,
    path: &str,
    name: &str,
    labels: &str,
) -> anyhow::Result<(f64, f64, u64)> {
    let text = client
        .request_text(http::Request::get(path).body(vec![])?)
        .await?;
    Ok(histogram(&text, name, labels))
}
