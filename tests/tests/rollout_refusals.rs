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
//! publisher: a [`Rogue`] MQTT client that holds the fleet's trusted key, publishes its
//! own signed documents and answers chunk requests as it likes.
//!
//! The process tests need `perch` and `perchd` built beside this test (`cargo test
//! --workspace` builds them).

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

#[test]
fn a_device_killed_mid_download_resumes_from_its_last_good_chunk_and_completes_while_the_old_model_serves(
) {
    let dir = tempfile::tempdir().unwrap();
    let test = "a_device_killed_mid_download_resumes_from_its_last_good_chunk_and_completes_while_the_old_model_serves";
    let mosquitto = mosquitto_if_installed(test, dir.path());
    let (fixture, fleet) = small_fleet_on(dir.path(), 1, 1, mosquitto.as_ref());
    fleet.traffic().set_rate(20.0);
    let device = fleet.devices().remove(0);
    assert!(device.process);
    let id = device.id.clone();

    // The new release: models/anomaly-ae (about 1.1 MB) as `anomaly 2.0.0`, sequence 2,
    // fetched in 1 KiB chunks, each written and fsynced: over a thousand round trips.
    // No error-rate limit: the traffic driver learns of the swap from the device's next
    // metrics report, and requests shaped for digits that reach anomaly in between are
    // refused by it; with four requests an interval, one would breach any limit.
    let slo = Slo {
        p99_ms: Some(1000.0),
        ..Default::default()
    };
    let bytes = pack_bundle(
        &perch_tests::models_dir().join("anomaly-ae"),
        "anomaly",
        "2.0.0",
        2,
        &slo,
        &fixture.key.signing,
    )
    .unwrap();
    let bundle = dir.path().join("anomaly-2.0.0.perch");
    write_file(&bundle, &bytes).unwrap();
    let described = BundleRef::describe("anomaly", "2.0.0", 2, &bytes, MIN_CHUNK_SIZE);
    let chunks = described.chunk_count();
    assert!(chunks > 500, "{chunks} chunks is too few to stop half-way");
    // Once the device serves it, the driver sends it the new model's golden input.
    fleet
        .traffic()
        .add_request(Request::from_bundle(&bundle).unwrap());

    let rollout_id = "resume-after-kill";
    let old_ok_before = answered_by(&fleet, &id, OLD).0;
    let started = Instant::now();
    let _operator = fleet
        .operator(
            &bundle,
            &fixture.key.secret_path,
            &quick_rollout(rollout_id),
        )
        .unwrap();

    fleet
        .wait_until("a downloading report at 10 % or more", PATIENCE, |view| {
            view.device(&id)
                .and_then(|d| d.rollout.as_ref())
                .is_some_and(|s| {
                    s.rollout_id == rollout_id
                        && (s.state != DeviceState::Downloading
                            || s.progress_pct.is_some_and(|p| p >= 10))
                })
        })
        .unwrap();
    let status = rollout_of(&fleet, &id).unwrap();
    assert_eq!(
        status.state,
        DeviceState::Downloading,
        "the download ended before it could be interrupted: {status:?}"
    );
    // Meanwhile the old model serves, without errors.
    let at_kill = fleet.observer().device(&id).unwrap();
    assert_eq!(at_kill.version.as_deref(), Some(OLD));
    assert_eq!(status.serving, format!("digits {OLD}"));
    let to_kill = started.elapsed();
    fleet.kill_9(0).unwrap();

    // On disk: a partial download, a prefix of the bundle in whole chunks at least.
    let part = std::fs::read(device.ota_dir.join("download.part")).unwrap();
    assert!(
        !part.is_empty() && (part.len() as u64) < described.size,
        "download.part holds {} of {} bytes",
        part.len(),
        described.size
    );
    let good = (0..chunks)
        .take_while(|&i| {
            described.chunk_range(i).is_some_and(|r| {
                r.end as usize <= part.len()
                    && described.chunk_matches(i, &part[r.start as usize..r.end as usize])
            })
        })
        .count() as u32;
    assert!(
        good >= chunks / 10,
        "{good} good chunks on disk of {chunks}"
    );

    fleet.restart(0).unwrap();
    let restarted = Instant::now();
    fleet
        .wait_until(
            "the restarted device to activate anomaly 2.0.0 and report it in its metrics",
            PATIENCE,
            |view| {
                view.device(&id).is_some_and(|d| {
                    d.version.as_deref() == Some("2.0.0")
                        && d.rollout.as_ref().is_some_and(|s| {
                            matches!(s.state, DeviceState::Active | DeviceState::Confirmed)
                        })
                })
            },
        )
        .unwrap();

    eprintln!(
        "{} broker, {chunks} chunks of 1 KiB: killed {:.1}s after the start with {good} on disk; \
         active {:.1}s after the restart",
        if mosquitto.is_some() {
            "mosquitto"
        } else {
            "embedded"
        },
        to_kill.as_secs_f64(),
        restarted.elapsed().as_secs_f64()
    );
    // It resumed where the good chunks on disk end, not from the start.
    let log = std::fs::read_to_string(device.dir.join("perchd.log")).unwrap();
    let needle = format!("rollout {rollout_id}: resuming the download at chunk ");
    let line = log
        .lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("no {needle:?} in the log:\n{log}"));
    let resumed: u32 = line
        .split(&needle)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no chunk number in {line:?}"));
    assert!(resumed > 0, "{line}");
    assert_eq!(resumed, good, "{line}");
    assert!(line.ends_with(&format!("of {chunks}")), "{line}");

    let view = fleet.observer().device(&id).unwrap();
    assert_eq!(view.model.as_deref(), Some("anomaly"));
    assert_eq!(view.boot_count, Some(2));
    let states = states_of(&fleet, &id, rollout_id);
    assert_eq!(
        states.first(),
        Some(&DeviceState::Downloading),
        "{states:?}"
    );
    assert!(
        states.contains(&DeviceState::Verifying) && !states.contains(&DeviceState::Failed),
        "{states:?}"
    );
    // While it downloaded (before and after the crash) and verified, the old model
    // answered, without an error: its own reports say so, under the version that served.
    let (old_ok, old_errors) = answered_by(&fleet, &id, OLD);
    assert!(
        old_ok > old_ok_before,
        "1.0.0 answered nothing during the rollout"
    );
    assert_eq!(old_errors, 0, "1.0.0 answered with errors");
    // The new model answers its own requests right, and no more errors come (once the
    // driver has seen 2.0.0 in a report and what it sent before was answered).
    let reports = fleet.observer().device(&id).unwrap().reports;
    fleet
        .wait_until("two more metrics reports", PATIENCE, |view| {
            view.device(&id).is_some_and(|d| d.reports >= reports + 2)
        })
        .unwrap();
    let before = fleet.traffic().counts(&id);
    fleet
        .wait_until("20 more answers from anomaly 2.0.0", PATIENCE, |_| {
            fleet.traffic().counts(&id).ok >= before.ok + 20
        })
        .unwrap();
    let after = fleet.traffic().counts(&id);
    assert_eq!(after.errors, before.errors, "{after:?}");
    assert_eq!(after.wrong, 0, "{after:?}");
    assert!(answered_by(&fleet, &id, "2.0.0").0 > 0);
    assert!(fleet.failures().is_empty(), "{:?}", fleet.failures());
}

