//! What can be wrong with a bundle, a key file, or the model a bundle carries.

use std::path::PathBuf;

use crate::engine::EngineError;

/// Everything that can make a bundle unusable, one variant per failure.
///
/// The message of each variant names the part, the entry or the key at fault, so it can
/// be shown to a user (or reported by a device) as it is. Messages are complete on one
/// line, including the underlying engine or I/O error, so variants do not also expose
/// it as `source()` (error-chain printers would repeat it). [`BundleError::kind`] gives
/// a stable machine-readable code for the same failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The input holds no bytes at all.
    #[error("the bundle is empty (0 bytes)")]
    Empty,
    /// The bytes are not a POSIX ustar archive, or a header in it is corrupt.
    #[error("not a valid bundle archive: the tar header at byte {offset} {reason}")]
    NotATar {
        /// Offset of the offending 512-byte header.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The archive ends before an entry's data or before the end-of-archive marker.
    #[error("the bundle is truncated: {what} needs bytes up to {needed}, but the bundle has {available}")]
    Truncated {
        /// What was being read.
        what: String,
        /// Offset one past the last byte it needs.
        needed: u64,
        /// The bundle's length.
        available: u64,
    },
    /// Non-zero bytes follow the end-of-archive marker.
    #[error("the bundle has non-zero data after the end of the archive, at byte {offset}")]
    TrailingData {
        /// Offset of the first non-zero byte.
        offset: u64,
    },
    /// An entry is not a regular file (a link, a folder, a pax or GNU extension header).
    #[error("entry {path:?} is a {kind}; a bundle holds regular files only")]
    UnsupportedEntry {
        /// The entry's path as written in its header.
        path: String,
        /// What kind of entry it is.
        kind: String,
    },
    /// An entry's or a manifest part's path could escape the folder it is unpacked into,
    /// or is not a plain relative path.
    #[error("unsafe path {path:?}: {reason}")]
    UnsafePath {
        /// The path as written.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The same path appears twice in the archive (or twice in the manifest).
    #[error("duplicate entry {path:?}")]
    DuplicateEntry {
        /// The repeated path.
        path: String,
    },
    /// The bundle, its manifest or its entry count exceeds a [`Limits`](super::Limits) bound.
    #[error("{what} is {actual}, above the limit of {limit}")]
    Oversize {
        /// What was measured ("the bundle size in bytes", ...).
        what: &'static str,
        /// The limit.
        limit: u64,
        /// The value found (for streams: at least this much).
        actual: u64,
    },
    /// There is no `manifest.json` entry.
    #[error("the bundle has no manifest.json")]
    MissingManifest,
    /// There is no `manifest.sig` entry.
    #[error("the bundle has no manifest.sig (the signature over manifest.json)")]
    MissingSignature,
    /// `manifest.json` is not valid JSON of the manifest's schema, or breaks one of its rules.
    #[error("manifest.json is invalid: {reason}")]
    BadManifest {
        /// What is wrong, with the line and column for JSON errors.
        reason: String,
    },
    /// The feature schema (in the manifest, or a schema file) does not parse, breaks one
    /// of its rules, or does not fit the model's signature.
    #[error("the feature schema is invalid: {reason}")]
    BadSchema {
        /// What is wrong, naming the feature.
        reason: String,
    },
    /// The manifest declares a format version this runtime does not read.
    #[error("manifest.json has format {found}; this runtime reads format {supported}")]
    UnsupportedFormat {
        /// The declared version.
        found: u64,
        /// The version this code reads.
        supported: u64,
    },
    /// The manifest's `version` is not a semantic version.
    #[error(
        "manifest.json version {version:?} is not a semantic version (MAJOR.MINOR.PATCH): {reason}"
    )]
    InvalidVersion {
        /// The version as written.
        version: String,
        /// The parser's reason.
        reason: String,
    },
    /// The manifest lists a part that the archive does not hold.
    #[error("part {path:?} is listed in the manifest but missing from the bundle")]
    MissingPart {
        /// The listed path.
        path: String,
    },
    /// The archive holds a file the manifest does not list (so no signature covers it).
    #[error("entry {path:?} is not listed in the manifest")]
    UnlistedEntry {
        /// The entry's path.
        path: String,
    },
    /// A part's length differs from the manifest's.
    #[error("part {path:?} is {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        /// The part.
        path: String,
        /// The manifest's length.
        expected: u64,
        /// The archive's length.
        actual: u64,
    },
    /// A part's SHA-256 differs from the manifest's: it was altered or corrupted.
    #[error("part {path:?} has sha256 {actual}, the manifest says {expected}")]
    HashMismatch {
        /// The part.
        path: String,
        /// The manifest's hash (hex).
        expected: String,
        /// The hash of the archive's bytes (hex).
        actual: String,
    },
    /// A golden file is not a readable `.npy` array.
    #[error("golden file {path:?} is not a usable .npy array: {reason}")]
    BadGolden {
        /// The part.
        path: String,
        /// Why it cannot be read.
        reason: String,
    },
    /// `manifest.sig` is not a 64-byte ed25519 signature.
    #[error("manifest.sig is {len} bytes; an ed25519 signature is 64")]
    MalformedSignature {
        /// Its length.
        len: usize,
    },
    /// The manifest was signed by a key that is not among the trusted ones.
    #[error("the bundle is signed by key {key_id}, which is not trusted (trusted: {})", if trusted.is_empty() { "none".to_string() } else { trusted.join(", ") })]
    UnknownKey {
        /// The manifest's `key_id`.
        key_id: String,
        /// Key ids of the trusted keys.
        trusted: Vec<String>,
    },
    /// The signature does not match `manifest.json` under the trusted key with its id:
    /// the manifest or the signature was altered, or signed by another key.
    #[error("the signature over manifest.json does not verify with trusted key {key_id}: the manifest or its signature was altered")]
    SignatureInvalid {
        /// The key tried.
        key_id: String,
    },
    /// The bundle's model does not load in the engine.
    #[error("the bundle's model does not load: {0}")]
    Model(EngineError),
    /// The model does not reproduce the bundle's golden outputs.
    #[error("the golden self-test failed: {0}")]
    SelfTest(EngineError),
    /// Key text (a key file's contents, or a key from a configuration) is malformed.
    #[error("invalid key: {reason}")]
    BadKey {
        /// What is wrong with it.
        reason: String,
    },
    /// A key file is malformed.
    #[error("key file {}: {reason}", path.display())]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The bundle contents given to [`pack`](super::pack) are not valid.
    #[error("cannot pack: {reason}")]
    Pack {
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        error: std::io::Error,
    },
}

