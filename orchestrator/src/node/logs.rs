//! Container logs as kubelet keeps them: one file per container start, in
//! the CRI line format (`<RFC 3339 nano time> <stream> <F|P> <text>`).
//! Files are opened per write and never held, so twenty thousand pods do
//! not need twenty thousand descriptors.
//!
//! Unlike kubelet's `pods/<pod>/<container>/<n>.log` tree, the files lie
//! flat in the node's `logs/` directory as
//! `<namespace>_<pod>_<uid>_<container>_<restart>.log` (none of those parts
//! can hold a `_`), and a deleted pod's files are emptied and kept in
//! `logs/.free` for the next container start to rename into place. Both
//! are about inodes: on ext4 without a journal, creating one scans past
//! every inode deleted in the last half minute, and after pods churned a
//! thousand starts spent about a millisecond of CPU each there (profiled:
//! `find_inode_bit` → `recently_deleted`). A rename allocates nothing.
//! For the same reason a node starts with a stock of empty free files, so
//! even the first burst of pod starts allocates no inodes: measured on this
//! machine, a create takes about 20 µs normally but 400 µs in a directory
//! near thousands of just-deleted files (a previous node's data, say), and
//! a thousand of those were an eighth of a scale-up's CPU.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use shoal_runtime::{OutputSink, StdStream};
use tokio::sync::Notify;

use super::status_sync::PodKey;

/// When a log file passes this size it is rotated once (kubelet's default
/// `containerLogMaxSize`), so a chatty guest cannot fill the disk.
const MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;

/// Emptied files kept for reuse: enough for a thousand-pod scale-down and
/// back up; past it, files of deleted pods are removed.
const MAX_FREE_FILES: usize = 4096;

/// Empty files a node keeps ready from its start, for its first pod starts:
/// a burst of a thousand takes them without creating a file. Later bursts
/// reuse the files of deleted pods.
pub const PREFILLED_FREE_FILES: usize = 1024;

/// Where emptied files wait, inside the logs directory (so renames stay on
/// one filesystem).
const FREE_DIR: &str = ".free";

/// The log of one start of one container, written by the guest and read
/// by `kubectl logs`.
pub struct ContainerLog {
    path: PathBuf,
    /// The pod this log belongs to, to list its files for `remove_pod`.
    uid: String,
    files: Arc<Files>,
    /// Set once the file is on disk; the first write puts it there, from
    /// the free files where it can.
    placed: OnceLock<()>,
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

    /// Puts the file on disk before its first write, reusing a free one
    /// when there is one.
    fn place(&self) {
        if let Some(free) = self.files.take_free() {
            if let Err(e) = std::fs::rename(&free, &self.path) {
                // Creating it on the write still works; the free file is forgotten.
                tracing::debug!(from = %free.display(), error = %e, "reusing a log file failed");
            }
        }
        self.files.record(&self.uid, self.path.clone());
    }

    fn append(&self, bytes: &[u8]) {
        self.placed.get_or_init(|| self.place());
        if self.size.load(Ordering::Relaxed) > MAX_LOG_BYTES {
            let rotated = self.path.with_extension("log.1");
            if std::fs::rename(&self.path, &rotated).is_ok() {
                self.files.record(&self.uid, rotated);
            }
            self.size.store(0, Ordering::Relaxed);
        }
        // Opened without O_CREAT first: a create takes the directory's
        // inode lock even when the file exists, and with a thousand guests
        // writing at once they queued on it (`rwsem_spin_on_owner` under
        // perf); a plain open is a lock-free lookup.
        // Creating covers a file removed behind the node's back and the
        // first write after a rotation.
        let file = match std::fs::OpenOptions::new().append(true).open(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path),
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

/// One CRI record of a log file, read back.
#[derive(Debug, PartialEq)]
pub struct Record<'a> {
    pub ts: &'a str,
    pub stream: &'a str,
    /// `F`: the text ends a line; `P`: more of the line follows.
    pub full: bool,
    pub text: &'a str,
}

/// Parses `<ts> <stream> <F|P> <text>`; None for anything else.
pub fn parse_record(raw: &str) -> Option<Record<'_>> {
    let mut parts = raw.splitn(4, ' ');
    let (ts, stream, tag) = (parts.next()?, parts.next()?, parts.next()?);
    Some(Record {
        ts,
        stream,
        full: tag != "P",
        text: parts.next().unwrap_or(""),
    })
}

