//! Work done once per image digest however many pods ask at once:
//! compiling a module, unpacking an image. The first caller does it, the
//! others wait for its result; a failure is not kept, so a later pod tries
//! again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

pub(crate) struct PerDigest<T> {
    cells: Mutex<HashMap<String, Arc<OnceCell<T>>>>,
}

impl<T> PerDigest<T> {
    pub(crate) fn new() -> Self {
        PerDigest {
            cells: Mutex::new(HashMap::new()),
        }
    }

    /// The cell for `digest`, made on first use.
    pub(crate) fn cell(&self, digest: &str) -> Arc<OnceCell<T>> {
        let mut map = match self.cells.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(digest.to_string()).or_default().clone()
    }
}

/// One at a time per key: pulls of one image, or downloads of one blob,
/// that many pods start at once. The first does the work; the rest find it
/// done when their turn comes.
pub(crate) struct Flights {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Flights {
    pub(crate) fn new() -> Self {
        Flights {
            locks: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = match self.locks.lock() {
                Ok(m) => m,
                Err(poisoned) => poisoned.into_inner(),
            };
            map.entry(key.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }
}
