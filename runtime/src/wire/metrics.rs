//! The periodic metrics report: request counts and a latency histogram.

use serde::{Deserialize, Serialize};

use super::codec::{self, U32_MAX_LEN};
use super::model::ModelId;
use crate::histogram::{self, Histogram, REPORT_BUCKET_LIMIT};
use crate::Error;

/// What a device measured over one reporting interval, for one model.
///
/// Encoded as its fields in order, at most [`MetricsReport::MAX_ENCODED_LEN`] (212) bytes.
/// The latency histogram holds at most [`REPORT_BUCKET_LIMIT`] samples per bucket;
/// see [`Histogram::take_report_chunk`] for busier intervals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsReport {
    /// Format version, [`FORMAT_VERSION`](super::codec::FORMAT_VERSION); always the first byte.
    pub format: u8,
    /// Sequence number, incremented by the device per report, so the receiver can spot
    /// gaps and duplicates.
    pub seq: u32,
    /// Seconds since the device booted.
    pub uptime_s: u32,
    /// Length of the interval the counts cover, in milliseconds.
    pub interval_ms: u32,
    /// The model that served the requests.
    pub model: ModelId,
    /// Requests answered successfully.
    pub ok: u32,
    /// Requests that failed.
    pub errors: u32,
    /// Inference latencies of the interval; every bucket at most [`REPORT_BUCKET_LIMIT`].
    pub latency: Histogram,
}

impl MetricsReport {
    /// Worst-case encoded size, 212 bytes: the format byte, five `u32` varints of at most
    /// 5 bytes, the model id (42) and 72 histogram counts of at most 2 bytes each.
    pub const MAX_ENCODED_LEN: usize =
        1 + 5 * U32_MAX_LEN + ModelId::MAX_ENCODED_LEN + histogram::BUCKETS * 2;

    /// Encodes the report into `buf` and returns the written prefix. A buffer of
    /// [`MAX_ENCODED_LEN`](MetricsReport::MAX_ENCODED_LEN) bytes always suffices.
    ///
    /// # Errors
    ///
    /// - [`Error::UnsupportedFormat`] if `format` is not [`FORMAT_VERSION`](super::codec::FORMAT_VERSION);
    /// - [`Error::BucketOverLimit`] if a latency bucket holds more than
    ///   [`REPORT_BUCKET_LIMIT`] samples;
    /// - [`Error::Encode`] if `buf` is too small.
    pub fn encode<'b>(&self, buf: &'b mut [u8]) -> Result<&'b mut [u8], Error> {
        check_report_limit(&self.latency)?;
        codec::encode(self.format, self, buf)
    }

    /// Decodes a report that is exactly `bytes`.
    ///
    /// # Errors
    ///
    /// - [`Error::UnsupportedFormat`] if the first byte is not
    ///   [`FORMAT_VERSION`](super::codec::FORMAT_VERSION);
    /// - [`Error::Decode`] if the bytes are malformed, truncated or followed by more;
    /// - [`Error::BucketOverLimit`] if a latency bucket holds more than
    ///   [`REPORT_BUCKET_LIMIT`] samples, which `encode` never writes.
    pub fn decode(bytes: &[u8]) -> Result<MetricsReport, Error> {
        let report: MetricsReport = codec::decode(bytes)?;
        check_report_limit(&report.latency)?;
        Ok(report)
    }
}