/// What was appended to `path` since `offset` (moved past it); a file
/// shorter than `offset` was rotated and is read from its start.
pub fn read_from(path: &Path, offset: &mut u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len < *offset {
        *offset = 0;
    }
    if f.seek(SeekFrom::Start(*offset)).is_err() {
        return String::new();
    }
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    *offset += s.len() as u64;
    s
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

/// Log files on disk by pod uid, and the emptied files waiting for reuse.
struct Files {
    free_dir: PathBuf,
    state: Mutex<FilesState>,
}

#[derive(Default)]
struct FilesState {
    by_pod: HashMap<String, Vec<PathBuf>>,
    free: Vec<PathBuf>,
    /// The next free file's name.
    next_free: u64,
}

impl Files {
    fn lock(&self) -> Option<MutexGuard<'_, FilesState>> {
        self.state.lock().ok()
    }

    fn take_free(&self) -> Option<PathBuf> {
        self.lock()?.free.pop()
    }

    fn record(&self, uid: &str, path: PathBuf) {
        if let Some(mut s) = self.lock() {
            let files = s.by_pod.entry(uid.to_string()).or_default();
            if !files.contains(&path) {
                files.push(path);
            }
        }
    }

    /// Empties a deleted pod's file and keeps it for reuse, or removes it
    /// when enough are kept already.
    fn recycle(&self, path: &Path) {
        let slot = self.lock().and_then(|mut s| {
            (s.free.len() < MAX_FREE_FILES).then(|| {
                s.next_free += 1;
                self.free_dir.join(s.next_free.to_string())
            })
        });
        let kept = slot.and_then(|slot| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(0))
                .and_then(|()| std::fs::rename(path, &slot))
                .ok()
                .map(|()| slot)
        });
        match kept {
            Some(slot) => {
                if let Some(mut s) = self.lock() {
                    s.free.push(slot);
                }
            }
            None => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// The pod uid, container and restart a log file's name holds, or `None`
/// for anything else (rotated halves included).
fn parse_name(file_name: &str) -> Option<(&str, &str, i32)> {
    let stem = file_name.strip_suffix(".log")?;
    let mut parts = stem.rsplitn(4, '_');
    let restart = parts.next()?.parse().ok()?;
    let container = parts.next()?;
    let uid = parts.next()?;
    Some((uid, container, restart))
}

/// Creates empty free files until there are `want`. A failure (a full
/// disk, say) only ends the stock early: containers then create their
/// files at their first write, as without it.
fn prefill_free(free_dir: &Path, state: &mut FilesState, want: usize) {
    let started = std::time::Instant::now();
    let mut made = 0usize;
    while state.free.len() < want {
        state.next_free += 1;
        let path = free_dir.join(state.next_free.to_string());
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(_) => {
                state.free.push(path);
                made += 1;
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "stocking free log files stopped");
                break;
            }
        }
    }
    if made > 0 {
        tracing::debug!(
            made,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "stocked free log files"
        );
    }
}

/// Every container log on the node, by pod uid and container name.
pub struct LogStore {
    root: PathBuf,
    files: Arc<Files>,
    current: Mutex<HashMap<(String, String), Arc<ContainerLog>>>,
}

