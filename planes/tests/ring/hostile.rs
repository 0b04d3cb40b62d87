//! A hostile peer writing impossible values into the shared header, the stamps and the slots:
//! each is a typed error (or just data), never an out-of-bounds access.

use subring_planes::data::{IndexField, Indexed, Publication, PushError, Ring, Stamped};

use super::{poke, region_for, stamp_at, HEAD, SLOTS, TAIL};

#[test]
fn corrupt_stamp_is_an_error_for_the_consumer() {
    let region = region_for::<u64, Stamped>(8);
    let (mut tx, mut rx) = Ring::<u64, Stamped>::create(region.clone(), 0, 8)
        .unwrap()
        .split()
        .unwrap();
    tx.push(1).unwrap();
    assert_eq!(rx.pop().unwrap(), Some(1));
    // The slot of entry 1 holds the stamp of its previous lap (0: the lap before the first)
    // until it is published, then that of its own (8, the first index of the next lap).
    // Anything else is corrupt: a stamp from the future...
    poke(&region, stamp_at(1, 8), 16);
    let err = rx.pop().unwrap_err();
    assert_eq!(err.field, IndexField::Stamp);
    assert_eq!(err.found, 16);
    assert_eq!((err.low, err.high), (0, 8));
    // ...or from long ago...
    poke(&region, stamp_at(1, 8), 0u32.wrapping_sub(8));
    assert!(rx.read_chunk(4).is_err());
    assert!(rx.available().is_err());
    assert!(rx.has_entries().is_err());
    // ...or the index of the entry (what a stamp was in layout version 4)...
    poke(&region, stamp_at(1, 8), 2);
    assert!(rx.available().is_err());
    // ...and the stamp a correct producer leaves is fine again.
    poke(&region, stamp_at(1, 8), 0);
    assert_eq!(rx.available().unwrap(), 0);
    // A peer that stamps a slot publishes whatever bytes it holds: the consumer validated the
    // stamp, and any bytes are a valid entry.
    poke(&region, stamp_at(1, 8), 8);
    assert_eq!(rx.available().unwrap(), 1);
    assert!(rx.pop().unwrap().is_some());
}

#[test]
fn the_consumer_goes_by_stamps_not_tail() {
    let region = region_for::<u64, Stamped>(8);
    let (mut tx, mut rx) = Ring::<u64, Stamped>::create(region.clone(), 0, 8)
        .unwrap()
        .split()
        .unwrap();
    tx.stage(7).unwrap();
    // A tail that claims the staged entry (or is plain garbage) publishes nothing.
    poke(&region, TAIL, 1);
    assert_eq!(rx.available().unwrap(), 0);
    poke(&region, TAIL, 0xdead_beef);
    assert_eq!(rx.pop().unwrap(), None);
    assert_eq!(tx.publish(), 1);
    assert_eq!(rx.pop().unwrap(), Some(7));
    // The producer stores `tail` after the stamps, for a producer that attaches later.
    let ring = Ring::<u64, Stamped>::attach(region.clone(), 0, 8).unwrap();
    assert!(format!("{ring:?}").contains("tail: 1"), "{ring:?}");
}

#[test]
fn corrupt_head_is_an_error_for_the_producer() {
    corrupt_head_is_an_error_for_the_producer_in::<Indexed>();
    corrupt_head_is_an_error_for_the_producer_in::<Stamped>();
}

fn corrupt_head_is_an_error_for_the_producer_in<P: Publication>() {
    let region = region_for::<u64, P>(4);
    let (mut tx, _rx) = Ring::<u64, P>::create(region.clone(), 0, 4)
        .unwrap()
        .split()
        .unwrap();
    for i in 0..4 {
        tx.push(i).unwrap();
    }
    // The consumer "released" more than was ever published.
    poke(&region, HEAD, 9);
    match tx.push(99) {
        Err(PushError::Corrupt(e, 99)) => {
            assert_eq!(e.field, IndexField::Head);
            assert_eq!(e.found, 9);
        }
        other => panic!("expected a corrupt-head error, got {other:?}"),
    }
    assert!(tx.free_slots().is_err());
    // Head moving backwards.
    poke(&region, HEAD, 2);
    assert_eq!(tx.free_slots().unwrap(), 2);
    poke(&region, HEAD, 1);
    assert!(tx.free_slots().is_err());
}

