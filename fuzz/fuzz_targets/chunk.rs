//! OTA chunk frames as a device receives them: refused or decoded, and a decoded frame is
//! exactly its own encoding (the format has one encoding per frame).
#![no_main]

use libfuzzer_sys::fuzz_target;
use perch_runtime::rollout::{decode_chunk, encode_chunk};

fuzz_target!(|data: &[u8]| {
    if let Ok(chunk) = decode_chunk(data) {
        assert_eq!(
            encode_chunk(chunk.rollout_id, chunk.index, chunk.data),
            data
        );
    }
});
