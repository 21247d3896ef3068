//! Events for `kubectl describe`, written off the caller's path: recording
//! never blocks a scheduler pass or a pod start. Repeats of the same
//! reason and message for the same object bump `count` on one Event, as
//! Kubernetes' event correlator does, instead of piling up objects. Writes
//! are paced as the kubelet paces them (`eventRecordQPS` 50, burst 100), so
//! a burst of a thousand pod starts does not spend the cores on Events
//! while the pods themselves wait: the Events trail by seconds instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Event;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use shoal_sdk::now_rfc3339;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// The object an Event is about.
#[derive(Clone, Debug)]
pub struct ObjectRef {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `spec.containers{name}` when the Event is about one container.
    pub field_path: Option<String>,
}

struct Record {
    object: ObjectRef,
    type_: &'static str,
    reason: &'static str,
    message: String,
}

#[derive(Clone)]
pub struct EventRecorder {
    tx: mpsc::Sender<Record>,
    spam: Arc<Mutex<SpamFilter>>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

/// Kubernetes' per-object spam filter: each object may have 25 Events in a
/// burst, then one per five minutes. A ReplicaSet creating a thousand pods
/// tells the first 25 `SuccessfulCreate`s; the other 975 writes would only
/// slow the creates down.
struct SpamFilter {
    buckets: HashMap<String, Pace>,
}

const SPAM_BURST: f64 = 25.0;
const SPAM_REFILL_PER_SEC: f64 = 1.0 / 300.0;

impl SpamFilter {
    fn allow(&mut self, uid: &str) -> bool {
        let now = std::time::Instant::now();
        if self.buckets.len() >= REMEMBERED && !self.buckets.contains_key(uid) {
            // Forget the idle ones (full again) rather than grow without bound.
            self.buckets.retain(|_, pace| !pace.full_at(now));
        }
        self.buckets
            .entry(uid.to_string())
            .or_insert_with(|| Pace::new(SPAM_REFILL_PER_SEC, SPAM_BURST))
            .try_take(now)
    }
}

/// Events queued beyond this are dropped (with a log line): a storm of
/// Events must not grow memory without bound.
const QUEUE: usize = 8192;
const REMEMBERED: usize = 4096;

/// Event writes per second, and the burst written at once: the kubelet's
/// defaults. (The scheduler and controller manager get the same: each
/// has a recorder of its own.)
const WRITES_PER_SEC: f64 = 50.0;
const WRITE_BURST: f64 = 100.0;

/// A token bucket: the spam filter takes a slot only if one is free; the
/// writers take one in debt (tokens may go negative) and sleep until it is
/// paid off.
struct Pace {
    tokens: f64,
    at: std::time::Instant,
    per_sec: f64,
    burst: f64,
}

impl Pace {
    fn new(per_sec: f64, burst: f64) -> Pace {
        Pace {
            tokens: burst,
            at: std::time::Instant::now(),
            per_sec,
            burst,
        }
    }

    fn refill(&mut self, now: std::time::Instant) {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
    }

    /// Whether the bucket has refilled to its burst by `now`.
    fn full_at(&self, now: std::time::Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.per_sec;
        self.tokens + refill >= self.burst
    }

    /// Takes a slot at `now` if one is free, never going into debt.
    fn try_take(&mut self, now: std::time::Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes a slot at `now`; how long to wait before using it.
    fn take(&mut self, now: std::time::Instant) -> std::time::Duration {
        self.refill(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            std::time::Duration::ZERO
        } else {
            std::time::Duration::from_secs_f64(-self.tokens / self.per_sec)
        }
    }
}

impl EventRecorder {
    /// `component` is the reporter (`default-scheduler`, `kubelet`); `host`
    /// the node it runs on, if any.
    pub fn start(client: Client, component: &'static str, host: Option<String>) -> EventRecorder {
        let (tx, rx) = mpsc::channel(QUEUE);
        spawn_writers(client, component, host, rx);
        EventRecorder {
            tx,
            spam: Arc::new(Mutex::new(SpamFilter {
                buckets: HashMap::new(),
            })),
            dropped: Arc::default(),
        }
    }

    pub fn normal(&self, object: &ObjectRef, reason: &'static str, message: impl Into<String>) {
        self.record(object, "Normal", reason, message.into());
    }

    pub fn warning(&self, object: &ObjectRef, reason: &'static str, message: impl Into<String>) {
        self.record(object, "Warning", reason, message.into());
    }

