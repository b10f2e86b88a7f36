//! `[broker]`: the MQTT broker to connect to, and how.

use std::path::PathBuf;
use std::time::Duration;

pub use perch_mqtt::{Endpoint, TlsFiles};
use serde::Deserialize;
use toml::Spanned;

use super::args::Args;
use super::origin::{ConfigError, Setting, Source};
use super::values::{BrokerUrl, HumanDuration};

/// Where the embedded broker listens by default (127.0.0.1), MQTT's registered port.
pub const DEFAULT_EMBEDDED_PORT: u16 = 1883;
/// MQTT keep-alive interval by default.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// The first reconnect backoff window by default.
pub const DEFAULT_RECONNECT_BASE: Duration = Duration::from_millis(500);
/// The largest reconnect backoff window by default.
pub const DEFAULT_RECONNECT_CAP: Duration = Duration::from_secs(30);

/// The broker the agent connects to.
#[derive(Debug, Clone, PartialEq)]
pub enum Broker {
    /// A broker started inside the agent, on 127.0.0.1 at `port`.
    Embedded {
        /// The port it listens on.
        port: u16,
    },
    /// A broker elsewhere.
    External(BrokerConfig),
}

/// How to reach and authenticate to an external broker; also used for the embedded one.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConfig {
    /// Where it listens, TLS files and credentials.
    pub endpoint: Endpoint,
    /// Interval of MQTT keep-alive pings; the broker declares the device gone (and
    /// publishes its last will) after 1.5 of them without a word.
    pub keep_alive: Duration,
    /// First reconnect backoff window.
    pub reconnect_base: Duration,
    /// Largest reconnect backoff window.
    pub reconnect_cap: Duration,
}

impl BrokerConfig {
    /// A plain-TCP broker at `host:port`, without credentials, with default timings.
    pub fn plain(host: impl Into<String>, port: u16) -> BrokerConfig {
        BrokerConfig {
            endpoint: Endpoint::plain(host, port),
            keep_alive: DEFAULT_KEEP_ALIVE,
            reconnect_base: DEFAULT_RECONNECT_BASE,
            reconnect_cap: DEFAULT_RECONNECT_CAP,
        }
    }
}

/// The `[broker]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BrokerFile {
    url: Option<Spanned<BrokerUrl>>,
    embedded_port: Option<Spanned<u16>>,
    ca_file: Option<Spanned<PathBuf>>,
    client_cert: Option<Spanned<PathBuf>>,
    client_key: Option<Spanned<PathBuf>>,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    keep_alive: Option<Spanned<HumanDuration>>,
    reconnect_base: Option<Spanned<HumanDuration>>,
    reconnect_cap: Option<Spanned<HumanDuration>>,
}

/// The flags over the `[broker]` section.
///
/// # Errors
///
/// A keep-alive under a second, TLS files without `mqtts://` (or the reverse), half
/// of a client certificate, a password without a user name.
pub(super) fn resolve(
    args: &Args,
    file: BrokerFile,
    source: &Source<'_>,
) -> Result<Broker, ConfigError> {
    let in_file = |p: Option<Spanned<PathBuf>>| {
        p.map(|p| {
            let span = p.span();
            Spanned::new(span, source.path(p.into_inner()))
        })
    };
    let url = Setting::pick(("--broker", args.broker.clone()), ("broker.url", file.url));
    let ca = Setting::pick(
        ("--mqtt-ca", args.mqtt_ca.clone()),
        ("broker.ca_file", in_file(file.ca_file)),
    );
    let cert = Setting::pick(
        ("--mqtt-client-cert", args.mqtt_client_cert.clone()),
        ("broker.client_cert", in_file(file.client_cert)),
    );
    let key = Setting::pick(
        ("--mqtt-client-key", args.mqtt_client_key.clone()),
        ("broker.client_key", in_file(file.client_key)),
    );
    let username = Setting::pick(
        ("--mqtt-username", args.mqtt_username.clone()),
        ("broker.username", file.username),
    );
    let password = Setting::pick(
        ("--mqtt-password", args.mqtt_password.clone()),
        ("broker.password", file.password),
    );
    let duration = |key, value: Option<Spanned<HumanDuration>>, default| {
        let value = value.map(|d| Spanned::new(d.span(), d.into_inner().0));
        Setting::file_or(key, value, default)
    };
    let keep_alive = duration("broker.keep_alive", file.keep_alive, DEFAULT_KEEP_ALIVE);
    if keep_alive.value < Duration::from_secs(1) {
        return Err(source.invalid(&keep_alive, "must be at least 1s"));
    }
    let reconnect_base = duration(
        "broker.reconnect_base",
        file.reconnect_base,
        DEFAULT_RECONNECT_BASE,
    );
    let reconnect_cap = duration(
        "broker.reconnect_cap",
        file.reconnect_cap,
        DEFAULT_RECONNECT_CAP,
    );
    let embedded_port = Setting::pick_or(
        ("--embedded-port", args.embedded_port),
        ("broker.embedded_port", file.embedded_port),
        DEFAULT_EMBEDDED_PORT,
    );
    let embedded = Broker::Embedded {
        port: embedded_port.value,
    };
    let Some(url) = url else {
        return Ok(embedded);
    };
    let BrokerUrl::Mqtt { host, port, tls } = url.value.clone() else {
        return Ok(embedded);
    };
    let tls = match (tls, ca) {
        (false, None) => None,
        (false, Some(ca)) => {
            return Err(source.invalid(&ca, "a CA file needs an mqtts:// broker URL"));
        }
        (true, None) => {
            return Err(source.invalid(
                &url,
                "mqtts:// needs the broker's CA file (broker.ca_file, --mqtt-ca)",
            ));
        }
        (true, Some(ca)) => {
            let client = match (cert, key) {
                (Some(c), Some(k)) => Some((c.value, k.value)),
                (None, None) => None,
                (Some(c), None) => {
                    return Err(
                        source.invalid(&c, "a client certificate needs its key (client_key)")
                    )
                }
                (None, Some(k)) => {
                    return Err(
                        source.invalid(&k, "a client key needs its certificate (client_cert)")
                    )
                }
            };
            Some(TlsFiles {
                ca: ca.value,
                client,
            })
        }
    };
    if let (Some(password), None) = (&password, &username) {
        return Err(source.invalid(password, "a password needs a user name (username)"));
    }
    Ok(Broker::External(BrokerConfig {
        endpoint: Endpoint {
            host,
            port,
            tls,
            username: username.map(|u| u.value),
            password: password.map(|p| p.value),
        },
        keep_alive: keep_alive.value,
        reconnect_base: reconnect_base.value,
        reconnect_cap: reconnect_cap.value,
    }))
}
