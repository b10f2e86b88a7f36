//! The JSON a device and the operator read from the broker: signed rollout documents (a
//! device's `ota` topic), the document inside the envelope (what the device reads once
//! the signature verified), device status reports and chunk requests (the operator).
//! What parses round-trips: a valid document signed again verifies to itself, a status
//! report written again parses to itself.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use perch_runtime::bundle::{SigningKey, VerifyingKey};
use perch_runtime::rollout::{ChunkRequest, DeviceStatus, RolloutDocument};

/// The key the committed seed documents are signed with (runtime/tests/fuzz.rs).
static KEY: LazyLock<(SigningKey, [VerifyingKey; 1])> = LazyLock::new(|| {
    let key = SigningKey::from_bytes(&[7; 32]);
    let trusted = [key.verifying_key()];
    (key, trusted)
});

fuzz_target!(|data: &[u8]| {
    let (key, trusted) = &*KEY;
    let _ = RolloutDocument::verify(data, trusted);
    if let Ok(document) = serde_json::from_slice::<RolloutDocument>(data) {
        if document.validate().is_ok() {
            let signed = document.sign(key);
            let again =
                RolloutDocument::verify(&signed, trusted).expect("a signed document verifies");
            assert_eq!(again, document);
        }
    }
    if let Ok(status) = DeviceStatus::from_json(data) {
        let again = DeviceStatus::from_json(&status.to_json()).expect("a written status parses");
        assert_eq!(again, status);
    }
    let _ = serde_json::from_slice::<ChunkRequest>(data);
});