/// Rejects a histogram with a bucket above [`REPORT_BUCKET_LIMIT`], naming the first one.
fn check_report_limit(latency: &Histogram) -> Result<(), Error> {
    match latency
        .counts()
        .iter()
        .position(|&count| count > REPORT_BUCKET_LIMIT)
    {
        Some(bucket) => Err(Error::BucketOverLimit {
            bucket,
            count: latency.counts()[bucket],
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{truncated, Version, FORMAT_VERSION};
    use core::time::Duration;
    use proptest::prelude::*;

    fn small_report() -> MetricsReport {
        let mut latency = Histogram::new();
        for _ in 0..3 {
            latency.record(Duration::from_micros(850));
        }
        latency.record(Duration::from_millis(12));
        MetricsReport {
            format: FORMAT_VERSION,
            seq: 7,
            uptime_s: 300,
            interval_ms: 60_000,
            model: ModelId::new("kws", Version::new(1, 2, 3)).unwrap(),
            ok: 1_000,
            errors: 2,
            latency,
        }
    }

    fn worst_case_report() -> MetricsReport {
        MetricsReport {
            format: FORMAT_VERSION,
            seq: u32::MAX,
            uptime_s: u32::MAX,
            interval_ms: u32::MAX,
            model: ModelId::new(&"m".repeat(32), Version::new(u16::MAX, u16::MAX, u16::MAX))
                .unwrap(),
            ok: u32::MAX,
            errors: u32::MAX,
            latency: Histogram::from_counts([REPORT_BUCKET_LIMIT; histogram::BUCKETS]),
        }
    }

    fn encode_to_vec(report: &MetricsReport) -> Vec<u8> {
        let mut buf = [0; MetricsReport::MAX_ENCODED_LEN];
        report.encode(&mut buf).unwrap().to_vec()
    }

    #[test]
    fn small_report_encodes_to_golden_bytes() {
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x01,             // format
            0x07,             // seq 7
            0xAC, 0x02,       // uptime_s 300
            0xE0, 0xD4, 0x03, // interval_ms 60 000
            0x03, b'k', b'w', b's', 0x01, 0x02, 0x03, // model kws@1.2.3
            0xE8, 0x07,       // ok 1 000
            0x02,             // errors 2
            // latency: 72 counts; 850 µs (x3) is bucket 30, 12 ms (x1) is bucket 41
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // 0..10: underflow, 1 µs..7.9 µs
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // 10..20
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // 20..30
            3, 0, 0, 0, 0, 0, 0, 0, 0, 0, // 30..40: [794.3 µs, 1 ms) holds 3
            0, 1, 0, 0, 0, 0, 0, 0, 0, 0, // 40..50: [10 ms, 12.59 ms) holds 1
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // 50..60
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // 60..70
            0, 0,                         // 70..72: [7.943 s, 10 s), overflow
        ];
        let report = small_report();
        assert_eq!(encode_to_vec(&report), expected);
        assert_eq!(MetricsReport::decode(expected), Ok(report));
    }

    #[test]
    fn max_encoded_len_fits_a_256_byte_frame() {
        assert_eq!(MetricsReport::MAX_ENCODED_LEN, 212);
        const { assert!(MetricsReport::MAX_ENCODED_LEN <= 256) };
    }

    #[test]
    fn worst_case_report_encodes_to_exactly_max_encoded_len() {
        let report = worst_case_report();
        let bytes = encode_to_vec(&report);
        assert_eq!(bytes.len(), MetricsReport::MAX_ENCODED_LEN);
        assert_eq!(MetricsReport::decode(&bytes), Ok(report));
    }

    #[test]
    fn encoding_refuses_a_bucket_over_the_report_limit() {
        let mut report = small_report();
        let mut counts = *report.latency.counts();
        counts[5] = REPORT_BUCKET_LIMIT + 1;
        report.latency = Histogram::from_counts(counts);
        let mut buf = [0; 512];
        assert_eq!(
            report.encode(&mut buf),
            Err(Error::BucketOverLimit {
                bucket: 5,
                count: REPORT_BUCKET_LIMIT + 1
            })
        );
    }

    #[test]
    fn decoding_refuses_a_bucket_over_the_report_limit() {
        let mut report = small_report();
        report.latency = Histogram::from_counts([u32::MAX; histogram::BUCKETS]);
        let mut buf = [0; 512];
        let bytes = postcard::to_slice(&report, &mut buf).unwrap();
        assert_eq!(
            MetricsReport::decode(bytes),
            Err(Error::BucketOverLimit {
                bucket: 0,
                count: u32::MAX
            })
        );
    }

    #[test]
    fn encoding_into_a_short_buffer_fails() {
        let mut buf = [0; 40];
        assert_eq!(small_report().encode(&mut buf), Err(Error::Encode));
    }

    #[test]
    fn encoding_refuses_another_format_version() {
        let report = MetricsReport {
            format: 2,
            ..small_report()
        };
        let mut buf = [0; MetricsReport::MAX_ENCODED_LEN];
        assert_eq!(
            report.encode(&mut buf),
            Err(Error::UnsupportedFormat {
                found: 2,
                expected: 1
            })
        );
    }

    #[test]
    fn decoding_refuses_another_format_version() {
        let mut bytes = encode_to_vec(&small_report());
        bytes[0] = 2;
        assert_eq!(
            MetricsReport::decode(&bytes),
            Err(Error::UnsupportedFormat {
                found: 2,
                expected: 1
            })
        );
    }

    #[test]
    fn decoding_refuses_trailing_bytes() {
        let mut bytes = encode_to_vec(&small_report());
        bytes.push(0);
        assert_eq!(MetricsReport::decode(&bytes), Err(Error::Decode));
    }

    #[test]
    fn every_truncation_fails_to_decode() {
        let bytes = encode_to_vec(&worst_case_report());
        for len in 0..bytes.len() {
            assert!(
                MetricsReport::decode(&bytes[..len]).is_err(),
                "prefix {len}"
            );
        }
    }

    prop_compose! {
        fn model_ids()(name in "\\PC{0,40}", major: u16, minor: u16, patch: u16) -> ModelId {
            ModelId { name: truncated(&name), version: Version::new(major, minor, patch) }
        }
    }

    prop_compose! {
        fn reports()(
            seq: u32,
            uptime_s: u32,
            interval_ms: u32,
            model in model_ids(),
            ok: u32,
            errors: u32,
            counts in prop::collection::vec(0..=REPORT_BUCKET_LIMIT, histogram::BUCKETS),
        ) -> MetricsReport {
            let counts = counts.try_into().unwrap();
            MetricsReport {
                format: FORMAT_VERSION,
                seq,
                uptime_s,
                interval_ms,
                model,
                ok,
                errors,
                latency: Histogram::from_counts(counts),
            }
        }
    }

    proptest! {
        #[test]
        fn reports_round_trip_within_max_encoded_len(report in reports()) {
            let bytes = encode_to_vec(&report);
            prop_assert!(bytes.len() <= MetricsReport::MAX_ENCODED_LEN);
            prop_assert_eq!(MetricsReport::decode(&bytes), Ok(report));
        }

        #[test]
        fn decoding_random_bytes_never_panics(
            mut bytes in prop::collection::vec(any::<u8>(), 0..300),
            force_format: bool,
        ) {
            if let (true, Some(first)) = (force_format, bytes.first_mut()) {
                *first = FORMAT_VERSION;
            }
            let _ = MetricsReport::decode(&bytes);
        }

        #[test]
        fn decoding_corrupted_reports_never_panics(
            report in reports(),
            index: prop::sample::Index,
            byte: u8,
        ) {
            let mut bytes = encode_to_vec(&report);
            let at = index.index(bytes.len());
            bytes[at] = byte;
            let _ = MetricsReport::decode(&bytes);
        }
    }
}
