//! Reports of refused rollout documents, under the rollout id the refused document
//! names, so whoever published it (an operator signing with the wrong key, or one whose
//! clock is behind the previous rollout's revision) learns why nothing happens.
//!
//! A refusal changes nothing in the device's current rollout: it is a `failed` report
//! for the other rollout id, sent once per distinct document (a retained one is
//! delivered again on every reconnection), with an `update` counter of its own that a
//! later acceptance of the same rollout id continues above.

use perch_runtime::rollout::{self, DeviceState, DeviceStatus, RolloutDocument};
use sha2::{Digest, Sha256};

/// What a refused document says it is: its rollout id, revision and bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Claimed {
    /// The rollout id (checked like any rollout id).
    pub rollout_id: String,
    /// Its revision.
    pub revision: u64,
    /// The bundle's version.
    pub version: String,
    /// The bundle's sequence number.
    pub sequence: u64,
}

impl Claimed {
    /// What a verified (but refused) document says.
    pub fn of(doc: &RolloutDocument) -> Claimed {
        Claimed {
            rollout_id: doc.rollout_id.clone(),
            revision: doc.revision,
            version: doc.bundle.version.clone(),
            sequence: doc.bundle.sequence,
        }
    }

    /// What a document that does not verify claims; `None` when it names no valid
    /// rollout id. Unverified: echoed in the report, never acted on.
    pub fn unverified(payload: &[u8]) -> Option<Claimed> {
        let signed = serde_json::from_slice::<rollout::SignedDocument>(payload).ok()?;
        let claimed = serde_json::from_str::<serde_json::Value>(&signed.document).ok()?;
        let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
        let rollout_id = claimed
            .get("rollout_id")
            .and_then(text)
            .filter(|id| rollout::check_id("rollout_id", id).is_ok())?;
        let bundle = claimed.get("bundle");
        Some(Claimed {
            rollout_id,
            revision: claimed
                .get("revision")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
            version: bundle
                .and_then(|b| b.get("version"))
                .and_then(text)
                .filter(|v| v.len() <= 64)
                .unwrap_or_default(),
            sequence: bundle
                .and_then(|b| b.get("sequence"))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
        })
    }
}

/// The refusals reported since the agent started (not persisted: after a restart a
/// retained refused document is reported once more).
#[derive(Debug, Clone, Default)]
pub(super) struct Refusals {
    /// SHA-256 of the last refused document.
    last: Option<[u8; 32]>,
    /// Refusal reports sent: the `update` of the latest.
    count: u32,
}

impl Refusals {
    /// Whether `payload` differs from the last refused document; records it.
    pub fn is_new(&mut self, payload: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(payload).into();
        self.last.replace(digest) != Some(digest)
    }

    /// The `failed` report of the refused document `claimed` on `device`, now serving
    /// `serving`, with `reason`.
    pub fn report(
        &mut self,
        device: &str,
        serving: &str,
        claimed: Claimed,
        reason: String,
    ) -> DeviceStatus {
        self.count = self.count.saturating_add(1);
        DeviceStatus {
            format: rollout::FORMAT,
            device: device.to_string(),
            bucket: perch_runtime::canary::bucket(device.as_bytes(), claimed.rollout_id.as_bytes()),
            rollout_id: claimed.rollout_id,
            revision: claimed.revision,
            version: claimed.version,
            sequence: claimed.sequence,
            state: DeviceState::Failed,
            progress_pct: None,
            reason: Some(reason),
            serving: serving.to_string(),
            model: None,
            update: self.count,
            frozen: false,
        }
    }

    /// Where the `update` counter of a rollout the device now accepts starts: above
    /// every refusal reported since the start, one of which may have been under the
    /// same rollout id (a receiver keeps the highest `update` per device and rollout).
    pub fn update_floor(&self) -> u32 {
        self.count
    }
}
