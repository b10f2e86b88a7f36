//! A fixed-size latency histogram with log-spaced buckets.
//!
//! # Buckets
//!
//! [`BUCKETS`] = 72 buckets of `u32` counts (288 bytes, no allocation):
//!
//! - bucket 0, **underflow**: below 1 µs;
//! - buckets 1..=70: `[b(k - 1), b(k))` for the boundaries `b(k) = 10^(k/10)` µs,
//!   k = 0..=70, i.e. ten buckets per decade from 1 µs to 10 s ([`BOUNDARIES_NS`]);
//! - bucket 71, **overflow**: 10 s and above.
//!
//! Boundaries are whole nanoseconds: the first decade is rounded to four significant
//! digits (1 000, 1 259, 1 585, … 7 943 ns) and every later decade is that one times a
//! power of ten. Every power of ten from 1 µs to 10 s is therefore a boundary exactly, so
//! SLO thresholds such as 1 ms, 10 ms or 100 ms fall between buckets and "share of
//! requests under 10 ms" is exact.
//!
//! # Error bound
//!
//! [`Histogram::quantile`] finds the bucket holding the sample of rank
//! `max(1, ceil(p × N))` (1-based, in ascending order) and returns that bucket's geometric
//! midpoint `m = floor(sqrt(lo × hi))`. The exact sample quantile `x` with the same rank
//! definition lies in `[lo, hi)`, so for `x` in `[1 µs, 10 s)`:
//!
//! `|m - x| / x ≤ sqrt(r) - 1`, with `r = hi / lo`.
//!
//! The ideal ratio is `r = 10^(1/10) ≈ 1.25893`, giving `sqrt(r) - 1 ≈ 12.20 %`; rounding
//! the boundaries to whole nanoseconds widens the widest bucket (1 995 → 2 512 ns and its
//! multiples) to `r = 1.25915`, so the guaranteed bound is **12.22 %**. Overestimates reach
//! the bound (when `x = lo`); underestimates stay below `1 - 1/sqrt(r) ≈ 10.9 %`.
//!
//! Values below 1 µs are reported as 1 µs (an upper bound) and values of 10 s or more as
//! 10 s (a lower bound); neither is covered by the error bound.
//!
//! # Merging, not averaging
//!
//! Histograms from many devices or intervals combine with [`Histogram::merge`], and the
//! merged histogram's quantiles obey the same error bound. Averaging per-device
//! percentiles has no such meaning; fleet-wide quantiles are always computed from merged
//! histograms.
//!
//! # Metrics reports
//!
//! A metrics report carries a histogram whose every count is at most
//! [`REPORT_BUCKET_LIMIT`] (2^14 - 1), so each count encodes as a postcard varint of at
//! most two bytes and a report has a fixed worst-case size. A device with busier buckets
//! sends several reports, taking each with [`Histogram::take_report_chunk`]; the receiver
//! merges them back into the exact original.
//!
//! # Recording from many threads
//!
//! [`AtomicHistogram`] has the same buckets in atomic counters: request handlers record
//! into it through a shared reference, lock-free and allocation-free, and a reporter
//! takes plain [`Histogram`]s out of it.
//!
//! # Serialization
//!
//! With serde, a histogram is a tuple of exactly [`BUCKETS`] `u32` counts in bucket
//! order, so postcard writes 72 varints with no length prefix.
//!
//! ```
//! use core::time::Duration;
//! use perch_runtime::histogram::Histogram;
//!
//! let mut h = Histogram::new();
//! for ms in 1..=100 {
//!     h.record(Duration::from_millis(ms));
//! }
//! let p90 = h.quantile(0.9).unwrap();
//! // The exact p90 is 90 ms; the estimate is within 12.22 % of it.
//! assert!(p90 > Duration::from_micros(79_000) && p90 < Duration::from_micros(101_000));
//! ```

use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};
use core::time::Duration;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeTuple, Serializer};

/// Number of buckets: underflow, 70 log-spaced buckets from 1 µs to 10 s, overflow.
pub const BUCKETS: usize = 72;

