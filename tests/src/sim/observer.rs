//! The observer: one MQTT client that watches what every device says about itself.
//!
//! It subscribes to `perch/+/metrics` (postcard [`MetricsReport`]s), `perch/+/rollout`
//! ([`DeviceStatus`] JSON) and `perch/+/status` (online/offline), and keeps a
//! [`DeviceView`] per device. Tests read a [`FleetView`] snapshot or block in
//! [`Observer::wait_until`] until a condition over it holds: the condition is checked
//! whenever a message arrives, so a wait ends as soon as the fleet gets there, however
//! fast or slow the machine is, and only its (generous) timeout is in wall-clock time.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use perch_mqtt::topics::DeviceTopic;
use perch_mqtt::{Backoff, ClientOptions, Endpoint, EventSink, NetEvent};
use perch_runtime::histogram::Histogram;
use perch_runtime::rollout::{DeviceState, DeviceStatus};
use perch_runtime::wire::MetricsReport;
use rumqttc::{AsyncClient, QoS};
use serde::Serialize;
use serde_json::Value;

use super::error::SimError;

/// What the observer knows about one device.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeviceView {
    /// Whether its latest `status` message said `online`.
    pub online: bool,
    /// Its latest `status` message.
    pub status: Option<Value>,
    /// `boot_count` of its latest `online` status.
    pub boot_count: Option<u64>,
    /// The model name in its latest metrics report (by arrival).
    pub model: Option<String>,
    /// The model version in its latest metrics report (by arrival).
    pub version: Option<String>,
    /// Distinct metrics reports received (duplicates by `seq` not counted).
    pub reports: u64,
    /// Reports received again with a `seq` already seen (QoS 1 redeliveries).
    pub duplicate_reports: u64,
    /// Every report `seq` received.
    pub seqs: SeqSet,
    /// Requests answered successfully, summed over its reports.
    pub ok: u64,
    /// Requests answered with an error, summed over its reports.
    pub errors: u64,
    /// `(ok, errors)` summed over its reports, by the model version each report names
    /// (the agent reports the interval before a model swap under the old model).
    pub by_version: BTreeMap<String, (u64, u64)>,
    /// Its latency histograms merged over every report.
    #[serde(skip)]
    pub latency: Histogram,
    /// Its latest rollout state report.
    pub rollout: Option<DeviceStatus>,
    /// Every distinct rollout state it reported, in arrival order, with the rollout id.
    pub history: Vec<(String, DeviceState)>,
    /// Rollout reports received again (same rollout id and `update`).
    pub duplicate_rollout_reports: u64,
    #[serde(skip)]
    rollout_updates: HashSet<(String, u32)>,
}

impl DeviceView {
    /// Its latest rollout state, if it reported one.
    pub fn state(&self) -> Option<DeviceState> {
        self.rollout.as_ref().map(|s| s.state)
    }

    /// `name version` of the model in its latest report, as `DeviceStatus::serving`
    /// writes it.
    pub fn serving(&self) -> Option<String> {
        Some(format!(
            "{} {}",
            self.model.as_ref()?,
            self.version.as_ref()?
        ))
    }
}

/// A set of report sequence numbers kept as ranges, so a device reporting for hours
/// costs a few bytes, not one entry per report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SeqSet {
    /// Sorted, disjoint, non-adjacent inclusive ranges.
    ranges: Vec<(u32, u32)>,
}

impl SeqSet {
    /// Adds `seq`; returns whether it was new.
    pub fn insert(&mut self, seq: u32) -> bool {
        let i = self.ranges.partition_point(|r| r.0 <= seq);
        if i > 0 && self.ranges[i - 1].1 >= seq {
            return false;
        }
        let joins_prev = i > 0 && self.ranges[i - 1].1.checked_add(1) == Some(seq);
        let joins_next = i < self.ranges.len() && seq.checked_add(1) == Some(self.ranges[i].0);
        match (joins_prev, joins_next) {
            (true, true) => {
                self.ranges[i - 1].1 = self.ranges[i].1;
                self.ranges.remove(i);
            }
            (true, false) => self.ranges[i - 1].1 = seq,
            (false, true) => self.ranges[i].0 = seq,
            (false, false) => self.ranges.insert(i, (seq, seq)),
        }
        true
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u32) -> bool {
        let i = self.ranges.partition_point(|r| r.0 <= seq);
        i > 0 && self.ranges[i - 1].1 >= seq
    }

