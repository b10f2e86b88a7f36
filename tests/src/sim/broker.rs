//! The agent's embedded rumqttd, sized for a fleet, for a simulated fleet to talk
//! through (a mosquitto comes from `perch_testkit::Mosquitto`).

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use perch_firmware::config::DEFAULT_MAX_PAYLOAD_BYTES;
use perch_firmware::mqtt::INCOMING_HEADROOM;

use super::error::SimError;

/// How long a broker may take to accept connections after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts the agent's embedded broker (rumqttd, configured as
/// [`perch_firmware::broker::config`]) on 127.0.0.1:`port`, accepting up to
/// `max_connections` clients (the agent's own setting allows 256, too few for a fleet),
/// and returns once it accepts connections. rumqttd cannot be stopped: it runs until
/// the process exits.
///
/// # Errors
///
/// The port is taken, or the broker did not come up within 20 s.
pub fn start_embedded(port: u16, max_connections: usize) -> Result<SocketAddr, SimError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    drop(TcpListener::bind(addr).map_err(|e| SimError::Broker(format!("{addr}: {e}")))?);
    let payload = DEFAULT_MAX_PAYLOAD_BYTES as usize + INCOMING_HEADROOM;
    let mut config = perch_firmware::broker::config(addr, payload);
    config.router.max_connections = max_connections.max(16);
    let thread = std::thread::Builder::new()
        .name("perch-sim-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                log::error!("embedded MQTT broker: {e}");
            }
        })
        .map_err(SimError::Io)?;
    wait_listening(addr, || thread.is_finished())
        .map_err(|reason| SimError::Broker(format!("the embedded broker on {addr} {reason}")))?;
    Ok(addr)
}

/// Waits until `addr` accepts a TCP connection; `gone` says the server stopped.
fn wait_listening(addr: SocketAddr, mut gone: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if gone() {
            return Err("stopped before accepting connections".into());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "accepted no connection within {}s",
                START_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
