//! Deterministic cohort bucketing for canary rollouts.
//!
//! Every (device, rollout) pair maps to one of [`BUCKETS`] buckets, and a device is in a
//! rollout's cohort at `p` percent iff its bucket is below `p × 100` (basis points). The
//! mapping needs no coordination: the device, the fleet server and any tool compute the
//! same answer from the two ids alone.
//!
//! Consequences of the construction:
//!
//! - **Monotone.** Raising a rollout's percent only adds devices; no device that already
//!   took the update leaves the cohort.
//! - **Independent across rollouts.** The rollout id is hashed with the device id, so the
//!   10 % canary of one rollout is not the 10 % canary of the next; the same unlucky
//!   devices do not go first every time.
//! - **Stable.** The hash scheme below is part of Perch's behaviour (a golden test pins
//!   it): changing it would reshuffle every cohort in the middle of rollouts.
//!
//! # Hash scheme
//!
//! `bucket = u64_be(SHA-256(DOMAIN ‖ u64_be(len(device_id)) ‖ device_id ‖ rollout_id)[0..8]) mod 10 000`
//!
//! where `DOMAIN` is the 16 bytes `b"perch-canary-v1\0"`. The length prefix makes the
//! encoding unambiguous: `("ab", "c")` and `("a", "bc")` hash different inputs.
//!
//! Reducing a 64-bit value mod 10 000 is not perfectly uniform: 2^64 mod 10 000 = 1 616,
//! so buckets 0..1 616 each have one more preimage than the others out of about
//! 1.8 × 10^15. The bias is below 6 × 10^-16 per bucket, far beyond measurable.
//!
//! ```
//! use perch_runtime::canary::{bucket, in_cohort, Percent, BUCKETS};
//!
//! let ten = Percent::from_whole(10)?;
//! assert!(bucket(b"pi-kitchen-01", b"rollout-7") < BUCKETS);
//! assert_eq!(
//!     in_cohort(b"pi-kitchen-01", b"rollout-7", ten),
//!     bucket(b"pi-kitchen-01", b"rollout-7") < 1_000,
//! );
//! # Ok::<(), perch_runtime::Error>(())
//! ```

use sha2::{Digest, Sha256};

use crate::Error;

/// Number of cohort buckets: one per basis point, so percents with two decimals are exact.
pub const BUCKETS: u16 = 10_000;

/// Domain-separation prefix of the hashed input; the `v1` names the scheme version.
const DOMAIN: &[u8; 16] = b"perch-canary-v1\0";

/// The device's bucket for a rollout, in `0..BUCKETS`.
///
/// Deterministic and platform-independent: the same ids give the same bucket on every
/// device and host. Ids are arbitrary bytes (empty ones included); see the
/// [module docs](self) for the exact hash scheme.
pub fn bucket(device_id: &[u8], rollout_id: &[u8]) -> u16 {
    let hash = digest(device_id, rollout_id);
    let mut head = [0; 8];
    head.copy_from_slice(&hash[..8]);
    let bucket = u64::from_be_bytes(head) % u64::from(BUCKETS);
    // Lossless: the remainder is below BUCKETS, a u16.
    bucket as u16
}

/// SHA-256 of the unambiguous encoding of the two ids.
fn digest(device_id: &[u8], rollout_id: &[u8]) -> [u8; 32] {
    let device_len = device_id.len() as u64;
    Sha256::new()
        .chain_update(DOMAIN)
        .chain_update(device_len.to_be_bytes())
        .chain_update(device_id)
        .chain_update(rollout_id)
        .finalize()
        .into()
}

/// Whether the device is in the rollout's cohort at `percent`: true iff
/// [`bucket`]`(device_id, rollout_id) < percent.basis_points()`.
///
/// 0 % selects no device and 100 % selects every device. For fixed ids, raising
/// `percent` never turns `true` into `false`.
pub fn in_cohort(device_id: &[u8], rollout_id: &[u8], percent: Percent) -> bool {
    bucket(device_id, rollout_id) < percent.basis_points()
}

/// A rollout share between 0 % and 100 % inclusive, in basis points (hundredths of a
/// percent, `0..=10_000`).
///
/// The range is checked on construction, so every `Percent` is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Percent(u16);

impl Percent {
    /// 0 %: no device.
    pub const ZERO: Percent = Percent(0);
    /// 100 %: every device.
    pub const ALL: Percent = Percent(BUCKETS);

    /// A whole percent, `0..=100`.
    ///
    /// # Errors
    ///
    /// [`Error::PercentOutOfRange`] above 100.
    pub const fn from_whole(percent: u8) -> Result<Percent, Error> {
        // At most 255 × 100 = 25 500, which fits a u16.
        Percent::from_basis_points(percent as u16 * 100)
    }

