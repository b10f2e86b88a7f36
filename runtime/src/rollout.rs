//! The over-the-air rollout protocol shared by the operator (`perch rollout`) and the
//! devices (`perchd`): the signed rollout document, the chunked bundle transfer over
//! MQTT, and the state reports devices send back.
//!
//! # Topics
//!
//! The messages travel on these topics (their names are spelled in `perch-mqtt`'s
//! `topics` module, with every other topic of Perch):
//!
//! | topic                               | from → to         | QoS | retained | payload |
//! |-------------------------------------|-------------------|-----|----------|---------|
//! | `perch/fleet/{group}/rollout`       | operator → group  | 1   | yes      | [`SignedDocument`] JSON |
//! | `perch/{device}/ota/req`            | device → operator | 0   | no       | [`ChunkRequest`] JSON |
//! | `perch/{device}/ota/chunk`          | operator → device | 0   | no       | a chunk frame ([`encode_chunk`]) |
//! | `perch/{device}/rollout`            | device → operator | 1   | no       | [`DeviceStatus`] JSON, spooled |
//!
//! # The document
//!
//! The operator publishes one retained [`RolloutDocument`] per device group. It names
//! the bundle (sequence, size, SHA-256 of the whole file and of each chunk) and the
//! share of the group that should run it, in basis points; a device is in the cohort
//! iff [`canary::bucket`](crate::canary::bucket)`(device id, rollout id)` is below it,
//! so raising the share only adds devices. Every publication carries a higher
//! `revision` (milliseconds since the Unix epoch at the operator, or the previous
//! revision + 1 if the clock went back); a device remembers the highest revision it
//! acted on and refuses a lower one, so an old document replayed by anyone who can
//! publish on the topic does nothing.
//!
//! The document travels signed: [`SignedDocument`] holds the exact JSON text, the
//! signer's key id and an ed25519 signature over that text, verified strictly against
//! the same trusted keys as bundles. Nothing in an unsigned or wrongly signed document
//! is acted on.
//!
//! # Transfer
//!
//! A device in the cohort requests chunk `i` (bytes `i × chunk_size ..`) by publishing
//! a [`ChunkRequest`]; the operator answers with a frame holding the rollout id, the
//! index and the bytes. The device checks each chunk against the signed per-chunk
//! SHA-256 before writing it, so a corrupted or forged chunk is dropped and requested
//! again, and a partial download can be resumed after a restart from the last good
//! chunk by re-hashing what is on disk.

use std::fmt;

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bundle::{sign_text, verify_text, TextSignatureError};
use crate::canary::{self, Percent};

/// The rollout document's format version.
pub const FORMAT: u32 = 1;
/// The largest signed document accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// The smallest chunk size a document may declare.
pub const MIN_CHUNK_SIZE: u32 = 1024;
/// The largest chunk size a document may declare (under MQTT's usual limits).
pub const MAX_CHUNK_SIZE: u32 = 1024 * 1024;
/// The requests a device's soak must have judged before it confirms a bundle, when the
/// document does not say ([`RolloutDocument::soak_min_requests`]).
pub const DEFAULT_SOAK_MIN_REQUESTS: u64 = 100;
/// The chunk size the operator uses unless told otherwise.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
/// The largest bundle a document may declare.
pub const MAX_BUNDLE_BYTES: u64 = 512 * 1024 * 1024;
/// The magic bytes opening a chunk frame.
const CHUNK_MAGIC: &[u8; 4] = b"PCH1";
/// Ids (group, rollout, device) are topic segments: this long at most.
const MAX_ID_LEN: usize = 64;

/// Why a rollout message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RolloutError {
    /// The payload is not the expected JSON or frame.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The payload is larger than a document may be.
    #[error("the rollout document is {bytes} bytes; at most {MAX_DOCUMENT_BYTES} are accepted")]
    TooLarge {
        /// Its size.
        bytes: usize,
    },
    /// No trusted key has the signer's key id.
    #[error("the rollout document is signed by key {key_id}, which is not a trusted key")]
    UnknownKey {
        /// The key id the document names.
        key_id: String,
    },
    /// The signature does not verify.
    #[error("the rollout document's signature does not verify with key {key_id}")]
    BadSignature {
        /// The key it was checked against.
        key_id: String,
    },
    /// The document is well-formed and signed but breaks a rule.
    #[error("invalid rollout document: {0}")]
    Invalid(String),
}

