//! What a rollout does ([`Plan`]) and the gates that judge it ([`Gate`]), parsed from
//! `perch rollout start`'s flags.

use std::collections::BTreeSet;
use std::fmt;

use perch_runtime::canary;
use perch_runtime::rollout::BundleRef;
use perch_runtime::units;
use serde::{Deserialize, Serialize};

/// The canary requests a stage's window must hold before a latency or error-rate gate
/// is judged and before a stage is promoted, unless the plan says otherwise
/// ([`Plan::min_requests`]): one slow request cannot abort, and a handful of requests
/// (forged or real) cannot promote.
pub const MIN_REQUESTS: u64 = 100;

/// A plan or a flag is not usable; the message names the flag and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

/// What a rollout does: which bundle, to which group, in which stages, judged by which
/// gates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The device group (a topic segment).
    pub group: String,
    /// The model of the devices' repositories the rollout updates (`--model`; the
    /// bundle must carry its name); `None`: the primary model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The rollout's id: cohorts hash it ([`Plan::rollout_id`]).
    pub rollout_id: String,
    /// The bundle, with its per-chunk hashes.
    pub bundle: BundleRef,
    /// The cohort share of each stage, basis points, strictly increasing, ending at
    /// 10 000 ([`parse_stages`]).
    pub stages: Vec<u16>,
    /// How long each stage soaks before it may be promoted, milliseconds of controller
    /// time.
    pub soak_ms: u64,
    /// The conditions the canary cohort must meet ([`parse_gates`]).
    pub gates: Vec<Gate>,
    /// How many canary devices must have reported metrics of the new version before a
    /// stage is promoted.
    pub min_devices: usize,
    /// How long each device watches its own SLO after activation, seconds (the
    /// document's `soak_s`).
    pub device_soak_s: u64,
    /// The fewest requests a device's soak must judge before it confirms the bundle,
    /// and the fewest in each window it judges (the document's `soak_min_requests`).
    #[serde(default = "default_device_soak_requests")]
    pub device_soak_requests: u64,
    /// The fewest requests the canary cohort must have served in a stage's window
    /// before a latency or error-rate gate is judged, and before a stage is promoted.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// What a soaked stage does while canary devices report `unexercised`.
    #[serde(default)]
    pub unexercised: Unexercised,
    /// How long devices hold a running or paused rollout's document fresh, seconds (the
    /// document's `fresh_s`; `0`: never stale). The controller publishes a new revision
    /// every quarter of it.
    #[serde(default)]
    pub fresh_s: u64,
    /// The group's device ids (`--fleet`): reports from any other id are ignored and
    /// counted. `None`: any id may report, but a `rolled_back` counts only from a
    /// device seen activating the bundle, and a cohort state only from a cohort member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<BTreeSet<String>>,
}

/// Parses a fleet list: one device id per line; blank lines and `#` comments skipped.
///
/// # Errors
///
/// A [`PlanError`] naming the line of an id that cannot be a device id, or an empty
/// list.
pub fn parse_fleet(text: &str) -> Result<BTreeSet<String>, PlanError> {
    let mut fleet = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let id = line.split('#').next().unwrap_or("").trim();
        if id.is_empty() {
            continue;
        }
        perch_runtime::rollout::check_id("device", id)
            .map_err(|e| PlanError(format!("--fleet line {}: {e}", n + 1)))?;
        fleet.insert(id.to_string());
    }
    if fleet.is_empty() {
        return Err(PlanError("--fleet lists no device".into()));
    }
    Ok(fleet)
}

/// What a soaked stage does while canary devices report `unexercised` (their soak ended
/// with too few requests to judge the bundle, which they keep on probation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unexercised {
    /// The stage is not promoted while one does (logged once); promote by hand to go on.
    #[default]
    Wait,
    /// They do not hold the stage: the gates judge the cohort's traffic as a whole.
    Accept,
}

impl Unexercised {
    /// Parses `--unexercised`.
    ///
    /// # Errors
    ///
    /// A [`PlanError`] naming the values.
    pub fn parse(text: &str) -> Result<Unexercised, PlanError> {
        match text {
            "wait" => Ok(Unexercised::Wait),
            "accept" => Ok(Unexercised::Accept),
            _ => Err(PlanError(format!(
                "--unexercised {text:?}: expected wait or accept"
            ))),
        }
    }
}

fn default_device_soak_requests() -> u64 {
    perch_runtime::rollout::DEFAULT_SOAK_MIN_REQUESTS
}

fn default_min_requests() -> u64 {
    MIN_REQUESTS
}

