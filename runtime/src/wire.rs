//! The messages a device sends, encoded with postcard.
//!
//! Every message starts with a one-byte format version ([`FORMAT_VERSION`]); decoding
//! checks it before anything else and answers [`Error::UnsupportedFormat`] for any other
//! value. After it come the message's fields in declaration order, integers as postcard
//! varints (a `u16` takes 1 to 3 bytes, a `u32` 1 to 5), strings as a varint length and
//! UTF-8 bytes, `Option` as a `0`/`1` tag byte, enums as the varint index of the variant.
//! Decoding rejects trailing bytes: a message fills its byte slice exactly. Golden byte
//! tests pin each layout; changing one requires a new format version.
//!
//! # Size bounds
//!
//! Every message has a fixed worst-case encoded size, so a device can use one stack
//! buffer of that size and encoding into it never fails:
//!
//! | message | worst case | made of |
//! |---|---|---|
//! | [`ModelId`] | [`ModelId::MAX_ENCODED_LEN`] = 42 bytes | name 1 + 32, version 3 × 3 |
//! | [`MetricsReport`] | [`MetricsReport::MAX_ENCODED_LEN`] = 212 bytes | format 1, five `u32` 5 × 5, model 42, latency 72 × 2 |
//! | [`Health`] | [`Health::MAX_ENCODED_LEN`] = 126 bytes | format 1, three `u32` 3 × 5, model 1 + 42, state 1, last error 1 + 1 + 64 |
//!
//! A metrics report's latency histogram is bounded because `encode` refuses one with a
//! bucket above [`REPORT_BUCKET_LIMIT`](crate::histogram::REPORT_BUCKET_LIMIT), so every
//! count takes at most two bytes; busier histograms are split into several reports with
//! [`Histogram::take_report_chunk`](crate::histogram::Histogram::take_report_chunk).
//!
//! ```
//! use perch_runtime::wire::{Health, ModelId, ModelState, Version, FORMAT_VERSION};
//!
//! let health = Health {
//!     format: FORMAT_VERSION,
//!     uptime_s: 300,
//!     model: Some(ModelId::new("kws", Version::new(1, 2, 3))?),
//!     state: ModelState::Ready,
//!     boot_count: 4,
//!     rss_kib: 18_432,
//!     last_error: None,
//! };
//! let mut buf = [0; Health::MAX_ENCODED_LEN];
//! let bytes = health.encode(&mut buf)?;
//! assert_eq!(Health::decode(bytes)?, health);
//! # Ok::<(), perch_runtime::Error>(())
//! ```

mod codec;
mod health;
mod metrics;
mod model;

pub use codec::{truncated, FORMAT_VERSION};
pub use health::{Health, ModelState, MAX_ERROR_LEN};
pub use metrics::MetricsReport;
pub use model::{ModelId, Version, MAX_MODEL_NAME_LEN};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn truncated_keeps_short_text_whole() {
        assert_eq!(truncated::<8>("oom"), "oom");
        assert_eq!(truncated::<3>("oom"), "oom");
    }

    #[test]
    fn truncated_cuts_at_a_character_boundary() {
        assert_eq!(truncated::<4>("model failed"), "mode");
        // "é" is two bytes: keeping 3 bytes of "aéé" would split the second one.
        assert_eq!(truncated::<4>("aéé"), "aé");
        assert_eq!(truncated::<0>("abc"), "");
    }

    proptest! {
        #[test]
        fn truncated_returns_the_longest_fitting_prefix(text in "\\PC{0,40}") {
            let cut = truncated::<16>(&text);
            prop_assert!(text.starts_with(cut.as_str()));
            let next_char_len = text[cut.len()..].chars().next().map_or(0, char::len_utf8);
            prop_assert!(cut.len() == text.len() || cut.len() + next_char_len > 16);
        }
    }
}