impl RolloutError {
    /// A stable machine-readable code for the failure.
    pub fn kind(&self) -> &'static str {
        match self {
            RolloutError::Malformed { .. } => "malformed",
            RolloutError::TooLarge { .. } => "too_large",
            RolloutError::UnknownKey { .. } => "unknown_key",
            RolloutError::BadSignature { .. } => "bad_signature",
            RolloutError::Invalid(_) => "invalid",
        }
    }
}

/// What the operator asks of the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Devices in the cohort install the bundle and run it.
    Running,
    /// The cohort stays as it is: devices that have not started downloading wait;
    /// devices that run the bundle keep it.
    Paused,
    /// The rollout is over: every device that activated the bundle returns to the
    /// model it ran before, and nobody installs it.
    Aborted,
    /// The bundle reached the whole group; devices confirm it.
    Completed,
}

impl Phase {
    /// The phase as written in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Aborted => "aborted",
            Phase::Completed => "completed",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The bundle a rollout installs, as the device needs to fetch and check it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleRef {
    /// The model's name (the bundle manifest's `name`).
    pub name: String,
    /// The model's semantic version.
    pub version: String,
    /// The release sequence number; devices install only higher ones.
    pub sequence: u64,
    /// The bundle file's size in bytes; downloads are bounded by it.
    pub size: u64,
    /// SHA-256 of the whole bundle file, lowercase hex.
    pub sha256: String,
    /// Bytes per chunk (the last chunk may be shorter).
    pub chunk_size: u32,
    /// SHA-256 of each chunk in order, lowercase hex.
    pub chunks: Vec<String>,
}

impl BundleRef {
    /// Describes `bundle` (the bytes of a bundle file) cut in `chunk_size` chunks.
    pub fn describe(
        name: &str,
        version: &str,
        sequence: u64,
        bundle: &[u8],
        chunk_size: u32,
    ) -> BundleRef {
        BundleRef {
            name: name.to_string(),
            version: version.to_string(),
            sequence,
            size: bundle.len() as u64,
            sha256: hex::encode(Sha256::digest(bundle)),
            chunk_size,
            chunks: chunk_hashes(bundle, chunk_size),
        }
    }

    /// The number of chunks.
    pub fn chunk_count(&self) -> u32 {
        u32::try_from(self.chunks.len()).unwrap_or(u32::MAX)
    }

    /// The byte range of chunk `index` within the bundle, if it exists.
    pub fn chunk_range(&self, index: u32) -> Option<std::ops::Range<u64>> {
        if index >= self.chunk_count() {
            return None;
        }
        let start = u64::from(index) * u64::from(self.chunk_size);
        let end = (start + u64::from(self.chunk_size)).min(self.size);
        Some(start..end)
    }

    /// Whether `data` is chunk `index`: the right length and the signed hash.
    pub fn chunk_matches(&self, index: u32, data: &[u8]) -> bool {
        let (Some(range), Some(expected)) =
            (self.chunk_range(index), self.chunks.get(index as usize))
        else {
            return false;
        };
        data.len() as u64 == range.end - range.start
            && hex::encode(Sha256::digest(data)) == *expected
    }

