//! `[spool]`: where reports wait while the broker is away.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::args::Args;
use super::origin::{ConfigError, Setting, Source};
use super::values::ByteSize;
use crate::device::DeviceId;

/// Reports kept in the spool by default (at 10 s intervals, a bit more than a day).
pub const DEFAULT_SPOOL_MAX_RECORDS: usize = 10_000;
/// Bytes kept in the spool by default.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 4 << 20;

/// The report spool.
#[derive(Debug, Clone, PartialEq)]
pub struct SpoolConfig {
    /// Its folder (created if missing).
    pub dir: PathBuf,
    /// Most reports kept.
    pub max_records: usize,
    /// Most bytes kept.
    pub max_bytes: u64,
}

/// The `[spool]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SpoolFile {
    dir: Option<Spanned<PathBuf>>,
    max_records: Option<Spanned<usize>>,
    max_bytes: Option<Spanned<ByteSize>>,
}

/// The flags over the `[spool]` section; the folder defaults to the device's own
/// ([`default_spool_dir`]).
///
/// # Errors
///
/// A spool of no records.
pub(super) fn resolve(
    args: &Args,
    file: SpoolFile,
    device: &DeviceId,
    source: &Source<'_>,
) -> Result<SpoolConfig, ConfigError> {
    let max_records = Setting::pick_or(
        ("--spool-max-records", args.spool_max_records),
        ("spool.max_records", file.max_records),
        DEFAULT_SPOOL_MAX_RECORDS,
    );
    if max_records.value == 0 {
        return Err(source.invalid(&max_records, "must be at least 1"));
    }
    Ok(SpoolConfig {
        dir: match (&args.spool_dir, file.dir) {
            (Some(d), _) => d.clone(),
            (None, Some(d)) => source.path(d.into_inner()),
            (None, None) => default_spool_dir(device),
        },
        max_records: max_records.value,
        max_bytes: file
            .max_bytes
            .map_or(DEFAULT_SPOOL_MAX_BYTES, |b| b.into_inner().0),
    })
}

/// The default spool folder of a device: `$STATE_DIRECTORY/spool` under systemd,
/// otherwise `perch/{device}/spool` under `$XDG_STATE_HOME`, `~/.local/state` or the
/// temporary folder.
pub fn default_spool_dir(device: &DeviceId) -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("spool");
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|d| !d.is_empty())
                .map(|home| PathBuf::from(home).join(".local/state"))
        })
        .unwrap_or_else(std::env::temp_dir);
    state.join("perch").join(device.as_str()).join("spool")
}
