//! One thread pushing and popping through a ring, for counting instructions per entry with
//! callgrind (perf counters do not work on the project's VM, and one thread has no cache-line
//! traffic to blur the count):
//!
//! ```sh
//! cargo build --release -p subring-bench --example ring_ops
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/ring_ops indexed 8 batch      # or: stamped / rtrb, 8 / 64, one / batch
//! ```
//!
//! Each run moves 1,000,000 entries (8 or 64 bytes; one at a time or in batches of 32, as
//! `subring bench --only spsc` does), so the instruction total divided by 10^6 is the
//! instructions per entry, the loop's own included.

use std::hint::black_box;

use bytemuck::Pod;
use subring_planes::data::{Indexed, Publication, Ring, Stamped};

const N: u64 = 1_000_000;
const BATCH: usize = 32;

/// An entry of `W` words, all equal to its sequence number.
fn make<const W: usize>(i: u64) -> [u64; W] {
    [i; W]
}

fn subring<const W: usize, P: Publication>(batched: bool)
where
    [u64; W]: Pod,
{
    let (mut tx, mut rx) = Ring::<[u64; W], P>::with_capacity(4096).expect("ring");
    let mut batch = [[0u64; W]; BATCH];
    let mut out = [[0u64; W]; BATCH];
    let (mut i, mut sum) = (0u64, 0u64);
    while i < N {
        if batched {
            for (k, e) in batch.iter_mut().enumerate() {
                *e = make(i + k as u64);
            }
            let n = tx.push_slice(black_box(&batch)).expect("push");
            let m = rx.pop_slice(black_box(&mut out)).expect("pop");
            assert_eq!(n, m);
            sum = out[..m].iter().fold(sum, |s, e| s.wrapping_add(e[0]));
            i += n as u64;
        } else {
            tx.push(black_box(make(i))).expect("push");
            sum = sum.wrapping_add(rx.pop().expect("pop").expect("an entry")[0]);
            i += 1;
        }
    }
    black_box(sum);
}

fn rtrb<const W: usize>(batched: bool) {
    let (mut tx, mut rx) = rtrb::RingBuffer::<[u64; W]>::new(4096);
    let mut batch = [[0u64; W]; BATCH];
    let mut out = [[0u64; W]; BATCH];
    let (mut i, mut sum) = (0u64, 0u64);
    while i < N {
        if batched {
            for (k, e) in batch.iter_mut().enumerate() {
                *e = make(i + k as u64);
            }
            let values = black_box(&batch);
            let chunk = tx.write_chunk_uninit(values.len()).expect("room");
            let n = chunk.fill_from_iter(values.iter().copied());
            let out = black_box(&mut out);
            let chunk = rx.read_chunk(out.len().min(rx.slots())).expect("entries");
            let (a, b) = chunk.as_slices();
            out[..a.len()].copy_from_slice(a);
            out[a.len()..a.len() + b.len()].copy_from_slice(b);
            let m = a.len() + b.len();
            chunk.commit_all();
            assert_eq!(n, m);
            sum = out[..m].iter().fold(sum, |s, e| s.wrapping_add(e[0]));
            i += n as u64;
        } else {
            tx.push(black_box(make(i))).expect("push");
            sum = sum.wrapping_add(rx.pop().expect("an entry")[0]);
            i += 1;
        }
    }
    black_box(sum);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (which, size, batched) = match args.as_slice() {
        [which, size, how] => (*which, *size, *how == "batch"),
        _ => {
            eprintln!("usage: ring_ops indexed|stamped|rtrb 8|64 one|batch");
            std::process::exit(2);
        }
    };
    match (which, size) {
        ("indexed", "8") => subring::<1, Indexed>(batched),
        ("indexed", "64") => subring::<8, Indexed>(batched),
        ("stamped", "8") => subring::<1, Stamped>(batched),
        ("stamped", "64") => subring::<8, Stamped>(batched),
        ("rtrb", "8") => rtrb::<1>(batched),
        ("rtrb", "64") => rtrb::<8>(batched),
        _ => {
            eprintln!("unknown ring {which} or entry size {size}");
            std::process::exit(2);
        }
    }
}
