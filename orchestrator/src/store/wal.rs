//! The write-ahead log that makes a commit group durable: one record per
//! group, written into a segment file whose blocks already exist and synced
//! (see [`Durability`]) before any write in the group is acknowledged. The
//! sled tree holds the same writes as the materialised store and is flushed
//! in the background (`checkpoint.rs`); a segment is retired once a
//! checkpoint covers its last revision, and on open the groups after the
//! last checkpoint are applied to the tree again.
//!
//! Why not sled's own flush per group: it seals and writes two buffers with
//! a `sync_file_range` each and wakes sled's whole thread pool, about
//! 0.45 ms per group on this kind of machine. One `pwrite` plus one
//! `sync_file_range` into blocks that already exist costs 0.05–0.17 ms;
//! `fdatasync`, which also empties the device's write cache, 0.11–0.45 ms
//! (see [`Durability`]). Segments are filled ahead of use because a write that
//! grows a file needs its metadata synced as well.
//!
//! Record layout: `[len u32][crc32 u32][revision u64][entries]`, little
//! endian, `len` counting revision and entries, the CRC covering them; an
//! entry is `[key len u32][key][value len u32, u32::MAX if removed][value]`.
//! A retired segment is reused as a spare without being cleared: its old
//! records carry revisions the tree already holds, so recovery skips them.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use tracing::{debug, warn};

use super::Revision;

/// How big a segment grows before the log moves to the next one.
pub const SEGMENT_BYTES: u64 = 8 << 20;
const HEADER: usize = 8;
const REMOVED: u32 = u32::MAX;
const SEGMENT_EXT: &str = "log";
const SPARE_PREFIX: &str = "spare-";

/// How far a group's record goes before the group is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// Written through to the device (`sync_file_range`, the level sled's own
    /// flush gives): survives the process or the kernel crashing.
    #[default]
    Written,
    /// Also flushed out of the device's volatile cache (`fdatasync`):
    /// survives power loss on disks that cache writes, at two to three times
    /// the cost per group.
    Flushed,
}

/// Waits until `len` bytes at `offset` are on the device. Segments are
/// written in place into blocks that already exist, so no metadata needs
/// syncing with them.
#[allow(unsafe_code)]
fn write_through(file: &File, offset: u64, len: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a plain syscall on a descriptor `file` keeps open for the
    // call's duration; it reads no memory of ours.
    let rc = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One group as the tree receives it: keys set to a value, or removed.
pub type Entries = Vec<(Vec<u8>, Option<sled::IVec>)>;

/// A group read back from the log.
#[derive(Debug, PartialEq)]
pub struct Record {
    /// The newest revision in the group (the tree's revision after it).
    pub rev: Revision,
    pub entries: Entries,
}

/// A segment the log has moved past; it may go once the tree holds `last_rev`.
#[derive(Debug, Clone, Copy)]
pub struct Sealed {
    pub seq: u64,
    pub last_rev: Revision,
}

pub struct Wal {
    dir: PathBuf,
    sync: Durability,
    /// Segments the log moved past, for the checkpointer to retire.
    seals: mpsc::Sender<Sealed>,
    file: File,
    /// Whether `file` was grown by writing (no spare was ready): its new
    /// length must then be synced too, which only fdatasync does.
    growing: bool,
    seq: u64,
    offset: u64,
    last_rev: Revision,
    buf: Vec<u8>,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.{SEGMENT_EXT}"))
}

/// The segments in `dir`, oldest first.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some(SEGMENT_EXT) {
            continue;
        }
        if let Some(seq) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((seq, path));
        }
    }
    out.sort();
    Ok(out)
}

fn spares(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(SPARE_PREFIX) && !name.ends_with(".tmp") {
            out.push(path);
        }
    }
    Ok(out)
}