    /// A percent in basis points, `0..=10_000` (`1_250` is 12.5 %).
    ///
    /// # Errors
    ///
    /// [`Error::PercentOutOfRange`] above 10 000.
    pub const fn from_basis_points(basis_points: u16) -> Result<Percent, Error> {
        if basis_points > BUCKETS {
            return Err(Error::PercentOutOfRange { basis_points });
        }
        Ok(Percent(basis_points))
    }

    /// The percent in basis points, `0..=10_000`; also the number of buckets in the cohort.
    pub const fn basis_points(self) -> u16 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn device_ids() -> impl Iterator<Item = String> {
        (0..10_000).map(|i| format!("device-{i:05}"))
    }

    fn cohort_size(rollout_id: &[u8], percent: Percent) -> usize {
        device_ids()
            .filter(|id| in_cohort(id.as_bytes(), rollout_id, percent))
            .count()
    }

    #[test]
    fn bucket_of_device_00000_in_rollout_1_is_pinned() {
        assert_eq!(bucket(b"device-00000", b"rollout-1"), GOLDEN_BUCKET);
    }

    /// Computed independently from the scheme in the module docs, with Python:
    /// `d = b"device-00000"; int.from_bytes(sha256(b"perch-canary-v1\0" +
    /// len(d).to_bytes(8, "big") + d + b"rollout-1").digest()[:8], "big") % 10000`.
    const GOLDEN_BUCKET: u16 = 3672;

    #[test]
    fn cohort_share_is_within_one_point_of_the_target() {
        for whole in [1, 10, 50] {
            let size = cohort_size(b"rollout-1", Percent::from_whole(whole).unwrap());
            let target = usize::from(whole) * 100;
            assert!(
                size.abs_diff(target) <= 100,
                "{whole} % selected {size} of 10000 devices"
            );
        }
    }

    #[test]
    fn zero_percent_selects_no_device() {
        assert_eq!(cohort_size(b"rollout-1", Percent::ZERO), 0);
    }

    #[test]
    fn hundred_percent_selects_every_device() {
        assert_eq!(
            cohort_size(b"rollout-1", Percent::from_whole(100).unwrap()),
            10_000
        );
    }

    #[test]
    fn different_rollouts_draw_independent_cohorts() {
        let ten = Percent::from_whole(10).unwrap();
        let overlap = device_ids()
            .filter(|id| in_cohort(id.as_bytes(), b"rollout-1", ten))
            .filter(|id| in_cohort(id.as_bytes(), b"rollout-2", ten))
            .count();
        // Independent 10 % cohorts share 1 % of devices: 100 expected, standard
        // deviation about 10, so 50..=150 is a five-sigma band.
        assert!((50..=150).contains(&overlap), "overlap was {overlap}");
    }

    #[test]
    fn length_prefix_separates_ambiguous_concatenations() {
        assert_ne!(digest(b"ab", b"c"), digest(b"a", b"bc"));
        assert_ne!(digest(b"", b"abc"), digest(b"abc", b""));
    }

    #[test]
    fn percents_above_one_hundred_are_rejected() {
        assert_eq!(
            Percent::from_whole(101),
            Err(Error::PercentOutOfRange {
                basis_points: 10_100
            })
        );
        assert_eq!(
            Percent::from_whole(255),
            Err(Error::PercentOutOfRange {
                basis_points: 25_500
            })
        );
        assert_eq!(
            Percent::from_basis_points(10_001),
            Err(Error::PercentOutOfRange {
                basis_points: 10_001
            })
        );
        assert_eq!(Percent::from_basis_points(10_000), Ok(Percent::ALL));
    }

    #[test]
    fn whole_percents_are_hundreds_of_basis_points() {
        assert_eq!(Percent::from_whole(0), Ok(Percent::ZERO));
        assert_eq!(Percent::from_whole(37).unwrap().basis_points(), 3_700);
    }

    proptest! {
        #[test]
        fn raising_the_percent_only_adds_devices(
            device_id in prop::collection::vec(any::<u8>(), 0..64),
            rollout_id in prop::collection::vec(any::<u8>(), 0..64),
            a in 0..=BUCKETS,
            b in 0..=BUCKETS,
        ) {
            let low = Percent::from_basis_points(a.min(b)).unwrap();
            let high = Percent::from_basis_points(a.max(b)).unwrap();
            if in_cohort(&device_id, &rollout_id, low) {
                prop_assert!(in_cohort(&device_id, &rollout_id, high));
            }
        }

        #[test]
        fn buckets_are_always_in_range(
            device_id in prop::collection::vec(any::<u8>(), 0..64),
            rollout_id in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            prop_assert!(bucket(&device_id, &rollout_id) < BUCKETS);
        }
    }
}
