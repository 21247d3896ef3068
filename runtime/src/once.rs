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
