//! The partial download of a bundle on disk, safe against `kill -9` without extra
//! state.
//!
//! The bytes go to `{dir}/download.part`, chunk after chunk at its offset
//! (`index × chunk_size`), each write followed by an fsync; `{dir}/download.json` names
//! the rollout and bundle the part file belongs to. [`Download::open`] re-hashes the
//! complete chunks found on disk against the signed chunk hashes and cuts the file at
//! the first one that does not match, so a write torn by a crash or bytes damaged on
//! disk are fetched again. Nothing is ever written past the bundle's declared size.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use perch_runtime::fsio;
use perch_runtime::rollout::BundleRef;
use serde::{Deserialize, Serialize};

use super::error::OtaError;

/// The partial bundle's file name.
pub const PART_FILE: &str = "download.part";
/// The file naming what the partial bundle is.
pub const META_FILE: &str = "download.json";

/// What `download.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    rollout_id: String,
    sha256: String,
    size: u64,
}

/// A partial download of one bundle (see the [module docs](self)).
#[derive(Debug)]
pub struct Download {
    dir: PathBuf,
    file: File,
    bundle: BundleRef,
    have: u32,
}

impl Download {
    /// Opens the download of `bundle` for rollout `rollout_id` in `dir`: resumes the part
    /// file if it belongs to the same bundle, keeping its good leading chunks, or starts
    /// an empty one.
    ///
    /// # Errors
    ///
    /// [`OtaError::Io`] when the folder or files cannot be created, read or written.
    pub fn open(dir: &Path, rollout_id: &str, bundle: &BundleRef) -> Result<Download, OtaError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OtaError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let part = dir.join(PART_FILE);
        let meta_path = dir.join(META_FILE);
        let meta = Meta {
            rollout_id: rollout_id.to_string(),
            sha256: bundle.sha256.clone(),
            size: bundle.size,
        };
        let same = std::fs::read(&meta_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Meta>(&b).ok())
            .is_some_and(|m| m == meta);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part)
            .map_err(io(&part))?;
        let have = if same {
            good_chunks(&mut file, bundle).map_err(io(&part))?
        } else {
            0
        };
        let keep = if have == 0 {
            0
        } else {
            bundle.chunk_range(have - 1).map_or(0, |r| r.end)
        };
        file.set_len(keep).map_err(io(&part))?;
        file.sync_all().map_err(io(&part))?;
        if !same {
            let bytes = serde_json::to_vec(&meta).map_err(|e| OtaError::Io {
                path: meta_path.clone(),
                source: std::io::Error::other(e),
            })?;
            fsio::write_atomic(&meta_path, &bytes).map_err(io(&meta_path))?;
        }
        Ok(Download {
            dir: dir.to_path_buf(),
            file,
            bundle: bundle.clone(),
            have,
        })
    }

    /// Chunks `0..have()` are on disk and match their signed hashes.
    pub fn have(&self) -> u32 {
        self.have
    }

    /// Whether every chunk is on disk.
    pub fn is_complete(&self) -> bool {
        self.have >= self.bundle.chunk_count()
    }

    /// Writes chunk `index` at its offset and fsyncs. Only the next chunk is accepted,
    /// with exactly its declared length and its signed hash.
    ///
    /// # Errors
    ///
    /// [`OtaError::Chunk`] for another index, a wrong length or hash (nothing is
    /// written); [`OtaError::Io`] if the write fails.
    pub fn write(&mut self, index: u32, data: &[u8]) -> Result<(), OtaError> {
        if index != self.have {
            return Err(OtaError::Chunk(format!(
                "chunk {index} is not the next one ({} is)",
                self.have
            )));
        }
        let Some(range) = self.bundle.chunk_range(index) else {
            return Err(OtaError::Chunk(format!(
                "chunk {index} is past the bundle's {} chunks",
                self.bundle.chunk_count()
            )));
        };
        let expected = range.end - range.start;
        if data.len() as u64 != expected {
            return Err(OtaError::Chunk(format!(
                "chunk {index} is {} bytes; the rollout document says {expected}",
                data.len()
            )));
        }
        if !self.bundle.chunk_matches(index, data) {
            return Err(OtaError::Chunk(format!(
                "chunk {index} does not match its signed hash"
            )));
        }
        let path = self.dir.join(PART_FILE);
        let io = |source| OtaError::Io {
            path: path.clone(),
            source,
        };
        self.file.seek(SeekFrom::Start(range.start)).map_err(io)?;
        self.file.write_all(data).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.have = index + 1;
        Ok(())
    }

    /// The complete bundle's bytes, for installation (which checks the whole-bundle
    /// hash and signature).
    ///
    /// # Errors
    ///
    /// [`OtaError::Chunk`] when chunks are missing; [`OtaError::Io`] if reading fails or
    /// the file is not the declared size.
    pub fn finish(&mut self) -> Result<Vec<u8>, OtaError> {
        if !self.is_complete() {
            return Err(OtaError::Chunk(format!(
                "the download holds {} of {} chunks",
                self.have,
                self.bundle.chunk_count()
            )));
        }
        let path = self.dir.join(PART_FILE);
        let io = |source| OtaError::Io {
            path: path.clone(),
            source,
        };
        let mut bytes = Vec::with_capacity(usize::try_from(self.bundle.size).unwrap_or(0));
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        (&mut self.file)
            .take(self.bundle.size.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 != self.bundle.size {
            return Err(io(std::io::Error::other(format!(
                "{} bytes on disk; the rollout document says {}",
                bytes.len(),
                self.bundle.size
            ))));
        }
        Ok(bytes)
    }

    /// Deletes the partial download in `dir`, if any.
    ///
    /// # Errors
    ///
    /// [`OtaError::Io`] if a file exists but cannot be removed.
    pub fn discard(dir: &Path) -> Result<(), OtaError> {
        for name in [META_FILE, PART_FILE] {
            let path = dir.join(name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(OtaError::Io { path, source }),
            }
        }
        Ok(())
    }
}

