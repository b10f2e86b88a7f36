//! A bounded first-in-first-out queue of byte records on disk, for metrics reports that
//! wait for the broker.
//!
//! While the broker is unreachable the agent [`push`](Spool::push)es each report; once it
//! is back, it publishes [`peek`](Spool::peek) and [`remove`](Spool::remove)s the record
//! on PUBACK, oldest first. The spool survives a restart of the agent or a power cut, and
//! it stays within `max_records` and `max_bytes`: when a new record does not fit, the
//! oldest ones are deleted and counted in [`dropped`](Spool::dropped).
//!
//! ```
//! use perch_firmware::spool::Spool;
//!
//! let dir = tempfile::tempdir()?;
//! let mut spool = Spool::open(dir.path(), 1_000, 1 << 20)?;
//! spool.push(b"report 1")?;
//! spool.push(b"report 2")?;
//! drop(spool); // the agent restarts
//!
//! let mut spool = Spool::open(dir.path(), 1_000, 1 << 20)?;
//! while let Some((id, bytes)) = spool.peek()? {
//!     // publish `bytes`, wait for the PUBACK, then:
//!     spool.remove(id)?;
//! }
//! assert!(spool.is_empty());
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # On disk
//!
//! One folder, owned by one spool at a time:
//!
//! - `00000000000000000042.rec`: record 42; ids increase by one per push and continue
//!   across restarts, so the name order is the queue order. A file holds a 12-byte
//!   header (`PSR1`, the payload length and its CRC-32, both little-endian `u32`) and the
//!   payload.
//! - `spool.meta`: the next id and the dropped and corrupt counts, as `key=value` lines.
//!   It is rewritten when a count changes or the spool drains, not on every push.
//! - `*.tmp`: a write that was cut short; deleted by [`Spool::open`].
//!
//! Every file is written to a temporary name, synced, renamed into place, and the folder
//! synced, so after a crash a record is either whole or absent. Other files in the
//! folder are left alone.
//!
//! # Memory
//!
//! Records stay on disk: the spool holds 16 bytes per record (id and size) and reads one
//! record at a time, so a long outage costs disk, bounded by the limits, not memory.
//!
//! # Damaged records
//!
//! A record file that cannot be read, or whose header or checksum does not match, is
//! deleted when [`peek`](Spool::peek) reaches it and counted in both
//! [`dropped`](Spool::dropped) and [`corrupt`](Spool::corrupt); the queue moves on to the
//! next record. An unreadable `spool.meta` starts the counts again from zero (after a
//! warning in the log) rather than keeping the agent from starting.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use perch_runtime::fsio::{self, TEMP_SUFFIX};

/// Magic bytes opening every record file (format version 1).
const MAGIC: &[u8; 4] = b"PSR1";
/// Magic, payload length, CRC-32.
const HEADER_LEN: usize = 12;
const RECORD_SUFFIX: &str = ".rec";
const META_FILE: &str = "spool.meta";

/// A bounded on-disk FIFO of byte records in one folder (see the [module docs](self)).
///
/// `Spool` is `Send` but not `Sync`: one task owns it.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_records: usize,
    max_bytes: u64,
    /// (id, payload length) of every record on disk, oldest first.
    queue: RefCell<VecDeque<(u64, u64)>>,
    /// Sum of the payload lengths in `queue`.
    bytes: Cell<u64>,
    next_id: u64,
    dropped: Cell<u64>,
    corrupt: Cell<u64>,
}

