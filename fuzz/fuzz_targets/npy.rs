//! `.npy` files: golden data in bundles and model folders, `perch run` inputs. Any bytes
//! are refused or decoded, and what decodes holds exactly the data its header declares.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perch_runtime::engine::internal::npy;

fuzz_target!(|data: &[u8]| {
    let header = npy::parse_header(data);
    if let Ok(tensor) = npy::decode(data) {
        let header = header.expect("a decoded file has a header");
        assert_eq!(tensor.shape(), &header.shape[..]);
        assert_eq!(tensor.len() * header.dtype.size(), header.data_bytes);
        assert_eq!(header.data_offset + header.data_bytes, data.len());
    }
});
