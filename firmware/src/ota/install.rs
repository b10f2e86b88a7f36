//! The installation steps that do I/O: check a downloaded bundle against its rollout
//! document, stage it in the free slot, load, self-test and warm it up, and activate it;
//! and the way back to the previous slot.
//!
//! A refusal at any step leaves the active slot as it was: the old model keeps serving.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use perch_runtime::bundle::{Bundle, Limits, VerifyingKey};
use perch_runtime::error::Chain;
use perch_runtime::rollout::BundleRef;
use sha2::{Digest, Sha256};

use perch_runtime::slo::{Slo, Window};

use crate::load::{self, LoadError, Loaded};
use crate::slots::{SlotError, SlotId, Slots};

/// A bundle installed and activated (on probation).
#[derive(Debug)]
pub struct Installed {
    /// The model, loaded, self-tested and warmed up: swap it in.
    pub loaded: Loaded,
    /// The slot it serves from.
    pub slot: SlotId,
    /// Its SLO limits, for the soak.
    pub slo: Slo,
}

/// How to load a bundle from a slot file.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// The trusted keys.
    pub keys: Vec<VerifyingKey>,
    /// Warm-up inferences after the self-test.
    pub warmup_runs: u32,
    /// How long loading, self-testing and warming up a downloaded bundle may take
    /// before the install fails ([`LoadSettings::load_within`]).
    pub install_timeout: Duration,
    /// The configured SLOs, which win field by field over the bundle's
    /// ([`Slo::or`]) in the warm-up check and the soak.
    pub slo: Slo,
}

impl LoadSettings {
    /// Loads, verifies, self-tests and warms up the bundle at `path` as the agent does
    /// ([`load::load_bundle`]). Blocks.
    ///
    /// # Errors
    ///
    /// The bundle does not read, verify or load.
    pub fn load(&self, path: PathBuf) -> Result<Loaded, LoadError> {
        load::load_bundle(&path, &self.keys, self.warmup_runs)
    }

    /// As [`LoadSettings::load`], on a thread of its own, waiting at most `deadline`.
    /// The engine cannot be interrupted: a load, self-test or warm-up that hangs is
    /// left to finish on its thread (its result is dropped) and this returns an error
    /// at the deadline, so the updater goes on (an `aborted` document is processed, the
    /// old model keeps serving).
    ///
    /// # Errors
    ///
    /// The bundle does not load (as for [`LoadSettings::load`]), or not within
    /// `deadline`; one line.
    pub fn load_within(&self, path: PathBuf, deadline: Duration) -> Result<Loaded, String> {
        let (tx, rx) = mpsc::sync_channel(1);
        let settings = self.clone();
        std::thread::Builder::new()
            .name("perch-install".into())
            .spawn(move || {
                // The receiver may be gone (past the deadline): nobody wants the result.
                let _ = tx.send(settings.load(path));
            })
            .map_err(|e| format!("cannot start the install thread: {e}"))?;
        match rx.recv_timeout(deadline) {
            Ok(loaded) => {
                loaded.map_err(|e| format!("the staged bundle does not load: {}", Chain(&e)))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "loading, self-testing and warming up the bundle took more than {} s \
                 (install_timeout); it is left unfinished",
                deadline.as_secs_f64()
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err("the install thread ended without an answer (it panicked)".into())
            }
        }
    }
}

