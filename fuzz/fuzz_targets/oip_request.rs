//! perchd's request decoders: an OIP v2 JSON body (HTTP, MQTT), the same with the binary
//! tensor data extension (the first two bytes of the input, a little-endian `u16`, give
//! the JSON header's length), and the postcard requests of the binary codec. Each returns a
//! request or an error; a request the binary decoder accepts re-encodes canonically.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perch_firmware::service::{binary, oip, oip_binary};

fuzz_target!(|data: &[u8]| {
    let _ = oip::decode_request(data);
    if let [a, b, body @ ..] = data {
        let length = u16::from_le_bytes([*a, *b]).to_string();
        if let Ok((header, tail)) = oip_binary::split(body, Some(&length)) {
            let _ = oip::decode_parts(header, tail);
        }
    }
    if let Ok(request) = binary::decode_request(data) {
        // Encodings are compared because NaN != NaN.
        let canonical = binary::encode_request(&request);
        let again = binary::decode_request(&canonical).expect("a canonical encoding decodes");
        assert_eq!(binary::encode_request(&again), canonical);
    }
});
