//! The traffic driver: one MQTT client that sends inference requests to every device
//! at a set rate and counts the replies.
//!
//! Each request is the bundle's golden input as an Open Inference Protocol v2 JSON
//! request on `perch/{device}/infer/req` (QoS 0) with an id of its own; replies on
//! `perch/+/infer/res` count as `ok` (outputs), `wrong` (outputs that differ from the
//! golden outputs by more than 1e-3 relative error, also counted in `ok`) or `errors`
//! (an error reply). A request the client's queue cannot take counts as `dropped`.
//!
//! A device is sent the request of the model its latest metrics report names (from the
//! [`Observer`]): the fleet's first bundle's by default, others added with
//! [`Traffic::add_request`], so a rollout to another model is driven with that model's
//! input. [`Faults`] play a bad model: a share of the requests to chosen devices, or to
//! devices serving a chosen version, are sent malformed, and the agents answer them with
//! errors and count them in their metrics, as they would a model that fails.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use perch_mqtt::topics::{self, DeviceTopic};
use perch_mqtt::{ClientOptions, Endpoint, EventSink, NetEvent};
use perch_runtime::bundle::{Bundle, Limits};
use perch_runtime::engine::{Array, TensorData};
use rumqttc::{AsyncClient, QoS};
use serde::Serialize;
use serde_json::{json, Value};

use super::error::SimError;
use super::observer::Observer;
use super::observer::{client_id, reconnect_backoff};

/// Largest relative error of a reply's outputs against the golden ones still counted
/// as right (replies go through JSON text).
const REPLY_TOLERANCE: f64 = 1e-3;
/// How often the driver wakes up to send what is due.
const TICK: Duration = Duration::from_millis(10);

/// One device's request and reply counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TrafficCounts {
    /// Requests published.
    pub sent: u64,
    /// Replies with outputs.
    pub ok: u64,
    /// Replies with outputs that do not match the golden outputs (also in `ok`).
    pub wrong: u64,
    /// Error replies.
    pub errors: u64,
    /// Requests not sent because the client's queue was full.
    pub dropped: u64,
    /// Requests sent malformed on purpose ([`Faults`]; also in `sent`).
    pub injected: u64,
}

impl TrafficCounts {
    fn add(&mut self, other: &TrafficCounts) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.wrong += other.wrong;
        self.errors += other.errors;
        self.dropped += other.dropped;
        self.injected += other.injected;
    }
}

/// The request the driver sends: a bundle's golden input in OIP v2 JSON, and the
/// outputs it must give.
#[derive(Debug, Clone)]
pub struct Request {
    /// The model it is for (the bundle's name).
    model: String,
    /// The JSON after the id: `"inputs":[...]}`.
    body: String,
    /// Golden outputs, flattened, when all are f32.
    expected: Option<Vec<Vec<f32>>>,
}

impl Request {
    /// The golden input of the bundle at `path` (read, not verified: the devices do
    /// that).
    ///
    /// # Errors
    ///
    /// The file does not parse as a bundle, or its golden input has a type OIP JSON
    /// cannot carry.
    pub fn from_bundle(path: &Path) -> Result<Request, SimError> {
        let bundle = Bundle::read_file(path, &Limits::default())
            .map_err(|e| SimError::Bundle(format!("cannot read {}: {e}", path.display())))?;
        let golden = bundle
            .decode_golden()
            .map_err(|e| SimError::Bundle(format!("{}: {e}", path.display())))?;
        let specs = &bundle.manifest().signature.inputs;
        let mut inputs = Vec::new();
        for (i, tensor) in golden.inputs.iter().enumerate() {
            let input = tensor.input().ok_or_else(|| {
                SimError::Bundle(format!(
                    "{}: golden input {i} has a type OIP JSON cannot carry",
                    path.display()
                ))
            })?;
            let (datatype, data) = oip_data(&input.data);
            let mut entry = json!({"shape": input.shape, "datatype": datatype, "data": data});
            if let Some(spec) = specs.get(i) {
                entry["name"] = json!(spec.name);
            }
            inputs.push(entry);
        }
        let body = json!({ "inputs": inputs }).to_string();
        // `{"inputs":[...]}` → `"inputs":[...]}`, to follow `{"id":"...",`.
        let body = body.strip_prefix('{').unwrap_or(&body).to_string();
        let expected = golden.outputs.iter().map(floats).collect();
        Ok(Request {
            model: bundle.manifest().name.clone(),
            body,
            expected,
        })
    }