    fn validate(&self) -> Result<(), String> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(format!(
                "chunk_size {} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}",
                self.chunk_size
            ));
        }
        if self.size == 0 || self.size > MAX_BUNDLE_BYTES {
            return Err(format!(
                "bundle size {} is outside 1..={MAX_BUNDLE_BYTES}",
                self.size
            ));
        }
        let expected = self.size.div_ceil(u64::from(self.chunk_size));
        if self.chunks.len() as u64 != expected {
            return Err(format!(
                "{} chunk hashes for {} bytes in chunks of {}; expected {expected}",
                self.chunks.len(),
                self.size,
                self.chunk_size
            ));
        }
        for (what, hash) in std::iter::once(("bundle", &self.sha256))
            .chain(self.chunks.iter().map(|h| ("chunk", h)))
        {
            if !is_sha256_hex(hash) {
                return Err(format!(
                    "{what} sha256 {hash:?} is not 64 lowercase hex digits"
                ));
            }
        }
        if semver::Version::parse(&self.version).is_err() {
            return Err(format!(
                "version {:?} is not a semantic version",
                self.version
            ));
        }
        if self.name.is_empty() || self.name.len() > 32 {
            return Err(format!("model name {:?} is not 1 to 32 bytes", self.name));
        }
        Ok(())
    }
}

/// The rollout document the operator publishes, retained, for a device group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutDocument {
    /// [`FORMAT`].
    pub format: u32,
    /// The device group (a topic segment).
    pub group: String,
    /// The rollout's id, unique per rollout (a topic-safe string); cohorts hash it.
    pub rollout_id: String,
    /// Increases with every publication for the group; lower ones are replays.
    pub revision: u64,
    /// When the operator issued this revision, RFC 3339 UTC (informational).
    pub issued: String,
    /// What the operator asks.
    pub phase: Phase,
    /// The cohort's share of the group, basis points (`0..=10_000`).
    pub percent_bp: u16,
    /// How long a device that activated the bundle watches its own p99 and error rate
    /// against the bundle's SLO before it confirms the bundle, seconds.
    pub soak_s: u64,
    /// The fewest requests a window of the device's soak must hold before its p99 and
    /// error rate are judged, and the fewest the whole soak must have judged before the
    /// device confirms the bundle: one slow request in a quiet interval does not roll
    /// back, and a soak without traffic does not confirm (the device reports
    /// [`DeviceState::Unexercised`] and keeps the bundle on probation). At least 1.
    #[serde(default = "default_soak_min_requests")]
    pub soak_min_requests: u64,
    /// How long a device holds a running or paused rollout's document fresh, seconds: the
    /// operator publishes a higher revision well within it, and a device that hears
    /// none for longer freezes its part in the rollout (no download, no confirmation;
    /// roll-backs still happen) and reports it, until one comes. `0`: never stale.
    #[serde(default)]
    pub fresh_s: u64,
    /// When a running or paused rollout's document expires, seconds since the Unix
    /// epoch (UTC) by the operator's clock: its issue time plus `fresh_s`. A device
    /// whose own clock is synchronized freezes past it as if the document were not
    /// renewed in time, even after a restart (which restarts `fresh_s`'s monotonic
    /// period). `0` (and absent): no expiry. Completed and aborted documents carry none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub expires_unix_s: u64,
    /// The model of the device's repository the rollout updates, by name (a `[[models]]`
    /// entry; the bundle must carry the same name); `None` (and absent on the wire): the
    /// primary model. Absent, the document's JSON is what it was before models could be
    /// named, so its signature and older agents read it unchanged. A named rollout
    /// travels on its own topic (`perch/fleet/{group}/model/{model}/rollout`), which
    /// agents that predate it do not follow; one published on the primary's topic is
    /// refused by them as malformed (an unknown field) and by newer agents as another
    /// model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The bundle.
    pub bundle: BundleRef,
}

