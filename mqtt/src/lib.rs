//! Perch's MQTT layer, shared by `perchd` (the device agent), `perch rollout` (the
//! operator) and the fleet simulator, so each connects, reconnects and names topics
//! the same way:
//!
//! - [`BrokerUrl`]: `mqtt://host[:port]` and `mqtts://host[:port]`, IPv6 in brackets;
//! - [`Endpoint`]: where a broker is and how to authenticate (TLS files,
//!   credentials); [`ClientOptions`]: a client of one, with its id, keep-alive, last
//!   will and packet limits; [`ClientOptions::connect`] turns TCP_NODELAY on;
//! - [`pump`]: drives the event loop, reconnecting with [`Backoff`] (capped
//!   exponential, full jitter), and hands [`NetEvent`]s to an [`EventSink`];
//! - [`topics`]: every topic name.
//!
//! ```no_run
//! use perch_mqtt::{backoff::Backoff, pump, BrokerUrl, ClientOptions, Endpoint, NetEvent};
//! use std::time::Duration;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let url: BrokerUrl = "mqtt://127.0.0.1:1883".parse()?;
//! let endpoint = Endpoint::plain(url.host, url.port);
//! let (client, eventloop) = ClientOptions::new("watcher", endpoint).connect()?;
//! let (tx, mut events) = tokio::sync::mpsc::channel(64);
//! let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
//! tokio::spawn(pump(eventloop, backoff, tx));
//! while let Some(event) = events.recv().await {
//!     if event == NetEvent::Connected {
//!         client.subscribe(perch_mqtt::topics::DeviceTopic::Status.filter(), rumqttc::QoS::AtLeastOnce).await?;
//!     }
//! }
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod backoff;
pub mod guard;
mod options;
mod pump;
pub mod topics;
mod url;

pub use backoff::Backoff;
pub use guard::{Dropped, Guard};
pub use options::{ClientOptions, Endpoint, SetupError, TlsFiles};
pub use pump::{pump, EventSink, NetEvent, MIN_RECONNECT_DELAY};
pub use url::{BrokerUrl, MQTTS_PORT, MQTT_PORT};