/// `(ok, errors)` in the device's metrics reports naming `version`.
fn answered_by(fleet: &Fleet, device: &str, version: &str) -> (u64, u64) {
    fleet
        .observer()
        .device(device)
        .and_then(|d| d.by_version.get(version).copied())
        .unwrap_or_default()
}

#[test]
fn a_rollout_signed_with_a_key_the_devices_do_not_trust_is_refused_and_every_device_reports_why() {
    let dir = tempfile::tempdir().unwrap();
    let (_fixture, fleet) = small_fleet(dir.path(), 3, 0);
    let ids = fleet.device_ids();
    // An operator with its own key: the bundle and the documents are signed by it.
    let stranger = FleetKey::generate(&dir.path().join("stranger")).unwrap();
    let (bundle, _) = digits_bundle(dir.path(), "2.0.0", 2, &stranger.signing);
    let rollout_id = "untrusted-key";
    let _operator = fleet
        .operator(&bundle, &stranger.secret_path, &quick_rollout(rollout_id))
        .unwrap();

    let reports = wait_failed(&fleet, &ids, rollout_id, "not a trusted key");
    let stranger_id = perch_runtime::bundle::key_id(&stranger.signing.verifying_key());
    for (id, report) in ids.iter().zip(&reports) {
        let reason = report.reason.as_deref().unwrap();
        assert!(reason.contains(&stranger_id), "{reason}");
        assert_eq!(report.device, *id);
        assert_eq!(
            report.bucket,
            canary::bucket(id.as_bytes(), rollout_id.as_bytes())
        );
        assert_eq!(report.serving, format!("digits {OLD}"));
    }
    assert_old_model_still_serves(&fleet, &ids);
    for id in &ids {
        // Never a download: the document was not acted on.
        let states = states_of(&fleet, id, rollout_id);
        assert!(
            states.iter().all(|s| *s == DeviceState::Failed),
            "{id}: {states:?}"
        );
        let view = fleet.observer().device(id).unwrap();
        assert_eq!(view.duplicate_rollout_reports, 0, "{id}");
    }
    assert!(!fleet.devices()[0].ota_dir.join("download.part").exists());
}