/// The most samples one bucket may hold in a metrics report: 2^14 - 1, the largest value
/// a two-byte postcard varint holds.
pub const REPORT_BUCKET_LIMIT: u32 = 16_383;

/// First decade of boundaries, 10^(k/10) µs for k = 0..10, in nanoseconds rounded to
/// four significant digits.
const BASE_DECADE_NS: [u64; 10] = [1000, 1259, 1585, 1995, 2512, 3162, 3981, 5012, 6310, 7943];

/// Bucket boundaries in nanoseconds: `BOUNDARIES_NS[k]` ≈ 10^(k/10) µs, from 1 µs
/// (`1_000`) to 10 s (`10_000_000_000`), strictly increasing.
///
/// Boundary `k` closes bucket `k` and opens bucket `k + 1`: a value equal to it is counted
/// in bucket `k + 1`.
pub const BOUNDARIES_NS: [u64; BUCKETS - 1] = boundaries_ns();

/// What [`Histogram::quantile`] reports for each bucket, in nanoseconds: the geometric
/// midpoint of the bucket, 1 µs for underflow and 10 s for overflow.
const REPRESENTATIVE_NS: [u64; BUCKETS] = representatives_ns();

const fn boundaries_ns() -> [u64; BUCKETS - 1] {
    let mut table = [0; BUCKETS - 1];
    let mut k = 0;
    while k < table.len() {
        table[k] = BASE_DECADE_NS[k % 10] * 10u64.pow(k as u32 / 10);
        k += 1;
    }
    table
}

const fn representatives_ns() -> [u64; BUCKETS] {
    let mut table = [0; BUCKETS];
    table[0] = BOUNDARIES_NS[0];
    table[BUCKETS - 1] = BOUNDARIES_NS[BUCKETS - 2];
    let mut i = 1;
    while i < BUCKETS - 1 {
        let (lo, hi) = (BOUNDARIES_NS[i - 1] as u128, BOUNDARIES_NS[i] as u128);
        // The square root of a product of two u64 fits a u64. u128 because near 10 s the
        // product exceeds u64::MAX.
        table[i] = (lo * hi).isqrt() as u64;
        i += 1;
    }
    table
}

/// The bucket a value in nanoseconds falls in.
fn bucket_index(ns: u64) -> usize {
    BOUNDARIES_NS.partition_point(|&boundary| boundary <= ns)
}

/// A latency histogram: [`BUCKETS`] saturating `u32` counts over fixed log-spaced buckets.
///
/// See the [module docs](self) for the bucket layout and the quantile error bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: [u32; BUCKETS],
}

impl Histogram {
    /// An empty histogram.
    pub const fn new() -> Histogram {
        Histogram {
            counts: [0; BUCKETS],
        }
    }

    /// A histogram with the given count in each bucket, in bucket order (the inverse of
    /// [`counts`](Histogram::counts)).
    pub const fn from_counts(counts: [u32; BUCKETS]) -> Histogram {
        Histogram { counts }
    }