impl LogStore {
    /// Opens the node's logs directory, finding the files and free files a
    /// previous run left, and tops the free files up to `prefill`. Blocks
    /// on the filesystem: call it off the async runtime.
    pub fn new(root: PathBuf, prefill: usize) -> std::io::Result<LogStore> {
        let free_dir = root.join(FREE_DIR);
        std::fs::create_dir_all(&free_dir)?;
        let mut state = FilesState::default();
        for entry in std::fs::read_dir(&root)?.flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            // A rotated half belongs with its file: `<...>.log.1`.
            let Some((uid, _, _)) = parse_name(name.strip_suffix(".1").unwrap_or(name)) else {
                continue;
            };
            state.by_pod.entry(uid.to_string()).or_default().push(path);
        }
        for entry in std::fs::read_dir(&free_dir)?.flatten() {
            let n = entry.file_name().to_str().and_then(|n| n.parse().ok());
            state.next_free = state.next_free.max(n.unwrap_or(0));
            state.free.push(entry.path());
        }
        prefill_free(&free_dir, &mut state, prefill);
        Ok(LogStore {
            root,
            files: Arc::new(Files {
                free_dir,
                state: Mutex::new(state),
            }),
            current: Mutex::new(HashMap::new()),
        })
    }

    /// The log a container's `restart`-th start writes to; nothing is
    /// put on disk until it writes.
    pub fn open(&self, pod: &PodKey, container: &str, restart: i32) -> Arc<ContainerLog> {
        let path = self.root.join(format!(
            "{}_{}_{}_{container}_{restart}.log",
            pod.namespace, pod.name, pod.uid
        ));
        // A node restarted mid-start appends to what is there.
        let size = std::fs::metadata(&path).ok().map(|m| m.len());
        let log = Arc::new(ContainerLog {
            path,
            uid: pod.uid.clone(),
            files: self.files.clone(),
            placed: match size {
                Some(_) => OnceLock::from(()),
                None => OnceLock::new(),
            },
            changed: Notify::new(),
            finished: AtomicBool::new(false),
            size: AtomicU64::new(size.unwrap_or(0)),
        });
        if let Ok(mut cur) = self.current.lock() {
            cur.insert((pod.uid.clone(), container.to_string()), log.clone());
        }
        log
    }

    /// The live log of a container, if it has started on this node.
    pub fn current(&self, uid: &str, container: &str) -> Option<Arc<ContainerLog>> {
        self.current
            .lock()
            .ok()?
            .get(&(uid.to_string(), container.to_string()))
            .cloned()
    }

    /// Log files of a container, oldest start first: `(restart, path)`.
    pub fn starts(&self, uid: &str, container: &str) -> Vec<(i32, PathBuf)> {
        let Some(s) = self.files.lock() else {
            return Vec::new();
        };
        let mut out: Vec<(i32, PathBuf)> = s
            .by_pod
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let (_, c, restart) = parse_name(p.file_name()?.to_str()?)?;
                (c == container).then(|| (restart, p.clone()))
            })
            .collect();
        out.sort();
        out
    }

    /// Forgets a deleted pod and recycles its files.
    pub fn remove_pod(&self, uid: &str) {
        if let Ok(mut cur) = self.current.lock() {
            cur.retain(|(u, _), _| u != uid);
        }
        let files = self
            .files
            .lock()
            .and_then(|mut s| s.by_pod.remove(uid))
            .unwrap_or_default();
        for f in files {
            self.files.recycle(&f);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn pod(name: &str, uid: &str) -> PodKey {
        PodKey {
            namespace: "default".into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    fn records(path: &Path) -> std::io::Result<Vec<String>> {
        Ok(std::fs::read_to_string(path)?
            .lines()
            .map(|l| l.split_once(' ').map_or("", |(_, r)| r).to_string())
            .collect())
    }

    #[test]
    fn files_appear_at_the_first_write_and_list_per_container() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        let store = LogStore::new(root.path().to_path_buf(), 0)?;
        let web = pod("web", "uid-1");
        let first = store.open(&web, "app", 0);
        assert!(
            !first.path().exists(),
            "nothing on disk before the container writes"
        );
        assert!(store.starts("uid-1", "app").is_empty());
        first.write(StdStream::Stdout, b"one\ntwo");
        store
            .open(&web, "app", 1)
            .write(StdStream::Stderr, b"three\n");
        // A container whose name extends another's is not mixed in.
        store
            .open(&web, "app-sidecar", 0)
            .write(StdStream::Stdout, b"x\n");
        let found: Vec<i32> = store
            .starts("uid-1", "app")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(found, [0, 1]);
        assert_eq!(records(first.path())?, ["stdout F one", "stdout P two"]);
        // A restarted node finds the files by their names.
        let again = LogStore::new(root.path().to_path_buf(), 0)?;
        assert_eq!(again.starts("uid-1", "app"), store.starts("uid-1", "app"));
        assert_eq!(again.starts("uid-1", "app-sidecar").len(), 1);
        Ok(())
    }

    #[test]
    fn a_deleted_pods_files_are_emptied_and_reused() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        let store = LogStore::new(root.path().to_path_buf(), 0)?;
        let old = store.open(&pod("old", "uid-old"), "app", 0);
        old.write(StdStream::Stdout, b"secret of the old pod\n");
        let inode =
            |p: &Path| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        let old_inode = inode(old.path())?;
        store.remove_pod("uid-old");
        assert!(!old.path().exists());
        assert!(store.starts("uid-old", "app").is_empty());

        let new = store.open(&pod("new", "uid-new"), "app", 0);
        new.write(StdStream::Stdout, b"fresh\n");
        assert_eq!(inode(new.path())?, old_inode, "the emptied file was reused");
        assert_eq!(
            records(new.path())?,
            ["stdout F fresh"],
            "nothing of the old pod is left"
        );

        // With no free file left, a new one is created.
        let other = store.open(&pod("other", "uid-other"), "app", 0);
        other.write(StdStream::Stdout, b"mine\n");
        assert_eq!(records(other.path())?, ["stdout F mine"]);
        assert_ne!(inode(other.path())?, old_inode);
        Ok(())
    }

    #[test]
    fn a_new_node_stocks_free_files_and_a_first_start_takes_one() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        let inode = |p: &Path| std::fs::metadata(p).map(|m| MetadataExt::ino(&m));
        let stocked = |root: &Path| -> std::io::Result<Vec<u64>> {
            std::fs::read_dir(root.join(FREE_DIR))?
                .map(|e| inode(&e?.path()))
                .collect()
        };
        let store = LogStore::new(root.path().to_path_buf(), 3)?;
        let before = stocked(root.path())?;
        assert_eq!(before.len(), 3);
        let log = store.open(&pod("web", "uid-1"), "app", 0);
        log.write(StdStream::Stdout, b"hello\n");
        assert!(
            before.contains(&inode(log.path())?),
            "the first start's file came from the stock"
        );
        assert_eq!(stocked(root.path())?.len(), 2);
        assert_eq!(records(log.path())?, ["stdout F hello"]);
        // A restarted node tops the stock up again, and only that far.
        drop(store);
        let again = LogStore::new(root.path().to_path_buf(), 3)?;
        assert_eq!(stocked(root.path())?.len(), 3);
        assert_eq!(again.starts("uid-1", "app").len(), 1);
        Ok(())
    }
}
