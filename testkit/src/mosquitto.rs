//! A real mosquitto for the tests that need a broker other than the agent's own, and
//! the one policy for when it is not installed.
//!
//! CI sets `PERCH_REQUIRE_MOSQUITTO=1` and installs it: there a missing mosquitto fails
//! the test. On a developer's machine without it, [`Mosquitto::start`] says on the
//! terminal which test it skips (past the test harness's output capture), and the test
//! returns early.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::ports::Port;
use crate::process::Process;
use crate::wait::wait_until;

/// The variable that makes a missing mosquitto fail the tests that need it.
pub const REQUIRE_VAR: &str = "PERCH_REQUIRE_MOSQUITTO";

/// How long mosquitto may take to accept connections after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A mosquitto on 127.0.0.1, configured in a folder of its own where it also persists
/// sessions and queued messages, so a [`restart`](Mosquitto::restart) keeps them.
/// Killed when dropped.
#[derive(Debug)]
pub struct Mosquitto {
    binary: PathBuf,
    dir: PathBuf,
    ports: Vec<Port>,
    process: Option<Process>,
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

    /// The mosquitto binary, or `None` after saying on the terminal what `test` does
    /// without it (`without`: "skipped", "runs on the embedded broker").
    ///
    /// # Panics
    ///
    /// mosquitto is missing and [`REQUIRE_VAR`] is set.
    pub fn binary_or(test: &str, without: &str) -> Option<PathBuf> {
        let binary = Mosquitto::binary();
        if binary.is_none() {
            assert!(
                std::env::var_os(REQUIRE_VAR).is_none(),
                "{test}: mosquitto is not installed and {REQUIRE_VAR} is set"
            );
            // Straight to the terminal: `eprintln!` would be captured, and hidden for a
            // test that passes.
            let _ = writeln!(
                std::io::stderr(),
                "{test}: mosquitto is not installed, {without} (apt-get install mosquitto; \
                 {REQUIRE_VAR}=1 makes this a failure)"
            );
        }
        binary
    }

    /// Starts mosquitto for `test` with one plain listener on a reserved port, its
    /// configuration, data and log in `dir`, sized for a fleet (no limit on
    /// connections, 100 000 queued messages per client); `None` when it is not
    /// installed, after saying `test` is skipped (see [`binary_or`](Mosquitto::binary_or)).
    ///
    /// # Panics
    ///
    /// It does not come up; the message holds its log.
    pub fn start(test: &str, dir: &Path) -> Option<Mosquitto> {
        let port = Port::reserve();
        let listener = format!("listener {} 127.0.0.1\nallow_anonymous true\n", port.get());
        Mosquitto::start_with(test, dir, vec![port], &listener, "SKIPPED")
    }

    /// Starts mosquitto with `listeners` (its `listener` sections, written by the
    /// caller on `ports`, which it keeps reserved), plus the settings of
    /// [`start`](Mosquitto::start). It is up once the first port accepts connections.
    /// Without mosquitto, `without` says what `test` does instead.
    ///
    /// # Panics
    ///
    /// As [`start`](Mosquitto::start).
    pub fn start_with(
        test: &str,
        dir: &Path,
        ports: Vec<Port>,
        listeners: &str,
        without: &str,
    ) -> Option<Mosquitto> {
        let binary = Mosquitto::binary_or(test, without)?;
        let data = dir.join("mosquitto-data");
        std::fs::create_dir_all(&data)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", data.display()));
        let config = format!(
            "{listeners}persistence true\npersistence_location {}/\n\
             max_queued_messages 100000\nmax_inflight_messages 0\nuser root\n\
             log_dest stderr\n",
            data.display()
        );
        std::fs::write(dir.join("mosquitto.conf"), config)
            .unwrap_or_else(|e| panic!("cannot write mosquitto.conf: {e}"));
        let mut broker = Mosquitto {
            binary,
            dir: dir.to_path_buf(),
            ports,
            process: None,
        };
        broker.restart();
        Some(broker)
    }

    /// The port of its first listener.
    pub fn port(&self) -> u16 {
        self.ports.first().map_or(0, Port::get)
    }

    /// Whether it runs.
    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|p| p.id().is_some() && p.try_wait().is_none())
    }

    /// Stops it with SIGTERM (it saves its persistent state) and waits; nothing if it
    /// is not running.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.terminate();
        }
    }

    /// Starts it again on the same ports with the same folder (stopping it first if it
    /// runs), and waits until it accepts connections.
    ///
    /// # Panics
    ///
    /// It does not come up; the message holds its log.
    pub fn restart(&mut self) {
        self.stop();
        let mut command = Command::new(&self.binary);
        command.arg("-c").arg(self.dir.join("mosquitto.conf"));
        let mut process = Process::spawn("mosquitto", command, self.dir.join("mosquitto.log"));
        let port = self.port();
        wait_until("mosquitto to listen", START_TIMEOUT, || {
            process.assert_running();
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        self.process = Some(process);
    }
}
