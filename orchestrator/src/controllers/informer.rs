//! Shared informers: one list-and-watch per resource, an in-memory cache of
//! its objects, and change handlers that controllers register to feed their
//! work queues (client-go's shared informer, kept small). Every controller
//! reads the same caches, so a reconcile costs no list call.
//!
//! Controllers also write their own results into the cache (`assume`):
//! Shoal's resourceVersion is one global counter, so the cache can always
//! keep the newer of what a controller wrote and what the watch delivered.
//! That replaces client-go's "expectations": a ReplicaSet that has just
//! created ten pods sees them on its next pass even if the watch has not.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::Resource;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{debug, warn};

/// The cache key Kubernetes uses: `namespace/name`, or `name` when
/// cluster-scoped.
pub fn key_of<K: Resource>(obj: &K) -> String {
    let m = obj.meta();
    let name = m.name.as_deref().unwrap_or_default();
    match m.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

/// Splits a key back into namespace (empty when cluster-scoped) and name.
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

fn revision<K: Resource>(obj: &K) -> u64 {
    obj.meta()
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// (old, new) of one change.
type Change<K> = (Option<Arc<K>>, Option<Arc<K>>);

/// Called with (old, new): new is None for a deletion, old None for an add.
type Handler<K> = Box<dyn Fn(Option<&K>, Option<&K>) + Send + Sync>;

/// The index bucket an object sits in: its controller's uid, or, when no
/// controller owns it, its namespace. A ReplicaSet's reconcile reads its
/// own pods and the namespace's orphans from here instead of scanning the
/// namespace: with a thousand pods that scan (twice per pass, pointer-chasing
/// through every pod's metadata) was a tenth of a scale-up's CPU.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Bucket {
    Controller(String),
    Orphan(String),
}

fn bucket_of<K: Resource>(obj: &K) -> Bucket {
    let m = obj.meta();
    match super::owners::controller_of(m) {
        Some(r) => Bucket::Controller(r.uid.clone()),
        None => Bucket::Orphan(m.namespace.clone().unwrap_or_default()),
    }
}

struct Cache<K> {
    objects: HashMap<String, Arc<K>>,
    /// `objects` again, by [`Bucket`]; kept in step by `put` and `take`.
    by_owner: HashMap<Bucket, HashMap<String, Arc<K>>>,
    /// Revisions at which keys were deleted, so a late event about the old
    /// object cannot bring it back.
    tombstones: HashMap<String, u64>,
}

impl<K: Resource> Cache<K> {
    fn put(&mut self, key: String, obj: Arc<K>) -> Option<Arc<K>> {
        let old = self.take(&key);
        self.index(&key, &obj);
        self.objects.insert(key, obj);
        old
    }

    fn take(&mut self, key: &str) -> Option<Arc<K>> {
        let old = self.objects.remove(key)?;
        let bucket = bucket_of(old.as_ref());
        if let Some(b) = self.by_owner.get_mut(&bucket) {
            b.remove(key);
            if b.is_empty() {
                self.by_owner.remove(&bucket);
            }
        }
        Some(old)
    }

    /// Files `obj` under its bucket; `objects` is the caller's to update.
    fn index(&mut self, key: &str, obj: &Arc<K>) {
        self.by_owner
            .entry(bucket_of(obj.as_ref()))
            .or_default()
            .insert(key.to_string(), obj.clone());
    }

    fn bucket(&self, bucket: &Bucket) -> Vec<Arc<K>> {
        self.by_owner
            .get(bucket)
            .map(|b| b.values().cloned().collect())
            .unwrap_or_default()
    }
}

pub struct Informer<K> {
    resource: &'static str,
    cache: RwLock<Cache<K>>,
    handlers: RwLock<Vec<Handler<K>>>,
    synced: watch::Sender<bool>,
}

impl<K> Informer<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    pub fn new(resource: &'static str) -> Arc<Informer<K>> {
        let (synced, _) = watch::channel(false);
        Arc::new(Informer {
            resource,
            cache: RwLock::new(Cache {
                objects: HashMap::new(),
                by_owner: HashMap::new(),
                tombstones: HashMap::new(),
            }),
            handlers: RwLock::new(Vec::new()),
            synced,
        })
    }

    /// Registers a change handler; register before `start` to see the
    /// initial list. Handlers run inline and must be quick (enqueue keys).
    pub fn on_change(&self, f: impl Fn(Option<&K>, Option<&K>) + Send + Sync + 'static) {
        if let Ok(mut h) = self.handlers.write() {
            h.push(Box::new(f));
        }
    }

    /// Starts listing and watching `api` in the background.
    pub fn start(self: &Arc<Self>, api: Api<K>) {
        tokio::spawn(run(api, Arc::downgrade(self)));
    }

    pub fn list(&self) -> Vec<Arc<K>> {
        self.read(|c| c.objects.values().cloned().collect())
    }

    /// Objects in one namespace.
    pub fn list_namespace(&self, ns: &str) -> Vec<Arc<K>> {
        self.read(|c| {
            c.objects
                .values()
                .filter(|o| o.meta().namespace.as_deref() == Some(ns))
                .cloned()
                .collect()
        })
    }

    /// Objects whose controller (owner reference with `controller: true`)
    /// has `uid`, in any namespace.
    pub fn list_controlled_by(&self, uid: &str) -> Vec<Arc<K>> {
        self.read(|c| c.bucket(&Bucket::Controller(uid.to_string())))
    }

    /// Objects in one namespace that no controller owns.
    pub fn list_orphans(&self, ns: &str) -> Vec<Arc<K>> {
        self.read(|c| c.bucket(&Bucket::Orphan(ns.to_string())))
    }

    pub fn get(&self, key: &str) -> Option<Arc<K>> {
        self.read(|c| c.objects.get(key).cloned())
    }

    fn read<T>(&self, f: impl FnOnce(&Cache<K>) -> T) -> T {
        match self.cache.read() {
            Ok(c) => f(&c),
            Err(p) => f(&p.into_inner()),
        }
    }

    /// Resolves once the first list has landed in the cache.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Records an object a controller just wrote (its answer from the API),
    /// unless the cache already holds something newer.
    pub fn assume(&self, obj: K) {
        self.upsert(obj);
    }

    /// Records that a controller just deleted `obj`.
    pub fn assume_deleted(&self, obj: &K) {
        self.delete(obj, revision(obj));
    }

    fn upsert(&self, obj: K) {
        let key = key_of(&obj);
        let rv = revision(&obj);
        let obj = Arc::new(obj);
        let old = {
            let Ok(mut c) = self.cache.write() else {
                return;
            };
            if c.tombstones.get(&key).is_some_and(|t| rv != 0 && rv <= *t) {
                return;
            }
            if let Some(cur) = c.objects.get(&key) {
                if rv != 0 && revision(cur.as_ref()) >= rv {
                    return;
                }
            }
            c.tombstones.remove(&key);
            c.put(key, obj.clone())
        };
        self.notify(old.as_deref(), Some(&obj));
    }

    fn delete(&self, obj: &K, at: u64) {
        let key = key_of(obj);
        let old = {
            let Ok(mut c) = self.cache.write() else {
                return;
            };
            // A newer incarnation under the same name stays.
            if let Some(cur) = c.objects.get(&key) {
                if at != 0 && revision(cur.as_ref()) > at {
                    return;
                }
            }
            c.tombstones.insert(key.clone(), at);
            c.take(&key)
        };
        if let Some(old) = old {
            self.notify(Some(&old), None);
        }
    }

    /// Replaces the cache with a fresh list taken at `list_rv`, keeping
    /// anything a controller wrote after it.
    fn replace(&self, objs: Vec<K>, list_rv: u64) {
        let mut changes: Vec<Change<K>> = Vec::new();
        if let Ok(mut c) = self.cache.write() {
            let mut fresh: HashMap<String, Arc<K>> = HashMap::with_capacity(objs.len());
            for o in objs {
                fresh.insert(key_of(&o), Arc::new(o));
            }
            let mut next = HashMap::with_capacity(fresh.len());
            for (key, old) in c.objects.drain() {
                match fresh.remove(&key) {
                    Some(new) if revision(new.as_ref()) >= revision(old.as_ref()) => {
                        if revision(new.as_ref()) != revision(old.as_ref()) {
                            changes.push((Some(old), Some(new.clone())));
                        }
                        next.insert(key, new);
                    }
                    // Newer than the list: our own write, keep it.
                    Some(_) => {
                        next.insert(key, old);
                    }
                    None if revision(old.as_ref()) > list_rv => {
                        next.insert(key, old);
                    }
                    None => changes.push((Some(old), None)),
                }
            }
            for (key, new) in fresh {
                changes.push((None, Some(new.clone())));
                next.insert(key, new);
            }
            c.by_owner.clear();
            for (key, obj) in &next {
                c.index(key, obj);
            }
            c.objects = next;
            c.tombstones.retain(|_, at| *at > list_rv);
        }
        for (old, new) in &changes {
            self.notify(old.as_deref(), new.as_deref());
        }
        // `send` would drop the value while nobody is subscribed yet.
        self.synced.send_replace(true);
    }

    fn notify(&self, old: Option<&K>, new: Option<&K>) {
        let handlers = match self.handlers.read() {
            Ok(h) => h,
            Err(p) => p.into_inner(),
        };
        for h in handlers.iter() {
            h(old, new);
        }
    }
}

