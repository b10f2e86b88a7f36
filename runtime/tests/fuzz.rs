#![cfg(feature = "std")]
//! Every parser of untrusted bytes, fed random and mutated inputs: none may panic,
//! and none may allocate beyond its input (a terabyte request aborts the process, which
//! this test binary would show). Property tests rather than cargo-fuzz so that they run
//! in `cargo test --workspace` on stable, in seconds (issue 15); a crash found here
//! becomes a named regression test beside the parser.

use perch_runtime::bundle::{Bundle, Limits, Manifest};
use perch_runtime::engine::internal::npy;
use perch_runtime::rollout::{decode_chunk, encode_chunk, DeviceStatus, RolloutDocument};
use perch_runtime::wire::{Health, MetricsReport};
use proptest::prelude::*;

/// A valid `.npy` file of `n` little-endian f32 under a version 1.0 header.
fn npy_f32(shape: &str, n: usize) -> Vec<u8> {
    let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    let header = format!("{header:<117}\n");
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, 4 * n));
    bytes
}

/// `bytes` with `edits` applied: (position, new byte), positions wrapped.
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)]) -> Vec<u8> {
    if !bytes.is_empty() {
        for &(at, b) in edits {
            let len = bytes.len();
            bytes[at % len] = b;
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn npy_decoding_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = npy::decode(&bytes);
    }

    #[test]
    fn npy_decoding_never_panics_on_mutated_files(
        edits in proptest::collection::vec((0usize..256, any::<u8>()), 1..8),
        truncate in 0usize..200,
    ) {
        let mut bytes = mutate(npy_f32("(2, 3)", 6), &edits);
        bytes.truncate(bytes.len().saturating_sub(truncate));
        if let Ok(tensor) = npy::decode(&bytes) {
            // Whatever decodes holds no more data than the file.
            prop_assert!(tensor.len() * 8 <= bytes.len());
        }
    }

    #[test]
    fn npy_headers_with_any_shape_text_never_panic(shape in "\\(([0-9]{0,22}, ?){0,5}\\)") {
        let _ = npy::decode(&npy_f32(&shape, 4));
    }

    #[test]
    fn bundle_parsing_never_panics_on_random_or_tar_like_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        ustar in any::<bool>(),
    ) {
        let mut bytes = bytes;
        if ustar && bytes.len() > 262 {
            bytes[257..262].copy_from_slice(b"ustar");
        }
        let _ = Bundle::from_vec(bytes, &Limits::default());
    }

    #[test]
    fn manifests_documents_and_statuses_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = Manifest::from_json(&bytes);
        let _ = RolloutDocument::verify(&bytes, &[]);
        let _ = DeviceStatus::from_json(&bytes);
    }

    #[test]
    fn json_shaped_text_never_panics_the_json_parsers(text in "\\{(\"[a-z_]{1,12}\": ?(\"[a-z0-9.]{0,8}\"|[0-9]{1,20}|null|\\[\\]), ?){0,8}\\}") {
        let _ = Manifest::from_json(text.as_bytes());
        let _ = RolloutDocument::verify(text.as_bytes(), &[]);
        let _ = DeviceStatus::from_json(text.as_bytes());
    }

    #[test]
    fn chunk_frames_never_panic_and_round_trip(
        id in "[a-z0-9-]{0,64}",
        index in any::<u32>(),
        data in proptest::collection::vec(any::<u8>(), 0..256),
        edits in proptest::collection::vec((0usize..512, any::<u8>()), 0..4),
        truncate in 0usize..64,
    ) {
        let frame = encode_chunk(&id, index, &data);
        let chunk = decode_chunk(&frame).unwrap();
        prop_assert_eq!((chunk.rollout_id, chunk.index, chunk.data), (id.as_str(), index, &data[..]));
        let mut bad = mutate(frame, &edits);
        bad.truncate(bad.len().saturating_sub(truncate));
        let _ = decode_chunk(&bad);
    }

    #[test]
    fn postcard_reports_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = MetricsReport::decode(&bytes);
        let _ = Health::decode(&bytes);
    }
}
