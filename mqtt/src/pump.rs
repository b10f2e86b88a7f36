//! The event pump: drives a client's rumqttc event loop, reconnects with backoff, and
//! hands what happened to whoever owns the connection.
//!
//! rumqttc reconnects on the next poll after an error, at once; the pump sleeps a
//! [`Backoff`] delay first (capped exponential, full jitter), so a fleet that lost its
//! broker does not hammer it in waves. Events go to an [`EventSink`]: a tokio channel
//! for an async owner (`perchd`'s agent, `perch rollout`), or a handler of the
//! owner's own (the simulator's clients record what they see in place).

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};

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
/// client handle is dropped, or `sink` refuses an event.
///
/// - After a connection error it waits `backoff`'s next delay (at least
///   [`MIN_RECONNECT_DELAY`]) before the next attempt. A connection resets the backoff
///   only if it stayed up for the backoff's `stable_after`
///   ([`Backoff::connection_ended`]): a broker that accepts and then drops every
///   connection is retried ever more slowly, not twice a second.
/// - A connection that hears nothing from the broker for 1.5 × the keep-alive (the
///   broker answers every ping, so a live link is never that quiet) is dropped as dead
///   and retried: a half-open TCP connection or a broker that froze is noticed within
///   1.5 × keep-alive, as the broker notices a silent client.
/// - So is a connection on which a QoS 1 publish stays unacknowledged for as long: a
///   broker that answers pings but no longer serves the session (one that another
///   connection under the same client id took over, say) would otherwise hold the
///   client's QoS 1 messages, and everything queued behind them, forever.
pub async fn pump(mut eventloop: EventLoop, mut backoff: Backoff, mut sink: impl EventSink) {
    let keep_alive = eventloop.mqtt_options.keep_alive();
    let silence_limit = (!keep_alive.is_zero()).then(|| keep_alive * 3 / 2);
    let mut up_since: Option<Instant> = None;
    let mut last_heard = Instant::now();
    let mut unacked = Unacked::default();
    loop {
        let polled = match (up_since, silence_limit) {
            (Some(_), Some(limit)) => {
                let deadline = link_deadline(last_heard, unacked.oldest(), limit);
                tokio::select! {
                    polled = eventloop.poll() => Some(polled),
                    _ = tokio::time::sleep_until(deadline.into()) => None,
                }
            }
            _ => Some(eventloop.poll().await),
        };
        let lost = match polled {
            Some(Ok(Event::Incoming(packet))) => {
                last_heard = Instant::now();
                if let Packet::PubAck(ack) = &packet {
                    unacked.acked(ack.pkid);
                }
                let event = match packet {
                    Packet::ConnAck(_) => {
                        up_since = Some(last_heard);
                        NetEvent::Connected
                    }
                    Packet::Publish(publish) => NetEvent::Message(publish),
                    Packet::SubAck(_) => NetEvent::Subscribed,
                    Packet::PubAck(ack) => NetEvent::PubAck(ack.pkid),
                    _ => continue,
                };
                if !sink.deliver(event).await {
                    return;
                }
                continue;
            }
            Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                unacked.sent(pkid, Instant::now());
                if !sink.deliver(NetEvent::Sent(pkid)).await {
                    return;
                }
                continue;
            }
            Some(Ok(Event::Outgoing(Outgoing::Disconnect))) => return,
            Some(Ok(_)) => continue,
            Some(Err(ConnectionError::RequestsDone)) => return,
            Some(Err(e)) => e.to_string(),
            None => {
                // rumqttc would only notice at the second unanswered ping, and never
                // a session that answers pings but nothing else.
                eventloop.clean();
                let limit = silence_limit.unwrap_or_default().as_secs_f64();
                if last_heard.elapsed().as_secs_f64() >= limit {
                    format!(
                        "nothing heard from the broker for {limit:.1} s (1.5 × keep-alive): \
                         the link is dead"
                    )
                } else {
                    format!(
                        "a QoS 1 message went unacknowledged for {limit:.1} s (1.5 × \
                         keep-alive): the broker no longer serves this connection"
                    )
                }
            }
        };
        unacked = Unacked::default();
        if let Some(since) = up_since.take() {
            backoff.connection_ended(since.elapsed());
        }
        if !sink.deliver(NetEvent::Disconnected(lost)).await {
            return;
        }
        let delay = backoff.next_delay(random()).max(MIN_RECONNECT_DELAY);
        log::debug!("next connection attempt in {delay:?}");
        tokio::time::sleep(delay).await;
    }
}

/// When a connection last heard from at `last_heard`, whose oldest unacknowledged QoS 1
/// publish went out at `oldest_unacked`, counts as dead: `limit` after the earlier.
fn link_deadline(last_heard: Instant, oldest_unacked: Option<Instant>, limit: Duration) -> Instant {
    oldest_unacked.map_or(last_heard, |sent| sent.min(last_heard)) + limit
}

/// QoS 1 publishes sent on the current connection and not yet acknowledged, with when
/// they went out, oldest first. At most rumqttc's inflight limit of them.
#[derive(Debug, Default)]
struct Unacked {
    sent: VecDeque<(u16, Instant)>,
}

impl Unacked {
    /// A publish went out with packet id `pkid` (0: QoS 0, which is never acknowledged).
    /// A retransmission keeps the first time.
    fn sent(&mut self, pkid: u16, at: Instant) {
        if pkid != 0 && !self.sent.iter().any(|(p, _)| *p == pkid) {
            self.sent.push_back((pkid, at));
        }
    }

    /// The broker acknowledged `pkid`.
    fn acked(&mut self, pkid: u16) {
        self.sent.retain(|(p, _)| *p != pkid);
    }

    /// When the oldest publish still waiting went out.
    fn oldest(&self) -> Option<Instant> {
        self.sent.front().map(|(_, at)| *at)
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

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(45);

    #[test]
    fn a_link_that_keeps_answering_pings_is_dead_once_a_qos1_publish_waits_past_the_limit() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut unacked = Unacked::default();
        // Nothing in flight: only silence counts.
        assert_eq!(link_deadline(t0, unacked.oldest(), LIMIT), t0 + LIMIT);
        unacked.sent(0, t0); // QoS 0: never acknowledged, never waited for
        assert_eq!(unacked.oldest(), None);
        unacked.sent(7, t0 + s(1));
        unacked.sent(8, t0 + s(2));
        // Pings answered at 30 s do not push the deadline past the publish's.
        assert_eq!(
            link_deadline(t0 + s(30), unacked.oldest(), LIMIT),
            t0 + s(1) + LIMIT
        );
        // A retransmission keeps the first time.
        unacked.sent(7, t0 + s(20));
        assert_eq!(unacked.oldest(), Some(t0 + s(1)));
        unacked.acked(7);
        assert_eq!(unacked.oldest(), Some(t0 + s(2)));
        unacked.acked(99); // not ours: nothing changes
        unacked.acked(8);
        assert_eq!(unacked.oldest(), None);
        assert_eq!(
            link_deadline(t0 + s(30), unacked.oldest(), LIMIT),
            t0 + s(30) + LIMIT
        );
    }
}
