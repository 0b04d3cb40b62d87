//! Any sequence of operations behaves like a bounded FIFO, under both publications.

use std::collections::VecDeque;

use proptest::prelude::*;
use subring_planes::data::{Indexed, Publication, PushError, Ring, Stamped};

use super::region_for;

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

/// Runs `ops` against a ring of `capacity` whose indices start at `start`, checking each step
/// against a `VecDeque`.
fn matches_bounded_fifo<P: Publication>(
    capacity: u32,
    start: u32,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let region = region_for::<u64, P>(capacity);
    drop(Ring::<u64, P>::create_at_index(region.clone(), 0, capacity, start).unwrap());
    let (mut tx, mut rx) = Ring::<u64, P>::attach(region, 0, capacity)
        .unwrap()
        .split()
        .unwrap();

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
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any sequence of single and batch operations behaves like a bounded FIFO: nothing is
    /// lost, duplicated or reordered, a full ring refuses (and returns) entries, staged entries
    /// are invisible until published. Starting indices near `u32::MAX` cover index wrap-around;
    /// small capacities cover slot wrap-around many times over.
    #[test]
    fn indexed_ring_matches_bounded_fifo(
        cap_log in 0u32..5,
        start in prop_oneof![Just(0u32), Just(u32::MAX - 7), any::<u32>()],
        ops in prop::collection::vec(op(), 1..200),
    ) {
        matches_bounded_fifo::<Indexed>(1 << cap_log, start, ops)?;
    }

    /// The same for a stamped ring.
    #[test]
    fn stamped_ring_matches_bounded_fifo(
        cap_log in 0u32..5,
        start in prop_oneof![Just(0u32), Just(u32::MAX - 7), any::<u32>()],
        ops in prop::collection::vec(op(), 1..200),
    ) {
        matches_bounded_fifo::<Stamped>(1 << cap_log, start, ops)?;
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
