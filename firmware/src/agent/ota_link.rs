//! The agent's end of over-the-air updates: the [`Updater`] on a thread of its own, fed
//! through bounded queues.
//!
//! Whatever arrives on the update topics waits in memory only so far: at most
//! [`CHUNK_QUEUE`] chunks (more are dropped and counted; the updater asks again for the
//! chunk it needs), the newest rollout document (an older one still waiting is
//! replaced: only the newest matters, and the broker retains it anyway), and the last
//! [`INTERVAL_QUEUE`] report intervals. A flood on those topics, or an updater busy
//! installing a bundle for a while, costs a bounded amount of memory.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use perch_runtime::histogram::Histogram;
use rumqttc::{Publish, QoS};
use tokio::sync::mpsc;

use crate::ota::{self, Effect, Updater};

/// How often the updater is told that time passed (chunk time-outs, soak).
const OTA_TICK: Duration = Duration::from_millis(500);
/// Chunks waiting for the updater; more are dropped (the updater asks again).
pub(super) const CHUNK_QUEUE: usize = 8;
/// Report intervals waiting for the updater; older ones are dropped first.
pub(super) const INTERVAL_QUEUE: usize = 64;

/// A report interval, for the updater's soak.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct IntervalCounts {
    /// Requests answered.
    pub(super) ok: u64,
    /// Requests failed.
    pub(super) errors: u64,
    /// The latency of the interval's successful requests.
    pub(super) latency: Histogram,
}

/// An effect of the updater of one model: `model` is `None` for the primary model's.
#[derive(Debug)]
pub(super) struct ModelEffect {
    /// The model the updater keeps up to date (`None`: the primary).
    pub(super) model: Option<String>,
    /// What to do.
    pub(super) effect: Effect,
}

/// What the queue carries: chunks, and wake-ups for the side slots.
#[derive(Debug)]
enum Input {
    /// A chunk frame.
    Chunk(Vec<u8>),
    /// Something waits in a side slot.
    Wake,
}

/// The side slots the agent fills and the updater's thread drains.
#[derive(Debug, Default)]
struct Slots {
    document: Mutex<Option<Vec<u8>>>,
    intervals: Mutex<VecDeque<IntervalCounts>>,
}

/// The updater, running on a thread of its own (an install loads and self-tests a
/// model, which blocks), fed by the agent and answering with [`Effect`]s.
#[derive(Debug)]
pub(super) struct OtaLink {
    /// The model its updater keeps up to date (`None`: the primary).
    pub(super) model: Option<String>,
    /// The group's rollout document topic for the model (QoS 1, retained by the
    /// operator).
    pub(super) document_topic: String,
    /// The device's bundle chunk topic (QoS 0: a lost chunk is asked for again).
    pub(super) chunk_topic: String,
    tx: SyncSender<Input>,
    slots: Arc<Slots>,
    dropped: Arc<AtomicU64>,
}

/// The updater's end of an [`OtaLink`].
struct Inbox {
    rx: Receiver<Input>,
    slots: Arc<Slots>,
}

impl OtaLink {
    /// Starts the updater of `model` (`None`: the primary) on a thread of its own;
    /// `boot_effects` (from [`Updater::boot`]) go out first, then every effect of the
    /// updater, on `effects`, tagged with the model.
    pub(super) fn start(
        mut updater: Updater,
        model: Option<String>,
        boot_effects: Vec<Effect>,
        effects: mpsc::UnboundedSender<ModelEffect>,
    ) -> std::io::Result<OtaLink> {
        let [document_topic, chunk_topic] = updater.subscriptions();
        let tagged = |effect| ModelEffect {
            model: model.clone(),
            effect,
        };
        for effect in boot_effects {
            let _ = effects.send(tagged(effect));
        }
        let (mut link, inbox) = OtaLink::channels(document_topic, chunk_topic);
        link.model.clone_from(&model);
        std::thread::Builder::new()
            .name("perch-ota".into())
            .spawn(move || inbox.serve(&mut updater, model, &effects))?;
        Ok(link)
    }

