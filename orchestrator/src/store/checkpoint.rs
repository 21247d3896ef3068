//! Flushes the sled tree in the background so the write-ahead log can let go
//! of segments. A checkpoint reads the applied revision, flushes the tree
//! (everything applied before is then durable), records that revision in
//! the tree and flushes again; segments whose last revision it covers
//! become the next spare (or are removed). Also keeps one spare ready so
//! the writer never waits for a segment to be allocated.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{debug, error};

use super::events::lock;
use super::record::CHECKPOINT_KEY;
use super::wal::{self, Sealed};
use super::Revision;

/// Flush this often even when no segment filled, so a restart replays little.
const EVERY: Duration = Duration::from_secs(5);

pub struct Checkpointer {
    pub db: sled::Db,
    pub tree: sled::Tree,
    pub applied: Arc<Mutex<Revision>>,
    pub dir: PathBuf,
}

impl Checkpointer {
    /// Runs until the writer is gone.
    pub fn run(self, sealed: Receiver<Sealed>) {
        let mut waiting: Vec<Sealed> = Vec::new();
        let mut made = 0u64;
        loop {
            // A sealed segment means the writer just took the spare: make
            // the next one before anything else, so it is ready long before
            // the writer fills its segment (without one, the writer grows a
            // new file and must fdatasync every record).
            self.keep_a_spare(&mut made);
            match sealed.recv_timeout(EVERY) {
                Ok(s) => {
                    waiting.push(s);
                    waiting.extend(sealed.try_iter());
                    self.keep_a_spare(&mut made);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let covered = match checkpoint(&self.db, &self.tree, &self.applied) {
                Ok(rv) => rv,
                Err(e) => {
                    error!(error = %e, "checkpointing the store tree failed; the log keeps its segments");
                    continue;
                }
            };
            let mut kept = Vec::new();
            for s in waiting.drain(..) {
                if s.last_rev > covered {
                    kept.push(s);
                    continue;
                }
                match wal::retire(&self.dir, s.seq) {
                    Ok(()) => debug!(seq = s.seq, "retired log segment"),
                    Err(e) => {
                        error!(seq = s.seq, error = %e, "retiring a log segment failed");
                        kept.push(s);
                    }
                }
            }
            waiting = kept;
        }
    }

    fn keep_a_spare(&self, made: &mut u64) {
        match wal::has_spare(&self.dir) {
            Ok(true) => {}
            Ok(false) => {
                *made += 1;
                if let Err(e) = wal::make_spare(&self.dir, &format!("new-{made}")) {
                    error!(error = %e, "preparing a log segment failed");
                }
            }
            Err(e) => error!(error = %e, "listing log segments failed"),
        }
    }
}

/// Makes the tree durable up to the applied revision and records that
/// revision as the one recovery starts after; returns it.
pub fn checkpoint(
    db: &sled::Db,
    tree: &sled::Tree,
    applied: &Mutex<Revision>,
) -> Result<Revision, sled::Error> {
    // Read before the flush: every group at or below it is in the tree by
    // then (the writer applies a group while holding this lock).
    let covered = *lock(applied);
    db.flush()?;
    tree.insert(CHECKPOINT_KEY, &covered.to_be_bytes()[..])?;
    db.flush()?;
    Ok(covered)
}