    /// Counts one sample. Durations beyond `u64::MAX` nanoseconds (about 584 years) count
    /// as overflow like any other value of 10 s or more; a full bucket stays at
    /// `u32::MAX`.
    pub fn record(&mut self, latency: Duration) {
        self.record_ns(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Counts one sample given in nanoseconds; a full bucket stays at `u32::MAX`.
    pub fn record_ns(&mut self, latency_ns: u64) {
        let count = &mut self.counts[bucket_index(latency_ns)];
        *count = count.saturating_add(1);
    }

    /// Total number of samples, over all buckets.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|&count| u64::from(count)).sum()
    }

    /// Whether no sample has been recorded.
    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|&count| count == 0)
    }

    /// Forgets every sample.
    pub fn clear(&mut self) {
        self.counts = [0; BUCKETS];
    }

    /// Adds `other`'s samples to this histogram, bucket by bucket (saturating at
    /// `u32::MAX`).
    ///
    /// The result is the histogram of both sample sets together, so merging is how
    /// quantiles over several devices or intervals are computed.
    pub fn merge(&mut self, other: &Histogram) {
        for (count, &more) in self.counts.iter_mut().zip(&other.counts) {
            *count = count.saturating_add(more);
        }
    }

    /// Estimates the `p`-quantile: the geometric midpoint of the bucket holding the sample
    /// of rank `max(1, ceil(p × count))`, counting from 1 in ascending order.
    ///
    /// `p` is clamped to `[0, 1]`, so `quantile(0.0)` estimates the minimum and
    /// `quantile(1.0)` the maximum. Within 1 µs..10 s the estimate is within 12.22 % of
    /// the exact sample quantile of the same rank; below 1 µs it is 1 µs and from 10 s on
    /// it is 10 s (see the [module docs](self)).
    ///
    /// Returns `None` when the histogram is empty or `p` is NaN.
    pub fn quantile(&self, p: f64) -> Option<Duration> {
        if p.is_nan() {
            return None;
        }
        let rank = rank(p.clamp(0.0, 1.0), self.count())?;
        let mut seen = 0;
        let bucket = self.counts.iter().position(|&count| {
            seen += u64::from(count);
            seen >= rank
        })?;
        Some(Duration::from_nanos(REPRESENTATIVE_NS[bucket]))
    }

    /// The range `[lo, hi)` of bucket `index`: `(0, 1 µs)` for underflow (index 0),
    /// `(10 s, Duration::MAX)` for overflow (index 71).
    ///
    /// # Panics
    ///
    /// If `index >= BUCKETS`.
    pub fn bucket_bounds(index: usize) -> (Duration, Duration) {
        assert!(
            index < BUCKETS,
            "bucket index {index} is not below {BUCKETS}"
        );
        let lo = match index {
            0 => Duration::ZERO,
            _ => Duration::from_nanos(BOUNDARIES_NS[index - 1]),
        };
        let hi = match BOUNDARIES_NS.get(index) {
            Some(&ns) => Duration::from_nanos(ns),
            None => Duration::MAX,
        };
        (lo, hi)
    }

    /// The count of each bucket, in bucket order.
    pub fn counts(&self) -> &[u32; BUCKETS] {
        &self.counts
    }

    /// Whether every bucket holds at most [`REPORT_BUCKET_LIMIT`] samples, so the
    /// histogram can go into one metrics report as is.
    pub fn fits_report(&self) -> bool {
        self.counts
            .iter()
            .all(|&count| count <= REPORT_BUCKET_LIMIT)
    }

    /// Moves up to [`REPORT_BUCKET_LIMIT`] samples out of each bucket into a new
    /// histogram, which therefore [fits a report](Histogram::fits_report).
    ///
    /// Taking chunks until `self` is empty splits a histogram into reports that
    /// [`merge`](Histogram::merge) back into exactly the original:
    ///
    /// ```
    /// # use perch_runtime::histogram::Histogram;
    /// # fn send(_: &Histogram) {}
    /// let mut pending = Histogram::new();
    /// for _ in 0..40_000 {
    ///     pending.record_ns(850_000);
    /// }
    /// let original = pending.clone();
    /// let mut received = Histogram::new();
    /// while !pending.is_empty() {
    ///     let chunk = pending.take_report_chunk();
    ///     send(&chunk);
    ///     received.merge(&chunk);
    /// }
    /// assert_eq!(received, original);
    /// ```
    pub fn take_report_chunk(&mut self) -> Histogram {
        let mut chunk = Histogram::new();
        for (taken, count) in chunk.counts.iter_mut().zip(&mut self.counts) {
            *taken = (*count).min(REPORT_BUCKET_LIMIT);
            *count -= *taken;
        }
        chunk
    }
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::new()
    }
}