impl Spool {
    /// Opens the spool in `dir` (created if missing), resuming the records already there,
    /// oldest first; ids continue after the highest one seen.
    ///
    /// `max_records` and `max_bytes` bound the number of records and the sum of their
    /// payload lengths (each file adds a 12-byte header and the filesystem's block
    /// rounding). Records beyond the bounds (left by a run with larger limits) are dropped
    /// now, oldest first. Leftover temporary files are deleted.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `max_records` or `max_bytes` is zero; any error creating,
    /// listing or cleaning the folder.
    pub fn open(dir: &Path, max_records: usize, max_bytes: u64) -> io::Result<Spool> {
        if max_records == 0 || max_bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a spool needs room for at least one record and one byte",
            ));
        }
        fs::create_dir_all(dir)?;
        let meta = read_meta(dir);
        let mut records = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(TEMP_SUFFIX) {
                remove_if_present(&entry.path())?;
            } else if let Some(id) = record_id(name) {
                // An unreadable file is still queued; peek finds it damaged and counts it.
                let len = entry.metadata().map_or(0, |m| m.len());
                records.push((id, len.saturating_sub(HEADER_LEN as u64)));
            }
        }
        records.sort_unstable();
        let next_id = records
            .last()
            .map_or(1, |&(id, _)| id.saturating_add(1))
            .max(meta.next_id);
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            max_records,
            max_bytes,
            bytes: Cell::new(records.iter().map(|&(_, len)| len).sum()),
            queue: RefCell::new(records.into()),
            next_id,
            dropped: Cell::new(meta.dropped),
            corrupt: Cell::new(meta.corrupt),
        };
        spool.make_room(0)?;
        Ok(spool)
    }

    /// Appends `record` as the newest entry, durably: when this returns `Ok` the record
    /// survives a power cut. Drops (and counts) the oldest records first if the new one
    /// would not fit within the bounds.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `record` alone is longer than `max_bytes` (or than `u32::MAX`);
    /// nothing is dropped then. Any error writing the record; the spool stays as it was
    /// apart from records already dropped to make room.
    pub fn push(&mut self, record: &[u8]) -> io::Result<()> {
        let len = record.len() as u64;
        let Ok(len32) = u32::try_from(record.len()) else {
            return Err(too_large(len, u64::from(u32::MAX)));
        };
        if len > self.max_bytes {
            return Err(too_large(len, self.max_bytes));
        }
        self.make_room(len)?;

        let id = self.next_id;
        self.next_id += 1;
        let mut contents = Vec::with_capacity(HEADER_LEN + record.len());
        contents.extend_from_slice(MAGIC);
        contents.extend_from_slice(&len32.to_le_bytes());
        contents.extend_from_slice(&crc32(record).to_le_bytes());
        contents.extend_from_slice(record);
        write_atomic(&self.dir, &record_name(id), &contents)?;

        self.queue.get_mut().push_back((id, len));
        self.bytes.set(self.bytes.get() + len);
        Ok(())
    }

    /// The oldest record, `(id, payload)`, without removing it; `None` when the spool is
    /// empty. Damaged records met on the way are deleted and counted (see the
    /// [module docs](self#damaged-records)).
    ///
    /// # Errors
    ///
    /// Deleting a damaged record or saving the counts failed.
    pub fn peek(&self) -> io::Result<Option<(u64, Vec<u8>)>> {
        loop {
            let Some((id, len)) = self.queue.borrow().front().copied() else {
                return Ok(None);
            };
            let path = self.dir.join(record_name(id));
            match read_record(&path, self.max_bytes) {
                Ok(payload) => return Ok(Some((id, payload))),
                Err(problem) => {
                    log::warn!("spool: dropping record {}: {problem}", path.display());
                    self.count_lost(1, 1)?;
                    remove_if_present(&path)?;
                    self.forget_front(len);
                }
            }
        }
    }

    /// Deletes record `id` (once its delivery is confirmed). An id the spool does not
    /// hold, because it was already removed or dropped to make room meanwhile, is
    /// ignored.
    ///
    /// # Errors
    ///
    /// Deleting the file, or saving the next id when the spool becomes empty, failed;
    /// the record is then still held.
    pub fn remove(&mut self, id: u64) -> io::Result<()> {
        let Some(index) = self
            .queue
            .get_mut()
            .iter()
            .position(|&(held, _)| held == id)
        else {
            return Ok(());
        };
        if self.queue.get_mut().len() == 1 {
            // With no record left on disk, only spool.meta remembers where ids go on.
            self.save_meta()?;
        }
        remove_if_present(&self.dir.join(record_name(id)))?;
        if let Some((_, len)) = self.queue.get_mut().remove(index) {
            self.bytes.set(self.bytes.get() - len);
        }
        Ok(())
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.queue.borrow().len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.queue.borrow().is_empty()
    }

    /// Sum of the payload lengths of the records held; at most `max_bytes`.
    pub fn bytes(&self) -> u64 {
        self.bytes.get()
    }

    /// Records lost since the spool folder was created: dropped to make room or found
    /// damaged. Persisted, so it survives restarts.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// How many of the [`dropped`](Spool::dropped) records were found damaged.
    pub fn corrupt(&self) -> u64 {
        self.corrupt.get()
    }

    /// The spool's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Drops the oldest records until one of `incoming` bytes fits. The counts are saved
    /// before any file is deleted, so a crash in between over-counts rather than hides a
    /// loss.
    fn make_room(&mut self, incoming: u64) -> io::Result<()> {
        let queue = self.queue.get_mut();
        let (mut victims, mut freed) = (0, 0);
        for &(_, len) in queue.iter() {
            let records = queue.len() - victims;
            let bytes = self.bytes.get() - freed;
            let needs_room = if incoming == 0 {
                // Reopening: only enforce the bounds on what is there.
                records > self.max_records || bytes > self.max_bytes
            } else {
                records >= self.max_records || bytes + incoming > self.max_bytes
            };
            if !needs_room {
                break;
            }
            victims += 1;
            freed += len;
        }
        if victims == 0 {
            return Ok(());
        }
        self.count_lost(victims as u64, 0)?;
        for _ in 0..victims {
            let Some(&(id, len)) = self.queue.get_mut().front() else {
                break;
            };
            remove_if_present(&self.dir.join(record_name(id)))?;
            self.forget_front(len);
        }
        Ok(())
    }

    /// Adds to the persisted counts; on failure they stay as they were.
    fn count_lost(&self, dropped: u64, corrupt: u64) -> io::Result<()> {
        let before = (self.dropped.get(), self.corrupt.get());
        self.dropped.set(before.0 + dropped);
        self.corrupt.set(before.1 + corrupt);
        self.save_meta().inspect_err(|_| {
            self.dropped.set(before.0);
            self.corrupt.set(before.1);
        })
    }

    fn forget_front(&self, len: u64) {
        self.queue.borrow_mut().pop_front();
        self.bytes.set(self.bytes.get() - len);
    }

    fn save_meta(&self) -> io::Result<()> {
        let text = format!(
            "next_id={}\ndropped={}\ncorrupt={}\n",
            self.next_id,
            self.dropped.get(),
            self.corrupt.get()
        );
        write_atomic(&self.dir, META_FILE, text.as_bytes())
    }
}

