//! A simulated ADXL345 at the register level, behind the same embedded-hal 1.0 [`I2c`]
//! trait as a real bus, so the driver, the pipeline and the agent run unchanged
//! without hardware.
//!
//! It answers at one address (others get a NACK, as on a real bus), holds the
//! registers the driver writes, reports FIFO entries and serves samples of a synthetic
//! vibration from the data registers (a burst read from DATAX0 pops one sample).
//!
//! The signal, per axis in g, at sample `k` of a device sampling at `rate` (t = k/rate):
//!
//! - normal: gravity (1 g on z), a 50 Hz machine hum (0.2 g on z, 0.1 g on x) with its
//!   100 Hz harmonic (0.05 g on z), and white noise of 0.01 g per axis;
//! - anomalous, from sample `anomaly_from` on: a bearing fault added on z, impacts 37
//!   times a second (an outer-race defect frequency), each ringing a 250 Hz structural
//!   resonance that starts at 0.7 g and decays with a 6 ms time constant: energy spread
//!   over roughly 200–300 Hz in lines 37 Hz apart.
//!
//! The values are rounded to LSBs of 3.9 mg and clamped to the configured range, as the
//! device does in full-resolution mode. The noise comes from a seeded generator, so the
//! signal of a given seed is the same on every run. Rates below 800 Hz alias the
//! resonance (it still changes the spectrum, elsewhere).
//!
//! Time: with [`Clock::Free`] the FIFO is always full and every read returns the next
//! sample, so tests run as fast as the code does and never depend on the wall clock;
//! with [`Clock::RealTime`] samples become available at the configured rate since the
//! device started measuring, and a reader that falls more than 32 samples behind loses
//! the oldest, as with the real FIFO in stream mode.

use std::f32::consts::TAU;
use std::time::Instant;

use embedded_hal::i2c::{ErrorKind, ErrorType, I2c, NoAcknowledgeSource, Operation};

use super::adxl345::{reg, Rate, DEVICE_ID, FIFO_DEPTH, G_PER_LSB};

/// Frequency of the machine hum, in Hz.
pub const HUM_HZ: f32 = 50.0;
/// White noise per axis, in g.
pub const NOISE_G: f32 = 0.01;
/// Impacts per second of the anomalous signal's bearing fault (an outer-race defect
/// frequency).
pub const FAULT_IMPACT_HZ: f32 = 37.0;
/// The structural resonance each impact rings, in Hz.
pub const FAULT_RESONANCE_HZ: f32 = 250.0;
/// Time constant of the ringing's decay, in seconds.
pub const FAULT_DECAY_S: f32 = 0.006;
/// Peak acceleration of an impact, in g.
pub const FAULT_PEAK_G: f32 = 0.7;

/// When samples become available.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// Always: the FIFO reports 32 entries and each read is the next sample.
    Free,
    /// At the configured rate from the moment measuring starts.
    RealTime,
}

/// The simulated device's only error: nothing acknowledges the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nack;

impl embedded_hal::i2c::Error for Nack {
    fn kind(&self) -> ErrorKind {
        ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address)
    }
}

/// A simulated ADXL345 (see the [module docs](self)).
#[derive(Debug)]
pub struct SimulatedAdxl345 {
    address: u8,
    registers: [u8; 64],
    pointer: u8,
    clock: Clock,
    measuring_since: Option<Instant>,
    /// Samples produced so far (the index of the next one).
    produced: u64,
    anomaly_from: Option<u64>,
    rng: SplitMix64,
    /// Samples lost because the reader fell behind (real-time clock only).
    lost: u64,
}

impl SimulatedAdxl345 {
    /// A device at `address` whose noise is drawn from `seed`, normal until sample
    /// `anomaly_from` (never, for `None`) and anomalous from it on.
    pub fn new(address: u8, seed: u64, anomaly_from: Option<u64>, clock: Clock) -> Self {
        let mut registers = [0u8; 64];
        registers[usize::from(reg::DEVID)] = DEVICE_ID;
        registers[usize::from(reg::BW_RATE)] = Rate::Hz100.code();
        SimulatedAdxl345 {
            address,
            registers,
            pointer: 0,
            clock,
            measuring_since: None,
            produced: 0,
            anomaly_from,
            rng: SplitMix64(seed),
            lost: 0,
        }
    }

    /// The sample index at which the signal turns anomalous, for `anomaly_after_s`
    /// seconds of sampling at `rate_hz`.
    pub fn anomaly_index(anomaly_after_s: f64, rate_hz: u32) -> u64 {
        (anomaly_after_s * f64::from(rate_hz)).round() as u64
    }