    /// The link and its inbox, without a thread.
    fn channels(document_topic: String, chunk_topic: String) -> (OtaLink, Inbox) {
        let (tx, rx) = std::sync::mpsc::sync_channel(CHUNK_QUEUE);
        let slots = Arc::new(Slots::default());
        let link = OtaLink {
            model: None,
            document_topic,
            chunk_topic,
            tx,
            slots: slots.clone(),
            dropped: Arc::new(AtomicU64::new(0)),
        };
        (link, Inbox { rx, slots })
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

    /// Chunks dropped because the updater's queue was full.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Hands a message on one of its topics to the updater (the chunk topic is every
    /// model's: each updater drops the chunks of rollouts other than its own).
    pub(super) fn deliver(&self, publish: &Publish) {
        let payload = publish.payload.to_vec();
        if publish.topic == self.document_topic {
            *lock(&self.slots.document) = Some(payload);
            self.wake();
        } else {
            match self.tx.try_send(Input::Chunk(payload)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    log::debug!("the update thread is busy: a chunk was dropped");
                }
                Err(TrySendError::Disconnected(_)) => stopped(),
            }
        }
    }

    /// Hands a report interval to the updater.
    pub(super) fn interval(&self, counts: IntervalCounts) {
        {
            let mut intervals = lock(&self.slots.intervals);
            if intervals.len() == INTERVAL_QUEUE {
                intervals.pop_front();
            }
            intervals.push_back(counts);
        }
        self.wake();
    }

    fn wake(&self) {
        if let Err(TrySendError::Disconnected(_)) = self.tx.try_send(Input::Wake) {
            stopped();
        }
        // Full: the thread has work queued and drains the slots when it gets to it.
    }
}

fn stopped() {
    log::error!("the update thread has stopped; over-the-air updates are off");
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inbox {
    /// The updater's thread: chunks from the queue, then whatever waits in the slots,
    /// and a tick every [`OTA_TICK`], until the agent drops its link.
    fn serve(
        self,
        updater: &mut Updater,
        model: Option<String>,
        effects: &mpsc::UnboundedSender<ModelEffect>,
    ) {
        use std::sync::mpsc::RecvTimeoutError;
        let mut last_tick = Instant::now();
        loop {
            let mut out = match self.rx.recv_timeout(OTA_TICK) {
                Ok(Input::Chunk(frame)) => updater.handle(ota::Event::Chunk(&frame)),
                Ok(Input::Wake) | Err(RecvTimeoutError::Timeout) => Vec::new(),
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let document = lock(&self.slots.document).take();
            if let Some(payload) = document {
                out.extend(updater.handle(ota::Event::Document(&payload)));
            }
            let intervals: Vec<IntervalCounts> = lock(&self.slots.intervals).drain(..).collect();
            for i in intervals {
                out.extend(updater.handle(ota::Event::Interval {
                    ok: i.ok,
                    errors: i.errors,
                    latency: &i.latency,
                }));
            }
            if last_tick.elapsed() >= OTA_TICK {
                last_tick = Instant::now();
                if let Some(unix_ms) = crate::clock::synchronized_unix_ms() {
                    out.extend(updater.handle(ota::Event::WallClock { unix_ms }));
                }
                out.extend(updater.handle(ota::Event::Tick));
            }
            for effect in out {
                let model = model.clone();
                if effects.send(ModelEffect { model, effect }).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(topic: &str, payload: &[u8]) -> Publish {
        Publish::new(topic, QoS::AtMostOnce, payload.to_vec())
    }

    #[test]
    fn a_flood_of_chunks_waits_in_a_bounded_queue_and_the_rest_are_dropped_and_counted() {
        let (link, inbox) = OtaLink::channels("doc".into(), "chunk".into());
        for i in 0..10_000u32 {
            link.deliver(&publish("chunk", &i.to_be_bytes()));
        }
        assert_eq!(link.dropped(), 10_000 - CHUNK_QUEUE as u64);
        let queued: Vec<_> = inbox.rx.try_iter().collect();
        assert_eq!(queued.len(), CHUNK_QUEUE);
    }

    #[test]
    fn only_the_newest_waiting_document_is_kept_and_intervals_are_bounded() {
        let (link, inbox) = OtaLink::channels("doc".into(), "chunk".into());
        for i in 0..1_000u32 {
            link.deliver(&publish("doc", &i.to_be_bytes()));
            link.interval(IntervalCounts {
                ok: u64::from(i),
                errors: 0,
                latency: Histogram::new(),
            });
        }
        assert_eq!(
            lock(&inbox.slots.document).as_deref(),
            Some(&999u32.to_be_bytes()[..])
        );
        let intervals = lock(&inbox.slots.intervals);
        assert_eq!(intervals.len(), INTERVAL_QUEUE);
        assert_eq!(intervals.back().map(|i| i.ok), Some(999));
        assert!(inbox.rx.try_iter().count() <= CHUNK_QUEUE);
        assert_eq!(link.dropped(), 0, "wake-ups are not drops");
    }
}
