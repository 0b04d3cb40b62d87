//! Ring behaviour: property tests against a `VecDeque` model, index wrap-around at `u32::MAX`,
//! and a hostile peer writing impossible values into the shared header.
#![cfg(not(loom))]

use std::collections::VecDeque;
use std::sync::Arc;

use proptest::prelude::*;
use subring_planes::data::{
    CorruptIndex, IndexField, PushError, Region, RegionError, RegionOptions, Ring, RingError,
    RingLayout,
};

/// Byte offsets of the shared header fields and slots: part of the cross-process ABI, so pinned
/// here.
const TAIL: usize = 128;
const HEAD: usize = 256;
const SLOTS: usize = 640;
/// Bytes from one `u64` slot (a 4-byte stamp, padding, the entry) to the next.
const U64_STRIDE: usize = 16;

/// Offset of the stamp of the `u64` slot that `index` maps to in a ring of `capacity`.
fn stamp_at(index: u32, capacity: u32) -> usize {
    SLOTS + (index & (capacity - 1)) as usize * U64_STRIDE
}

fn region_for<T: bytemuck::Pod>(capacity: u32) -> Arc<Region> {
    let layout = RingLayout::of::<T>(capacity).unwrap();
    Arc::new(Region::memfd("ring-test", layout.size, RegionOptions::new()).unwrap())
}

/// Writes a header word the way a hostile peer would.
fn poke(region: &Region, offset: usize, value: u32) {
    region.check(offset as u64, 4).unwrap();
    // SAFETY: in bounds and 4-aligned (checked above; the mapping is page-aligned); the header
    // words are atomics, and a volatile store is what a peer process's write looks like to us.
    unsafe {
        region
            .as_ptr()
            .add(offset)
            .cast::<u32>()
            .write_volatile(value)
    }
}

#[test]
fn header_layout_is_pinned() {
    let layout = RingLayout::of::<u64>(8).unwrap();
    assert_eq!(layout.slots_offset, SLOTS);
    assert_eq!(layout.size, SLOTS + 8 * U64_STRIDE);
    assert_eq!(layout.align, 128);
    // The stride keeps the stamp and the entry on one cache line: a power of two up to 64
    // bytes; a larger slot spans lines anyway and is packed.
    fn stride<T: bytemuck::Pod>() -> usize {
        let layout = RingLayout::of::<T>(4).unwrap();
        (layout.size - layout.slots_offset) / 4
    }
    assert_eq!(stride::<u8>(), 8);
    assert_eq!(stride::<[u8; 3]>(), 8);
    assert_eq!(stride::<u32>(), 8);
    assert_eq!(stride::<u64>(), U64_STRIDE);
    assert_eq!(stride::<[u32; 3]>(), 16);
    assert_eq!(stride::<u128>(), 32);
    assert_eq!(stride::<[u64; 7]>(), 64);
    assert_eq!(stride::<[u64; 8]>(), 72);
    assert_eq!(stride::<[u64; 25]>(), 208);
    assert_eq!(stride::<[u32; 17]>(), 72);
}

