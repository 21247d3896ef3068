//! Persistent object storage behind the API server.
//!
//! The contract mirrors what Kubernetes expects of etcd: keys laid out as
//! `/registry/{group}/{resource}/{namespace}/{name}`, one global monotonic
//! revision stamped into every object's `metadata.resourceVersion`,
//! optimistic concurrency on writes, and an ordered event log so a watch can
//! resume from any revision still in history (410 Gone past compaction).
//!
//! A write is acknowledged only once it is durable; concurrent writes share
//! one log record and one sync (group commit).

mod cache;
mod checkpoint;
mod events;
mod record;
mod sled_store;
mod wal;
mod writer;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

pub use events::{Event, EventType, Fanout, WatchNext, WatchReceiver};
pub use sled_store::{SledStore, SledStoreConfig};
pub use wal::Durability;

/// A monotonic store revision; rendered as `metadata.resourceVersion`.
pub type Revision = u64;

/// An object as stored, with the revision of its last write.
#[derive(Clone, Debug)]
pub struct StoredObject {
    pub key: String,
    pub rv: Revision,
    pub value: Arc<Value>,
}

/// One page of a list.
#[derive(Debug, Default)]
pub struct ListPage {
    pub items: Vec<StoredObject>,
    /// The store revision the page was read at.
    pub rv: Revision,
    /// Key to continue after, when `limit` cut the page short.
    pub continue_after: Option<String>,
    /// How many matching items follow the page (counted, so exact).
    pub remaining: u64,
}

/// One page of a list as stored JSON, for answers that need no decoding.
#[derive(Debug, Default)]
pub struct RawPage {
    /// (key, the object's JSON with its resourceVersion)
    pub items: Vec<(String, bytes::Bytes)>,
    pub rv: Revision,
    pub continue_after: Option<String>,
    pub remaining: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{key} already exists")]
    AlreadyExists { key: String },
    #[error("{key} not found")]
    NotFound { key: String },
    #[error("{key}: the object has been modified (resourceVersion {expected} is stale, current is {actual})")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    #[error("too old resource version: {requested} (history starts after {compacted})")]
    Gone {
        requested: Revision,
        compacted: Revision,
    },
    #[error("storage backend failed: {0}")]
    Backend(#[from] sled::Error),
    #[error("the store's write-ahead log failed: {0}")]
    Log(#[source] std::io::Error),
    #[error("stored record {key} is not valid JSON: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the store is shutting down or its commit task failed")]
    Closed,
}

/// The object store: what the API server's registry reads and writes.
///
/// Implementations stamp `metadata.resourceVersion` on every write and must
/// not acknowledge a write before it is durable.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<StoredObject>, StoreError>;

    /// Objects whose key starts with `prefix`, in key order, after
    /// `start_after` if given, keeping those `filter` accepts, at most
    /// `limit` of them.
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
        filter: &(dyn for<'v> Fn(&'v Value) -> bool + Send + Sync),
    ) -> Result<ListPage, StoreError>;

    /// Like `list` without a filter, handing back the stored JSON as is:
    /// the fast path for unfiltered lists, which need no decoding at all.
    async fn list_raw(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<RawPage, StoreError>;

    async fn create(&self, key: &str, value: Value) -> Result<StoredObject, StoreError>;

    /// Replace the object at `key`. With `expected`, fail with `Conflict`
    /// unless the stored revision is exactly that.
    async fn update(
        &self,
        key: &str,
        expected: Option<Revision>,
        value: Value,
    ) -> Result<StoredObject, StoreError>;

    /// Remove the object at `key`, returning its last state stamped with the
    /// deletion's revision (as a watch's DELETED event carries it).
    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<StoredObject, StoreError>;

    /// Events for keys under `prefix` with revision greater than `from`.
    fn watch(&self, prefix: &str, from: Revision) -> Result<WatchReceiver, StoreError>;

    /// The newest revision applied.
    fn current_revision(&self) -> Revision;
}

/// Stamps `metadata.resourceVersion`; objects without metadata get one.
pub(crate) fn stamp_revision(value: &mut Value, rv: Revision) {
    if let Value::Object(map) = value {
        let meta = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(meta) = meta {
            meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
    }
}