    fn record(
        &self,
        object: &ObjectRef,
        type_: &'static str,
        reason: &'static str,
        message: String,
    ) {
        let allowed = self.spam.lock().map_or(true, |mut f| f.allow(&object.uid));
        if !allowed {
            debug!(object = %object.name, reason, "event dropped by the per-object spam filter");
            return;
        }
        let rec = Record {
            object: object.clone(),
            type_,
            reason,
            message,
        };
        if self.tx.try_send(rec).is_err() {
            // One line per thousand: a storm must not become a log storm.
            let n = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n.is_multiple_of(1000) {
                warn!(object = %object.name, reason, dropped = n + 1, "event queue full; events dropped");
            }
        }
    }
}

/// (uid, fieldPath, reason, message): what makes two Events "the same".
type SeenKey = (String, String, &'static str, String);
/// (namespace, Event name, count) of the Event already written.
type Seen = (String, String, i32);

/// Writers working the queue side by side: one would trail behind a burst
/// of pod starts by seconds.
const WRITERS: usize = 4;

struct Shared {
    client: Client,
    component: &'static str,
    host: Option<String>,
    rx: tokio::sync::Mutex<mpsc::Receiver<Record>>,
    seen: Mutex<HashMap<SeenKey, Seen>>,
    pace: Mutex<Pace>,
}

fn spawn_writers(
    client: Client,
    component: &'static str,
    host: Option<String>,
    rx: mpsc::Receiver<Record>,
) {
    let shared = Arc::new(Shared {
        client,
        component,
        host,
        rx: tokio::sync::Mutex::new(rx),
        seen: Mutex::new(HashMap::new()),
        pace: Mutex::new(Pace::new(WRITES_PER_SEC, WRITE_BURST)),
    });
    for _ in 0..WRITERS {
        tokio::spawn(writer(shared.clone()));
    }
}

async fn writer(sh: Arc<Shared>) {
    loop {
        let Some(r) = sh.rx.lock().await.recv().await else {
            return;
        };
        let wait = sh.pace.lock().map_or(std::time::Duration::ZERO, |mut p| {
            p.take(std::time::Instant::now())
        });
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        write_one(&sh, r).await;
    }
}

async fn write_one(sh: &Shared, r: Record) {
    let ts = now_rfc3339();
    let key = (
        r.object.uid.clone(),
        r.object.field_path.clone().unwrap_or_default(),
        r.reason,
        r.message.clone(),
    );
    let repeat = sh.seen.lock().ok().and_then(|mut seen| {
        seen.get_mut(&key).map(|(ns, name, count)| {
            *count += 1;
            (ns.clone(), name.clone(), *count)
        })
    });
    if let Some((ns, name, count)) = repeat {
        let patch = json!({"count": count, "lastTimestamp": ts});
        let api: Api<Event> = Api::namespaced(sh.client.clone(), &ns);
        if api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .is_ok()
        {
            return;
        }
    }
    let o = &r.object;
    // Events about cluster-scoped objects (a Node) live in `default`, as
    // Kubernetes' recorder puts them.
    let ns = if o.namespace.is_empty() {
        "default"
    } else {
        o.namespace.as_str()
    };
    let ev = json!({
        // Named as Kubernetes' recorder names them: object name and a
        // unique suffix (a generated five-letter one collides in bursts).
        "metadata": {"name": format!("{}.{}", o.name, &uuid::Uuid::new_v4().simple().to_string()[..16]), "namespace": ns},
        "involvedObject": {"apiVersion": o.api_version, "kind": o.kind, "name": o.name,
            "namespace": o.namespace, "uid": o.uid, "fieldPath": o.field_path},
        "reason": r.reason, "message": r.message, "type": r.type_, "count": 1,
        "firstTimestamp": ts, "lastTimestamp": ts,
        "source": {"component": sh.component, "host": sh.host},
        "reportingComponent": sh.component, "reportingInstance": sh.host.clone().unwrap_or_default(),
    });
    let Ok(ev) = serde_json::from_value::<Event>(ev) else {
        return;
    };
    let api: Api<Event> = Api::namespaced(sh.client.clone(), ns);
    match api.create(&PostParams::default(), &ev).await {
        Ok(created) => {
            if let Ok(mut seen) = sh.seen.lock() {
                if seen.len() >= REMEMBERED {
                    seen.clear();
                }
                seen.insert(
                    key,
                    (ns.to_string(), created.metadata.name.unwrap_or_default(), 1),
                );
            }
        }
        Err(e) => {
            warn!(object = %o.name, namespace = %o.namespace, reason = r.reason, error = %e, "could not record event")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_gets_a_burst_of_events_then_few() {
        let mut f = SpamFilter {
            buckets: HashMap::new(),
        };
        let allowed = (0..100).filter(|_| f.allow("rs-1")).count();
        assert_eq!(allowed, 25);
        assert!(f.allow("another-object"), "buckets are per object");
    }

    #[test]
    fn writes_beyond_the_burst_wait_their_turn() {
        let mut p = Pace::new(50.0, 100.0);
        let t0 = std::time::Instant::now();
        let waits: Vec<_> = (0..102).map(|_| p.take(t0)).collect();
        assert!(waits[..100].iter().all(|w| w.is_zero()));
        assert_eq!(waits[100], std::time::Duration::from_millis(20));
        assert_eq!(waits[101], std::time::Duration::from_millis(40));
        // A second later fifty slots came back: the debt of two is paid
        // and 48 are free.
        let later = t0 + std::time::Duration::from_secs(1);
        let free = (0..60).take_while(|_| p.take(later).is_zero()).count();
        assert_eq!(free, 48);
    }
}
