//! The figures of an experiment: per routed variant, requests (ok, error) and their
//! latency; per shadow, runs, errors, drops, latency and agreement with the served
//! answer. Counters are atomics and latencies the runtime's lock-free histograms, so
//! the served path records without locking; the agreement tallies are written by the
//! shadow worker alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use perch_runtime::histogram::{AtomicHistogram, Histogram};
use serde_json::{json, Value};

use crate::prometheus::{write_family, write_histogram, write_sample};

/// One routed variant's counters.
#[derive(Debug, Default)]
pub struct VariantStats {
    ok: AtomicU64,
    errors: AtomicU64,
    latency: AtomicHistogram,
}

impl VariantStats {
    /// Counts one request the variant answered, ok or not, with its time (the
    /// variant's service time for the request: decoding, the run, encoding).
    pub fn record(&self, ok: bool, took: Duration) {
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
            self.latency.record(took);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(ok, errors, latency of the ok ones)`.
    pub fn snapshot(&self) -> (u64, u64, Histogram) {
        (
            self.ok.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            self.latency.snapshot(),
        )
    }
}

/// `(ok, errors, dropped, latency, agreement)` of a shadow, as [`ShadowStats::snapshot`]
/// returns them.
pub type Snapshot = (u64, u64, u64, Histogram, Tally);

/// One shadow's counters.
#[derive(Debug, Default)]
pub struct ShadowStats {
    ok: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
    latency: AtomicHistogram,
    agreement: Mutex<Tally>,
}

/// How shadow answers compared with the served ones.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Tally {
    /// Answers compared (both the served and the shadow answer were outputs).
    pub compared: u64,
    /// Of those, answers whose argmax (or label) matched in every row (argmax mode).
    pub agreed: u64,
    /// Of those, answers whose max relative difference was measured (regressor mode).
    pub measured: u64,
    /// Sum over measured answers of the max relative difference (regressor mode).
    pub sum_difference: f64,
    /// The largest max relative difference seen (regressor mode).
    pub max_difference: f64,
}

/// The outcome of comparing one shadow answer with the served one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Comparison {
    /// Argmax or label: same in every row or not.
    Match(bool),
    /// The max relative difference.
    Difference(f64),
    /// The answers could not be compared (different shapes, no outputs).
    Incomparable,
}

impl ShadowStats {
    /// Counts one shadow run, with its time and how it compared.
    pub fn record(&self, ok: bool, took: Duration, comparison: Option<Comparison>) {
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
            self.latency.record(took);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let Some(comparison) = comparison else {
            return;
        };
        let mut tally = self
            .agreement
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match comparison {
            Comparison::Match(agreed) => {
                tally.compared += 1;
                tally.agreed += u64::from(agreed);
            }
            Comparison::Difference(d) if d.is_finite() => {
                tally.compared += 1;
                tally.measured += 1;
                tally.sum_difference += d;
                tally.max_difference = tally.max_difference.max(d);
            }
            Comparison::Difference(_) | Comparison::Incomparable => {}
        }
    }

    /// Counts a copy the full queue dropped.
    pub fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// `(ok, errors, dropped, latency, agreement)`.
    pub fn snapshot(&self) -> Snapshot {
        let tally = *self
            .agreement
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (
            self.ok.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
            self.latency.snapshot(),
            tally,
        )
    }
}

/// Milliseconds of a quantile, `null` for an empty histogram.
fn quantile_ms(histogram: &Histogram, p: f64) -> Value {
    histogram
        .quantile(p)
        .map_or(Value::Null, |d| json!(d.as_secs_f64() * 1e3))
}

fn rate(part: u64, whole: u64) -> Value {
    if whole == 0 {
        Value::Null
    } else {
        json!(part as f64 / whole as f64)
    }
}

/// A variant's figures as `GET /v2/experiments/{name}` lists them.
pub fn variant_json(stats: &VariantStats) -> Value {
    let (ok, errors, latency) = stats.snapshot();
    json!({
        "requests": ok + errors,
        "ok": ok,
        "errors": errors,
        "error_rate": rate(errors, ok + errors),
        "p50_ms": quantile_ms(&latency, 0.5),
        "p99_ms": quantile_ms(&latency, 0.99),
    })
}

/// A shadow's figures as `GET /v2/experiments/{name}` lists them.
pub fn shadow_json(stats: &ShadowStats) -> Value {
    let (ok, errors, dropped, latency, tally) = stats.snapshot();
    let mean = if tally.measured == 0 {
        Value::Null
    } else {
        json!(tally.sum_difference / tally.measured as f64)
    };
    json!({
        "runs": ok + errors,
        "ok": ok,
        "errors": errors,
        "dropped": dropped,
        "error_rate": rate(errors, ok + errors),
        "p50_ms": quantile_ms(&latency, 0.5),
        "p99_ms": quantile_ms(&latency, 0.99),
        "compared": tally.compared,
        "agreed": tally.agreed,
        "agreement": rate(tally.agreed, tally.compared - tally.measured),
        "mean_max_relative_difference": mean,
        "max_relative_difference": tally.max_difference,
    })
}

/// The series of one experiment, for `/metrics`: what [`render`] writes per variant
/// and per shadow.
pub struct Series<'a> {
    /// The experiment's name (the `experiment` label).
    pub experiment: &'a str,
    /// Each routed variant's name (the `variant` label) and counters.
    pub variants: Vec<(&'a str, &'a VariantStats)>,
    /// Each shadow's name (the `variant` label) and counters.
    pub shadows: Vec<(&'a str, &'a ShadowStats)>,
}

/// The experiment families in the Prometheus text format, every series labelled
/// `experiment` and `variant`:
///
/// - `perch_experiment_requests_total{status="ok"|"error"}` and the histogram
///   `perch_experiment_latency_seconds` of the routed variants;
/// - `perch_experiment_shadow_runs_total{status}`,
///   `perch_experiment_shadow_dropped_total`, the histogram
///   `perch_experiment_shadow_latency_seconds`,
///   `perch_experiment_shadow_compared_total`, `perch_experiment_shadow_agreed_total`
///   and the gauge `perch_experiment_shadow_max_relative_difference` of the shadows.
///
/// Empty when there is no experiment.
pub fn render(experiments: &[Series<'_>]) -> String {
    let mut out = String::new();
    if experiments.is_empty() {
        return out;
    }
    let variants = || {
        experiments
            .iter()
            .flat_map(|e| e.variants.iter().map(move |(v, s)| (e.experiment, *v, *s)))
    };
    let shadows = || {
        experiments.iter().flat_map(|e| {
            e.shadows
                .iter()
                .map(move |(v, s)| (e.experiment, *v, s.snapshot()))
        })
    };
    let name = "perch_experiment_requests_total";
    write_family(
        &mut out,
        name,
        "Requests an experiment's variant answered, by outcome.",
        "counter",
    );
    for (experiment, variant, stats) in variants() {
        let (ok, errors, _) = stats.snapshot();
        for (status, n) in [("ok", ok), ("error", errors)] {
            let labels = [
                ("experiment", experiment),
                ("variant", variant),
                ("status", status),
            ];
            write_sample(&mut out, name, &labels, n as f64);
        }
    }
    let name = "perch_experiment_latency_seconds";
    write_family(
        &mut out,
        name,
        "Service time of an experiment's variant per answered request, in seconds.",
        "histogram",
    );
    for (experiment, variant, stats) in variants() {
        let (_, _, latency) = stats.snapshot();
        write_histogram(
            &mut out,
            name,
            &[("experiment", experiment), ("variant", variant)],
            &latency,
        );
    }
    if experiments.iter().all(|e| e.shadows.is_empty()) {
        return out;
    }
    let name = "perch_experiment_shadow_runs_total";
    write_family(
        &mut out,
        name,
        "Shadow runs on copies of an experiment's requests, by outcome.",
        "counter",
    );
    for (experiment, variant, (ok, errors, ..)) in shadows() {
        for (status, n) in [("ok", ok), ("error", errors)] {
            let labels = [
                ("experiment", experiment),
                ("variant", variant),
                ("status", status),
            ];
            write_sample(&mut out, name, &labels, n as f64);
        }
    }
    /// A counter family of the shadows: name, help, value.
    type Counter = (&'static str, &'static str, fn(&Snapshot) -> f64);
    let counters: [Counter; 3] = [
        (
            "perch_experiment_shadow_dropped_total",
            "Request copies dropped because the shadow queue was full.",
            |s| s.2 as f64,
        ),
        (
            "perch_experiment_shadow_compared_total",
            "Shadow answers compared with the served answer.",
            |s| s.4.compared as f64,
        ),
        (
            "perch_experiment_shadow_agreed_total",
            "Shadow answers whose argmax (or label) matched the served answer.",
            |s| s.4.agreed as f64,
        ),
    ];
    for (name, help, value) in counters {
        write_family(&mut out, name, help, "counter");
        for (experiment, variant, snapshot) in shadows() {
            write_sample(
                &mut out,
                name,
                &[("experiment", experiment), ("variant", variant)],
                value(&snapshot),
            );
        }
    }
    let name = "perch_experiment_shadow_max_relative_difference";
    write_family(
        &mut out,
        name,
        "Largest max relative difference of a shadow's answer from the served one.",
        "gauge",
    );
    for (experiment, variant, (.., tally)) in shadows() {
        write_sample(
            &mut out,
            name,
            &[("experiment", experiment), ("variant", variant)],
            tally.max_difference,
        );
    }
    let name = "perch_experiment_shadow_latency_seconds";
    write_family(
        &mut out,
        name,
        "Service time of a shadow run, in seconds.",
        "histogram",
    );
    for (experiment, variant, (.., latency, _)) in shadows() {
        write_histogram(
            &mut out,
            name,
            &[("experiment", experiment), ("variant", variant)],
            &latency,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_figures_count_runs_drops_and_agreement() {
        let stats = ShadowStats::default();
        stats.record(
            true,
            Duration::from_millis(2),
            Some(Comparison::Match(true)),
        );
        stats.record(
            true,
            Duration::from_millis(2),
            Some(Comparison::Match(false)),
        );
        stats.record(false, Duration::from_millis(1), None);
        stats.dropped();
        let figures = shadow_json(&stats);
        assert_eq!(
            (&figures["runs"], &figures["errors"], &figures["dropped"]),
            (&json!(3), &json!(1), &json!(1))
        );
        assert_eq!(
            (&figures["compared"], &figures["agreement"]),
            (&json!(2), &json!(0.5))
        );
        let p50 = figures["p50_ms"].as_f64().unwrap();
        assert!((1.75..=2.25).contains(&p50), "{p50}");

        let regressor = ShadowStats::default();
        for d in [0.01, 0.03] {
            regressor.record(
                true,
                Duration::from_millis(1),
                Some(Comparison::Difference(d)),
            );
        }
        let figures = shadow_json(&regressor);
        assert!((figures["mean_max_relative_difference"].as_f64().unwrap() - 0.02).abs() < 1e-12);
        assert_eq!(figures["max_relative_difference"], json!(0.03));
    }

    #[test]
    fn every_series_carries_the_experiment_and_variant_labels() {
        let (a, b, s) = (
            VariantStats::default(),
            VariantStats::default(),
            ShadowStats::default(),
        );
        a.record(true, Duration::from_micros(300));
        b.record(false, Duration::from_micros(300));
        s.record(
            true,
            Duration::from_millis(1),
            Some(Comparison::Match(true)),
        );
        let text = render(&[Series {
            experiment: "iris-ab",
            variants: vec![("a", &a), ("b", &b)],
            shadows: vec![("c", &s)],
        }]);
        assert!(text.contains(
            "perch_experiment_requests_total{experiment=\"iris-ab\",variant=\"b\",status=\"error\"} 1\n"
        ));
        assert!(text.contains(
            "perch_experiment_latency_seconds_count{experiment=\"iris-ab\",variant=\"a\"} 1\n"
        ));
        assert!(text.contains(
            "perch_experiment_shadow_agreed_total{experiment=\"iris-ab\",variant=\"c\"} 1\n"
        ));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.contains("experiment=\"iris-ab\",variant=\""), "{line}");
        }
        assert_eq!(render(&[]), "");
    }
}
