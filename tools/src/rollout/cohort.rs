//! What the controller measures: the metrics reports kept for a stage's window, their
//! aggregates over a cohort (histograms merged, never averaged), and a gate's value.

use perch_runtime::histogram::{Histogram, BUCKETS};
use serde::{Deserialize, Serialize};

use super::plan::{Gate, Metric};

/// One metrics report of a device, as kept for the current stage's window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSample {
    /// Controller time it arrived.
    pub received_ms: u64,
    /// The model's name.
    pub model: String,
    /// The model's version.
    pub version: String,
    /// Requests answered.
    pub ok: u32,
    /// Requests failed.
    pub errors: u32,
    /// The interval the counts cover, milliseconds.
    pub interval_ms: u32,
    /// The latency histogram's non-empty buckets, `(bucket index, count)`.
    pub latency: Vec<(u8, u32)>,
}

impl MetricSample {
    /// The latency histogram.
    pub fn histogram(&self) -> Histogram {
        let mut counts = [0u32; BUCKETS];
        for &(i, c) in &self.latency {
            if let Some(slot) = counts.get_mut(usize::from(i)) {
                *slot = c;
            }
        }
        Histogram::from_counts(counts)
    }
}

/// Aggregates of one cohort over the current stage's window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CohortFigures {
    /// Devices with at least one report.
    pub devices: usize,
    /// Σ (ok + errors).
    pub requests: u64,
    /// Σ ok.
    pub ok: u64,
    /// Σ errors.
    pub errors: u64,
    /// Σ reported interval seconds (device-seconds observed).
    pub device_seconds: f64,
    /// The 50th percentile of the merged latency histogram, milliseconds.
    pub p50_ms: Option<f64>,
    /// The 99th percentile of the merged latency histogram, milliseconds.
    pub p99_ms: Option<f64>,
    /// Σ errors / Σ (ok + errors).
    pub error_rate: Option<f64>,
    /// Σ ok / Σ interval seconds: inferences per second of an average device.
    pub throughput: Option<f64>,
}

/// A cohort's figures and its merged histogram.
pub(super) struct Cohort {
    pub(super) figures: CohortFigures,
    pub(super) histogram: Histogram,
}

impl Cohort {
    /// Aggregates `samples` (grouped by device): histograms are merged, never averaged.
    pub(super) fn of<'a>(by_device: impl Iterator<Item = Vec<&'a MetricSample>>) -> Cohort {
        let mut histogram = Histogram::new();
        let mut f = CohortFigures::default();
        let mut interval_ms = 0u64;
        for samples in by_device {
            if samples.is_empty() {
                continue;
            }
            f.devices += 1;
            for s in samples {
                histogram.merge(&s.histogram());
                f.ok += u64::from(s.ok);
                f.errors += u64::from(s.errors);
                interval_ms += u64::from(s.interval_ms);
            }
        }
        f.requests = f.ok + f.errors;
        f.device_seconds = interval_ms as f64 / 1e3;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        f.p50_ms = histogram.quantile(0.5).map(ms);
        f.p99_ms = histogram.quantile(0.99).map(ms);
        f.error_rate = (f.requests > 0).then(|| f.errors as f64 / f.requests as f64);
        f.throughput = (interval_ms > 0).then(|| f.ok as f64 / f.device_seconds);
        Cohort {
            figures: f,
            histogram,
        }
    }
}

/// Merges the oldest report into the next one of the same model, or drops it when no
/// later report has its model.
pub(super) fn compact(samples: &mut Vec<MetricSample>) {
    let oldest = samples.remove(0);
    let Some(next) = samples
        .iter_mut()
        .find(|s| s.model == oldest.model && s.version == oldest.version)
    else {
        return;
    };
    let mut histogram = oldest.histogram();
    histogram.merge(&next.histogram());
    next.latency = sparse(&histogram);
    next.ok = next.ok.saturating_add(oldest.ok);
    next.errors = next.errors.saturating_add(oldest.errors);
    next.interval_ms = next.interval_ms.saturating_add(oldest.interval_ms);
    next.received_ms = oldest.received_ms;
}

/// A histogram's non-empty buckets, `(index, count)`.
pub(super) fn sparse(histogram: &Histogram) -> Vec<(u8, u32)> {
    histogram
        .counts()
        .iter()
        .enumerate()
        .filter(|(_, &c)| c > 0)
        .map(|(i, &c)| (i as u8, c))
        .collect()
}

impl Gate {
    /// The gate's metric measured over `figures`; `None` when there is nothing to
    /// measure (no requests).
    pub fn measure(&self, figures: &CohortFigures, histogram: &Histogram) -> Option<f64> {
        match self.metric {
            Metric::Latency { quantile } => {
                histogram.quantile(quantile).map(|d| d.as_secs_f64() * 1e3)
            }
            Metric::ErrorRate => figures.error_rate,
            Metric::Throughput => figures.throughput,
        }
    }
}
