//! Container logs as kubelet keeps them: one file per container start, in
//! the CRI line format (`<RFC 3339 nano time> <stream> <F|P> <text>`), as
//! `pods/<namespace>_<name>_<uid>/<container>_<restart>.log`. Files are
//! opened per write and never held, so twenty thousand pods do not need
//! twenty thousand descriptors. Kubelet nests a directory per container;
//! Shoal does not, and makes the pod's directory at the first write, not
//! at the start: creating inodes was a fifth of the node's CPU when a
//! thousand pods started at once (ext4 searching past recently deleted
//! inodes after pods churned).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use shoal_runtime::{OutputSink, StdStream};
use tokio::sync::Notify;

/// When a log file passes this size it is rotated once (kubelet's default
/// `containerLogMaxSize`), so a chatty guest cannot fill the disk.
const MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;

/// The log of one start of one container, written by the guest and read
/// by `kubectl logs`.
pub struct ContainerLog {
    path: PathBuf,
    /// Wakes followers when lines are appended or the container ends.
    pub changed: Notify,
    finished: AtomicBool,
    /// Bytes in the current file: this log is its only writer, so counting
    /// spares a `stat` per write.
    size: AtomicU64,
}

impl ContainerLog {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// The container ended: stop followers.
    pub fn finish(&self) {
        self.finished.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    fn append(&self, bytes: &[u8]) {
        if self.size.load(Ordering::Relaxed) > MAX_LOG_BYTES {
            let _ = std::fs::rename(&self.path, self.path.with_extension("log.1"));
            self.size.store(0, Ordering::Relaxed);
        }
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
        };
        let file = match open() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self
                .path
                .parent()
                .map_or(Err(e), std::fs::create_dir_all)
                .and_then(|()| open()),
            other => other,
        };
        match file.and_then(|mut f| f.write_all(bytes)) {
            Ok(()) => {
                self.size.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "dropping container output")
            }
        }
    }
}

/// One CRI record: `F` ends a line, `P` is part of one still being written.
fn push_record(out: &mut Vec<u8>, ts: &str, stream: StdStream, text: &[u8], full: bool) {
    let _ = write!(
        out,
        "{ts} {} {} ",
        stream.as_str(),
        if full { 'F' } else { 'P' }
    );
    out.extend_from_slice(text);
    out.push(b'\n');
}

impl OutputSink for ContainerLog {
    /// Every write is recorded at once: complete lines as `F` records and
    /// any unterminated tail as a `P` record, as CRI runtimes do, so nothing
    /// waits in memory for a newline that may never come.
    fn write(&self, stream: StdStream, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let ts = k8s_openapi::jiff::Timestamp::now().to_string();
        let mut out = Vec::with_capacity(bytes.len() + 48);
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            push_record(&mut out, &ts, stream, &rest[..nl], true);
            rest = &rest[nl + 1..];
        }
        if !rest.is_empty() {
            push_record(&mut out, &ts, stream, rest, false);
        }
        self.append(&out);
        self.changed.notify_waiters();
    }
}

/// Every container log on the node, by pod uid and container name.
#[derive(Default)]
pub struct LogStore {
    root: PathBuf,
    current: Mutex<HashMap<(String, String), Arc<ContainerLog>>>,
}

/// Where a pod's logs live on disk.
pub fn pod_dir(root: &Path, namespace: &str, name: &str, uid: &str) -> PathBuf {
    root.join(format!("{namespace}_{name}_{uid}"))
}

impl LogStore {
    pub fn new(root: PathBuf) -> LogStore {
        LogStore {
            root,
            current: Mutex::new(HashMap::new()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The log a container's `restart`-th start writes to; nothing is
    /// created on disk until it writes.
    pub fn open(
        &self,
        pod_dir: &Path,
        uid: &str,
        container: &str,
        restart: i32,
    ) -> std::io::Result<Arc<ContainerLog>> {
        let path = pod_dir.join(format!("{container}_{restart}.log"));
        // A node restarted mid-start appends to what is there.
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        let log = Arc::new(ContainerLog {
            path,
            changed: Notify::new(),
            finished: AtomicBool::new(false),
            size: AtomicU64::new(size),
        });
        if let Ok(mut cur) = self.current.lock() {
            cur.insert((uid.to_string(), container.to_string()), log.clone());
        }
        Ok(log)
    }

    /// The live log of a container, if it has started on this node.
    pub fn current(&self, uid: &str, container: &str) -> Option<Arc<ContainerLog>> {
        self.current
            .lock()
            .ok()?
            .get(&(uid.to_string(), container.to_string()))
            .cloned()
    }

    /// Forgets a deleted pod and removes its files.
    pub fn remove_pod(&self, pod_dir: &Path, uid: &str) {
        if let Ok(mut cur) = self.current.lock() {
            cur.retain(|(u, _), _| u != uid);
        }
        let _ = std::fs::remove_dir_all(pod_dir);
    }
}

/// Log files of a container, oldest start first: `(restart, path)`.
pub fn starts(pod_dir: &Path, container: &str) -> Vec<(i32, PathBuf)> {
    let mut out: Vec<(i32, PathBuf)> = std::fs::read_dir(pod_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            // `<container>_<restart>.log`; container names have no `_`.
            let (name, n) = p
                .file_name()?
                .to_str()?
                .strip_suffix(".log")?
                .rsplit_once('_')?;
            (name == container).then_some(())?;
            Some((n.parse().ok()?, p))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_appear_at_the_first_write_and_list_per_container() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        let store = LogStore::new(root.path().to_path_buf());
        let dir = pod_dir(store.root(), "default", "web", "uid-1");
        let first = store.open(&dir, "uid-1", "app", 0)?;
        assert!(!dir.exists(), "nothing on disk before the container writes");
        assert!(starts(&dir, "app").is_empty());
        first.write(StdStream::Stdout, b"one\ntwo");
        store
            .open(&dir, "uid-1", "app", 1)?
            .write(StdStream::Stderr, b"three\n");
        // A container whose name extends another's is not mixed in.
        store
            .open(&dir, "uid-1", "app-sidecar", 0)?
            .write(StdStream::Stdout, b"x\n");
        let found: Vec<i32> = starts(&dir, "app").into_iter().map(|(n, _)| n).collect();
        assert_eq!(found, [0, 1]);
        let text = std::fs::read_to_string(first.path())?;
        let records: Vec<&str> = text
            .lines()
            .map(|l| l.split_once(' ').map_or("", |(_, r)| r))
            .collect();
        assert_eq!(records, ["stdout F one", "stdout P two"]);
        store.remove_pod(&dir, "uid-1");
        assert!(!dir.exists());
        Ok(())
    }
}