#[derive(Debug, Clone)]
enum Op {
    Push,
    Stage,
    Publish,
    PushSlice(u8),
    Chunk { reserve: u8, fill: u8 },
    Pop,
    PopSlice(u8),
    ReadChunk { max: u8, release: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Push),
        Just(Op::Stage),
        Just(Op::Publish),
        (0u8..20).prop_map(Op::PushSlice),
        (0u8..20, 0u8..20).prop_map(|(reserve, fill)| Op::Chunk { reserve, fill }),
        Just(Op::Pop),
        (0u8..20).prop_map(Op::PopSlice),
        (0u8..20, 0u8..20).prop_map(|(max, release)| Op::ReadChunk { max, release }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any sequence of single and batch operations behaves like a bounded FIFO: nothing is
    /// lost, duplicated or reordered, a full ring refuses (and returns) entries, staged entries
    /// are invisible until published. Starting indices near `u32::MAX` cover index wrap-around;
    /// small capacities cover slot wrap-around many times over.
    #[test]
    fn ring_matches_bounded_fifo(
        cap_log in 0u32..5,
        start in prop_oneof![Just(0u32), Just(u32::MAX - 7), any::<u32>()],
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let capacity = 1u32 << cap_log;
        let region = region_for::<u64>(capacity);
        drop(Ring::<u64>::create_at_index(region.clone(), 0, capacity, start).unwrap());
        let (mut tx, mut rx) = Ring::<u64>::attach(region, 0, capacity).unwrap().split().unwrap();

        let mut published: VecDeque<u64> = VecDeque::new();
        let mut staged: Vec<u64> = Vec::new();
        let mut next = 0u64;
        let cap = capacity as usize;
        for op in ops {
            let used = published.len() + staged.len();
            match op {
                Op::Push => match tx.push(next) {
                    Ok(()) => {
                        prop_assert!(used < cap);
                        published.extend(staged.drain(..));
                        published.push_back(next);
                        next += 1;
                    }
                    Err(PushError::Full(v)) => {
                        prop_assert_eq!(used, cap);
                        prop_assert_eq!(v, next);
                    }
                    Err(e) => prop_assert!(false, "unexpected {e:?}"),
                },
                Op::Stage => match tx.stage(next) {
                    Ok(()) => {
                        prop_assert!(used < cap);
                        staged.push(next);
                        next += 1;
                    }
                    Err(PushError::Full(_)) => prop_assert_eq!(used, cap),
                    Err(e) => prop_assert!(false, "unexpected {e:?}"),
                },
                Op::Publish => {
                    prop_assert_eq!(tx.publish() as usize, staged.len());
                    published.extend(staged.drain(..));
                }
                Op::PushSlice(n) => {
                    let values: Vec<u64> = (next..next + u64::from(n)).collect();
                    let pushed = tx.push_slice(&values).unwrap();
                    prop_assert_eq!(pushed, (n as usize).min(cap - used));
                    published.extend(staged.drain(..));
                    published.extend(&values[..pushed]);
                    next += pushed as u64;
                }
                Op::Chunk { reserve, fill } => {
                    let mut chunk = tx.write_chunk(u32::from(reserve)).unwrap();
                    prop_assert_eq!(chunk.len(), (reserve as usize).min(cap - used));
                    let n = (fill as usize).min(chunk.len());
                    for i in 0..n {
                        chunk.set(i, next + i as u64);
                    }
                    chunk.commit(n);
                    published.extend(staged.drain(..));
                    published.extend(next..next + n as u64);
                    next += n as u64;
                }
                Op::Pop => {
                    prop_assert_eq!(rx.pop().unwrap(), published.pop_front());
                }
                Op::PopSlice(n) => {
                    let mut out = vec![0u64; n as usize];
                    let got = rx.pop_slice(&mut out).unwrap();
                    prop_assert_eq!(got, (n as usize).min(published.len()));
                    for v in &out[..got] {
                        prop_assert_eq!(Some(*v), published.pop_front());
                    }
                }
                Op::ReadChunk { max, release } => {
                    let chunk = rx.read_chunk(u32::from(max)).unwrap();
                    prop_assert_eq!(chunk.len(), (max as usize).min(published.len()));
                    let seen: Vec<u64> = chunk.iter().collect();
                    prop_assert!(seen.iter().eq(published.iter().take(seen.len())));
                    let n = (release as usize).min(chunk.len());
                    chunk.release(n);
                    published.drain(..n);
                }
            }
            prop_assert_eq!(rx.available().unwrap() as usize, published.len());
            prop_assert_eq!(tx.staged() as usize, staged.len());
        }
    }
}

#[test]
fn capacity_one_full_and_empty() {
    let (mut tx, mut rx) = Ring::<u32>::with_capacity(1).unwrap();
    assert_eq!(rx.pop().unwrap(), None);
    tx.push(1).unwrap();
    assert_eq!(tx.push(2), Err(PushError::Full(2)));
    assert_eq!(rx.peek().unwrap(), Some(1));
    assert_eq!(rx.pop().unwrap(), Some(1));
    assert_eq!(rx.pop().unwrap(), None);
    tx.push(3).unwrap();
    assert_eq!(rx.pop().unwrap(), Some(3));
}

#[test]
fn invalid_capacities_are_errors() {
    for cap in [0, 3, 12, (1 << 31) + 1, u32::MAX] {
        assert!(
            matches!(
                Ring::<u64>::with_capacity(cap),
                Err(RingError::InvalidCapacity(_))
            ),
            "capacity {cap} accepted"
        );
    }
}

#[test]
fn placement_is_checked() {
    let region = region_for::<u64>(8);
    assert!(matches!(
        Ring::<u64>::create(region.clone(), 64, 8),
        Err(RingError::Region(RegionError::Misaligned { .. }))
    ));
    assert!(matches!(
        Ring::<u64>::create(region.clone(), 0, 16),
        Err(RingError::Region(RegionError::OutOfBounds { .. }))
    ));
    assert!(matches!(
        Ring::<u64>::create(region, 1 << 40, 8),
        Err(RingError::Region(RegionError::OutOfBounds { .. }))
    ));
}

#[test]
fn attach_checks_the_header() {
    let region = region_for::<u64>(8);
    // Nothing created yet: no magic.
    assert!(matches!(
        Ring::<u64>::attach(region.clone(), 0, 8),
        Err(RingError::HeaderMismatch { field: "magic", .. })
    ));
    drop(Ring::<u64>::create(region.clone(), 0, 8).unwrap());
    assert!(matches!(
        Ring::<u64>::attach(region.clone(), 0, 4),
        Err(RingError::HeaderMismatch {
            field: "capacity",
            found: 8,
            expected: 4,
            ..
        })
    ));
    assert!(matches!(
        Ring::<[u32; 2]>::attach(region.clone(), 0, 8),
        Err(RingError::HeaderMismatch {
            field: "entry alignment",
            ..
        })
    ));
    assert!(matches!(
        Ring::<u32>::attach(region.clone(), 0, 8),
        Err(RingError::HeaderMismatch {
            field: "entry size",
            found: 8,
            expected: 4,
            ..
        })
    ));
    // Indices that no correct pair could have written.
    poke(&region, TAIL, 100);
    poke(&region, HEAD, 50);
    let err = Ring::<u64>::attach(region, 0, 8).unwrap_err();
    assert!(
        matches!(
            err,
            RingError::Corrupt(CorruptIndex {
                field: IndexField::Tail,
                found: 100,
                ..
            })
        ),
        "{err}"
    );
}

#[test]
fn corrupt_stamp_is_an_error_for_the_consumer() {
    let region = region_for::<u64>(8);
    let (mut tx, mut rx) = Ring::<u64>::create(region.clone(), 0, 8)
        .unwrap()
        .split()
        .unwrap();
    tx.push(1).unwrap();
    assert_eq!(rx.pop().unwrap(), Some(1));
    // The slot of entry 1 holds the stamp of its previous lap (1 + 1 - 8) until it is published.
    // Anything else is corrupt: a stamp from the future...
    poke(&region, stamp_at(1, 8), 1 + 1 + 8);
    let err = rx.pop().unwrap_err();
    assert_eq!(err.field, IndexField::Stamp);
    assert_eq!(err.found, 10);
    assert_eq!((err.low, err.high), (2u32.wrapping_sub(8), 2));
    // ...or from long ago...
    poke(&region, stamp_at(1, 8), 0);
    assert!(rx.read_chunk(4).is_err());
    assert!(rx.available().is_err());
    assert!(rx.has_entries().is_err());
    // ...and the stamp a correct producer leaves is fine again.
    poke(&region, stamp_at(1, 8), 2u32.wrapping_sub(8));
    assert_eq!(rx.available().unwrap(), 0);
    // A peer that stamps a slot publishes whatever bytes it holds: the consumer validated the
    // stamp, and any bytes are a valid entry.
    poke(&region, stamp_at(1, 8), 2);
    assert_eq!(rx.available().unwrap(), 1);
    assert!(rx.pop().unwrap().is_some());
}

#[test]
fn the_consumer_goes_by_stamps_not_tail() {
    let region = region_for::<u64>(8);
    let (mut tx, mut rx) = Ring::<u64>::create(region.clone(), 0, 8)
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
    let ring = Ring::<u64>::attach(region.clone(), 0, 8).unwrap();
    assert!(format!("{ring:?}").contains("tail: 1"), "{ring:?}");
}

#[test]
fn corrupt_head_is_an_error_for_the_producer() {
    let region = region_for::<u64>(4);
    let (mut tx, _rx) = Ring::<u64>::create(region.clone(), 0, 4)
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
    let region = region_for::<u64>(8);
    let (mut tx, _rx) = Ring::<u64>::create(region.clone(), 0, 8)
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
    let region = region_for::<u64>(4);
    let (mut tx, mut rx) = Ring::<u64>::create(region.clone(), 0, 4)
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

/// Slots are copied word by word at the widest width the entry's alignment allows: every
/// alignment and an odd size must come back byte for byte, including across wrap-around.
#[test]
fn entries_of_every_alignment_round_trip() {
    fn check<T: bytemuck::Pod + PartialEq + std::fmt::Debug>(make: impl Fn(u8) -> T) {
        let (mut tx, mut rx) = Ring::<T>::with_capacity(4).unwrap();
        for round in 0..10u8 {
            let values: Vec<T> = (0..3)
                .map(|i| make(round.wrapping_mul(31).wrapping_add(i)))
                .collect();
            assert_eq!(tx.push_slice(&values).unwrap(), 3);
            for v in &values {
                assert_eq!(rx.pop().unwrap().as_ref(), Some(v));
            }
        }
    }
    check(|b| [b, b ^ 0x5a, b.wrapping_add(7)]); // align 1, 3 bytes
    check(|b| [u16::from(b) << 8 | 0x11, 0xfeed, u16::from(b)]); // align 2, 6 bytes
    check(|b| [u32::from(b) * 0x0101_0101, 0xdead_beef, 7]); // align 4, 12 bytes
    check(|b| {
        [
            u64::from(b) * 0x0102_0304_0506_0708,
            u64::MAX - u64::from(b),
        ]
    }); // align 8, 16 bytes
    check(|b| [u128::from(b) << 100 | 0xabc, u128::MAX - u128::from(b)]); // align 16, 32 bytes
}