/// Counts the leading chunks in `file` that are complete and match their signed hashes.
fn good_chunks(file: &mut File, bundle: &BundleRef) -> std::io::Result<u32> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; bundle.chunk_size as usize];
    for index in 0..bundle.chunk_count() {
        let Some(range) = bundle.chunk_range(index) else {
            return Ok(index);
        };
        let len = usize::try_from(range.end - range.start).unwrap_or(0);
        let data = &mut buf[..len];
        match file.read_exact(data) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(index),
            Err(e) => return Err(e),
        }
        if !bundle.chunk_matches(index, data) {
            return Ok(index);
        }
    }
    Ok(bundle.chunk_count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use perch_runtime::rollout::MIN_CHUNK_SIZE;

    fn bundle() -> (Vec<u8>, BundleRef) {
        let bytes: Vec<u8> = (0..6_000u32).map(|i| (i * 13 % 256) as u8).collect();
        let described = BundleRef::describe("kws", "1.3.0", 7, &bytes, MIN_CHUNK_SIZE);
        (bytes, described)
    }

    fn chunk(bytes: &[u8], bundle: &BundleRef, index: u32) -> Vec<u8> {
        let range = bundle.chunk_range(index).unwrap();
        bytes[range.start as usize..range.end as usize].to_vec()
    }

    #[test]
    fn a_killed_download_resumes_from_the_last_good_chunk_after_a_corrupted_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, bundle) = bundle();
        let mut download = Download::open(dir.path(), "r1", &bundle).unwrap();
        for index in 0..4 {
            download
                .write(index, &chunk(&bytes, &bundle, index))
                .unwrap();
        }
        // kill -9: no finish, no clean-up; the last chunk's tail is damaged and a torn
        // write left half of chunk 4 behind it.
        drop(download);
        let part = dir.path().join(PART_FILE);
        let mut on_disk = std::fs::read(&part).unwrap();
        assert_eq!(on_disk.len(), 4 * MIN_CHUNK_SIZE as usize);
        *on_disk.last_mut().unwrap() ^= 0x55;
        on_disk.extend_from_slice(&chunk(&bytes, &bundle, 4)[..500]);
        std::fs::write(&part, &on_disk).unwrap();

        let mut download = Download::open(dir.path(), "r1", &bundle).unwrap();
        assert_eq!(download.have(), 3);
        assert_eq!(
            std::fs::metadata(&part).unwrap().len(),
            3 * u64::from(MIN_CHUNK_SIZE),
            "the bad tail is cut off"
        );
        assert!(
            download.finish().is_err(),
            "an incomplete download does not finish"
        );
        for index in 3..bundle.chunk_count() {
            download
                .write(index, &chunk(&bytes, &bundle, index))
                .unwrap();
        }
        assert!(download.is_complete());
        assert_eq!(download.finish().unwrap(), bytes);
        // Reopened complete, it stays complete.
        assert_eq!(
            Download::open(dir.path(), "r1", &bundle).unwrap().have(),
            bundle.chunk_count()
        );
    }

    #[test]
    fn a_truncated_oversized_forged_or_out_of_order_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, bundle) = bundle();
        let mut download = Download::open(dir.path(), "r1", &bundle).unwrap();
        let first = chunk(&bytes, &bundle, 0);
        let mut oversized = first.clone();
        oversized.push(0);
        let mut forged = first.clone();
        forged[0] ^= 1;
        let cases: [(u32, &[u8], &str); 4] = [
            (0, &first[..100], "100 bytes"),
            (0, &oversized, "1025 bytes"),
            (0, &forged, "signed hash"),
            (1, &chunk(&bytes, &bundle, 1), "not the next one"),
        ];
        for (index, data, needle) in cases {
            let err = download.write(index, data).unwrap_err();
            assert!(
                err.to_string().contains(needle),
                "{err} should say {needle}"
            );
        }
        assert_eq!(
            std::fs::metadata(dir.path().join(PART_FILE)).unwrap().len(),
            0
        );
        for index in 0..bundle.chunk_count() {
            download
                .write(index, &chunk(&bytes, &bundle, index))
                .unwrap();
        }
        let last = chunk(&bytes, &bundle, bundle.chunk_count() - 1);
        let err = download.write(bundle.chunk_count(), &last).unwrap_err();
        assert!(err.to_string().contains("past the bundle"), "{err}");
        assert_eq!(
            std::fs::metadata(dir.path().join(PART_FILE)).unwrap().len(),
            bundle.size,
            "never past the declared size"
        );
    }

    #[test]
    fn a_part_file_of_another_bundle_is_started_over_and_a_discard_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, bundle) = bundle();
        let mut download = Download::open(dir.path(), "r1", &bundle).unwrap();
        download.write(0, &chunk(&bytes, &bundle, 0)).unwrap();
        drop(download);
        assert_eq!(Download::open(dir.path(), "r2", &bundle).unwrap().have(), 0);
        assert_eq!(
            std::fs::metadata(dir.path().join(PART_FILE)).unwrap().len(),
            0
        );
        Download::discard(dir.path()).unwrap();
        assert!(!dir.path().join(PART_FILE).exists());
        assert!(!dir.path().join(META_FILE).exists());
        Download::discard(dir.path()).unwrap();
    }
}
