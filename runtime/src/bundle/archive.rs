//! The strict subset of POSIX ustar that bundles use: a deterministic writer and a
//! bounded reader that trusts nothing in the headers.
//!
//! The reader accepts regular-file entries with `ustar\0` `00` magic, octal sizes and
//! valid checksums, requires the end-of-archive marker (two zero blocks) and only zero
//! padding after it. Every size is checked against the bytes actually present before
//! anything is sliced, and entries are borrowed from the input, never copied.

use super::error::BundleError;
use super::limits::Limits;

/// The tar block size.
pub(crate) const BLOCK: usize = 512;

/// One regular file of the archive, borrowed from the archive's bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<'a> {
    /// Its path, checked by [`check_path`].
    pub path: &'a str,
    /// Its contents.
    pub data: &'a [u8],
}

/// Whether `block` (the first 512 bytes of a file) is a ustar header for `name`.
///
/// Only the magic and the name field are looked at; it is a cheap format probe, not
/// validation.
pub(crate) fn header_names(block: &[u8], name: &str) -> bool {
    block.len() >= BLOCK
        && &block[257..263] == b"ustar\0"
        && field_str(&block[0..100]) == Some(name)
}

/// Reads every entry of a bundle archive, in archive order.
pub(crate) fn read_entries<'a>(
    bytes: &'a [u8],
    limits: &Limits,
) -> Result<Vec<Entry<'a>>, BundleError> {
    let len = bytes.len() as u64;
    let mut entries = Vec::new();
    let mut offset = 0usize;
    loop {
        let Some(header) = bytes.get(offset..offset + BLOCK) else {
            if offset == 0 {
                return Err(BundleError::NotATar {
                    offset: 0,
                    reason: format!("is incomplete: {len} bytes are too few for a tar archive"),
                });
            }
            return Err(BundleError::Truncated {
                what: "the next tar header or the end-of-archive marker".into(),
                needed: (offset + BLOCK) as u64,
                available: len,
            });
        };
        if header.iter().all(|b| *b == 0) {
            return end_of_archive(bytes, offset).map(|()| entries);
        }
        let at = offset as u64;
        let bad = |reason: String| BundleError::NotATar { offset: at, reason };
        if &header[257..263] != b"ustar\0" || &header[263..265] != b"00" {
            return Err(bad(if offset == 0 {
                "has no POSIX ustar magic: this is not a tar archive".into()
            } else {
                "has no POSIX ustar magic: the archive is corrupt".into()
            }));
        }
        let stored = octal(&header[148..156])
            .ok_or_else(|| bad("has an unreadable checksum field".into()))?;
        let computed: u64 = header
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    u64::from(b' ')
                } else {
                    u64::from(*b)
                }
            })
            .sum();
        if stored != computed {
            return Err(bad(format!(
                "has checksum {stored}, but its bytes sum to {computed}: the header is corrupt"
            )));
        }
        let (Some(path), Some(prefix)) = (field_str(&header[0..100]), field_str(&header[345..500]))
        else {
            return Err(bad("has a path that is not UTF-8".into()));
        };
        if !prefix.is_empty() {
            return Err(BundleError::UnsafePath {
                path: format!("{prefix}/{path}"),
                reason: "is longer than 100 bytes (bundle paths must fit the ustar name field)",
            });
        }
        let kind = match header[156] {
            b'0' | 0 => None,
            b'1' => Some("hard link".to_string()),
            b'2' => Some("symbolic link".to_string()),
            b'3' => Some("character device".to_string()),
            b'4' => Some("block device".to_string()),
            b'5' => Some("folder".to_string()),
            b'6' => Some("FIFO".to_string()),
            b'x' | b'g' => Some("pax extended header".to_string()),
            b'L' | b'K' => Some("GNU long-name header".to_string()),
            other => Some(format!("entry of unknown type {:?}", char::from(other))),
        };
        if let Some(kind) = kind {
            return Err(BundleError::UnsupportedEntry {
                path: path.to_string(),
                kind,
            });
        }
        check_path(path)?;
        let size = octal(&header[124..136])
            .ok_or_else(|| bad("has an unreadable size field (octal expected)".into()))?;
        if entries.len() as u64 >= limits.max_entries {
            return Err(BundleError::Oversize {
                what: "the number of entries",
                limit: limits.max_entries,
                actual: entries.len() as u64 + 1,
            });
        }
        let start = offset + BLOCK;
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        let end = (start as u64)
            .checked_add(padded)
            .filter(|end| *end <= len)
            .ok_or_else(|| BundleError::Truncated {
                what: format!("entry {path:?} ({size} bytes)"),
                needed: (start as u64).saturating_add(padded),
                available: len,
            })?;
        // `end <= len`, so these conversions cannot truncate.
        let data = &bytes[start..start + size as usize];
        entries.push(Entry { path, data });
        offset = end as usize;
    }
}

