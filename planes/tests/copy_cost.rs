//! What the volatile copies in and out of shared buffers cost against copying through a slice
//! of the same buffer (`memcpy`, what `Buf` did before its bytes went behind `SharedBytes`),
//! measured in one run (opt-in; prints, asserts nothing about speed):
//!
//! ```sh
//! cargo test --release -p subring-planes --test copy_cost -- --ignored --nocapture
//! ```
#![cfg(not(loom))]

use std::sync::Arc;
use std::time::Instant;

use subring_planes::data::{BufferPool, Region, RegionOptions};

const SIZES: [usize; 3] = [64, 4096, 65536];
const BYTES_PER_ROUND: usize = 64 << 20;

/// Best nanoseconds per call of `f` over several rounds.
fn best_ns(calls: usize, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..15 {
        let t = Instant::now();
        for _ in 0..calls {
            f();
        }
        best = best.min(t.elapsed().as_nanos() as f64 / calls as f64);
    }
    best
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn volatile_copies_against_memcpy() {
    println!(
        "{:>8} {:>14} {:>14} {:>8} {:>14} {:>14} {:>8}",
        "bytes", "slice in", "fill_from", "ratio", "slice out", "copy_to", "ratio"
    );
    for size in SIZES {
        let region = Arc::new(Region::memfd("copy-cost", size * 4, RegionOptions::new()).unwrap());
        let pool = BufferPool::new(region, 0, size, 4).unwrap();
        let source: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut out = vec![0u8; size];
        let calls = BYTES_PER_ROUND / size;
        let mut buf = pool.alloc().unwrap();
        // Both ways copy between the same two addresses: `source`/`out` and the pool buffer.
        let memcpy_in = best_ns(calls, || {
            // SAFETY: nothing else maps the region.
            unsafe { buf.spare_mut() }.copy_from_slice(std::hint::black_box(&source));
            std::hint::black_box(&buf);
        });
        let fill = best_ns(calls, || {
            buf.fill_from(std::hint::black_box(&source));
            std::hint::black_box(&buf);
        });
        let memcpy_out = best_ns(calls, || {
            // SAFETY: nothing else maps the region.
            out.copy_from_slice(unsafe { buf.as_slice() });
            std::hint::black_box(&out);
        });
        let copy_to = best_ns(calls, || {
            buf.bytes().copy_to(std::hint::black_box(&mut out));
            std::hint::black_box(&out);
        });
        assert_eq!(out, source);
        println!(
            "{size:>8} {memcpy_in:>11.1} ns {fill:>11.1} ns {:>7.2}x {memcpy_out:>11.1} ns \
             {copy_to:>11.1} ns {:>7.2}x",
            fill / memcpy_in,
            copy_to / memcpy_out
        );
    }
}
