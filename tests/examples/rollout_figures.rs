//! Measures a canary rollout over a simulated fleet for BENCHMARKS.md: time to the
//! canary stage, time to the whole fleet, bytes per device, and CPU per simulated
//! device.
//!
//! ```text
//! cargo build -p perch-tools -p perch-firmware --bins
//! cargo run -p perch-tests --example rollout_figures -- [DEVICES] [RATE]
//! ```
//!
//! Runs DEVICES (default 1000) in-process agents on the embedded broker, each sent
//! RATE (default 1) inferences per second, and rolls a new release of R1 out in stages
//! 10, 50, 100 % with a 5 s soak per stage and a 2 s device soak (the production
//! defaults are 10 min and 60 s: the figures below the soak are what the fleet itself
//! costs). Prints one JSON object.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use perch_runtime::canary;
use perch_runtime::rollout::{self, DeviceState, DeviceStatus};
use perch_tests::sim::{
    cpu_time, digits_slo, pack_bundle, write_file, Fleet, FleetConfig, FleetFixture,
};

const PATIENCE: Duration = Duration::from_secs(600);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let devices: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let rate: f64 = args.next().map_or(Ok(1.0), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let fixture = FleetFixture::digits(dir.path())?;
    let mut config = FleetConfig::new(
        devices,
        &fixture.bundle,
        &fixture.key.public_path,
        dir.path(),
    );
    config.rate = rate;
    config.report_interval = Duration::from_secs(1);
    let fleet = Fleet::start(config)?;
    fleet.wait_all_reporting("1.0.0", PATIENCE)?;
    let ids = fleet.device_ids();

    // Serving only, for the CPU cost of a simulated device.
    let (cpu0, t0) = (cpu_time(), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let idle_cores = cpu_time()
        .zip(cpu0)
        .map(|(b, a)| (b - a).as_secs_f64() / t0.elapsed().as_secs_f64());

    let release_bytes = pack_bundle(
        &perch_tests::models_dir().join("digits-mlp"),
        "digits",
        "1.1.0",
        2,
        &perch_runtime::bundle::Slo {
            p99_ms: Some(1_000.0),
            ..digits_slo()
        },
        &fixture.key.signing,
    )?;
    let release = dir.path().join("digits-1.1.0.perch");
    write_file(&release, &release_bytes)?;
    let rollout_id = "figures-1";
    let canaries: BTreeSet<&String> = ids
        .iter()
        .filter(|d| canary::bucket(d.as_bytes(), rollout_id.as_bytes()) < 1_000)
        .collect();

    let (cpu1, started) = (cpu_time(), Instant::now());
    let mut operator = fleet.operator(
        &release,
        &fixture.key.secret_path,
        &[
            "--rollout-id",
            rollout_id,
            "--stages",
            "10,50,100",
            "--soak",
            "5s",
            "--gate",
            "p99<100ms,error_rate<1%",
            "--min-devices",
            "1",
            "--device-soak",
            "2s",
        ],
    )?;
    fleet.wait_until("the canaries to activate", PATIENCE, |view| {
        canaries.iter().all(|id| {
            matches!(
                view.device(id).and_then(|d| d.state()),
                Some(DeviceState::Active | DeviceState::Confirmed)
            )
        })
    })?;
    let to_canary = started.elapsed();
    fleet.wait_until("every device to confirm 1.1.0", PATIENCE, |view| {
        ids.iter()
            .all(|id| view.device(id).and_then(|d| d.state()) == Some(DeviceState::Confirmed))
    })?;
    let to_full = started.elapsed();
    let rollout_cores = cpu_time()
        .zip(cpu1)
        .map(|(b, a)| (b - a).as_secs_f64() / to_full.as_secs_f64());
    let exit = operator.wait_exit(PATIENCE)?;

    // Bytes on the wire per device (MQTT payloads; headers add a few bytes each): the
    // chunk requests and frames, every revision of the document, its own reports.
    let report = operator.status()?;
    let chunk_size = 64 * 1024u64;
    let size = release_bytes.len() as u64;
    let chunks = size.div_ceil(chunk_size);
    let request = serde_json::to_vec(&rollout::ChunkRequest {
        rollout_id: rollout_id.into(),
        index: 0,
    })?
    .len() as u64;
    let frame_overhead = rollout::encode_chunk(rollout_id, 0, &[]).len() as u64;
    let transfer = size + chunks * (request + frame_overhead);
    let view = fleet.view();
    let reports: Vec<&DeviceStatus> = view
        .devices
        .values()
        .filter_map(|d| d.rollout.as_ref())
        .collect();
    let status_bytes: u64 = reports.iter().map(|s| s.to_json().len() as u64).sum();
    let updates: u64 = reports.iter().map(|s| u64::from(s.update)).sum();
    let revisions = report["log"].as_array().map_or(0, Vec::len) as u64;

    let figures = serde_json::json!({
        "devices": devices,
        "rate_per_device": rate,
        "operator_exit": exit.code(),
        "bundle_bytes": size,
        "chunks": chunks,
        "time_to_canary_s": to_canary.as_secs_f64(),
        "time_to_full_s": to_full.as_secs_f64(),
        "soak_total_s": 3 * 5 + 2,
        "transfer_bytes_per_updated_device": transfer,
        "document_revisions": revisions,
        "status_reports_per_device": updates as f64 / devices as f64,
        "status_bytes_per_report": status_bytes as f64 / reports.len().max(1) as f64,
        "cores_busy_serving": idle_cores,
        "cores_busy_during_rollout": rollout_cores,
        "devices_per_core_serving": idle_cores.map(|c| devices as f64 / c),
        "rss_kib": fleet.rss_kib().0,
        "canaries": canaries.len(),
    });
    println!("{}", serde_json::to_string_pretty(&figures)?);
    fleet.shutdown();
    Ok(())
}
