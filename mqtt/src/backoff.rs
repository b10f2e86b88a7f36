//! Capped exponential backoff with full jitter, for reconnecting to the broker.
//!
//! Attempt `n` (counting from 0 since the last [`reset`](Backoff::reset)) waits a delay
//! drawn uniformly from `[0, min(cap, base × 2^n)]`, the "full jitter" of AWS's
//! *Exponential Backoff and Jitter*: a fleet of devices that lost the same broker spreads
//! its reconnects over the whole window instead of arriving in waves.
//!
//! [`Backoff`] is pure: it reads no clock and draws no randomness. The caller passes a
//! uniformly random `u64` to each [`next_delay`](Backoff::next_delay) and does the
//! sleeping, so tests replay exact sequences.
//!
//! ```
//! use std::time::Duration;
//! use perch_mqtt::backoff::Backoff;
//!
//! let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
//! // A random u64 of u64::MAX picks the top of the window: 100 ms, 200 ms, 400 ms, ...
//! assert!(backoff.next_delay(u64::MAX) <= Duration::from_millis(100));
//! assert!(backoff.next_delay(u64::MAX) <= Duration::from_millis(200));
//! // A connection that ends at once (a broker that accepts, then drops the client)
//! // does not count as a success: the windows keep growing.
//! backoff.connection_ended(Duration::from_millis(5));
//! assert_eq!(backoff.attempt(), 2);
//! // One that stayed up longer than `stable_after` (the cap, by default) does.
//! backoff.connection_ended(Duration::from_secs(60));
//! assert_eq!(backoff.attempt(), 0);
//! ```
//!
//! A reset only after a connection that lasted is what stops a reconnect storm: when a
//! broker accepts every connection and something then ends each one at once (a
//! message the client refuses, an ACL, a broker in trouble), resetting on CONNACK
//! would bring every device of a fleet back within the first, smallest window, forever.

use std::time::Duration;

/// Capped exponential backoff with full jitter (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    stable_after: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff whose first window is `[0, base]`, doubling per attempt up to `[0, cap]`.
    ///
    /// A `base` above `cap` makes every window `[0, cap]`; a zero `base` or `cap` makes
    /// every delay zero.
    ///
    /// A connection must stay up for `cap` (at least one second) before its end resets
    /// the windows; [`Backoff::stable_after`] changes that.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            stable_after: cap.max(Duration::from_secs(1)),
            attempt: 0,
        }
    }

    /// How long a connection must have stayed up for its end to reset the windows.
    pub fn stable_after(mut self, uptime: Duration) -> Backoff {
        self.stable_after = uptime;
        self
    }

    /// A connection ended after `uptime`: resets the windows if it stayed up at least
    /// [`stable_after`](Backoff::stable_after), so a broker that drops every client
    /// right after accepting it is retried ever more slowly rather than at once.
    pub fn connection_ended(&mut self, uptime: Duration) {
        if uptime >= self.stable_after {
            self.reset();
        }
    }

    /// The delay before the next attempt: `random` mapped uniformly onto
    /// `[0, `[`window`](Backoff::window)`]` (0 gives zero, `u64::MAX` the top of the
    /// window, to the nanosecond), then the window doubles for the attempt after.
    ///
    /// `random` should be uniformly distributed over all of `u64` (from `getrandom` or
    /// any PRNG seeded per device); a constant makes every device wait the same.
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let window = duration_ns(self.window());
        self.attempt = self.attempt.saturating_add(1);
        // Multiply-shift maps [0, 2^64) onto [0, window] with a bias of at most one part
        // in 2^64 / (window + 1): under 1e-9 for any window below 500 years.
        let ns = (u128::from(random) * (u128::from(window) + 1)) >> 64;
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Starts over from the `[0, base]` window ([`Backoff::connection_ended`] calls it
    /// for a connection that lasted).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were handed out since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The upper end of the window the next delay is drawn from: `min(cap, base ×
    /// 2^attempt)`.
    pub fn window(&self) -> Duration {
        let grown = 2u32
            .checked_pow(self.attempt)
            .and_then(|factor| self.base.checked_mul(factor))
            .unwrap_or(Duration::MAX);
        grown.min(self.cap)
    }
}

