//! `perch rollout status`: the controller's view, per stage and per device.

use std::collections::BTreeMap;
use std::fmt;

use perch_runtime::rollout::{DeviceState, Phase};
use serde::Serialize;

use super::cohort::{Cohort, CohortFigures};
use super::controller::{Controller, Decision};

/// One stage of the plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageLine {
    /// 1-based.
    pub stage: usize,
    /// The cohort share, percent.
    pub percent: f64,
    /// `done`, `current` or `next`.
    pub state: String,
    /// Known devices whose bucket puts them in this stage's cohort.
    pub devices: usize,
}

/// One device as the controller sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceLine {
    /// The device id.
    pub device: String,
    /// Its bucket for this rollout, `0..10000`.
    pub bucket: u16,
    /// Whether the current stage's cohort holds it.
    pub in_cohort: bool,
    /// The model it serves (`name version`), from its latest report.
    pub serving: Option<String>,
    /// Its rollout state: `pending`, `downloading 40 %`, `verifying`, `active`,
    /// `confirmed`, `failed: REASON`, `rolled back: REASON`, `not in cohort`, or
    /// `unknown` before any report.
    pub state: String,
    /// Requests in the window (its latest model's reports).
    pub requests: u64,
    /// p50 latency in the window, milliseconds.
    pub p50_ms: Option<f64>,
    /// p99 latency in the window, milliseconds.
    pub p99_ms: Option<f64>,
    /// Error rate in the window.
    pub error_rate: Option<f64>,
}

/// The whole status of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    /// The device group.
    pub group: String,
    /// The rollout id.
    pub rollout_id: String,
    /// The bundle's model name.
    pub model: String,
    /// The bundle's version.
    pub version: String,
    /// The bundle's release sequence.
    pub sequence: u64,
    /// The phase.
    pub phase: Phase,
    /// Why it was aborted or paused.
    pub reason: Option<String>,
    /// The latest document revision.
    pub revision: u64,
    /// The current stage, 1-based.
    pub stage: usize,
    /// Every stage.
    pub stages: Vec<StageLine>,
    /// The soak per stage, milliseconds.
    pub soak_ms: u64,
    /// How long the current stage has soaked, milliseconds of controller time.
    pub soaked_ms: u64,
    /// The gates, as written.
    pub gates: Vec<String>,
    /// Canary devices needed to promote.
    pub min_devices: usize,
    /// The canary cohort (the new version, in the cohort) over the stage's window.
    pub canary: CohortFigures,
    /// The rest of the group (other versions) over the same window.
    pub rest: CohortFigures,
    /// Device counts per state (`downloading` for any progress, `failed` and
    /// `rolled back` for any reason).
    pub states: BTreeMap<String, usize>,
    /// Every device that reported.
    pub devices: Vec<DeviceLine>,
    /// The decision log, oldest first.
    pub log: Vec<Decision>,
    /// Reports ignored, by why (duplicate metrics, unknown devices, ...).
    pub ignored: BTreeMap<String, u64>,
}

impl Controller {
    /// The status at the latest time the controller saw.
    pub fn status(&self) -> StatusReport {
        let s = self.state();
        let share = s.plan.stages[s.stage];
        let stages = s
            .plan
            .stages
            .iter()
            .enumerate()
            .map(|(i, &bp)| StageLine {
                stage: i + 1,
                percent: f64::from(bp) / 100.0,
                state: match i.cmp(&s.stage) {
                    std::cmp::Ordering::Less => "done",
                    std::cmp::Ordering::Equal if s.phase == Phase::Completed => "done",
                    std::cmp::Ordering::Equal => "current",
                    std::cmp::Ordering::Greater => "next",
                }
                .into(),
                devices: s.devices.values().filter(|v| v.bucket < bp).count(),
            })
            .collect();
        let devices: Vec<DeviceLine> = s
            .devices
            .iter()
            .map(|(id, v)| {
                let latest = v.samples.last();
                let window: Vec<_> = v
                    .samples
                    .iter()
                    .filter(|x| {
                        x.received_ms >= s.stage_started_ms
                            && latest.is_some_and(|l| l.model == x.model && l.version == x.version)
                    })
                    .collect();
                let figures = Cohort::of(std::iter::once(window)).figures;
                let serving = v
                    .status
                    .as_ref()
                    .map(|st| st.serving.clone())
                    .filter(|x| !x.is_empty())
                    .or_else(|| latest.map(|l| format!("{} {}", l.model, l.version)));
                DeviceLine {
                    device: id.clone(),
                    bucket: v.bucket,
                    in_cohort: v.bucket < share,
                    serving,
                    state: v.status.as_ref().map_or("unknown".into(), |st| {
                        let reason = st.reason.as_deref().unwrap_or("no reason given");
                        if st.frozen {
                            return format!("{} (frozen: {reason})", st.state);
                        }
                        match st.state {
                            DeviceState::Downloading => match st.progress_pct {
                                Some(p) => format!("downloading {p} %"),
                                None => "downloading".into(),
                            },
                            DeviceState::Failed => format!("failed: {reason}"),
                            DeviceState::RolledBack => format!("rolled back: {reason}"),
                            DeviceState::Unexercised => format!("unexercised: {reason}"),
                            DeviceState::NotInCohort => "not in cohort".into(),
                            other => other.as_str().into(),
                        }
                    }),
                    requests: figures.requests,
                    p50_ms: figures.p50_ms,
                    p99_ms: figures.p99_ms,
                    error_rate: figures.error_rate,
                }
            })
            .collect();
        let mut states = BTreeMap::<String, usize>::new();
        for d in &devices {
            let key = if d.state.starts_with("downloading") {
                "downloading".to_string()
            } else {
                d.state.split(':').next().unwrap_or("").to_string()
            };
            *states.entry(key).or_default() += 1;
        }
        StatusReport {
            group: s.plan.group.clone(),
            rollout_id: s.plan.rollout_id.clone(),
            model: s.plan.bundle.name.clone(),
            version: s.plan.bundle.version.clone(),
            sequence: s.plan.bundle.sequence,
            phase: s.phase,
            reason: s.reason.clone(),
            revision: s.revision,
            stage: s.stage + 1,
            stages,
            soak_ms: s.plan.soak_ms,
            soaked_ms: s.clock_ms.saturating_sub(s.stage_started_ms),
            gates: s.plan.gates.iter().map(|g| g.to_string()).collect(),
            min_devices: s.plan.min_devices,
            canary: self.canary().figures,
            rest: self.rest().figures,
            states,
            devices,
            log: s.log.clone(),
            ignored: s.ignored.clone(),
        }
    }
}