/// Checks `bytes` against `expected` (size, SHA-256), verifies the bundle's structure,
/// signature (against `trusted`) and that its manifest names the same model, version
/// and sequence; stages it ([`Slots::stage`]: only a higher sequence than any
/// activated, and higher than `floor`, the configured bundle's); loads it from the slot
/// file, requires a passing self-test and a warm-up p99 within the bundle's SLO; then
/// activates the slot.
///
/// # Errors
///
/// One line naming the step and the problem. The active slot is unchanged (a bundle may
/// remain staged in the inactive slot).
pub fn install(
    slots: &mut Slots,
    bytes: Vec<u8>,
    expected: &BundleRef,
    trusted: &[VerifyingKey],
    settings: &LoadSettings,
    floor: u64,
) -> Result<Installed, String> {
    if bytes.len() as u64 != expected.size {
        return Err(format!(
            "the bundle is {} bytes; the rollout document says {}",
            bytes.len(),
            expected.size
        ));
    }
    let sha256 = hex::encode(Sha256::digest(&bytes));
    if sha256 != expected.sha256 {
        return Err(format!(
            "the bundle's sha256 is {sha256}; the rollout document says {}",
            expected.sha256
        ));
    }
    let bundle = Bundle::from_vec(bytes, &Limits::default())
        .map_err(|e| format!("the bundle is invalid: {}", Chain(&e)))?;
    let verified = bundle
        .verify(trusted)
        .map_err(|e| format!("the bundle's signature is refused: {}", Chain(&e)))?;
    let manifest = verified.manifest();
    let says = format!(
        "{} {} (sequence {})",
        manifest.name, manifest.version, manifest.sequence
    );
    let document_says = format!(
        "{} {} (sequence {})",
        expected.name, expected.version, expected.sequence
    );
    if says != document_says {
        return Err(format!(
            "the bundle's manifest says {says}, the rollout document says {document_says}"
        ));
    }
    if manifest.sequence <= floor {
        return Err(format!(
            "older sequence: the bundle's sequence {} is not higher than {floor}, the \
             sequence of the configured bundle",
            manifest.sequence
        ));
    }
    let slot = slots.stage(&verified).map_err(|e| match e {
        SlotError::NotNewer { .. } => format!("older sequence: {}", Chain(&e)),
        e => format!("cannot stage the bundle: {}", Chain(&e)),
    })?;
    let loaded = settings.load_within(slots.path(slot), settings.install_timeout)?;
    if let Some(failure) = &loaded.boot.failure {
        return Err(format!("the bundle failed its self-test: {failure}"));
    }
    let slo = settings.slo.or(&loaded.slo);
    let warmup = Window {
        p99_ms: loaded
            .boot
            .warmup
            .latency
            .quantile(0.99)
            .map(|d| d.as_secs_f64() * 1000.0),
        ..Window::default()
    };
    let latency_only = Slo {
        p99_ms: slo.p99_ms,
        ..Slo::default()
    };
    if let Some(violation) = latency_only.violations(&warmup).next() {
        return Err(format!("warm-up {violation}"));
    }
    slots
        .activate(slot)
        .map_err(|e| format!("cannot activate the bundle: {}", Chain(&e)))?;
    Ok(Installed { loaded, slot, slo })
}

