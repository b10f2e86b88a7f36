//! Two model slots on disk, for over-the-air updates that never leave a device without
//! a model that worked.
//!
//! A device keeps at most two verified bundles, `slot-a.perch` and `slot-b.perch`, in
//! one folder, and a small state file, `slots.json`, saying which slot serves, what each
//! holds, the highest release sequence ever activated, and whether the active slot is
//! still on probation. The update path is:
//!
//! 1. [`Slots::stage`] writes a *verified* bundle into the slot that is not serving —
//!    from the exact bytes that were verified — through a temporary file, fsync and
//!    rename. A bundle whose sequence is not higher than every sequence activated before
//!    is refused: no downgrade, no replay of an old release.
//! 2. The agent loads and self-tests the staged model; then [`Slots::activate`] makes it
//!    the serving slot, on probation. The previous slot is kept untouched.
//! 3. At every start, [`Slots::record_boot`] counts starts while on probation: an agent
//!    that crash-loops after an activation sees the count grow and rolls back.
//! 4. After a soak without SLO breach, [`Slots::confirm`] ends the probation; on a breach
//!    or a crash loop, [`Slots::roll_back`] returns to the previous slot.
//!
//! Every change of state is one atomic write of `slots.json` (temporary file, fsync,
//! rename, fsync of the folder), after the slot file it refers to is on disk, so a
//! power cut or `kill -9` at any point leaves either the old state or the new one, each
//! pointing at complete files. Deciding *when* to stage, activate, confirm or roll back
//! belongs to the rollout logic, not to this module.

use std::io;
use std::path::{Path, PathBuf};

use perch_runtime::bundle::VerifiedBundle;
use perch_runtime::fsio;
use serde::{Deserialize, Serialize};

/// The state file's name in the slots folder.
pub const STATE_FILE: &str = "slots.json";

/// The state file's format version.
const FORMAT: u32 = 1;

/// One of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotId {
    /// `slot-a.perch`.
    A,
    /// `slot-b.perch`.
    B,
}

impl SlotId {
    /// The other slot.
    pub fn other(self) -> SlotId {
        match self {
            SlotId::A => SlotId::B,
            SlotId::B => SlotId::A,
        }
    }

    /// The slot's file name.
    pub fn file_name(self) -> &'static str {
        match self {
            SlotId::A => "slot-a.perch",
            SlotId::B => "slot-b.perch",
        }
    }

    fn index(self) -> usize {
        match self {
            SlotId::A => 0,
            SlotId::B => 1,
        }
    }
}

/// What a slot holds: the bundle's identity as its signed manifest states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotContent {
    /// The model's name.
    pub name: String,
    /// The model's semantic version.
    pub version: String,
    /// The release sequence number.
    pub sequence: u64,
    /// SHA-256 of the whole bundle file, lowercase hex.
    pub sha256: String,
    /// The bundle file's size in bytes.
    pub size: u64,
}

/// The state kept in `slots.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotState {
    /// The state file's format, 1.
    pub format: u32,
    /// The serving slot, if any model was ever activated.
    pub active: Option<SlotId>,
    /// What each slot holds (`[A, B]`).
    pub slots: [Option<SlotContent>; 2],
    /// The highest sequence ever activated; staging needs a higher one.
    pub highest_sequence: u64,
    /// Whether the active slot is on probation (activated, not yet confirmed).
    pub probation: bool,
    /// Starts of the agent since the activation on probation.
    pub boots_on_probation: u32,
}

impl Default for SlotState {
    fn default() -> SlotState {
        SlotState {
            format: FORMAT,
            active: None,
            slots: [None, None],
            highest_sequence: 0,
            probation: false,
            boots_on_probation: 0,
        }
    }
}

/// Why a slot operation was refused or failed. Nothing on disk changed when it is
/// returned, except where a variant says so.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SlotError {
    /// A file could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `slots.json` exists but is not a state this agent understands.
    #[error("{} is not a valid slot state: {reason}", path.display())]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The bundle's sequence is not higher than the highest activated: a downgrade or a
    /// replay of an old release.
    #[error(
        "bundle {name} {version} has sequence {sequence}, not higher than {highest}, the \
         highest this device has activated: refusing a downgrade or replay"
    )]
    NotNewer {
        /// The bundle's model name.
        name: String,
        /// The bundle's version.
        version: String,
        /// The bundle's sequence.
        sequence: u64,
        /// The highest sequence activated on this device.
        highest: u64,
    },
    /// The slot to activate holds no bundle.
    #[error("slot {0:?} holds no bundle")]
    Empty(SlotId),
    /// There is no previous slot to return to.
    #[error("there is no previous model to roll back to")]
    NothingToRollBackTo,
}

