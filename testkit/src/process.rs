//! A child process a test starts: its output in a file, killed when dropped, its log
//! printed when the test fails.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::wait::{wait_until, PATIENCE};

/// A child process killed when dropped; its stdout and stderr go to a file that is
/// printed if the test is failing.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Starts `command` with its output in `log` (created).
    ///
    /// # Panics
    ///
    /// The log cannot be created or the program cannot be started.
    pub fn spawn(name: &str, mut command: Command, log: impl Into<PathBuf>) -> Process {
        let log = log.into();
        let file = std::fs::File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let err = file
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot share {}: {e}", log.display()));
        command.stdin(Stdio::null()).stdout(file).stderr(err);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    /// Its process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The file its output goes to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Sends SIGTERM and waits for it to exit.
    ///
    /// # Panics
    ///
    /// It does not exit within [`PATIENCE`].
    pub fn terminate(&mut self) {
        let Some(pid) = self.id() else {
            return;
        };
        // SAFETY: kill takes a pid and a signal number and has no memory effects.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        let name = self.name.clone();
        wait_until(&format!("{name} to exit after SIGTERM"), PATIENCE, || {
            self.try_wait().is_some()
        });
        self.child = None;
    }

    /// The exit status if it has exited, without waiting (`None` while it runs, or
    /// once it was reaped).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Fails the test if it has exited.
    ///
    /// # Panics
    ///
    /// It has exited; the message holds its log.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_wait() {
            panic!("{} exited ({status}):\n{}", self.name, self.log());
        }
    }

    /// Sends SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What it has written so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// Waits until a line of its log holds `needle` and returns that line: how a test
    /// learns what a process reports, such as the port it bound (`--http-listen
    /// 127.0.0.1:0`).
    ///
    /// # Panics
    ///
    /// It exits first, or no such line comes within `timeout`.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let mut found = None;
        wait_until(&format!("{} to log {needle:?}", self.name), timeout, || {
            self.assert_running();
            found = self
                .log()
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_string);
            found.is_some()
        });
        found.unwrap_or_default()
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