/// A rename or a new file is durable only once its directory is synced.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn encode(rev: Revision, entries: &Entries, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[0u8; HEADER]);
    out.extend_from_slice(&rev.to_le_bytes());
    for (key, value) in entries {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        match value {
            Some(v) => {
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
            None => out.extend_from_slice(&REMOVED.to_le_bytes()),
        }
    }
    let len = (out.len() - HEADER) as u32;
    let crc = crc32fast::hash(&out[HEADER..]);
    out[..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    (buf.len() >= n).then(|| {
        let (head, tail) = buf.split_at(n);
        *buf = tail;
        head
    })
}

fn take_u32(buf: &mut &[u8]) -> Option<u32> {
    take(buf, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn decode_body(mut body: &[u8]) -> Option<Record> {
    let rev = u64::from_le_bytes(take(&mut body, 8)?.try_into().ok()?);
    let mut entries = Vec::new();
    while !body.is_empty() {
        let klen = take_u32(&mut body)? as usize;
        let key = take(&mut body, klen)?.to_vec();
        let value = match take_u32(&mut body)? {
            REMOVED => None,
            vlen => Some(sled::IVec::from(take(&mut body, vlen as usize)?)),
        };
        entries.push((key, value));
    }
    Some(Record { rev, entries })
}

/// The records of one segment up to the first that is torn, unwritten
/// (zeros) or otherwise not whole.
fn read_segment(bytes: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut rest = bytes;
    loop {
        let mut head = rest;
        let (Some(len), Some(crc)) = (take_u32(&mut head), take_u32(&mut head)) else {
            break;
        };
        let len = len as usize;
        if len < 8 || head.len() < len {
            break;
        }
        let body = &head[..len];
        if crc32fast::hash(body) != crc {
            break;
        }
        let Some(record) = decode_body(body) else {
            break;
        };
        out.push(record);
        rest = &head[len..];
    }
    out
}

/// Every whole record in `dir` newer than `after`, in revision order: what
/// a tree flushed up to `after` is missing. Records at or below the newest
/// already taken are stale (a reused segment's old contents) and skipped.
pub fn recover(dir: &Path, after: Revision) -> io::Result<Vec<Record>> {
    fs::create_dir_all(dir)?;
    let mut newest = after;
    let mut out = Vec::new();
    for (seq, path) in segments(dir)? {
        let bytes = fs::read(&path)?;
        let mut kept = 0;
        for record in read_segment(&bytes) {
            if record.rev > newest {
                newest = record.rev;
                out.push(record);
                kept += 1;
            }
        }
        debug!(seq, kept, "read log segment");
    }
    Ok(out)
}

/// A segment-sized file of zeros, so writes into it allocate nothing.
pub fn make_spare(dir: &Path, name: &str) -> io::Result<PathBuf> {
    let tmp = dir.join(format!("{SPARE_PREFIX}{name}.tmp"));
    let file = File::create(&tmp)?;
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < SEGMENT_BYTES {
        file.write_all_at(&zeros, at)?;
        at += zeros.len() as u64;
    }
    file.sync_all()?;
    let path = dir.join(format!("{SPARE_PREFIX}{name}"));
    fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    Ok(path)
}

/// Turns a retired segment into a spare, or removes it when one is ready.
pub fn retire(dir: &Path, seq: u64) -> io::Result<()> {
    let path = segment_path(dir, seq);
    if spares(dir)?.is_empty() {
        fs::rename(&path, dir.join(format!("{SPARE_PREFIX}{seq}")))?;
    } else {
        fs::remove_file(&path)?;
    }
    sync_dir(dir)
}

/// Whether the log has a spare to move to.
pub fn has_spare(dir: &Path) -> io::Result<bool> {
    Ok(!spares(dir)?.is_empty())
}

impl Wal {
    /// Starts logging into a fresh segment. Call after `recover` and once the
    /// tree holds every recovered record durably: existing segments become
    /// spares.
    pub fn start(dir: &Path, sync: Durability, seals: mpsc::Sender<Sealed>) -> io::Result<Wal> {
        fs::create_dir_all(dir)?;
        let old = segments(dir)?;
        let seq = old.last().map(|(s, _)| s + 1).unwrap_or(1);
        for (old_seq, _) in &old {
            retire(dir, *old_seq)?;
        }
        if spares(dir)?.is_empty() {
            make_spare(dir, "initial")?;
        }
        let (file, growing) = Self::open_segment(dir, seq)?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            sync,
            seals,
            file,
            growing,
            seq,
            offset: 0,
            last_rev: 0,
            buf: Vec::new(),
        })
    }

    /// Segment `seq`, from a spare when there is one; says whether the
    /// file is new and grows as it is written.
    fn open_segment(dir: &Path, seq: u64) -> io::Result<(File, bool)> {
        let path = segment_path(dir, seq);
        let growing = match spares(dir)?.into_iter().next() {
            Some(spare) => {
                fs::rename(spare, &path)?;
                false
            }
            None => {
                warn!(
                    seq,
                    "no spare log segment ready: this one grows as it is written"
                );
                File::create(&path)?;
                true
            }
        };
        sync_dir(dir)?;
        Ok((OpenOptions::new().write(true).open(&path)?, growing))
    }

    /// Writes one group and makes it durable, moving to the next segment
    /// first when the group does not fit in this one.
    pub fn append(&mut self, rev: Revision, entries: &Entries) -> io::Result<()> {
        encode(rev, entries, &mut self.buf);
        let len = self.buf.len() as u64;
        if self.offset > 0 && self.offset + len > SEGMENT_BYTES {
            // Open the next segment before touching any state, so a failure
            // here leaves the log writing where it was.
            let (file, growing) = Self::open_segment(&self.dir, self.seq + 1)?;
            // The checkpointer goes only after the writer; a send to it
            // cannot fail while this runs.
            let _ = self.seals.send(Sealed {
                seq: self.seq,
                last_rev: self.last_rev,
            });
            (self.seq, self.file, self.growing, self.offset) = (self.seq + 1, file, growing, 0);
        }
        self.file.write_all_at(&self.buf, self.offset)?;
        // A record running past the segment's allocated end (a group larger
        // than a segment) grows the file, and only fdatasync syncs the length.
        let grows = self.growing || self.offset + len > SEGMENT_BYTES;
        match self.sync {
            Durability::Written if !grows => {
                write_through(&self.file, self.offset, self.buf.len())?
            }
            _ => self.file.sync_data()?,
        }
        self.offset += len;
        self.last_rev = rev;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(rev: Revision, n: usize) -> Entries {
        (0..n)
            .map(|i| {
                let key = format!("o/k/{rev}/{i}").into_bytes();
                let value = (i % 3 != 0).then(|| sled::IVec::from(vec![b'x'; 100 + i]));
                (key, value)
            })
            .collect()
    }

    #[test]
    fn records_come_back_in_order_after_the_tree_revision() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, _seals) = mpsc::channel();
        let mut wal = Wal::start(dir.path(), Durability::Written, tx).expect("start");
        for rev in 1..=5 {
            wal.append(rev, &group(rev, 4)).expect("append");
        }
        let back = recover(dir.path(), 2).expect("recover");
        let revs: Vec<_> = back.iter().map(|r| r.rev).collect();
        assert_eq!(revs, vec![3, 4, 5]);
        assert_eq!(back[0].entries, group(3, 4));
    }

    #[test]
    fn a_torn_tail_ends_the_log_where_it_tore() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, _seals) = mpsc::channel();
        let mut wal = Wal::start(dir.path(), Durability::Written, tx).expect("start");
        for rev in 1..=3 {
            wal.append(rev, &group(rev, 2)).expect("append");
        }
        // Flip a byte inside the last record, as a crash mid-write would.
        let (_, path) = segments(dir.path())
            .expect("list")
            .pop()
            .expect("a segment");
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.write_all_at(&[0xff], wal.offset - 3).expect("tear");
        let revs: Vec<_> = recover(dir.path(), 0)
            .expect("recover")
            .iter()
            .map(|r| r.rev)
            .collect();
        assert_eq!(revs, vec![1, 2]);
    }

    #[test]
    fn a_group_larger_than_a_segment_is_kept_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, seals) = mpsc::channel();
        let mut wal = Wal::start(dir.path(), Durability::Written, tx).expect("start");
        let huge = vec![(
            b"o/huge".to_vec(),
            Some(sled::IVec::from(vec![1u8; 9 << 20])),
        )];
        wal.append(1, &huge)
            .expect("append at the start of a segment");
        wal.append(2, &group(2, 3)).expect("append after it");
        assert_eq!(seals.try_iter().count(), 1, "the small group moved on");
        let back = recover(dir.path(), 0).expect("recover");
        assert_eq!(back.iter().map(|r| r.rev).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(back[0].entries, huge);
    }

    #[test]
    fn reused_segments_and_rolls_keep_only_new_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = vec![(
            b"o/big".to_vec(),
            Some(sled::IVec::from(vec![7u8; 3 << 20])),
        )];
        let (tx, seals) = mpsc::channel();
        let mut wal = Wal::start(dir.path(), Durability::Written, tx).expect("start");
        for rev in 1..=6 {
            wal.append(rev, &big).expect("append");
        }
        let sealed: Vec<Sealed> = seals.try_iter().collect();
        assert_eq!(
            sealed.iter().map(|s| s.last_rev).collect::<Vec<_>>(),
            vec![2, 4]
        );
        // The tree has caught up with the first segment: it becomes a spare
        // with its old records still in it, and the log moves into it.
        retire(dir.path(), sealed[0].seq).expect("retire");
        for rev in 7..=8 {
            wal.append(rev, &group(rev, 1)).expect("append");
        }
        wal.append(9, &big).expect("append");
        wal.append(10, &group(10, 1)).expect("append");
        let revs: Vec<_> = recover(dir.path(), 2)
            .expect("recover")
            .iter()
            .map(|r| r.rev)
            .collect();
        assert_eq!(revs, (3..=10).collect::<Vec<_>>());
    }
}
