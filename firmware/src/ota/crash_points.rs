//! Crash-point tests: a rollout is run once to learn how many of the updater's actions
//! write to disk (the machine's state file, chunks, the install, confirmation,
//! roll-back, discarding the download), then once per such write with the agent
//! stopped right after it: nothing more is carried out, the updater is dropped and
//! opened again from the files on disk, as `perchd` would be by systemd. After every
//! restart the device must serve a verified model (the slot `boot` names loads and
//! verifies, or the configured model serves), and every run must end where the
//! uninterrupted one did.

use std::path::Path;
use std::time::Duration;

use perch_runtime::bundle::SigningKey;
use perch_runtime::histogram::Histogram;
use perch_runtime::rollout::{encode_chunk, ChunkRequest, DeviceState};

use super::updater::{Effect, Event, OtaConfig, Updater};

const CONFIGURED: &str = "kws 1.2.0";

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn open(dir: &Path) -> Updater {
    let config = OtaConfig {
        dir: dir.to_path_buf(),
        group: "kitchen".into(),
        chunk_timeout: Duration::from_secs(5),
        stall_timeout: Duration::from_secs(600),
        max_probation_boots: 3,
        warmup_runs: 1,
        install_timeout: Duration::from_secs(600),
        model: None,
        slo: Default::default(),
    };
    Updater::open(config, "pi-1", vec![key().verifying_key()]).unwrap()
}

/// Where a run ended: the machine's state, the slot serving (sequence) and whether on
/// probation, and whether `boot` serves a slot or the configured model.
type End = (Option<DeviceState>, Option<u64>, bool, bool);

/// A rollout of `bundle` to the whole group, soaked with requests of `latency_ms`,
/// with the agent stopped after its `crash`-th disk write (`None`: never). Returns
/// where it ended, how many disk writes the first run made and whether it stopped.
fn run(bundle: &[u8], latency_ms: f64, crash: Option<usize>) -> (End, usize, bool) {
    let dir = tempfile::tempdir().unwrap();
    let doc = crate::testing::kws_release("kws-1.3.0", "1.3.0", 2, bundle, 100);
    let signed = doc.sign(&key());
    let mut latency = Histogram::new();
    for _ in 0..100 {
        latency.record(Duration::from_secs_f64(latency_ms / 1e3));
    }
    let mut updater = open(dir.path());
    updater.crash.stop_after = crash;
    let mut pending = start(&mut updater);
    let mut first_run_writes = None;
    let mut now = 0;
    for _round in 0..40 {
        if updater.crash.stopped() {
            first_run_writes.get_or_insert(updater.crash.writes);
            drop(updater);
            updater = open(dir.path());
            pending = start(&mut updater);
        }
        let state = updater.state().state;
        if matches!(
            state,
            Some(DeviceState::Confirmed | DeviceState::RolledBack | DeviceState::Failed)
        ) {
            break;
        }
        // The broker delivers the retained document (again), time passes, the
        // operator answers chunk requests, and requests are served.
        pending.extend(updater.handle_at(Event::Document(&signed), now));
        pending.extend(updater.handle_at(Event::Tick, now));
        while let Some(request) = chunk_request(&mut pending) {
            if updater.crash.stopped() {
                break;
            }
            let range = doc.bundle.chunk_range(request.index).unwrap();
            let data = &bundle[range.start as usize..range.end as usize];
            let frame = encode_chunk(&request.rollout_id, request.index, data);
            pending.extend(updater.handle_at(Event::Chunk(&frame), now));
        }
        if !updater.crash.stopped() {
            let interval = Event::Interval {
                ok: 100,
                errors: 0,
                latency: &latency,
            };
            pending.extend(updater.handle_at(interval, now));
        }
        now += 31_000;
    }
    let stopped = first_run_writes.is_some();
    let writes = first_run_writes.unwrap_or(updater.crash.writes);
    drop(updater);
    // One more start: the end state is what the files say.
    let mut updater = open(dir.path());
    let serves_slot = updater.boot().unwrap().serve.is_some();
    let slots = updater.slots().state();
    let active = slots.active.and_then(|slot| {
        let content = updater.slots().active().filter(|(s, _, _)| *s == slot)?.1;
        Some(content.sequence)
    });
    let end = (updater.state().state, active, slots.probation, serves_slot);
    (end, writes, stopped)
}

/// Starts the agent: boot, then load what it says to serve, which must verify.
fn start(updater: &mut Updater) -> Vec<Effect> {
    let boot = updater.boot().unwrap();
    match boot.serve {
        Some(path) => {
            let loaded = updater
                .load_slot(path.clone())
                .unwrap_or_else(|e| panic!("the slot {} does not load: {e}", path.display()));
            updater.set_serving(&format!("{} {}", loaded.id.name, loaded.id.version));
        }
        None => updater.set_serving(CONFIGURED),
    }
    boot.effects
}

/// Takes the first chunk request out of `effects`.
fn chunk_request(effects: &mut Vec<Effect>) -> Option<ChunkRequest> {
    let at = effects
        .iter()
        .position(|e| matches!(e, Effect::Publish { .. }))?;
    match effects.remove(at) {
        Effect::Publish { payload, .. } => serde_json::from_slice(&payload).ok(),
        _ => None,
    }
}

/// Runs the rollout uninterrupted, then stopped after each of its disk writes, and
/// checks every run ends as the first.
fn every_crash_point_ends_as_the_uninterrupted_run(latency_ms: f64, expected: End) {
    let bundle = crate::testing::pack_kws(&key(), 2, "1.3.0")
        .as_bytes()
        .to_vec();
    let (end, writes, stopped) = run(&bundle, latency_ms, None);
    assert_eq!(end, expected, "the uninterrupted run");
    assert!(!stopped);
    assert!(writes > 10, "{writes} writes");
    for crash in 1..=writes {
        let (end, _, stopped) = run(&bundle, latency_ms, Some(crash));
        assert!(stopped, "disk write {crash} of {writes} never came");
        assert_eq!(
            end, expected,
            "stopped after disk write {crash} of {writes}"
        );
    }
}

#[test]
fn a_release_that_soaks_well_is_confirmed_whichever_disk_write_the_agent_stopped_after() {
    every_crash_point_ends_as_the_uninterrupted_run(
        4.0,
        (Some(DeviceState::Confirmed), Some(2), false, true),
    );
}

#[test]
fn a_release_that_breaches_its_slo_is_rolled_back_whichever_disk_write_the_agent_stopped_after() {
    every_crash_point_ends_as_the_uninterrupted_run(
        80.0,
        (Some(DeviceState::RolledBack), Some(2), false, false),
    );
}
