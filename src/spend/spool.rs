//! A writer's durable overflow on local disk: batches the store could not take wait here, in
//! order, until it can, across restarts of the process.
//!
//! Layout: one directory per writer holding `<seq>.jsonl` segments (one batch each, one JSON
//! row per line) and a `.lock` file. A segment is written to `<seq>.tmp`, synced, then renamed
//! and the directory synced, so a crash leaves either the whole batch or none of it; stray
//! `.tmp` files are removed on open. The lock (an OS file lock, released when the process
//! dies, `kill -9` included) keeps two live processes from replaying one spool twice.
//!
//! Replays may repeat a batch the store took just before a failure was seen: every sink is
//! idempotent on the row's key (`request_id`, `jti`, `(chain_id, seq)`), so that is harmless.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why the spool did not take or give a batch.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Over `spool.max_bytes`.
    #[error("spool full: {bytes} bytes held, limit {max} bytes")]
    Full {
        /// Bytes in the spool now.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// Another live process holds this spool.
    #[error(
        "spool {0} is in use by another Tollgate process; give every replica its own spool.dir"
    )]
    Locked(PathBuf),
    /// A segment that cannot be parsed (moved aside as `<seq>.corrupt`).
    #[error("spool segment {path} is unreadable: {error}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Why.
        error: String,
    },
    /// The file system refused (a full disk is `ENOSPC` here).
    #[error("spool I/O error in {path}: {error}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        error: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |error| SpoolError::Io {
        path: path.to_owned(),
        error,
    }
}

/// One writer's spool directory, opened and locked.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// Held for the life of the spool: the lock goes with it.
    _lock: File,
    segments: VecDeque<(u64, u64)>,
    next_seq: u64,
    bytes: u64,
    max_bytes: u64,
}

