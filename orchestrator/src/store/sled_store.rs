//! The embedded store: one sled tree (layout in `record.rs`), one writer
//! thread doing group commit (`writer.rs`) through a write-ahead log
//! (`wal.rs`), a checkpointer flushing the tree behind it
//! (`checkpoint.rs`), and the in-memory event log that live watchers read
//! from.

use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use prometheus::{Histogram, HistogramVec};
use serde_json::Value;
use tokio::sync::oneshot;
use tracing::{info, instrument};

use super::cache::{self, ObjectCache};
use super::checkpoint::{checkpoint, Checkpointer};
use super::events::{lock, Event, EventLog, WatchReceiver};
use super::record::{self, CHECKPOINT_KEY, REV_KEY};
use super::wal::{self, Wal};
use super::writer::{apply, Reply, WriteOp, Writer};
use super::{ListPage, RawPage, Revision, Store, StoreError, StoredObject};

pub struct SledStoreConfig {
    pub path: PathBuf,
    /// Events kept for watch resume; older revisions answer 410 Gone.
    pub history: usize,
    pub op_latency: Option<HistogramVec>,
    /// Writes per durable flush, observed once per group.
    pub group_writes: Option<Histogram>,
    /// How far a write goes before it is acknowledged.
    pub sync: wal::Durability,
}

pub struct SledStore {
    tree: sled::Tree,
    /// Newest applied revision, held by the writer while it applies a group.
    applied: Arc<Mutex<Revision>>,
    log: Arc<EventLog>,
    /// To the writer thread; dropping it ends the thread.
    writes: Mutex<mpsc::Sender<(WriteOp, Reply)>>,
    op_latency: Option<HistogramVec>,
    cache: Arc<ObjectCache>,
}

