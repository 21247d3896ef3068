//! Group commit with one writer thread: every write queued while the
//! previous group was being flushed goes into the next group, which costs one
//! sled batch and one fsync however many writes it holds.
//!
//! The thread owns revision assignment, so revisions, batch order and event
//! order agree without a lock per write; events are published to watchers
//! only after their flush, so nobody observes a write a crash could take back.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::oneshot;
use tracing::error;

use super::cache::{Cached, ObjectCache};
use super::events::{lock, Event, EventLog, EventType};
use super::record;
use super::{Revision, StoreError, StoredObject};

pub enum WriteOp {
    Create {
        key: String,
        value: Value,
    },
    Update {
        key: String,
        expected: Option<Revision>,
        value: Value,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
}

impl WriteOp {
    fn key(&self) -> &str {
        match self {
            WriteOp::Create { key, .. }
            | WriteOp::Update { key, .. }
            | WriteOp::Delete { key, .. } => key,
        }
    }
}

pub type Reply = oneshot::Sender<Result<StoredObject, StoreError>>;

/// The most writes one group takes, so one flush never grows unbounded.
const MAX_GROUP: usize = 4096;

pub struct Writer {
    pub tree: sled::Tree,
    pub db: sled::Db,
    /// The newest applied revision; held while a group is applied so a list
    /// scan sees a group entirely or not at all.
    pub applied: Arc<Mutex<Revision>>,
    pub log: Arc<EventLog>,
    pub history: u64,
    pub group_writes: Option<prometheus::Histogram>,
    /// Decoded objects, kept in step with the tree as groups are applied.
    pub cache: Arc<ObjectCache>,
}

/// The state of a key as this group sees it (stored, or written earlier
/// in the same group): the object, or `None` when absent.
type Seen = Option<Cached>;

impl Writer {
    /// Runs until every sender is gone.
    pub fn run(self, rx: mpsc::Receiver<(WriteOp, Reply)>) {
        let mut next = *lock(&self.applied);
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(op) => group.push(op),
                    Err(_) => break,
                }
            }
            next = self.commit(group, next);
        }
    }

    fn current(&self, key: &str, overlay: &HashMap<String, Seen>) -> Result<Seen, StoreError> {
        if let Some(seen) = overlay.get(key) {
            return Ok(seen.clone());
        }
        if let Some(c) = self.cache.get(key) {
            return Ok(Some(c));
        }
        match self.tree.get(record::obj_key(key))? {
            Some(bytes) => {
                let (rv, object) = record::decode(key, &bytes)?;
                Ok(Some(Cached {
                    rv,
                    object: Arc::new(object),
                    bytes,
                }))
            }
            None => Ok(None),
        }
    }

    /// Checks one write against the current state and, if it holds, stages
    /// it in `batch` at revision `rv`.
    fn stage(
        &self,
        op: WriteOp,
        rv: Revision,
        overlay: &mut HashMap<String, Seen>,
        batch: &mut sled::Batch,
    ) -> Result<Arc<Event>, StoreError> {
        let key = op.key().to_string();
        let cur = self.current(&key, overlay)?;
        let check = |expected: Option<Revision>| -> Result<(Arc<Value>, sled::IVec), StoreError> {
            match &cur {
                None => Err(StoreError::NotFound { key: key.clone() }),
                Some(Cached {
                    rv: actual,
                    object,
                    bytes,
                }) => match expected {
                    Some(e) if e != *actual => Err(StoreError::Conflict {
                        key: key.clone(),
                        expected: e,
                        actual: *actual,
                    }),
                    _ => Ok((object.clone(), bytes.clone())),
                },
            }
        };
        let (kind, object, prev) = match op {
            WriteOp::Create { value, .. } => {
                if cur.is_some() {
                    return Err(StoreError::AlreadyExists { key });
                }
                (EventType::Added, value, None)
            }
            WriteOp::Update {
                expected, value, ..
            } => (EventType::Modified, value, Some(check(expected)?)),
            WriteOp::Delete { expected, .. } => {
                let old = check(expected)?;
                (EventType::Deleted, (*old.0).clone(), Some(old))
            }
        };
        let mut object = object;
        super::stamp_revision(&mut object, rv);
        let object = Arc::new(object);
        let bytes = record::encode(&key, &object)?;
        match kind {
            EventType::Deleted => {
                batch.remove(record::obj_key(&key));
                overlay.insert(key.clone(), None);
            }
            _ => {
                batch.insert(record::obj_key(&key), bytes.clone());
                overlay.insert(
                    key.clone(),
                    Some(Cached {
                        rv,
                        object: object.clone(),
                        bytes: bytes.clone(),
                    }),
                );
            }
        }
        let prev_bytes = prev.as_ref().map(|(_, b)| b.clone());
        let event = Event {
            rv,
            kind,
            key,
            object,
            prev: prev.map(|(o, _)| o),
            fanout: Default::default(),
        };
        batch.insert(
            &record::ev_key(rv)[..],
            record::encode_event(&event, &bytes, prev_bytes.as_deref()),
        );
        if rv > self.history {
            batch.remove(&record::ev_key(rv - self.history)[..]);
        }
        Ok(Arc::new(event))
    }

    /// Applies, flushes and publishes one group; returns the next free revision.
    fn commit(&self, group: Vec<(WriteOp, Reply)>, applied: Revision) -> Revision {
        let mut batch = sled::Batch::default();
        let mut overlay = HashMap::new();
        let mut events = Vec::new();
        let mut replies = Vec::new();
        let mut rv = applied;
        for (op, reply) in group {
            match self.stage(op, rv + 1, &mut overlay, &mut batch) {
                Ok(ev) => {
                    rv += 1;
                    replies.push((reply, ev.clone()));
                    events.push(ev);
                }
                // Refused writes staged nothing: answer them at once.
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if events.is_empty() {
            return applied;
        }
        if let Some(h) = &self.group_writes {
            h.observe(events.len() as f64);
        }
        batch.insert(record::REV_KEY, &rv.to_be_bytes()[..]);
        let result = {
            let mut guard = lock(&self.applied);
            let r = self.tree.apply_batch(batch);
            if r.is_ok() {
                *guard = rv;
                self.cache
                    .apply(overlay.iter().map(|(key, seen)| (key, seen.clone())));
            }
            r
        }
        .and_then(|_| self.db.flush().map(|_| ()));
        match result {
            Ok(()) => {
                self.log.publish(events);
                for (reply, ev) in replies {
                    let _ = reply.send(Ok(StoredObject {
                        key: ev.key.clone(),
                        rv: ev.rv,
                        value: ev.object.clone(),
                    }));
                }
                rv
            }
            Err(e) => {
                // The writes may be applied in memory but are not durable; the
                // store cannot vouch for them, so every caller hears it failed.
                error!(error = %e, "store write or flush failed");
                self.cache.clear();
                for (reply, _) in replies {
                    let _ = reply.send(Err(StoreError::Closed));
                }
                *lock(&self.applied)
            }
        }
    }
}
