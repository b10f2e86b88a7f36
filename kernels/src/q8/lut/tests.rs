//! Every variant against the portable reference, byte for byte, on random tables,
//! lengths around the vector width and unaligned starts, in place and out of place.

use proptest::prelude::*;

use super::*;

/// A table that maps each byte somewhere else: `b·167 + seed`, a permutation.
fn table(seed: u8) -> Vec<u8> {
    (0..=255u8)
        .map(|b| b.wrapping_mul(167).wrapping_add(seed))
        .collect()
}

#[test]
fn every_entry_is_looked_up_by_every_variant() {
    // Each byte value at every lane position.
    let x: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let t = table(1);
    for variant in VARIANTS {
        let lut = QLut::plan_on(&t, variant).unwrap();
        let mut y = vec![0; x.len()];
        lut.run(&x, &mut y).unwrap();
        let want: Vec<u8> = x.iter().map(|b| t[*b as usize]).collect();
        assert_eq!(y, want, "{}", variant.name);
    }
}

#[test]
fn tables_of_another_size_and_mismatched_lengths_are_refused() {
    assert!(QLut::plan(&[0; 255], Cpu::detect()).is_err());
    assert!(QLut::plan(&[0; 257], Cpu::detect()).is_err());
    let lut = QLut::plan(&table(2), Cpu::detect()).unwrap();
    let mut y = [7u8; 3];
    assert!(lut.run(&[1, 2], &mut y).is_err());
    assert_eq!(y, [7; 3]);
}

proptest! {
    #[test]
    fn variants_match_the_reference(
        t in prop::collection::vec(any::<u8>(), 256),
        data in prop::collection::vec(any::<u8>(), 0..116),
        start in 0usize..16,
    ) {
        let start = start.min(data.len());
        let len = data.len() - start;
        let x = &data[start..];
        let reference = QLut::plan_on(&t, VARIANTS.last().unwrap()).unwrap();
        let mut want = vec![0; len];
        reference.run(x, &mut want).unwrap();
        for variant in VARIANTS {
            let lut = QLut::plan_on(&t, variant).unwrap();
            let mut y = vec![0; len];
            lut.run(x, &mut y).unwrap();
            prop_assert_eq!(&y, &want, "{}", variant.name);
            let mut in_place = data.clone();
            lut.run_in_place(&mut in_place[start..]);
            prop_assert_eq!(&in_place[start..], &want[..], "{} in place", variant.name);
            prop_assert_eq!(&in_place[..start], &data[..start]);
        }
    }
}
