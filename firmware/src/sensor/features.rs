//! From samples to R3's 640 features: the ring buffer, the spectrogram and its
//! standardization. Nothing here allocates.
//!
//! A window is [`WINDOW_SAMPLES`] = 768 consecutive vibration magnitudes, cut into
//! [`FRAMES`] = 5 frames of [`FRAME`] = 256 samples with a hop of 128 (50 % overlap).
//! Each frame has its mean removed (gravity and slow drift), is multiplied by a Hann
//! window and goes through a 256-point real FFT; its 128 features are
//! `ln(|X_k| + 1e-6)` for k = 1..=128 (bin 0, the removed mean, is left out; bin 128 is
//! the Nyquist frequency). The 5 frames' features, frame after frame, are the window's
//! 640 features. Bin k is at k × rate / 256 Hz: 3.125 Hz per bin at 800 Hz.
//!
//! Before the model sees them, each of the 128 bins is standardized with the mean and
//! standard deviation of that bin over every frame of the first windows
//! ([`FeatureStats`] → [`Standardizer`]), so normal vibration gives features near
//! N(0, 1), the distribution R3's batch-norm statistics were calibrated on.

use core::f32::consts::PI;

use heapless::Deque;

/// Samples per FFT frame.
pub const FRAME: usize = 256;
/// Samples between the starts of two frames.
pub const HOP: usize = 128;
/// Frames per window.
pub const FRAMES: usize = 5;
/// Features per frame: FFT bins 1 to 128.
pub const BINS: usize = FRAME / 2;
/// Features per window, R3's input size.
pub const FEATURES: usize = FRAMES * BINS;
/// Samples per window: 768.
pub const WINDOW_SAMPLES: usize = FRAME + (FRAMES - 1) * HOP;
/// Samples the agent's ring buffer holds: two windows and change, so one window can be
/// processed while the next fills.
pub const RING_CAPACITY: usize = 2048;
/// The smallest standard deviation a bin is divided by, in log units.
pub const MIN_STD: f32 = 1e-3;

/// A fixed-capacity FIFO of samples that keeps the newest: pushing into a full ring
/// drops the oldest sample (and counts it), so a slow consumer loses old data, never
/// the current signal.
#[derive(Debug, Default)]
pub struct SampleRing<const N: usize> {
    samples: Deque<f32, N>,
    dropped: u64,
}

impl<const N: usize> SampleRing<N> {
    /// An empty ring.
    pub const fn new() -> Self {
        SampleRing {
            samples: Deque::new(),
            dropped: 0,
        }
    }

    /// Appends `sample`; when the ring is full, drops the oldest sample and returns it.
    pub fn push(&mut self, sample: f32) -> Option<f32> {
        match self.samples.push_back(sample) {
            Ok(()) => None,
            Err(sample) => {
                let oldest = self.samples.pop_front();
                self.dropped += 1;
                // There is room now: one was just removed.
                let _ = self.samples.push_back(sample);
                oldest
            }
        }
    }