    /// The model it is for: the bundle's name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The request with correlation id `id`.
    pub fn payload(&self, id: &str) -> Vec<u8> {
        format!("{{\"id\":{},{}", json!(id), self.body).into_bytes()
    }

    /// Whether a reply's `outputs` match the golden outputs; `None` when they cannot be
    /// compared (not f32, or not the expected count).
    fn matches(&self, outputs: &[Value]) -> Option<bool> {
        let expected = self.expected.as_ref()?;
        if outputs.len() != expected.len() {
            return Some(false);
        }
        for (output, want) in outputs.iter().zip(expected) {
            let Some(got) = output["data"].as_array() else {
                return Some(false);
            };
            if got.len() != want.len() {
                return Some(false);
            }
            let scale = want.iter().fold(0f64, |m, v| m.max(f64::from(v.abs())));
            let diff = got.iter().zip(want).fold(0f64, |m, (g, w)| {
                m.max((g.as_f64().unwrap_or(f64::NAN) - f64::from(*w)).abs())
            });
            if diff.is_nan() || diff > REPLY_TOLERANCE * scale.max(f64::MIN_POSITIVE) {
                return Some(false);
            }
        }
        Some(true)
    }
}

fn floats(tensor: &Array) -> Option<Vec<f32>> {
    match tensor.input()?.data {
        TensorData::F32(values) => Some(values.to_vec()),
        _ => None,
    }
}

fn oip_data(data: &TensorData<'_>) -> (&'static str, Value) {
    match data {
        TensorData::F32(v) => ("FP32", json!(v)),
        TensorData::I8(v) => ("INT8", json!(v)),
        TensorData::U8(v) => ("UINT8", json!(v)),
        TensorData::I32(v) => ("INT32", json!(v)),
        TensorData::I64(v) => ("INT64", json!(v)),
        // TensorData is non-exhaustive; the engine adds types rarely.
        #[allow(unreachable_patterns)]
        _ => ("FP32", json!([])),
    }
}

/// Errors to inject: a share of the requests to the devices selected (by id and/or by
/// the version they serve) is sent malformed, so the agent answers with an error.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Only devices whose latest metrics report names this version; any when `None`.
    pub version: Option<String>,
    /// Only these devices; every device when empty.
    pub devices: BTreeSet<String>,
    /// Share of their requests sent malformed, in [0, 1]; spread evenly (every 4th for
    /// 0.25), not at random.
    pub error_fraction: f64,
}

impl Faults {
    fn applies(&self, device: &str, version: Option<&str>) -> bool {
        (self.devices.is_empty() || self.devices.contains(device))
            && self.version.as_deref().is_none_or(|v| Some(v) == version)
    }

    /// Whether the `k`-th request (from 0) to a selected device is malformed.
    fn hits(&self, k: u64) -> bool {
        let f = self.error_fraction.clamp(0.0, 1.0);
        ((k + 1) as f64 * f).floor() > (k as f64 * f).floor()
    }
}

#[derive(Debug)]
struct Shared {
    /// Requests per device per second, × 1000.
    rate_milli: AtomicU64,
    targets: Mutex<Vec<String>>,
    counts: Mutex<HashMap<String, TrafficCounts>>,
    /// The request for a device whose model is unknown or has none of its own.
    default_request: Request,
    /// Requests by model name.
    requests: Mutex<HashMap<String, Request>>,
    faults: Mutex<Option<Faults>>,
    /// Where the driver learns which model and version each device serves.
    observer: Observer,
    /// Prefix of the ids of this driver's requests.
    tag: String,
    stopped: AtomicBool,
    /// Whether the broker acknowledged the subscription to replies.
    subscribed: AtomicBool,
}

