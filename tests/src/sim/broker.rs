//! The brokers a simulated fleet talks through: the agent's embedded rumqttd, sized for
//! a fleet, or a mosquitto the simulator starts and stops.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use perch_firmware::config::DEFAULT_MAX_PAYLOAD_BYTES;
use perch_firmware::mqtt::INCOMING_HEADROOM;

use super::SimError;

/// How long a broker may take to accept connections after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// # Errors
///
/// No port could be bound at all.
pub fn free_port() -> Result<u16, SimError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(SimError::Io)?;
    Ok(listener.local_addr().map_err(SimError::Io)?.port())
}

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

/// A mosquitto broker on 127.0.0.1, started from a configuration file written into a
/// folder of its own; it persists sessions and queued messages there, so a
/// [`restart`](Mosquitto::restart) keeps them. Killed when dropped.
#[derive(Debug)]
pub struct Mosquitto {
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Mosquitto {
    /// The mosquitto binary on `PATH` (or in `/usr/sbin`, `/usr/local/sbin`), if
    /// installed.
    pub fn binary() -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
            .map(|dir| dir.join("mosquitto"))
            .find(|p| p.is_file())
    }

    /// Starts mosquitto on 127.0.0.1:`port` with its configuration, data and log in
    /// `dir` (created), sized for a fleet: no limit on connections, 100 000 queued
    /// messages per client. Returns once it accepts connections.
    ///
    /// # Errors
    ///
    /// mosquitto is not installed, `dir` cannot be written, or the broker does not come
    /// up (its log is in the message).
    pub fn start(dir: &Path, port: u16) -> Result<Mosquitto, SimError> {
        let binary = Mosquitto::binary().ok_or_else(|| {
            SimError::Broker(
                "mosquitto is not installed (Debian/Ubuntu: apt-get install mosquitto)".into(),
            )
        })?;
        let data = dir.join("mosquitto-data");
        std::fs::create_dir_all(&data).map_err(SimError::Io)?;
        let config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
             persistence_location {}/\nmax_queued_messages 100000\nmax_inflight_messages 0\n\
             user root\nlog_dest stderr\n",
            data.display()
        );
        perch_runtime::fsio::write_atomic(&dir.join("mosquitto.conf"), config.as_bytes())
            .map_err(SimError::Io)?;
        let mut broker = Mosquitto {
            binary,
            dir: dir.to_path_buf(),
            port,
            child: None,
        };
        broker.restart()?;
        Ok(broker)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the broker process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops the broker with SIGTERM (it saves its persistent state) and waits for it;
    /// SIGKILL after 10 s. Does nothing if it is not running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the broker again on the same port with the same folder (stopping it
    /// first if it runs), and waits until it accepts connections.
    ///
    /// # Errors
    ///
    /// It does not start or does not come up; the message holds its log.
    pub fn restart(&mut self) -> Result<(), SimError> {
        self.stop();
        let log_path = self.dir.join("mosquitto.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(SimError::Io)?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(SimError::Io)?)
            .stderr(log)
            .spawn()
            .map_err(|e| SimError::Broker(format!("cannot start mosquitto: {e}")))?;
        self.child = Some(child);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut child = self.child.take();
        let up = wait_listening(addr, || {
            child
                .as_mut()
                .is_some_and(|c| !matches!(c.try_wait(), Ok(None)))
        });
        self.child = child;
        up.map_err(|reason| {
            SimError::Broker(format!(
                "mosquitto on {addr} {reason}; its log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            ))
        })
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
