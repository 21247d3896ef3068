//! What the containers on this node use, for `/stats/summary` (kubelet's
//! Summary API, which the API server's `metrics.k8s.io` reads).
//!
//! Each running container registers its CPU meter and memory gauge; a
//! sampler records the meters every few seconds, and a rate is the change
//! between now and a sample about [`WINDOW`] old. A container that started
//! more recently is measured since its start. The node's own figures are
//! the machine's, from `/proc`, as a kubelet reports its root cgroup.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};
use shoal_runtime::CpuMeter;

use super::status_sync::PodKey;

/// How far back a rate looks; metrics-server's default resolution is 15 s.
pub const WINDOW: Duration = Duration::from_secs(15);
/// How often the meters are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept: enough to always have one at least `WINDOW` old.
const KEPT: usize = 5;

/// A cumulative counter's history, newest last.
#[derive(Debug, Default)]
pub struct Samples(VecDeque<(Instant, u64)>);

impl Samples {
    pub fn record(&mut self, at: Instant, total: u64) {
        if self.0.len() == KEPT {
            self.0.pop_front();
        }
        self.0.push_back((at, total));
    }

    /// The counter's rate per second between the newest sample at least
    /// `WINDOW` before `now` (else the oldest, else `since`) and `total`
    /// now; with the window it covers.
    pub fn rate(&self, now: Instant, total: u64, since: (Instant, u64)) -> (f64, Duration) {
        let base = self
            .0
            .iter()
            .rev()
            .find(|(t, _)| now.saturating_duration_since(*t) >= WINDOW)
            .or(self.0.front())
            .copied()
            .unwrap_or(since);
        let span = now.saturating_duration_since(base.0);
        if span.is_zero() {
            return (0.0, span);
        }
        let delta = total.saturating_sub(base.1) as f64;
        (delta / span.as_secs_f64(), span)
    }
}

struct Running {
    pod: PodKey,
    container: String,
    started: Instant,
    started_at: Timestamp,
    cpu: CpuMeter,
    memory: Arc<AtomicU64>,
    samples: Samples,
}

/// One pod's containers added up, while the summary is built.
struct PodTotals {
    pod: PodKey,
    containers: Vec<Value>,
    rate: f64,
    total: u64,
    memory: u64,
    window: Duration,
}

/// The registry of running containers and the machine's own samples.
#[derive(Default)]
pub struct Usage {
    running: Mutex<HashMap<(String, String), Running>>,
    machine: Mutex<Samples>,
}

impl Usage {
    /// A container started; its meter is read until [`Usage::stopped`].
    pub fn started(&self, pod: &PodKey, container: &str, cpu: CpuMeter, memory: Arc<AtomicU64>) {
        if let Ok(mut r) = self.running.lock() {
            r.insert(
                (pod.uid.clone(), container.to_string()),
                Running {
                    pod: pod.clone(),
                    container: container.to_string(),
                    started: Instant::now(),
                    started_at: Timestamp::now(),
                    cpu,
                    memory,
                    samples: Samples::default(),
                },
            );
        }
    }

    pub fn stopped(&self, pod: &PodKey, container: &str) {
        if let Ok(mut r) = self.running.lock() {
            r.remove(&(pod.uid.clone(), container.to_string()));
        }
    }

    /// Records every meter now; the sampler calls it every [`SAMPLE_EVERY`].
    pub fn sample(&self) {
        let now = Instant::now();
        if let Ok(mut r) = self.running.lock() {
            for c in r.values_mut() {
                c.samples.record(now, c.cpu.nanos());
            }
        }
        if let (Some(busy), Ok(mut m)) = (machine_cpu_nanos(), self.machine.lock()) {
            m.record(now, busy);
        }
    }

