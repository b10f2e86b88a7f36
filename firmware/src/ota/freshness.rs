//! Whether the device still hears its operator: a running rollout's document must be
//! renewed (a higher revision) within its `fresh_s`, or the device freezes its part in
//! the rollout.
//!
//! The operator signs and publishes a new revision of a running or paused rollout's
//! document well within `fresh_s`. A device that hears none for longer cannot tell an
//! operator that stopped from a broker that withholds the operator's newer documents (an
//! `aborted` one, say): either way it must not move the rollout forward on old orders.
//! Frozen, it requests no chunk and confirms no bundle; rolling back still happens (a
//! breach, a crash loop), since that never needs the operator's consent. The first
//! renewal thaws it.
//!
//! Time is the machine's monotonic `now_ms`, never the wall clock: the device's clock
//! may be wrong, and a revision is the operator's, so a skewed clock on either side
//! neither freezes nor thaws anyone. A restart starts a new period (the monotonic clock
//! restarts), so a device restarted while frozen waits `fresh_s` again before freezing.
//! A retained copy of the same revision, delivered again on every reconnection, renews
//! nothing.
//!
//! A document may also carry an expiry by the operator's wall clock
//! (`expires_unix_s`). A device whose own clock is synchronized (the agent says so,
//! [`Freshness::set_wall_clock`]) freezes past it too: unlike the monotonic period,
//! it survives restarts, so a broker cannot hand a restarted device an old document
//! as if it were new. Without a synchronized clock, only the monotonic period counts.

/// When the current document was last renewed, and whether the device froze since.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Freshness {
    /// When the latest revision arrived (or the agent started), ms; `None` until the
    /// first check after a start.
    renewed_ms: Option<u64>,
    /// Whether the document went stale and nothing renewed it since.
    frozen: bool,
    /// The wall clock when last known synchronized: Unix ms at monotonic ms.
    wall: Option<(u64, u64)>,
}

impl Freshness {
    /// A higher revision arrived at `now_ms`. Returns whether this thawed a freeze.
    pub fn renew(&mut self, now_ms: u64) -> bool {
        self.renewed_ms = Some(now_ms);
        std::mem::replace(&mut self.frozen, false)
    }

    /// Whether the device is frozen.
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// The device's clock, synchronized, read `unix_ms` at `now_ms`; between such
    /// readings, wall time is carried forward by the monotonic clock.
    pub fn set_wall_clock(&mut self, unix_ms: u64, now_ms: u64) {
        self.wall = Some((unix_ms, now_ms));
    }

    /// The wall time at `now_ms`, seconds since the Unix epoch, if the clock was ever
    /// known synchronized since the start.
    pub fn unix_s(&self, now_ms: u64) -> Option<u64> {
        let (unix_ms, at_ms) = self.wall?;
        Some(unix_ms.saturating_add(now_ms.saturating_sub(at_ms)) / 1000)
    }

    /// Whether `expired` (a document's expiry check against [`Freshness::unix_s`])
    /// holds at `now_ms`; `false` without a synchronized clock.
    pub fn is_expired(&self, now_ms: u64, expired: impl Fn(u64) -> bool) -> bool {
        self.unix_s(now_ms).is_some_and(expired)
    }

    /// Freezes for an expired document. Returns whether it was not frozen yet (the
    /// device says so once).
    pub fn freeze(&mut self) -> bool {
        !std::mem::replace(&mut self.frozen, true)
    }

    /// Checks at `now_ms` a document that must be renewed within `fresh_s` seconds
    /// (`0`: never goes stale) while `live` (running or paused). Returns the document's
    /// age in ms when it has just gone stale: the device freezes now and says so once.
    pub fn check(&mut self, fresh_s: u64, live: bool, now_ms: u64) -> Option<u64> {
        let renewed = *self.renewed_ms.get_or_insert(now_ms);
        if self.frozen || !live || fresh_s == 0 {
            return None;
        }
        let age = now_ms.saturating_sub(renewed);
        if age > fresh_s.saturating_mul(1000) {
            self.frozen = true;
            return Some(age);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_not_renewed_within_its_period_freezes_once_and_a_renewal_thaws() {
        let mut f = Freshness::default();
        assert!(!f.renew(1_000));
        assert_eq!(f.check(60, true, 61_000), None);
        assert_eq!(f.check(60, true, 61_001), Some(60_001));
        assert!(f.is_frozen());
        assert_eq!(f.check(60, true, 90_000), None, "said once");
        assert!(f.renew(95_000));
        assert!(!f.is_frozen());
        assert_eq!(f.check(60, true, 155_000), None);
    }

    #[test]
    fn finished_rollouts_and_documents_without_a_period_never_freeze() {
        let mut f = Freshness::default();
        f.renew(0);
        assert_eq!(f.check(60, false, 10_000_000), None);
        assert_eq!(f.check(0, true, 10_000_000), None);
        assert!(!f.is_frozen());
    }

    #[test]
    fn wall_time_is_known_only_once_set_and_is_carried_forward_by_the_monotonic_clock() {
        let mut f = Freshness::default();
        assert_eq!(f.unix_s(5_000), None);
        assert!(!f.is_expired(5_000, |_| true), "no synchronized clock");
        f.set_wall_clock(1_790_000_000_000, 5_000);
        assert_eq!(f.unix_s(5_000), Some(1_790_000_000));
        assert_eq!(f.unix_s(65_999), Some(1_790_000_060));
        assert!(f.is_expired(65_999, |s| s >= 1_790_000_060));
        assert!(f.freeze());
        assert!(!f.freeze(), "said once");
        assert!(f.renew(70_000));
    }

    #[test]
    fn after_a_restart_the_period_starts_at_the_first_check() {
        let mut f = Freshness::default();
        assert_eq!(f.check(60, true, 500_000), None);
        assert_eq!(f.check(60, true, 560_000), None);
        assert!(f.check(60, true, 560_001).is_some());
    }
}
