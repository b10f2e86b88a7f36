//! The sensor's settings, as the `[sensor]` section and the `--sensor` flags resolve
//! them ([`crate::config`]).

use std::path::PathBuf;
use std::time::Duration;

use super::adxl345::{Range, Rate};
use super::detector::DetectorConfig;

/// The accelerometer input (`[sensor]`, `--sensor`): an ADXL345 whose vibration
/// windows go through the served model (see [`crate::sensor`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SensorConfig {
    /// Where the samples come from.
    pub source: SensorSource,
    /// The device's 7-bit I2C address.
    pub address: u8,
    /// Output data rate, one the ADXL345 has.
    pub rate: Rate,
    /// Measurement range.
    pub range: Range,
    /// Calibration of the detector.
    pub detector: DetectorConfig,
}

/// Where the sensor's samples come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SensorSource {
    /// The simulated ADXL345 ([`crate::sensor::sim`]), sampling in real time.
    Simulated {
        /// Seed of its noise.
        seed: u64,
        /// Sampling time after which the signal turns anomalous; never when `None`.
        anomaly_after: Option<Duration>,
    },
    /// A real ADXL345 on a Linux I2C bus (feature `linux-sensor`).
    I2c {
        /// The bus device, `/dev/i2c-1`.
        bus: PathBuf,
    },
}
