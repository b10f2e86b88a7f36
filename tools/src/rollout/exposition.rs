//! The rollout as Prometheus text (format 0.0.4), for node_exporter's textfile
//! collector: `perch rollout start|run --metrics-file FILE` rewrites FILE after each
//! save of the state, and the file keeps the final phase after the operator exits.
//!
//! Every series carries `group` and `rollout_id`:
//!
//! | family | labels | value |
//! |---|---|---|
//! | `perch_rollout_phase` | `model_name`, `version`, `phase` (`running`, `paused`, `aborted`, `completed`) | 1 for the current phase, 0 for the others |
//! | `perch_rollout_stage` | | the current stage, 1-based |
//! | `perch_rollout_stage_percent` | | its cohort share, percent |
//! | `perch_rollout_devices` | `state` (`active`, `downloading`, `rolled_back`, ...) | devices in that state |
//! | `perch_rollout_cohort_requests` | `cohort` (`canary`, `rest`) | requests in the stage's window |
//! | `perch_rollout_cohort_p50_seconds`, `perch_rollout_cohort_p99_seconds` | `cohort` | the quantile of the cohort's merged histograms over the window |
//! | `perch_rollout_cohort_error_rate` | `cohort` | Σ errors / Σ requests over the window |
//! | `perch_rollout_updated_timestamp_seconds` | | when the file was written |
//!
//! A figure without data (no request yet) is left out rather than written as NaN.

use std::fmt::Write;

use perch_runtime::rollout::Phase;

use super::cohort::CohortFigures;
use super::status::StatusReport;

/// Escapes a label value (`\`, `"`, line feed).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text of `status`, written at `unix_ms`.
pub fn render(status: &StatusReport, unix_ms: u64) -> String {
    let ids = format!(
        "group=\"{}\",rollout_id=\"{}\"",
        label(&status.group),
        label(&status.rollout_id)
    );
    let mut out = String::with_capacity(2048);
    let family = |out: &mut String, name: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
    };

    family(
        &mut out,
        "perch_rollout_phase",
        "The rollout's phase: 1 for the current one.",
    );
    for phase in [
        Phase::Running,
        Phase::Paused,
        Phase::Aborted,
        Phase::Completed,
    ] {
        let _ = writeln!(
            out,
            "perch_rollout_phase{{{ids},model_name=\"{}\",version=\"{}\",phase=\"{phase}\"}} {}",
            label(&status.model),
            label(&status.version),
            u8::from(status.phase == phase)
        );
    }
    family(
        &mut out,
        "perch_rollout_stage",
        "The current stage, 1-based.",
    );
    let _ = writeln!(out, "perch_rollout_stage{{{ids}}} {}", status.stage);
    family(
        &mut out,
        "perch_rollout_stage_percent",
        "The current stage's cohort share, percent.",
    );
    let percent = status
        .stages
        .get(status.stage.saturating_sub(1))
        .map_or(0.0, |s| s.percent);
    let _ = writeln!(out, "perch_rollout_stage_percent{{{ids}}} {percent}");
    family(
        &mut out,
        "perch_rollout_devices",
        "Devices that reported on the rollout, by state.",
    );
    for (state, n) in &status.states {
        let state = state.replace(' ', "_");
        let _ = writeln!(
            out,
            "perch_rollout_devices{{{ids},state=\"{}\"}} {n}",
            label(&state)
        );
    }
    let cohorts: [(&str, &CohortFigures); 2] = [("canary", &status.canary), ("rest", &status.rest)];
    family(
        &mut out,
        "perch_rollout_cohort_requests",
        "Requests in the current stage's window, by cohort.",
    );
    for (cohort, f) in cohorts {
        let _ = writeln!(
            out,
            "perch_rollout_cohort_requests{{{ids},cohort=\"{cohort}\"}} {}",
            f.requests
        );
    }
    // Two gauges rather than one with a `quantile` label, which Prometheus keeps for
    // summaries.
    for (name, help, pick) in [
        (
            "perch_rollout_cohort_p50_seconds",
            "Median latency of the cohort's merged histograms over the current stage's window.",
            (|f: &CohortFigures| f.p50_ms) as fn(&CohortFigures) -> Option<f64>,
        ),
        (
            "perch_rollout_cohort_p99_seconds",
            "99th percentile latency of the cohort's merged histograms over the current stage's window.",
            |f: &CohortFigures| f.p99_ms,
        ),
    ] {
        family(&mut out, name, help);
        for (cohort, f) in cohorts {
            if let Some(ms) = pick(f) {
                let _ = writeln!(out, "{name}{{{ids},cohort=\"{cohort}\"}} {}", ms / 1e3);
            }
        }
    }
    family(
        &mut out,
        "perch_rollout_cohort_error_rate",
        "Errors per request of the cohort over the current stage's window.",
    );
    for (cohort, f) in cohorts {
        if let Some(rate) = f.error_rate {
            let _ = writeln!(
                out,
                "perch_rollout_cohort_error_rate{{{ids},cohort=\"{cohort}\"}} {rate}"
            );
        }
    }
    family(
        &mut out,
        "perch_rollout_updated_timestamp_seconds",
        "When the operator wrote this file, seconds since the Unix epoch.",
    );
    let _ = writeln!(
        out,
        "perch_rollout_updated_timestamp_seconds{{{ids}}} {}",
        unix_ms as f64 / 1e3
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{parse_gates, parse_stages, Clock, Controller, Plan};
    use perch_runtime::rollout::BundleRef;

    fn status(model: &str) -> StatusReport {
        let plan = Plan {
            group: "kitchen".into(),
            model: None,
            rollout_id: Plan::rollout_id("kws", "1.3.0", 8, [1, 2, 3]),
            bundle: BundleRef::describe(model, "1.3.0", 8, &[7u8; 100], 1024),
            stages: parse_stages("10,50,100").unwrap(),
            soak_ms: 60_000,
            gates: parse_gates("p99<10ms").unwrap(),
            min_devices: 1,
            device_soak_s: 10,
            device_soak_requests: 100,
            min_requests: 100,
            unexercised: crate::rollout::Unexercised::Wait,
            fresh_s: 0,
            fleet: None,
        };
        Controller::start(plan, Clock::new(0, 1_790_000_000_000))
            .unwrap()
            .0
            .status()
    }

    #[test]
    fn exactly_the_current_phase_is_one_and_figures_without_data_are_left_out() {
        let text = render(&status("kws"), 1_790_000_000_500);
        let phases: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("perch_rollout_phase{"))
            .collect();
        assert_eq!(phases.len(), 4);
        assert!(phases
            .iter()
            .all(|l| l.ends_with(" 0") != l.contains("phase=\"running\"")));
        assert!(text.contains("perch_rollout_stage_percent{group=\"kitchen\",rollout_id=\"kws-1.3.0-8-010203\"} 10\n"), "{text}");
        assert!(text.contains("perch_rollout_updated_timestamp_seconds{group=\"kitchen\",rollout_id=\"kws-1.3.0-8-010203\"} 1790000000.5\n"), "{text}");
        assert!(!text.contains("NaN"));
        assert!(!text.contains("perch_rollout_cohort_p99_seconds{"));
        assert!(text.contains("perch_rollout_cohort_requests{group=\"kitchen\",rollout_id=\"kws-1.3.0-8-010203\",cohort=\"canary\"} 0\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
