//! The agent's MQTT side, without the I/O: topic names, connection options, request
//! answering, the payloads it publishes, and the report [`Outbox`].
//!
//! The agent speaks MQTT 3.1.1. MQTT 5 would carry the correlation id and the reply
//! topic in packet properties, but the embedded broker (rumqttd) serves 3.1.1 and 5 on
//! separate ports and its MQTT 5 support is incomplete, and `mosquitto_pub` speaks 3.1.1
//! unless told otherwise. So the correlation id travels in the payload: the Open
//! Inference Protocol's `"id"` in JSON, the request's `id` field in postcard. Every
//! topic and payload is specified in `docs/protocol.md`; the names are spelled in
//! [`perch_mqtt::topics`], the connection is set up and driven by `perch_mqtt`.
//!
//! | topic | direction | QoS | retained | payload |
//! |---|---|---|---|---|
//! | `perch/{device}/infer/req` | to the device | 0–1 | no | OIP v2 JSON request with `"id"` |
//! | `perch/{device}/infer/res` | from the device | 0 | no | OIP v2 JSON response, or `{"id", "error", "status"}` |
//! | `perch/{device}/infer/req/bin` | to the device | 0–1 | no | postcard request ([`service::binary`](crate::service::binary)) |
//! | `perch/{device}/infer/res/bin` | from the device | 0 | no | postcard reply |
//! | `perch/{device}/metrics` | from the device | 1 | no | postcard [`MetricsReport`], spooled while offline |
//! | `perch/{device}/metrics/json` | from the device | 0 | no | JSON twin with p50/p95/p99 |
//! | `perch/{device}/health` | from the device | 0 | yes | postcard [`Health`] |
//! | `perch/{device}/health/json` | from the device | 0 | yes | JSON twin |
//! | `perch/{device}/status` | from the device | 1 | yes | `{"state": "online", ...}`; last will `{"state": "offline", ...}` |

use std::collections::VecDeque;
use std::io;

use bytes::Bytes;

use perch_mqtt::topics::DeviceTopics;
use perch_mqtt::ClientOptions;
use perch_runtime::histogram::{Histogram, BUCKETS};
use perch_runtime::wire::{Health, MetricsReport, ModelId, ModelState};
use rumqttc::{LastWill, QoS};
use serde_json::{json, Value};

pub use perch_mqtt::SetupError;

use crate::config::BrokerConfig;
use crate::device::DeviceId;
use crate::service::{binary, Codec, InferenceService, ServiceError};
use crate::spool::Spool;

/// The largest packet the agent sends. A reply that would be larger is replaced by an
/// error reply: rumqttc drops the whole connection on an oversized packet.
pub const MAX_OUTGOING_PACKET: usize = 16 << 20;

/// Room for the topic and headers on top of the payload limit (defined with the limits
/// it pads, in `config`).
pub use crate::config::INCOMING_HEADROOM;

/// Every topic of one device ([`DeviceTopics`], which it dereferences to), with the
/// agent's routing of requests and spooled records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics(DeviceTopics);

impl std::ops::Deref for Topics {
    type Target = DeviceTopics;

    fn deref(&self) -> &DeviceTopics {
        &self.0
    }
}

impl Topics {
    /// The topics of `device`, all under `perch/{device}/`.
    pub fn new(device: &DeviceId) -> Topics {
        Topics(DeviceTopics::new(device.as_str()))
    }

    /// The topic an [`Outbox`] record goes to: rollout state changes are JSON objects
    /// (first byte `{`), metrics reports postcard (first byte: the wire format
    /// version, a small number), so the spool needs no tag and older spools still read.
    pub fn record_topic(&self, record: &[u8]) -> &str {
        if record.first() == Some(&b'{') {
            &self.rollout
        } else {
            &self.metrics
        }
    }

    /// The codec of a request arriving on `topic` and the topic its reply goes to;
    /// `None` for any other topic.
    pub fn route(&self, topic: &str) -> Option<(Codec, &str)> {
        if topic == self.infer_req {
            Some((Codec::Json, &self.infer_res))
        } else if topic == self.infer_req_bin {
            Some((Codec::Binary, &self.infer_res_bin))
        } else {
            None
        }
    }
}

