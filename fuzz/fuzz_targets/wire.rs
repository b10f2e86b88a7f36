//! The postcard messages devices send (metrics reports and health), as the operator
//! decodes them: refused or decoded, and a decoded message encodes (into its worst-case
//! buffer) and decodes back to itself. Postcard accepts over-long varints, so the input
//! need not be the canonical encoding; the re-encoding must decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perch_runtime::histogram::Histogram;
use perch_runtime::wire::{Health, MetricsReport};

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = MetricsReport::decode(data) {
        let mut buf = [0; MetricsReport::MAX_ENCODED_LEN];
        let bytes = report.encode(&mut buf).expect("a decoded report encodes");
        assert_eq!(MetricsReport::decode(bytes), Ok(report.clone()));
        // What the operator does with it: quantiles of the merged latencies.
        let mut merged = Histogram::new();
        merged.merge(&report.latency);
        merged.merge(&report.latency);
        for p in [0.0, 0.5, 0.99, 1.0] {
            assert_eq!(merged.quantile(p).is_some(), !report.latency.is_empty());
        }
    }
    if let Ok(health) = Health::decode(data) {
        let mut buf = [0; Health::MAX_ENCODED_LEN];
        let bytes = health
            .encode(&mut buf)
            .expect("a decoded health message encodes");
        assert_eq!(Health::decode(bytes), Ok(health));
    }
});