/// A [`Histogram`] that many threads record into at once through a shared reference:
/// one [`AtomicU32`] per bucket, so recording takes no lock and never allocates.
///
/// This is the histogram on the inference path. A request handler calls
/// [`record`](AtomicHistogram::record) after each inference; a reporter calls
/// [`take`](AtomicHistogram::take) once per interval (or [`snapshot`](AtomicHistogram::snapshot)
/// for cumulative metrics) and works on the plain [`Histogram`] it gets back.
///
/// # Consistency
///
/// Every operation is atomic per bucket, not across buckets, and uses `Relaxed`
/// ordering: a histogram orders nothing else in memory.
///
/// - A sample recorded while [`take`](AtomicHistogram::take) runs lands either in what
///   that `take` returns or in what the next one returns, never in both and never in
///   neither: successive takes add up to exactly the samples recorded.
/// - A [`snapshot`](AtomicHistogram::snapshot) taken while others record may include
///   some of the concurrent samples and not others; each bucket's count is one its
///   bucket really held.
///
/// # Saturation
///
/// Like [`Histogram`], a bucket that reaches `u32::MAX` stays there instead of wrapping
/// to zero (recording uses a compare-and-swap loop, still lock-free). A bucket takes
/// 2^32 - 1 samples to fill: 49 days at 1 000 inferences per second, all in one bucket.
///
/// ```
/// use core::time::Duration;
/// use perch_runtime::histogram::AtomicHistogram;
///
/// static LATENCY: AtomicHistogram = AtomicHistogram::new();
///
/// LATENCY.record(Duration::from_micros(850));
/// LATENCY.record(Duration::from_micros(900));
/// let interval = LATENCY.take();
/// assert_eq!(interval.count(), 2);
/// assert!(LATENCY.snapshot().is_empty());
/// ```
pub struct AtomicHistogram {
    counts: [AtomicU32; BUCKETS],
}

impl AtomicHistogram {
    /// An empty histogram; `const`, so it can be a `static`.
    pub const fn new() -> AtomicHistogram {
        AtomicHistogram {
            counts: [const { AtomicU32::new(0) }; BUCKETS],
        }
    }

    /// Counts one sample, in the bucket [`Histogram::record`] would use. Lock-free and
    /// allocation-free; a full bucket stays at `u32::MAX`.
    pub fn record(&self, latency: Duration) {
        self.record_ns(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Counts one sample given in nanoseconds; a full bucket stays at `u32::MAX`.
    pub fn record_ns(&self, latency_ns: u64) {
        let count = &self.counts[bucket_index(latency_ns)];
        // `Err` means the bucket is full: it stays at u32::MAX, as documented.
        let _ = count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
    }

    /// A copy of the counts, leaving them in place (for cumulative metrics). Samples
    /// recorded concurrently may or may not be included (see [consistency](Self#consistency)).
    pub fn snapshot(&self) -> Histogram {
        let mut counts = [0; BUCKETS];
        for (copy, count) in counts.iter_mut().zip(&self.counts) {
            *copy = count.load(Ordering::Relaxed);
        }
        Histogram::from_counts(counts)
    }

    /// Empties the histogram and returns what it held, swapping each bucket to 0 (for
    /// interval reports). Every recorded sample is returned by exactly one `take` (see
    /// [consistency](Self#consistency)).
    pub fn take(&self) -> Histogram {
        let mut counts = [0; BUCKETS];
        for (taken, count) in counts.iter_mut().zip(&self.counts) {
            *taken = count.swap(0, Ordering::Relaxed);
        }
        Histogram::from_counts(counts)
    }
}

impl Default for AtomicHistogram {
    fn default() -> AtomicHistogram {
        AtomicHistogram::new()
    }
}

impl fmt::Debug for AtomicHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AtomicHistogram")
            .field("counts", self.snapshot().counts())
            .finish()
    }
}

/// The 1-based rank `max(1, ceil(p × total))` for `p` in `[0, 1]`, or `None` if
/// `total` is 0.
///
/// `p × total` is computed in `f64`, where a product that is an integer for the decimal
/// `p` can land just above it (`0.07 × 100` is `7.000000000000001`). A product within a
/// relative 10^-12 of an integer is taken as that integer, so `p = 0.07` of 100 samples
/// is rank 7, not 8.
fn rank(p: f64, total: u64) -> Option<u64> {
    if total == 0 {
        return None;
    }
    // `total as f64` is exact: total is at most 72 × u32::MAX < 2^53.
    let product = p * total as f64;
    // Rounding and ceil without libm: `as` truncates toward zero, and product >= 0.
    let nearest = (product + 0.5) as u64;
    let rank = if (product - nearest as f64).abs() <= product * 1e-12 {
        nearest
    } else {
        product as u64 + 1
    };
    Some(rank.clamp(1, total))
}