/// Connection options for `device` at `broker`: client id `perch-{device}`, a clean
/// session, the retained `offline` status as last will, packet limits sized from
/// `max_payload`, and TLS and credentials when configured.
///
/// # Errors
///
/// A TLS file that cannot be read or holds no PEM block of its kind.
pub fn options(
    device: &DeviceId,
    broker: &BrokerConfig,
    max_payload: usize,
) -> Result<ClientOptions, SetupError> {
    let mut options = ClientOptions::new(format!("perch-{device}"), broker.endpoint.clone());
    options.keep_alive = broker.keep_alive;
    options.last_will = Some(LastWill::new(
        Topics::new(device).status.clone(),
        offline_status(device),
        QoS::AtLeastOnce,
        true,
    ));
    options.max_incoming_packet = max_payload.saturating_add(INCOMING_HEADROOM);
    options.max_outgoing_packet = MAX_OUTGOING_PACKET;
    options.mqtt_options()?;
    Ok(options)
}

/// A reply to publish: its payload and whether it carries outputs (`false` for an
/// error reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The encoded reply, in the request's codec.
    pub payload: Vec<u8>,
    /// Whether the request succeeded.
    pub ok: bool,
}

/// Decodes `payload` in `codec`, runs it through `service` on the blocking pool within
/// the service's deadline ([`InferenceService::answer_within`]) and encodes the reply
/// in the same codec. Every failure is counted once as an error by the service and
/// answered with a reason and the request's id when one can be read from the payload.
pub async fn answer(service: &InferenceService, codec: Codec, payload: Bytes) -> Reply {
    let limit = MAX_OUTGOING_PACKET - INCOMING_HEADROOM;
    match service.answer_within(payload.clone(), codec, limit).await {
        Ok(payload) => Reply { payload, ok: true },
        Err(e) => {
            let payload = &payload[..];
            // Over the limit, only look for the id where it is cheap to find.
            let id = match codec {
                Codec::Json if matches!(e, ServiceError::PayloadTooLarge { .. }) => {
                    scan_json_id(payload).map(Value::String)
                }
                _ => request_id(codec, payload),
            };
            Reply {
                payload: error_reply(codec, id, e.http_status(), &e.to_string()),
                ok: false,
            }
        }
    }
}

/// The reply to a request refused because `queued` requests are already waiting; the
/// caller counts the error.
pub fn busy_reply(codec: Codec, payload: &[u8], queued: usize) -> Vec<u8> {
    error_reply(
        codec,
        request_id(codec, payload),
        503,
        &format!("the device is busy: {queued} requests are waiting; retry later"),
    )
}

/// The request's id, read leniently from a request that may not decode as a whole.
pub fn request_id(codec: Codec, payload: &[u8]) -> Option<Value> {
    match codec {
        Codec::Json => {
            #[derive(serde::Deserialize)]
            struct IdOnly {
                id: Option<Value>,
            }
            match serde_json::from_slice::<IdOnly>(payload) {
                Ok(request) => request.id,
                Err(_) => scan_json_id(payload).map(Value::String),
            }
        }
        Codec::Binary => {
            let (&format, rest) = payload.split_first()?;
            if format != binary::FORMAT {
                return None;
            }
            postcard::take_from_bytes::<Option<String>>(rest)
                .ok()
                .and_then(|(id, _)| id)
                .map(Value::String)
        }
    }
}

/// The first `"id": "..."` in text that is not valid JSON, so a client still gets its
/// correlation id back with the parse error. Best effort: the string is taken up to the
/// next unescaped quote, escapes left as written.
fn scan_json_id(payload: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut rest = text;
    while let Some(at) = rest.find("\"id\"") {
        rest = &rest[at + 4..];
        let Some(value) = rest.trim_start().strip_prefix(':') else {
            continue;
        };
        let Some(value) = value.trim_start().strip_prefix('"') else {
            continue;
        };
        let mut escaped = false;
        for (i, c) in value.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => return Some(value[..i].to_string()),
                _ => escaped = false,
            }
        }
        return None;
    }
    None
}