    /// How many numbers it holds.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|&(a, b)| u64::from(b - a) + 1).sum()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The highest number.
    pub fn last(&self) -> Option<u32> {
        self.ranges.last().map(|r| r.1)
    }

    /// How many numbers are `from` or higher.
    pub fn count_from(&self, from: u32) -> u64 {
        self.ranges
            .iter()
            .filter(|r| r.1 >= from)
            .map(|&(a, b)| u64::from(b - a.max(from)) + 1)
            .sum()
    }

    /// The runs of consecutive numbers, as inclusive ranges in order: one range means
    /// no gap.
    pub fn ranges(&self) -> &[(u32, u32)] {
        &self.ranges
    }

    /// Every number, in order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.ranges.iter().flat_map(|&(a, b)| a..=b)
    }
}

/// A snapshot of every device the observer has heard from, by device id.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetView {
    /// Per device id.
    pub devices: BTreeMap<String, DeviceView>,
    /// Messages that did not decode, with their topic (a device sending garbage).
    pub malformed: Vec<String>,
}

impl FleetView {
    /// Devices whose latest status says online.
    pub fn online(&self) -> usize {
        self.devices.values().filter(|d| d.online).count()
    }

    /// Latest rollout state (as reports write it: `active`, `rolled_back`, ...) →
    /// number of devices in it; devices that reported none are not counted.
    pub fn states(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for state in self.devices.values().filter_map(DeviceView::state) {
            *counts.entry(state.as_str()).or_insert(0) += 1;
        }
        counts
    }

    /// Model version of the latest report → number of devices serving it.
    pub fn versions(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for version in self.devices.values().filter_map(|d| d.version.clone()) {
            *counts.entry(version).or_insert(0) += 1;
        }
        counts
    }

    /// The view of `device`, if it was heard from.
    pub fn device(&self, device: &str) -> Option<&DeviceView> {
        self.devices.get(device)
    }

    /// Whether every one of `devices` is online and its latest report names `version`.
    pub fn all_serving<'a>(
        &self,
        devices: impl IntoIterator<Item = &'a str>,
        version: &str,
    ) -> bool {
        devices.into_iter().all(|id| {
            self.devices
                .get(id)
                .is_some_and(|d| d.online && d.version.as_deref() == Some(version))
        })
    }
}

/// Shared between the MQTT task and the readers.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    view: Mutex<FleetView>,
    changed: Condvar,
    /// Subscriptions the broker acknowledged (since the last connection).
    subscribed: AtomicUsize,
}

/// The observer's handle: snapshots and waits. Cloning shares the same state.
#[derive(Debug, Clone)]
pub struct Observer {
    shared: Arc<Shared>,
    client: AsyncClient,
}

/// The topics the observer subscribes to, of every device.
const FILTERS: [DeviceTopic; 3] = [
    DeviceTopic::Metrics,
    DeviceTopic::Rollout,
    DeviceTopic::Status,
];

/// The observer's end of its connection: subscribes on every connection and records
/// what arrives.
struct ObserverSink {
    shared: Arc<Shared>,
    client: AsyncClient,
}

impl EventSink for ObserverSink {
    async fn deliver(&mut self, event: NetEvent) -> bool {
        match event {
            NetEvent::Connected => {
                self.shared.subscribed.store(0, Ordering::Relaxed);
                for filter in FILTERS {
                    let filter = filter.filter();
                    if let Err(e) = self.client.try_subscribe(filter.as_str(), QoS::AtLeastOnce) {
                        log::error!("observer: cannot subscribe to {filter}: {e}");
                    }
                }
            }
            NetEvent::Message(p) => self.shared.record(&p.topic, &p.payload),
            NetEvent::Subscribed => {
                self.shared.subscribed.fetch_add(1, Ordering::Relaxed);
            }
            NetEvent::Disconnected(e) => {
                self.shared.subscribed.store(0, Ordering::Relaxed);
                log::debug!("observer: {e}; reconnecting");
            }
            NetEvent::Sent(_) | NetEvent::PubAck(_) => {}
        }
        true
    }
}

