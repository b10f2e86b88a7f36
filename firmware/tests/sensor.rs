//! `perchd` as a process with the simulated accelerometer, against its embedded broker:
//! the verdicts on `perch/{device}/sensor/anomaly` go from normal to anomalous when the
//! simulated machine develops a bearing fault.
//!
//! The process and MQTT helpers are those of `tests/common` (a process killed on drop,
//! its log printed when the test fails; an MQTT subscriber on a thread).
//!
//! This binary also counts heap allocations per thread, to check that sampling,
//! windowing and detection allocate nothing.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use perch_firmware::sensor::adxl345::{Adxl345, Range, Rate, ADDRESS_ALT_LOW, FIFO_DEPTH};
use perch_firmware::sensor::detector::DetectorConfig;
use perch_firmware::sensor::sim::{Clock, SimulatedAdxl345};
use perch_firmware::sensor::{Pipeline, Step};
use serde_json::Value;

use common::{models, Mqtt};
use perch_testkit::{wait_until, Port, Process};

const DEVICE: &str = "sensor-gw";
/// The longest wait for anything; generous, so a slow CI machine does not fail it.
const PATIENCE: Duration = Duration::from_secs(60);
/// Samples per window (see `perch_firmware::sensor::features`).
const WINDOW_SAMPLES: f64 = 768.0;
const RATE_HZ: f64 = 3200.0;
const CALIBRATION_WINDOWS: u64 = 12;
const ANOMALY_AFTER_S: f64 = 8.0;

/// `perchd` serving `model` (a path below `models/`) with its embedded broker on `port`
/// and 500 ms reports, its spool and log in `dir`.
fn start_perchd(dir: &Path, port: u16, model: &str, extra: &[&str]) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_perchd"));
    command
        .env("RUST_LOG", "info")
        .env_remove("PERCH_CONFIG")
        .args(["--device-id", DEVICE, "--embedded-port", &port.to_string()])
        .arg("--model")
        .arg(models().join(model))
        .arg("--spool-dir")
        .arg(dir.join("spool"))
        .args([
            "--http-listen",
            "off",
            "--warmup",
            "2",
            "--report-interval",
            "500ms",
        ])
        .args(extra);
    Process::spawn("perchd", command, dir.join("perchd.log"))
}

/// A message's JSON body; `null` if it is not JSON.
fn json(payload: &[u8]) -> Value {
    serde_json::from_slice(payload).unwrap_or(Value::Null)
}

#[test]
fn simulated_sensor_verdicts_flip_from_normal_to_anomalous_after_the_fault_begins() {
    let dir = tempfile::tempdir().unwrap();
    let reserved = Port::reserve();
    let port = reserved.get();
    let mut perchd = start_perchd(
        dir.path(),
        port,
        "anomaly-ae/model.onnx",
        &[
            "--sensor",
            "simulated",
            "--sensor-rate",
            "3200",
            "--sensor-calibration-windows",
            &CALIBRATION_WINDOWS.to_string(),
            "--sensor-anomaly-after",
            &format!("{ANOMALY_AFTER_S}s"),
        ],
    );
    let anomaly_topic = format!("perch/{DEVICE}/sensor/anomaly");
    let metrics_topic = format!("perch/{DEVICE}/metrics/json");
    let mqtt = Mqtt::connect(
        port,
        "sensor-test",
        &[anomaly_topic.clone(), metrics_topic.clone()],
        false,
    );

    // The first window holding anomalous samples.
    let switch_window = (ANOMALY_AFTER_S * RATE_HZ / WINDOW_SAMPLES).floor() as u64;
    let mut verdicts: Vec<Value> = Vec::new();
    let mut inferences = 0u64;
    let deadline = Instant::now() + PATIENCE;
    // Until three windows after the first anomalous one have been judged.
    while verdicts
        .last()
        .is_none_or(|v| v["window"].as_u64().unwrap() < switch_window + 3)
    {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Some(status) = perchd.try_wait() {
            panic!("perchd exited ({status})");
        }
        match mqtt.any_within(left.min(Duration::from_millis(500))) {
            Some((topic, v)) if topic == anomaly_topic => verdicts.push(json(&v)),
            Some((_, metrics)) => inferences += json(&metrics)["ok"].as_u64().unwrap_or(0),
            None => assert!(
                Instant::now() < deadline,
                "timed out; verdicts so far: {verdicts:?}"
            ),
        }
    }

    // Messages start with the calibration phase and number windows consecutively
    // (QoS 0 on loopback: none lost).
    let windows: Vec<u64> = verdicts
        .iter()
        .map(|v| v["window"].as_u64().unwrap())
        .collect();
    assert_eq!(windows[0], CALIBRATION_WINDOWS, "{verdicts:?}");
    assert!(windows.windows(2).all(|w| w[1] == w[0] + 1), "{windows:?}");
    for v in &verdicts {
        assert_eq!(v["device"], DEVICE);
        assert!(v["error"].as_f64().unwrap() > 0.0, "{v}");
        assert!(
            v["timestamp_ms"].as_u64().unwrap() > 1_600_000_000_000,
            "{v}"
        );
        let window = v["window"].as_u64().unwrap();
        if window < 2 * CALIBRATION_WINDOWS {
            assert_eq!(v["phase"], "calibrating", "{v}");
            assert!(v["threshold"].is_null(), "{v}");
        } else {
            assert_eq!(v["phase"], "detecting", "{v}");
            assert!(v["threshold"].as_f64().unwrap() > 0.0, "{v}");
        }
        // Anomalous from the first window that is all fault on.
        if window > switch_window {
            assert_eq!(v["anomaly"], true, "a missed fault: {v}");
        }
    }
    // Normal before the fault. The threshold is statistical (mean + 6 std of the
    // calibration errors), so one false positive among the normal windows is tolerated.
    let before: Vec<&Value> = verdicts
        .iter()
        .filter(|v| v["phase"] == "detecting" && v["window"].as_u64().unwrap() < switch_window)
        .collect();
    assert!(before.len() >= 3, "{verdicts:?}");
    let false_positives = before.iter().filter(|v| v["anomaly"] == true).count();
    assert!(false_positives <= 1, "{before:?}");
    let last = verdicts.last().unwrap();
    assert!(last["anomalies"].as_u64().unwrap() >= 3, "{last}");

    // The sensor's inferences are counted in the agent's metrics.
    while inferences == 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        match mqtt.any_within(left) {
            Some((topic, metrics)) if topic == metrics_topic => {
                inferences += json(&metrics)["ok"].as_u64().unwrap_or(0)
            }
            Some(_) => {}
            None => panic!("no metrics report counted the sensor's inferences"),
        }
    }
}

