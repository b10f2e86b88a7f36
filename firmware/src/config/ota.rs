//! `[ota]`: over-the-air model updates.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::args::Args;
use super::model::ModelConfig;
use super::origin::{ConfigError, Setting, Source};
use super::spool::SpoolConfig;
use super::values::HumanDuration;

/// Starts of the agent on a newly activated model, before it is confirmed, after which
/// the agent returns to the previous model (a crash loop).
pub const DEFAULT_MAX_PROBATION_BOOTS: u32 = 3;
/// How long a device waits for a requested bundle chunk before it asks again.
pub const DEFAULT_CHUNK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a download may wait for a good copy of a chunk before its rollout fails.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(600);
/// The device group of a device that names none.
pub const DEFAULT_GROUP: &str = "default";

/// Over-the-air model updates (`[ota]`, `--ota`, `--group`, `--ota-dir`).
#[derive(Debug, Clone, PartialEq)]
pub struct OtaSettings {
    /// The fleet group whose rollout document the device follows.
    pub group: String,
    /// Folder of the model slots, the slot state and partial downloads.
    pub dir: PathBuf,
    /// Starts on a new model before it is confirmed, after which the device rolls back.
    pub max_probation_boots: u32,
    /// A requested chunk not received within this is requested again.
    pub chunk_timeout: Duration,
    /// A download that gets no good copy of the chunk it needs within this fails.
    pub stall_timeout: Duration,
}

/// The `[ota]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OtaFile {
    enabled: Option<Spanned<bool>>,
    group: Option<Spanned<String>>,
    dir: Option<Spanned<PathBuf>>,
    max_probation_boots: Option<Spanned<u32>>,
    chunk_timeout: Option<Spanned<HumanDuration>>,
    stall_timeout: Option<Spanned<HumanDuration>>,
}

/// The flags over the `[ota]` section: on by default when the model has trusted keys
/// (updates are signed bundles); the folder defaults to `ota` beside the spool's.
///
/// # Errors
///
/// Updates turned on without trusted keys, a group that is not one topic level, no
/// probation boots.
pub(super) fn resolve(
    args: &Args,
    file: OtaFile,
    model: &ModelConfig,
    spool: &SpoolConfig,
    source: &Source<'_>,
) -> Result<Option<OtaSettings>, ConfigError> {
    let keyed = !model.trusted_keys.is_empty();
    let enabled = Setting::pick_or(("--ota", args.ota), ("ota.enabled", file.enabled), keyed);
    if !enabled.value {
        return Ok(None);
    }
    if !keyed {
        return Err(source.invalid(
            &enabled,
            "over-the-air updates are signed bundles: give the keys that sign them \
             (model.trusted_keys, --trusted-key)",
        ));
    }
    let group = Setting::pick_or(
        ("--group", args.group.clone()),
        ("ota.group", file.group),
        DEFAULT_GROUP.to_string(),
    );
    if let Err(message) = perch_runtime::rollout::check_id("group", &group.value) {
        return Err(source.invalid(&group, message));
    }
    let max_probation_boots = Setting::file_or(
        "ota.max_probation_boots",
        file.max_probation_boots,
        DEFAULT_MAX_PROBATION_BOOTS,
    );
    if max_probation_boots.value == 0 {
        return Err(source.invalid(&max_probation_boots, "must be at least 1"));
    }
    Ok(Some(OtaSettings {
        group: group.value,
        dir: match (&args.ota_dir, file.dir) {
            (Some(d), _) => d.clone(),
            (None, Some(d)) => source.path(d.into_inner()),
            (None, None) => spool
                .dir
                .parent()
                .map_or_else(|| PathBuf::from("ota"), |p| p.join("ota")),
        },
        max_probation_boots: max_probation_boots.value,
        chunk_timeout: file
            .chunk_timeout
            .map_or(DEFAULT_CHUNK_TIMEOUT, |d| d.into_inner().0),
        stall_timeout: file
            .stall_timeout
            .map_or(DEFAULT_STALL_TIMEOUT, |d| d.into_inner().0),
    }))
}