impl Observer {
    /// Connects to the broker at `host:port` on `runtime` and starts recording; it
    /// reconnects (and subscribes again) by itself.
    pub(crate) fn start(
        runtime: &tokio::runtime::Handle,
        broker: &Endpoint,
    ) -> Result<Observer, SimError> {
        let mut options = ClientOptions::new(client_id("observer"), broker.clone());
        options.inflight = Some(1000);
        options.request_capacity = 256;
        let (client, eventloop) = options
            .connect()
            .map_err(|e| SimError::Broker(e.to_string()))?;
        let shared = Arc::new(Shared::default());
        let sink = ObserverSink {
            shared: shared.clone(),
            client: client.clone(),
        };
        runtime.spawn(perch_mqtt::pump(eventloop, reconnect_backoff(), sink));
        Ok(Observer { shared, client })
    }

    /// Whether the broker has acknowledged every subscription of the current connection.
    pub fn is_subscribed(&self) -> bool {
        self.shared.subscribed.load(Ordering::Relaxed) >= FILTERS.len()
    }

    /// A copy of everything observed so far.
    pub fn snapshot(&self) -> FleetView {
        self.lock().clone()
    }

    /// The view of one device, if it was heard from.
    pub fn device(&self, device: &str) -> Option<DeviceView> {
        self.lock().devices.get(device).cloned()
    }

    /// Latest rollout state → number of devices in it ([`FleetView::states`]).
    pub fn states(&self) -> BTreeMap<&'static str, usize> {
        self.lock().states()
    }

    /// Model version → number of devices whose latest report names it.
    pub fn versions(&self) -> BTreeMap<String, usize> {
        self.lock().versions()
    }

    /// Devices whose latest status says online.
    pub fn online(&self) -> usize {
        self.lock().online()
    }

    /// Runs `f` on the current view without copying it.
    pub fn with<T>(&self, f: impl FnOnce(&FleetView) -> T) -> T {
        f(&self.lock())
    }

    /// Blocks until `done` holds for the fleet view, checking it at once, after every
    /// message and at least every 100 ms; returns as soon as it holds.
    ///
    /// # Errors
    ///
    /// [`SimError::Timeout`] naming `what` if it does not hold within `timeout`.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl FnMut(&FleetView) -> bool,
    ) -> Result<(), SimError> {
        self.wait_until_or(what, timeout, done, || None)
    }

    /// As [`wait_until`](Observer::wait_until), also failing as soon as `abort`
    /// returns a reason.
    pub(crate) fn wait_until_or(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&FleetView) -> bool,
        mut abort: impl FnMut() -> Option<String>,
    ) -> Result<(), SimError> {
        let deadline = Instant::now() + timeout;
        let mut view = self.lock();
        loop {
            if done(&view) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(SimError::Timeout {
                    what: what.to_string(),
                    timeout,
                    seen: summary_line(&view),
                });
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            view = match self.shared.changed.wait_timeout(view, wait) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
            drop(view);
            if let Some(reason) = abort() {
                return Err(SimError::DeviceFailed(reason));
            }
            view = self.lock();
        }
    }

    fn lock(&self) -> MutexGuard<'_, FleetView> {
        self.shared
            .view
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Disconnects (the recording stops).
    pub(crate) fn stop(&self) {
        let _ = self.client.try_disconnect();
    }
}