fn default_soak_min_requests() -> u64 {
    DEFAULT_SOAK_MIN_REQUESTS
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl RolloutDocument {
    /// The cohort share as a [`Percent`] (validated documents only hold valid ones).
    pub fn percent(&self) -> Percent {
        Percent::from_basis_points(self.percent_bp).unwrap_or(Percent::ALL)
    }

    /// The device's bucket for this rollout.
    pub fn bucket(&self, device: &str) -> u16 {
        canary::bucket(device.as_bytes(), self.rollout_id.as_bytes())
    }

    /// Whether the document has expired at `unix_s` (seconds since the Unix epoch):
    /// it carries an expiry ([`expires_unix_s`](Self::expires_unix_s)), `unix_s` is
    /// at or past it, and the rollout is running or paused.
    pub fn expired_at(&self, unix_s: u64) -> bool {
        matches!(self.phase, Phase::Running | Phase::Paused)
            && self.expires_unix_s != 0
            && unix_s >= self.expires_unix_s
    }

    /// Whether `device` is in the cohort at this document's share.
    pub fn in_cohort(&self, device: &str) -> bool {
        self.bucket(device) < self.percent().basis_points()
    }

    /// Checks the rules a signature cannot: ids, share, bundle description.
    ///
    /// # Errors
    ///
    /// [`RolloutError::Invalid`] naming the rule.
    pub fn validate(&self) -> Result<(), RolloutError> {
        let invalid = RolloutError::Invalid;
        if self.format != FORMAT {
            return Err(invalid(format!(
                "format {} (this agent reads format {FORMAT})",
                self.format
            )));
        }
        check_id("group", &self.group).map_err(invalid)?;
        check_id("rollout_id", &self.rollout_id).map_err(invalid)?;
        if self.soak_min_requests == 0 {
            return Err(invalid("soak_min_requests is 0; at least 1".into()));
        }
        if let Some(model) = &self.model {
            check_id("model", model).map_err(invalid)?;
            if self.bundle.name != *model {
                return Err(invalid(format!(
                    "the rollout updates model {model:?} but its bundle is named {:?}",
                    self.bundle.name
                )));
            }
        }
        if self.percent_bp > canary::BUCKETS {
            return Err(invalid(format!(
                "percent_bp {} is over 10000",
                self.percent_bp
            )));
        }
        self.bundle.validate().map_err(invalid)
    }

    /// Signs the document with `key`: the JSON a retained message carries.
    pub fn sign(&self, key: &SigningKey) -> Vec<u8> {
        // Serializing a struct of strings and numbers cannot fail.
        let document = serde_json::to_string(self).unwrap_or_default();
        let (key_id, signature) = sign_text(key, &document);
        let signed = SignedDocument {
            format: FORMAT,
            key_id,
            signature,
            document,
        };
        serde_json::to_vec_pretty(&signed).unwrap_or_default()
    }

    /// Parses a signed document, checks its signature against `trusted` and its rules.
    ///
    /// # Errors
    ///
    /// The payload is too large or malformed, signed by an unknown key, the signature
    /// does not verify, or the document breaks a rule.
    pub fn verify(
        payload: &[u8],
        trusted: &[VerifyingKey],
    ) -> Result<RolloutDocument, RolloutError> {
        if payload.len() > MAX_DOCUMENT_BYTES {
            return Err(RolloutError::TooLarge {
                bytes: payload.len(),
            });
        }
        let signed: SignedDocument =
            serde_json::from_slice(payload).map_err(|e| RolloutError::Malformed {
                what: "signed rollout document",
                reason: e.to_string(),
            })?;
        verify_text(trusted, &signed.key_id, &signed.signature, &signed.document).map_err(|e| {
            let key_id = signed.key_id.clone();
            match e {
                TextSignatureError::UnknownKey => RolloutError::UnknownKey { key_id },
                _ => RolloutError::BadSignature { key_id },
            }
        })?;
        let document: RolloutDocument =
            serde_json::from_str(&signed.document).map_err(|e| RolloutError::Malformed {
                what: "rollout document",
                reason: e.to_string(),
            })?;
        document.validate()?;
        Ok(document)
    }
}

/// The signed envelope of a [`RolloutDocument`] on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedDocument {
    /// [`FORMAT`].
    pub format: u32,
    /// The signer's key id ([`key_id`](crate::bundle::key_id)).
    pub key_id: String,
    /// The ed25519 signature over the exact bytes of `document`, 128 hex digits.
    pub signature: String,
    /// The [`RolloutDocument`] as JSON text.
    pub document: String,
}