impl SledStore {
    /// Opens (or creates) the store, brings the tree up to date from the
    /// write-ahead log, and starts the writer and checkpointer threads.
    pub fn open(cfg: SledStoreConfig) -> Result<Arc<Self>, StoreError> {
        let db = sled::Config::new()
            .path(&cfg.path)
            // The write-ahead log makes writes durable; the checkpointer
            // flushes the tree on its own schedule.
            .flush_every_ms(None)
            .open()?;
        let tree = db.open_tree("registry")?;
        let wal_dir = wal_dir(&cfg.path);
        let checkpointed = revision_at(&tree, CHECKPOINT_KEY)?;
        let missing = wal::recover(&wal_dir, checkpointed).map_err(StoreError::Log)?;
        let replayed = missing.len();
        for rec in missing {
            apply(&tree, rec.entries)?;
        }
        let current = revision_at(&tree, REV_KEY)?;
        let applied = Arc::new(Mutex::new(current));
        // The log's old segments go once the tree holds all they had.
        checkpoint(&db, &tree, &applied)?;
        let (sealed_tx, sealed_rx) = mpsc::channel();
        let wal = Wal::start(&wal_dir, cfg.sync, sealed_tx).map_err(StoreError::Log)?;
        let history = load_history(&tree)?;
        let compacted = history.first().map(|e| e.rv - 1).unwrap_or(current);
        info!(path = %cfg.path.display(), revision = current, replayed, events = history.len(), "opened store");
        let log = Arc::new(EventLog::new(history, compacted, cfg.history));
        let (tx, rx) = mpsc::channel();
        let cache = Arc::new(ObjectCache::new(cache::CAPACITY));
        let writer = Writer {
            tree: tree.clone(),
            wal,
            applied: applied.clone(),
            log: log.clone(),
            history: cfg.history.max(1) as u64,
            group_writes: cfg.group_writes,
            cache: cache.clone(),
        };
        let checkpointer = Checkpointer {
            db,
            tree: tree.clone(),
            applied: applied.clone(),
            dir: wal_dir,
        };
        let thread_failed = |e| StoreError::Backend(sled::Error::Io(e));
        std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || checkpointer.run(sealed_rx))
            .map_err(thread_failed)?;
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(thread_failed)?;
        Ok(Arc::new(SledStore {
            tree,
            applied,
            log,
            writes: Mutex::new(tx),
            op_latency: cfg.op_latency,
            cache,
        }))
    }

    fn observe(&self, op: &str, started: Instant) {
        if let Some(h) = &self.op_latency {
            h.with_label_values(&[op])
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// Hands a write to the writer thread and waits until it is durable.
    async fn write(&self, op: WriteOp, name: &str) -> Result<StoredObject, StoreError> {
        let started = Instant::now();
        let (tx, rx) = oneshot::channel();
        lock(&self.writes)
            .send((op, tx))
            .map_err(|_| StoreError::Closed)?;
        let out = rx.await.map_err(|_| StoreError::Closed)?;
        self.observe(name, started);
        out
    }

    /// Everything under `prefix` (after `start_after`), read while the writer
    /// cannot apply a group, so the page and its revision agree exactly: a
    /// watch from that revision then misses and repeats nothing. Values are
    /// reference-counted; decoding happens after the lock is released.
    #[allow(clippy::type_complexity)]
    fn scan(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<(Revision, Vec<(sled::IVec, sled::IVec)>), StoreError> {
        let opk = record::obj_key(prefix);
        let guard = lock(&self.applied);
        let iter = match start_after {
            Some(after) => {
                let mut from = record::obj_key(after);
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
        Ok((*guard, raw))
    }
}

/// Where the write-ahead log lives: beside the tree's directory, which sled owns.
fn wal_dir(tree_dir: &std::path::Path) -> PathBuf {
    let mut name = tree_dir.file_name().unwrap_or_default().to_os_string();
    name.push("-wal");
    tree_dir.with_file_name(name)
}

/// A revision the tree keeps under `key` (0 when absent).
fn revision_at(tree: &sled::Tree, key: &[u8]) -> Result<Revision, StoreError> {
    Ok(match tree.get(key)? {
        Some(b) if b.len() == 8 => {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b);
            u64::from_be_bytes(a)
        }
        _ => 0,
    })
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
        out.push(Arc::new(record::decode_event(u64::from_be_bytes(a), &v)?));
    }
    Ok(out)
}

#[async_trait]
impl Store for SledStore {
    async fn get(&self, key: &str) -> Result<Option<StoredObject>, StoreError> {
        let started = Instant::now();
        if let Some(c) = self.cache.get(key) {
            self.observe("get", started);
            return Ok(Some(StoredObject {
                key: key.to_string(),
                rv: c.rv,
                value: c.object,
            }));
        }
        let out = match self.tree.get(record::obj_key(key))? {
            Some(b) => {
                let (rv, value) = record::decode(key, &b)?;
                Some(StoredObject {
                    key: key.to_string(),
                    rv,
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
        let (rv, raw) = self.scan(prefix, start_after)?;
        let mut page = ListPage {
            rv,
            ..Default::default()
        };
        for (k, v) in raw {
            let key = String::from_utf8_lossy(&k[1..]).into_owned();
            let (obj_rv, value) = record::decode(&key, &v)?;
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
                rv: obj_rv,
                value: Arc::new(value),
            });
        }
        self.observe("list", started);
        Ok(page)
    }

    async fn list_raw(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<RawPage, StoreError> {
        let started = Instant::now();
        let (rv, raw) = self.scan(prefix, start_after)?;
        let mut page = RawPage {
            rv,
            ..Default::default()
        };
        let total = raw.len();
        for (k, v) in raw {
            if limit.is_some_and(|l| page.items.len() >= l) {
                page.continue_after = page.items.last().map(|(key, _)| key.clone());
                page.remaining = (total - page.items.len()) as u64;
                break;
            }
            let key = String::from_utf8_lossy(&k[1..]).into_owned();
            page.items.push((key, bytes::Bytes::copy_from_slice(&v)));
        }
        self.observe("list", started);
        Ok(page)
    }

    async fn create(&self, key: &str, value: Value) -> Result<StoredObject, StoreError> {
        self.write(
            WriteOp::Create {
                key: key.to_string(),
                value,
            },
            "create",
        )
        .await
    }

    async fn update(
        &self,
        key: &str,
        expected: Option<Revision>,
        value: Value,
    ) -> Result<StoredObject, StoreError> {
        self.write(
            WriteOp::Update {
                key: key.to_string(),
                expected,
                value,
            },
            "update",
        )
        .await
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<StoredObject, StoreError> {
        self.write(
            WriteOp::Delete {
                key: key.to_string(),
                expected,
            },
            "delete",
        )
        .await
    }

    fn watch(&self, prefix: &str, from: Revision) -> Result<WatchReceiver, StoreError> {
        self.log.subscribe(prefix, from)
    }

    fn current_revision(&self) -> Revision {
        *lock(&self.applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::events::{EventType, WatchNext};
    use serde_json::json;

    fn config(dir: &std::path::Path) -> SledStoreConfig {
        SledStoreConfig {
            path: dir.join("db"),
            history: 100,
            op_latency: None,
            group_writes: None,
            sync: wal::Durability::Written,
        }
    }

    fn open(dir: &std::path::Path) -> Arc<SledStore> {
        SledStore::open(config(dir)).expect("open store")
    }

    /// Retries `open` until sled's file lock is free: a dropped store's
    /// writer and checkpointer threads hold it until they see the store
    /// gone.
    async fn once_unlocked<T, E: std::fmt::Display>(mut open: impl FnMut() -> Result<T, E>) -> T {
        for _ in 0..500 {
            if let Ok(v) = open() {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await
        }
        open().unwrap_or_else(|e| panic!("still locked after 5 s: {e}"))
    }

    async fn reopen(dir: &std::path::Path) -> Arc<SledStore> {
        once_unlocked(|| SledStore::open(config(dir))).await
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_to_one_key_serialise() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        let creates = (0..16).map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.create("/c/x", json!({"i": i})).await })
        });
        let results = futures::future::join_all(creates).await;
        let ok = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        assert_eq!(ok, 1, "exactly one create of the same key wins");
        let rv = s.get("/c/x").await.expect("get").expect("present").rv;
        let updates = (0..16).map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.update("/c/x", Some(rv), json!({"u": i})).await })
        });
        let results = futures::future::join_all(updates).await;
        let ok = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        let conflicts = results
            .iter()
            .filter(|r| matches!(r, Ok(Err(StoreError::Conflict { .. }))))
            .count();
        assert_eq!((ok, conflicts), (1, 15));
    }

    #[tokio::test]
    async fn reads_agree_with_the_tree_past_the_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        // More objects than the cache holds: the oldest are read from disk.
        for i in 0..cache::CAPACITY + 10 {
            s.create(&format!("/r/x/{i}"), json!({"n": i}))
                .await
                .expect("create");
        }
        for i in [0, 5, cache::CAPACITY + 9] {
            let got = s
                .get(&format!("/r/x/{i}"))
                .await
                .expect("get")
                .expect("present");
            assert_eq!(got.value["n"], i);
            assert_eq!(got.rv, i as u64 + 1);
        }
        // An update and a delete are seen at once, through the cache or not.
        let last = format!("/r/x/{}", cache::CAPACITY + 9);
        s.update(&last, None, json!({"n": "new"}))
            .await
            .expect("update");
        let got = s.get(&last).await.expect("get").expect("present");
        assert_eq!(got.value["n"], "new");
        // A stale precondition is still caught when the writer reads the
        // current revision from the cache.
        assert!(matches!(
            s.update(&last, Some(1), json!({})).await,
            Err(StoreError::Conflict { .. })
        ));
        s.delete(&last, None).await.expect("delete");
        assert!(s.get(&last).await.expect("get").is_none());
        s.create(&last, json!({"n": "again"}))
            .await
            .expect("re-create");
        let got = s.get(&last).await.expect("get").expect("present");
        assert_eq!(got.value["n"], "again");
        drop(s);
        // What the cache served is what is on disk.
        let s = reopen(dir.path()).await;
        let got = s.get(&last).await.expect("get").expect("present");
        assert_eq!(got.value["n"], "again");
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

    /// A crash leaves the tree as of its last checkpoint: the log brings
    /// back every acknowledged write after it, in order, deletes included.
    #[tokio::test]
    async fn the_log_restores_what_the_tree_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        s.create("/r/x/a", json!({"v": 1})).await.expect("create a");
        s.create("/r/x/b", json!({"v": 1})).await.expect("create b");
        s.update("/r/x/a", Some(1), json!({"v": 2}))
            .await
            .expect("update a");
        s.delete("/r/x/b", None).await.expect("delete b");
        drop(s);
        // Roll the tree back to revision 1, as if its last flush had been
        // then and the process had died since.
        let db = once_unlocked(|| {
            sled::Config::new()
                .path(dir.path().join("db"))
                .flush_every_ms(None)
                .open()
        })
        .await;
        let tree = db.open_tree("registry").expect("tree");
        tree.insert(
            record::obj_key("/r/x/a"),
            &br#"{"v":1,"metadata":{"resourceVersion":"1"}}"#[..],
        )
        .expect("roll back a");
        tree.remove(record::obj_key("/r/x/b")).expect("forget b");
        for rv in 2..=4 {
            tree.remove(record::ev_key(rv)).expect("forget event");
        }
        tree.insert(REV_KEY, &1u64.to_be_bytes()[..]).expect("rv");
        tree.insert(CHECKPOINT_KEY, &1u64.to_be_bytes()[..])
            .expect("checkpoint");
        db.flush().expect("flush");
        drop((tree, db));

        let s = reopen(dir.path()).await;
        assert_eq!(s.current_revision(), 4);
        let a = s.get("/r/x/a").await.expect("get").expect("a is back");
        assert_eq!((a.rv, a.value["v"].clone()), (3, json!(2)));
        assert!(s.get("/r/x/b").await.expect("get").is_none());
        let mut w = s.watch("/r/x/", 1).expect("watch");
        let mut kinds = Vec::new();
        for _ in 0..3 {
            match w.next().await {
                WatchNext::Event(ev) => kinds.push((ev.rv, ev.kind)),
                _ => panic!("expected an event"),
            }
        }
        assert_eq!(
            kinds,
            vec![
                (2, EventType::Added),
                (3, EventType::Modified),
                (4, EventType::Deleted)
            ]
        );
        let c = s.create("/r/x/c", json!({})).await.expect("create c");
        assert_eq!(c.rv, 5);
    }

    #[tokio::test]
    async fn reopen_keeps_objects_and_watch_history() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = open(dir.path());
            s.create("/w/a", json!({})).await.expect("create");
            s.create("/w/b", json!({})).await.expect("create");
        }
        let s = reopen(dir.path()).await;
        assert_eq!(s.current_revision(), 2);
        let mut w = s.watch("/w/", 1).expect("watch");
        match w.next().await {
            WatchNext::Event(e) => assert_eq!(e.key, "/w/b"),
            _ => panic!("expected the second create from history"),
        }
    }
}