/// An error reply: JSON `{"id": ..., "error": reason, "status": status}` (`id` left out
/// when unknown), or the postcard [`binary::BinaryReply::Error`].
pub fn error_reply(codec: Codec, id: Option<Value>, status: u16, reason: &str) -> Vec<u8> {
    match codec {
        Codec::Json => {
            let mut body = json!({ "error": reason, "status": status });
            if let Some(id) = id {
                body["id"] = id;
            }
            body.to_string().into_bytes()
        }
        Codec::Binary => postcard::to_extend(
            &binary::BinaryReply::Error {
                id: id.and_then(|v| match v {
                    Value::String(s) => Some(s),
                    _ => None,
                }),
                status,
                reason: reason.to_string(),
            },
            vec![binary::FORMAT],
        )
        .unwrap_or_else(|_| vec![binary::FORMAT]),
    }
}

/// The retained status published on connect.
pub fn online_status(
    device: &DeviceId,
    health: &Health,
    http: Option<std::net::SocketAddr>,
) -> Vec<u8> {
    let (model, version) = match &health.model {
        Some(id) => (Some(id.name.to_string()), Some(id.version.to_string())),
        None => (None, None),
    };
    json!({
        "state": "online",
        "device": device.as_str(),
        "model": model,
        "version": version,
        "ready": matches!(health.state, ModelState::Ready | ModelState::Degraded),
        "boot_count": health.boot_count,
        "http": http.map(|a| a.to_string()),
    })
    .to_string()
    .into_bytes()
}

/// The retained status the broker publishes as the device's last will, and the agent
/// itself on a clean shutdown.
pub fn offline_status(device: &DeviceId) -> Vec<u8> {
    json!({ "state": "offline", "device": device.as_str() })
        .to_string()
        .into_bytes()
}

/// The lowercase name of a model state in JSON payloads.
pub fn state_name(state: ModelState) -> &'static str {
    match state {
        ModelState::Loading => "loading",
        ModelState::Ready => "ready",
        ModelState::SelfTestFailed => "self_test_failed",
        ModelState::Degraded => "degraded",
        ModelState::NoModel => "no_model",
    }
}

/// Milliseconds of a quantile to the microsecond, `null` for an empty histogram.
fn quantile_ms(latency: &Histogram, p: f64) -> Value {
    latency
        .quantile(p)
        .map_or(Value::Null, |d| json!(micros_as_ms(d)))
}

/// A duration in milliseconds, rounded to the microsecond.
fn micros_as_ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Incoming messages the agent dropped without losing its connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IncomingDropped {
    /// Messages over the client's packet limit.
    pub oversize: u64,
    /// Bundle chunks dropped from the updater's full queue.
    pub ota_chunks: u64,
}

/// One interval of a model of the repository other than the primary, for the JSON
/// twin (its postcard reports travel on their own, under its model id).
#[derive(Debug, Clone, Copy)]
pub struct ModelFigures<'a> {
    /// The model.
    pub id: &'a ModelId,
    /// Requests it answered.
    pub ok: u64,
    /// Requests it failed.
    pub errors: u64,
    /// The latency of its successful requests.
    pub latency: &'a Histogram,
}

/// What the JSON twin says besides the report.
#[derive(Debug, Clone)]
pub struct TwinContext<'a> {
    /// The device.
    pub device: &'a DeviceId,
    /// Health at the end of the interval.
    pub health: &'a Health,
    /// Reports of earlier intervals not delivered yet.
    pub backlog: usize,
    /// Reports dropped from a full spool, ever.
    pub dropped: u64,
    /// Incoming messages dropped since the start: over the packet limit (by the guard,
    /// [`perch_mqtt::Guard`]), and bundle chunks the busy updater had no room for.
    pub incoming_dropped: IncomingDropped,
    /// SLO checks that failed in the interval, as sentences.
    pub violations: &'a [String],
    /// Why over-the-air updates are off although configured (damaged update state).
    pub ota_off: Option<&'a str>,
    /// The interval of each other model of the repository that is loaded.
    pub models: &'a [ModelFigures<'a>],
}

