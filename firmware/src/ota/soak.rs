//! The device's soak of an activated bundle: intervals of traffic pooled into windows
//! large enough to judge, and the verdict of the whole probation.
//!
//! A report interval with one slow request has a p99 of that request; judging it would
//! roll a healthy bundle back on a quiet minute. So intervals are pooled (counts added,
//! latency histograms merged) until the window holds the document's
//! `soak_min_requests`, and only then is the window checked against the bundle's SLO.
//! The soak confirms only once its time is over **and** it judged that many requests;
//! a soak whose time is over with fewer is [`Verdict::Unexercised`]: the bundle never
//! ran enough to be known good, so it stays on probation and the operator is told.
//!
//! Pure: no clock, no I/O; [`Soak`] is part of the persisted machine state.

use perch_runtime::histogram::{Histogram, BUCKETS};
use perch_runtime::slo::{Slo, Violation, Window};
use serde::{Deserialize, Serialize};

/// The traffic of a probation so far (persisted with the machine's state).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Soak {
    /// Requests of windows already judged against the SLO.
    pub judged: u64,
    /// The window being filled: requests answered.
    pub ok: u64,
    /// The window being filled: requests failed.
    pub errors: u64,
    /// The window being filled: latency counts per bucket (empty: none yet).
    pub latency: Vec<u32>,
}

/// What an interval did to the soak.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// The window is not full yet, or it met the SLO; the soak's time is not over.
    Soaking,
    /// A full window missed the SLO.
    Breach(Violation),
    /// The soak's time is over and it judged enough requests: confirm.
    Confirm,
    /// The soak's time is over with fewer requests judged than needed (`judged`
    /// counted, `pending` in the unfinished window).
    Unexercised {
        /// Requests of judged windows.
        judged: u64,
        /// Requests in the window not full yet.
        pending: u64,
    },
}

impl Soak {
    /// Adds an interval's `ok` and `errors` and its latency histogram; judges the window
    /// against `slo` once it holds `min_requests`; then says where the soak stands, given
    /// whether its time is over (`soaked`).
    pub fn add(
        &mut self,
        ok: u64,
        errors: u64,
        latency: &Histogram,
        slo: &Slo,
        min_requests: u64,
        soaked: bool,
    ) -> Verdict {
        self.ok = self.ok.saturating_add(ok);
        self.errors = self.errors.saturating_add(errors);
        let mut window = self.histogram();
        window.merge(latency);
        self.latency = if window.is_empty() {
            Vec::new()
        } else {
            window.counts().to_vec()
        };
        let pending = self.ok.saturating_add(self.errors);
        if pending >= min_requests.max(1) {
            let measured = Window {
                p99_ms: window.quantile(0.99).map(|d| d.as_secs_f64() * 1e3),
                ok: self.ok,
                errors: self.errors,
                throughput: None,
            };
            if let Some(violation) = slo.violations(&measured).next() {
                return Verdict::Breach(violation);
            }
            self.judged = self.judged.saturating_add(pending);
            self.ok = 0;
            self.errors = 0;
            self.latency.clear();
        }
        match (soaked, self.judged >= min_requests.max(1)) {
            (false, _) => Verdict::Soaking,
            (true, true) => Verdict::Confirm,
            (true, false) => Verdict::Unexercised {
                judged: self.judged,
                pending: self.ok.saturating_add(self.errors),
            },
        }
    }

    /// The unfinished window's latency histogram.
    fn histogram(&self) -> Histogram {
        let mut counts = [0u32; BUCKETS];
        for (slot, &count) in counts.iter_mut().zip(&self.latency) {
            *slot = count;
        }
        Histogram::from_counts(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn slo() -> Slo {
        Slo {
            p99_ms: Some(20.0),
            max_error_rate: Some(0.05),
            min_throughput: None,
        }
    }

    fn latencies(ms: &[(u64, u32)]) -> Histogram {
        let mut h = Histogram::new();
        for &(ms, times) in ms {
            for _ in 0..times {
                h.record(Duration::from_millis(ms));
            }
        }
        h
    }

    #[test]
    fn one_slow_request_in_a_quiet_interval_is_pooled_not_judged() {
        let mut soak = Soak::default();
        let verdict = soak.add(1, 0, &latencies(&[(500, 1)]), &slo(), 100, false);
        assert_eq!(verdict, Verdict::Soaking);
        // Enough fast requests later: the pooled window's p99 is fast, it passes.
        let verdict = soak.add(199, 0, &latencies(&[(2, 199)]), &slo(), 100, true);
        assert_eq!(verdict, Verdict::Confirm);
        assert_eq!(soak.judged, 200);
    }

    #[test]
    fn a_full_window_over_the_slo_is_a_breach() {
        let mut soak = Soak::default();
        assert_eq!(
            soak.add(60, 0, &latencies(&[(50, 60)]), &slo(), 100, false),
            Verdict::Soaking
        );
        let verdict = soak.add(60, 0, &latencies(&[(50, 60)]), &slo(), 100, false);
        assert!(
            matches!(verdict, Verdict::Breach(Violation::P99 { .. })),
            "{verdict:?}"
        );
        let mut soak = Soak::default();
        let verdict = soak.add(90, 10, &latencies(&[(1, 90)]), &slo(), 100, false);
        assert!(
            matches!(verdict, Verdict::Breach(Violation::ErrorRate { .. })),
            "{verdict:?}"
        );
    }

    #[test]
    fn a_soak_without_enough_traffic_is_unexercised_until_it_gets_some() {
        let mut soak = Soak::default();
        let empty = Histogram::new();
        assert_eq!(
            soak.add(0, 0, &empty, &slo(), 100, true),
            Verdict::Unexercised {
                judged: 0,
                pending: 0
            }
        );
        assert_eq!(
            soak.add(3, 0, &latencies(&[(1, 3)]), &slo(), 100, true),
            Verdict::Unexercised {
                judged: 0,
                pending: 3
            }
        );
        assert_eq!(
            soak.add(97, 0, &latencies(&[(1, 97)]), &slo(), 100, true),
            Verdict::Confirm
        );
    }

    #[test]
    fn the_soak_survives_being_written_and_read_back() {
        let mut soak = Soak::default();
        soak.add(7, 1, &latencies(&[(3, 7)]), &slo(), 100, false);
        let json = serde_json::to_string(&soak).unwrap();
        let back: Soak = serde_json::from_str(&json).unwrap();
        assert_eq!(back, soak);
        assert_eq!(back.histogram().count(), 7);
    }
}
