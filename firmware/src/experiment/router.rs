//! Which variant serves an entity: a pure function of the entity id, the experiment's
//! name and the shares, with no I/O and no state beyond the share ranges.
//!
//! An entity's bucket is [`perch_runtime::canary::bucket`]`(entity, experiment)`, the
//! SHA-256 bucketing that puts devices in canary cohorts, in `0..10 000`. The variants
//! hold cumulative ranges of buckets in the order they are listed: with shares of 30 %,
//! 50 % and 20 %, the first holds buckets `0..3000`, the second `3000..8000`, the last
//! `8000..10 000`. So:
//!
//! - the same entity always gets the same variant while the shares stay;
//! - raising a variant's share at the expense of a neighbour in the list moves only
//!   entities of that neighbour, and only into the raised variant. With two variants
//!   that is any change; with three, listing the default between the two candidates
//!   lets either candidate ramp up from the default without touching the other's
//!   entities (shares moved between variants that are not neighbours shift the
//!   ranges between them);
//! - different experiments draw independent assignments (the name is hashed in).
//!
//! A request without an entity id goes to the default variant.

use perch_runtime::canary::{bucket, BUCKETS};

use super::config::{ExperimentError, ExperimentSpec};

/// The share ranges of one experiment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Router {
    /// The experiment's name, hashed with each entity id.
    name: String,
    /// Variant `i` holds the buckets from `ends[i - 1]` (0 for the first) to `ends[i]`.
    ends: Vec<u16>,
    /// Where a request without an entity id goes.
    default: usize,
}

impl Router {
    /// The router of `spec`, once it [validates](ExperimentSpec::validate).
    ///
    /// # Errors
    ///
    /// Whatever [`ExperimentSpec::validate`] finds.
    pub fn new(spec: &ExperimentSpec) -> Result<Router, ExperimentError> {
        spec.validate()?;
        let mut end = 0u16;
        let ends = spec
            .variants
            .iter()
            .map(|v| {
                end += v.share.basis_points();
                end
            })
            .collect();
        Ok(Router {
            name: spec.name.clone(),
            ends,
            default: spec.default_index(),
        })
    }

    /// The index of the variant that serves `entity` (the default without one).
    pub fn route(&self, entity: Option<&[u8]>) -> usize {
        match entity {
            Some(id) => self.variant_of(bucket(id, self.name.as_bytes())),
            None => self.default,
        }
    }

    /// The index of the variant holding bucket `b` (`0..10 000`).
    pub fn variant_of(&self, b: u16) -> usize {
        let b = b.min(BUCKETS - 1);
        self.ends
            .iter()
            .position(|end| b < *end)
            .unwrap_or(self.default)
    }

    /// The default variant's index.
    pub fn default(&self) -> usize {
        self.default
    }
}

#[cfg(test)]
mod tests {
    use perch_runtime::canary::Percent;
    use proptest::prelude::*;

    use super::*;
    use crate::experiment::config::{Agreement, EntitySource, VariantSpec};

    fn spec(name: &str, shares: &[u16], default: usize) -> ExperimentSpec {
        ExperimentSpec {
            name: name.into(),
            variants: shares
                .iter()
                .enumerate()
                .map(|(i, bp)| VariantSpec {
                    name: format!("v{i}"),
                    model: format!("m{i}"),
                    share: Percent::from_basis_points(*bp).unwrap(),
                })
                .collect(),
            default: format!("v{default}"),
            shadows: Vec::new(),
            entity: EntitySource::default(),
            agreement: Agreement::Argmax,
            primary: false,
        }
    }

    fn router(name: &str, shares: &[u16], default: usize) -> Router {
        Router::new(&spec(name, shares, default)).unwrap()
    }

    fn entities() -> impl Iterator<Item = String> {
        (0..10_000).map(|i| format!("customer-{i}"))
    }

