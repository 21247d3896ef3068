//! The embedded store: one sled tree holding objects (`o` + key), the event
//! log (`e` + big-endian revision) and the revision counter (`m/rv`).
//! Each write is one atomic sled batch of all three, so a crash never leaves
//! an object without its event or a revision handed out twice.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use prometheus::HistogramVec;
use serde_json::{json, Value};
use tracing::{info, instrument};

use super::commit::{Committer, Ticket};
use super::events::{lock, Event, EventLog, EventType, WatchReceiver};
use super::{stamp_revision, ListPage, Revision, Store, StoreError, StoredObject};

const REV_KEY: &[u8] = b"m/rv";

pub struct SledStoreConfig {
    pub path: PathBuf,
    /// Events kept for watch resume; older revisions answer 410 Gone.
    pub history: usize,
    pub op_latency: Option<HistogramVec>,
}

pub struct SledStore {
    tree: sled::Tree,
    /// Serialises writers so revisions, batches and queued events agree in order.
    write: Mutex<Revision>,
    log: Arc<EventLog>,
    committer: Arc<Committer>,
    history: u64,
    op_latency: Option<HistogramVec>,
}

fn obj_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(b'o');
    k.extend_from_slice(key.as_bytes());
    k
}

fn ev_key(rv: Revision) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'e';
    k[1..].copy_from_slice(&rv.to_be_bytes());
    k
}

fn parse(key: &str, bytes: &[u8]) -> Result<Value, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        key: key.to_string(),
        source,
    })
}

