//! `[sensor]`: the accelerometer input ([`crate::sensor`]).

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::args::Args;
use super::origin::{ConfigError, Setting, Source};
use super::values::{HumanDuration, SensorFlag};
use crate::sensor::adxl345::{Range, Rate, ADDRESS_ALT_LOW};
use crate::sensor::detector::DetectorConfig;
use crate::sensor::{SensorConfig, SensorSource};

/// The `[sensor]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SensorFile {
    source: Option<Spanned<String>>,
    i2c_bus: Option<Spanned<PathBuf>>,
    address: Option<Spanned<u8>>,
    rate_hz: Option<Spanned<u32>>,
    range_g: Option<Spanned<u8>>,
    calibration_windows: Option<Spanned<u32>>,
    threshold_sigmas: Option<Spanned<f32>>,
    seed: Option<Spanned<u64>>,
    anomaly_after: Option<Spanned<HumanDuration>>,
}

/// The sensor settings: flags over the `[sensor]` section; `None` when neither asks
/// for a sensor (or `--sensor off`).
///
/// # Errors
///
/// No or an unknown source, a rate or range the ADXL345 lacks, an address over 7 bits,
/// no calibration windows, a negative threshold.
pub(super) fn resolve(
    args: &Args,
    file: Option<SensorFile>,
    source: &Source<'_>,
) -> Result<Option<SensorConfig>, ConfigError> {
    let in_file = file.is_some();
    let file = file.unwrap_or_default();
    let simulated = || SensorSource::Simulated {
        seed: file.seed.as_ref().map_or(1, |s| *s.get_ref()),
        anomaly_after: args
            .sensor_anomaly_after
            .or(file.anomaly_after.as_ref().map(|d| *d.get_ref()))
            .map(|d| d.0),
    };
    let written = file
        .source
        .clone()
        .map(|s| Setting::from_file("sensor.source", s));
    let from = match &args.sensor {
        Some(SensorFlag::Off) => return Ok(None),
        Some(SensorFlag::Simulated) => simulated(),
        Some(SensorFlag::I2c(bus)) => SensorSource::I2c { bus: bus.clone() },
        None if !in_file => return Ok(None),
        None => match &written {
            Some(s) if s.value == "simulated" => simulated(),
            Some(s) if s.value == "i2c" => SensorSource::I2c {
                bus: file
                    .i2c_bus
                    .as_ref()
                    .map_or_else(|| PathBuf::from("/dev/i2c-1"), |b| b.get_ref().clone()),
            },
            Some(other) => {
                return Err(source.invalid(
                    other,
                    format!("{:?}: expected \"simulated\" or \"i2c\"", other.value),
                ))
            }
            None => {
                let missing = Setting::file_or("sensor.source", None, String::new());
                return Err(source.invalid(
                    &missing,
                    "say where the samples come from: \"simulated\" or \"i2c\"",
                ));
            }
        },
    };
    let rate_hz = Setting::pick_or(
        ("--sensor-rate", args.sensor_rate),
        ("sensor.rate_hz", file.rate_hz),
        800,
    );
    let rate = Rate::from_hz(rate_hz.value).ok_or_else(|| {
        source.invalid(
            &rate_hz,
            format!(
                "{} Hz is not an ADXL345 rate: 25, 50, 100, 200, 400, 800, 1600 or 3200",
                rate_hz.value
            ),
        )
    })?;
    let range_g = Setting::file_or("sensor.range_g", file.range_g, 2);
    let range = Range::from_g(range_g.value).ok_or_else(|| {
        source.invalid(
            &range_g,
            format!(
                "±{} g is not an ADXL345 range: 2, 4, 8 or 16",
                range_g.value
            ),
        )
    })?;
    let address = Setting::file_or("sensor.address", file.address, ADDRESS_ALT_LOW);
    if address.value > 0x7F {
        return Err(source.invalid(
            &address,
            format!("{:#04x} is not a 7-bit I2C address", address.value),
        ));
    }
    let defaults = DetectorConfig::default();
    let calibration_windows = Setting::pick_or(
        (
            "--sensor-calibration-windows",
            args.sensor_calibration_windows,
        ),
        ("sensor.calibration_windows", file.calibration_windows),
        defaults.calibration_windows,
    );
    if calibration_windows.value == 0 {
        return Err(source.invalid(&calibration_windows, "must be at least 1"));
    }
    let threshold_sigmas = Setting::file_or(
        "sensor.threshold_sigmas",
        file.threshold_sigmas,
        defaults.threshold_sigmas,
    );
    let sigmas = threshold_sigmas.value;
    if !(sigmas.is_finite() && sigmas >= 0.0) {
        return Err(source.invalid(
            &threshold_sigmas,
            format!("{sigmas} is not a number of standard deviations ≥ 0"),
        ));
    }
    Ok(Some(SensorConfig {
        source: from,
        address: address.value,
        rate,
        range,
        detector: DetectorConfig {
            calibration_windows: calibration_windows.value,
            threshold_sigmas: sigmas,
        },
    }))
}