#[test]
fn free_for_reads_the_head_only_when_the_cache_says_too_little() {
    free_for_reads_the_head_only_when_the_cache_says_too_little_in::<Indexed>();
    free_for_reads_the_head_only_when_the_cache_says_too_little_in::<Stamped>();
}

fn free_for_reads_the_head_only_when_the_cache_says_too_little_in<P: Publication>() {
    let region = region_for::<u64, P>(8);
    let (mut tx, _rx) = Ring::<u64, P>::create(region.clone(), 0, 8)
        .unwrap()
        .split()
        .unwrap();
    for i in 0..6 {
        tx.push(i).unwrap();
    }
    // A corrupt head is not looked at while the cached one leaves enough room...
    poke(&region, HEAD, 100);
    assert_eq!(tx.free_for(2).unwrap(), 2);
    // ...and is caught as soon as it must be.
    assert_eq!(tx.free_for(3).unwrap_err().field, IndexField::Head);
    // A real release is seen once more room is wanted than the cache knows of.
    poke(&region, HEAD, 4);
    assert_eq!(tx.free_for(2).unwrap(), 2);
    assert_eq!(tx.free_for(3).unwrap(), 6);
}

#[test]
fn garbage_in_slots_is_just_data() {
    // Slot contents are the peer's business: any bytes are a valid `Pod` value.
    let region = region_for::<u64, Stamped>(4);
    let (mut tx, mut rx) = Ring::<u64, Stamped>::create(region.clone(), 0, 4)
        .unwrap()
        .split()
        .unwrap();
    tx.push(5).unwrap();
    // SAFETY: the slot area starts at `SLOTS` and holds 4 slots of `U64_STRIDE` bytes, each a
    // 4-byte stamp, 4 bytes of padding and the entry; overwrite slot 0's entry like a peer would.
    unsafe {
        region
            .as_ptr()
            .add(SLOTS + 8)
            .cast::<u64>()
            .write_volatile(u64::MAX)
    };
    assert_eq!(rx.pop().unwrap(), Some(u64::MAX));
}

#[test]
fn corrupt_tail_is_an_error_for_an_indexed_consumer() {
    let region = region_for::<u64, Indexed>(8);
    let (mut tx, mut rx) = Ring::<u64, Indexed>::create(region.clone(), 0, 8)
        .unwrap()
        .split()
        .unwrap();
    for i in 1..=3 {
        tx.push(i).unwrap();
    }
    // The consumer has released 1 and seen 2 and 3 published (tail 3).
    assert_eq!(rx.pop().unwrap(), Some(1));
    // A tail more than a ring ahead of the consumer's head (1)...
    poke(&region, TAIL, 1 + 9);
    let err = rx.available().unwrap_err();
    assert_eq!(err.field, IndexField::Tail);
    assert_eq!(err.found, 10);
    assert_eq!((err.low, err.high), (3, 9));
    assert!(rx.read_chunk(4).is_err());
    // ...or behind what it already saw (3) is corrupt...
    poke(&region, TAIL, 2);
    assert_eq!(rx.available().unwrap_err().field, IndexField::Tail);
    // ...while what it saw stays readable without a look at the tail...
    assert_eq!(rx.pop().unwrap(), Some(2));
    // ...and a tail within both bounds publishes whatever bytes its slots hold: any bytes are a
    // valid entry.
    poke(&region, TAIL, 10);
    assert_eq!(rx.available().unwrap(), 8);
    let mut out = [0u64; 8];
    assert_eq!(rx.pop_slice(&mut out).unwrap(), 8);
    assert_eq!(out[0], 3);
}

#[test]
fn an_indexed_consumer_goes_by_tail() {
    let region = region_for::<u64, Indexed>(8);
    let (mut tx, mut rx) = Ring::<u64, Indexed>::create(region.clone(), 0, 8)
        .unwrap()
        .split()
        .unwrap();
    tx.stage(7).unwrap();
    assert_eq!(rx.available().unwrap(), 0);
    assert_eq!(tx.publish(), 1);
    assert_eq!(rx.available().unwrap(), 1);
    // SAFETY: slot 0 of 8-byte indexed slots is at `SLOTS`; overwrite it like a peer would.
    unsafe {
        region
            .as_ptr()
            .add(SLOTS)
            .cast::<u64>()
            .write_volatile(u64::MAX)
    };
    assert_eq!(rx.pop().unwrap(), Some(u64::MAX));
}