#[test]
fn a_bundle_with_an_older_sequence_number_is_downloaded_then_refused_and_the_old_model_serves() {
    let dir = tempfile::tempdir().unwrap();
    let (fixture, fleet) = small_fleet(dir.path(), 3, 0);
    let ids = fleet.device_ids();
    // Another version, genuinely signed, but the sequence of the bundle they run.
    let (bundle, _) = digits_bundle(dir.path(), "1.1.0", 1, &fixture.key.signing);
    let rollout_id = "older-sequence";
    let _operator = fleet
        .operator(
            &bundle,
            &fixture.key.secret_path,
            &quick_rollout(rollout_id),
        )
        .unwrap();

    let reports = wait_failed(&fleet, &ids, rollout_id, "older sequence");
    for (id, report) in ids.iter().zip(&reports) {
        assert_eq!((report.version.as_str(), report.sequence), ("1.1.0", 1));
        assert_eq!(report.serving, format!("digits {OLD}"), "{id}");
        let states = states_of(&fleet, id, rollout_id);
        assert!(
            states.contains(&DeviceState::Downloading) && states.contains(&DeviceState::Verifying),
            "{id} refused it only after downloading it: {states:?}"
        );
        assert!(!states.contains(&DeviceState::Active), "{id}: {states:?}");
    }
    assert_old_model_still_serves(&fleet, &ids);
}

/// A publisher holding the fleet's trusted key that does not play by the operator's
/// rules: it publishes the documents it signs (retained, QoS 1) and answers chunk
/// requests from `bundle`, passing each copy it sends through `tamper` first.
struct Rogue {
    client: Client,
    stop: Arc<AtomicBool>,
    /// Copies of each chunk index sent so far.
    served: Arc<Mutex<BTreeMap<u32, u32>>>,
    thread: Option<JoinHandle<()>>,
}

/// Changes chunk `index`'s bytes, the `copy`-th time (from 1) it is sent.
type Tamper = fn(index: u32, copy: u32, data: &mut Vec<u8>);

