//! `manifest.json`, the one part of a bundle read before its signature: any bytes are
//! refused or parsed, and a parsed manifest writes back to JSON that parses to the same
//! manifest, and rewrites to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perch_runtime::bundle::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = Manifest::from_json(data) else {
        return;
    };
    let json = manifest.to_json();
    let again = Manifest::from_json(&json).expect("a written manifest parses");
    assert_eq!(again, manifest);
    assert_eq!(again.to_json(), json);
});