/// What `spool.meta` remembers.
struct Meta {
    next_id: u64,
    dropped: u64,
    corrupt: u64,
}

/// Reads `spool.meta`; a missing file is a new spool, a damaged one is logged and read
/// as zeros.
fn read_meta(dir: &Path) -> Meta {
    let mut meta = Meta {
        next_id: 1,
        dropped: 0,
        corrupt: 0,
    };
    let path = dir.join(META_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return meta,
        Err(e) => {
            log::warn!("spool: ignoring {}: {e}", path.display());
            return meta;
        }
    };
    for line in text.lines() {
        let parsed = line.split_once('=').and_then(|(key, value)| {
            let value: u64 = value.parse().ok()?;
            match key {
                "next_id" => meta.next_id = value,
                "dropped" => meta.dropped = value,
                "corrupt" => meta.corrupt = value,
                _ => return None,
            }
            Some(())
        });
        if parsed.is_none() {
            log::warn!("spool: ignoring line {line:?} of {}", path.display());
        }
    }
    meta
}

/// Reads and checks one record file, refusing to read more than a valid record's size.
fn read_record(path: &Path, max_bytes: u64) -> Result<Vec<u8>, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let mut contents = Vec::new();
    file.take(HEADER_LEN as u64 + max_bytes + 1)
        .read_to_end(&mut contents)
        .map_err(|e| e.to_string())?;
    let (header, payload) = contents
        .split_at_checked(HEADER_LEN)
        .ok_or_else(|| format!("{} bytes is shorter than the header", contents.len()))?;
    if &header[..4] != MAGIC {
        return Err("not a spool record (bad magic)".to_string());
    }
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let (len, crc) = (word(4), word(8));
    if payload.len() as u64 != u64::from(len) {
        return Err(format!(
            "header says {len} bytes, file holds {}",
            payload.len()
        ));
    }
    if crc32(payload) != crc {
        return Err("checksum mismatch".to_string());
    }
    Ok(contents.split_off(HEADER_LEN))
}

fn record_name(id: u64) -> String {
    format!("{id:020}{RECORD_SUFFIX}")
}