fn rv_of(value: &Value) -> Revision {
    value
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl SledStore {
    /// Opens (or creates) the store and starts its commit task; call from
    /// within a tokio runtime.
    pub fn open(cfg: SledStoreConfig) -> Result<Arc<Self>, StoreError> {
        let db = sled::Config::new()
            .path(&cfg.path)
            // We flush explicitly (group commit); sled's timer would only add fsyncs.
            .flush_every_ms(None)
            .open()?;
        let tree = db.open_tree("registry")?;
        let current = match tree.get(REV_KEY)? {
            Some(b) => {
                let mut a = [0u8; 8];
                if b.len() == 8 {
                    a.copy_from_slice(&b);
                }
                u64::from_be_bytes(a)
            }
            None => 0,
        };
        let history = load_history(&tree)?;
        let compacted = history.first().map(|e| e.rv - 1).unwrap_or(current);
        info!(path = %cfg.path.display(), revision = current, events = history.len(), "opened store");
        let log = Arc::new(EventLog::new(history, compacted, cfg.history));
        let committer = Committer::new();
        let flush_db = db.clone();
        tokio::spawn(committer.clone().run(log.clone(), move || {
            let db = flush_db.clone();
            // A blocking flush on tokio's pooled blocking threads: sled's
            // flush_async hands every call to its own pool, which kept
            // spawning threads under load.
            async move {
                match tokio::task::spawn_blocking(move || db.flush()).await {
                    Ok(r) => r.map(|_| ()).map_err(|e| e.to_string()),
                    Err(e) => Err(format!("flush task failed: {e}")),
                }
            }
        }));
        Ok(Arc::new(SledStore {
            tree,
            write: Mutex::new(current),
            log,
            committer,
            history: cfg.history.max(1) as u64,
            op_latency: cfg.op_latency,
        }))
    }

    fn observe(&self, op: &str, started: Instant) {
        if let Some(h) = &self.op_latency {
            h.with_label_values(&[op])
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// Applies one write under the write lock and queues it for commit.
    fn apply(
        &self,
        key: &str,
        check: impl FnOnce(
            Option<Value>,
        ) -> Result<(EventType, Option<Value>, Option<Value>), StoreError>,
    ) -> Result<(StoredObject, Ticket), StoreError> {
        let okey = obj_key(key);
        let mut current = lock(&self.write);
        let old = match self.tree.get(&okey)? {
            Some(b) => Some(parse(key, &b)?),
            None => None,
        };
        // `check` returns the event type, the new value (None: delete) and the
        // previous value for the event.
        let (kind, new, prev) = check(old)?;
        let rv = *current + 1;
        let mut batch = sled::Batch::default();
        let object = match (new, &prev) {
            (Some(mut v), _) => {
                stamp_revision(&mut v, rv);
                batch.insert(
                    okey,
                    serde_json::to_vec(&v).map_err(|source| corrupt(key, source))?,
                );
                v
            }
            (None, Some(p)) => {
                let mut v = p.clone();
                stamp_revision(&mut v, rv);
                batch.remove(okey);
                v
            }
            (None, None) => return Err(StoreError::NotFound { key: key.into() }),
        };
        let object = Arc::new(object);
        let record = json!({"type": kind.as_str(), "key": key, "object": &*object, "prev": prev});
        batch.insert(
            &ev_key(rv)[..],
            serde_json::to_vec(&record).map_err(|source| corrupt(key, source))?,
        );
        if rv > self.history {
            batch.remove(&ev_key(rv - self.history)[..]);
        }
        batch.insert(REV_KEY, &rv.to_be_bytes()[..]);
        self.tree.apply_batch(batch)?;
        *current = rv;
        let event = Arc::new(Event {
            rv,
            kind,
            key: key.to_string(),
            object: object.clone(),
            prev: prev.map(Arc::new),
        });
        let ticket = self.committer.enqueue(event);
        Ok((
            StoredObject {
                key: key.to_string(),
                rv,
                value: object,
            },
            ticket,
        ))
    }
}

fn corrupt(key: &str, source: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        source,
    }
}

fn load_history(tree: &sled::Tree) -> Result<Vec<Arc<Event>>, StoreError> {
    let mut out = Vec::new();
    for kv in tree.scan_prefix(b"e") {
        let (k, v) = kv?;
        if k.len() != 9 {
            continue;
        }
        let mut a = [0u8; 8];
        a.copy_from_slice(&k[1..]);
        let rv = u64::from_be_bytes(a);
        let rec = parse("event log", &v)?;
        let kind = rec
            .get("type")
            .and_then(Value::as_str)
            .and_then(EventType::parse)
            .unwrap_or(EventType::Modified);
        let key = rec.get("key").and_then(Value::as_str).unwrap_or_default();
        out.push(Arc::new(Event {
            rv,
            kind,
            key: key.to_string(),
            object: Arc::new(rec.get("object").cloned().unwrap_or(Value::Null)),
            prev: rec
                .get("prev")
                .filter(|p| !p.is_null())
                .cloned()
                .map(Arc::new),
        }));
    }
    Ok(out)
}

#[async_trait]
impl Store for SledStore {
    async fn get(&self, key: &str) -> Result<Option<StoredObject>, StoreError> {
        let started = Instant::now();
        let out = match self.tree.get(obj_key(key))? {
            Some(b) => {
                let value = parse(key, &b)?;
                Some(StoredObject {
                    key: key.to_string(),
                    rv: rv_of(&value),
                    value: Arc::new(value),
                })
            }
            None => None,
        };
        self.observe("get", started);
        Ok(out)
    }

    #[instrument(level = "trace", skip(self, filter))]
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
        filter: &(dyn for<'v> Fn(&'v Value) -> bool + Send + Sync),
    ) -> Result<ListPage, StoreError> {
        let started = Instant::now();
        let opk = obj_key(prefix);
        // Scan under the write lock so the page and its revision agree
        // exactly: a watch from that revision then misses and repeats nothing.
        // Values are reference-counted slices; parsing happens after.
        let (rv, raw) = {
            let guard = lock(&self.write);
            let iter = match start_after {
                Some(after) => {
                    let mut from = obj_key(after);
                    from.push(0);
                    self.tree.range(from..)
                }
                None => self.tree.range(opk.clone()..),
            };
            let mut raw = Vec::new();
            for kv in iter {
                let (k, v) = kv?;
                if !k.starts_with(&opk) {
                    break;
                }
                raw.push((k, v));
            }
            (*guard, raw)
        };
        let mut page = ListPage {
            rv,
            ..Default::default()
        };
        for (k, v) in raw {
            let key = String::from_utf8_lossy(&k[1..]).into_owned();
            let value = parse(&key, &v)?;
            if !filter(&value) {
                continue;
            }
            if limit.is_some_and(|l| page.items.len() >= l) {
                page.remaining += 1;
                if page.continue_after.is_none() {
                    page.continue_after = page.items.last().map(|o| o.key.clone());
                }
                continue;
            }
            page.items.push(StoredObject {
                key,
                rv: rv_of(&value),
                value: Arc::new(value),
            });
        }
        self.observe("list", started);
        Ok(page)
    }

    async fn create(&self, key: &str, value: Value) -> Result<StoredObject, StoreError> {
        let started = Instant::now();
        let (obj, ticket) = self.apply(key, |old| match old {
            Some(_) => Err(StoreError::AlreadyExists { key: key.into() }),
            None => Ok((EventType::Added, Some(value), None)),
        })?;
        ticket.wait().await?;
        self.observe("create", started);
        Ok(obj)
    }

    async fn update(
        &self,
        key: &str,
        expected: Option<Revision>,
        value: Value,
    ) -> Result<StoredObject, StoreError> {
        let started = Instant::now();
        let (obj, ticket) = self.apply(key, |old| {
            let old = old.ok_or_else(|| StoreError::NotFound { key: key.into() })?;
            let actual = rv_of(&old);
            if let Some(expected) = expected.filter(|e| *e != actual) {
                return Err(StoreError::Conflict {
                    key: key.into(),
                    expected,
                    actual,
                });
            }
            Ok((EventType::Modified, Some(value), Some(old)))
        })?;
        ticket.wait().await?;
        self.observe("update", started);
        Ok(obj)
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<StoredObject, StoreError> {
        let started = Instant::now();
        let (obj, ticket) = self.apply(key, |old| {
            let old = old.ok_or_else(|| StoreError::NotFound { key: key.into() })?;
            let actual = rv_of(&old);
            if let Some(expected) = expected.filter(|e| *e != actual) {
                return Err(StoreError::Conflict {
                    key: key.into(),
                    expected,
                    actual,
                });
            }
            Ok((EventType::Deleted, None, Some(old)))
        })?;
        ticket.wait().await?;
        self.observe("delete", started);
        Ok(obj)
    }

    fn watch(&self, prefix: &str, from: Revision) -> Result<WatchReceiver, StoreError> {
        self.log.subscribe(prefix, from)
    }

    fn current_revision(&self) -> Revision {
        *lock(&self.write)
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.committer.close();
    }
}

impl SledStore {
    pub fn watchers(&self) -> usize {
        self.log.watchers()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::events::WatchNext;

    fn open(dir: &std::path::Path) -> Arc<SledStore> {
        SledStore::open(SledStoreConfig {
            path: dir.join("db"),
            history: 100,
            op_latency: None,
        })
        .expect("open store")
    }

    #[tokio::test]
    async fn crud_with_revisions_and_conflicts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        let a = s
            .create("/r/x/a", json!({"metadata": {"name": "a"}}))
            .await
            .expect("create");
        assert_eq!(a.rv, 1);
        assert!(matches!(
            s.create("/r/x/a", json!({})).await,
            Err(StoreError::AlreadyExists { .. })
        ));
        let b = s
            .update("/r/x/a", Some(1), json!({"v": 2}))
            .await
            .expect("update");
        assert_eq!(b.value["metadata"]["resourceVersion"], "2");
        assert!(matches!(
            s.update("/r/x/a", Some(1), json!({})).await,
            Err(StoreError::Conflict {
                expected: 1,
                actual: 2,
                ..
            })
        ));
        s.create("/r/y/b", json!({})).await.expect("create b");
        let page = s.list("/r/x/", None, None, &|_| true).await.expect("list");
        assert_eq!(page.items.len(), 1);
        let d = s.delete("/r/x/a", None).await.expect("delete");
        assert_eq!(d.rv, 4);
        assert!(s.get("/r/x/a").await.expect("get").is_none());
    }

    #[tokio::test]
    async fn pagination_counts_remaining() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        for i in 0..5 {
            s.create(&format!("/p/{i}"), json!({}))
                .await
                .expect("create");
        }
        let p1 = s.list("/p/", None, Some(2), &|_| true).await.expect("list");
        assert_eq!(p1.items.len(), 2);
        assert_eq!(p1.remaining, 3);
        let after = p1.continue_after.expect("continue");
        let p2 = s
            .list("/p/", Some(&after), Some(10), &|_| true)
            .await
            .expect("list");
        assert_eq!(p2.items.len(), 3);
        assert!(p2.continue_after.is_none());
    }

    #[tokio::test]
    async fn reopen_keeps_objects_and_watch_history() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = open(dir.path());
            s.create("/w/a", json!({})).await.expect("create");
            s.create("/w/b", json!({})).await.expect("create");
        }
        // sled releases its lock when the last handle drops; the commit task holds one.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let s = loop {
            match SledStore::open(SledStoreConfig {
                path: dir.path().join("db"),
                history: 100,
                op_latency: None,
            }) {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        assert_eq!(s.current_revision(), 2);
        let mut w = s.watch("/w/", 1).expect("watch");
        match w.next().await {
            WatchNext::Event(e) => assert_eq!(e.key, "/w/b"),
            _ => panic!("expected the second create from history"),
        }
    }
}