/// A device's request for one chunk, on `perch/{device}/ota/req`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRequest {
    /// The rollout whose bundle is downloaded.
    pub rollout_id: String,
    /// The chunk's index.
    pub index: u32,
}

/// A chunk as received: which rollout, which index, the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkFrame<'a> {
    /// The rollout id.
    pub rollout_id: &'a str,
    /// The chunk's index.
    pub index: u32,
    /// The chunk's bytes.
    pub data: &'a [u8],
}

/// Encodes a chunk frame: `PCH1`, the rollout id's length (one byte) and bytes, the
/// index (u32, big-endian), then the data.
pub fn encode_chunk(rollout_id: &str, index: u32, data: &[u8]) -> Vec<u8> {
    let id = rollout_id.as_bytes();
    let id_len = u8::try_from(id.len()).unwrap_or(u8::MAX);
    let id = &id[..usize::from(id_len)];
    let mut frame = Vec::with_capacity(4 + 1 + id.len() + 4 + data.len());
    frame.extend_from_slice(CHUNK_MAGIC);
    frame.push(id_len);
    frame.extend_from_slice(id);
    frame.extend_from_slice(&index.to_be_bytes());
    frame.extend_from_slice(data);
    frame
}

/// Decodes a chunk frame ([`encode_chunk`]).
///
/// # Errors
///
/// [`RolloutError::Malformed`] when the frame is cut short, lacks the magic, or the id
/// is not UTF-8.
pub fn decode_chunk(frame: &[u8]) -> Result<ChunkFrame<'_>, RolloutError> {
    let malformed = |reason: &str| RolloutError::Malformed {
        what: "chunk frame",
        reason: reason.to_string(),
    };
    let rest = frame
        .strip_prefix(CHUNK_MAGIC)
        .ok_or_else(|| malformed("it does not start with PCH1"))?;
    let (&id_len, rest) = rest
        .split_first()
        .ok_or_else(|| malformed("no rollout id"))?;
    if rest.len() < usize::from(id_len) + 4 {
        return Err(malformed("cut short before the chunk index"));
    }
    let (id, rest) = rest.split_at(usize::from(id_len));
    let rollout_id =
        std::str::from_utf8(id).map_err(|_| malformed("the rollout id is not UTF-8"))?;
    let (index, data) = rest.split_at(4);
    let index = u32::from_be_bytes([index[0], index[1], index[2], index[3]]);
    Ok(ChunkFrame {
        rollout_id,
        index,
        data,
    })
}

/// SHA-256 of each `chunk_size` piece of `bundle`, lowercase hex.
pub fn chunk_hashes(bundle: &[u8], chunk_size: u32) -> Vec<String> {
    bundle
        .chunks(chunk_size.max(1) as usize)
        .map(|chunk| hex::encode(Sha256::digest(chunk)))
        .collect()
}

/// Where a device stands in a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Outside the cohort at the current share: keeps its model.
    NotInCohort,
    /// In the cohort, waiting (the rollout is paused before it downloaded).
    Pending,
    /// Fetching chunks.
    Downloading,
    /// Checking the whole bundle, loading it, self-testing and warming it up.
    Verifying,
    /// Serving the bundle, on probation (soaking against its SLO).
    Active,
    /// Serving the bundle, still on probation: the soak's time is over but it served
    /// fewer requests than the document's `soak_min_requests`, so the bundle is neither
    /// confirmed nor refused. The device confirms it once enough requests were judged,
    /// or when the operator completes the rollout.
    Unexercised,
    /// Serving the bundle; probation ended without a breach.
    Confirmed,
    /// The bundle was refused or could not be installed; the old model serves.
    Failed,
    /// The bundle was activated, then left for the previous model (SLO breach, crash
    /// loop or an aborted rollout).
    RolledBack,
}

