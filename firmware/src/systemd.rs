//! Service notifications for `perchd` under systemd (`Type=notify`, see
//! `firmware/deploy/perchd.service`): the sd_notify(3) datagram protocol.
//!
//! systemd passes the address of its notification socket in `NOTIFY_SOCKET` and, with
//! `WatchdogSec=`, the watchdog period in `WATCHDOG_USEC` (for the process named by
//! `WATCHDOG_PID`). The agent tells it
//!
//! - `READY=1` once it serves (the unit counts as started only then, so `systemctl
//!   start` waits for the model's self-test),
//! - `WATCHDOG=1` every half watchdog period while a check passes (the agent's: no
//!   inference is hung, and a probe inference returns in time); systemd kills and
//!   restarts a process that stays silent for a whole period,
//! - `STOPPING=1` when it begins a clean shutdown.
//!
//! Without `NOTIFY_SOCKET` (started by hand, by a test, or by another supervisor) every
//! call is a no-op that succeeds. Addresses starting with `@` are Linux abstract-namespace
//! sockets, as sd_notify(3) specifies.
//!
//! ```no_run
//! use perch_firmware::systemd::Notifier;
//!
//! let notifier = Notifier::from_env();
//! notifier.ready("serving kws 1.1.0")?;
//! # Ok::<(), std::io::Error>(())
//! ```

use std::ffi::{OsStr, OsString};
use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The service manager's notification socket and watchdog period, read once from the
/// environment.
///
/// Cheap to clone; every message opens a fresh unbound datagram socket, so a clone can
/// be moved into another task. The default notifier is disabled (sends nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notifier {
    /// `NOTIFY_SOCKET`: a path, or `@name` for an abstract socket. `None` disables
    /// every message.
    socket: Option<OsString>,
    /// The watchdog period systemd enforces on this process, if any.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (see [`Notifier::from_vars`]).
    pub fn from_env() -> Notifier {
        Notifier::from_vars(
            std::env::var_os("NOTIFY_SOCKET"),
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )
    }

    /// A notifier from the variables' values, for the process `pid`.
    ///
    /// An empty or missing `notify_socket` disables notifications. The watchdog is
    /// enabled when `watchdog_usec` is a positive whole number of microseconds and
    /// `watchdog_pid` is missing or equals `pid` (otherwise the period is meant for
    /// another process); unparsable values disable it, as in sd_watchdog_enabled(3).
    pub fn from_vars(
        notify_socket: Option<OsString>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        pid: u32,
    ) -> Notifier {
        let socket = notify_socket.filter(|s| !s.is_empty());
        let for_us = match watchdog_pid {
            None => true,
            Some(p) => p.trim().parse::<u32>() == Ok(pid),
        };
        let watchdog = watchdog_usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && for_us && socket.is_some())
            .map(Duration::from_micros);
        Notifier { socket, watchdog }
    }

    /// A notifier that sends to `socket` (a path, or `@name` for an abstract socket)
    /// and expects a ping within every `watchdog` period, if given.
    pub fn new(socket: impl Into<OsString>, watchdog: Option<Duration>) -> Notifier {
        Notifier {
            socket: Some(socket.into()),
            watchdog: watchdog.filter(|d| !d.is_zero()),
        }
    }

    /// Whether a service manager listens (`NOTIFY_SOCKET` was set).
    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// The watchdog period systemd enforces (`WatchdogSec=`), if any.
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.watchdog
    }

    /// How often to ping: half the watchdog period, as sd_watchdog_enabled(3) advises,
    /// so one late ping is not fatal. `None` when there is no watchdog.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|period| period / 2)
    }

    /// Sends `READY=1` with a one-line `STATUS=` (shown by `systemctl status`).
    ///
    /// # Errors
    ///
    /// The socket could not be reached; the error names it.
    pub fn ready(&self, status: &str) -> io::Result<()> {
        self.send(&format!("READY=1\nSTATUS={}\n", one_line(status)))
    }

    /// Sends a new one-line `STATUS=`.
    ///
    /// # Errors
    ///
    /// The socket could not be reached; the error names it.
    pub fn status(&self, status: &str) -> io::Result<()> {
        self.send(&format!("STATUS={}\n", one_line(status)))
    }

    /// Sends `STOPPING=1`: a clean shutdown has begun.
    ///
    /// # Errors
    ///
    /// The socket could not be reached; the error names it.
    pub fn stopping(&self) -> io::Result<()> {
        self.send("STOPPING=1\nSTATUS=shutting down\n")
    }

    /// Sends `WATCHDOG=1`: the process is alive.
    ///
    /// # Errors
    ///
    /// The socket could not be reached; the error names it.
    pub fn ping(&self) -> io::Result<()> {
        self.send("WATCHDOG=1\n")
    }

    /// Pings every [`watchdog_interval`](Notifier::watchdog_interval) until `stop`
    /// completes; returns at once when there is no watchdog. The first ping goes out
    /// immediately. A failed ping is logged once per run of failures and retried at the
    /// next tick.
    ///
    /// Runs as a task on the agent's runtime, so it stops pinging (and systemd restarts
    /// the agent) when the runtime stops scheduling tasks.
    pub async fn watchdog(self, stop: impl Future<Output = ()>) {
        self.watchdog_checked(stop, || async { Ok(()) }).await;
    }

    /// As [`watchdog`](Notifier::watchdog), but each tick pings only if `check` passes;
    /// when it fails the reason goes to the log (once per run of failures) and to
    /// systemd's `STATUS=`, and no ping goes out, so a process that is alive but no
    /// longer does its work is restarted like one that hangs.
    pub async fn watchdog_checked<F, C>(self, stop: impl Future<Output = ()>, mut check: C)
    where
        C: FnMut() -> F,
        F: Future<Output = Result<(), String>>,
    {
        let Some(every) = self.watchdog_interval() else {
            return;
        };
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        let mut failing = false;
        let mut unwell = false;
        loop {
            tokio::select! {
                biased;
                () = &mut stop => return,
                _ = ticker.tick() => {}
            }
            let checked = tokio::select! {
                biased;
                () = &mut stop => return,
                checked = check() => checked,
            };
            if let Err(reason) = checked {
                if !unwell {
                    log::error!("not pinging the systemd watchdog: {reason}");
                    let _ = self.status(&format!("unhealthy: {reason}"));
                }
                unwell = true;
                continue;
            }
            if unwell {
                log::info!("healthy again: pinging the systemd watchdog");
                unwell = false;
            }
            match self.ping() {
                Ok(()) => failing = false,
                Err(e) => {
                    if !failing {
                        log::warn!("cannot ping the systemd watchdog: {e}");
                    }
                    failing = true;
                }
            }
        }
    }

    /// Spawns [`watchdog_checked`](Notifier::watchdog_checked) on the current Tokio
    /// runtime, stopping when `stop` turns true (the agent's shutdown signal). `None`,
    /// and nothing spawned, when there is no watchdog.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, like `tokio::spawn`.
    pub fn spawn_watchdog<F, C>(
        &self,
        mut stop: watch::Receiver<bool>,
        check: C,
    ) -> Option<JoinHandle<()>>
    where
        C: FnMut() -> F + Send + 'static,
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.watchdog_interval()?;
        let notifier = self.clone();
        let stop = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        Some(tokio::spawn(notifier.watchdog_checked(stop, check)))
    }

    /// Sends one datagram; `Ok` without a socket.
    fn send(&self, message: &str) -> io::Result<()> {
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        send_datagram(socket, message.as_bytes()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "systemd notification socket {}: {e}",
                    socket.to_string_lossy()
                ),
            )
        })
    }
}