    /// Samples produced so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// Samples lost because the reader fell more than 32 behind.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// The value of register `address` (what the driver wrote, for tests).
    pub fn register(&self, address: u8) -> u8 {
        self.registers[usize::from(address & 0x3F)]
    }

    fn rate_hz(&self) -> u32 {
        Rate::from_code(self.registers[usize::from(reg::BW_RATE)]).map_or(100, Rate::hz)
    }

    fn measuring(&self) -> bool {
        self.registers[usize::from(reg::POWER_CTL)] & reg::MEASURE != 0
    }

    /// Samples waiting, after dropping those a stream-mode FIFO would have overwritten.
    fn fifo_entries(&mut self) -> u64 {
        if !self.measuring() {
            return 0;
        }
        match (self.clock, self.measuring_since) {
            (Clock::Free, _) => FIFO_DEPTH as u64,
            (Clock::RealTime, Some(since)) => {
                let due = (since.elapsed().as_secs_f64() * f64::from(self.rate_hz())) as u64;
                let waiting = due.saturating_sub(self.produced);
                if waiting > FIFO_DEPTH as u64 {
                    let skip = waiting - FIFO_DEPTH as u64;
                    // The skipped samples still advance the signal's time.
                    for _ in 0..skip {
                        self.next_sample();
                    }
                    self.lost += skip;
                }
                waiting.min(FIFO_DEPTH as u64)
            }
            (Clock::RealTime, None) => 0,
        }
    }

    /// Produces the next sample, in LSBs per axis.
    fn next_sample(&mut self) -> [i16; 3] {
        let k = self.produced;
        self.produced += 1;
        let t = (k as f64 / f64::from(self.rate_hz())) as f32;
        let anomalous = self.anomaly_from.is_some_and(|from| k >= from);
        let noise = NOISE_G;
        let hum = (TAU * HUM_HZ * t).sin();
        let harmonic = (TAU * 2.0 * HUM_HZ * t).sin();
        let fault = if anomalous {
            // Time since the latest impact, which rings the resonance down.
            let since = t % (1.0 / FAULT_IMPACT_HZ);
            FAULT_PEAK_G * (-since / FAULT_DECAY_S).exp() * (TAU * FAULT_RESONANCE_HZ * since).sin()
        } else {
            0.0
        };
        let g = [
            0.1 * hum + fault + noise * self.rng.gaussian(),
            noise * self.rng.gaussian(),
            1.0 + 0.2 * hum + 0.05 * harmonic + fault + noise * self.rng.gaussian(),
        ];
        let range_g = f32::from(2u8 << (self.registers[usize::from(reg::DATA_FORMAT)] & 0x03));
        let limit = range_g / G_PER_LSB;
        g.map(|v| (v / G_PER_LSB).round().clamp(-limit, limit - 1.0) as i16)
    }

    fn read_register(&mut self, address: u8) -> u8 {
        match address {
            reg::FIFO_STATUS => self.fifo_entries() as u8,
            a => self.registers[usize::from(a & 0x3F)],
        }
    }

    fn write_register(&mut self, address: u8, value: u8) {
        let index = usize::from(address & 0x3F);
        if address == reg::DEVID
            || address == reg::FIFO_STATUS
            || (reg::DATAX0..reg::DATAX0 + 6).contains(&address)
        {
            return; // read-only
        }
        if address == reg::POWER_CTL && value & reg::MEASURE != 0 && !self.measuring() {
            self.measuring_since = Some(Instant::now());
        }
        self.registers[index] = value;
    }
}

impl ErrorType for SimulatedAdxl345 {
    type Error = Nack;
}

impl I2c for SimulatedAdxl345 {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        if address != self.address {
            return Err(Nack);
        }
        for operation in operations {
            match operation {
                Operation::Write(bytes) => {
                    if let Some((&pointer, values)) = bytes.split_first() {
                        self.pointer = pointer;
                        for &value in values {
                            self.write_register(self.pointer, value);
                            self.pointer = self.pointer.wrapping_add(1);
                        }
                    }
                }
                Operation::Read(buffer) => {
                    if self.pointer == reg::DATAX0 && self.measuring() {
                        // A burst read from DATAX0 pops the oldest FIFO entry, or
                        // re-reads the latest sample when the FIFO is empty.
                        if self.fifo_entries() > 0 {
                            let sample = self.next_sample();
                            for (i, axis) in sample.iter().enumerate() {
                                let [lo, hi] = axis.to_le_bytes();
                                let at = usize::from(reg::DATAX0) + 2 * i;
                                self.registers[at] = lo;
                                self.registers[at + 1] = hi;
                            }
                        }
                    }
                    for byte in buffer.iter_mut() {
                        *byte = self.read_register(self.pointer);
                        self.pointer = self.pointer.wrapping_add(1);
                    }
                }
            }
        }
        Ok(())
    }
}

