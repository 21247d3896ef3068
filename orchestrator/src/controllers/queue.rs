//! A keyed work queue with client-go's guarantees: a key is queued at most
//! once; a key being processed is never handed to a second worker, and a
//! change that arrives meanwhile queues it again once the first pass is
//! done; failures back off per key, exponentially.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::Notify;
use tokio::time::Instant;

/// First retry after a failure, doubled per consecutive failure.
const BACKOFF_BASE: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Default)]
struct State {
    queue: VecDeque<String>,
    queued: HashSet<String>,
    processing: HashSet<String>,
    /// Changed while being processed: queue again when done.
    dirty: HashSet<String>,
    /// Earliest pending delayed add per key.
    delayed: HashMap<String, Instant>,
    failures: HashMap<String, u32>,
}

pub struct WorkQueue {
    state: Mutex<State>,
    ready: Notify,
    depth: IntGauge,
}

impl WorkQueue {
    pub fn new(depth: IntGauge) -> Arc<WorkQueue> {
        Arc::new(WorkQueue {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            depth,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    pub fn add(&self, key: String) {
        let mut s = self.lock();
        if s.queued.contains(&key) {
            return;
        }
        if s.processing.contains(&key) {
            s.dirty.insert(key);
            return;
        }
        s.queued.insert(key.clone());
        s.queue.push_back(key);
        self.depth.set(s.queue.len() as i64);
        drop(s);
        self.ready.notify_one();
    }

    /// Adds `key` after `delay`; an earlier pending deadline for the same
    /// key wins.
    pub fn add_after(self: &Arc<Self>, key: String, delay: Duration) {
        if delay.is_zero() {
            self.add(key);
            return;
        }
        let at = Instant::now() + delay;
        {
            let mut s = self.lock();
            if s.delayed.get(&key).is_some_and(|t| *t <= at) {
                return;
            }
            s.delayed.insert(key.clone(), at);
        }
        let q = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let Some(q) = q.upgrade() else { return };
            {
                let mut s = q.lock();
                // A later timer replaced by an earlier one leaves quietly.
                if s.delayed.get(&key) != Some(&at) {
                    return;
                }
                s.delayed.remove(&key);
            }
            q.add(key);
        });
    }

    /// Waits for the next key and marks it as being processed.
    pub async fn next(&self) -> String {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            // Registered before looking, so an add between the look and the
            // wait is not lost.
            notified.as_mut().enable();
            {
                let mut s = self.lock();
                if let Some(key) = s.queue.pop_front() {
                    s.queued.remove(&key);
                    s.processing.insert(key.clone());
                    self.depth.set(s.queue.len() as i64);
                    return key;
                }
            }
            notified.await;
        }
    }

    /// Ends processing of `key`; queues it again if it changed meanwhile.
    pub fn done(&self, key: &str) {
        let again = {
            let mut s = self.lock();
            s.processing.remove(key);
            s.dirty.remove(key)
        };
        if again {
            self.add(key.to_string());
        }
    }

    /// The delay before retrying a failed `key`, growing per failure.
    pub fn backoff(&self, key: &str) -> Duration {
        let mut s = self.lock();
        let n = s.failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let exp = (*n - 1).min(20);
        BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_MAX)
    }

    /// Clears `key`'s failure count after a success.
    pub fn forget(&self, key: &str) {
        let mut s = self.lock();
        s.failures.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> Arc<WorkQueue> {
        WorkQueue::new(IntGauge::new("test_depth", "test").expect("gauge"))
    }

    #[tokio::test]
    async fn duplicate_adds_collapse() {
        let q = queue();
        q.add("a".into());
        q.add("a".into());
        q.add("b".into());
        assert_eq!(q.next().await, "a");
        assert_eq!(q.next().await, "b");
        assert!(q.lock().queue.is_empty());
    }

    #[tokio::test]
    async fn a_key_changed_while_processing_comes_back_once_done() {
        let q = queue();
        q.add("a".into());
        let k = q.next().await;
        q.add("a".into());
        assert!(q.lock().queue.is_empty(), "not handed out twice at once");
        q.done(&k);
        assert_eq!(q.next().await, "a");
    }

    #[tokio::test]
    async fn backoff_doubles_and_forget_resets() {
        let q = queue();
        assert_eq!(q.backoff("a"), Duration::from_millis(5));
        assert_eq!(q.backoff("a"), Duration::from_millis(10));
        assert_eq!(q.backoff("a"), Duration::from_millis(20));
        q.forget("a");
        assert_eq!(q.backoff("a"), Duration::from_millis(5));
    }

    #[tokio::test]
    async fn delayed_adds_arrive_and_the_earliest_wins() {
        let q = queue();
        q.add_after("a".into(), Duration::from_secs(60));
        q.add_after("a".into(), Duration::from_millis(10));
        let got = tokio::time::timeout(Duration::from_secs(5), q.next()).await;
        assert_eq!(got.ok().as_deref(), Some("a"));
    }
}