    #[test]
    fn an_entity_gets_the_variant_whose_range_holds_its_canary_bucket() {
        let r = router("iris-ab", &[3000, 5000, 2000], 1);
        for id in entities().take(500) {
            let b = bucket(id.as_bytes(), b"iris-ab");
            let want = if b < 3000 {
                0
            } else if b < 8000 {
                1
            } else {
                2
            };
            assert_eq!(r.route(Some(id.as_bytes())), want, "{id}: bucket {b}");
        }
        assert_eq!(r.route(None), 1, "no entity id: the default");
        assert_eq!(
            (r.variant_of(0), r.variant_of(2999), r.variant_of(3000)),
            (0, 0, 1)
        );
        assert_eq!(r.variant_of(9999), 2);
    }

    #[test]
    fn the_same_entity_always_gets_the_same_variant_and_shares_are_met() {
        let r = router("iris-ab", &[2500, 7500], 0);
        let mut counts = [0usize; 2];
        for id in entities() {
            let v = r.route(Some(id.as_bytes()));
            assert_eq!(r.route(Some(id.as_bytes())), v);
            counts[v] += 1;
        }
        // 10 000 entities at 25 %: 2 500 ± 4 standard deviations (43).
        assert!((2327..=2673).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn experiments_of_other_names_draw_other_assignments() {
        let (a, b) = (
            router("exp-a", &[5000, 5000], 0),
            router("exp-b", &[5000, 5000], 0),
        );
        let differ = entities()
            .filter(|id| a.route(Some(id.as_bytes())) != b.route(Some(id.as_bytes())))
            .count();
        assert!((4600..=5400).contains(&differ), "{differ}");
    }

    #[test]
    fn a_zero_share_variant_gets_no_entity() {
        let r = router("iris-ab", &[0, 10_000], 0);
        assert!(entities().all(|id| r.route(Some(id.as_bytes())) == 1));
        assert_eq!(
            r.route(None),
            0,
            "the default still takes requests without an id"
        );
    }

    proptest! {
        /// Raising a variant's share at the expense of its neighbour moves entities
        /// from that neighbour into it, and no other entity moves.
        #[test]
        fn raising_a_share_only_moves_entities_into_that_variant(
            shares in prop::collection::vec(0u16..=100, 2..6),
            raised in 0usize..6,
            up in any::<bool>(),
            amount in 1u16..=10_000,
        ) {
            let total: u32 = shares.iter().map(|s| u32::from(*s)).sum::<u32>().max(1);
            let mut bp: Vec<u16> = shares
                .iter()
                .map(|s| (u32::from(*s) * 10_000 / total) as u16)
                .collect();
            let rest = 10_000 - bp.iter().sum::<u16>();
            bp[0] += rest;
            let raised = raised % bp.len();
            let donor = match (up, raised) {
                (true, r) if r + 1 < bp.len() => r + 1,
                (_, 0) => 1,
                (_, r) => r - 1,
            };
            let moved = amount.min(bp[donor]);
            let mut after = bp.clone();
            after[raised] += moved;
            after[donor] -= moved;
            let (before, after) = (router("exp", &bp, 0), router("exp", &after, 0));
            let mut into = 0u32;
            for b in 0..10_000u16 {
                let (was, now) = (before.variant_of(b), after.variant_of(b));
                if was != now {
                    prop_assert_eq!((was, now), (donor, raised), "bucket {}", b);
                    into += 1;
                }
            }
            prop_assert_eq!(into, u32::from(moved));
        }

        /// With the default listed between two candidates, either candidate ramps up
        /// from the default without moving the other's entities.
        #[test]
        fn a_candidate_ramps_up_from_a_default_listed_between_the_candidates(
            a in 0u16..=5000, c in 0u16..=5000, step in 1u16..=5000, first in any::<bool>(),
        ) {
            let shares = [a, 10_000 - a - c, c];
            let step = step.min(shares[1]);
            let raised = if first { 0 } else { 2 };
            let mut after = shares;
            after[raised] += step;
            after[1] -= step;
            let (before, after) = (router("exp", &shares, 1), router("exp", &after, 1));
            for b in 0..10_000u16 {
                let (was, now) = (before.variant_of(b), after.variant_of(b));
                prop_assert!(was == now || (was, now) == (1, raised));
            }
        }
    }
}