/// The JSON twin of one interval: `first` is the interval's first report (which holds
/// its counts), `seqs` the sequence numbers of all its reports (more than one when the
/// histogram was split), `latency` the whole interval's histogram.
pub fn metrics_twin(
    first: &MetricsReport,
    seqs: &[u32],
    latency: &Histogram,
    context: &TwinContext<'_>,
) -> Vec<u8> {
    let seconds = f64::from(first.interval_ms) / 1e3;
    let total = f64::from(first.ok) + f64::from(first.errors);
    let buckets: Vec<Value> = (0..BUCKETS)
        .filter(|&i| latency.counts()[i] > 0)
        .map(|i| {
            let (_, upper) = Histogram::bucket_bounds(i);
            let le = if i + 1 == BUCKETS {
                Value::Null
            } else {
                json!(micros_as_ms(upper))
            };
            json!([le, latency.counts()[i]])
        })
        .collect();
    json!({
        "device": context.device.as_str(),
        "seq": seqs.first(),
        "reports": seqs,
        "uptime_s": first.uptime_s,
        "interval_ms": first.interval_ms,
        "model": first.model.name.as_str(),
        "version": first.model.version.to_string(),
        "state": state_name(context.health.state),
        "ok": first.ok,
        "errors": first.errors,
        "throughput": if seconds > 0.0 { f64::from(first.ok) / seconds } else { 0.0 },
        "error_rate": if total > 0.0 { f64::from(first.errors) / total } else { 0.0 },
        "latency_ms": {
            "count": latency.count(),
            "p50": quantile_ms(latency, 0.50),
            "p95": quantile_ms(latency, 0.95),
            "p99": quantile_ms(latency, 0.99),
        },
        "histogram_ms": buckets,
        "rss_kib": context.health.rss_kib,
        "spool": { "backlog": context.backlog, "dropped": context.dropped },
        "dropped": {
            "oversize": context.incoming_dropped.oversize,
            "ota_chunks": context.incoming_dropped.ota_chunks,
        },
        "slo": { "ok": context.violations.is_empty(), "violations": context.violations },
        "ota_off": context.ota_off,
        "models": context.models.iter().map(|m| json!({
            "model": m.id.name.as_str(),
            "version": m.id.version.to_string(),
            "ok": m.ok,
            "errors": m.errors,
            "latency_ms": {
                "count": m.latency.count(),
                "p50": quantile_ms(m.latency, 0.50),
                "p95": quantile_ms(m.latency, 0.95),
                "p99": quantile_ms(m.latency, 0.99),
            },
        })).collect::<Vec<Value>>(),
    })
    .to_string()
    .into_bytes()
}

/// The JSON twin of a health message.
pub fn health_twin(device: &DeviceId, health: &Health) -> Vec<u8> {
    json!({
        "device": device.as_str(),
        "uptime_s": health.uptime_s,
        "model": health.model.as_ref().map(|m| m.name.as_str()),
        "version": health.model.as_ref().map(|m| m.version.to_string()),
        "state": state_name(health.state),
        "boot_count": health.boot_count,
        "rss_kib": health.rss_kib,
        "last_error": health.last_error.as_deref(),
    })
    .to_string()
    .into_bytes()
}

/// Which record a report publish carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// The spool's record with this id.
    Spool(u64),
    /// The front of the in-memory queue.
    Memory,
}

/// Where the report at the head of the queue is in its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flight {
    /// Nothing published.
    Idle,
    /// Handed to the client; the packet id is not known yet.
    Publishing(Head),
    /// Sent with this packet id; waiting for its PUBACK.
    AwaitingAck(Head, u16),
}

/// The queue of metrics reports between the agent and the broker: delivered in order,
/// one at a time at QoS 1, each removed only after its PUBACK.
///
/// Reports queue in memory while the broker is connected and nothing is spooled (so a
/// healthy device writes nothing to disk); everything goes to the [`Spool`] while it is
/// not, and the memory queue moves to the spool on a disconnection, on overflow and on
/// shutdown, so order holds: the spool holds the older reports, memory the newer.
///
/// The client reports its own progress through [`on_sent`](Outbox::on_sent) (the
/// packet id of an outgoing publish) and [`on_puback`](Outbox::on_puback). Only report
/// publishes may use QoS 1 on the same client, since those two events carry nothing but
/// the packet id. A report may be delivered twice (a PUBACK lost with the connection);
/// receivers drop duplicates by `seq`.
#[derive(Debug)]
pub struct Outbox {
    spool: Spool,
    memory: VecDeque<Vec<u8>>,
    max_memory: usize,
    connected: bool,
    flight: Flight,
}

