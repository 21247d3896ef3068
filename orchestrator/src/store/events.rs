//! The in-memory tail of the event log and the fan-out to live watchers.
//!
//! Events are published here only after they are durable, in revision order.
//! A watcher is handed the backlog after its starting revision and a
//! subscription taken under the same lock, so it sees every event exactly once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use serde_json::Value;
use tokio::sync::broadcast;

use super::{Revision, StoreError};

/// The discriminants index `Fanout::frames`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added = 0,
    Modified = 1,
    Deleted = 2,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change to one object.
#[derive(Debug)]
pub struct Event {
    pub rv: Revision,
    pub kind: EventType,
    pub key: String,
    /// The object after the change (for DELETED: its last state, stamped
    /// with the deletion's revision).
    pub object: Arc<Value>,
    /// The object before the change, so watchers with selectors can tell an
    /// object leaving their view from one staying in it.
    pub prev: Option<Arc<Value>>,
    pub fanout: Fanout,
}

/// Per-event state shared by every watcher it reaches.
#[derive(Debug, Default)]
pub struct Fanout {
    /// When the event became durable and was published to watchers; unset
    /// for history loaded at start-up.
    pub published: OnceLock<Instant>,
    /// The serialised watch frame per event type (ADDED, MODIFIED, DELETED),
    /// made by the first watcher that needs it so a hundred watchers encode
    /// the object once.
    pub frames: [OnceLock<bytes::Bytes>; 3],
}

/// What a watch reads: history first, then live events.
pub struct WatchReceiver {
    pub backlog: VecDeque<Arc<Event>>,
    pub live: broadcast::Receiver<Arc<Event>>,
    pub prefix: String,
    /// Highest revision already delivered or skipped.
    pub after: Revision,
}

pub enum WatchNext {
    Event(Arc<Event>),
    /// The watcher fell so far behind that events were dropped for it.
    Lagged,
    Closed,
}

impl WatchReceiver {
    pub async fn next(&mut self) -> WatchNext {
        loop {
            let ev = if let Some(ev) = self.backlog.pop_front() {
                ev
            } else {
                match self.live.recv().await {
                    Ok(ev) => ev,
                    Err(broadcast::error::RecvError::Lagged(_)) => return WatchNext::Lagged,
                    Err(broadcast::error::RecvError::Closed) => return WatchNext::Closed,
                }
            };
            if ev.rv <= self.after {
                continue;
            }
            // Track the stream position even for other keys, so a bookmark
            // can report how far this watcher has seen.
            self.after = ev.rv;
            if ev.key.starts_with(&self.prefix) {
                return WatchNext::Event(ev);
            }
        }
    }
}

struct LogInner {
    events: VecDeque<Arc<Event>>,
    /// Every event with a revision at or below this has been dropped.
    compacted: Revision,
}

/// Bounded history plus live fan-out.
pub struct EventLog {
    inner: Mutex<LogInner>,
    tx: broadcast::Sender<Arc<Event>>,
    capacity: usize,
}

impl EventLog {
    pub fn new(history: Vec<Arc<Event>>, compacted: Revision, capacity: usize) -> Self {
        // The broadcast ring bounds how far a live watcher may lag before it
        // is cut off and must re-list, as the Kubernetes watch cache does.
        let (tx, _) = broadcast::channel(16 * 1024);
        EventLog {
            inner: Mutex::new(LogInner {
                events: history.into(),
                compacted,
            }),
            tx,
            capacity: capacity.max(1),
        }
    }

    /// Appends durable events (in revision order) and wakes watchers.
    /// Returns the revision history now starts after, when it moved.
    pub fn publish(&self, events: Vec<Arc<Event>>) -> Option<Revision> {
        let mut inner = lock(&self.inner);
        let mut compacted_to = None;
        let now = Instant::now();
        for ev in events {
            let _ = ev.fanout.published.set(now);
            inner.events.push_back(ev.clone());
            // No receivers is fine: nobody is watching.
            let _ = self.tx.send(ev);
        }
        while inner.events.len() > self.capacity {
            if let Some(old) = inner.events.pop_front() {
                inner.compacted = old.rv;
                compacted_to = Some(old.rv);
            }
        }
        compacted_to
    }

    pub fn subscribe(&self, prefix: &str, from: Revision) -> Result<WatchReceiver, StoreError> {
        let inner = lock(&self.inner);
        if from < inner.compacted {
            return Err(StoreError::Gone {
                requested: from,
                compacted: inner.compacted,
            });
        }
        let start = inner.events.partition_point(|e| e.rv <= from);
        let backlog = inner
            .events
            .range(start..)
            .filter(|e| e.key.starts_with(prefix))
            .cloned()
            .collect();
        Ok(WatchReceiver {
            backlog,
            live: self.tx.subscribe(),
            prefix: prefix.to_string(),
            after: from,
        })
    }
}

/// A poisoned lock only means another thread panicked mid-update of plain
/// data that stays consistent; keep serving rather than cascade the panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(rv: Revision, key: &str) -> Arc<Event> {
        Arc::new(Event {
            rv,
            kind: EventType::Added,
            key: key.into(),
            object: Arc::new(Value::Null),
            prev: None,
            fanout: Fanout::default(),
        })
    }

    #[tokio::test]
    async fn backlog_then_live_without_gaps_or_repeats() {
        let log = EventLog::new(vec![], 0, 100);
        log.publish(vec![ev(1, "/a/1"), ev(2, "/b/1"), ev(3, "/a/2")]);
        let mut w = log.subscribe("/a/", 1).expect("subscribe");
        log.publish(vec![ev(4, "/a/3")]);
        let mut seen = vec![];
        for _ in 0..2 {
            if let WatchNext::Event(e) = w.next().await {
                seen.push(e.rv);
            }
        }
        assert_eq!(seen, vec![3, 4]);
    }

    #[test]
    fn compaction_answers_gone() {
        let log = EventLog::new(vec![], 0, 2);
        log.publish(vec![ev(1, "/a"), ev(2, "/a"), ev(3, "/a")]);
        assert!(matches!(
            log.subscribe("/", 0),
            Err(StoreError::Gone { compacted: 1, .. })
        ));
        assert!(log.subscribe("/", 1).is_ok());
    }
}
