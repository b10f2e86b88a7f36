//! Helpers shared by the integration tests that run `perchd` as a process: the model
//! folder, an MQTT subscriber on a thread, and what `perch_testkit` offers every test
//! (reserved ports, child processes, mosquitto).
//!
//! Each test binary compiles this module on its own (`mod common;`) and uses a part of
//! it, hence the module-wide `allow(dead_code)`.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

use perch_testkit::PATIENCE;

pub mod http;

/// The workspace's `models/` folder.
pub fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// What a signed bundle of reference model `folder` holds: its ONNX file and first
/// golden pair, named `name` at `version`, sequence 1, default SLOs, no feature schema.
pub fn reference_bundle(
    folder: &str,
    name: &str,
    version: &str,
) -> perch_runtime::bundle::BundleContents {
    use perch_runtime::bundle;
    use perch_runtime::engine::{LoadOptions, Model};
    let dir = models().join(folder);
    let model = Model::load(dir.join("model.onnx"), &LoadOptions::new()).unwrap();
    let read = |file: &str| std::fs::read(dir.join("golden").join(file)).unwrap();
    bundle::BundleContents {
        name: name.into(),
        version: version.parse().unwrap(),
        sequence: 1,
        created_unix: 0,
        model_format: bundle::ModelKind::Onnx,
        model: std::fs::read(dir.join("model.onnx")).unwrap(),
        signature: bundle::TensorSignature::from_metadata(model.metadata()),
        golden_inputs: vec![read("input_0.npy")],
        golden_outputs: vec![read("output_0.npy")],
        tolerance: 1e-4,
        slo: bundle::Slo::default(),
        schema: None,
    }
}

/// The report records waiting in a spool folder (its `.rec` files).
pub fn spooled_records(spool: &Path) -> usize {
    std::fs::read_dir(spool).map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "rec"))
            .count()
    })
}

/// A test's MQTT client: subscribes to `topics` on every (re)connection, retrying until
/// the broker listens, and hands over what arrives.
pub struct Mqtt {
    client: Client,
    messages: mpsc::Receiver<(String, Vec<u8>)>,
    backlog: RefCell<VecDeque<(String, Vec<u8>)>>,
}

impl Mqtt {
    /// Connects with a clean session, or a persistent one (the broker queues QoS 1
    /// messages for it while it is away).
    pub fn connect(port: u16, name: &str, topics: &[String], persistent: bool) -> Mqtt {
        let mut options =
            MqttOptions::new(format!("{name}-{}", std::process::id()), "127.0.0.1", port);
        options
            .set_clean_session(!persistent)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut connection) = Client::new(options, 100);
        let (tx, messages) = mpsc::channel();
        let topics = topics.to_vec();
        let subscriber = client.clone();
        std::thread::spawn(move || loop {
            match connection.recv() {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    for t in &topics {
                        let _ = subscriber.try_subscribe(t.as_str(), QoS::AtLeastOnce);
                    }
                }
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    if tx.send((p.topic, p.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => return,
            }
        });
        Mqtt {
            client,
            messages,
            backlog: RefCell::new(VecDeque::new()),
        }
    }

    /// Publishes `payload` on `topic` at QoS 1.
    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .unwrap();
    }

    /// The next message on `topic`, keeping those on other topics for later calls.
    pub fn next(&self, topic: &str) -> Vec<u8> {
        self.next_within(topic, PATIENCE)
            .unwrap_or_else(|| panic!("timed out waiting for a message on {topic}"))
    }

    /// The next message on `topic` if one comes within `timeout`.
    pub fn next_within(&self, topic: &str, timeout: Duration) -> Option<Vec<u8>> {
        let mut backlog = self.backlog.borrow_mut();
        if let Some(i) = backlog.iter().position(|(t, _)| t == topic) {
            return backlog.remove(i).map(|(_, payload)| payload);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok((t, payload)) if t == topic => return Some(payload),
                Ok(other) => backlog.push_back(other),
                Err(_) => return None,
            }
        }
    }

    /// The next message on any topic, with its topic, if one comes within `timeout`
    /// (those kept by [`Mqtt::next_within`] first).
    pub fn any_within(&self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        if let Some(kept) = self.backlog.borrow_mut().pop_front() {
            return Some(kept);
        }
        self.messages.recv_timeout(timeout).ok()
    }

    /// The first message on `topic` for which `pick` returns something, dropping the
    /// messages on `topic` before it.
    pub fn wait_for<T>(&self, topic: &str, mut pick: impl FnMut(&[u8]) -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(found) = pick(&self.next(topic)) {
                return found;
            }
            assert!(Instant::now() < deadline, "timed out waiting on {topic}");
        }
    }
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
    }
}

/// The values of an f32 tensor (a golden file, an output).
pub fn floats(tensor: perch_runtime::engine::TensorView<'_>) -> Vec<f32> {
    tensor.as_f32().unwrap().to_vec()
}

/// The largest absolute difference over the largest absolute expected value.
pub fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
    diff / scale
}