impl Outbox {
    /// An outbox over `spool` keeping at most `max_memory` reports in memory (at least
    /// one); it starts disconnected.
    pub fn new(spool: Spool, max_memory: usize) -> Outbox {
        Outbox {
            spool,
            memory: VecDeque::new(),
            max_memory: max_memory.max(1),
            connected: false,
            flight: Flight::Idle,
        }
    }

    /// Queues a new report.
    ///
    /// # Errors
    ///
    /// Writing to the spool failed; the report is lost (and was logged by the caller).
    pub fn push(&mut self, report: Vec<u8>) -> io::Result<()> {
        if self.connected && self.spool.is_empty() && self.memory.len() < self.max_memory {
            self.memory.push_back(report);
            return Ok(());
        }
        self.flush()?;
        self.spool.push(&report)
    }

    /// The report to publish now, if the broker is connected, nothing is in flight and
    /// a report is waiting. The caller publishes it at QoS 1 and calls
    /// [`publish_failed`](Outbox::publish_failed) if the client refused it.
    ///
    /// # Errors
    ///
    /// Reading the spool failed.
    pub fn next_publish(&mut self) -> io::Result<Option<Vec<u8>>> {
        if !self.connected || self.flight != Flight::Idle {
            return Ok(None);
        }
        if let Some((id, bytes)) = self.spool.peek()? {
            self.flight = Flight::Publishing(Head::Spool(id));
            return Ok(Some(bytes));
        }
        Ok(self.memory.front().map(|bytes| {
            self.flight = Flight::Publishing(Head::Memory);
            bytes.clone()
        }))
    }

    /// The client did not take the publish from [`next_publish`](Outbox::next_publish);
    /// it will be offered again.
    pub fn publish_failed(&mut self) {
        self.flight = Flight::Idle;
    }

    /// The client sent a publish with packet id `pkid` (0 for QoS 0, which is ignored).
    pub fn on_sent(&mut self, pkid: u16) {
        if let (Flight::Publishing(head), true) = (self.flight, pkid != 0) {
            self.flight = Flight::AwaitingAck(head, pkid);
        }
    }

    /// The broker acknowledged packet `pkid`; returns whether that delivered the head
    /// report (which is then removed, and the next may be published).
    ///
    /// # Errors
    ///
    /// Removing the record from the spool failed; it stays and will be sent again.
    pub fn on_puback(&mut self, pkid: u16) -> io::Result<bool> {
        let Flight::AwaitingAck(head, awaited) = self.flight else {
            return Ok(false);
        };
        if awaited != pkid {
            return Ok(false);
        }
        self.flight = Flight::Idle;
        match head {
            Head::Spool(id) => self.spool.remove(id)?,
            Head::Memory => {
                self.memory.pop_front();
            }
        }
        Ok(true)
    }

    /// The connection is up: delivery starts over from the head.
    pub fn on_connected(&mut self) {
        self.connected = true;
        self.flight = Flight::Idle;
    }

    /// The connection is down: what is in memory goes to the spool; the report in
    /// flight, if any, stays queued and is sent again after the next connection.
    ///
    /// # Errors
    ///
    /// Writing to the spool failed.
    pub fn on_disconnected(&mut self) -> io::Result<()> {
        self.connected = false;
        self.flight = Flight::Idle;
        self.flush()
    }

