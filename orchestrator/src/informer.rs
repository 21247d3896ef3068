//! Informers: one list-and-watch per resource, an in-memory cache of its
//! objects, and a wake-up for whoever depends on them (client-go's shared
//! informer, kept small). Consumers read the cache instead of listing, so a
//! scheduling pass over ten thousand pods costs no API call at all.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::Resource;
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};
use tracing::{debug, warn};

/// The cache key Kubernetes uses: `namespace/name`, or `name` when
/// cluster-scoped.
pub fn key_of<K: Resource>(obj: &K) -> String {
    let m = obj.meta();
    match &m.namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}/{}", m.name.clone().unwrap_or_default()),
        _ => m.name.clone().unwrap_or_default(),
    }
}

pub struct Informer<K> {
    cache: RwLock<HashMap<String, Arc<K>>>,
    /// Woken on every change (and every relist).
    changed: Arc<Notify>,
    synced: watch::Sender<bool>,
}

impl<K> Informer<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Starts listing and watching `api` in the background. `changed` is
    /// shared, so one consumer can wait on several informers at once.
    pub fn start(api: Api<K>, changed: Arc<Notify>) -> Arc<Informer<K>> {
        let (synced, _) = watch::channel(false);
        let inf = Arc::new(Informer {
            cache: RwLock::new(HashMap::new()),
            changed,
            synced,
        });
        tokio::spawn(run(api, Arc::downgrade(&inf)));
        inf
    }

    /// Every object, as last seen.
    pub fn list(&self) -> Vec<Arc<K>> {
        match self.cache.read() {
            Ok(c) => c.values().cloned().collect(),
            Err(p) => p.into_inner().values().cloned().collect(),
        }
    }

    pub fn get(&self, key: &str) -> Option<Arc<K>> {
        self.cache.read().ok()?.get(key).cloned()
    }

    /// Resolves once the first list has landed in the cache.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    fn replace(&self, objs: Vec<K>) {
        let fresh: HashMap<String, Arc<K>> = objs
            .into_iter()
            .map(|o| (key_of(&o), Arc::new(o)))
            .collect();
        if let Ok(mut c) = self.cache.write() {
            *c = fresh;
        }
        let _ = self.synced.send(true);
        self.changed.notify_waiters();
    }

    fn apply(&self, obj: K) {
        if let Ok(mut c) = self.cache.write() {
            c.insert(key_of(&obj), Arc::new(obj));
        }
        self.changed.notify_waiters();
    }

    fn remove(&self, obj: &K) {
        if let Ok(mut c) = self.cache.write() {
            c.remove(&key_of(obj));
        }
        self.changed.notify_waiters();
    }
}

/// List, then watch from the list's revision; any break relists. Ends when
/// the last holder of the informer drops it.
async fn run<K>(api: Api<K>, inf: std::sync::Weak<Informer<K>>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let mut delay = Duration::from_millis(50);
    loop {
        let list = match api.list(&ListParams::default()).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "informer list failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        delay = Duration::from_millis(50);
        let mut rv = list.metadata.resource_version.clone().unwrap_or_default();
        match inf.upgrade() {
            Some(i) => i.replace(list.items),
            None => return,
        }
        let wp = WatchParams::default().timeout(290);
        'watch: loop {
            let mut stream = match api.watch(&wp, &rv).await {
                Ok(s) => s.boxed(),
                Err(e) => {
                    debug!(error = %e, "informer watch failed; relisting");
                    break 'watch;
                }
            };
            while let Some(ev) = stream.next().await {
                let Some(i) = inf.upgrade() else { return };
                match ev {
                    Ok(WatchEvent::Added(o)) | Ok(WatchEvent::Modified(o)) => {
                        rv = o.meta().resource_version.clone().unwrap_or(rv);
                        i.apply(o);
                    }
                    Ok(WatchEvent::Deleted(o)) => {
                        rv = o.meta().resource_version.clone().unwrap_or(rv);
                        i.remove(&o);
                    }
                    Ok(WatchEvent::Bookmark(b)) => rv = b.metadata.resource_version,
                    Ok(WatchEvent::Error(e)) => {
                        debug!(code = e.code, message = %e.message, "informer watch ended; relisting");
                        break 'watch;
                    }
                    Err(e) => {
                        debug!(error = %e, "informer watch broke; relisting");
                        break 'watch;
                    }
                }
            }
            // A clean server-side timeout: resume from where we are.
        }
        tokio::time::sleep(delay).await;
    }
}