impl Rogue {
    fn start(fleet: &Fleet, bundle: Vec<u8>, chunk_size: u32, tamper: Tamper) -> Rogue {
        let (host, port) = fleet.broker();
        let mut options = MqttOptions::new("rogue-publisher", host, port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut connection) = Client::new(options, 1024);
        // Small requests answered by small replies: without TCP_NODELAY each round trip
        // may wait for a delayed ACK.
        let mut network = connection.eventloop.network_options();
        network.set_tcp_nodelay(true);
        connection.eventloop.set_network_options(network);
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(BTreeMap::new()));
        let subscribed = Arc::new(AtomicBool::new(false));
        let thread = {
            let (client, stop, served, subscribed) = (
                client.clone(),
                stop.clone(),
                served.clone(),
                subscribed.clone(),
            );
            std::thread::spawn(move || {
                let requests = DeviceTopic::ChunkRequest.filter();
                for event in connection.iter() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let packet = match event {
                        Ok(Event::Incoming(packet)) => packet,
                        Ok(Event::Outgoing(_)) => continue,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    };
                    match packet {
                        Packet::ConnAck(_) => {
                            client
                                .try_subscribe(requests.as_str(), QoS::AtMostOnce)
                                .unwrap();
                        }
                        Packet::SubAck(_) => subscribed.store(true, Ordering::Relaxed),
                        Packet::Publish(publish) => {
                            let Some(device) = publish
                                .topic
                                .strip_prefix("perch/")
                                .and_then(|t| t.strip_suffix("/ota/req"))
                            else {
                                continue;
                            };
                            let request: ChunkRequest =
                                serde_json::from_slice(&publish.payload).unwrap();
                            let start = request.index as usize * chunk_size as usize;
                            let end = (start + chunk_size as usize).min(bundle.len());
                            if start >= end {
                                continue;
                            }
                            let copy = {
                                let mut served = served.lock().unwrap();
                                let copy = served.entry(request.index).or_insert(0);
                                *copy += 1;
                                *copy
                            };
                            let mut data = bundle[start..end].to_vec();
                            tamper(request.index, copy, &mut data);
                            let frame = encode_chunk(&request.rollout_id, request.index, &data);
                            client
                                .try_publish(
                                    DeviceTopic::Chunk.of(device),
                                    QoS::AtMostOnce,
                                    false,
                                    frame,
                                )
                                .unwrap();
                        }
                        _ => {}
                    }
                }
            })
        };
        let deadline = Instant::now() + PATIENCE;
        while !subscribed.load(Ordering::Relaxed) {
            assert!(Instant::now() < deadline, "the rogue could not subscribe");
            std::thread::sleep(Duration::from_millis(10));
        }
        Rogue {
            client,
            stop,
            served,
            thread: Some(thread),
        }
    }

    /// Publishes a signed document on `group`'s topic, retained, as the operator does.
    fn publish(&self, group: &str, signed: Vec<u8>) {
        self.client
            .try_publish(
                topics::rollout_document(group),
                QoS::AtLeastOnce,
                true,
                signed,
            )
            .unwrap();
    }

    /// Copies of each chunk sent so far.
    fn served(&self) -> BTreeMap<u32, u32> {
        self.served.lock().unwrap().clone()
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.client.try_disconnect();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A document for the fleet's group putting every device in the cohort of
/// `rollout_id`, with a one-second device soak.
fn document(
    fleet: &Fleet,
    rollout_id: &str,
    revision: u64,
    phase: Phase,
    bundle: BundleRef,
) -> RolloutDocument {
    RolloutDocument {
        format: FORMAT,
        group: fleet.config().group.clone(),
        rollout_id: rollout_id.to_string(),
        revision,
        issued: "2026-11-26T12:00:00Z".into(),
        phase,
        percent_bp: canary::BUCKETS,
        soak_s: 1,
        soak_min_requests: 5,
        fresh_s: 0,
        bundle,
    }
}

/// The chunk the tampered-chunk tests damage.
const DAMAGED: u32 = 3;

/// How long the fleet's downloads wait for a good copy of a chunk.
const STALL: Duration = Duration::from_secs(4);

#[test]
fn a_chunk_that_never_arrives_intact_fails_the_rollout_past_the_stall_timeout_and_the_old_model_serves(
) {
    let dir = tempfile::tempdir().unwrap();
    let (fixture, fleet) = small_fleet(dir.path(), 2, 0);
    let ids = fleet.device_ids();
    let (_, bytes) = digits_bundle(dir.path(), "2.0.0", 2, &fixture.key.signing);
    let described = BundleRef::describe("digits", "2.0.0", 2, &bytes, MIN_CHUNK_SIZE);
    assert!(described.chunk_count() > DAMAGED + 1);
    // Every copy of chunk 3 it sends has one byte flipped.
    let rogue = Rogue::start(&fleet, bytes, MIN_CHUNK_SIZE, |index, _, data| {
        if index == DAMAGED {
            data[100] ^= 0x5a;
        }
    });
    let rollout_id = "tampered-chunk";
    let doc = document(&fleet, rollout_id, 1_000, Phase::Running, described);
    rogue.publish(&fleet.config().group, doc.sign(&fixture.key.signing));

    let started = Instant::now();
    let reports = wait_failed(
        &fleet,
        &ids,
        rollout_id,
        &format!("no good copy of chunk {DAMAGED} arrived within 4 s"),
    );
    assert!(
        started.elapsed() >= STALL,
        "failed before the stall timeout"
    );
    for report in &reports {
        let reason = report.reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains("copies failed their hash check"),
            "{reason}"
        );
    }
    let served = rogue.served();
    // Each device dropped the damaged copies and asked again, ever later; the chunks
    // after it were never asked for.
    assert!(served[&DAMAGED] >= 2 * ids.len() as u32, "{served:?}");
    assert!(!served.contains_key(&(DAMAGED + 1)), "{served:?}");
    assert!(!fleet.devices()[0].ota_dir.join("download.part").exists());
    assert_old_model_still_serves(&fleet, &ids);
}