    /// Moves the memory queue to the spool, oldest first (on shutdown, so nothing
    /// undelivered is lost).
    ///
    /// # Errors
    ///
    /// Writing to the spool failed; the reports not written stay in memory.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.memory.is_empty() {
            return Ok(());
        }
        if matches!(
            self.flight,
            Flight::Publishing(Head::Memory) | Flight::AwaitingAck(Head::Memory, _)
        ) {
            // Its record moves; a late PUBACK for it is ignored and it is sent again.
            self.flight = Flight::Idle;
        }
        while let Some(report) = self.memory.front() {
            self.spool.push(report)?;
            self.memory.pop_front();
        }
        Ok(())
    }

    /// Reports waiting for delivery (spooled and in memory).
    pub fn pending(&self) -> usize {
        self.spool.len() + self.memory.len()
    }

    /// Reports dropped from the full spool since its folder was created.
    pub fn dropped(&self) -> u64 {
        self.spool.dropped()
    }

    /// Whether a report is published and not yet acknowledged.
    pub fn in_flight(&self) -> bool {
        self.flight != Flight::Idle
    }
}

#[cfg(test)]
mod tests {
    use perch_runtime::rollout;

    use super::*;
    use crate::service::InferRequest;

    fn outbox(dir: &std::path::Path, records: usize) -> Outbox {
        Outbox::new(Spool::open(dir, records, 1 << 20).unwrap(), 4)
    }

    /// Publishes the next report, as the client would: sent with `pkid`.
    fn send(outbox: &mut Outbox, pkid: u16) -> Vec<u8> {
        let bytes = outbox.next_publish().unwrap().expect("a report to send");
        outbox.on_sent(pkid);
        bytes
    }