/// Returns to the previous slot ([`Slots::roll_back`]) and loads its model. `Ok(None)`
/// when no slot precedes the active one: the model configured before any update should
/// serve again.
///
/// # Errors
///
/// The slot state cannot be written, or the previous slot's bundle does not load.
pub fn roll_back(slots: &mut Slots, settings: &LoadSettings) -> Result<Option<Loaded>, String> {
    let slot = match slots.roll_back() {
        Ok(slot) => slot,
        Err(SlotError::NothingToRollBackTo) => return Ok(None),
        Err(e) => return Err(Chain(&e).to_string()),
    };
    let loaded = settings
        .load(slots.path(slot))
        .map_err(|e| format!("the previous model does not load: {}", Chain(&e)))?;
    Ok(Some(loaded))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use perch_runtime::bundle::{BundleContents, SigningKey};
    use perch_runtime::rollout::MIN_CHUNK_SIZE;

    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    /// kws-dscnn packed as `kws`, with `change` applied to the contents before signing.
    fn pack_with(
        key: &SigningKey,
        sequence: u64,
        version: &str,
        change: impl FnOnce(&mut BundleContents),
    ) -> Vec<u8> {
        crate::testing::pack_kws_with(key, sequence, version, change)
            .as_bytes()
            .to_vec()
    }

    fn describe(bytes: &[u8], version: &str, sequence: u64) -> BundleRef {
        BundleRef::describe("kws", version, sequence, bytes, MIN_CHUNK_SIZE * 16)
    }

    /// Slots serving kws 1.0.0 (sequence 1), confirmed, and the settings to load with.
    fn device(dir: &Path) -> (Slots, LoadSettings) {
        let mut slots = Slots::open(dir.join("slots")).unwrap();
        let first = crate::testing::pack_kws(&key(), 1, "1.0.0");
        let verified = first.verify(&[key().verifying_key()]).unwrap();
        let slot = slots.stage(&verified).unwrap();
        slots.activate(slot).unwrap();
        slots.confirm().unwrap();
        let settings = LoadSettings {
            keys: vec![key().verifying_key()],
            warmup_runs: 3,
            install_timeout: std::time::Duration::from_secs(600),
            slo: Slo::default(),
        };
        (slots, settings)
    }

    #[test]
    fn a_good_bundle_installs_and_activates_and_a_roll_back_returns_to_the_previous_model() {
        let dir = tempfile::tempdir().unwrap();
        let (mut slots, settings) = device(dir.path());
        let bytes = pack_with(&key(), 2, "1.1.0", |_| {});
        let expected = describe(&bytes, "1.1.0", 2);
        let trusted = [key().verifying_key()];
        let installed = install(&mut slots, bytes, &expected, &trusted, &settings, 0).unwrap();
        assert!(installed.loaded.boot.ready());
        assert_eq!(installed.loaded.id.to_string(), "kws@1.1.0");
        assert_eq!(installed.slo.p99_ms, Some(25.0));
        let (slot, content, _) = slots.active().unwrap();
        assert_eq!((slot, content.sequence), (installed.slot, 2));
        assert!(slots.state().probation);
        assert_eq!(content.sha256, expected.sha256);

        let previous = roll_back(&mut slots, &settings).unwrap().unwrap();
        assert_eq!(previous.id.to_string(), "kws@1.0.0");
        assert_eq!(slots.active().unwrap().1.sequence, 1);
        assert!(!slots.state().probation);
    }

    #[test]
    fn each_refused_bundle_names_its_reason_and_the_old_model_stays_active() {
        let dir = tempfile::tempdir().unwrap();
        let (mut slots, settings) = device(dir.path());
        let trusted = [key().verifying_key()];
        let good = pack_with(&key(), 2, "1.1.0", |_| {});

        let mut tampered = good.clone();
        let middle = tampered.len() / 2;
        tampered[middle] ^= 1;
        let wrong_key = pack_with(&SigningKey::from_bytes(&[9; 32]), 2, "1.1.0", |_| {});
        let older = pack_with(&key(), 1, "1.1.0", |_| {});
        let failing_self_test = pack_with(&key(), 2, "1.1.0", |c| {
            // The last golden output value, far off.
            let out = &mut c.golden_outputs[0];
            let at = out.len() - 4;
            out[at..].copy_from_slice(&1000.0f32.to_le_bytes());
        });
        let too_slow = pack_with(&key(), 2, "1.1.0", |c| c.slo.p99_ms = Some(1e-6));

        let truncated = good[..good.len() - 512].to_vec();
        let manifest_differs = "the bundle's manifest says kws 1.1.0 (sequence 2), the rollout \
                                document says kws 1.2.0";
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<u8>, BundleRef, &str)> = vec![
            ("truncated", truncated, describe(&good, "1.1.0", 2), "the rollout document says"),
            ("sha256 differs", tampered, describe(&good, "1.1.0", 2), "the bundle's sha256 is"),
            ("wrong key", wrong_key.clone(), describe(&wrong_key, "1.1.0", 2), "signature is refused"),
            ("manifest differs", good.clone(), describe(&good, "1.2.0", 2), manifest_differs),
            ("older sequence", older.clone(), describe(&older, "1.1.0", 1), "older sequence"),
            ("failing self-test", failing_self_test.clone(), describe(&failing_self_test, "1.1.0", 2), "failed its self-test"),
            ("slow warm-up", too_slow.clone(), describe(&too_slow, "1.1.0", 2), "warm-up p99 latency"),
        ];
        let before = slots
            .active()
            .map(|(slot, content, _)| (slot, content.clone()));
        for (case, bytes, expected, needle) in cases {
            let err = install(&mut slots, bytes, &expected, &trusted, &settings, 0).unwrap_err();
            assert!(err.contains(needle), "{case}: {err} should say {needle}");
            let now = slots
                .active()
                .map(|(slot, content, _)| (slot, content.clone()));
            assert_eq!(now, before, "{case}: the old model stays active");
            assert!(!slots.state().probation, "{case}");
            assert_eq!(slots.state().highest_sequence, 1, "{case}");
        }
        // A configured bundle of sequence 2 sets the floor: a release 2 is not newer.
        let err = install(
            &mut slots,
            good.clone(),
            &describe(&good, "1.1.0", 2),
            &trusted,
            &settings,
            2,
        )
        .unwrap_err();
        assert!(
            err.contains("not higher than 2, the sequence of the configured bundle"),
            "{err}"
        );
        assert_eq!(slots.state().highest_sequence, 1);
    }
}
