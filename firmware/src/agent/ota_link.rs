//! The agent's end of over-the-air updates: the [`Updater`] on a thread of its own.

use std::time::{Duration, Instant};

use rumqttc::{Publish, QoS};
use tokio::sync::mpsc;

use crate::ota::{self, Effect, Updater};

/// How often the updater is told that time passed (chunk time-outs, soak).
const OTA_TICK: Duration = Duration::from_millis(500);

/// What the agent hands the updater's thread.
#[derive(Debug)]
pub(super) enum OtaInput {
    /// A message on the group's rollout document topic.
    Document(Vec<u8>),
    /// A message on the device's chunk topic.
    Chunk(Vec<u8>),
    /// A metrics report interval ended.
    Interval {
        /// Requests answered.
        ok: u64,
        /// Requests failed.
        errors: u64,
        /// The interval's p99 latency, ms.
        p99_ms: Option<f64>,
    },
}

/// The updater, running on a thread of its own (an install loads and self-tests a
/// model, which blocks), fed by the agent and answering with [`Effect`]s.
#[derive(Debug)]
pub(super) struct OtaLink {
    /// The group's rollout document topic (QoS 1, retained by the operator).
    pub(super) document_topic: String,
    /// The device's bundle chunk topic (QoS 0: a lost chunk is asked for again).
    pub(super) chunk_topic: String,
    tx: std::sync::mpsc::Sender<OtaInput>,
}

impl OtaLink {
    /// Starts the updater's thread; `boot_effects` (from [`Updater::boot`]) go out
    /// first, then every effect of the updater, on `effects`.
    pub(super) fn start(
        mut updater: Updater,
        boot_effects: Vec<Effect>,
        effects: mpsc::UnboundedSender<Effect>,
    ) -> std::io::Result<OtaLink> {
        let [document_topic, chunk_topic] = updater.subscriptions();
        for effect in boot_effects {
            let _ = effects.send(effect);
        }
        let (tx, rx) = std::sync::mpsc::channel::<OtaInput>();
        std::thread::Builder::new()
            .name("perch-ota".into())
            .spawn(move || {
                use std::sync::mpsc::RecvTimeoutError;
                let mut last_tick = Instant::now();
                loop {
                    let input = match rx.recv_timeout(OTA_TICK) {
                        Ok(input) => Some(input),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => return,
                    };
                    let mut out = match &input {
                        Some(OtaInput::Document(payload)) => {
                            updater.handle(ota::Event::Document(payload))
                        }
                        Some(OtaInput::Chunk(frame)) => updater.handle(ota::Event::Chunk(frame)),
                        Some(OtaInput::Interval { ok, errors, p99_ms }) => {
                            updater.handle(ota::Event::Interval {
                                ok: *ok,
                                errors: *errors,
                                p99_ms: *p99_ms,
                            })
                        }
                        None => Vec::new(),
                    };
                    if last_tick.elapsed() >= OTA_TICK {
                        last_tick = Instant::now();
                        out.extend(updater.handle(ota::Event::Tick));
                    }
                    for effect in out {
                        if effects.send(effect).is_err() {
                            return;
                        }
                    }
                }
            })?;
        Ok(OtaLink {
            document_topic,
            chunk_topic,
            tx,
        })
    }

    /// The topics to subscribe to, with their QoS: rollout documents at QoS 1, bundle
    /// chunks at QoS 0 (as the operator sends them: a lost chunk is asked for again).
    pub(super) fn subscriptions(&self) -> [(&str, QoS); 2] {
        [
            (&self.document_topic, QoS::AtLeastOnce),
            (&self.chunk_topic, QoS::AtMostOnce),
        ]
    }

    /// Whether a message on `topic` is for the updater.
    pub(super) fn wants(&self, topic: &str) -> bool {
        topic == self.document_topic || topic == self.chunk_topic
    }

    /// Hands a message on one of its topics to the updater.
    pub(super) fn deliver(&self, publish: Publish) {
        let payload = publish.payload.to_vec();
        self.send(if publish.topic == self.document_topic {
            OtaInput::Document(payload)
        } else {
            OtaInput::Chunk(payload)
        });
    }

    /// Hands `input` to the updater's thread.
    pub(super) fn send(&self, input: OtaInput) {
        if self.tx.send(input).is_err() {
            log::error!("the update thread has stopped; over-the-air updates are off");
        }
    }
}
