//! The health message: what state the device and its model are in.

use serde::{Deserialize, Serialize};

use super::codec::{self, U32_MAX_LEN};
use super::model::ModelId;
use crate::Error;

/// Capacity of [`Health::last_error`], in bytes of UTF-8.
pub const MAX_ERROR_LEN: usize = 64;

/// The state of the device's model, as the agent sees it.
///
/// Encoded as the varint index of the variant (one byte). The order of the variants is
/// part of the wire format: new states go at the end, with a new format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ModelState {
    /// A model is being loaded and optimized; not serving yet. Index 0.
    Loading,
    /// The model passed its self-test and serves requests. Index 1.
    Ready,
    /// The model loaded but failed its self-test; it does not serve. Index 2.
    SelfTestFailed,
    /// The model serves, but with errors or latencies beyond its limits. Index 3.
    Degraded,
    /// No model is installed. Index 4.
    NoModel,
}

/// A device's health: sent on boot, on every state change and periodically.
///
/// Encoded as its fields in order, at most [`Health::MAX_ENCODED_LEN`] (126) bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Format version, [`FORMAT_VERSION`](super::codec::FORMAT_VERSION); always the first byte.
    pub format: u8,
    /// Seconds since the device booted.
    pub uptime_s: u32,
    /// The installed model, if any.
    pub model: Option<ModelId>,
    /// The model's state.
    pub state: ModelState,
    /// How many times the device has booted, counting this boot.
    pub boot_count: u32,
    /// Resident memory of the runtime process, in KiB.
    pub rss_kib: u32,
    /// The most recent error, at most 64 bytes; [`truncated`](super::codec::truncated) cuts a
    /// longer message to fit.
    pub last_error: Option<heapless::String<MAX_ERROR_LEN>>,
}

impl Health {
    /// Worst-case encoded size, 126 bytes: the format byte, three `u32` varints of at
    /// most 5 bytes, a tagged model id (1 + 42), the state (1) and a tagged 64-byte
    /// error with its one-byte length (1 + 1 + 64).
    pub const MAX_ENCODED_LEN: usize =
        1 + 3 * U32_MAX_LEN + (1 + ModelId::MAX_ENCODED_LEN) + 1 + (1 + 1 + MAX_ERROR_LEN);