impl DeviceState {
    /// The state as written in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::NotInCohort => "not_in_cohort",
            DeviceState::Pending => "pending",
            DeviceState::Downloading => "downloading",
            DeviceState::Verifying => "verifying",
            DeviceState::Active => "active",
            DeviceState::Unexercised => "unexercised",
            DeviceState::Confirmed => "confirmed",
            DeviceState::Failed => "failed",
            DeviceState::RolledBack => "rolled_back",
        }
    }
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device's report of a state change, on `perch/{device}/rollout` (QoS 1, spooled
/// across broker outages). `(rollout_id, version, state, update)` identifies it:
/// receivers drop duplicates of an `update` they already have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceStatus {
    /// [`FORMAT`].
    pub format: u32,
    /// The reporting device.
    pub device: String,
    /// The rollout the state is about.
    pub rollout_id: String,
    /// The document revision the device acted on.
    pub revision: u64,
    /// The bundle's version in that rollout.
    pub version: String,
    /// The bundle's release sequence.
    pub sequence: u64,
    /// The device's bucket for the rollout.
    pub bucket: u16,
    /// Where the device stands.
    pub state: DeviceState,
    /// Downloaded share, percent (downloading only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_pct: Option<u8>,
    /// Why (failed, rolled back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The model the device serves after this change (`name version`).
    pub serving: String,
    /// The rollout's model ([`RolloutDocument::model`]); absent for the primary model,
    /// so reports of primary rollouts read as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Counts this device's reports for this rollout, from 1.
    pub update: u32,
    /// The device heard no fresh document within the document's `fresh_s` and froze
    /// its part in the rollout (`reason` says since when); absent when not.
    #[serde(default, skip_serializing_if = "is_false")]
    pub frozen: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl DeviceStatus {
    /// The report as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a report.
    ///
    /// # Errors
    ///
    /// [`RolloutError::Malformed`].
    pub fn from_json(payload: &[u8]) -> Result<DeviceStatus, RolloutError> {
        serde_json::from_slice(payload).map_err(|e| RolloutError::Malformed {
            what: "device rollout status",
            reason: e.to_string(),
        })
    }
}

