//! Two threads push ten million sequence-numbered entries through a ring, mixing single and
//! batch operations on both sides; the consumer checks none is lost, duplicated or reordered.
#![cfg(not(loom))]

use std::time::{Duration, Instant};

use subring_planes::data::Ring;

const COUNT: u64 = 10_000_000;
/// A generous bound for a debug build on a loaded 2-core machine; the test fails rather than
/// hanging if the pair stops making progress.
const LIMIT: Duration = Duration::from_secs(240);

#[test]
fn ten_million_entries_in_order() {
    let (mut tx, mut rx) = Ring::<u64>::with_capacity(1024).unwrap();
    let start = Instant::now();
    let producer = std::thread::spawn(move || {
        let mut next = 0u64;
        let mut batch = [0u64; 61];
        let mut round = 0u64;
        while next < COUNT {
            round += 1;
            let progressed = match round % 3 {
                // Single pushes.
                0 => tx.push(next).is_ok() as u64,
                // A slice of varying length.
                1 => {
                    let n = ((round % 61) as usize + 1).min((COUNT - next) as usize);
                    for (i, slot) in batch[..n].iter_mut().enumerate() {
                        *slot = next + i as u64;
                    }
                    tx.push_slice(&batch[..n]).unwrap() as u64
                }
                // A chunk filled in place.
                _ => {
                    let want = ((round % 97) as u32 + 1).min((COUNT - next) as u32);
                    let mut chunk = tx.write_chunk(want).unwrap();
                    let n = chunk.len();
                    for i in 0..n {
                        chunk.set(i, next + i as u64);
                    }
                    chunk.commit(n);
                    n as u64
                }
            };
            next += progressed;
            if progressed == 0 {
                assert!(start.elapsed() < LIMIT, "producer made no progress");
                std::thread::yield_now();
            }
        }
    });
    let mut expected = 0u64;
    let mut out = [0u64; 64];
    let mut round = 0u64;
    while expected < COUNT {
        round += 1;
        let got = match round % 3 {
            0 => match rx.pop().unwrap() {
                Some(v) => {
                    assert_eq!(v, expected, "entry out of order");
                    1
                }
                None => 0,
            },
            1 => {
                let n = rx.pop_slice(&mut out[..(round % 64) as usize + 1]).unwrap();
                for (i, v) in out[..n].iter().enumerate() {
                    assert_eq!(*v, expected + i as u64, "entry out of order");
                }
                n as u64
            }
            _ => {
                let chunk = rx.read_chunk(100).unwrap();
                let n = chunk.len();
                for (i, v) in chunk.iter().enumerate() {
                    assert_eq!(v, expected + i as u64, "entry out of order");
                }
                chunk.release_all();
                n as u64
            }
        };
        expected += got;
        if got == 0 {
            assert!(start.elapsed() < LIMIT, "consumer made no progress");
            std::thread::yield_now();
        }
    }
    producer.join().unwrap();
    assert_eq!(rx.pop().unwrap(), None, "an entry was duplicated");
}
