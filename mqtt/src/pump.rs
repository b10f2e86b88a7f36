//! The event pump: drives a client's rumqttc event loop, reconnects with backoff, and
//! hands what happened to whoever owns the connection.
//!
//! rumqttc reconnects on the next poll after an error, at once; the pump sleeps a
//! [`Backoff`] delay first (capped exponential, full jitter), so a fleet that lost its
//! broker does not hammer it in waves. Events go to an [`EventSink`]: a tokio channel
//! for an async owner (`perchd`'s agent, `perch rollout`), or a handler of the
//! owner's own (the simulator's clients record what they see in place).

use std::future::Future;
use std::time::Duration;

use rumqttc::{ConnectionError, Event, EventLoop, Outgoing, Packet, Publish};
use tokio::sync::mpsc;

use crate::backoff::Backoff;

/// The shortest wait before the next connection attempt, so a zero jitter draw does not
/// spin.
pub const MIN_RECONNECT_DELAY: Duration = Duration::from_millis(20);

/// What happened on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// Connected (again): subscribe, say online, deliver.
    Connected,
    /// A connection attempt failed or the connection dropped, with why.
    Disconnected(String),
    /// A message on a subscribed topic.
    Message(Publish),
    /// The broker acknowledged a subscription.
    Subscribed,
    /// A publish went out with this packet id (0 for QoS 0).
    Sent(u16),
    /// The broker acknowledged this packet id (QoS 1).
    PubAck(u16),
}

/// Where the pump hands its events.
pub trait EventSink: Send {
    /// Takes `event`; `false` when the owner is gone and the pump should stop.
    fn deliver(&mut self, event: NetEvent) -> impl Future<Output = bool> + Send;
}

/// A bounded channel: the pump waits while the owner is behind, so a flood of requests
/// backs up to the broker rather than into memory.
impl EventSink for mpsc::Sender<NetEvent> {
    async fn deliver(&mut self, event: NetEvent) -> bool {
        self.send(event).await.is_ok()
    }
}

/// Drives `eventloop` until the client disconnects (its own disconnect went out), every
/// client handle is dropped, or `sink` refuses an event. After a connection error it
/// waits `backoff`'s next delay (at least [`MIN_RECONNECT_DELAY`]) before the next
/// attempt; a successful connection resets it.
pub async fn pump(mut eventloop: EventLoop, mut backoff: Backoff, mut sink: impl EventSink) {
    loop {
        let event = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                NetEvent::Connected
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => NetEvent::Message(publish),
            Ok(Event::Incoming(Packet::SubAck(_))) => NetEvent::Subscribed,
            Ok(Event::Incoming(Packet::PubAck(ack))) => NetEvent::PubAck(ack.pkid),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => NetEvent::Sent(pkid),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(ConnectionError::RequestsDone) => return,
            Err(e) => {
                if !sink.deliver(NetEvent::Disconnected(e.to_string())).await {
                    return;
                }
                let delay = backoff.next_delay(random()).max(MIN_RECONNECT_DELAY);
                log::debug!("next connection attempt in {delay:?}");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        if !sink.deliver(event).await {
            return;
        }
    }
}

/// A uniformly random `u64` for the backoff's jitter; the clock's nanoseconds if the
/// system has no random source.
fn random() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.subsec_nanos()),
        )
    })
}