/// Whether `s` is 64 lowercase hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks an id used as a topic segment: 1 to 64 bytes of `[A-Za-z0-9._-]`.
///
/// # Errors
///
/// A message naming `what` and the rule.
pub fn check_id(what: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!("{what} {id:?} is not 1 to {MAX_ID_LEN} bytes"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "{what} {id:?} may hold only letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn document(bundle: &[u8]) -> RolloutDocument {
        RolloutDocument {
            format: FORMAT,
            group: "kitchen".into(),
            rollout_id: "kws-1.3.0-a".into(),
            revision: 1_790_000_000_000,
            issued: "2026-11-26T12:00:00Z".into(),
            phase: Phase::Running,
            percent_bp: 1_000,
            soak_s: 60,
            soak_min_requests: 100,
            fresh_s: 600,
            expires_unix_s: 0,
            model: None,
            bundle: BundleRef::describe("kws", "1.3.0", 7, bundle, MIN_CHUNK_SIZE),
        }
    }

    #[test]
    fn a_signed_document_verifies_with_its_key_and_only_with_it() {
        let bundle = vec![7u8; 2_500];
        let doc = document(&bundle);
        let payload = doc.sign(&key(1));
        let trusted = [key(1).verifying_key()];
        assert_eq!(RolloutDocument::verify(&payload, &trusted).unwrap(), doc);
        let err = RolloutDocument::verify(&payload, &[key(2).verifying_key()]).unwrap_err();
        assert_eq!(err.kind(), "unknown_key", "{err}");
    }

    #[test]
    fn an_expiry_is_optional_on_the_wire_and_binds_only_running_and_paused_documents() {
        let mut doc = document(&[1u8; 100]);
        // Without one, the field is not written, so documents signed before expiries
        // existed and after read the same.
        let json = serde_json::to_string(&doc).unwrap();
        assert!(!json.contains("expires_unix_s"), "{json}");
        assert!(!doc.expired_at(u64::MAX));
        doc.expires_unix_s = 1_790_000_600;
        let json = serde_json::to_string(&doc).unwrap();
        assert!(json.contains("\"expires_unix_s\":1790000600"), "{json}");
        let payload = doc.sign(&key(1));
        assert_eq!(
            RolloutDocument::verify(&payload, &[key(1).verifying_key()]).unwrap(),
            doc
        );
        assert!(!doc.expired_at(1_790_000_599));
        assert!(doc.expired_at(1_790_000_600));
        doc.phase = Phase::Paused;
        assert!(doc.expired_at(1_790_000_600));
        for phase in [Phase::Completed, Phase::Aborted] {
            doc.phase = phase;
            assert!(!doc.expired_at(u64::MAX), "{phase:?}");
        }
    }

    #[test]
    fn a_model_is_optional_on_the_wire_and_must_be_the_bundles_name() {
        let trusted = [key(1).verifying_key()];
        let mut doc = document(&[1u8; 100]);
        // Without one, the JSON (and so the signed bytes) are what they were before.
        let json = serde_json::to_string(&doc).unwrap();
        assert!(!json.contains("\"model\""), "{json}");
        doc.model = Some("kws".into());
        let json = serde_json::to_string(&doc).unwrap();
        assert!(json.contains("\"model\":\"kws\",\"bundle\""), "{json}");
        assert_eq!(
            RolloutDocument::verify(&doc.sign(&key(1)), &trusted).unwrap(),
            doc
        );
        doc.model = Some("iris".into());
        let err = RolloutDocument::verify(&doc.sign(&key(1)), &trusted).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid rollout document: the rollout updates model \"iris\" but its bundle is \
             named \"kws\""
        );
        doc.model = Some("k/s".into());
        let err = RolloutDocument::verify(&doc.sign(&key(1)), &trusted).unwrap_err();
        assert!(
            err.to_string().contains("model \"k/s\" may hold only"),
            "{err}"
        );
    }

    #[test]
    fn a_changed_document_or_signature_is_refused() {
        let doc = document(&[1u8; 4096]);
        let payload = doc.sign(&key(1));
        let trusted = [key(1).verifying_key()];
        let mut signed: SignedDocument = serde_json::from_slice(&payload).unwrap();
        signed.document = signed
            .document
            .replace("\"percent_bp\":1000", "\"percent_bp\":10000");
        assert!(signed.document.contains("10000"));
        let tampered = serde_json::to_vec(&signed).unwrap();
        let err = RolloutDocument::verify(&tampered, &trusted).unwrap_err();
        assert_eq!(err.kind(), "bad_signature", "{err}");

        let mut signed: SignedDocument = serde_json::from_slice(&payload).unwrap();
        signed.signature.truncate(10);
        let err = RolloutDocument::verify(&serde_json::to_vec(&signed).unwrap(), &trusted);
        assert_eq!(err.unwrap_err().kind(), "bad_signature");

        for junk in [&b""[..], b"{}", b"null", &[0xff; 10]] {
            let err = RolloutDocument::verify(junk, &trusted).unwrap_err();
            assert_eq!(err.kind(), "malformed", "{err}");
        }
        let huge = vec![b' '; MAX_DOCUMENT_BYTES + 1];
        assert_eq!(
            RolloutDocument::verify(&huge, &trusted).unwrap_err().kind(),
            "too_large"
        );
    }

    #[test]
    fn signed_documents_breaking_a_rule_are_refused_naming_it() {
        let trusted = [key(1).verifying_key()];
        type Change = fn(&mut RolloutDocument);
        let cases: Vec<(Change, &str)> = vec![
            (|d| d.group = "a/b".into(), "group"),
            (|d| d.rollout_id = String::new(), "rollout_id"),
            (|d| d.percent_bp = 10_001, "percent_bp"),
            (|d| d.bundle.chunk_size = 10, "chunk_size"),
            (
                |d| {
                    d.bundle.chunks.pop();
                },
                "chunk hashes",
            ),
            (|d| d.bundle.sha256 = "ABC".into(), "sha256"),
            (|d| d.bundle.version = "one".into(), "version"),
            (|d| d.format = 2, "format"),
            (|d| d.soak_min_requests = 0, "soak_min_requests"),
        ];
        for (change, needle) in cases {
            let mut doc = document(&[3u8; 5000]);
            change(&mut doc);
            let err = RolloutDocument::verify(&doc.sign(&key(1)), &trusted).unwrap_err();
            assert_eq!(err.kind(), "invalid", "{err}");
            assert!(
                err.to_string().contains(needle),
                "{err} should name {needle}"
            );
        }
    }

    #[test]
    fn a_document_without_the_soak_minimum_or_freshness_reads_with_their_defaults() {
        let doc = document(&[5u8; 3000]);
        let mut json = serde_json::to_value(&doc).unwrap();
        let fields = json.as_object_mut().unwrap();
        fields.remove("soak_min_requests");
        fields.remove("fresh_s");
        let read: RolloutDocument = serde_json::from_value(json).unwrap();
        assert_eq!(read.soak_min_requests, DEFAULT_SOAK_MIN_REQUESTS);
        assert_eq!(read.fresh_s, 0);
    }

    #[test]
    fn chunks_round_trip_and_match_only_their_signed_hash() {
        let bundle: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let doc = document(&bundle);
        assert_eq!(doc.bundle.chunk_count(), 5);
        assert_eq!(doc.bundle.chunk_range(4), Some(4096..5000));
        assert_eq!(doc.bundle.chunk_range(5), None);
        for index in 0..5 {
            let range = doc.bundle.chunk_range(index).unwrap();
            let data = &bundle[range.start as usize..range.end as usize];
            let frame = encode_chunk(&doc.rollout_id, index, data);
            let decoded = decode_chunk(&frame).unwrap();
            assert_eq!(decoded.rollout_id, doc.rollout_id);
            assert_eq!(decoded.index, index);
            assert!(doc.bundle.chunk_matches(index, decoded.data));
            assert!(!doc.bundle.chunk_matches((index + 1) % 5, decoded.data));
            let mut flipped = data.to_vec();
            flipped[0] ^= 1;
            assert!(!doc.bundle.chunk_matches(index, &flipped));
            assert!(!doc.bundle.chunk_matches(index, &data[1..]));
        }
        for bad in [&b"PCH"[..], b"XXXX\x01a\0\0\0\0", b"PCH1\x05ab"] {
            assert_eq!(decode_chunk(bad).unwrap_err().kind(), "malformed");
        }
    }

    #[test]
    fn raising_the_share_keeps_every_member() {
        let mut doc = document(&[0u8; 2000]);
        let devices: Vec<String> = (0..1000).map(|i| format!("dev-{i:04}")).collect();
        let at_10: Vec<&String> = devices.iter().filter(|d| doc.in_cohort(d)).collect();
        doc.percent_bp = 5_000;
        assert!(at_10.iter().all(|d| doc.in_cohort(d)));
        assert!((80..=120).contains(&at_10.len()), "{}", at_10.len());
    }

    #[test]
    fn device_status_round_trips() {
        let status = DeviceStatus {
            format: FORMAT,
            device: "pi-1".into(),
            rollout_id: "r".into(),
            revision: 3,
            version: "1.3.0".into(),
            sequence: 7,
            bucket: 42,
            state: DeviceState::Downloading,
            progress_pct: Some(40),
            reason: None,
            serving: "kws 1.2.0".into(),
            model: None,
            update: 2,
            frozen: false,
        };
        let json = status.to_json();
        let text = std::str::from_utf8(&json).unwrap();
        assert!(text.contains("\"downloading\""));
        assert!(!text.contains("frozen"), "{text}");
        assert_eq!(DeviceStatus::from_json(&json).unwrap(), status);
        let frozen = DeviceStatus {
            frozen: true,
            ..status
        };
        assert_eq!(DeviceStatus::from_json(&frozen.to_json()).unwrap(), frozen);
        assert!(DeviceStatus::from_json(b"{\"format\":1}").is_err());
    }
}