/// The two slots in one folder (see the [module docs](self)).
#[derive(Debug)]
pub struct Slots {
    dir: PathBuf,
    state: SlotState,
}

impl Slots {
    /// Opens the slots in `dir`, creating the folder if needed. A missing state file is
    /// an empty state; temporary files left by an interrupted write are deleted.
    ///
    /// # Errors
    ///
    /// The folder cannot be created or read, or `slots.json` is not a valid state, or
    /// names a slot whose file is missing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Slots, SlotError> {
        let dir = dir.into();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SlotError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(fsio::TEMP_SUFFIX) {
                std::fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
            }
        }
        let path = dir.join(STATE_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => {
                let state: SlotState =
                    serde_json::from_slice(&bytes).map_err(|e| SlotError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                if state.format != FORMAT {
                    return Err(SlotError::Corrupt {
                        path,
                        reason: format!("format {} (this agent reads {FORMAT})", state.format),
                    });
                }
                for slot in [SlotId::A, SlotId::B] {
                    let file = dir.join(slot.file_name());
                    if state.slots[slot.index()].is_some() && !file.is_file() {
                        return Err(SlotError::Corrupt {
                            path,
                            reason: format!(
                                "slot {slot:?} is recorded but {} is missing",
                                file.display()
                            ),
                        });
                    }
                }
                state
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => SlotState::default(),
            Err(source) => return Err(SlotError::Io { path, source }),
        };
        Ok(Slots { dir, state })
    }

    /// The current state.
    pub fn state(&self) -> &SlotState {
        &self.state
    }

    /// The serving slot, what it holds and its file.
    pub fn active(&self) -> Option<(SlotId, &SlotContent, PathBuf)> {
        let slot = self.state.active?;
        let content = self.state.slots[slot.index()].as_ref()?;
        Some((slot, content, self.path(slot)))
    }

    /// The slot that is not serving, what it holds and its file: the previous model
    /// after an activation, or a staged one before it.
    pub fn inactive(&self) -> Option<(SlotId, &SlotContent, PathBuf)> {
        let slot = self.state.active.map_or(SlotId::A, SlotId::other);
        let content = self.state.slots[slot.index()].as_ref()?;
        Some((slot, content, self.path(slot)))
    }

    /// The file of `slot`.
    pub fn path(&self, slot: SlotId) -> PathBuf {
        self.dir.join(slot.file_name())
    }

    /// Writes `bundle`'s exact bytes into the slot that is not serving (replacing what
    /// it held) and records it there, without activating it. Returns that slot.
    ///
    /// # Errors
    ///
    /// [`SlotError::NotNewer`] if the bundle's sequence is not higher than the highest
    /// activated; [`SlotError::Io`] if writing fails (the slot then keeps its old file
    /// and state).
    pub fn stage(&mut self, bundle: &VerifiedBundle) -> Result<SlotId, SlotError> {
        use sha2::{Digest, Sha256};
        let manifest = bundle.manifest();
        if manifest.sequence <= self.state.highest_sequence {
            return Err(SlotError::NotNewer {
                name: manifest.name.clone(),
                version: manifest.version.to_string(),
                sequence: manifest.sequence,
                highest: self.state.highest_sequence,
            });
        }
        let slot = self.state.active.map_or(SlotId::A, SlotId::other);
        let bytes = bundle.as_bytes();
        let path = self.path(slot);
        fsio::write_atomic(&path, bytes).map_err(|source| SlotError::Io { path, source })?;
        let mut next = self.state.clone();
        next.slots[slot.index()] = Some(SlotContent {
            name: manifest.name.clone(),
            version: manifest.version.to_string(),
            sequence: manifest.sequence,
            sha256: hex::encode(Sha256::digest(bytes)),
            size: bytes.len() as u64,
        });
        self.save(next)?;
        Ok(slot)
    }

    /// Makes `slot` the serving slot, on probation, and raises the highest activated
    /// sequence to its bundle's.
    ///
    /// # Errors
    ///
    /// [`SlotError::Empty`] if the slot holds nothing; [`SlotError::Io`] if the state
    /// cannot be written (the previous state stays).
    pub fn activate(&mut self, slot: SlotId) -> Result<(), SlotError> {
        let content = self.state.slots[slot.index()]
            .as_ref()
            .ok_or(SlotError::Empty(slot))?;
        let mut next = self.state.clone();
        next.highest_sequence = next.highest_sequence.max(content.sequence);
        next.active = Some(slot);
        next.probation = true;
        next.boots_on_probation = 0;
        self.save(next)
    }

    /// Counts one start of the agent; returns the starts since the activation on
    /// probation (0 when not on probation).
    ///
    /// # Errors
    ///
    /// [`SlotError::Io`] if the state cannot be written.
    pub fn record_boot(&mut self) -> Result<u32, SlotError> {
        if !self.state.probation {
            return Ok(0);
        }
        let mut next = self.state.clone();
        next.boots_on_probation = next.boots_on_probation.saturating_add(1);
        let boots = next.boots_on_probation;
        self.save(next)?;
        Ok(boots)
    }

    /// Ends the probation of the active slot: it has served within its SLOs for the
    /// soak. A no-op when not on probation.
    ///
    /// # Errors
    ///
    /// [`SlotError::Io`] if the state cannot be written.
    pub fn confirm(&mut self) -> Result<(), SlotError> {
        if !self.state.probation {
            return Ok(());
        }
        let mut next = self.state.clone();
        next.probation = false;
        next.boots_on_probation = 0;
        self.save(next)
    }

    /// Leaves the active slot for a model outside the slots (the configured one): the
    /// slot no longer serves, so its probation ends (no start counts as a crash on it,
    /// and it is not "the bundle activated but not yet recorded" to a later rollout of
    /// the same bundle). The highest activated sequence stays, so the abandoned release
    /// cannot be staged again. A no-op when not on probation.
    ///
    /// # Errors
    ///
    /// [`SlotError::Io`] if the state cannot be written.
    pub fn leave(&mut self) -> Result<(), SlotError> {
        self.confirm()
    }

    /// Returns to the other slot (the previous model) and makes it the serving one, not
    /// on probation: it served before. The highest activated sequence stays, so the
    /// abandoned release cannot be staged again; a fix needs a new sequence. Returns the
    /// slot now serving.
    ///
    /// # Errors
    ///
    /// [`SlotError::NothingToRollBackTo`] when no model was active or the other slot is
    /// empty; [`SlotError::Io`] if the state cannot be written.
    pub fn roll_back(&mut self) -> Result<SlotId, SlotError> {
        let active = self.state.active.ok_or(SlotError::NothingToRollBackTo)?;
        let previous = active.other();
        if self.state.slots[previous.index()].is_none() {
            return Err(SlotError::NothingToRollBackTo);
        }
        let mut next = self.state.clone();
        next.active = Some(previous);
        next.probation = false;
        next.boots_on_probation = 0;
        self.save(next)?;
        Ok(previous)
    }

    fn save(&mut self, next: SlotState) -> Result<(), SlotError> {
        let path = self.dir.join(STATE_FILE);
        let mut bytes = serde_json::to_vec_pretty(&next).map_err(|e| SlotError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        bytes.push(b'\n');
        fsio::write_atomic(&path, &bytes).map_err(|source| SlotError::Io { path, source })?;
        self.state = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use perch_runtime::bundle::{self, Limits, SigningKey};

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn verified(sequence: u64, version: &str) -> VerifiedBundle {
        let key = key();
        let bundle = crate::testing::pack_kws(&key, sequence, version);
        bundle::Bundle::parse(bundle.as_bytes(), &Limits::new())
            .unwrap()
            .verify(&[key.verifying_key()])
            .unwrap()
    }

    #[test]
    fn a_first_bundle_is_staged_in_slot_a_and_serves_once_activated() {
        let dir = tempfile::tempdir().unwrap();
        let mut slots = Slots::open(dir.path()).unwrap();
        assert!(slots.active().is_none());
        let b1 = verified(1, "1.0.0");
        let slot = slots.stage(&b1).unwrap();
        assert_eq!(slot, SlotId::A);
        assert!(slots.active().is_none(), "staging does not activate");
        assert_eq!(std::fs::read(slots.path(SlotId::A)).unwrap(), b1.as_bytes());
        slots.activate(slot).unwrap();
        let (active, content, _) = slots.active().unwrap();
        assert_eq!((active, content.sequence), (SlotId::A, 1));
        assert!(slots.state().probation);

        // The state survives reopening, as written.
        let reopened = Slots::open(dir.path()).unwrap();
        assert_eq!(reopened.state(), slots.state());
    }

    #[test]
    fn an_update_goes_to_the_other_slot_and_keeps_the_previous_model() {
        let dir = tempfile::tempdir().unwrap();
        let mut slots = Slots::open(dir.path()).unwrap();
        let first = slots.stage(&verified(1, "1.0.0")).unwrap();
        slots.activate(first).unwrap();
        slots.confirm().unwrap();
        let second = slots.stage(&verified(2, "1.1.0")).unwrap();
        assert_eq!(second, SlotId::B);
        assert_eq!(slots.active().unwrap().1.sequence, 1, "still serving 1");
        slots.activate(second).unwrap();
        assert_eq!(slots.active().unwrap().1.version, "1.1.0");
        assert_eq!(slots.inactive().unwrap().1.version, "1.0.0");
        assert!(slots.path(SlotId::A).is_file());
    }

    #[test]
    fn an_older_or_replayed_sequence_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut slots = Slots::open(dir.path()).unwrap();
        let slot = slots.stage(&verified(5, "2.0.0")).unwrap();
        slots.activate(slot).unwrap();
        let before = slots.state().clone();
        for (sequence, version) in [(5, "2.0.0"), (4, "1.9.0")] {
            let err = slots.stage(&verified(sequence, version)).unwrap_err();
            assert!(
                matches!(err, SlotError::NotNewer { highest: 5, .. }),
                "{err}"
            );
            assert!(err.to_string().contains("refusing a downgrade or replay"));
        }
        assert_eq!(slots.state(), &before);
        assert!(!slots.path(SlotId::B).exists());
    }

    #[test]
    fn a_roll_back_returns_to_the_previous_model_and_the_abandoned_release_stays_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut slots = Slots::open(dir.path()).unwrap();
        assert!(matches!(
            slots.roll_back(),
            Err(SlotError::NothingToRollBackTo)
        ));
        let a = slots.stage(&verified(1, "1.0.0")).unwrap();
        slots.activate(a).unwrap();
        assert!(matches!(
            slots.roll_back(),
            Err(SlotError::NothingToRollBackTo)
        ));
        slots.confirm().unwrap();
        let b = slots.stage(&verified(2, "1.1.0")).unwrap();
        slots.activate(b).unwrap();
        assert_eq!(slots.roll_back().unwrap(), SlotId::A);
        let (_, content, _) = slots.active().unwrap();
        assert_eq!(content.version, "1.0.0");
        assert!(!slots.state().probation);
        assert!(matches!(
            slots.stage(&verified(2, "1.1.0")),
            Err(SlotError::NotNewer { highest: 2, .. })
        ));
        // A fixed release with a new sequence goes into the slot the bad one held.
        assert_eq!(slots.stage(&verified(3, "1.1.1")).unwrap(), SlotId::B);
    }

    #[test]
    fn starts_are_counted_only_on_probation_and_a_confirmation_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut slots = Slots::open(dir.path()).unwrap();
        assert_eq!(slots.record_boot().unwrap(), 0);
        let a = slots.stage(&verified(1, "1.0.0")).unwrap();
        slots.activate(a).unwrap();
        assert_eq!(slots.record_boot().unwrap(), 1);
        // A crash loop: every start reopens the state and counts.
        for expected in 2..=4 {
            let mut reopened = Slots::open(dir.path()).unwrap();
            assert_eq!(reopened.record_boot().unwrap(), expected);
        }
        let mut slots = Slots::open(dir.path()).unwrap();
        slots.confirm().unwrap();
        assert_eq!(slots.record_boot().unwrap(), 0);
    }

    #[test]
    fn a_torn_write_is_cleaned_up_and_a_damaged_state_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut slots = Slots::open(dir.path()).unwrap();
        let a = slots.stage(&verified(1, "1.0.0")).unwrap();
        slots.activate(a).unwrap();
        // A write cut short by a power loss leaves only a temporary file.
        let torn = dir
            .path()
            .join(format!(".slot-b.perch.1.0{}", fsio::TEMP_SUFFIX));
        std::fs::write(&torn, b"half a bundle").unwrap();
        let reopened = Slots::open(dir.path()).unwrap();
        assert!(!torn.exists());
        assert_eq!(reopened.state(), slots.state());

        std::fs::remove_file(dir.path().join(SlotId::A.file_name())).unwrap();
        let err = Slots::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("slot-a.perch is missing"), "{err}");

        std::fs::write(dir.path().join(STATE_FILE), b"{\"format\": 1,").unwrap();
        let err = Slots::open(dir.path()).unwrap_err();
        assert!(matches!(err, SlotError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(STATE_FILE), "{err}");
    }

    #[test]
    fn activating_an_empty_slot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut slots = Slots::open(dir.path()).unwrap();
        assert!(matches!(
            slots.activate(SlotId::B),
            Err(SlotError::Empty(SlotId::B))
        ));
    }
}