    /// The Summary API document: the node, and each pod with its containers.
    pub fn summary(&self, node: &str) -> Value {
        let now = Instant::now();
        let time = Timestamp::now().to_string();
        let cpu = |rate: f64, total: u64| json!({"time": time, "usageNanoCores": rate.round() as u64, "usageCoreNanoSeconds": total});
        let memory =
            |bytes: u64| json!({"time": time, "workingSetBytes": bytes, "usageBytes": bytes});
        let mut pods: HashMap<String, PodTotals> = HashMap::new();
        if let Ok(r) = self.running.lock() {
            for c in r.values() {
                let total = c.cpu.nanos();
                let (rate, window) = c.samples.rate(now, total, (c.started, 0));
                let mem = c.memory.load(Ordering::Relaxed);
                let p = pods.entry(c.pod.uid.clone()).or_insert_with(|| PodTotals {
                    pod: c.pod.clone(),
                    containers: Vec::new(),
                    rate: 0.0,
                    total: 0,
                    memory: 0,
                    window,
                });
                p.containers.push(json!({
                    "name": c.container,
                    "startTime": c.started_at.to_string(),
                    "cpu": cpu(rate, total),
                    "memory": memory(mem),
                    "window": window.as_secs_f64(),
                }));
                p.rate += rate;
                p.total += total;
                p.memory += mem;
                p.window = p.window.min(window);
            }
        }
        let pods: Vec<Value> = pods
            .into_values()
            .map(|p| {
                json!({
                    "podRef": {"name": p.pod.name, "namespace": p.pod.namespace, "uid": p.pod.uid},
                    "containers": p.containers,
                    "cpu": cpu(p.rate, p.total),
                    "memory": memory(p.memory),
                    "window": p.window.as_secs_f64(),
                })
            })
            .collect();
        let (node_rate, node_total, node_window) = match (machine_cpu_nanos(), self.machine.lock())
        {
            (Some(total), Ok(m)) => {
                let (rate, window) = m.rate(now, total, (now, total));
                (rate, total, window)
            }
            _ => (0.0, 0, Duration::ZERO),
        };
        json!({
            "node": {
                "nodeName": node,
                "cpu": cpu(node_rate, node_total),
                "memory": memory(machine_memory_in_use().unwrap_or(0)),
                "window": node_window.as_secs_f64(),
            },
            "pods": pods,
        })
    }
}

/// Samples every meter until the process ends.
pub async fn sampler(usage: Arc<Usage>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tick.tick().await;
        usage.sample();
    }
}

/// CPU time the machine spent not idle, in nanoseconds (`/proc/stat`).
fn machine_cpu_nanos() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    busy_jiffies(&stat).map(|j| j.saturating_mul(1_000_000_000 / clock_ticks()))
}

/// user+nice+system+irq+softirq+steal of the `cpu` line: everything but
/// idle and iowait.
fn busy_jiffies(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let n: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let at = |i: usize| n.get(i).copied().unwrap_or(0);
    Some(at(0) + at(1) + at(2) + at(5) + at(6) + at(7))
}

/// `USER_HZ`: 100 on every Linux this runs on (the kernel's ABI value for
/// /proc/stat, independent of CONFIG_HZ).
fn clock_ticks() -> u64 {
    100
}

/// MemTotal − MemAvailable, in bytes (`/proc/meminfo`).
fn machine_memory_in_use() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    memory_in_use(&info)
}

fn memory_in_use(info: &str) -> Option<u64> {
    let kib = |key: &str| -> Option<u64> {
        info.lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some(kib("MemTotal:")?.saturating_sub(kib("MemAvailable:")?) * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_look_back_about_a_window() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut samples = Samples::default();
        // Nothing sampled yet: measured since the start.
        let (rate, window) = samples.rate(s(2), 1_000, (t0, 0));
        assert_eq!((rate, window), (500.0, Duration::from_secs(2)));
        for (at, total) in [(5, 5_000), (10, 10_000), (15, 10_000), (20, 40_000)] {
            samples.record(s(at), total);
        }
        // Now 22 s: the newest sample at least 15 s old is the one at 5 s.
        let (rate, window) = samples.rate(s(22), 47_000, (t0, 0));
        assert_eq!(window, Duration::from_secs(17));
        assert_eq!(rate, 42_000.0 / 17.0);
        // Only the last KEPT samples stay.
        for at in 25..40 {
            samples.record(s(at), 50_000);
        }
        assert_eq!(samples.0.len(), KEPT);
    }

    #[test]
    fn proc_files_are_read_as_the_kernel_writes_them() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        assert_eq!(busy_jiffies(stat), Some(100 + 5 + 50 + 3 + 2 + 1));
        let info = "MemTotal:       16000 kB\nMemFree:         1000 kB\nMemAvailable:    6000 kB\n";
        assert_eq!(memory_in_use(info), Some(10_000 * 1024));
    }
}
