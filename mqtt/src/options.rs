//! How one client connects: address, TLS, credentials, keep-alive, last will, packet
//! limits; built into rumqttc's options with TCP_NODELAY on.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rumqttc::{AsyncClient, EventLoop, LastWill, MqttOptions, TlsConfiguration, Transport};

use crate::guard::{self, Guard, Upstream};
use crate::url::BrokerUrl;

/// The files of an `mqtts://` connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate authority for the broker's certificate.
    pub ca: PathBuf,
    /// PEM client certificate and private key, for brokers that ask for one.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Why the connection options could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// A TLS file could not be read.
    #[error("cannot read {what} {}", path.display())]
    Read {
        /// Which file (`CA file`, `client certificate`, `client key`).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A TLS file holds no PEM block of the expected kind.
    #[error("{what} {} holds no PEM {kind}", path.display())]
    NotPem {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What was expected (`CERTIFICATE`, `PRIVATE KEY`).
        kind: &'static str,
    },
    /// An `mqtts://` broker without the CA file that signed its certificate.
    #[error("{url}: mqtts:// needs the broker's CA file")]
    NoCa {
        /// The broker.
        url: BrokerUrl,
    },
    /// The TLS files do not make a usable TLS configuration.
    #[error("TLS: {reason}")]
    Tls {
        /// What is wrong.
        reason: String,
    },
    /// The guard's relay socket could not be set up.
    #[error("cannot start the MQTT relay")]
    Relay(#[source] io::Error),
}

/// Where a broker listens and how to authenticate to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS files; `None` for plain TCP.
    pub tls: Option<TlsFiles>,
    /// User name, if the broker wants one.
    pub username: Option<String>,
    /// Password, with the user name.
    pub password: Option<String>,
}

impl Endpoint {
    /// A plain-TCP broker at `host:port`, without credentials.
    pub fn plain(host: impl Into<String>, port: u16) -> Endpoint {
        Endpoint {
            host: host.into(),
            port,
            tls: None,
            username: None,
            password: None,
        }
    }

    /// Its URL (`mqtts://` when it has TLS files).
    pub fn url(&self) -> BrokerUrl {
        BrokerUrl {
            host: self.host.clone(),
            port: self.port,
            tls: self.tls.is_some(),
        }
    }
}

/// Everything about one client's connection. [`ClientOptions::new`] gives the
/// defaults; set the fields that differ, then [`connect`](ClientOptions::connect).
///
/// ```
/// use perch_mqtt::{BrokerUrl, ClientOptions, Endpoint};
///
/// let url: BrokerUrl = "mqtt://127.0.0.1:1883".parse()?;
/// let mut options = ClientOptions::new("perch-gw-1", Endpoint::plain(url.host, url.port));
/// options.max_incoming_packet = 64 << 10;
/// let mqtt = options.mqtt_options().unwrap();
/// assert_eq!(mqtt.broker_address(), ("127.0.0.1".to_string(), 1883));
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The client id (unique per broker).
    pub client_id: String,
    /// The broker.
    pub endpoint: Endpoint,
    /// Interval of keep-alive pings; the broker declares the client gone (and
    /// publishes its last will) after 1.5 of them without a word.
    pub keep_alive: Duration,
    /// Whether the broker forgets the session at each connection.
    pub clean_session: bool,
    /// What the broker publishes when the client is gone without a goodbye.
    pub last_will: Option<LastWill>,
    /// The largest packet the client accepts. Through [`ClientOptions::connect_guarded`]
    /// a larger PUBLISH is dropped and counted; through [`ClientOptions::connect`] it
    /// drops the connection.
    pub max_incoming_packet: usize,
    /// The largest packet the client sends.
    pub max_outgoing_packet: usize,
    /// QoS 1 publishes in flight at once (rumqttc's default when `None` or 0).
    pub inflight: Option<u16>,
    /// Requests (publishes, subscriptions) queued for the event loop.
    pub request_capacity: usize,
    /// How long a connection attempt may take, TCP, TLS handshake and CONNACK together
    /// (whole seconds, at least 1): a broker or a link that stalls mid-handshake is
    /// given up on and retried with backoff.
    pub connect_timeout: Duration,
}

