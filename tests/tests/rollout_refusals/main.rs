//! Over-the-air updates that must not go through, or must survive a crash, on the fleet
//! simulator with the real agent, real bundles and real signatures:
//!
//! - a `perchd` process killed with SIGKILL in the middle of a download resumes from
//!   its last good chunk and completes, the old model serving meanwhile;
//! - a rollout signed with an untrusted key, a bundle with an older sequence number, a
//!   tampered chunk, a truncated bundle and a replayed rollout document are refused,
//!   each reported on `perch/{device}/rollout` with its reason, the old model still
//!   serving.
//!
//! The genuine operator (`perch rollout start`, a process) refuses to serve a broken
//! bundle, so the tampered-chunk, truncated-bundle and replay tests play a compromised
//! publisher: a [`rogue_publisher::Rogue`] MQTT client that holds the fleet's trusted
//! key, publishes its own signed documents and answers chunk requests as it likes.
//!
//! The process tests need `perch` and `perchd` built beside this test (`cargo test
//! --workspace` builds them).

mod operator_releases;
mod resume;
mod rogue_publisher;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use perch_mqtt::topics::{self, DeviceTopic};
use perch_runtime::bundle::{SigningKey, Slo};
use perch_runtime::canary;
use perch_runtime::rollout::{
    encode_chunk, BundleRef, ChunkRequest, DeviceState, DeviceStatus, Phase, RolloutDocument,
    FORMAT, MIN_CHUNK_SIZE,
};
use perch_testkit::{Mosquitto, Port};
use perch_tests::sim::{
    digits_slo, pack_bundle, write_file, BrokerSpec, Fleet, FleetConfig, FleetFixture, FleetKey,
    Request,
};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

/// Long enough for a slow, shared CI machine; waits end as soon as their condition
/// holds.
const PATIENCE: Duration = Duration::from_secs(90);

/// The version every fleet starts on ([`FleetFixture::digits`]).
const OLD: &str = "1.0.0";

/// A small fleet on the embedded broker serving digits 1.0.0, reporting every 250 ms,
/// each device receiving 8 requests a second, chunks re-requested after 300 ms.
fn small_fleet(dir: &Path, devices: usize, processes: usize) -> (FleetFixture, Fleet) {
    small_fleet_on(dir, devices, processes, None)
}

/// [`small_fleet`] on `mosquitto` if given, else on the embedded broker.
fn small_fleet_on(
    dir: &Path,
    devices: usize,
    processes: usize,
    mosquitto: Option<&Mosquitto>,
) -> (FleetFixture, Fleet) {
    let fixture = FleetFixture::digits(dir).unwrap();
    let mut config = FleetConfig::new(devices, &fixture.bundle, &fixture.key.public_path, dir);
    config.processes = processes;
    if let Some(broker) = mosquitto {
        config.broker = BrokerSpec::External {
            host: "127.0.0.1".into(),
            port: broker.port(),
        };
    }
    config.report_interval = Duration::from_millis(250);
    config.chunk_timeout = Duration::from_millis(300);
    config.stall_timeout = STALL;
    config.rate = 8.0;
    let fleet = Fleet::start(config).unwrap();
    fleet.wait_all_reporting(OLD, PATIENCE).unwrap();
    (fixture, fleet)
}

/// Packs models/digits-mlp as `digits VERSION` with `sequence`, signed by `key`, into
/// `dir`; returns the file and its bytes.
fn digits_bundle(dir: &Path, version: &str, sequence: u64, key: &SigningKey) -> (PathBuf, Vec<u8>) {
    let bytes = pack_bundle(
        &perch_tests::models_dir().join("digits-mlp"),
        "digits",
        version,
        sequence,
        &digits_slo(),
        key,
    )
    .unwrap();
    let path = dir.join(format!("digits-{version}-{sequence}.perch"));
    write_file(&path, &bytes).unwrap();
    (path, bytes)
}

