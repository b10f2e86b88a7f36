//! Durations and sizes as people write them in flags and configuration files.
//!
//! One parser for both `perchd`'s settings and `perch`'s flags, so `10s` and `64KiB`
//! mean the same everywhere:
//!
//! - a duration is a number (decimals allowed) and a unit: `ms`, `s`, `m` (or `min`),
//!   `h`. The unit is required: a bare `10` is refused rather than guessed.
//! - a size is a whole number of bytes, or one with a unit: `B`, `KiB`, `MiB`, `GiB`
//!   (powers of two) or `kB`, `MB`, `GB` (powers of ten), in any letter case.
//!
//! ```
//! use core::time::Duration;
//! use perch_runtime::units::{parse_duration, parse_size};
//!
//! assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
//! assert_eq!(parse_size("64KiB"), Ok(65_536));
//! assert!(parse_duration("10").is_err());
//! ```

use core::fmt;
use core::time::Duration;

/// Why a duration or size was refused; callers put the text in front of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnitError {
    /// A duration without a known unit.
    DurationUnit,
    /// A size with an unknown unit.
    SizeUnit,
    /// The number part is not a number (a size must be whole).
    NotANumber,
    /// The value does not fit.
    OutOfRange,
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnitError::DurationUnit => "expected a number with a unit: ms, s, m or h (e.g. 10s)",
            UnitError::SizeUnit => "unknown unit; use B, KiB, MiB, GiB, kB, MB or GB",
            UnitError::NotANumber => "expected a number, then its unit (e.g. 10s, 64KiB)",
            UnitError::OutOfRange => "out of range",
        })
    }
}

impl core::error::Error for UnitError {}

/// Parses a duration: `250ms`, `10s`, `1.5m`, `2h`.
///
/// # Errors
///
/// No unit or an unknown one, a number that does not parse, a negative or too large
/// value.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let (number, unit) = split_number(text, true);
    let seconds = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(UnitError::DurationUnit),
    };
    let value: f64 = number.parse().map_err(|_| UnitError::NotANumber)?;
    Duration::try_from_secs_f64(value * seconds).map_err(|_| UnitError::OutOfRange)
}

/// Parses a size in bytes: `1500`, `64KiB`, `4 MiB`, `1GB`.
///
/// # Errors
///
/// An unknown unit, a number that is not whole, a value over `u64::MAX` bytes.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let (number, unit) = split_number(text, false);
    let factor: u64 = if unit.is_empty() || unit.eq_ignore_ascii_case("b") {
        1
    } else if unit.eq_ignore_ascii_case("kib") {
        1 << 10
    } else if unit.eq_ignore_ascii_case("mib") {
        1 << 20
    } else if unit.eq_ignore_ascii_case("gib") {
        1 << 30
    } else if unit.eq_ignore_ascii_case("kb") {
        1_000
    } else if unit.eq_ignore_ascii_case("mb") {
        1_000_000
    } else if unit.eq_ignore_ascii_case("gb") {
        1_000_000_000
    } else {
        return Err(UnitError::SizeUnit);
    };
    let value: u64 = number.parse().map_err(|_| UnitError::NotANumber)?;
    value.checked_mul(factor).ok_or(UnitError::OutOfRange)
}

/// `text` trimmed and split before its first character that is not a digit (or a
/// `.`, when `decimals`); the unit trimmed too.
fn split_number(text: &str, decimals: bool) -> (&str, &str) {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || (decimals && c == '.')))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    (number, unit.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_number_and_a_unit() {
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration(" 1.5 s "), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2min"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("10"), Err(UnitError::DurationUnit));
        assert_eq!(parse_duration("10 parsecs"), Err(UnitError::DurationUnit));
        assert_eq!(parse_duration("s"), Err(UnitError::NotANumber));
        assert_eq!(parse_duration("1.2.3s"), Err(UnitError::NotANumber));
        assert_eq!(
            parse_duration("99999999999999999999999h"),
            Err(UnitError::OutOfRange)
        );
    }

    #[test]
    fn sizes_are_whole_bytes_with_binary_or_decimal_units() {
        assert_eq!(parse_size("1500"), Ok(1500));
        assert_eq!(parse_size("1500B"), Ok(1500));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        assert_eq!(parse_size("3kB"), Ok(3_000));
        assert_eq!(parse_size("3KB"), Ok(3_000));
        assert_eq!(parse_size("1mb"), Ok(1_000_000));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("1.5MiB"), Err(UnitError::SizeUnit));
        assert_eq!(parse_size("1 parsec"), Err(UnitError::SizeUnit));
        assert_eq!(parse_size("KiB"), Err(UnitError::NotANumber));
        assert_eq!(parse_size("99999999999GiB"), Err(UnitError::OutOfRange));
    }
}
