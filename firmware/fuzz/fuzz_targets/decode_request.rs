//! Both request decoders on arbitrary bytes: each must return a request or an error,
//! never panic nor allocate beyond the input's means; a request the binary decoder
//! accepts must survive an encode/decode round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perch_firmware::service::{binary, oip};

fuzz_target!(|data: &[u8]| {
    let _ = oip::decode_request(data);
    if let Ok(request) = binary::decode_request(data) {
        // Postcard accepts over-long varints, so the input need not be canonical; its
        // re-encoding must be. Encodings are compared because NaN != NaN.
        let canonical = binary::encode_request(&request);
        let again = binary::decode_request(&canonical).expect("a canonical encoding decodes");
        assert_eq!(binary::encode_request(&again), canonical);
    }
});