/// The arguments of `perch rollout start` that put every device in the first (and
/// only) stage, with short soaks and 1 KiB chunks.
fn quick_rollout(rollout_id: &str) -> Vec<&str> {
    vec![
        "--stages",
        "100",
        "--soak",
        "1s",
        "--device-soak",
        "1s",
        "--device-soak-requests",
        "5",
        "--chunk-size",
        "1KiB",
        "--rollout-id",
        rollout_id,
    ]
}

/// The device's latest rollout report.
fn rollout_of(fleet: &Fleet, device: &str) -> Option<DeviceStatus> {
    fleet.observer().device(device).and_then(|d| d.rollout)
}

/// Waits until every device in `ids` reports `failed` for `rollout_id` with a reason
/// containing `needle`; returns the reports.
fn wait_failed(fleet: &Fleet, ids: &[String], rollout_id: &str, needle: &str) -> Vec<DeviceStatus> {
    fleet
        .wait_until(
            &format!("every device to report {rollout_id} failed with {needle:?}"),
            PATIENCE,
            |view| {
                ids.iter().all(|id| {
                    view.device(id)
                        .and_then(|d| d.rollout.as_ref())
                        .is_some_and(|s| {
                            s.rollout_id == rollout_id
                                && s.state == DeviceState::Failed
                                && s.reason.as_deref().is_some_and(|r| r.contains(needle))
                        })
                })
            },
        )
        .unwrap();
    ids.iter()
        .map(|id| rollout_of(fleet, id).unwrap())
        .collect()
}

/// Asserts that every device in `ids` goes on serving the old model after a refusal:
/// three more metrics reports each, all naming 1.0.0, more requests answered, and no
/// error or wrong answer at any time.
fn assert_old_model_still_serves(fleet: &Fleet, ids: &[String]) {
    let before: BTreeMap<String, (u64, u64)> = ids
        .iter()
        .map(|id| {
            let reports = fleet.observer().device(id).map_or(0, |d| d.reports);
            (id.clone(), (reports, fleet.traffic().counts(id).ok))
        })
        .collect();
    fleet
        .wait_until(
            "three more metrics reports and more answers from every device",
            PATIENCE,
            |view| {
                ids.iter().all(|id| {
                    let (reports, ok) = before[id];
                    view.device(id).is_some_and(|d| d.reports >= reports + 3)
                        && fleet.traffic().counts(id).ok > ok
                })
            },
        )
        .unwrap();
    let view = fleet.view();
    for id in ids {
        let device = view.device(id).unwrap();
        assert_eq!(
            device.version.as_deref(),
            Some(OLD),
            "{id} serves another version"
        );
        assert_eq!(device.model.as_deref(), Some("digits"), "{id}");
        assert_eq!(device.errors, 0, "{id}: its metrics count errors");
        let traffic = fleet.traffic().counts(id);
        assert_eq!((traffic.errors, traffic.wrong), (0, 0), "{id}: {traffic:?}");
    }
    assert!(fleet.failures().is_empty(), "{:?}", fleet.failures());
}

/// Everything `rollout_id`'s reports said about a device, in arrival order.
fn states_of(fleet: &Fleet, device: &str, rollout_id: &str) -> Vec<DeviceState> {
    fleet
        .observer()
        .device(device)
        .map(|d| {
            d.history
                .iter()
                .filter(|(id, _)| id == rollout_id)
                .map(|(_, s)| *s)
                .collect()
        })
        .unwrap_or_default()
}

/// mosquitto on a reserved port when it is installed (or when CI requires it:
/// `PERCH_REQUIRE_MOSQUITTO=1`), else `None` for the embedded broker.
///
/// The kill test runs on mosquitto where it is installed, so the embedded broker and
/// mosquitto are both exercised by this file.
fn mosquitto_if_installed(test: &str, dir: &Path) -> Option<Mosquitto> {
    let port = Port::reserve();
    let listener = format!("listener {} 127.0.0.1\nallow_anonymous true\n", port.get());
    let without = "runs on the embedded broker instead";
    Mosquitto::start_with(test, &dir.join("mosquitto"), vec![port], &listener, without)
}

/// How long the fleet's downloads wait for a good copy of a chunk.
const STALL: Duration = Duration::from_secs(4);