impl Serialize for Histogram {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(BUCKETS)?;
        for count in &self.counts {
            tuple.serialize_element(count)?;
        }
        tuple.end()
    }
}

impl<'de> Deserialize<'de> for Histogram {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Histogram, D::Error> {
        deserializer.deserialize_tuple(BUCKETS, CountsVisitor)
    }
}

/// Reads the [`BUCKETS`] counts of a serialized [`Histogram`].
struct CountsVisitor;

impl<'de> Visitor<'de> for CountsVisitor {
    type Value = Histogram;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a tuple of {BUCKETS} bucket counts")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Histogram, A::Error> {
        let mut histogram = Histogram::new();
        for (index, count) in histogram.counts.iter_mut().enumerate() {
            *count = seq
                .next_element()?
                .ok_or_else(|| de::Error::invalid_length(index, &self))?;
        }
        Ok(histogram)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use perch_testkit::SplitMix64;
    use proptest::prelude::*;

    /// Log-uniform between `lo_ns` and `hi_ns`.
    fn log_uniform_ns(u: f64, lo_ns: u64, hi_ns: u64) -> u64 {
        let (lo, hi) = ((lo_ns as f64).ln(), (hi_ns as f64).ln());
        (lo + u * (hi - lo)).exp() as u64
    }

    /// sqrt of the widest bucket ratio, minus one: the documented 12.22 %.
    fn max_relative_error() -> f64 {
        let widest = BOUNDARIES_NS
            .windows(2)
            .map(|pair| pair[1] as f64 / pair[0] as f64)
            .fold(0.0, f64::max);
        widest.sqrt() - 1.0
    }

    fn histogram_of(samples_ns: &[u64]) -> Histogram {
        let mut h = Histogram::new();
        for &ns in samples_ns {
            h.record_ns(ns);
        }
        h
    }

    /// Checks every tested quantile of `samples_ns` against the exact one of the same rank.
    fn assert_quantiles_within_bound(samples_ns: &[u64]) {
        let h = histogram_of(samples_ns);
        let mut sorted = samples_ns.to_vec();
        sorted.sort_unstable();
        let bound = max_relative_error();
        for p in [0.0, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            let rank = rank(p, sorted.len() as u64).unwrap();
            let exact = sorted[rank as usize - 1] as f64;
            let estimate = h.quantile(p).unwrap().as_nanos() as f64;
            let error = (estimate - exact).abs() / exact;
            assert!(
                error <= bound,
                "p{p}: estimate {estimate} ns vs exact {exact} ns, error {error}"
            );
        }
    }

    #[test]
    fn documented_error_bound_is_the_widest_bucket_bound() {
        let bound = max_relative_error();
        assert!(bound > 0.1220 && bound <= 0.1222, "bound is {bound}");
    }

    #[test]
    fn quantiles_of_log_uniform_samples_stay_within_the_error_bound() {
        let mut rng = SplitMix64(0x5EED);
        let samples: Vec<u64> = (0..10_000)
            .map(|_| log_uniform_ns(rng.next_f64(), 2_000, 5_000_000_000))
            .collect();
        assert_quantiles_within_bound(&samples);
    }

    #[test]
    fn bucket_lower_edges_hit_the_error_bound_and_stay_within_it() {
        for &lo in &BOUNDARIES_NS[..BUCKETS - 2] {
            assert_quantiles_within_bound(&[lo]);
        }
    }