/// The id of a record file name: 20 decimal digits and `.rec`.
fn record_id(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(RECORD_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn too_large(len: u64, limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("a {len}-byte record does not fit in a spool of at most {limit} bytes"),
    )
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes `dir/name` so that it is either the old file or entirely `contents`, even
/// across a power cut (temporary file, fsync, rename, fsync of the folder).
fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    fsio::write_atomic(&dir.join(name), contents)
}

/// CRC-32 (IEEE 802.3, as zlib and PNG).
fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(spool: &mut Spool) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some((id, bytes)) = spool.peek().unwrap() {
            spool.remove(id).unwrap();
            out.push(bytes);
        }
        out
    }

    fn record_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(RECORD_SUFFIX))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn records_come_back_in_push_order_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 100, 1 << 20).unwrap();
        for i in 0..5 {
            spool.push(format!("report {i}").as_bytes()).unwrap();
        }
        drop(spool);

        let mut spool = Spool::open(dir.path(), 100, 1 << 20).unwrap();
        assert_eq!(spool.len(), 5);
        spool.push(b"report 5").unwrap();
        let expected: Vec<Vec<u8>> = (0..6).map(|i| format!("report {i}").into_bytes()).collect();
        assert_eq!(drain(&mut spool), expected);
        assert!(spool.is_empty());
        assert_eq!(spool.bytes(), 0);
        assert!(record_files(dir.path()).is_empty());
    }

    #[test]
    fn ids_keep_increasing_after_the_spool_drains_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 100, 1 << 20).unwrap();
        spool.push(b"a").unwrap();
        spool.push(b"b").unwrap();
        let ids: Vec<u64> = drain_ids(&mut spool);
        drop(spool);

        let mut spool = Spool::open(dir.path(), 100, 1 << 20).unwrap();
        spool.push(b"c").unwrap();
        let later = spool.peek().unwrap().unwrap().0;
        assert!(later > ids[1], "id {later} reused after {ids:?}");
    }

    fn drain_ids(spool: &mut Spool) -> Vec<u64> {
        let mut ids = Vec::new();
        while let Some((id, _)) = spool.peek().unwrap() {
            spool.remove(id).unwrap();
            ids.push(id);
        }
        ids
    }

    #[test]
    fn a_full_spool_drops_the_oldest_records_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 3, 1 << 20).unwrap();
        for i in 0..5u8 {
            spool.push(&[i]).unwrap();
        }
        assert_eq!(spool.len(), 3);
        assert_eq!(spool.dropped(), 2);
        assert_eq!(record_files(dir.path()).len(), 3);
        assert_eq!(drain(&mut spool), vec![vec![2], vec![3], vec![4]]);
    }

    #[test]
    fn the_byte_bound_drops_as_many_old_records_as_the_new_one_needs() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 100, 10).unwrap();
        spool.push(b"aaaa").unwrap();
        spool.push(b"bbbb").unwrap();
        spool.push(b"cc").unwrap();
        assert_eq!((spool.bytes(), spool.dropped()), (10, 0));
        spool.push(b"dddddddd").unwrap();
        assert_eq!((spool.len(), spool.bytes(), spool.dropped()), (2, 10, 2));
        assert_eq!(
            drain(&mut spool),
            vec![b"cc".to_vec(), b"dddddddd".to_vec()]
        );
    }

    #[test]
    fn the_dropped_count_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 2, 1 << 20).unwrap();
        for i in 0..6u8 {
            spool.push(&[i]).unwrap();
        }
        assert_eq!(spool.dropped(), 4);
        drop(spool);
        let mut spool = Spool::open(dir.path(), 2, 1 << 20).unwrap();
        assert_eq!(spool.dropped(), 4);
        spool.push(&[6]).unwrap();
        drop(spool);
        assert_eq!(Spool::open(dir.path(), 2, 1 << 20).unwrap().dropped(), 5);
    }

    #[test]
    fn reopening_with_smaller_bounds_drops_the_oldest_excess() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 10, 1 << 20).unwrap();
        for i in 0..6u8 {
            spool.push(&[i]).unwrap();
        }
        drop(spool);
        let mut spool = Spool::open(dir.path(), 4, 1 << 20).unwrap();
        assert_eq!((spool.len(), spool.dropped()), (4, 2));
        assert_eq!(drain(&mut spool), vec![vec![2], vec![3], vec![4], vec![5]]);
    }

    #[test]
    fn a_torn_temp_file_from_a_crash_is_ignored_and_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 10, 1 << 20).unwrap();
        spool.push(b"whole").unwrap();
        drop(spool);
        // A crash mid-write leaves a temp file with half a record, and a half-written meta.
        let torn = dir.path().join(format!("{}{TEMP_SUFFIX}", record_name(2)));
        fs::write(&torn, &MAGIC[..3]).unwrap();
        fs::write(dir.path().join("spool.meta.tmp"), "next_id=9").unwrap();

        let mut spool = Spool::open(dir.path(), 10, 1 << 20).unwrap();
        assert!(!torn.exists());
        assert!(!dir.path().join("spool.meta.tmp").exists());
        assert_eq!(spool.len(), 1);
        assert_eq!(drain(&mut spool), vec![b"whole".to_vec()]);
        assert_eq!(spool.dropped(), 0);
    }

    #[test]
    fn damaged_records_are_skipped_deleted_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 10, 1 << 20).unwrap();
        for record in [&b"first"[..], b"second", b"third", b"fourth"] {
            spool.push(record).unwrap();
        }
        drop(spool);
        let names = record_files(dir.path());
        // A flipped payload bit, a truncated file, and a file that is not a record at all.
        let mut flipped = fs::read(dir.path().join(&names[0])).unwrap();
        *flipped.last_mut().unwrap() ^= 1;
        fs::write(dir.path().join(&names[0]), flipped).unwrap();
        let whole = fs::read(dir.path().join(&names[1])).unwrap();
        fs::write(dir.path().join(&names[1]), &whole[..whole.len() - 2]).unwrap();
        fs::write(dir.path().join(&names[2]), b"").unwrap();

        let mut spool = Spool::open(dir.path(), 10, 1 << 20).unwrap();
        assert_eq!(drain(&mut spool), vec![b"fourth".to_vec()]);
        assert_eq!((spool.dropped(), spool.corrupt()), (3, 3));
        assert!(record_files(dir.path()).is_empty());
        drop(spool);
        let spool = Spool::open(dir.path(), 10, 1 << 20).unwrap();
        assert_eq!((spool.dropped(), spool.corrupt()), (3, 3));
    }

    #[test]
    fn a_record_larger_than_max_bytes_is_refused_and_nothing_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 10, 8).unwrap();
        spool.push(b"12345678").unwrap();
        let err = spool.push(b"123456789").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("9-byte record"), "{err}");
        assert_eq!((spool.len(), spool.dropped()), (1, 0));
    }

    #[test]
    fn zero_bounds_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (records, bytes) in [(0, 10), (10, 0)] {
            let err = Spool::open(dir.path(), records, bytes).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn removing_an_id_that_was_dropped_meanwhile_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1, 1 << 20).unwrap();
        spool.push(b"in flight").unwrap();
        let (in_flight, _) = spool.peek().unwrap().unwrap();
        spool.push(b"newer").unwrap(); // drops the record being published
        spool.remove(in_flight).unwrap();
        assert_eq!(drain(&mut spool), vec![b"newer".to_vec()]);
        assert_eq!(spool.dropped(), 1);
    }

    #[test]
    fn other_files_in_the_folder_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("README"), "mine").unwrap();
        fs::write(dir.path().join("42.rec"), "not twenty digits").unwrap();
        let mut spool = Spool::open(dir.path(), 10, 1 << 20).unwrap();
        assert!(spool.is_empty());
        spool.push(b"x").unwrap();
        assert_eq!(drain(&mut spool), vec![b"x".to_vec()]);
        assert!(dir.path().join("README").exists() && dir.path().join("42.rec").exists());
    }

    #[test]
    fn a_damaged_meta_file_resets_the_counts_instead_of_failing() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1, 1 << 20).unwrap();
        spool.push(b"a").unwrap();
        spool.push(b"b").unwrap();
        drop(spool);
        fs::write(dir.path().join(META_FILE), "dropped=lots\n\u{0}garbage").unwrap();
        let mut spool = Spool::open(dir.path(), 1, 1 << 20).unwrap();
        assert_eq!(spool.dropped(), 0);
        assert_eq!(drain(&mut spool), vec![b"b".to_vec()]);
    }

    #[test]
    fn a_long_outage_keeps_disk_and_memory_within_the_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 50, 1_000).unwrap();
        let report = [0xA5u8; 212];
        for _ in 0..40 {
            spool.push(&report).unwrap();
            assert!(spool.len() <= 50 && spool.bytes() <= 1_000);
        }
        assert_eq!(spool.len(), 1_000 / 212);
        assert_eq!(spool.dropped(), 40 - 1_000 / 212);
        assert_eq!(record_files(dir.path()).len(), spool.len());
        assert!(spool.queue.borrow().capacity() < 64);
    }
}
