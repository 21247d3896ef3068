//! Decoded copies of the objects written most recently, so reading an
//! object back does not parse its JSON again. A write in a burst (a bind, a
//! status patch) reads its object twice, in the handler and in the writer;
//! parsing those was 6% of the server's CPU in a 1,000-pod scale-up.
//!
//! Only the writer thread fills the cache, as it applies each group to the
//! tree, so an entry is never older than the tree; readers only look. The
//! size is bounded, evicting by first arrival (an update keeps a key's
//! place): it is a shortcut, never the only copy.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

use super::Revision;

/// Entries kept: a scale-up's pods are written three or four times within
/// a second, so this covers bursts of a few thousand; at a few KiB per pod
/// it bounds the cache at tens of MiB.
pub const CAPACITY: usize = 4096;

/// An object as stored: its revision, decoded value and stored bytes.
#[derive(Clone)]
pub struct Cached {
    pub rv: Revision,
    pub object: Arc<Value>,
    pub bytes: sled::IVec,
}

pub struct ObjectCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Default)]
struct Inner {
    /// Each entry with the sequence number of its arrival.
    map: HashMap<String, (u64, Cached)>,
    /// (key, arrival) oldest first, for eviction. A key deleted and written
    /// again arrives anew; its old place no longer matches and is skipped.
    order: VecDeque<(String, u64)>,
    next: u64,
}

impl Inner {
    fn current(&self, place: &(String, u64)) -> bool {
        self.map
            .get(&place.0)
            .is_some_and(|(seq, _)| *seq == place.1)
    }
}

impl ObjectCache {
    pub fn new(capacity: usize) -> ObjectCache {
        ObjectCache {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub fn get(&self, key: &str) -> Option<Cached> {
        self.lock().map.get(key).map(|(_, c)| c.clone())
    }

    /// The writer applied a group: `Some` is a key's new state, `None` a
    /// deletion.
    pub fn apply<'a>(&self, changes: impl IntoIterator<Item = (&'a String, Option<Cached>)>) {
        let mut inner = self.lock();
        for (key, change) in changes {
            match change {
                Some(c) => match inner.map.get_mut(key) {
                    Some(slot) => slot.1 = c,
                    None => {
                        let seq = inner.next;
                        inner.next += 1;
                        inner.map.insert(key.clone(), (seq, c));
                        inner.order.push_back((key.clone(), seq));
                    }
                },
                None => {
                    inner.map.remove(key);
                }
            }
        }
        while inner.map.len() > self.capacity {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if inner.current(&oldest) {
                inner.map.remove(&oldest.0);
            }
        }
        // Deletions leave stale places behind; drop them when they pile up.
        if inner.order.len() > 2 * self.capacity {
            let order = std::mem::take(&mut inner.order);
            inner.order = order.into_iter().filter(|p| inner.current(p)).collect();
        }
    }

    /// Forgets everything: after a failed write the tree's state is not
    /// known for sure, so reads go back to it.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.map.clear();
        inner.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(rv: Revision) -> Cached {
        Cached {
            rv,
            object: Arc::new(json!({"rv": rv})),
            bytes: sled::IVec::from(&b"{}"[..]),
        }
    }

    #[test]
    fn keeps_the_newest_state_and_forgets_deletions() {
        let c = ObjectCache::new(8);
        let (a, b) = ("a".to_string(), "b".to_string());
        c.apply([(&a, Some(entry(1))), (&b, Some(entry(2)))]);
        c.apply([(&a, Some(entry(3)))]);
        assert_eq!(c.get("a").map(|e| e.rv), Some(3));
        c.apply([(&b, None)]);
        assert!(c.get("b").is_none());
        c.clear();
        assert!(c.get("a").is_none());
    }

    #[test]
    fn stays_within_its_capacity_oldest_first() {
        let c = ObjectCache::new(3);
        let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        for (i, k) in keys.iter().enumerate() {
            c.apply([(k, Some(entry(i as Revision)))]);
            // Deleting and re-adding must not let stale places pile up.
            c.apply([(k, None)]);
            c.apply([(k, Some(entry(i as Revision)))]);
        }
        let kept: Vec<&String> = keys.iter().filter(|k| c.get(k).is_some()).collect();
        assert_eq!(kept, vec!["k7", "k8", "k9"]);
        assert!(c.lock().order.len() <= 6, "stale places are dropped");
    }
}
