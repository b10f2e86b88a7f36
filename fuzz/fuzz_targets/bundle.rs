//! A bundle file as a device gets it (OTA download, `--model x.perch`): parsed with the
//! default limits, its signature checked against a trusted key, and its golden `.npy`
//! files decoded. A fuzzer cannot forge the signature, so the golden files are also
//! decoded from the unverified bundle, as `perch run` does without keys: the `.npy`
//! reader behind the signature is reached too. No model is loaded.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use perch_runtime::bundle::{is_bundle, Bundle, Limits, SigningKey, VerifyingKey};

/// The key the committed seed bundles are signed with (runtime/tests/fuzz.rs).
static TRUSTED: LazyLock<[VerifyingKey; 1]> =
    LazyLock::new(|| [SigningKey::from_bytes(&[7; 32]).verifying_key()]);

fuzz_target!(|data: &[u8]| {
    let _ = is_bundle(data);
    let Ok(bundle) = Bundle::from_vec(data.to_vec(), &Limits::default()) else {
        return;
    };
    assert_eq!(bundle.as_bytes(), data);
    let _ = bundle.decode_golden();
    let _ = bundle.verify(&*TRUSTED);
});