    #[test]
    fn boundaries_are_strictly_increasing_from_1_us_to_10_s() {
        assert_eq!(BOUNDARIES_NS[0], 1_000);
        assert_eq!(BOUNDARIES_NS[BUCKETS - 2], 10_000_000_000);
        assert!(BOUNDARIES_NS.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn every_boundary_lands_in_the_bucket_it_opens() {
        for (k, &boundary) in BOUNDARIES_NS.iter().enumerate() {
            assert_eq!(bucket_index(boundary), k + 1);
            assert_eq!(bucket_index(boundary - 1), k);
            assert_eq!(
                Histogram::bucket_bounds(k + 1).0,
                Duration::from_nanos(boundary)
            );
        }
    }

    #[test]
    fn every_power_of_ten_from_1_us_to_10_s_is_a_boundary() {
        for exponent in 3..=10 {
            assert!(BOUNDARIES_NS.contains(&10u64.pow(exponent)));
        }
    }

    #[test]
    fn values_below_1_us_underflow_and_from_10_s_overflow() {
        let mut h = Histogram::new();
        h.record_ns(999);
        h.record(Duration::from_secs(10));
        h.record(Duration::MAX);
        assert_eq!(h.counts()[0], 1);
        assert_eq!(h.counts()[BUCKETS - 1], 2);
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn underflow_reports_1_us_and_overflow_reports_10_s() {
        let mut h = Histogram::new();
        h.record_ns(10);
        assert_eq!(h.quantile(0.5), Some(Duration::from_micros(1)));
        h.clear();
        h.record(Duration::from_secs(3_600));
        assert_eq!(h.quantile(0.5), Some(Duration::from_secs(10)));
    }

    #[test]
    fn bucket_bounds_cover_zero_to_duration_max() {
        assert_eq!(
            Histogram::bucket_bounds(0),
            (Duration::ZERO, Duration::from_micros(1))
        );
        assert_eq!(
            Histogram::bucket_bounds(BUCKETS - 1),
            (Duration::from_secs(10), Duration::MAX)
        );
        for i in 1..BUCKETS {
            assert_eq!(
                Histogram::bucket_bounds(i - 1).1,
                Histogram::bucket_bounds(i).0
            );
        }
    }

    #[test]
    #[should_panic(expected = "bucket index 72")]
    fn bucket_bounds_panics_past_the_last_bucket() {
        Histogram::bucket_bounds(BUCKETS);
    }

    #[test]
    fn empty_histogram_has_no_quantile() {
        let h = Histogram::new();
        assert!(h.is_empty());
        assert_eq!(h.count(), 0);
        assert_eq!(h.quantile(0.5), None);
    }

    #[test]
    fn p_is_clamped_and_nan_has_no_quantile() {
        let h = histogram_of(&[2_000, 3_000_000]);
        assert_eq!(h.quantile(-1.0), h.quantile(0.0));
        assert_eq!(h.quantile(7.0), h.quantile(1.0));
        assert_eq!(h.quantile(f64::NAN), None);
        assert!(h.quantile(0.0) < h.quantile(1.0));
    }

    #[test]
    fn rank_is_the_ceiling_of_p_times_count_and_at_least_one() {
        assert_eq!(rank(0.0, 10), Some(1));
        assert_eq!(rank(0.5, 10), Some(5));
        assert_eq!(rank(0.51, 10), Some(6));
        assert_eq!(rank(0.9, 10_000), Some(9_000));
        assert_eq!(rank(1.0, 10), Some(10));
        assert_eq!(rank(0.5, 0), None);
    }

    #[test]
    fn rank_is_not_pushed_up_by_float_rounding() {
        // In f64, 0.07 × 100 is 7.000000000000001 and 0.55 × 100 is 55.00000000000001.
        assert_eq!(rank(0.07, 100), Some(7));
        assert_eq!(rank(0.55, 100), Some(55));
        assert_eq!(rank(0.999, 1_000_000), Some(999_000));
        assert_eq!(rank(0.070_01, 100), Some(8));
    }

    #[test]
    fn counts_saturate_instead_of_wrapping() {
        let mut full = Histogram::new();
        full.counts[5] = u32::MAX;
        full.record_ns(BOUNDARIES_NS[4]);
        assert_eq!(full.counts()[5], u32::MAX);
        let copy = full.clone();
        full.merge(&copy);
        assert_eq!(full.counts()[5], u32::MAX);
    }

    #[test]
    fn clear_empties_the_histogram() {
        let mut h = histogram_of(&[5_000, 6_000]);
        h.clear();
        assert_eq!(h, Histogram::new());
    }

    #[test]
    fn take_report_chunk_splits_and_merges_back_exactly() {
        let mut pending = Histogram::new();
        pending.counts[3] = 40_000;
        pending.counts[40] = REPORT_BUCKET_LIMIT;
        pending.counts[71] = 7;
        pending.counts[0] = u32::MAX;
        let original = pending.clone();
        assert!(!original.fits_report());

        let mut received = Histogram::new();
        let mut chunks = 0;
        while !pending.is_empty() {
            let chunk = pending.take_report_chunk();
            assert!(chunk.fits_report());
            received.merge(&chunk);
            chunks += 1;
        }
        assert_eq!(received, original);
        assert_eq!(chunks, u32::MAX.div_ceil(REPORT_BUCKET_LIMIT));
    }

    #[test]
    fn a_histogram_within_the_limit_is_one_chunk() {
        let mut pending = histogram_of(&[1_500, 1_500, 20_000_000]);
        let original = pending.clone();
        assert!(original.fits_report());
        assert_eq!(pending.take_report_chunk(), original);
        assert!(pending.is_empty());
    }

    #[test]
    fn serializes_as_72_varints_without_a_length_prefix() {
        let mut h = Histogram::new();
        h.counts[0] = 1;
        h.counts[1] = 300;
        h.counts[71] = REPORT_BUCKET_LIMIT;
        let mut buf = [0; 256];
        let bytes = postcard::to_slice(&h, &mut buf).unwrap();
        let mut expected = vec![0x01, 0xAC, 0x02];
        expected.extend([0x00; 69]);
        expected.extend([0xFF, 0x7F]);
        assert_eq!(bytes, expected.as_slice());
        assert_eq!(postcard::from_bytes::<Histogram>(bytes), Ok(h));
    }

    #[test]
    fn deserializing_too_few_counts_fails() {
        assert!(postcard::from_bytes::<Histogram>(&[0; BUCKETS - 1]).is_err());
    }

    #[test]
    fn atomic_record_uses_the_same_buckets_as_the_plain_histogram() {
        let samples = [0, 999, 1_000, 1_259, 850_000, 10_000_000_000, u64::MAX];
        let atomic = AtomicHistogram::new();
        for &ns in &samples {
            atomic.record_ns(ns);
        }
        atomic.record(Duration::MAX);
        let mut plain = histogram_of(&samples);
        plain.record(Duration::MAX);
        assert_eq!(atomic.snapshot(), plain);
    }

    #[test]
    fn snapshot_copies_and_take_empties() {
        let atomic = AtomicHistogram::new();
        atomic.record(Duration::from_micros(850));
        atomic.record(Duration::from_millis(12));
        let snapshot = atomic.snapshot();
        assert_eq!(snapshot.count(), 2);
        assert_eq!(atomic.snapshot(), snapshot);
        assert_eq!(atomic.take(), snapshot);
        assert!(atomic.snapshot().is_empty());
        assert!(atomic.take().is_empty());
    }

    #[test]
    fn atomic_counts_saturate_instead_of_wrapping() {
        let atomic = AtomicHistogram::new();
        atomic.counts[5].store(u32::MAX - 1, Ordering::Relaxed);
        atomic.record_ns(BOUNDARIES_NS[4]);
        atomic.record_ns(BOUNDARIES_NS[4]);
        assert_eq!(atomic.snapshot().counts()[5], u32::MAX);
    }

    #[test]
    fn concurrent_recording_from_several_threads_sums_exactly() {
        const THREADS: u64 = 8;
        const PER_THREAD: u64 = 50_000;
        let atomic = AtomicHistogram::new();
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let atomic = &atomic;
                scope.spawn(move || {
                    let mut rng = SplitMix64(t);
                    for _ in 0..PER_THREAD {
                        atomic.record_ns(log_uniform_ns(rng.next_f64(), 500, 20_000_000_000));
                    }
                });
            }
        });
        // The same samples recorded one after another, on one thread.
        let mut expected = Histogram::new();
        for t in 0..THREADS {
            let mut rng = SplitMix64(t);
            for _ in 0..PER_THREAD {
                expected.record_ns(log_uniform_ns(rng.next_f64(), 500, 20_000_000_000));
            }
        }
        assert_eq!(atomic.snapshot(), expected);
        assert_eq!(expected.count(), THREADS * PER_THREAD);
    }

