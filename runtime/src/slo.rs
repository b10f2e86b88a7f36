//! Service-level objectives of a model, and the check of a window of traffic against
//! them.
//!
//! One [`Slo`] serves every place that states or checks objectives: a bundle's manifest
//! carries one, `perchd`'s `[slo]` section overrides it field by field ([`Slo::or`]),
//! the agent marks each report interval that misses it `Degraded`, and a device on
//! probation after an update rolls back when an interval misses it.
//!
//! ```
//! use perch_runtime::slo::{Slo, Window};
//!
//! let slo = Slo { p99_ms: Some(10.0), max_error_rate: Some(0.01), ..Slo::default() };
//! let window = Window { p99_ms: Some(12.5), ok: 99, errors: 1, throughput: None };
//! let missed: Vec<String> = slo.violations(&window).map(|v| v.to_string()).collect();
//! assert_eq!(missed, ["p99 latency 12.50 ms over the SLO (p99_ms 10 ms)"]);
//! ```

use core::fmt;

use serde::{Deserialize, Serialize};

/// Service-level objectives for a model; an unset one is not checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    /// The 99th-percentile latency budget of one inference, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// The largest acceptable fraction of failed requests, in `[0, 1]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// The smallest acceptable throughput, in inferences per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_throughput: Option<f64>,
}

/// What a window of traffic (a report interval, a soak) measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    /// Its p99 latency in milliseconds; `None` without requests.
    pub p99_ms: Option<f64>,
    /// Requests answered.
    pub ok: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Inferences per second, where the window's rate says something about the
    /// model (not for a device whose traffic is whatever its clients send).
    pub throughput: Option<f64>,
}

/// An objective a window missed.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Violation {
    /// The p99 latency was over its budget.
    P99 {
        /// Measured, ms.
        p99_ms: f64,
        /// The budget, ms.
        limit_ms: f64,
    },
    /// Too many requests failed.
    ErrorRate {
        /// Failed requests.
        errors: u64,
        /// All requests.
        total: u64,
        /// The largest acceptable fraction.
        limit: f64,
    },
    /// Too few inferences per second.
    Throughput {
        /// Measured, per second.
        throughput: f64,
        /// The least acceptable, per second.
        limit: f64,
    },
}

impl Slo {
    /// Each objective of `self`, or `fallback`'s where `self` sets none: a device's
    /// configured objectives over its bundle's.
    pub fn or(self, fallback: &Slo) -> Slo {
        Slo {
            p99_ms: self.p99_ms.or(fallback.p99_ms),
            max_error_rate: self.max_error_rate.or(fallback.max_error_rate),
            min_throughput: self.min_throughput.or(fallback.min_throughput),
        }
    }

    /// The objectives `window` missed, in the order p99, error rate, throughput. A
    /// window without requests misses none.
    pub fn violations(&self, window: &Window) -> impl Iterator<Item = Violation> {
        let p99 = match (self.p99_ms, window.p99_ms) {
            (Some(limit_ms), Some(p99_ms)) if p99_ms > limit_ms => {
                Some(Violation::P99 { p99_ms, limit_ms })
            }
            _ => None,
        };
        let total = window.ok.saturating_add(window.errors);
        let error_rate = match self.max_error_rate {
            Some(limit) if total > 0 && window.errors as f64 / total as f64 > limit => {
                Some(Violation::ErrorRate {
                    errors: window.errors,
                    total,
                    limit,
                })
            }
            _ => None,
        };
        let throughput = match (self.min_throughput, window.throughput) {
            (Some(limit), Some(throughput)) if throughput < limit => {
                Some(Violation::Throughput { throughput, limit })
            }
            _ => None,
        };
        p99.into_iter().chain(error_rate).chain(throughput)
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Violation::P99 { p99_ms, limit_ms } => {
                write!(
                    f,
                    "p99 latency {p99_ms:.2} ms over the SLO (p99_ms {limit_ms} ms)"
                )
            }
            Violation::ErrorRate {
                errors,
                total,
                limit,
            } => write!(
                f,
                "error rate {:.2} % ({errors} of {total}) over the SLO (max_error_rate {:.2} %)",
                errors as f64 / total as f64 * 100.0,
                limit * 100.0
            ),
            Violation::Throughput { throughput, limit } => {
                write!(
                    f,
                    "throughput {throughput:.2}/s under the SLO (min_throughput {limit}/s)"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violations(slo: &Slo, window: &Window) -> Vec<String> {
        slo.violations(window).map(|v| v.to_string()).collect()
    }

    #[test]
    fn a_window_within_every_objective_misses_none() {
        let slo = Slo {
            p99_ms: Some(10.0),
            max_error_rate: Some(0.01),
            min_throughput: Some(5.0),
        };
        let window = Window {
            p99_ms: Some(10.0),
            ok: 100,
            errors: 1,
            throughput: Some(5.0),
        };
        assert!(violations(&slo, &window).is_empty(), "limits are inclusive");
    }

    #[test]
    fn each_missed_objective_is_named_with_the_figure_and_the_limit() {
        let slo = Slo {
            p99_ms: Some(25.0),
            max_error_rate: Some(0.01),
            min_throughput: Some(5.0),
        };
        let window = Window {
            p99_ms: Some(31.5),
            ok: 95,
            errors: 5,
            throughput: Some(2.0),
        };
        assert_eq!(
            violations(&slo, &window),
            [
                "p99 latency 31.50 ms over the SLO (p99_ms 25 ms)",
                "error rate 5.00 % (5 of 100) over the SLO (max_error_rate 1.00 %)",
                "throughput 2.00/s under the SLO (min_throughput 5/s)",
            ]
        );
    }

    #[test]
    fn unset_objectives_and_empty_windows_are_not_checked() {
        let window = Window {
            p99_ms: Some(1e9),
            ok: 0,
            errors: 7,
            throughput: Some(0.0),
        };
        assert!(violations(&Slo::default(), &window).is_empty());
        let slo = Slo {
            max_error_rate: Some(0.0),
            ..Slo::default()
        };
        assert!(violations(&slo, &Window::default()).is_empty());
    }

    #[test]
    fn configured_objectives_win_over_the_bundle_field_by_field() {
        let configured = Slo {
            p99_ms: Some(5.0),
            ..Slo::default()
        };
        let bundle = Slo {
            p99_ms: Some(10.0),
            max_error_rate: Some(0.02),
            min_throughput: None,
        };
        assert_eq!(
            configured.or(&bundle),
            Slo {
                p99_ms: Some(5.0),
                max_error_rate: Some(0.02),
                min_throughput: None,
            }
        );
    }
}
