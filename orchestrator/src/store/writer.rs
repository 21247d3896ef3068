//! Group commit with one writer thread: every write queued while the
//! previous group was being made durable goes into the next group, which
//! costs one log record and one sync however many writes it holds.
//!
//! The thread owns revision assignment, so revisions, batch order and event
//! order agree without a lock per write. A group reaches the tree, the cache
//! and watchers only after its log record is durable, so nobody observes a
//! write a crash could take back.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::oneshot;
use tracing::error;

use super::cache::{Cached, ObjectCache};
use super::events::{lock, Event, EventLog, EventType};
use super::record;
use super::wal::{Entries, Wal};
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
    pub wal: Wal,
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
    /// Runs until every sender is gone, or a logged group cannot be applied.
    pub fn run(mut self, rx: mpsc::Receiver<(WriteOp, Reply)>) {
        let mut next = *lock(&self.applied);
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(op) => group.push(op),
                    Err(_) => break,
                }
            }
            match self.commit(group, next) {
                Some(rv) => next = rv,
                None => return,
            }
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
    /// it in `entries` at revision `rv`.
    fn stage(
        &self,
        op: WriteOp,
        rv: Revision,
        overlay: &mut HashMap<String, Seen>,
        entries: &mut Entries,
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
                entries.push((record::obj_key(&key), None));
                overlay.insert(key.clone(), None);
            }
            _ => {
                entries.push((record::obj_key(&key), Some(bytes.clone())));
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
        entries.push((
            record::ev_key(rv).to_vec(),
            Some(record::encode_event(&event, &bytes, prev_bytes.as_deref()).into()),
        ));
        if rv > self.history {
            entries.push((record::ev_key(rv - self.history).to_vec(), None));
        }
        Ok(Arc::new(event))
    }

    /// Logs, applies and publishes one group; returns the newest revision,
    /// or None when the store can take no more writes.
    fn commit(&mut self, group: Vec<(WriteOp, Reply)>, applied: Revision) -> Option<Revision> {
        let mut entries = Entries::new();
        let mut overlay = HashMap::new();
        let mut events = Vec::new();
        let mut replies = Vec::new();
        let mut rv = applied;
        for (op, reply) in group {
            match self.stage(op, rv + 1, &mut overlay, &mut entries) {
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
            return Some(applied);
        }
        if let Some(h) = &self.group_writes {
            h.observe(events.len() as f64);
        }
        entries.push((record::REV_KEY.to_vec(), Some(rv.to_be_bytes()[..].into())));
        let fail = |replies: Vec<(Reply, Arc<Event>)>| {
            for (reply, _) in replies {
                let _ = reply.send(Err(StoreError::Closed));
            }
        };
        if let Err(e) = self.wal.append(rv, &entries) {
            // Nothing reached the tree: the next group takes these revisions
            // and its record overwrites this one.
            error!(error = %e, "writing the store log failed");
            fail(replies);
            return Some(applied);
        }
        {
            let mut guard = lock(&self.applied);
            if let Err(e) = apply(&self.tree, entries) {
                // The log holds a group the tree refused; writing on would
                // reuse its revisions. Stop: a restart applies it from the log.
                error!(error = %e, "applying a logged group to the store failed; the store stops taking writes");
                fail(replies);
                self.cache.clear();
                return None;
            }
            *guard = rv;
            self.cache
                .apply(overlay.iter().map(|(key, seen)| (key, seen.clone())));
        }
        self.log.publish(events);
        for (reply, ev) in replies {
            let _ = reply.send(Ok(StoredObject {
                key: ev.key.clone(),
                rv: ev.rv,
                value: ev.object.clone(),
            }));
        }
        Some(rv)
    }
}

/// Writes a group's entries into the tree, key by key. Not as a sled batch:
/// the log already makes the group atomic and durable, and each sled batch
/// writes and syncs sled's own log buffers (two syncs per group). Applying
/// a group twice, as recovery may, leaves the same state: every entry is a
/// key's whole value.
pub fn apply(tree: &sled::Tree, entries: Entries) -> Result<(), sled::Error> {
    for (key, value) in entries {
        match value {
            Some(v) => tree.insert(key, v)?,
            None => tree.remove(key)?,
        };
    }
    Ok(())
}
