//! Canary rollouts end to end: the real operator (`perch rollout` as a process) over a
//! fleet of real agents (the simulator's in-process `perchd`s), on the embedded broker
//! and on mosquitto.
//!
//! - 1,000 devices: the 10 % cohort is 10 % ± 2 points, and promoting to 50 % keeps
//!   every earlier member.
//! - A good model goes through every stage to the whole group, surviving an operator
//!   killed with SIGKILL and resumed from its state folder.
//! - Canaries breaching the error-rate or the p99 gate abort the rollout before it
//!   leaves the canary stage, and every canary returns to the old model.
//! - A rollout paused by hand stays in its stage while mosquitto restarts, and completes
//!   once resumed.
//! - The operator reaches mosquitto over mqtts:// (its TLS listener, the devices on the
//!   plain one) and rolls a release out to the whole group.
//! - A made-up device reporting `rolled_back` over the broker does not abort a rollout.
//! - Devices that stop hearing fresh documents (the operator killed) freeze and say so,
//!   and thaw when the operator comes back.
//! - With `deploy/mosquitto/`'s identities and ACL, a device certificate cannot
//!   report under another device's id nor publish a rollout document.
//!
//! Needs `perch` and `perchd` built beside this test (`cargo test --workspace` builds
//! them) and, for the mosquitto test, mosquitto installed (`PERCH_REQUIRE_MOSQUITTO=1`
//! turns its absence into a failure; CI sets it).

mod cohorts_and_stages;
mod freshness;
mod gates;
mod identities;
mod mosquitto;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use perch_runtime::canary;
use perch_runtime::rollout::DeviceState;
use perch_testkit::{wait_until, Mosquitto, Port};
use perch_tests::sim::{
    digits_slo, pack_bundle, write_file, BrokerSpec, Faults, Fleet, FleetConfig, FleetFixture,
    Operator, Request,
};

/// Long enough for a slow, shared CI machine; waits end as soon as their condition
/// holds.
const PATIENCE: Duration = Duration::from_secs(120);

/// The devices among `ids` in the cohort of `rollout_id` at `basis_points`, computed
/// here from the canary hash, independently of the devices and the operator.
fn cohort(ids: &[String], rollout_id: &str, basis_points: u16) -> BTreeSet<String> {
    ids.iter()
        .filter(|d| canary::bucket(d.as_bytes(), rollout_id.as_bytes()) < basis_points)
        .cloned()
        .collect()
}

/// The first rollout id `{prefix}-{n}` whose cohorts over `ids` satisfy `wanted`
/// (a small fleet's 10 % cohort may be empty; tests pick an id whose isn't).
fn pick_rollout_id(
    ids: &[String],
    prefix: &str,
    wanted: impl Fn(&dyn Fn(u16) -> usize) -> bool,
) -> String {
    (0..10_000)
        .map(|n| format!("{prefix}-{n}"))
        .find(|id| wanted(&|bp| cohort(ids, id, bp).len()))
        .unwrap()
}

/// A new release of the fleet's digits model: R1 again, as `version` with `sequence`,
/// with a p99 SLO of 1 s: the simulator runs many devices on a few cores, and these
/// tests are not about the device's warm-up check (whose 10 ms would fail some
/// devices of a 1,000-device fleet on a 2-core machine, as it should).
fn digits_release(
    dir: &Path,
    fixture: &FleetFixture,
    version: &str,
    sequence: u64,
) -> std::path::PathBuf {
    let bytes = pack_bundle(
        &perch_tests::models_dir().join("digits-mlp"),
        "digits",
        version,
        sequence,
        &perch_runtime::bundle::Slo {
            p99_ms: Some(1_000.0),
            ..digits_slo()
        },
        &fixture.key.signing,
    )
    .unwrap();
    let path = dir.join(format!("digits-{version}.perch"));
    write_file(&path, &bytes).unwrap();
    path
}

/// A small in-process fleet with traffic, reports every 250 ms.
fn small_fleet(dir: &Path, fixture: &FleetFixture, devices: usize, broker: BrokerSpec) -> Fleet {
    let mut config = FleetConfig::new(devices, &fixture.bundle, &fixture.key.public_path, dir);
    config.report_interval = Duration::from_millis(250);
    config.rate = 20.0;
    config.chunk_timeout = Duration::from_millis(500);
    config.broker = broker;
    let fleet = Fleet::start(config).unwrap();
    fleet.wait_all_reporting("1.0.0", PATIENCE).unwrap();
    fleet
}

/// Waits until every device of `devices` has activated the release or failed to, then
/// fails the test naming the devices that failed and why.
fn wait_activated(fleet: &Fleet, devices: &BTreeSet<String>, what: &str) {
    fleet
        .wait_until(
            &format!("{what} to activate the release"),
            PATIENCE,
            |view| {
                devices.iter().all(|id| {
                    matches!(
                        view.device(id).and_then(|d| d.state()),
                        Some(DeviceState::Active | DeviceState::Failed)
                    )
                })
            },
        )
        .unwrap();
    let failed: Vec<_> = devices
        .iter()
        .filter_map(|id| {
            let status = fleet.observer().device(id)?.rollout?;
            (status.state == DeviceState::Failed).then(|| (id.clone(), status.reason))
        })
        .collect();
    assert!(failed.is_empty(), "{what}: devices failed: {failed:?}");
}