/// Checks the end-of-archive marker at `offset` (one zero block found) and the padding after it.
fn end_of_archive(bytes: &[u8], offset: usize) -> Result<(), BundleError> {
    let second = offset + BLOCK;
    let Some(block) = bytes.get(second..second + BLOCK) else {
        return Err(BundleError::Truncated {
            what: "the end-of-archive marker (two zero blocks)".into(),
            needed: (second + BLOCK) as u64,
            available: bytes.len() as u64,
        });
    };
    if let Some(i) = block
        .iter()
        .chain(&bytes[second + BLOCK..])
        .position(|b| *b != 0)
    {
        return Err(BundleError::TrailingData {
            offset: (second + i) as u64,
        });
    }
    Ok(())
}

/// A NUL-terminated header text field (the whole field when it has no NUL).
fn field_str(field: &[u8]) -> Option<&str> {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    std::str::from_utf8(&field[..end]).ok()
}

/// An octal header number: optional leading spaces, octal digits, then NULs or spaces.
fn octal(field: &[u8]) -> Option<u64> {
    let text = field.iter().skip_while(|b| **b == b' ');
    let mut value: u64 = 0;
    let mut digits = 0;
    let mut ended = false;
    for b in text {
        match b {
            b'0'..=b'7' if !ended => {
                value = value.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
                digits += 1;
            }
            0 | b' ' => ended = true,
            _ => return None,
        }
    }
    (digits > 0).then_some(value)
}

/// Checks that `path` is a plain relative path that stays inside the folder it is
/// unpacked into: not empty, not absolute, no `.`/`..`/empty components, no backslashes,
/// colons or control characters.
pub(crate) fn check_path(path: &str) -> Result<(), BundleError> {
    let unsafe_path = |reason| {
        Err(BundleError::UnsafePath {
            path: path.to_string(),
            reason,
        })
    };
    if path.is_empty() {
        return unsafe_path("is empty");
    }
    if path.starts_with('/') {
        return unsafe_path("is absolute");
    }
    if path.len() > 100 {
        return unsafe_path(
            "is longer than 100 bytes (bundle paths must fit the ustar name field)",
        );
    }
    if path.chars().any(char::is_control) {
        return unsafe_path("contains a control character");
    }
    if path.contains('\\') {
        return unsafe_path("contains a backslash");
    }
    if path.contains(':') {
        return unsafe_path("contains a colon");
    }
    for component in path.split('/') {
        match component {
            "" => return unsafe_path("has an empty component"),
            "." => return unsafe_path("has a `.` component"),
            ".." => return unsafe_path("has a `..` component (path traversal)"),
            _ => {}
        }
    }
    Ok(())
}