    /// Encodes the message into `buf` and returns the written prefix. A buffer of
    /// [`MAX_ENCODED_LEN`](Health::MAX_ENCODED_LEN) bytes always suffices.
    ///
    /// # Errors
    ///
    /// - [`Error::UnsupportedFormat`] if `format` is not [`FORMAT_VERSION`](super::codec::FORMAT_VERSION);
    /// - [`Error::Encode`] if `buf` is too small.
    pub fn encode<'b>(&self, buf: &'b mut [u8]) -> Result<&'b mut [u8], Error> {
        codec::encode(self.format, self, buf)
    }

    /// Decodes a message that is exactly `bytes`.
    ///
    /// # Errors
    ///
    /// - [`Error::UnsupportedFormat`] if the first byte is not
    ///   [`FORMAT_VERSION`](super::codec::FORMAT_VERSION);
    /// - [`Error::Decode`] if the bytes are malformed, truncated or followed by more.
    pub fn decode(bytes: &[u8]) -> Result<Health, Error> {
        codec::decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{truncated, Version, FORMAT_VERSION};
    use proptest::prelude::*;

    fn ready() -> Health {
        Health {
            format: FORMAT_VERSION,
            uptime_s: 300,
            model: Some(ModelId::new("kws", Version::new(1, 2, 3)).unwrap()),
            state: ModelState::Ready,
            boot_count: 4,
            rss_kib: 18_432,
            last_error: None,
        }
    }

    fn worst_case() -> Health {
        Health {
            format: FORMAT_VERSION,
            uptime_s: u32::MAX,
            model: Some(
                ModelId::new(&"m".repeat(32), Version::new(u16::MAX, u16::MAX, u16::MAX)).unwrap(),
            ),
            state: ModelState::NoModel,
            boot_count: u32::MAX,
            rss_kib: u32::MAX,
            last_error: Some(truncated(&"e".repeat(100))),
        }
    }

    fn encode_to_vec(health: &Health) -> Vec<u8> {
        let mut buf = [0; Health::MAX_ENCODED_LEN];
        health.encode(&mut buf).unwrap().to_vec()
    }

    #[test]
    fn ready_health_encodes_to_golden_bytes() {
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x01,             // format
            0xAC, 0x02,       // uptime_s 300
            0x01, 0x03, b'k', b'w', b's', 0x01, 0x02, 0x03, // Some(kws@1.2.3)
            0x01,             // Ready
            0x04,             // boot_count 4
            0x80, 0x90, 0x01, // rss_kib 18 432
            0x00,             // no last_error
        ];
        let health = ready();
        assert_eq!(encode_to_vec(&health), expected);
        assert_eq!(Health::decode(expected), Ok(health));
    }

    #[test]
    fn failed_health_encodes_to_golden_bytes() {
        let health = Health {
            format: FORMAT_VERSION,
            uptime_s: 5,
            model: None,
            state: ModelState::SelfTestFailed,
            boot_count: 1,
            rss_kib: 2_048,
            last_error: Some(truncated("oom")),
        };
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x01,       // format
            0x05,       // uptime_s 5
            0x00,       // no model
            0x02,       // SelfTestFailed
            0x01,       // boot_count 1
            0x80, 0x10, // rss_kib 2 048
            0x01, 0x03, b'o', b'o', b'm', // Some("oom")
        ];
        assert_eq!(encode_to_vec(&health), expected);
        assert_eq!(Health::decode(expected), Ok(health));
    }

    #[test]
    fn model_states_encode_as_their_index() {
        let states = [
            ModelState::Loading,
            ModelState::Ready,
            ModelState::SelfTestFailed,
            ModelState::Degraded,
            ModelState::NoModel,
        ];
        for (index, state) in states.into_iter().enumerate() {
            let mut buf = [0; 1];
            assert_eq!(
                postcard::to_slice(&state, &mut buf).unwrap(),
                &[index as u8]
            );
        }
        assert!(postcard::from_bytes::<ModelState>(&[5]).is_err());
    }

    #[test]
    fn worst_case_health_encodes_to_exactly_max_encoded_len() {
        assert_eq!(Health::MAX_ENCODED_LEN, 126);
        let health = worst_case();
        let bytes = encode_to_vec(&health);
        assert_eq!(bytes.len(), Health::MAX_ENCODED_LEN);
        assert_eq!(Health::decode(&bytes), Ok(health));
    }

    #[test]
    fn every_truncation_fails_to_decode() {
        let bytes = encode_to_vec(&worst_case());
        for len in 0..bytes.len() {
            assert!(Health::decode(&bytes[..len]).is_err(), "prefix {len}");
        }
    }

    #[test]
    fn decoding_refuses_another_format_version() {
        let mut bytes = encode_to_vec(&ready());
        bytes[0] = 0;
        assert_eq!(
            Health::decode(&bytes),
            Err(Error::UnsupportedFormat {
                found: 0,
                expected: 1
            })
        );
    }

    #[test]
    fn decoding_refuses_trailing_bytes() {
        let mut bytes = encode_to_vec(&ready());
        bytes.push(0);
        assert_eq!(Health::decode(&bytes), Err(Error::Decode));
    }

    #[test]
    fn decoding_refuses_an_overlong_error_message() {
        let mut bytes = encode_to_vec(&ready());
        bytes.pop();
        bytes.extend([0x01, 65]);
        bytes.extend([b'e'; 65]);
        assert_eq!(Health::decode(&bytes), Err(Error::Decode));
    }

    fn states() -> impl Strategy<Value = ModelState> {
        prop_oneof![
            Just(ModelState::Loading),
            Just(ModelState::Ready),
            Just(ModelState::SelfTestFailed),
            Just(ModelState::Degraded),
            Just(ModelState::NoModel),
        ]
    }

    prop_compose! {
        fn model_ids()(name in "\\PC{0,40}", major: u16, minor: u16, patch: u16) -> ModelId {
            ModelId { name: truncated(&name), version: Version::new(major, minor, patch) }
        }
    }

    prop_compose! {
        fn healths()(
            uptime_s: u32,
            model in prop::option::of(model_ids()),
            state in states(),
            boot_count: u32,
            rss_kib: u32,
            last_error in prop::option::of("\\PC{0,80}"),
        ) -> Health {
            Health {
                format: FORMAT_VERSION,
                uptime_s,
                model,
                state,
                boot_count,
                rss_kib,
                last_error: last_error.map(|text| truncated(&text)),
            }
        }
    }

    proptest! {
        #[test]
        fn health_round_trips_within_max_encoded_len(health in healths()) {
            let bytes = encode_to_vec(&health);
            prop_assert!(bytes.len() <= Health::MAX_ENCODED_LEN);
            prop_assert_eq!(Health::decode(&bytes), Ok(health));
        }

        #[test]
        fn decoding_random_bytes_never_panics(
            mut bytes in prop::collection::vec(any::<u8>(), 0..200),
            force_format: bool,
        ) {
            if let (true, Some(first)) = (force_format, bytes.first_mut()) {
                *first = FORMAT_VERSION;
            }
            let _ = Health::decode(&bytes);
        }

        #[test]
        fn decoding_corrupted_health_never_panics(
            health in healths(),
            index: prop::sample::Index,
            byte: u8,
        ) {
            let mut bytes = encode_to_vec(&health);
            let at = index.index(bytes.len());
            bytes[at] = byte;
            let _ = Health::decode(&bytes);
        }
    }
}
