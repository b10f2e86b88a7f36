//! The embedded MQTT broker: rumqttd inside the agent, on 127.0.0.1, for machines with
//! no broker of their own.
//!
//! With no broker configured, `perchd` starts one so that it works on a fresh machine
//! with nothing installed: its own MQTT client connects to it like to any other broker,
//! and local tools (`mosquitto_sub`, Node-RED, Telegraf) connect to the same port. It
//! speaks MQTT 3.1.1, keeps retained messages and last wills, and is configured here in
//! code (no configuration file). It listens on the loopback interface only: to reach a
//! device from elsewhere, run a real broker and point `perchd` at it.
//!
//! rumqttd has no way to stop a broker, so it runs until the process exits.
//!
//! The broker is the `embedded-broker` feature (on by default). Device builds leave it
//! out (`--no-default-features`): a fleet's devices report to a real broker, and
//! rumqttd is a large part of the binary. Such a build refuses to start without a
//! configured broker, saying so.

use std::net::SocketAddr;
#[cfg(feature = "embedded-broker")]
use std::net::{Ipv4Addr, TcpListener, TcpStream};
#[cfg(feature = "embedded-broker")]
use std::time::{Duration, Instant};

#[cfg(feature = "embedded-broker")]
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// How long [`start`] waits for the broker to accept connections.
#[cfg(feature = "embedded-broker")]
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// Something else listens on the port already.
    #[error(
        "cannot start the embedded MQTT broker on {addr}. If a broker already runs there, \
         use it (broker.url = \"mqtt://{addr}\" or --broker mqtt://{addr}); otherwise choose \
         another port (broker.embedded_port, --embedded-port)"
    )]
    Bind {
        /// The address it tried.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// The broker's thread could not be started.
    #[error("cannot start the embedded MQTT broker's thread")]
    Thread(#[source] std::io::Error),
    /// The broker stopped, or did not accept connections in time.
    #[error("the embedded MQTT broker on {addr} did not come up: {reason}")]
    NotUp {
        /// Its address.
        addr: SocketAddr,
        /// What was seen.
        reason: String,
    },
    /// This build of `perchd` has no embedded broker.
    #[error(
        "this perchd was built without the embedded MQTT broker (feature embedded-broker): \
         configure one (broker.url = \"mqtt://host:1883\", --broker, PERCH_BROKER)"
    )]
    NotBuiltIn,
}

/// A running embedded broker.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
}

impl EmbeddedBroker {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// rumqttd's settings for a small device: a few hundred connections, payloads up to
/// `max_payload` bytes, at most 4 MiB of queued messages per topic filter.
#[cfg(feature = "embedded-broker")]
pub fn config(addr: SocketAddr, max_payload: usize) -> Config {
    let server = ServerSettings {
        name: "perch-embedded".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: max_payload,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 256,
            max_outgoing_packet_count: 200,
            max_segment_size: 1 << 20,
            max_segment_count: 4,
            ..RouterConfig::default()
        },
        v4: Some([("perch".to_string(), server)].into_iter().collect()),
        ..Config::default()
    }
}

/// Starts a broker on 127.0.0.1:`port` taking payloads up to `max_payload` bytes, and
/// returns once it accepts connections. Blocks up to 10 s: call it from a blocking
/// context.
///
/// # Errors
///
/// The port is taken, the thread could not start, or the broker did not come up.
#[cfg(feature = "embedded-broker")]
pub fn start(port: u16, max_payload: usize) -> Result<EmbeddedBroker, BrokerError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    // rumqttd binds on its own thread and only logs a failure; try first so a taken
    // port is an error that says so. (Another process could take it in between; the
    // wait below catches that.)
    drop(TcpListener::bind(addr).map_err(|source| BrokerError::Bind { addr, source })?);
    let config = config(addr, max_payload);
    let thread = std::thread::Builder::new()
        .name("perch-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                log::error!("embedded MQTT broker: {e}");
            }
        })
        .map_err(BrokerError::Thread)?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            log::info!("embedded MQTT broker listening on {addr}");
            return Ok(EmbeddedBroker { addr });
        }
        if thread.is_finished() {
            return Err(BrokerError::NotUp {
                addr,
                reason: "it stopped (is the port taken?)".into(),
            });
        }
        if Instant::now() > deadline {
            return Err(BrokerError::NotUp {
                addr,
                reason: format!("no connection accepted within {START_TIMEOUT:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Without the `embedded-broker` feature: always [`BrokerError::NotBuiltIn`].
///
/// # Errors
///
/// Always.
#[cfg(not(feature = "embedded-broker"))]
pub fn start(_port: u16, _max_payload: usize) -> Result<EmbeddedBroker, BrokerError> {
    Err(BrokerError::NotBuiltIn)
}

#[cfg(all(test, feature = "embedded-broker"))]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_an_error_that_suggests_using_the_broker_there() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = start(port, 1 << 20).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&format!("mqtt://127.0.0.1:{port}")), "{text}");
        assert!(matches!(err, BrokerError::Bind { .. }));
    }
}
