//! An experiment, not adopted: a ring stamped **per cache line** (a stamp word and seven 8-byte
//! entries in each 64-byte line, so a stream of small entries moves packed lines and the
//! consumer still learns of an entry from the entry's own line), against rtrb and subring's
//! indexed and stamped rings: 8-byte entries, one at a time (or in batches of 32 with the
//! argument `batch`), 5,000,000 per measurement, eight turns, consumer on CPU 0 and producer
//! on CPU 1.
//!
//! ```sh
//! cargo run --release -p subring-bench --example spsc_lines [-- batch] [-- backoff N]
//! ```
//!
//! A consumer that finds its ring empty spins once (`spin_loop`) before it looks again, as the
//! bench's does; `backoff N` makes it spin `N` times instead, which shows what bounds the
//! one-at-a-time stream: a consumer that keeps up pulls every line (and rtrb's or the indexed
//! ring's `tail`) across the cores while the producer is still writing it, whatever the ring.
//! What it measured is in docs/performance-history.md, "a ring stamped per cache line".
//!
//! The line ring is the experiment's minimum (one producer thread, one consumer thread, `u64`
//! entries, no validation of what the other side wrote): it is not a subring ring.
#![allow(clippy::disallowed_types)]

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::Arc;
use std::time::Instant;

use subring_planes::data::{Indexed, Ring, Stamped};

/// Entries per line: the line's first word is its stamp.
const E: usize = 7;

/// One line: `stamp` is `line_number << 3 | entries_published` (the line number is the
/// free-running count of lines written, so a stamp left a lap earlier reads as nothing new).
#[repr(C, align(64))]
struct Line {
    stamp: AtomicU64,
    v: [UnsafeCell<u64>; E],
}

/// A word on a line pair of its own.
#[repr(C, align(128))]
struct Pad(AtomicU64);

/// The lines, and the consumer's count of lines released.
struct Shared {
    lines: Box<[Line]>,
    head: Pad, // lines released by the consumer
    mask: u64,
}
// SAFETY: an entry cell is written only by the producer while its line is not yet published
// to the consumer (the stamp's Release/Acquire pair orders the write before the read), and read
// only by the consumer until it releases the line through `head` (Release/Acquire again).
unsafe impl Sync for Shared {}
// SAFETY: as for `Sync`; the cells hold plain integers.
unsafe impl Send for Shared {}

/// The producing side: the line it writes (free-running) and the next entry in it.
struct LineProducer {
    s: Arc<Shared>,
    line: u64,
    pos: usize,
    cached_head: u64,
}
/// The consuming side: the line it reads, the next entry in it, and how many it has seen
/// published there.
struct LineConsumer {
    s: Arc<Shared>,
    line: u64,
    pos: usize,
    seen: usize,
}

/// A ring of `lines` lines (a power of two).
fn pair(lines: usize) -> (LineProducer, LineConsumer) {
    let v: Vec<Line> = (0..lines)
        .map(|_| Line {
            stamp: AtomicU64::new(u64::MAX),
            v: std::array::from_fn(|_| UnsafeCell::new(0)),
        })
        .collect();
    let s = Arc::new(Shared {
        lines: v.into_boxed_slice(),
        head: Pad(AtomicU64::new(0)),
        mask: lines as u64 - 1,
    });
    (
        LineProducer {
            s: s.clone(),
            line: 0,
            pos: 0,
            cached_head: 0,
        },
        LineConsumer {
            s,
            line: 0,
            pos: 0,
            seen: 0,
        },
    )
}

impl LineProducer {
    #[inline(always)]
    fn room(&mut self) -> bool {
        let cap = self.s.mask + 1;
        if self.line - self.cached_head < cap {
            return true;
        }
        self.cached_head = self.s.head.0.load(Acquire);
        self.line - self.cached_head < cap
    }
    #[inline(always)]
    fn push(&mut self, x: u64) -> bool {
        if self.pos == 0 && !self.room() {
            return false;
        }
        let l = &self.s.lines[(self.line & self.s.mask) as usize];
        // SAFETY: the line is free (`room`) and its entry `pos` not yet published.
        unsafe { l.v[self.pos].get().write_volatile(x) };
        self.pos += 1;
        l.stamp.store(self.line << 3 | self.pos as u64, Release);
        if self.pos == E {
            self.pos = 0;
            self.line += 1;
        }
        true
    }
    fn push_slice(&mut self, xs: &[u64]) -> usize {
        let mut done = 0;
        while done < xs.len() {
            if self.pos == 0 && !self.room() {
                break;
            }
            let l = &self.s.lines[(self.line & self.s.mask) as usize];
            let n = (E - self.pos).min(xs.len() - done);
            for k in 0..n {
                // SAFETY: as in `push`.
                unsafe { l.v[self.pos + k].get().write_volatile(xs[done + k]) };
            }
            self.pos += n;
            done += n;
            l.stamp.store(self.line << 3 | self.pos as u64, Release);
            if self.pos == E {
                self.pos = 0;
                self.line += 1;
            }
        }
        done
    }
}