    /// Moves the oldest `out.len()` samples into `out` and returns true, or leaves the
    /// ring as it is and returns false when it holds fewer.
    pub fn take_into(&mut self, out: &mut [f32]) -> bool {
        if self.samples.len() < out.len() {
            return false;
        }
        for slot in out.iter_mut() {
            *slot = self.samples.pop_front().unwrap_or_default();
        }
        true
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether the ring is empty.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Forgets every sample (after a gap in the signal).
    pub fn clear(&mut self) {
        self.samples.clear();
    }

    /// Samples dropped because the ring was full, since it was made.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Computes the 640 log-magnitude features of a window (see the [module docs](self)).
pub fn log_spectrogram(window: &[f32; WINDOW_SAMPLES], out: &mut [f32; FEATURES]) {
    let mut frame = [0f32; FRAME];
    for f in 0..FRAMES {
        let samples = &window[f * HOP..f * HOP + FRAME];
        let mean = samples.iter().sum::<f32>() / FRAME as f32;
        for (i, (slot, &s)) in frame.iter_mut().zip(samples).enumerate() {
            let hann = 0.5 - 0.5 * (2.0 * PI * i as f32 / FRAME as f32).cos();
            *slot = (s - mean) * hann;
        }
        let spectrum = microfft::real::rfft_256(&mut frame);
        let row = &mut out[f * BINS..(f + 1) * BINS];
        for k in 1..BINS {
            let c = spectrum[k];
            row[k - 1] = ((c.re * c.re + c.im * c.im).sqrt() + 1e-6).ln();
        }
        // microfft packs the real Nyquist coefficient into bin 0's imaginary part.
        row[BINS - 1] = (spectrum[0].im.abs() + 1e-6).ln();
    }
}

/// Running mean and variance of each of the 128 bins over frames (Welford), to learn
/// the standardization from the first windows.
#[derive(Debug, Clone)]
pub struct FeatureStats {
    frames: u64,
    mean: [f64; BINS],
    m2: [f64; BINS],
}

impl Default for FeatureStats {
    fn default() -> Self {
        FeatureStats::new()
    }
}

impl FeatureStats {
    /// No frames seen.
    pub const fn new() -> Self {
        FeatureStats {
            frames: 0,
            mean: [0.0; BINS],
            m2: [0.0; BINS],
        }
    }

    /// Adds the 5 frames of a window's features.
    pub fn add(&mut self, features: &[f32; FEATURES]) {
        for frame in features.chunks_exact(BINS) {
            self.frames += 1;
            let n = self.frames as f64;
            for (k, &v) in frame.iter().enumerate() {
                let v = f64::from(v);
                let delta = v - self.mean[k];
                self.mean[k] += delta / n;
                self.m2[k] += delta * (v - self.mean[k]);
            }
        }
    }

    /// Frames seen.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// The standardization these statistics give (population standard deviation,
    /// at least [`MIN_STD`]).
    pub fn standardizer(&self) -> Standardizer {
        let mut s = Standardizer {
            mean: [0.0; BINS],
            inv_std: [1.0; BINS],
        };
        if self.frames == 0 {
            return s;
        }
        for k in 0..BINS {
            let std = (self.m2[k] / self.frames as f64).sqrt() as f32;
            s.mean[k] = self.mean[k] as f32;
            s.inv_std[k] = 1.0 / std.max(MIN_STD);
        }
        s
    }
}

/// Per-bin standardization, `(v − mean[k]) / std[k]`, the same for the 5 frames.
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    mean: [f32; BINS],
    inv_std: [f32; BINS],
}

impl Standardizer {
    /// Standardizes a window's features in place.
    pub fn apply(&self, features: &mut [f32; FEATURES]) {
        for frame in features.chunks_exact_mut(BINS) {
            for (k, v) in frame.iter_mut().enumerate() {
                *v = (*v - self.mean[k]) * self.inv_std[k];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_ring_drops_the_oldest_sample_and_counts_it() {
        let mut ring = SampleRing::<4>::new();
        for v in 0..4 {
            assert_eq!(ring.push(v as f32), None);
        }
        assert_eq!(ring.push(4.0), Some(0.0));
        assert_eq!(ring.dropped(), 1);
        let mut out = [0f32; 4];
        assert!(ring.take_into(&mut out));
        assert_eq!(out, [1.0, 2.0, 3.0, 4.0]);
        assert!(ring.is_empty());
    }

    #[test]
    fn a_window_is_taken_only_when_enough_samples_wait_and_in_order() {
        let mut ring = SampleRing::<RING_CAPACITY>::new();
        let mut window = [0f32; WINDOW_SAMPLES];
        for v in 0..WINDOW_SAMPLES - 1 {
            ring.push(v as f32);
        }
        assert!(!ring.take_into(&mut window));
        assert_eq!(ring.len(), WINDOW_SAMPLES - 1);
        ring.push((WINDOW_SAMPLES - 1) as f32);
        ring.push(-1.0);
        assert!(ring.take_into(&mut window));
        assert!(window.iter().enumerate().all(|(i, &v)| v == i as f32));
        assert_eq!(
            ring.len(),
            1,
            "the sample after the window stays for the next"
        );
    }

    #[test]
    fn a_pure_tone_peaks_in_its_bin_in_every_frame() {
        // 50 Hz sampled at 800 Hz: bin 50 / (800 / 256) = 16, feature index 15.
        let mut window = [0f32; WINDOW_SAMPLES];
        for (i, s) in window.iter_mut().enumerate() {
            *s = 1.0 + 0.2 * (2.0 * PI * 50.0 * i as f32 / 800.0).sin();
        }
        let mut features = [0f32; FEATURES];
        log_spectrogram(&window, &mut features);
        for frame in features.chunks_exact(BINS) {
            let peak = frame
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(k, _)| k);
            assert_eq!(peak, Some(15));
            // The Hann window's main lobe: neighbours are within ln(2) of the peak,
            // bins far away are far below it (gravity, the mean, is removed).
            assert!(frame[15] - frame[14] < 0.7);
            assert!(
                frame[15] - frame[60] > 8.0,
                "{} vs {}",
                frame[15],
                frame[60]
            );
        }
    }

    #[test]
    fn standardized_features_of_the_learned_windows_have_zero_mean_and_unit_variance() {
        let mut stats = FeatureStats::new();
        let mut windows = Vec::new();
        for w in 0..4 {
            let mut features = [0f32; FEATURES];
            for (i, v) in features.iter_mut().enumerate() {
                *v = ((i * 7 + w * 13) % 11) as f32 + (i % BINS) as f32;
            }
            stats.add(&features);
            windows.push(features);
        }
        assert_eq!(stats.frames(), 4 * FRAMES as u64);
        let standardizer = stats.standardizer();
        let (mut sum, mut sum_sq) = ([0f64; BINS], [0f64; BINS]);
        for mut features in windows {
            standardizer.apply(&mut features);
            for frame in features.chunks_exact(BINS) {
                for (k, &v) in frame.iter().enumerate() {
                    sum[k] += f64::from(v);
                    sum_sq[k] += f64::from(v) * f64::from(v);
                }
            }
        }
        let n = (4 * FRAMES) as f64;
        for k in 0..BINS {
            assert!((sum[k] / n).abs() < 1e-4, "bin {k} mean {}", sum[k] / n);
            assert!((sum_sq[k] / n - 1.0).abs() < 1e-3, "bin {k} variance");
        }
    }
}