    #[test]
    fn reports_wait_in_the_spool_while_disconnected_and_go_out_in_order_after() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = outbox(dir.path(), 100);
        for i in 0..5u8 {
            out.push(vec![i]).unwrap();
        }
        assert_eq!(
            out.next_publish().unwrap(),
            None,
            "nothing goes out offline"
        );
        assert_eq!(out.pending(), 5);
        out.on_connected();
        out.push(vec![5]).unwrap(); // behind the spooled ones
        let mut delivered = Vec::new();
        for pkid in 1..=6 {
            delivered.extend(send(&mut out, pkid));
            assert_eq!(out.next_publish().unwrap(), None, "one report in flight");
            assert!(out.on_puback(pkid).unwrap());
        }
        assert_eq!(delivered, [0, 1, 2, 3, 4, 5]);
        assert_eq!(out.pending(), 0);
    }

    #[test]
    fn a_report_is_removed_only_after_its_puback() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = outbox(dir.path(), 100);
        out.on_connected();
        out.push(b"a".to_vec()).unwrap();
        assert_eq!(send(&mut out, 7), b"a");
        assert!(!out.on_puback(8).unwrap(), "another packet's ack");
        out.on_disconnected().unwrap();
        assert!(
            !out.on_puback(7).unwrap(),
            "an ack from the lost connection"
        );
        // Unacknowledged, so still there, now on disk: it survives a restart.
        drop(out);
        let mut out = outbox(dir.path(), 100);
        assert_eq!(out.pending(), 1);
        out.on_connected();
        assert_eq!(send(&mut out, 1), b"a");
        assert!(out.on_puback(1).unwrap());
        assert_eq!(out.pending(), 0);
    }

    #[test]
    fn memory_reports_move_to_the_spool_in_order_on_disconnection() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = outbox(dir.path(), 100);
        out.on_connected();
        for i in 0..3u8 {
            out.push(vec![i]).unwrap();
        }
        assert_eq!(send(&mut out, 1), [0]); // in flight when the link drops
        out.on_disconnected().unwrap();
        out.push(vec![3]).unwrap();
        drop(out);
        let mut out = outbox(dir.path(), 100);
        out.on_connected();
        let delivered: Vec<u8> = (1..=4)
            .flat_map(|pkid| {
                let b = send(&mut out, pkid);
                assert!(out.on_puback(pkid).unwrap());
                b
            })
            .collect();
        assert_eq!(delivered, [0, 1, 2, 3]);
    }

    #[test]
    fn a_full_memory_queue_overflows_to_the_spool_keeping_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = outbox(dir.path(), 100); // 4 in memory
        out.on_connected();
        for i in 0..10u8 {
            out.push(vec![i]).unwrap();
        }
        assert_eq!(out.pending(), 10);
        let delivered: Vec<u8> = (1..=10)
            .flat_map(|pkid| {
                let b = send(&mut out, pkid);
                assert!(out.on_puback(pkid).unwrap());
                b
            })
            .collect();
        assert_eq!(delivered, (0..10).collect::<Vec<u8>>());
    }

    #[test]
    fn a_full_spool_drops_the_oldest_reports_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = outbox(dir.path(), 3);
        for i in 0..5u8 {
            out.push(vec![i]).unwrap();
        }
        assert_eq!((out.pending(), out.dropped()), (3, 2));
        out.on_connected();
        assert_eq!(send(&mut out, 1), [2]);
    }

    #[test]
    fn request_ids_are_read_from_requests_that_do_not_decode() {
        assert_eq!(
            request_id(Codec::Json, br#"{"id": "r-7", "inputs": "nonsense"}"#),
            Some(json!("r-7"))
        );
        assert_eq!(request_id(Codec::Json, b"{not json"), None);
        assert_eq!(
            request_id(Codec::Json, br#"{"id" : "r-\"8", "inputs": [}"#),
            Some(json!(r#"r-\"8"#)),
            "from JSON that does not parse"
        );
        let request = InferRequest {
            id: Some("b-1".into()),
            inputs: vec![],
        };
        let mut bytes = binary::encode_request(&request);
        bytes.push(0xFF); // trailing garbage: the request no longer decodes
        assert!(binary::decode_request(&bytes).is_err());
        assert_eq!(request_id(Codec::Binary, &bytes), Some(json!("b-1")));
    }

    #[test]
    fn error_replies_carry_the_id_status_and_reason() {
        let body: Value =
            serde_json::from_slice(&error_reply(Codec::Json, Some(json!("x")), 400, "bad"))
                .unwrap();
        assert_eq!(body, json!({"id": "x", "status": 400, "error": "bad"}));
        let reply =
            binary::decode_reply(&error_reply(Codec::Binary, Some(json!("b")), 503, "busy"))
                .unwrap();
        assert_eq!(
            reply,
            binary::BinaryReply::Error {
                id: Some("b".into()),
                status: 503,
                reason: "busy".into()
            }
        );
    }

    #[test]
    fn requests_route_by_topic_to_their_codec_and_reply_topic() {
        let topics = Topics::new(&"gw".parse().unwrap());
        assert_eq!(
            topics.route("perch/gw/infer/req"),
            Some((Codec::Json, "perch/gw/infer/res"))
        );
        assert_eq!(
            topics.route("perch/gw/infer/req/bin"),
            Some((Codec::Binary, "perch/gw/infer/res/bin"))
        );
        assert_eq!(topics.route("perch/gw/metrics"), None);
    }

    #[test]
    fn spooled_records_go_to_the_metrics_or_the_rollout_topic_by_their_first_byte() {
        let topics = Topics::new(&"gw".parse().unwrap());
        let report = MetricsReport {
            format: perch_runtime::wire::FORMAT_VERSION,
            seq: 7,
            uptime_s: 1,
            interval_ms: 1000,
            model: perch_runtime::wire::ModelId::new(
                "m",
                perch_runtime::wire::Version::new(1, 0, 0),
            )
            .unwrap(),
            ok: 1,
            errors: 0,
            latency: Histogram::new(),
        };
        let mut buf = [0u8; MetricsReport::MAX_ENCODED_LEN];
        let bytes = report.encode(&mut buf).unwrap();
        assert_eq!(topics.record_topic(bytes), "perch/gw/metrics");
        let status = rollout::DeviceStatus {
            format: rollout::FORMAT,
            device: "gw".into(),
            rollout_id: "r".into(),
            revision: 1,
            version: "1.0.0".into(),
            sequence: 1,
            bucket: 1,
            state: rollout::DeviceState::Active,
            progress_pct: None,
            reason: None,
            serving: "m 1.0.0".into(),
            model: None,
            update: 1,
            frozen: false,
        };
        assert_eq!(topics.record_topic(&status.to_json()), "perch/gw/rollout");
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let mut broker = BrokerConfig::plain("localhost", 8883);
        broker.endpoint.tls = Some(crate::config::TlsFiles {
            ca: ca.clone(),
            client: None,
        });
        let err = options(&"gw".parse().unwrap(), &broker, 1 << 20).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("CA file {} holds no PEM CERTIFICATE", ca.display())
        );
    }
}