/// `d` in nanoseconds, saturating at `u64::MAX` (about 584 years).
fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use perch_testkit::SplitMix64;

    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(30);

    #[test]
    fn the_window_doubles_from_base_until_it_reaches_the_cap() {
        let mut backoff = Backoff::new(BASE, CAP);
        let mut windows = Vec::new();
        for _ in 0..12 {
            windows.push(backoff.window());
            backoff.next_delay(0);
        }
        let ms: Vec<u128> = windows.iter().map(Duration::as_millis).collect();
        assert_eq!(
            ms,
            [100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 30_000, 30_000, 30_000]
        );
    }

    #[test]
    fn the_largest_random_value_gives_the_top_of_the_window_to_the_nanosecond() {
        let mut backoff = Backoff::new(BASE, CAP);
        for expected in [100, 200, 400, 800] {
            assert_eq!(
                backoff.next_delay(u64::MAX),
                Duration::from_millis(expected)
            );
        }
    }

    #[test]
    fn zero_randomness_gives_no_delay_and_half_gives_half_the_window() {
        let mut backoff = Backoff::new(BASE, CAP);
        assert_eq!(backoff.next_delay(0), Duration::ZERO);
        let half = backoff.next_delay(1 << 63);
        assert!(half.abs_diff(Duration::from_millis(100)) <= Duration::from_nanos(1));
    }

    #[test]
    fn delays_never_leave_the_window_and_cover_it() {
        let mut rng = SplitMix64(7);
        let mut backoff = Backoff::new(BASE, CAP);
        for _ in 0..10 {
            backoff.next_delay(0);
        }
        assert_eq!(backoff.window(), CAP);
        let (mut low, mut high) = (0, 0);
        for _ in 0..10_000 {
            let before = backoff.window();
            let delay = backoff.next_delay(rng.next_u64());
            assert!(delay <= before, "{delay:?} above the {before:?} window");
            low += usize::from(delay < CAP / 10);
            high += usize::from(delay > CAP * 9 / 10);
        }
        // Uniform over the window: about 1 000 in each tenth; 600 is far outside chance.
        assert!(low > 600 && high > 600, "low {low}, high {high}");
    }

    #[test]
    fn reset_starts_the_next_outage_from_the_base_window() {
        let mut backoff = Backoff::new(BASE, CAP);
        for _ in 0..20 {
            backoff.next_delay(u64::MAX);
        }
        assert_eq!(backoff.next_delay(u64::MAX), CAP);
        backoff.reset();
        assert_eq!(backoff.attempt(), 0);
        assert_eq!(backoff.window(), BASE);
        assert_eq!(backoff.next_delay(u64::MAX), BASE);
    }

    #[test]
    fn a_long_outage_neither_overflows_nor_exceeds_the_cap() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::MAX);
        for _ in 0..100_000 {
            backoff.next_delay(u64::MAX);
        }
        assert_eq!(backoff.attempt(), 100_000);
        assert_eq!(backoff.window(), Duration::MAX);
        // A window beyond u64 nanoseconds saturates instead of wrapping.
        assert_eq!(backoff.next_delay(u64::MAX), Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn a_base_above_the_cap_is_held_to_the_cap_and_zero_means_no_delay() {
        let mut capped = Backoff::new(Duration::from_secs(60), CAP);
        assert_eq!(capped.next_delay(u64::MAX), CAP);
        let mut zero = Backoff::new(Duration::ZERO, CAP);
        assert_eq!(zero.next_delay(u64::MAX), Duration::ZERO);
        assert_eq!(zero.next_delay(u64::MAX), Duration::ZERO);
    }

    #[test]
    fn connections_that_end_at_once_keep_the_windows_growing_and_a_lasting_one_resets_them() {
        let mut backoff = Backoff::new(BASE, CAP).stable_after(Duration::from_secs(10));
        let mut windows = Vec::new();
        for _ in 0..6 {
            windows.push(backoff.window().as_millis());
            backoff.next_delay(0);
            // CONNACK, then the broker drops the client 50 ms later.
            backoff.connection_ended(Duration::from_millis(50));
        }
        assert_eq!(windows, [100, 200, 400, 800, 1_600, 3_200]);
        backoff.connection_ended(Duration::from_secs(10));
        assert_eq!(backoff.window(), BASE);
        assert_eq!(
            Backoff::new(BASE, CAP).stable_after,
            CAP,
            "the cap by default"
        );
    }
}
