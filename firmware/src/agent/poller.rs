//! The connection task: drives rumqttc's event loop and hands the agent what happened.

use std::time::Duration;

use rumqttc::{ConnectionError, Event, EventLoop, Outgoing, Packet, Publish};
use tokio::sync::mpsc;

use crate::backoff::Backoff;

/// The shortest wait before the next connection attempt, so a zero jitter draw does not
/// spin.
const MIN_RECONNECT_DELAY: Duration = Duration::from_millis(20);

/// What the connection task tells the agent.
#[derive(Debug)]
pub(super) enum Net {
    /// Connected (again): subscribe, say online, deliver.
    Connected,
    /// A connection attempt failed or the connection dropped.
    Disconnected(String),
    /// A message on a subscribed topic.
    Message(Publish),
    /// A publish went out with this packet id (0 for QoS 0).
    Sent(u16),
    /// The broker acknowledged this packet id.
    PubAck(u16),
}

/// Drives rumqttc's event loop, which reconnects on the next poll after an error; this
/// sleeps a backoff delay first (rumqttc itself would retry at once).
pub(super) async fn poll(mut eventloop: EventLoop, tx: mpsc::Sender<Net>, mut backoff: Backoff) {
    loop {
        let event = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                Net::Connected
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => Net::Message(publish),
            Ok(Event::Incoming(Packet::PubAck(ack))) => Net::PubAck(ack.pkid),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Net::Sent(pkid),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(ConnectionError::RequestsDone) => return,
            Err(e) => {
                if tx.send(Net::Disconnected(e.to_string())).await.is_err() {
                    return;
                }
                let random = getrandom::u64().unwrap_or_else(|_| {
                    u64::from(
                        std::time::SystemTime::now()
                            .elapsed()
                            .map_or(7, |d| d.subsec_nanos()),
                    )
                });
                let delay = backoff.next_delay(random).max(MIN_RECONNECT_DELAY);
                log::debug!("next connection attempt in {delay:?}");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
}