impl Plan {
    /// A rollout id `{name}-{version}-{sequence}-{6 hex digits}`, with any character a
    /// topic segment may not hold replaced by `-` and cut to 64 bytes. `random` should
    /// come from a random source so two rollouts of one bundle hash cohorts apart.
    pub fn rollout_id(name: &str, version: &str, sequence: u64, random: [u8; 3]) -> String {
        let suffix = format!("-{sequence}-{}", hex::encode(random));
        let mut head: String = format!("{name}-{version}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        head.truncate(64usize.saturating_sub(suffix.len()));
        head + &suffix
    }

    /// Checks what the document and the controller rely on.
    ///
    /// # Errors
    ///
    /// A [`PlanError`] naming the rule.
    pub fn validate(&self) -> Result<(), PlanError> {
        perch_runtime::rollout::check_id("group", &self.group).map_err(PlanError)?;
        perch_runtime::rollout::check_id("rollout id", &self.rollout_id).map_err(PlanError)?;
        if let Some(model) = &self.model {
            perch_runtime::rollout::check_id("--model", model).map_err(PlanError)?;
            if *model != self.bundle.name {
                return Err(PlanError(format!(
                    "--model {model}: the bundle holds model {:?}; a rollout of a model \
                     installs a bundle of that name",
                    self.bundle.name
                )));
            }
        }
        check_stages(&self.stages)?;
        if self.soak_ms == 0 {
            return Err(PlanError("--soak must be longer than 0".into()));
        }
        if self.device_soak_requests == 0 {
            return Err(PlanError(
                "--device-soak-requests must be at least 1".into(),
            ));
        }
        if self.min_requests == 0 {
            return Err(PlanError("--min-requests must be at least 1".into()));
        }
        Ok(())
    }
}

/// Parses stage percents such as `10,50,100` (decimals to two places, `12.5`) into
/// basis points.
///
/// # Errors
///
/// A [`PlanError`] when a stage is not a number in `(0, 100]`, the stages do not
/// increase, or the last is not 100.
pub fn parse_stages(text: &str) -> Result<Vec<u16>, PlanError> {
    let stages = text
        .split(',')
        .map(|s| {
            let s = s.trim().trim_end_matches('%');
            let value: f64 = s
                .parse()
                .map_err(|_| PlanError(format!("--stages {text:?}: {s:?} is not a percent")))?;
            let bp = (value * 100.0).round();
            if !(value > 0.0 && bp <= f64::from(canary::BUCKETS)) {
                return Err(PlanError(format!(
                    "--stages {text:?}: {s} is outside 0 (excluded) to 100"
                )));
            }
            Ok(bp as u16)
        })
        .collect::<Result<Vec<u16>, PlanError>>()?;
    check_stages(&stages).map_err(|e| PlanError(format!("--stages {text:?}: {e}")))?;
    Ok(stages)
}

fn check_stages(stages: &[u16]) -> Result<(), PlanError> {
    if stages.windows(2).any(|w| w[0] >= w[1]) {
        return Err(PlanError("stages must strictly increase".into()));
    }
    if stages.last() != Some(&canary::BUCKETS) {
        return Err(PlanError("the last stage must be 100".into()));
    }
    if stages.first() == Some(&0) {
        return Err(PlanError("a stage must be above 0".into()));
    }
    Ok(())
}

/// Parses a duration with its unit (`10m`, `90s`, `250ms`;
/// [`perch_runtime::units::parse_duration`]) into milliseconds.
///
/// # Errors
///
/// A [`PlanError`] naming `flag` when the text is not such a duration.
pub fn parse_duration_ms(flag: &str, text: &str) -> Result<u64, PlanError> {
    let duration =
        units::parse_duration(text).map_err(|e| PlanError(format!("{flag} {text:?}: {e}")))?;
    Ok(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// Parses a byte size (`64KiB`, `1MiB`, `4096`; [`perch_runtime::units::parse_size`]).
///
/// # Errors
///
/// A [`PlanError`] naming `flag` when the text is not such a size.
pub fn parse_size(flag: &str, text: &str) -> Result<u64, PlanError> {
    units::parse_size(text).map_err(|e| PlanError(format!("{flag} {text:?}: {e}")))
}

/// What a gate measures over a cohort.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "metric")]
pub enum Metric {
    /// A latency quantile of the cohort's merged histogram (`p99` is 0.99), in
    /// milliseconds.
    Latency {
        /// The quantile, in `(0, 1]`.
        quantile: f64,
    },
    /// Σ errors / Σ (ok + errors), a fraction.
    ErrorRate,
    /// Inferences per second per device: Σ ok / Σ reported interval seconds, i.e. the
    /// average rate of one canary device while it served the new model (equal to
    /// Σ ok / soak seconds / devices when every device reported over the whole soak).
    Throughput,
}

/// One gate: a metric of the canary cohort and the limit it must stay within.
///
/// Latency and error-rate gates are upper bounds (`p99<10ms`), throughput gates lower
/// bounds (`throughput>1/s`); the comparison is strict.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// What is measured.
    pub metric: Metric,
    /// The limit: milliseconds for latency, a fraction for the error rate, inferences
    /// per second for throughput.
    pub limit: f64,
}

impl Gate {
    /// Whether the measured `value` (same unit as the limit) meets the gate.
    pub fn holds(&self, value: f64) -> bool {
        match self.metric {
            Metric::Latency { .. } | Metric::ErrorRate => value < self.limit,
            Metric::Throughput => value > self.limit,
        }
    }

    /// The metric's name as written in gates (`p99`, `error_rate`, `throughput`).
    pub fn metric_name(&self) -> String {
        match self.metric {
            Metric::Latency { quantile } => format!("p{}", trim_float(quantile * 100.0)),
            Metric::ErrorRate => "error_rate".into(),
            Metric::Throughput => "throughput".into(),
        }
    }

    /// `value` in the gate's unit, for messages (`12.5ms`, `2%`, `0.5/s`).
    pub fn format_value(&self, value: f64) -> String {
        match self.metric {
            Metric::Latency { .. } => format!("{}ms", trim_float(value)),
            Metric::ErrorRate => format!("{}%", trim_float(value * 100.0)),
            Metric::Throughput => format!("{}/s", trim_float(value)),
        }
    }
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.metric {
            Metric::Throughput => '>',
            _ => '<',
        };
        write!(
            f,
            "{}{op}{}",
            self.metric_name(),
            self.format_value(self.limit)
        )
    }
}

/// A float with at most three decimals and no trailing zeros.
pub(super) fn trim_float(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() || text == "-" {
        "0".into()
    } else {
        text.to_string()
    }
}

/// Parses gates such as `p99<10ms,error_rate<1%,throughput>1/s`.
///
/// Latency: `pNN` (any quantile, `p99.9` too) `<` a duration in `ms`, `us` or `s`.
/// Error rate: `error_rate<` a percent (`1%`) or a fraction (`0.01`). Throughput:
/// `throughput>` inferences per second (`1/s` or `1`). An empty text gives no gates.
///
/// # Errors
///
/// A one-line [`PlanError`] naming the gate and what is wrong.
pub fn parse_gates(text: &str) -> Result<Vec<Gate>, PlanError> {
    text.split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(parse_gate)
        .collect()
}

fn parse_gate(text: &str) -> Result<Gate, PlanError> {
    let bad = |why: String| PlanError(format!("gate {text:?}: {why}"));
    let at = text
        .find(['<', '>'])
        .ok_or_else(|| bad("expected METRIC<LIMIT or throughput>LIMIT, e.g. p99<10ms".into()))?;
    let (name, rest) = text.split_at(at);
    let (op, limit) = rest.split_at(1);
    let limit = limit.trim_start_matches('=').trim();
    let name = name.trim();
    let number = |s: &str| -> Result<f64, PlanError> {
        s.trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| bad(format!("{s:?} is not a non-negative number")))
    };
    let metric = match name {
        "error_rate" => Metric::ErrorRate,
        "throughput" => Metric::Throughput,
        p if p.starts_with('p') => {
            let q: f64 = p[1..].parse().map_err(|_| {
                bad(format!(
                    "unknown metric {name:?} (use pNN such as p99, error_rate or throughput)"
                ))
            })?;
            if !(q > 0.0 && q <= 100.0) {
                return Err(bad(format!(
                    "quantile {p} is outside p0 (excluded) to p100"
                )));
            }
            Metric::Latency {
                quantile: q / 100.0,
            }
        }
        _ => {
            return Err(bad(format!(
                "unknown metric {name:?} (use pNN such as p99, error_rate or throughput)"
            )))
        }
    };
    let expected = if metric == Metric::Throughput {
        ">"
    } else {
        "<"
    };
    if op != expected {
        return Err(bad(format!(
            "{name} is {} bound: write {name}{expected}LIMIT",
            if expected == "<" {
                "an upper"
            } else {
                "a lower"
            }
        )));
    }
    let limit = match metric {
        Metric::Latency { .. } => {
            let (value, scale) = if let Some(v) = limit.strip_suffix("ms") {
                (v, 1.0)
            } else if let Some(v) = limit.strip_suffix("us").or(limit.strip_suffix("µs")) {
                (v, 1e-3)
            } else if let Some(v) = limit.strip_suffix('s') {
                (v, 1e3)
            } else {
                return Err(bad(format!(
                    "latency limit {limit:?} needs a unit: ms, us or s"
                )));
            };
            number(value)? * scale
        }
        Metric::ErrorRate => match limit.strip_suffix('%') {
            Some(v) => number(v)? / 100.0,
            None => number(limit)?,
        },
        Metric::Throughput => number(limit.strip_suffix("/s").unwrap_or(limit))?,
    };
    if metric == Metric::ErrorRate && limit > 1.0 {
        return Err(bad("an error rate is at most 100%".into()));
    }
    Ok(Gate { metric, limit })
}