impl Shared {
    fn counts(&self) -> MutexGuard<'_, HashMap<String, TrafficCounts>> {
        lock(&self.counts)
    }

    fn on_reply(&self, topic: &str, payload: &[u8]) {
        let Some(device) = topics::device_of(topic, DeviceTopic::InferReply) else {
            return;
        };
        let Ok(reply) = serde_json::from_slice::<Value>(payload) else {
            return;
        };
        if !reply["id"]
            .as_str()
            .is_some_and(|id| id.starts_with(&self.tag))
        {
            return;
        }
        let verdict = reply["outputs"].as_array().map(|outputs| {
            let requests = lock(&self.requests);
            let request = reply["model_name"]
                .as_str()
                .and_then(|m| requests.get(m))
                .unwrap_or(&self.default_request);
            request.matches(outputs)
        });
        let mut counts = self.counts();
        let c = counts.entry(device.to_string()).or_default();
        match verdict {
            Some(matched) => {
                c.ok += 1;
                if matched == Some(false) {
                    c.wrong += 1;
                }
            }
            None => c.errors += 1,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The driver's end of its connection: subscribes to replies on every connection and
/// counts what comes back.
struct TrafficSink {
    shared: Arc<Shared>,
    client: AsyncClient,
}

impl EventSink for TrafficSink {
    async fn deliver(&mut self, event: NetEvent) -> bool {
        match event {
            NetEvent::Connected => {
                let replies = DeviceTopic::InferReply.filter();
                if let Err(e) = self.client.try_subscribe(replies, QoS::AtMostOnce) {
                    log::error!("traffic: cannot subscribe to replies: {e}");
                }
            }
            NetEvent::Message(p) => self.shared.on_reply(&p.topic, &p.payload),
            NetEvent::Subscribed => self.shared.subscribed.store(true, Ordering::Relaxed),
            NetEvent::Disconnected(e) => {
                self.shared.subscribed.store(false, Ordering::Relaxed);
                log::debug!("traffic: {e}; reconnecting");
            }
            NetEvent::Sent(_) | NetEvent::PubAck(_) => {}
        }
        true
    }
}

/// The traffic driver's handle. Cloning shares the same driver.
#[derive(Debug, Clone)]
pub struct Traffic {
    shared: Arc<Shared>,
    client: AsyncClient,
}

impl Traffic {
    /// Connects to `host:port` on `runtime` and sends requests to each of `targets` at
    /// `rate` requests per device per second (0: none until
    /// [`set_rate`](Traffic::set_rate)): `request`, or the one added for the model
    /// `observer` says the device serves.
    pub(crate) fn start(
        runtime: &tokio::runtime::Handle,
        broker: &Endpoint,
        request: Request,
        observer: Observer,
        targets: Vec<String>,
        rate: f64,
    ) -> Result<Traffic, SimError> {
        let id = client_id("traffic");
        let mut options = ClientOptions::new(id.clone(), broker.clone());
        options.max_incoming_packet = 16 << 20;
        options.max_outgoing_packet = 16 << 20;
        options.request_capacity = 4096;
        let (client, eventloop) = options
            .connect()
            .map_err(|e| SimError::Broker(e.to_string()))?;
        let shared = Arc::new(Shared {
            rate_milli: AtomicU64::new(0),
            targets: Mutex::new(targets),
            counts: Mutex::new(HashMap::new()),
            requests: Mutex::new(HashMap::from([(request.model.clone(), request.clone())])),
            default_request: request,
            faults: Mutex::new(None),
            observer,
            tag: format!("{id}-"),
            stopped: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
        });
        let traffic = Traffic {
            shared: shared.clone(),
            client: client.clone(),
        };
        traffic.set_rate(rate);
        let sink = TrafficSink {
            shared: shared.clone(),
            client: client.clone(),
        };
        runtime.spawn(perch_mqtt::pump(eventloop, reconnect_backoff(), sink));
        runtime.spawn(drive(shared, client));
        Ok(traffic)
    }

    /// Whether the broker has acknowledged the subscription to replies.
    pub fn is_subscribed(&self) -> bool {
        self.shared.subscribed.load(Ordering::Relaxed)
    }

    /// Sends `request` to the devices whose latest report names its model (replacing
    /// the request added for that model before).
    pub fn add_request(&self, request: Request) {
        lock(&self.shared.requests).insert(request.model.clone(), request);
    }

    /// Injects `faults` from now on (`None`: none, the default).
    pub fn set_faults(&self, faults: Option<Faults>) {
        *lock(&self.shared.faults) = faults;
    }

    /// Sets the rate, in requests per device per second (negative counts as 0).
    pub fn set_rate(&self, per_device_per_second: f64) {
        let milli = (per_device_per_second.max(0.0) * 1000.0).round() as u64;
        self.shared.rate_milli.store(milli, Ordering::Relaxed);
    }

    /// The rate, in requests per device per second.
    pub fn rate(&self) -> f64 {
        self.shared.rate_milli.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// The counts of one device.
    pub fn counts(&self, device: &str) -> TrafficCounts {
        self.shared
            .counts()
            .get(device)
            .copied()
            .unwrap_or_default()
    }

    /// The counts of every device that was sent a request, by device id.
    pub fn all(&self) -> BTreeMap<String, TrafficCounts> {
        self.shared
            .counts()
            .iter()
            .map(|(d, c)| (d.clone(), *c))
            .collect()
    }

    /// The counts summed over the fleet.
    pub fn total(&self) -> TrafficCounts {
        let mut total = TrafficCounts::default();
        for c in self.shared.counts().values() {
            total.add(c);
        }
        total
    }

    /// Stops sending and disconnects.
    pub(crate) fn stop(&self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        let _ = self.client.try_disconnect();
    }
}

/// Sends what is due every [`TICK`], round robin over the targets, carrying fractions
/// over (at most one round of backlog, so a stall does not end in a burst).
async fn drive(shared: Arc<Shared>, client: AsyncClient) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last, mut credit, mut next, mut n) = (Instant::now(), 0f64, 0usize, 0u64);
    loop {
        tick.tick().await;
        if shared.stopped.load(Ordering::Relaxed) {
            return;
        }
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64();
        last = now;
        let rate = shared.rate_milli.load(Ordering::Relaxed) as f64 / 1000.0;
        let targets = shared
            .targets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if targets.is_empty() || rate == 0.0 {
            credit = 0.0;
            continue;
        }
        let len = targets.len();
        credit = (credit + rate * len as f64 * dt).min(len as f64 + 1.0);
        let mut due = Vec::new();
        while credit >= 1.0 {
            credit -= 1.0;
            due.push(next % len);
            next = next.wrapping_add(1);
        }
        if due.is_empty() {
            continue;
        }
        let serving: Vec<(Option<String>, Option<String>)> = shared.observer.with(|view| {
            due.iter()
                .map(|&i| match view.device(&targets[i]) {
                    Some(d) => (d.model.clone(), d.version.clone()),
                    None => (None, None),
                })
                .collect()
        });
        let faults = lock(&shared.faults).clone();
        let requests = lock(&shared.requests);
        let mut counts = shared.counts();
        for (&i, (model, version)) in due.iter().zip(serving) {
            n += 1;
            let device = &targets[i];
            let c = counts.entry(device.clone()).or_default();
            let id = format!("{}{n}", shared.tag);
            let inject = faults.as_ref().is_some_and(|f| {
                f.applies(device, version.as_deref()) && f.hits(c.sent + c.dropped)
            });
            let payload = if inject {
                format!("{{\"id\":{},\"inputs\":[]}}", json!(id)).into_bytes()
            } else {
                model
                    .as_deref()
                    .and_then(|m| requests.get(m))
                    .unwrap_or(&shared.default_request)
                    .payload(&id)
            };
            let topic = DeviceTopic::InferRequest.of(device);
            if client
                .try_publish(topic, QoS::AtMostOnce, false, payload)
                .is_ok()
            {
                c.sent += 1;
                c.injected += u64::from(inject);
            } else {
                c.dropped += 1;
            }
        }
    }
}