/// `text` with line breaks replaced by spaces: a status is one `KEY=value` line.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(unix)]
fn send_datagram(socket: &OsStr, message: &[u8]) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;

    let sender = UnixDatagram::unbound()?;
    let sent = match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => send_abstract(&sender, name, message)?,
        None => sender.send_to(message, socket)?,
    };
    if sent != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", message.len()),
        ));
    }
    Ok(())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(
    sender: &std::os::unix::net::UnixDatagram,
    name: &[u8],
    message: &[u8],
) -> io::Result<usize> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;

    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sender.send_to_addr(message, &addr)
}

#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
fn send_abstract(
    _sender: &std::os::unix::net::UnixDatagram,
    _name: &[u8],
    _message: &[u8],
) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

#[cfg(not(unix))]
fn send_datagram(_socket: &OsStr, _message: &[u8]) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "systemd notifications need Unix datagram sockets",
    ))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    /// A service manager's end: a datagram socket bound in a temporary folder.
    fn listener() -> (tempfile::TempDir, std::path::PathBuf, UnixDatagram) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        (dir, path, socket)
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn ready_status_and_stopping_arrive_as_sd_notify_datagrams() {
        let (_dir, path, socket) = listener();
        let notifier = Notifier::new(&path, None);
        assert!(notifier.is_enabled());
        notifier.ready("serving kws 1.1.0").unwrap();
        assert_eq!(receive(&socket), "READY=1\nSTATUS=serving kws 1.1.0\n");
        notifier.status("broker\nunreachable").unwrap();
        assert_eq!(receive(&socket), "STATUS=broker unreachable\n");
        notifier.ping().unwrap();
        assert_eq!(receive(&socket), "WATCHDOG=1\n");
        notifier.stopping().unwrap();
        assert_eq!(receive(&socket), "STOPPING=1\nSTATUS=shutting down\n");
    }

    #[test]
    fn the_environment_set_by_systemd_is_read_once() {
        // The only test that touches these variables.
        let (_dir, path, socket) = listener();
        std::env::set_var("NOTIFY_SOCKET", &path);
        std::env::set_var("WATCHDOG_USEC", "30000000");
        std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
        let notifier = Notifier::from_env();
        std::env::remove_var("NOTIFY_SOCKET");
        std::env::remove_var("WATCHDOG_USEC");
        std::env::remove_var("WATCHDOG_PID");
        assert_eq!(notifier.watchdog_period(), Some(Duration::from_secs(30)));
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(15)));
        notifier.ready("up").unwrap();
        assert_eq!(receive(&socket), "READY=1\nSTATUS=up\n");
    }

    #[test]
    fn without_notify_socket_every_call_is_a_no_op() {
        let notifier = Notifier::from_vars(None, Some("30000000"), None, 42);
        assert!(!notifier.is_enabled());
        assert_eq!(notifier.watchdog_interval(), None);
        notifier.ready("up").unwrap();
        notifier.ping().unwrap();
        notifier.stopping().unwrap();
        let empty = Notifier::from_vars(Some(OsString::new()), None, None, 42);
        assert!(!empty.is_enabled());
    }

    #[test]
    fn the_watchdog_is_only_for_the_process_systemd_named() {
        let socket = || Some(OsString::from("/run/systemd/notify"));
        let period = |usec, pid| Notifier::from_vars(socket(), usec, pid, 42).watchdog_period();
        assert_eq!(period(Some("2000000"), None), Some(Duration::from_secs(2)));
        assert_eq!(
            period(Some("2000000"), Some("42")),
            Some(Duration::from_secs(2))
        );
        assert_eq!(period(Some("2000000"), Some("43")), None);
        assert_eq!(period(Some("0"), None), None);
        assert_eq!(period(Some("soon"), None), None);
        assert_eq!(period(None, Some("42")), None);
    }

    #[test]
    fn an_unreachable_socket_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nobody-listens");
        let err = Notifier::new(&path, None).ready("up").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("nobody-listens"), "{text}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_at_sign_names_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::SocketAddr;

        let name = format!("perch-test-notify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Notifier::new(format!("@{name}"), None).ping().unwrap();
        assert_eq!(receive(&socket), "WATCHDOG=1\n");
    }

    #[tokio::test]
    async fn the_watchdog_task_pings_until_the_agent_stops() {
        let (_dir, path, socket) = listener();
        // A 20 ms period: pings every 10 ms. The test waits for three of them (however
        // slow the machine), then stops the task and waits for it to end.
        let notifier = Notifier::new(&path, Some(Duration::from_millis(20)));
        assert_eq!(
            notifier.watchdog_interval(),
            Some(Duration::from_millis(10))
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = notifier
            .spawn_watchdog(stop_rx, || async { Ok(()) })
            .unwrap();
        let pings = tokio::task::spawn_blocking(move || {
            (0..3).map(|_| receive(&socket)).collect::<Vec<_>>()
        })
        .await
        .unwrap();
        assert_eq!(pings, ["WATCHDOG=1\n"; 3]);
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the watchdog task ends when the agent stops")
            .unwrap();
    }

    #[tokio::test]
    async fn no_watchdog_task_is_spawned_without_a_watchdog() {
        let (_stop_tx, stop_rx) = watch::channel(false);
        let (_dir, path, _socket) = listener();
        assert!(Notifier::new(&path, None)
            .spawn_watchdog(stop_rx, || async { Ok(()) })
            .is_none());
    }

    #[tokio::test]
    async fn a_failing_check_stops_the_pings_and_says_why_until_it_passes_again() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

        let (_dir, path, socket) = listener();
        let notifier = Notifier::new(&path, Some(Duration::from_millis(20)));
        let healthy = Arc::new(AtomicBool::new(false));
        let flag = healthy.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = notifier
            .spawn_watchdog(stop_rx, move || {
                let ok = flag.load(Ordering::SeqCst);
                async move {
                    if ok {
                        Ok(())
                    } else {
                        Err("an inference is hung".to_string())
                    }
                }
            })
            .unwrap();
        let socket = Arc::new(socket);
        let reader = socket.clone();
        let first = tokio::task::spawn_blocking(move || receive(&reader))
            .await
            .unwrap();
        assert_eq!(first, "STATUS=unhealthy: an inference is hung\n");
        // Said once; no ping while it fails.
        tokio::time::sleep(Duration::from_millis(100)).await;
        socket.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 256];
        assert!(socket.recv(&mut buf).is_err(), "nothing else was sent");
        socket.set_nonblocking(false).unwrap();
        healthy.store(true, Ordering::SeqCst);
        let reader = socket.clone();
        let next = tokio::task::spawn_blocking(move || receive(&reader))
            .await
            .unwrap();
        assert_eq!(next, "WATCHDOG=1\n");
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap();
    }
}
