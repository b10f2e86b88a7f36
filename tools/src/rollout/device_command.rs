//! `perch device load|unload|index`: one repository command to one device over MQTT
//! (`perch/{device}/repository/req`, signed with the fleet key for a load or an
//! unload), and the device's reply (`perch/{device}/repository/res`).

use std::time::{Duration, Instant};

use perch_mqtt::topics::DeviceTopic;
use perch_mqtt::{Endpoint, NetEvent};
use perch_runtime::rollout as wire;
use rumqttc::QoS;
use serde_json::Value;

use super::error::OperatorError;
use super::operator::{block_on, connect, next_event};
use super::plan::PlanError;

/// Publishes `payload` (a signed command or an index request whose id is `id`) to
/// `device` through `broker`, and waits up to `timeout` for the reply with that id.
///
/// # Errors
///
/// [`OperatorError::Unreachable`] when the broker cannot be reached, or
/// [`OperatorError::System`] when no reply came in time (the device is offline, or
/// not subscribed: an older agent).
pub fn send_repository_command(
    broker: &Endpoint,
    device: &str,
    payload: Vec<u8>,
    id: &str,
    timeout: Duration,
) -> Result<Value, OperatorError> {
    wire::check_id("device", device).map_err(PlanError)?;
    let (request, reply_topic) = (
        DeviceTopic::RepositoryRequest.of(device),
        DeviceTopic::RepositoryReply.of(device),
    );
    block_on(async {
        let (client, mut events) = connect(broker, format!("perch-device-{id}"))?;
        let deadline = Instant::now() + timeout;
        let mut last_error = None;
        let mut sent = false;
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                let _ = client.try_disconnect();
                return Err(match (last_error, sent) {
                    (Some(reason), false) => OperatorError::Unreachable {
                        broker: broker.url(),
                        reason,
                    },
                    _ => OperatorError::System(format!(
                        "device {device} did not answer on {reply_topic} within {} s",
                        timeout.as_secs_f64()
                    )),
                });
            };
            match next_event(&mut events, left).await? {
                Some(NetEvent::Connected) => {
                    client
                        .subscribe(reply_topic.as_str(), QoS::AtMostOnce)
                        .await?;
                    // Once: a signed command sent again would be refused as a replay.
                    if !sent {
                        client
                            .publish(request.as_str(), QoS::AtLeastOnce, false, payload.clone())
                            .await?;
                        sent = true;
                    }
                }
                Some(NetEvent::Disconnected(why)) => last_error = Some(why),
                Some(NetEvent::Message(message)) if message.topic == reply_topic => {
                    let Ok(reply) = serde_json::from_slice::<Value>(&message.payload) else {
                        continue;
                    };
                    if reply["id"] == id {
                        let _ = client.try_disconnect();
                        return Ok(reply);
                    }
                }
                _ => {}
            }
        }
    })
}