    #[test]
    fn takes_during_concurrent_recording_lose_and_repeat_nothing() {
        const THREADS: u64 = 4;
        const PER_THREAD: u64 = 100_000;
        let atomic = AtomicHistogram::new();
        let done = std::sync::atomic::AtomicUsize::new(0);
        let mut taken = Histogram::new();
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let (atomic, done) = (&atomic, &done);
                scope.spawn(move || {
                    for n in 0..PER_THREAD {
                        atomic.record_ns(1_000 * (1 + (n + t) % 5_000));
                    }
                    done.fetch_add(1, Ordering::Release);
                });
            }
            // Take at least once, and on until every recorder is done.
            loop {
                let finished = done.load(Ordering::Acquire) == THREADS as usize;
                taken.merge(&atomic.take());
                if finished {
                    break;
                }
            }
        });
        assert_eq!(taken.count(), THREADS * PER_THREAD);
        let mut expected = Histogram::new();
        for t in 0..THREADS {
            for n in 0..PER_THREAD {
                expected.record_ns(1_000 * (1 + (n + t) % 5_000));
            }
        }
        assert_eq!(taken, expected);
    }

    #[test]
    fn an_atomic_histogram_can_be_a_static() {
        static LATENCIES: AtomicHistogram = AtomicHistogram::new();
        LATENCIES.record(Duration::from_micros(3));
        assert_eq!(LATENCIES.take().count(), 1);
        assert!(format!("{LATENCIES:?}").starts_with("AtomicHistogram"));
    }

    proptest! {
        #[test]
        fn quantiles_of_random_samples_stay_within_the_error_bound(
            samples in prop::collection::vec(1_000u64..10_000_000_000, 1..2_000),
        ) {
            assert_quantiles_within_bound(&samples);
        }

        #[test]
        fn quantiles_of_random_log_uniform_samples_stay_within_the_error_bound(
            seed in any::<u64>(),
            len in 1usize..2_000,
        ) {
            let mut rng = SplitMix64(seed);
            let samples: Vec<u64> = (0..len)
                .map(|_| log_uniform_ns(rng.next_f64(), 2_000, 5_000_000_000))
                .collect();
            assert_quantiles_within_bound(&samples);
        }

        #[test]
        fn merging_equals_recording_the_concatenated_samples(
            a in prop::collection::vec(any::<u64>(), 0..500),
            b in prop::collection::vec(0u64..20_000_000_000, 0..500),
        ) {
            let mut merged = histogram_of(&a);
            merged.merge(&histogram_of(&b));
            let all: Vec<u64> = a.iter().chain(&b).copied().collect();
            prop_assert_eq!(merged, histogram_of(&all));
        }

        #[test]
        fn every_value_lands_inside_its_bucket_bounds(ns in any::<u64>()) {
            let (lo, hi) = Histogram::bucket_bounds(bucket_index(ns));
            let value = Duration::from_nanos(ns);
            prop_assert!(lo <= value && value < hi);
        }

        #[test]
        fn serde_round_trip_preserves_every_count(
            counts in prop::array::uniform32(any::<u32>()),
            start in 0usize..=BUCKETS - 32,
        ) {
            let mut h = Histogram::new();
            h.counts[start..start + 32].copy_from_slice(&counts);
            let mut buf = [0; BUCKETS * 5];
            let bytes = postcard::to_slice(&h, &mut buf).unwrap();
            prop_assert_eq!(postcard::from_bytes::<Histogram>(bytes), Ok(h));
        }
    }
}