fn ms(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.2}ms"))
}

fn rate(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{:.2}%", v * 100.0))
}

fn cohort_line(f: &mut fmt::Formatter<'_>, name: &str, c: &CohortFigures) -> fmt::Result {
    writeln!(
        f,
        "  {name:<7} {:>4} devices {:>8} requests  p50 {:>9}  p99 {:>9}  errors {:>7}  {}/s per device",
        c.devices,
        c.requests,
        ms(c.p50_ms),
        ms(c.p99_ms),
        rate(c.error_rate),
        c.throughput.map_or("-".into(), |t| format!("{t:.2}"))
    )
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "rollout {} of {} {} (sequence {}) to group {}: {}{}",
            self.rollout_id,
            self.model,
            self.version,
            self.sequence,
            self.group,
            self.phase,
            self.reason
                .as_ref()
                .map_or(String::new(), |r| format!(" ({r})"))
        )?;
        let stages: Vec<String> = self
            .stages
            .iter()
            .map(|s| format!("{} % {} ({} devices)", s.percent, s.state, s.devices))
            .collect();
        writeln!(
            f,
            "  stage {}/{}: {}; soaked {:.0}s of {:.0}s",
            self.stage,
            self.stages.len(),
            stages.join(" → "),
            self.soaked_ms as f64 / 1e3,
            self.soak_ms as f64 / 1e3
        )?;
        writeln!(
            f,
            "  gates: {}; at least {} canary devices",
            if self.gates.is_empty() {
                "none".into()
            } else {
                self.gates.join(", ")
            },
            self.min_devices
        )?;
        cohort_line(f, "canary", &self.canary)?;
        cohort_line(f, "rest", &self.rest)?;
        if !self.ignored.is_empty() {
            let ignored: Vec<String> = self
                .ignored
                .iter()
                .map(|(why, n)| format!("{n} {why}"))
                .collect();
            writeln!(f, "  ignored: {}", ignored.join(", "))?;
        }
        let states: Vec<String> = self
            .states
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect();
        writeln!(
            f,
            "  devices: {}",
            if states.is_empty() {
                "none reported yet".into()
            } else {
                states.join(", ")
            }
        )?;
        if !self.devices.is_empty() {
            writeln!(
                f,
                "  {:<20} {:>6} {:<6} {:<16} {:<28} {:>9} {:>9} {:>7}",
                "DEVICE", "BUCKET", "COHORT", "SERVING", "STATE", "P50", "P99", "ERRORS"
            )?;
        }
        for d in &self.devices {
            writeln!(
                f,
                "  {:<20} {:>6} {:<6} {:<16} {:<28} {:>9} {:>9} {:>7}",
                d.device,
                d.bucket,
                if d.in_cohort { "yes" } else { "no" },
                d.serving.as_deref().unwrap_or("-"),
                d.state,
                ms(d.p50_ms),
                ms(d.p99_ms),
                rate(d.error_rate)
            )?;
        }
        write!(f, "  decisions:")?;
        for d in &self.log {
            write!(
                f,
                "\n    {} stage {} {}: {}",
                perch_runtime::bundle::rfc3339(d.unix_ms / 1000),
                d.stage + 1,
                d.phase,
                d.message
            )?;
        }
        Ok(())
    }
}