#[test]
fn a_chunk_damaged_only_in_its_first_copy_is_requested_again_and_the_rollout_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (fixture, fleet) = small_fleet(dir.path(), 2, 0);
    let ids = fleet.device_ids();
    let (_, bytes) = digits_bundle(dir.path(), "2.0.0", 2, &fixture.key.signing);
    let described = BundleRef::describe("digits", "2.0.0", 2, &bytes, MIN_CHUNK_SIZE);
    let chunks = described.chunk_count();
    // The first copy of every chunk is damaged; the copies after it are genuine.
    let rogue = Rogue::start(&fleet, bytes, MIN_CHUNK_SIZE, |_, copy, data| {
        if copy == 1 {
            data[0] ^= 0xff;
        }
    });
    let rollout_id = "first-copy-damaged";
    let doc = document(&fleet, rollout_id, 1_000, Phase::Running, described);
    rogue.publish(&fleet.config().group, doc.sign(&fixture.key.signing));

    fleet
        .wait_until(
            "every device to confirm digits 2.0.0 and report it in its metrics",
            PATIENCE,
            |view| {
                ids.iter().all(|id| {
                    view.device(id).is_some_and(|d| {
                        d.version.as_deref() == Some("2.0.0")
                            && d.state() == Some(DeviceState::Confirmed)
                    })
                })
            },
        )
        .unwrap();
    let served = rogue.served();
    assert_eq!(served.len(), chunks as usize, "{served:?}");
    assert!(
        served.values().all(|&n| n >= 2),
        "every chunk twice: {served:?}"
    );
    for id in &ids {
        let states = states_of(&fleet, id, rollout_id);
        assert!(!states.contains(&DeviceState::Failed), "{id}: {states:?}");
        let traffic = fleet.traffic().counts(id);
        assert_eq!((traffic.errors, traffic.wrong), (0, 0), "{id}: {traffic:?}");
    }
    assert!(fleet.failures().is_empty(), "{:?}", fleet.failures());
}

#[test]
fn a_truncated_bundle_described_honestly_is_downloaded_then_refused_at_install() {
    let dir = tempfile::tempdir().unwrap();
    let (fixture, fleet) = small_fleet(dir.path(), 2, 0);
    let ids = fleet.device_ids();
    let (_, mut bytes) = digits_bundle(dir.path(), "2.0.0", 2, &fixture.key.signing);
    // A publisher that lost the end of the file, then hashed what it had.
    bytes.truncate(bytes.len() - 1500);
    let described = BundleRef::describe("digits", "2.0.0", 2, &bytes, MIN_CHUNK_SIZE);
    let rogue = Rogue::start(&fleet, bytes, MIN_CHUNK_SIZE, |_, _, _| {});
    let rollout_id = "truncated-bundle";
    let doc = document(&fleet, rollout_id, 1_000, Phase::Running, described);
    rogue.publish(&fleet.config().group, doc.sign(&fixture.key.signing));

    fleet
        .wait_until(
            "every device to refuse the truncated bundle",
            PATIENCE,
            |view| {
                ids.iter().all(|id| {
                    view.device(id)
                        .and_then(|d| d.rollout.as_ref())
                        .is_some_and(|s| {
                            s.rollout_id == rollout_id && s.state == DeviceState::Failed
                        })
                })
            },
        )
        .unwrap();
    for id in &ids {
        let report = rollout_of(&fleet, id).unwrap();
        let reason = report.reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains("the bundle is invalid") && reason.contains("truncated"),
            "{id}: {reason}"
        );
        let states = states_of(&fleet, id, rollout_id);
        assert!(states.contains(&DeviceState::Verifying), "{id}: {states:?}");
    }
    assert_old_model_still_serves(&fleet, &ids);
}

