//! Helpers shared by the integration tests that run `perchd` as a process: the model
//! folder, free ports, a child process killed on drop (its log printed when the test
//! fails) and an MQTT subscriber on a thread.
//!
//! Each test binary compiles this module on its own (`mod common;`) and uses a part of
//! it, hence the module-wide `allow(dead_code)`.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

/// How long a helper waits for something that should happen within a few report
/// intervals; generous, so a slow CI machine does not fail them.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The workspace's `models/` folder.
pub fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped; its stdout and stderr go to a file that is
/// printed if the test is failing.
pub struct Process {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Starts `command` with its output in `log`; fails the test if it cannot start.
    pub fn spawn(name: &'static str, mut command: Command, log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).unwrap();
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process {
            name,
            child: Some(child),
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if self.try_wait().is_some() {
                self.child = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} did not exit after SIGTERM", self.name);
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().unwrap().try_wait().unwrap()
    }

    /// Fails the test if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_wait() {
            panic!("{} exited ({status}):\n{}", self.name, self.log());
        }
    }

    /// Sends SIGKILL and waits.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What the process has written so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- {} log ({}) ---\n{}",
                self.name,
                self.log.display(),
                self.log()
            );
        }
    }
}

/// A test's MQTT client: subscribes to `topics` on every (re)connection, retrying until
/// the broker listens, and hands over what arrives.
pub struct Mqtt {
    client: Client,
    messages: mpsc::Receiver<(String, Vec<u8>)>,
    backlog: RefCell<VecDeque<(String, Vec<u8>)>>,
}

impl Mqtt {
    /// Connects with a clean session, or a persistent one (the broker queues QoS 1
    /// messages for it while it is away).
    pub fn connect(port: u16, name: &str, topics: &[String], persistent: bool) -> Mqtt {
        let mut options =
            MqttOptions::new(format!("{name}-{}", std::process::id()), "127.0.0.1", port);
        options
            .set_clean_session(!persistent)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut connection) = Client::new(options, 100);
        let (tx, messages) = mpsc::channel();
        let topics = topics.to_vec();
        let subscriber = client.clone();
        std::thread::spawn(move || loop {
            match connection.recv() {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    for t in &topics {
                        let _ = subscriber.try_subscribe(t.as_str(), QoS::AtLeastOnce);
                    }
                }
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    if tx.send((p.topic, p.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => return,
            }
        });
        Mqtt {
            client,
            messages,
            backlog: RefCell::new(VecDeque::new()),
        }
    }

    /// Publishes `payload` on `topic` at QoS 1.
    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .unwrap();
    }

    /// The next message on `topic`, keeping those on other topics for later calls.
    pub fn next(&self, topic: &str) -> Vec<u8> {
        self.next_within(topic, PATIENCE)
            .unwrap_or_else(|| panic!("timed out waiting for a message on {topic}"))
    }

    /// The next message on `topic` if one comes within `timeout`.
    pub fn next_within(&self, topic: &str, timeout: Duration) -> Option<Vec<u8>> {
        let mut backlog = self.backlog.borrow_mut();
        if let Some(i) = backlog.iter().position(|(t, _)| t == topic) {
            return backlog.remove(i).map(|(_, payload)| payload);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok((t, payload)) if t == topic => return Some(payload),
                Ok(other) => backlog.push_back(other),
                Err(_) => return None,
            }
        }
    }

    /// The next message on any topic, with its topic, if one comes within `timeout`
    /// (those kept by [`Mqtt::next_within`] first).
    pub fn any_within(&self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        if let Some(kept) = self.backlog.borrow_mut().pop_front() {
            return Some(kept);
        }
        self.messages.recv_timeout(timeout).ok()
    }

    /// The first message on `topic` for which `pick` returns something, dropping the
    /// messages on `topic` before it.
    pub fn wait_for<T>(&self, topic: &str, mut pick: impl FnMut(&[u8]) -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(found) = pick(&self.next(topic)) {
                return found;
            }
            assert!(Instant::now() < deadline, "timed out waiting on {topic}");
        }
    }
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
    }
}

/// The values of an f32 tensor (a golden file).
pub fn floats(tensor: &perch_runtime::engine::Tensor) -> Vec<f32> {
    tensor
        .try_as_plain_ram()
        .unwrap()
        .as_slice::<f32>()
        .unwrap()
        .to_vec()
}

/// The largest absolute difference over the largest absolute expected value.
pub fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
    diff / scale
}
