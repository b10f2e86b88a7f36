//! `perch rollout report` and the operator's records behind it: a rollout driven through
//! the real controller on a virtual clock, saved and recorded with the operator's own
//! `Store` (state, journal, metrics file), then reported, and the page opened in
//! headless Chromium.

use crate::perch;

use std::path::{Path, PathBuf};
use std::process::Command;

use perch_runtime::histogram::Histogram;
use perch_runtime::rollout::{BundleRef, DeviceState, DeviceStatus, FORMAT};
use perch_runtime::wire::{MetricsReport, ModelId, Version, FORMAT_VERSION};
use perch_testkit::{promtool_check_metrics, tool_or_skip};
use perch_tools::rollout::operator::Store;
use perch_tools::rollout::{parse_gates, parse_stages, Clock, Controller, Plan, Unexercised};

/// Wall-clock time of the rollout's start (2026-09-21).
const T0: u64 = 1_790_000_000_000;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One 5-second report: `ok` and `errors` requests at `latency_us` each.
fn report(seq: u32, version: Version, ok: u32, errors: u32, latency_us: u64) -> MetricsReport {
    let mut latency = Histogram::new();
    for _ in 0..ok + errors {
        latency.record_ns(latency_us * 1_000);
    }
    MetricsReport {
        format: FORMAT_VERSION,
        seq,
        uptime_s: seq * 5,
        interval_ms: 5_000,
        model: ModelId::new("kws", version).unwrap(),
        ok,
        errors,
        latency,
    }
}

/// Group kitchen, stages 10,50,100 soaking 60 s each, gates p99<10ms and
/// error_rate<1 %, over 40 devices: the 10 % stage passes on 4 ms canaries, the 50 %
/// stage's canaries fail 5 % of requests and the rollout aborts. Every 5 s of
/// controller time the state is saved and recorded, as the operator does.
fn aborted_rollout(store: &Store) -> Controller {
    let plan = Plan {
        group: "kitchen".into(),
        model: None,
        rollout_id: Plan::rollout_id("kws", "1.3.0", 8, [1, 2, 3]),
        bundle: BundleRef::describe("kws", "1.3.0", 8, &[7u8; 5000], 1024),
        stages: parse_stages("10,50,100").unwrap(),
        soak_ms: 60_000,
        gates: parse_gates("p99<10ms,error_rate<1%").unwrap(),
        min_devices: 1,
        device_soak_s: 10,
        device_soak_requests: 100,
        min_requests: 100,
        unexercised: Unexercised::Wait,
        fresh_s: 0,
        fleet: None,
    };
    let (mut c, _) = Controller::start(plan, Clock::new(0, T0)).unwrap();
    let devices: Vec<String> = (0..40).map(|i| format!("pi-{i}")).collect();
    let mut seq = 0;
    let mut ms = 0;
    while !c.is_finished() && ms < 600_000 {
        ms += 5_000;
        seq += 1;
        let now = Clock::new(ms, T0 + ms);
        let doc = c.document();
        let stage = c.state().stage;
        for device in &devices {
            let canary = doc.in_cohort(device);
            let status = DeviceStatus {
                format: FORMAT,
                device: device.clone(),
                rollout_id: doc.rollout_id.clone(),
                revision: doc.revision,
                version: "1.3.0".into(),
                sequence: 8,
                bucket: doc.bucket(device),
                state: if canary {
                    DeviceState::Active
                } else {
                    DeviceState::NotInCohort
                },
                progress_pct: None,
                reason: None,
                serving: if canary { "kws 1.3.0" } else { "kws 1.2.0" }.into(),
                model: None,
                update: seq,
                frozen: false,
            };
            c.on_status(status, now);
            let m = match (canary, stage) {
                (true, 0) => report(seq, Version::new(1, 3, 0), 50, 0, 4_000),
                (true, _) => report(seq, Version::new(1, 3, 0), 95, 5, 6_000),
                (false, _) => report(seq, Version::new(1, 2, 0), 50, 0, 2_000),
            };
            c.on_metrics(device, &m, now);
        }
        c.tick(now);
        store.save(c.state()).unwrap();
        store.record(&c, now.unix_ms).unwrap();
    }
    assert_eq!(c.state().phase.as_str(), "aborted", "{:?}", c.state().log);
    c
}

fn report_command(state_dir: &Path, output: &Path) -> std::process::Output {
    perch()
        .args(["rollout", "report", "--group", "kitchen", "--state-dir"])
        .arg(state_dir)
        .arg("-o")
        .arg(output)
        .output()
        .unwrap()
}

/// The text between `<svg id="{id}"` and its `</svg>`.
fn svg<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("<svg id=\"{id}\""))
        .unwrap_or_else(|| panic!("no svg {id}"));
    let end = start + html[start..].find("</svg>").unwrap();
    &html[start..end]
}