#[test]
fn a_replayed_older_rollout_document_is_refused_reported_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (fixture, fleet) = small_fleet(dir.path(), 2, 0);
    let ids = fleet.device_ids();
    let group = fleet.config().group.clone();
    let (_, bytes) = digits_bundle(dir.path(), "2.0.0", 2, &fixture.key.signing);
    let described = BundleRef::describe("digits", "2.0.0", 2, &bytes, MIN_CHUNK_SIZE);
    let rogue = Rogue::start(&fleet, bytes, MIN_CHUNK_SIZE, |_, _, _| {});
    let rollout_id = "replayed-document";
    let key = &fixture.key.signing;
    // Three genuine revisions: an abort order, then the rollout runs, then completes.
    let aborted = document(&fleet, rollout_id, 1_000, Phase::Aborted, described.clone()).sign(key);
    let running = document(&fleet, rollout_id, 2_000, Phase::Running, described.clone());
    let completed = document(&fleet, rollout_id, 3_000, Phase::Completed, described);
    // One publisher, one topic, QoS 1: the devices get them in this order.
    rogue.publish(&group, aborted.clone());
    rogue.publish(&group, running.sign(key));
    fleet
        .wait_until("every device to activate 2.0.0", PATIENCE, |view| {
            ids.iter().all(|id| {
                view.device(id).is_some_and(|d| {
                    d.version.as_deref() == Some("2.0.0")
                        && matches!(
                            d.state(),
                            Some(DeviceState::Active | DeviceState::Confirmed)
                        )
                })
            })
        })
        .unwrap();
    rogue.publish(&group, completed.sign(key));
    fleet
        .wait_until("every device to confirm 2.0.0", PATIENCE, |view| {
            ids.iter().all(|id| {
                view.device(id)
                    .is_some_and(|d| d.state() == Some(DeviceState::Confirmed))
            })
        })
        .unwrap();

    // Someone replays the abort order: were it obeyed, every device would roll back.
    rogue.publish(&group, aborted);
    let needle = "replayed rollout document (revision 1000, already acted on 3000)";
    fleet
        .wait_until(
            "every device to re-report with the replay's reason",
            PATIENCE,
            |view| {
                ids.iter().all(|id| {
                    view.device(id)
                        .and_then(|d| d.rollout.as_ref())
                        .is_some_and(|s| s.reason.as_deref() == Some(needle))
                })
            },
        )
        .unwrap();
    for id in &ids {
        let report = rollout_of(&fleet, id).unwrap();
        assert_eq!(
            report.state,
            DeviceState::Confirmed,
            "{id}: nothing changed"
        );
        assert_eq!(report.revision, 3_000, "{id}");
        assert_eq!(report.serving, "digits 2.0.0", "{id}");
    }
    // And it goes on serving the new model.
    let reports: BTreeMap<String, u64> = ids
        .iter()
        .map(|id| (id.clone(), fleet.observer().device(id).unwrap().reports))
        .collect();
    fleet
        .wait_until(
            "three more metrics reports from every device",
            PATIENCE,
            |view| {
                ids.iter().all(|id| {
                    view.device(id)
                        .is_some_and(|d| d.reports >= reports[id] + 3)
                })
            },
        )
        .unwrap();
    for id in &ids {
        let view = fleet.observer().device(id).unwrap();
        assert_eq!(view.version.as_deref(), Some("2.0.0"), "{id}");
        assert!(
            !states_of(&fleet, id, rollout_id).contains(&DeviceState::RolledBack),
            "{id}"
        );
        let traffic = fleet.traffic().counts(id);
        assert_eq!((traffic.errors, traffic.wrong), (0, 0), "{id}: {traffic:?}");
    }
    assert!(fleet.failures().is_empty(), "{:?}", fleet.failures());
}