impl BundleError {
    /// A stable, machine-readable code for the failure (`hash_mismatch`, `signature_invalid`,
    /// ...), for reports and scripts; the same for every instance of a variant.
    pub fn kind(&self) -> &'static str {
        match self {
            BundleError::Empty => "empty",
            BundleError::NotATar { .. } => "not_a_tar",
            BundleError::Truncated { .. } => "truncated",
            BundleError::TrailingData { .. } => "trailing_data",
            BundleError::UnsupportedEntry { .. } => "unsupported_entry",
            BundleError::UnsafePath { .. } => "unsafe_path",
            BundleError::DuplicateEntry { .. } => "duplicate_entry",
            BundleError::Oversize { .. } => "oversize",
            BundleError::MissingManifest => "missing_manifest",
            BundleError::MissingSignature => "missing_signature",
            BundleError::BadManifest { .. } => "bad_manifest",
            BundleError::BadSchema { .. } => "bad_schema",
            BundleError::UnsupportedFormat { .. } => "unsupported_format",
            BundleError::InvalidVersion { .. } => "invalid_version",
            BundleError::MissingPart { .. } => "missing_part",
            BundleError::UnlistedEntry { .. } => "unlisted_entry",
            BundleError::SizeMismatch { .. } => "size_mismatch",
            BundleError::HashMismatch { .. } => "hash_mismatch",
            BundleError::BadGolden { .. } => "bad_golden",
            BundleError::MalformedSignature { .. } => "malformed_signature",
            BundleError::UnknownKey { .. } => "unknown_key",
            BundleError::SignatureInvalid { .. } => "signature_invalid",
            BundleError::Model(_) => "model",
            BundleError::SelfTest(_) => "self_test",
            BundleError::BadKey { .. } | BundleError::KeyFile { .. } => "bad_key",
            BundleError::Pack { .. } => "pack",
            BundleError::Io { .. } => "io",
        }
    }
}
