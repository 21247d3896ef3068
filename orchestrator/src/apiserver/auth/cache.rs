//! The RBAC policy in memory, kept current by a watch on the store, so
//! authorizing a request reads no storage (Kubernetes' RBAC authorizer
//! reads informer caches the same way).

use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use tracing::{debug, warn};

use super::rbac::{Policy, STORE_PREFIX};
use crate::store::{EventType, Revision, Store, StoreError, WatchNext};

pub struct PolicyCache {
    policy: RwLock<Policy>,
}

impl PolicyCache {
    /// Loads the policy and keeps following the store in the background.
    pub async fn start(store: Arc<dyn Store>) -> Result<Arc<PolicyCache>, StoreError> {
        let cache = Arc::new(PolicyCache {
            policy: RwLock::new(Policy::default()),
        });
        let rv = cache.reload(&*store).await?;
        tokio::spawn(follow(cache.clone(), store, rv));
        Ok(cache)
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Policy> {
        // A poisoned lock means a panic mid-apply of plain maps; the maps
        // are still whole, so keep serving.
        self.policy.read().unwrap_or_else(|p| p.into_inner())
    }

    async fn reload(&self, store: &dyn Store) -> Result<Revision, StoreError> {
        let page = store.list(STORE_PREFIX, None, None, &|_| true).await?;
        let mut fresh = Policy::default();
        for item in &page.items {
            fresh.apply(&item.key, Some(&item.value));
        }
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        debug!(
            objects = page.items.len(),
            rv = page.rv,
            "RBAC policy loaded"
        );
        Ok(page.rv)
    }
}

/// Applies every change after `rv`; relists (and watches on from the
/// list) when the watch falls behind or its history is gone.
async fn follow(cache: Arc<PolicyCache>, store: Arc<dyn Store>, mut rv: Revision) {
    loop {
        match store.watch(STORE_PREFIX, rv) {
            Ok(mut rx) => loop {
                match rx.next().await {
                    WatchNext::Event(ev) => {
                        let object = (ev.kind != EventType::Deleted).then_some(&*ev.object);
                        cache
                            .policy
                            .write()
                            .unwrap_or_else(|p| p.into_inner())
                            .apply(&ev.key, object);
                    }
                    WatchNext::Lagged => {
                        warn!("the RBAC policy watch fell behind; reloading");
                        break;
                    }
                    WatchNext::Closed => return,
                }
            },
            Err(e) => warn!(error = %e, "watching the RBAC policy failed; reloading"),
        }
        loop {
            match cache.reload(&*store).await {
                Ok(now) => {
                    rv = now;
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "reloading the RBAC policy failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}