impl Spool {
    /// Open (creating it) and lock `dir`, finding the segments a previous process left.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked(dir.to_owned())),
            Err(fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let mut segments = Vec::new();
        for entry in fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(".tmp") {
                // A batch whose write never finished: the writer still held it in memory
                // and reported it unwritten, so nothing is lost by removing it.
                fs::remove_file(&path).map_err(io(&path))?;
            } else if let Some(seq) = name
                .strip_suffix(".jsonl")
                .and_then(|s| s.parse::<u64>().ok())
            {
                let len = entry.metadata().map_err(io(&path))?.len();
                segments.push((seq, len));
            }
        }
        segments.sort_unstable();
        let bytes = segments.iter().map(|(_, b)| b).sum();
        let next_seq = segments.last().map_or(0, |(s, _)| s + 1);
        Ok(Spool {
            dir: dir.to_owned(),
            _lock: lock,
            segments: segments.into(),
            next_seq,
            bytes,
            max_bytes,
        })
    }

    fn path(&self, seq: u64, ext: &str) -> PathBuf {
        self.dir.join(format!("{seq:020}.{ext}"))
    }

    /// Append one batch as a new segment, durably. On error nothing was added.
    pub fn append<T: Serialize>(&mut self, rows: &[T]) -> Result<(), SpoolError> {
        let mut buf = Vec::with_capacity(rows.len() * 256);
        for row in rows {
            serde_json::to_writer(&mut buf, row).map_err(|e| SpoolError::Io {
                path: self.dir.clone(),
                error: std::io::Error::other(e),
            })?;
            buf.push(b'\n');
        }
        let len = buf.len() as u64;
        if self.bytes + len > self.max_bytes {
            return Err(SpoolError::Full {
                bytes: self.bytes,
                max: self.max_bytes,
            });
        }
        let seq = self.next_seq;
        let tmp = self.path(seq, "tmp");
        let done = self.path(seq, "jsonl");
        let written = (|| {
            // Rows name workloads and teams: readable by Tollgate's user only.
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            let mut w = BufWriter::new(file);
            w.write_all(&buf)?;
            let file = w.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            fs::rename(&tmp, &done)?;
            File::open(&self.dir)?.sync_all()
        })();
        if let Err(error) = written {
            let _ = fs::remove_file(&tmp);
            let _ = fs::remove_file(&done);
            return Err(SpoolError::Io { path: done, error });
        }
        self.next_seq += 1;
        self.segments.push_back((seq, len));
        self.bytes += len;
        Ok(())
    }

    /// The oldest batch, if any.
    pub fn front<T: DeserializeOwned>(&self) -> Option<Result<Vec<T>, SpoolError>> {
        let &(seq, _) = self.segments.front()?;
        let path = self.path(seq, "jsonl");
        Some(read_segment(&path))
    }

    /// Forget the oldest batch (the store has it).
    pub fn pop_front(&mut self) -> Result<(), SpoolError> {
        let Some(&(seq, len)) = self.segments.front() else {
            return Ok(());
        };
        let path = self.path(seq, "jsonl");
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        self.segments.pop_front();
        self.bytes -= len;
        Ok(())
    }

    /// Move the oldest batch aside as `<seq>.corrupt` for an operator to look at, so one bad
    /// segment never blocks the ones behind it.
    pub fn quarantine_front(&mut self) -> Result<PathBuf, SpoolError> {
        let Some(&(seq, len)) = self.segments.front() else {
            return Ok(self.dir.clone());
        };
        let from = self.path(seq, "jsonl");
        let to = self.path(seq, "corrupt");
        fs::rename(&from, &to).map_err(io(&from))?;
        self.segments.pop_front();
        self.bytes -= len;
        Ok(to)
    }

    /// No batch waiting.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Batches held.
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn read_segment<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, SpoolError> {
    let file = File::open(path).map_err(io(path))?;
    let mut rows = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io(path))?;
        if line.is_empty() {
            continue;
        }
        let row = serde_json::from_str(&line).map_err(|e| SpoolError::Corrupt {
            path: path.to_owned(),
            error: format!("line {}: {e}", n + 1),
        })?;
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_come_back_in_order_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.append(&[1u32, 2]).unwrap();
        s.append(&[3u32]).unwrap();
        assert_eq!(s.segments(), 2);
        drop(s);
        // A write that died before its rename leaves a .tmp: not a batch.
        fs::write(dir.path().join("00000000000000000009.tmp"), b"9\n").unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(!dir.path().join("00000000000000000009.tmp").exists());
        assert_eq!(s.front::<u32>().unwrap().unwrap(), vec![1, 2]);
        s.pop_front().unwrap();
        assert_eq!(s.front::<u32>().unwrap().unwrap(), vec![3]);
        s.append(&[4u32]).unwrap();
        s.pop_front().unwrap();
        assert_eq!(s.front::<u32>().unwrap().unwrap(), vec![4]);
        s.pop_front().unwrap();
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn a_second_process_cannot_open_a_held_spool() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Spool::open(dir.path(), 1 << 20).unwrap();
        let err = Spool::open(dir.path(), 1 << 20).unwrap_err();
        assert!(matches!(err, SpoolError::Locked(_)), "{err}");
        assert!(err.to_string().contains("own spool.dir"), "{err}");
    }

    #[test]
    fn the_byte_limit_refuses_a_batch_and_keeps_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 10).unwrap();
        s.append(&["abcd"]).unwrap(); // 7 bytes with quotes and newline
        let err = s.append(&["efgh"]).unwrap_err();
        assert!(
            matches!(err, SpoolError::Full { bytes: 7, max: 10 }),
            "{err}"
        );
        assert_eq!(s.segments(), 1);
    }

    #[test]
    fn a_corrupt_segment_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.append(&[1u32]).unwrap();
        s.append(&[2u32]).unwrap();
        fs::write(dir.path().join(format!("{:020}.jsonl", 0)), b"{not json\n").unwrap();
        assert!(matches!(
            s.front::<u32>().unwrap(),
            Err(SpoolError::Corrupt { .. })
        ));
        let aside = s.quarantine_front().unwrap();
        assert!(aside.exists());
        assert_eq!(s.front::<u32>().unwrap().unwrap(), vec![2]);
    }
}