/// SplitMix64: small, seedable, good enough for noise.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 1.0) / (1u64 << 24) as f32
    }

    /// Standard normal (Box–Muller).
    fn gaussian(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (TAU * v).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::adxl345::{Adxl345, Error, Range, ADDRESS_ALT_LOW};
    use crate::sensor::features::{log_spectrogram, BINS, FEATURES, WINDOW_SAMPLES};

    const A: u8 = ADDRESS_ALT_LOW;

    fn configured(seed: u64, anomaly_from: Option<u64>) -> Adxl345<SimulatedAdxl345> {
        let sim = SimulatedAdxl345::new(A, seed, anomaly_from, Clock::Free);
        let mut adxl = Adxl345::probe(sim, A).unwrap();
        adxl.configure(Rate::Hz800, Range::G2).unwrap();
        adxl
    }

    #[test]
    fn the_driver_configures_the_simulated_device_through_its_registers() {
        let adxl = configured(1, None);
        let sim = adxl.release();
        assert_eq!(sim.register(reg::BW_RATE), 0x0D);
        assert_eq!(sim.register(reg::DATA_FORMAT), 0x08);
        assert_eq!(sim.register(reg::FIFO_CTL), 0x80);
        assert_eq!(sim.register(reg::POWER_CTL), 0x08);
    }

    #[test]
    fn the_simulated_device_does_not_answer_at_another_address() {
        let sim = SimulatedAdxl345::new(A, 1, None, Clock::Free);
        let err = Adxl345::probe(sim, 0x1D).unwrap_err();
        assert!(matches!(err, Error::Bus(Nack)), "{err:?}");
    }

    #[test]
    fn simulated_samples_carry_gravity_on_z_and_the_same_seed_gives_the_same_signal() {
        let (mut a, mut b) = (configured(5, None), configured(5, None));
        assert_eq!(a.fifo_len().unwrap(), FIFO_DEPTH);
        let mut z_sum = 0i64;
        for _ in 0..800 {
            let sample = a.read_sample().unwrap();
            assert_eq!(sample, b.read_sample().unwrap());
            z_sum += i64::from(sample.z);
        }
        let z_mean_g = z_sum as f32 / 800.0 * G_PER_LSB;
        assert!((z_mean_g - 1.0).abs() < 0.01, "{z_mean_g}");
        assert_ne!(
            configured(6, None).read_sample().unwrap(),
            configured(5, None).read_sample().unwrap()
        );
    }

    /// The mean log magnitude of each bin over `windows` windows.
    fn mean_spectrum(adxl: &mut Adxl345<SimulatedAdxl345>, windows: usize) -> [f32; BINS] {
        let mut mean = [0f32; BINS];
        let mut window = [0f32; WINDOW_SAMPLES];
        let mut features = [0f32; FEATURES];
        for _ in 0..windows {
            for s in window.iter_mut() {
                *s = adxl.read_sample().unwrap().magnitude_g();
            }
            log_spectrogram(&window, &mut features);
            for frame in features.chunks_exact(BINS) {
                for (m, v) in mean.iter_mut().zip(frame) {
                    *m += v / (windows * 5) as f32;
                }
            }
        }
        mean
    }

    #[test]
    fn the_bearing_fault_raises_the_spectrum_around_its_resonance_and_leaves_the_hum() {
        let mut adxl = configured(9, Some(4 * WINDOW_SAMPLES as u64));
        let normal = mean_spectrum(&mut adxl, 4);
        let anomalous = mean_spectrum(&mut adxl, 4);
        // 800 Hz / 256 = 3.125 Hz per bin (feature index = bin - 1): the hum at bin 16;
        // the impacts' lines nearest the 250 Hz resonance, 6 × 37 = 222 Hz and 7 × 37 =
        // 259 Hz, at bins 71 and 83.
        let hum = 16 - 1;
        let rise = |k: usize| anomalous[k] - normal[k];
        for line in [71 - 1, 83 - 1] {
            assert!(normal[hum] - normal[line] > 3.0, "the hum stands out");
            assert!(rise(line) > 3.0, "bin {}: {}", line + 1, rise(line));
        }
        let band = (70 - 1..96 - 1).map(rise).sum::<f32>() / 26.0;
        assert!(band > 1.5, "across 220-300 Hz: {band}");
        assert!(rise(hum).abs() < 0.2, "the hum is unchanged: {}", rise(hum));
    }
}