/// Writes `entries` as a deterministic ustar archive, in the order given: mode 0644,
/// mtime 0, uid/gid 0, no owner names, terminated by two zero blocks.
pub(crate) fn write_entries(entries: &[(&str, &[u8])]) -> Result<Vec<u8>, BundleError> {
    let total: usize = entries
        .iter()
        .map(|(_, d)| BLOCK + d.len().div_ceil(BLOCK) * BLOCK)
        .sum();
    let mut builder = tar::Builder::new(Vec::with_capacity(total + 2 * BLOCK));
    for (path, data) in entries {
        check_path(path).map_err(|e| BundleError::Pack {
            reason: e.to_string(),
        })?;
        let mut header = tar::Header::new_ustar();
        header.set_path(path).map_err(|e| BundleError::Pack {
            reason: format!("path {path:?}: {e}"),
        })?;
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder
            .append(&header, *data)
            .map_err(|e| BundleError::Pack {
                reason: format!("writing {path:?} into the archive: {e}"),
            })?;
    }
    builder.into_inner().map_err(|e| BundleError::Pack {
        reason: format!("finishing the archive: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn written_archives_read_back_entry_for_entry() {
        let bytes = write_entries(&[("a.txt", b"hello"), ("dir/b.bin", &[7u8; 1000])]).unwrap();
        assert_eq!(bytes.len() % BLOCK, 0);
        let entries = read_entries(&bytes, &limits()).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[0].path, entries[0].data), ("a.txt", &b"hello"[..]));
        assert_eq!(
            (entries[1].path, entries[1].data),
            ("dir/b.bin", &[7u8; 1000][..])
        );
    }

    #[test]
    fn written_archives_are_readable_by_the_tar_crate_with_fixed_metadata() {
        let bytes = write_entries(&[("a.txt", b"hello")]).unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let entry = archive.entries().unwrap().next().unwrap().unwrap();
        let header = entry.header();
        assert_eq!(header.path().unwrap().to_str(), Some("a.txt"));
        assert_eq!(header.mode().unwrap(), 0o644);
        assert_eq!(header.mtime().unwrap(), 0);
        assert_eq!(header.uid().unwrap(), 0);
        assert_eq!(header.username().unwrap(), Some(""));
    }

    #[test]
    fn paths_that_could_escape_or_confuse_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a\\b",
            "c:x",
            "a\nb",
            "a/",
        ] {
            assert!(
                matches!(check_path(bad), Err(BundleError::UnsafePath { .. })),
                "{bad:?} was accepted"
            );
        }
        for good in ["model.onnx", "golden/input_0.npy", "a.b-c_d"] {
            check_path(good).unwrap();
        }
    }

    #[test]
    fn octal_fields_parse_with_either_terminator_and_reject_other_bytes() {
        assert_eq!(octal(b"0000644\0"), Some(0o644));
        assert_eq!(octal(b"   644 \0"), Some(0o644));
        assert_eq!(octal(b"00000000012\0"), Some(10));
        assert_eq!(octal(b"\0\0\0\0"), None);
        assert_eq!(octal(b"0008\0"), None);
        assert_eq!(octal(b"12 3\0"), None);
        assert_eq!(octal(&[0x80, 0, 0, 0, 0, 0, 0, 1]), None);
    }

    #[test]
    fn a_missing_end_marker_is_truncation() {
        let bytes = write_entries(&[("a", b"x")]).unwrap();
        let cut = &bytes[..bytes.len() - BLOCK];
        assert!(matches!(
            read_entries(cut, &limits()),
            Err(BundleError::Truncated { .. })
        ));
        let cut = &bytes[..2 * BLOCK];
        assert!(matches!(
            read_entries(cut, &limits()),
            Err(BundleError::Truncated { .. })
        ));
    }

    #[test]
    fn zero_padding_after_the_end_marker_is_accepted_and_data_is_not() {
        let mut bytes = write_entries(&[("a", b"x")]).unwrap();
        bytes.extend_from_slice(&[0u8; 4096]);
        read_entries(&bytes, &limits()).unwrap();
        bytes.push(1);
        assert!(matches!(
            read_entries(&bytes, &limits()),
            Err(BundleError::TrailingData { .. })
        ));
    }
}