#[test]
fn a_sensor_with_a_model_of_another_shape_stops_perchd_at_start_naming_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let port = Port::reserve();
    let mut perchd = start_perchd(
        dir.path(),
        port.get(),
        "kws-dscnn/model.onnx",
        &["--sensor", "simulated"],
    );
    let mut status = None;
    wait_until("perchd to stop", PATIENCE, || {
        status = perchd.try_wait();
        status.is_some()
    });
    let status = status.unwrap();
    assert!(!status.success());
    let log = perchd.log();
    assert!(log.contains("the sensor feeds the served model"), "{log}");
    assert!(log.contains("\"mfcc\" FP32 [1,1,49,10]"), "{log}");
}

/// The system allocator, counting the allocations of each thread.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn sampling_windowing_and_detection_allocate_nothing() {
    let sim = SimulatedAdxl345::new(ADDRESS_ALT_LOW, 4, Some(40 * 768), Clock::Free);
    let mut adxl = Adxl345::probe(sim, ADDRESS_ALT_LOW).unwrap();
    adxl.configure(Rate::Hz800, Range::G2).unwrap();
    let mut pipeline = Pipeline::new(DetectorConfig {
        calibration_windows: 8,
        threshold_sigmas: 6.0,
    });
    // A stand-in for the model (whose inference allocates in tract): a fixed output.
    let reconstruction = [0.5f32; 640];
    let mut steps = Vec::with_capacity(64);
    let before = allocations();
    while steps.len() < 48 {
        for _ in 0..adxl.fifo_len().unwrap() {
            pipeline.push(adxl.read_sample().unwrap());
        }
        loop {
            match pipeline.process(|_| Ok::<_, ()>(&reconstruction[..])) {
                Ok(Step::Waiting) => break,
                Ok(step) => steps.push(step),
                Err(e) => panic!("{e:?}"),
            }
        }
    }
    assert_eq!(allocations() - before, 0, "allocations while sampling");
    assert_eq!(adxl.fifo_len().unwrap(), FIFO_DEPTH);
    // It went through every phase: 8 windows learning, 8 calibrating, then detecting
    // (the fault from window 40 on).
    assert!(matches!(steps[7], Step::Learned));
    let judged: Vec<_> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Judged(v) => Some(v),
            _ => None,
        })
        .collect();
    assert_eq!(judged.len(), 40);
    assert!(judged[8].threshold.is_some());
    assert!(judged.last().unwrap().anomaly);
}
