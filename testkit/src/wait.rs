//! Waiting for a condition: the condition is the verdict, the clock only bounds how
//! long a broken run hangs.

use std::time::{Duration, Instant};

/// How long a helper waits for something that should happen within a few report
/// intervals; generous, so a slow or busy machine does not fail a test.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `done` every 10 ms until it holds.
///
/// # Panics
///
/// `done` does not hold within `timeout`; the message names `what`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {}s waiting for {what}",
            timeout.as_secs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