#[test]
fn the_report_plots_each_cohort_over_time_with_the_stages_and_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("rollouts");
    let store = Store::new(&state_dir, "kitchen").unwrap();
    let controller = aborted_rollout(&store);
    let out = dir.path().join("report.html");
    let output = report_command(&state_dir, &out);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let html = std::fs::read_to_string(&out).unwrap();

    // Self-contained: no script, no stylesheet or image to fetch.
    assert!(!html.contains("<script"), "{html}");
    assert!(
        !html.contains(" src=") && !html.contains(" href="),
        "{html}"
    );
    assert!(!html.contains("<link"), "{html}");

    let latency = svg(&html, "latency");
    for series in ["canary p50", "canary p99", "rest p50", "rest p99"] {
        assert!(
            latency.contains(&format!(
                "<polyline class=\"series\" data-series=\"{series}\""
            )),
            "{series} missing in {latency}"
        );
    }
    let errors = svg(&html, "errors");
    assert!(errors.contains("data-series=\"canary error rate\""));
    assert!(errors.contains("data-series=\"rest error rate\""));
    // The stage change is marked on the plots, and the timeline has both stages and
    // the abort.
    assert!(latency.contains("stage 2 running"), "{latency}");
    let timeline = svg(&html, "timeline");
    assert!(timeline.contains("stage 1 · 10 % · running"), "{timeline}");
    assert!(timeline.contains("stage 2 · 50 % · running"), "{timeline}");
    assert!(timeline.contains("· aborted"), "{timeline}");
    // Every decision is in the log, the abort with its reason.
    let rows = html.matches("<tr class=\"decision\">").count();
    assert_eq!(rows, controller.state().log.len());
    assert!(
        html.contains("error_rate"),
        "the abort reason names the gate"
    );
}

#[test]
fn the_report_renders_in_headless_chromium_with_its_plots_and_no_errors() {
    let test = "the_report_renders_in_headless_chromium_with_its_plots_and_no_errors";
    let Some(chromium) = tool_or_skip("chromium", "chromium", test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("rollouts");
    let store = Store::new(&state_dir, "kitchen").unwrap();
    aborted_rollout(&store);
    let out = dir.path().join("report.html");
    assert!(report_command(&state_dir, &out).status.success());

    let (dom, log) = headless_dom(&chromium, dir.path(), &out);
    // The DOM Chromium built holds the three SVG figures and their lines.
    for id in ["latency", "errors", "timeline"] {
        assert!(
            dom.contains(&format!("<svg id=\"{id}\"")),
            "no {id} in {dom}"
        );
    }
    assert!(dom.matches("<polyline").count() >= 6, "{dom}");
    assert!(
        dom.matches("<rect class=\"stage-band\"").count() >= 3,
        "{dom}"
    );
    // Nothing went wrong on the page: no console message, no uncaught error.
    assert_eq!(page_errors(&log), Vec::<&str>::new());

    // The same check sees an error where there is one.
    let broken = dir.path().join("broken.html");
    std::fs::write(
        &broken,
        "<!DOCTYPE html><body><script>undefinedFunction();</script>",
    )
    .unwrap();
    let (_, log) = headless_dom(&chromium, dir.path(), &broken);
    assert!(
        page_errors(&log)
            .iter()
            .any(|l| l.contains("Uncaught ReferenceError")),
        "{log}"
    );
}

/// Lines of Chromium's log that report the page's console or an uncaught error.
fn page_errors(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught"))
        .collect()
}

/// The DOM headless Chromium builds from `page`, and its log (stderr).
fn headless_dom(chromium: &Path, dir: &Path, page: &Path) -> (String, String) {
    let output = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=2000",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{log}");
    (String::from_utf8_lossy(&output.stdout).into_owned(), log)
}

#[test]
fn a_damaged_journal_fails_the_report_in_one_line_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("rollouts");
    let store = Store::new(&state_dir, "kitchen").unwrap();
    aborted_rollout(&store);
    let journal = store.journal_path();
    let text = std::fs::read_to_string(&journal).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[2] = "{\"rollout_id\": 7}";
    std::fs::write(&journal, lines.join("\n") + "\n").unwrap();

    let out = dir.path().join("report.html");
    let output = report_command(&state_dir, &out);
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("kitchen.journal line 3 is not a journal point"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn the_metrics_file_passes_promtool_and_holds_every_rollout_series_the_rules_and_dashboard_use() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("rollouts");
    let metrics = dir.path().join("perch-rollout-kitchen.prom");
    let mut store = Store::new(&state_dir, "kitchen").unwrap();
    store.metrics_file = Some(metrics.clone());
    aborted_rollout(&store);
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("perch_rollout_phase{")
            && l.contains("phase=\"aborted\"")
            && l.ends_with(" 1")),
        "{text}"
    );
    assert!(text.contains("perch_rollout_stage_percent{group=\"kitchen\""));
    assert!(
        text.lines()
            .any(|l| l.starts_with("perch_rollout_cohort_p99_seconds{")
                && l.contains("cohort=\"canary\"")),
        "{text}"
    );

    let exported: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for file in [
        "deploy/prometheus/perch-rules.yml",
        "deploy/grafana/perch.json",
    ] {
        let used = std::fs::read_to_string(repository().join(file)).unwrap();
        let names = rollout_names(&used);
        assert!(!names.is_empty(), "{file} uses no rollout series");
        for name in names {
            assert!(
                exported.contains(&name.as_str()),
                "{file} uses {name}, not in {text}"
            );
        }
    }

    let test = "the_metrics_file_passes_promtool_and_holds_every_rollout_series_the_rules_and_dashboard_use";
    promtool_check_metrics(test, &std::fs::read(&metrics).unwrap());
}

/// The `perch_rollout_*` names in `text`.
fn rollout_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .match_indices("perch_rollout_")
        .map(|(i, _)| {
            text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}