impl ClientOptions {
    /// A client of the broker at `endpoint`: keep-alive 30 s, a clean session, no last
    /// will, 1 MiB packet limits, 64 queued requests.
    pub fn new(client_id: impl Into<String>, endpoint: Endpoint) -> ClientOptions {
        ClientOptions {
            client_id: client_id.into(),
            endpoint,
            keep_alive: Duration::from_secs(30),
            clean_session: true,
            last_will: None,
            max_incoming_packet: 1 << 20,
            max_outgoing_packet: 1 << 20,
            inflight: None,
            request_capacity: 64,
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// rumqttc's options. TLS files are read here, so a wrong file fails at start-up
    /// with its name rather than at every connection attempt.
    ///
    /// # Errors
    ///
    /// A TLS file cannot be read or holds no PEM block of its kind.
    pub fn mqtt_options(&self) -> Result<MqttOptions, SetupError> {
        let mut options = self.base_options(&self.endpoint.host, self.endpoint.port);
        if let Some(tls) = &self.endpoint.tls {
            let (ca, client_auth) = read_tls(tls)?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
                ca,
                alpn: None,
                client_auth,
            }));
        }
        Ok(options)
    }

    /// rumqttc's options for a broker at `host:port`, without the transport.
    fn base_options(&self, host: &str, port: u16) -> MqttOptions {
        let broker = &self.endpoint;
        let mut options = MqttOptions::new(&self.client_id, host, port);
        options
            .set_keep_alive(self.keep_alive)
            .set_clean_session(self.clean_session)
            .set_max_packet_size(self.max_incoming_packet, self.max_outgoing_packet)
            .set_request_channel_capacity(self.request_capacity);
        if let Some(will) = &self.last_will {
            options.set_last_will(will.clone());
        }
        if let Some(inflight) = self.inflight.filter(|&n| n > 0) {
            options.set_inflight(inflight);
        }
        if let Some(user) = &broker.username {
            options.set_credentials(user, broker.password.as_deref().unwrap_or(""));
        }
        options
    }

    /// The client and its event loop (drive it with [`crate::pump`]), with TCP_NODELAY
    /// on: requests and replies are small writes answered by small writes, and without
    /// it Nagle's algorithm meets the peer's delayed ACK and adds up to 40 ms to each
    /// round trip.
    ///
    /// # Errors
    ///
    /// As [`mqtt_options`](ClientOptions::mqtt_options).
    pub fn connect(&self) -> Result<(AsyncClient, EventLoop), SetupError> {
        Ok(self.client(self.mqtt_options()?))
    }

    /// As [`connect`](ClientOptions::connect), through the inbound guard
    /// ([`crate::guard`]) spawned on `runtime`: an incoming PUBLISH larger than
    /// [`max_incoming_packet`](ClientOptions::max_incoming_packet) is dropped and
    /// counted by the returned [`Guard`] (and acknowledged to the broker) instead of
    /// ending the connection. Keep the `Guard`: the relay stops when it is dropped.
    ///
    /// # Errors
    ///
    /// A TLS file cannot be read or used, or the relay's socket cannot be created.
    pub fn connect_guarded(
        &self,
        runtime: &tokio::runtime::Handle,
    ) -> Result<(AsyncClient, EventLoop, Guard), SetupError> {
        let broker = &self.endpoint;
        let tls = match &broker.tls {
            Some(files) => {
                let (ca, client_auth) = read_tls(files)?;
                Some(tls_connector(&broker.host, &ca, client_auth)?)
            }
            None => None,
        };
        let upstream = Upstream {
            host: broker.host.clone(),
            port: broker.port,
            tls,
            connect_timeout: self.connect_timeout.max(Duration::from_secs(1)),
        };
        let relay =
            guard::start(runtime, upstream, self.max_incoming_packet).map_err(SetupError::Relay)?;
        let mut options = self.base_options(&relay.socket.to_string_lossy(), 0);
        options.set_transport(Transport::unix());
        let (client, eventloop) = self.client(options);
        Ok((client, eventloop, relay.guard))
    }

    fn client(&self, options: MqttOptions) -> (AsyncClient, EventLoop) {
        let (client, mut eventloop) = AsyncClient::new(options, self.request_capacity);
        let mut network = eventloop.network_options();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(self.connect_timeout.as_secs().max(1));
        eventloop.set_network_options(network);
        (client, eventloop)
    }
}

