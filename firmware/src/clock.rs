//! Whether the device's wall clock can be trusted: the rollout's document expiry is
//! checked against it only then ([`crate::ota::Event::WallClock`]).
//!
//! A board without a battery-backed clock starts in 1970 or at its last shutdown, and
//! a clock set by hand may be anything; a clock the kernel says is synchronized (NTP
//! through systemd-timesyncd, chrony or ntpd clears `STA_UNSYNC`) is within the
//! daemon's error of real time.

use std::time::{SystemTime, UNIX_EPOCH};

/// The wall clock, milliseconds since the Unix epoch, when the kernel says it is
/// synchronized; `None` otherwise, and on systems where this agent cannot ask (other
/// than Linux with glibc).
pub fn synchronized_unix_ms() -> Option<u64> {
    if !kernel_says_synchronized() {
        return None;
    }
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(since_epoch.as_millis()).ok()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn kernel_says_synchronized() -> bool {
    // SAFETY: with `modes` 0, adjtimex only reads the kernel's clock state into the
    // zeroed struct it is given (no privilege needed).
    let (state, status) = unsafe {
        let mut timex: libc::timex = std::mem::zeroed();
        let state = libc::adjtimex(&mut timex);
        (state, timex.status)
    };
    state != -1 && state != libc::TIME_ERROR && status & libc::STA_UNSYNC == 0
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn kernel_says_synchronized() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_synchronized_clock_reads_the_system_time() {
        // Whether this machine's clock is synchronized is not up to the test; when it
        // is, the reading is the system time.
        if let Some(ms) = synchronized_unix_ms() {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            assert!(ms.abs_diff(now.as_millis() as u64) < 60_000);
        }
    }
}