impl LineConsumer {
    #[inline(always)]
    fn look(&mut self) -> bool {
        let l = &self.s.lines[(self.line & self.s.mask) as usize];
        let st = l.stamp.load(Acquire);
        if st >> 3 == self.line {
            self.seen = (st & 7) as usize;
        }
        self.pos < self.seen
    }
    #[inline(always)]
    fn pop(&mut self) -> Option<u64> {
        if self.pos >= self.seen && !self.look() {
            return None;
        }
        let l = &self.s.lines[(self.line & self.s.mask) as usize];
        // SAFETY: entry `pos` is published (`seen`, from an Acquire load of the stamp) and its
        // line not yet released.
        let x = unsafe { l.v[self.pos].get().read_volatile() };
        self.pos += 1;
        if self.pos == E {
            self.pos = 0;
            self.seen = 0;
            self.line += 1;
            self.s.head.0.store(self.line, Release);
        }
        Some(x)
    }
    fn pop_slice(&mut self, out: &mut [u64]) -> usize {
        let mut done = 0;
        while done < out.len() {
            if self.pos >= self.seen && !self.look() {
                break;
            }
            let l = &self.s.lines[(self.line & self.s.mask) as usize];
            let n = (self.seen - self.pos).min(out.len() - done);
            for k in 0..n {
                // SAFETY: as in `pop`.
                out[done + k] = unsafe { l.v[self.pos + k].get().read_volatile() };
            }
            self.pos += n;
            done += n;
            if self.pos == E {
                self.pos = 0;
                self.seen = 0;
                self.line += 1;
                self.s.head.0.store(self.line, Release);
            }
        }
        done
    }
}

/// Entries per second (millions) from the first pop until `n` entries arrived in order.
#[allow(clippy::too_many_arguments)]
fn run<Pr: Send + 'static, Co>(
    n: u64,
    backoff: usize,
    (mut p, mut c): (Pr, Co),
    batched: bool,
    push: fn(&mut Pr, u64) -> bool,
    push_s: fn(&mut Pr, &[u64]) -> usize,
    pop: fn(&mut Co) -> Option<u64>,
    pop_s: fn(&mut Co, &mut [u64]) -> usize,
) -> f64 {
    subring_bench::peers::pin(0).unwrap();
    let t = std::thread::spawn(move || {
        subring_bench::peers::pin(1).unwrap();
        let mut i = 0u64;
        let mut b = [0u64; 32];
        while i < n {
            if batched {
                let k = (n - i).min(32) as usize;
                for (j, e) in b[..k].iter_mut().enumerate() {
                    *e = i + j as u64;
                }
                let m = push_s(&mut p, &b[..k]);
                if m == 0 {
                    std::hint::spin_loop();
                }
                i += m as u64;
            } else if push(&mut p, i) {
                i += 1;
            } else {
                std::hint::spin_loop();
            }
        }
    });
    let start = Instant::now();
    let mut next = 0;
    let mut out = [0u64; 32];
    while next < n {
        let got = if batched {
            pop_s(&mut c, &mut out)
        } else {
            match pop(&mut c) {
                Some(v) => {
                    out[0] = v;
                    1
                }
                None => 0,
            }
        };
        if got == 0 {
            for _ in 0..backoff {
                std::hint::spin_loop();
            }
        }
        for &v in &out[..got] {
            assert_eq!(v, next);
            next += 1;
        }
    }
    let r = n as f64 / start.elapsed().as_secs_f64() / 1e6;
    t.join().unwrap();
    r
}

fn line(n: u64, k: usize, b: bool) -> f64 {
    run(
        n,
        k,
        pair(4096 / 8),
        b,
        LineProducer::push,
        LineProducer::push_slice,
        LineConsumer::pop,
        LineConsumer::pop_slice,
    )
}
fn rtrb_(n: u64, k: usize, b: bool) -> f64 {
    run(
        n,
        k,
        rtrb::RingBuffer::<u64>::new(4096),
        b,
        |p, x| p.push(x).is_ok(),
        |p, xs| {
            let n = xs.len().min(p.slots());
            match p.write_chunk_uninit(n) {
                Ok(c) => c.fill_from_iter(xs.iter().copied()),
                Err(_) => 0,
            }
        },
        |c| c.pop().ok(),
        |c, out| {
            let n = out.len().min(c.slots());
            let Ok(ch) = c.read_chunk(n) else { return 0 };
            let (a, b) = ch.as_slices();
            out[..a.len()].copy_from_slice(a);
            out[a.len()..a.len() + b.len()].copy_from_slice(b);
            ch.commit_all();
            n
        },
    )
}
fn idx(n: u64, k: usize, b: bool) -> f64 {
    run(
        n,
        k,
        Ring::<u64, Indexed>::with_capacity(4096).unwrap(),
        b,
        |p, x| p.push(x).is_ok(),
        |p, xs| p.push_slice(xs).unwrap_or(0),
        |c| c.pop().ok().flatten(),
        |c, out| c.pop_slice(out).unwrap_or(0),
    )
}
fn stm(n: u64, k: usize, b: bool) -> f64 {
    run(
        n,
        k,
        Ring::<u64, Stamped>::with_capacity(4096).unwrap(),
        b,
        |p, x| p.push(x).is_ok(),
        |p, xs| p.push_slice(xs).unwrap_or(0),
        |c| c.pop().ok().flatten(),
        |c, out| c.pop_slice(out).unwrap_or(0),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let batched = args.iter().any(|a| a == "batch");
    let k = match args.iter().position(|a| a == "backoff") {
        Some(i) => match args.get(i + 1).and_then(|v| v.parse().ok()) {
            Some(k) => k,
            None => {
                eprintln!("spsc_lines: backoff takes a number of spins");
                std::process::exit(2);
            }
        },
        None => 1,
    };
    let n = 5_000_000;
    for _ in 0..8 {
        let (l, r) = (line(n, k, batched), rtrb_(n, k, batched));
        let (i, s) = (idx(n, k, batched), stm(n, k, batched));
        println!(
            "M/s: line {l:6.1}  rtrb {r:6.1}  indexed {i:6.1}  stamped {s:6.1}  \
             line/rtrb {:.2}  indexed/rtrb {:.2}",
            l / r,
            i / r
        );
    }
}