/// The CA and the client certificate and key of `tls`, read and checked as PEM.
type PemFiles = (Vec<u8>, Option<(Vec<u8>, Vec<u8>)>);

fn read_tls(tls: &TlsFiles) -> Result<PemFiles, SetupError> {
    // rustls needs a process-wide crypto provider; ring is the one compiled in. A second
    // call finds it installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = read_pem("CA file", &tls.ca, "CERTIFICATE")?;
    let client_auth = match &tls.client {
        Some((cert, key)) => Some((
            read_pem("client certificate", cert, "CERTIFICATE")?,
            read_pem("client key", key, "PRIVATE KEY")?,
        )),
        None => None,
    };
    Ok((ca, client_auth))
}

/// The guard's TLS client, configured as rumqttc configures its own from the same PEM
/// files.
fn tls_connector(
    host: &str,
    ca: &[u8],
    client_auth: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<
    (
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    ),
    SetupError,
> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    let tls = |reason: String| SetupError::Tls { reason };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        let cert = cert.map_err(|e| tls(format!("CA file: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| tls(format!("CA certificate: {e}")))?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match client_auth {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(&cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls(format!("client certificate: {e}")))?;
            let key =
                PrivateKeyDer::from_pem_slice(&key).map_err(|e| tls(format!("client key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls(format!("client certificate and key: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| tls(format!("{host:?} is not a valid server name: {e}")))?;
    Ok((
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
        name,
    ))
}

/// Reads a PEM file and checks it holds a block whose label ends with `kind`
/// (`BEGIN CERTIFICATE`, `BEGIN EC PRIVATE KEY`, ...).
fn read_pem(what: &'static str, path: &Path, kind: &'static str) -> Result<Vec<u8>, SetupError> {
    let bytes = std::fs::read(path).map_err(|source| SetupError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let has_block = text.lines().any(|l| {
        l.trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|label| label.ends_with(kind))
    });
    if !has_block {
        return Err(SetupError::NotPem {
            what,
            path: path.to_path_buf(),
            kind,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let mut options = ClientOptions::new("c", Endpoint::plain("localhost", 8883));
        options.endpoint.tls = Some(TlsFiles {
            ca: ca.clone(),
            client: None,
        });
        let err = options.mqtt_options().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("CA file {} holds no PEM CERTIFICATE", ca.display())
        );
        options.endpoint.tls = Some(TlsFiles {
            ca: dir.path().join("missing.pem"),
            client: None,
        });
        let err = options.mqtt_options().unwrap_err();
        assert!(matches!(err, SetupError::Read { .. }), "{err}");
        assert!(
            std::error::Error::source(&err).is_some(),
            "the I/O error is its source"
        );
    }

    #[test]
    fn credentials_limits_and_the_last_will_reach_rumqttc() {
        let mut options = ClientOptions::new("c", Endpoint::plain("::1", 1884));
        options.endpoint.username = Some("gw".into());
        options.max_incoming_packet = 4096;
        options.last_will = Some(LastWill::new("t", "bye", rumqttc::QoS::AtLeastOnce, true));
        let mqtt = options.mqtt_options().unwrap();
        assert_eq!(mqtt.broker_address(), ("::1".to_string(), 1884));
        let login = mqtt.credentials().unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("gw", "")
        );
        assert_eq!(mqtt.max_packet_size(), 4096);
        assert_eq!(mqtt.last_will().unwrap().topic, "t");
    }
}