/// List, then watch from the list's revision; any break relists. Ends when
/// the informer is dropped.
async fn run<K>(api: Api<K>, inf: std::sync::Weak<Informer<K>>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let mut delay = Duration::from_millis(50);
    loop {
        let Some(resource) = inf.upgrade().map(|i| i.resource) else {
            return;
        };
        let list = match api.list(&ListParams::default()).await {
            Ok(l) => l,
            Err(e) => {
                warn!(resource, error = %e, "informer list failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        delay = Duration::from_millis(50);
        let mut rv = list.metadata.resource_version.clone().unwrap_or_default();
        match inf.upgrade() {
            Some(i) => i.replace(list.items, rv.parse().unwrap_or(0)),
            None => return,
        }
        let wp = WatchParams::default().timeout(290);
        'watch: loop {
            let mut stream = match api.watch(&wp, &rv).await {
                Ok(s) => s.boxed(),
                Err(e) => {
                    debug!(resource, error = %e, "informer watch failed; relisting");
                    break 'watch;
                }
            };
            while let Some(ev) = stream.next().await {
                let Some(i) = inf.upgrade() else { return };
                match ev {
                    Ok(WatchEvent::Added(o)) | Ok(WatchEvent::Modified(o)) => {
                        rv = o.meta().resource_version.clone().unwrap_or(rv);
                        i.upsert(o);
                    }
                    Ok(WatchEvent::Deleted(o)) => {
                        rv = o.meta().resource_version.clone().unwrap_or(rv);
                        let at = revision(&o);
                        i.delete(&o, at);
                    }
                    Ok(WatchEvent::Bookmark(b)) => rv = b.metadata.resource_version,
                    Ok(WatchEvent::Error(e)) => {
                        debug!(resource, code = e.code, message = %e.message, "informer watch ended; relisting");
                        break 'watch;
                    }
                    Err(e) => {
                        debug!(resource, error = %e, "informer watch broke; relisting");
                        break 'watch;
                    }
                }
            }
            // A clean server-side timeout: resume from where we are.
        }
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn pod(name: &str, rv: u64) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("default".into());
        p.metadata.resource_version = Some(rv.to_string());
        p
    }

    #[test]
    fn an_older_event_never_replaces_a_newer_write() {
        let inf = Informer::<Pod>::new("pods");
        inf.assume(pod("a", 10));
        inf.upsert(pod("a", 7));
        let got = inf.get("default/a").map(|p| revision(p.as_ref()));
        assert_eq!(got, Some(10));
    }

    #[test]
    fn a_deleted_object_is_not_resurrected_by_a_late_event() {
        let inf = Informer::<Pod>::new("pods");
        inf.upsert(pod("a", 5));
        inf.assume_deleted(&pod("a", 6));
        inf.upsert(pod("a", 6));
        assert!(inf.get("default/a").is_none());
        // A new pod under the same name, created later, is accepted.
        inf.upsert(pod("a", 9));
        assert!(inf.get("default/a").is_some());
    }

    #[tokio::test]
    async fn synced_is_seen_by_a_later_subscriber() {
        let inf = Informer::<Pod>::new("pods");
        inf.replace(vec![], 1);
        let waited = tokio::time::timeout(Duration::from_secs(1), inf.wait_synced()).await;
        assert!(
            waited.is_ok(),
            "a first list nobody was waiting for still counts"
        );
    }

    fn owned(name: &str, rv: u64, controller: Option<&str>) -> Pod {
        let mut p = pod(name, rv);
        p.metadata.owner_references = controller.map(|uid| {
            vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    uid: uid.into(),
                    controller: Some(true),
                    ..Default::default()
                },
            ]
        });
        p
    }

    fn names(pods: Vec<Arc<Pod>>) -> Vec<String> {
        let mut n: Vec<String> = pods
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn the_owner_index_follows_adoption_deletion_and_relists() {
        let inf = Informer::<Pod>::new("pods");
        inf.upsert(owned("a", 1, Some("rs-1")));
        inf.upsert(owned("b", 2, Some("rs-1")));
        inf.upsert(owned("c", 3, Some("rs-2")));
        inf.upsert(owned("orphan", 4, None));
        assert_eq!(names(inf.list_controlled_by("rs-1")), ["a", "b"]);
        assert_eq!(names(inf.list_orphans("default")), ["orphan"]);
        assert!(inf.list_orphans("other").is_empty());

        // Adopted: it leaves the orphans for its new controller.
        inf.assume(owned("orphan", 5, Some("rs-2")));
        assert!(inf.list_orphans("default").is_empty());
        assert_eq!(names(inf.list_controlled_by("rs-2")), ["c", "orphan"]);
        // Released and deleted.
        inf.upsert(owned("b", 6, None));
        inf.assume_deleted(&owned("a", 7, Some("rs-1")));
        assert!(inf.list_controlled_by("rs-1").is_empty());
        assert_eq!(names(inf.list_orphans("default")), ["b"]);

        // A relist rebuilds the index from what it keeps.
        inf.replace(
            vec![owned("c", 3, Some("rs-2")), owned("d", 8, Some("rs-1"))],
            8,
        );
        assert_eq!(names(inf.list_controlled_by("rs-1")), ["d"]);
        assert_eq!(names(inf.list_controlled_by("rs-2")), ["c"]);
        assert!(inf.list_orphans("default").is_empty());
    }

    #[test]
    fn relist_reports_removals_and_keeps_newer_writes() {
        let inf = Informer::<Pod>::new("pods");
        let removed = Arc::new(AtomicUsize::new(0));
        let r = removed.clone();
        inf.on_change(move |_, new| {
            if new.is_none() {
                r.fetch_add(1, Ordering::SeqCst);
            }
        });
        inf.upsert(pod("gone", 3));
        inf.assume(pod("mine", 20));
        inf.replace(vec![pod("other", 4)], 15);
        assert_eq!(removed.load(Ordering::SeqCst), 1);
        assert!(inf.get("default/mine").is_some());
        assert!(inf.get("default/other").is_some());
        assert!(inf.get("default/gone").is_none());
    }
}