impl Shared {
    fn record(&self, topic: &str, payload: &[u8]) {
        let mut parts = topic.split('/');
        let (Some("perch"), Some(device), Some(kind), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let mut view = self
            .view
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let malformed = match kind {
            "metrics" => match MetricsReport::decode(payload) {
                Ok(report) => {
                    let d = view.devices.entry(device.to_string()).or_default();
                    if d.seqs.insert(report.seq) {
                        d.reports += 1;
                        d.ok += u64::from(report.ok);
                        d.errors += u64::from(report.errors);
                        let counts = d
                            .by_version
                            .entry(report.model.version.to_string())
                            .or_default();
                        counts.0 += u64::from(report.ok);
                        counts.1 += u64::from(report.errors);
                        d.latency.merge(&report.latency);
                    } else {
                        d.duplicate_reports += 1;
                    }
                    d.model = Some(report.model.name.to_string());
                    d.version = Some(report.model.version.to_string());
                    false
                }
                Err(_) => true,
            },
            "rollout" => match DeviceStatus::from_json(payload) {
                Ok(status) => {
                    let d = view.devices.entry(device.to_string()).or_default();
                    if d.rollout_updates
                        .insert((status.rollout_id.clone(), status.update))
                    {
                        if d.history.last() != Some(&(status.rollout_id.clone(), status.state)) {
                            d.history.push((status.rollout_id.clone(), status.state));
                        }
                        let newer = d.rollout.as_ref().is_none_or(|last| {
                            last.rollout_id != status.rollout_id || status.update > last.update
                        });
                        if newer {
                            d.rollout = Some(status);
                        }
                    } else {
                        d.duplicate_rollout_reports += 1;
                    }
                    false
                }
                Err(_) => true,
            },
            "status" => match serde_json::from_slice::<Value>(payload) {
                Ok(status) => {
                    let d = view.devices.entry(device.to_string()).or_default();
                    d.online = status["state"] == "online";
                    if d.online {
                        d.boot_count = status["boot_count"].as_u64();
                    }
                    d.status = Some(status);
                    false
                }
                Err(_) => true,
            },
            _ => false,
        };
        if malformed && view.malformed.len() < 100 {
            view.malformed.push(topic.to_string());
        }
        drop(view);
        self.changed.notify_all();
    }
}

/// One line about the view, for timeouts and the simulator's output.
pub(crate) fn summary_line(view: &FleetView) -> String {
    let states: Vec<String> = view
        .states()
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    let versions: Vec<String> = view
        .versions()
        .iter()
        .map(|(v, n)| format!("{v} ×{n}"))
        .collect();
    format!(
        "{} devices heard from, {} online, {} reports; versions: {}; rollout states: {}",
        view.devices.len(),
        view.online(),
        view.devices.values().map(|d| d.reports).sum::<u64>(),
        if versions.is_empty() {
            "-".to_string()
        } else {
            versions.join(", ")
        },
        if states.is_empty() {
            "-".to_string()
        } else {
            states.join(", ")
        },
    )
}

/// A client id unique to this process and call.
/// How the simulator's clients reconnect: within 100 ms (a simulated fleet's broker
/// is local; waiting longer would only slow the tests down).
pub(crate) fn reconnect_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_millis(100))
}

/// A client id unique in this process and among the processes on the broker.
pub(crate) fn client_id(role: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "perch-sim-{role}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::SeqSet;

    #[test]
    fn a_seq_set_merges_runs_and_counts_like_a_plain_set() {
        let mut set = SeqSet::default();
        let mut plain = std::collections::BTreeSet::new();
        // Out of order, duplicates, gaps, the ends of u32.
        for seq in [
            5,
            3,
            4,
            9,
            4,
            0,
            1,
            7,
            8,
            2,
            6,
            1030,
            u32::MAX,
            u32::MAX - 1,
            1029,
        ] {
            assert_eq!(set.insert(seq), plain.insert(seq), "{seq}");
        }
        assert_eq!(
            set.ranges(),
            &[(0, 9), (1029, 1030), (u32::MAX - 1, u32::MAX)]
        );
        assert_eq!(set.len(), plain.len() as u64);
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            plain.iter().copied().collect::<Vec<_>>()
        );
        assert_eq!(set.last(), Some(u32::MAX));
        assert_eq!(set.count_from(8), plain.range(8..).count() as u64);
        for seq in [0, 9, 10, 1028, 1029, u32::MAX] {
            assert_eq!(set.contains(seq), plain.contains(&seq), "{seq}");
        }
    }
}
