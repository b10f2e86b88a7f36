//! The one error type of the `no_std` core.

use core::fmt;

use crate::histogram::REPORT_BUCKET_LIMIT;

/// Everything that can go wrong in the core: invalid inputs to [`canary`](crate::canary)
/// and [`wire`](crate::wire) constructors, and encoding or decoding wire messages.
///
/// Every variant is `Copy` and carries only the values needed to name the problem, so
/// the type costs nothing to return on a device without an allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A rollout percent above 100 % (10 000 basis points).
    PercentOutOfRange {
        /// The rejected value, in basis points (hundredths of a percent).
        basis_points: u16,
    },
    /// A string longer than the fixed capacity of the field it was meant for.
    StringTooLong {
        /// Which field, e.g. `"model name"`.
        field: &'static str,
        /// The field's capacity in bytes (UTF-8).
        max: usize,
        /// The rejected string's length in bytes.
        len: usize,
    },
    /// The output buffer is too small for the encoded message.
    Encode,
    /// The input bytes are not a valid message: malformed, truncated, or followed by
    /// trailing bytes.
    Decode,
    /// The message's leading format byte is not a version this build speaks.
    UnsupportedFormat {
        /// The format byte in the message.
        found: u8,
        /// The format version this build encodes and decodes.
        expected: u8,
    },
    /// A latency histogram bucket holds more samples than one metrics report may carry
    /// ([`REPORT_BUCKET_LIMIT`]); split the histogram with
    /// [`Histogram::take_report_chunk`](crate::histogram::Histogram::take_report_chunk).
    BucketOverLimit {
        /// Index of the first bucket over the limit.
        bucket: usize,
        /// That bucket's count.
        count: u32,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::PercentOutOfRange { basis_points } => {
                write!(f, "percent {basis_points} basis points is above 100 %")
            }
            Error::StringTooLong { field, max, len } => {
                write!(
                    f,
                    "{field} is {len} bytes, longer than its {max}-byte limit"
                )
            }
            Error::Encode => f.write_str("output buffer is too small for the encoded message"),
            Error::Decode => f.write_str("message is malformed, truncated or has trailing bytes"),
            Error::UnsupportedFormat { found, expected } => write!(
                f,
                "message format version {found} is not supported (expected {expected})"
            ),
            Error::BucketOverLimit { bucket, count } => write!(
                f,
                "latency bucket {bucket} holds {count} samples, \
                 above the per-report limit of {REPORT_BUCKET_LIMIT}"
            ),
        }
    }
}

impl core::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_problem_and_the_values() {
        let cases = [
            (
                Error::PercentOutOfRange {
                    basis_points: 10_001,
                },
                "percent 10001 basis points is above 100 %",
            ),
            (
                Error::StringTooLong {
                    field: "model name",
                    max: 32,
                    len: 40,
                },
                "model name is 40 bytes, longer than its 32-byte limit",
            ),
            (
                Error::UnsupportedFormat {
                    found: 2,
                    expected: 1,
                },
                "message format version 2 is not supported (expected 1)",
            ),
            (
                Error::BucketOverLimit {
                    bucket: 30,
                    count: 20_000,
                },
                "latency bucket 30 holds 20000 samples, above the per-report limit of 16383",
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
        }
    }

    #[test]
    fn error_works_as_a_boxed_std_error() {
        let boxed: Box<dyn std::error::Error> = Box::new(Error::Decode);
        assert_eq!(
            boxed.to_string(),
            "message is malformed, truncated or has trailing bytes"
        );
    }
}

/// An error and every error below it (its [`source`](core::error::Error::source)
/// chain), written on one line separated by `": "`, as `anyhow` prints `{:#}`.
///
/// Perch's errors keep the error they wrap as their source instead of repeating its
/// text, so callers can walk the chain; write `Chain(&e)` wherever an error becomes a
/// log line or a message for someone else.
///
/// ```
/// use perch_runtime::error::Chain;
///
/// #[derive(Debug)]
/// struct Outer(std::io::Error);
/// impl std::fmt::Display for Outer {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("cannot read perchd.toml")
///     }
/// }
/// impl std::error::Error for Outer {
///     fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
///         Some(&self.0)
///     }
/// }
/// let e = Outer(std::io::Error::other("permission denied"));
/// assert_eq!(Chain(&e).to_string(), "cannot read perchd.toml: permission denied");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn core::error::Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}
