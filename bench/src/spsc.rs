//! SPSC ring throughput between two threads on two cores: subring's ring
//! ([`subring_planes::data::Ring`], as `Ring::with_capacity` makes it: indexed) against rtrb
//! and crossbeam's `ArrayQueue`, one entry at a time and in batches of 32, with 8- and 64-byte
//! entries. Each ring holds 4096 entries. The consumer checks that it received every value, in
//! order. A stamped ring (the layout the queue pair uses for its round trips) has its own row,
//! to show what the stamps cost a stream.
//!
//! `ArrayQueue` has no batch operation: in the batched rows it pushes and pops entry by entry
//! (which is what a user of it would do).

use std::time::{Duration, Instant};

use bytemuck::Pod;
use crossbeam_queue::ArrayQueue;
use subring_planes::data::{Consumer, Indexed, Producer, Publication, Ring, Stamped};

use crate::peers::{self, AffinityGuard};
use crate::report::{Report, Section, Unit};
use crate::{Context, Progress};

const CAPACITY: usize = 4096;
const BATCH: usize = 32;
/// How long a side may make no progress before the measurement fails.
const STALL: Duration = Duration::from_secs(5);

/// How much to measure.
#[derive(Clone, Debug)]
pub struct SpscConfig {
    /// Repetitions.
    pub reps: usize,
    /// Entries per measurement.
    pub entries: u64,
}

impl SpscConfig {
    /// The full run (`quick`: a short one).
    pub fn new(quick: bool) -> Self {
        SpscConfig {
            reps: if quick { 3 } else { 7 },
            entries: if quick { 5_000_000 } else { 20_000_000 },
        }
    }
}

/// An entry: `N` words, the first of which carries the sequence number.
pub trait Entry: Pod + Send {
    /// Entry number `i`.
    fn make(i: u64) -> Self;
    /// Its sequence number.
    fn seq(&self) -> u64;
}

macro_rules! entry {
    ($($n:literal)*) => {$(
        impl Entry for [u64; $n] {
            fn make(i: u64) -> Self {
                [i; $n]
            }
            fn seq(&self) -> u64 {
                self[0]
            }
        }
    )*};
}
entry!(1 8);

/// One single-producer/single-consumer queue under test.
trait Spsc<T: Entry> {
    type P: Send + 'static;
    type C;
    fn pair() -> Result<(Self::P, Self::C), String>;
    fn push(p: &mut Self::P, v: T) -> bool;
    fn pop(c: &mut Self::C) -> Option<T>;
    /// Pushes a prefix of `vs`; returns its length.
    fn push_batch(p: &mut Self::P, vs: &[T]) -> usize;
    /// Pops into a prefix of `out`; returns its length.
    fn pop_batch(c: &mut Self::C, out: &mut [T]) -> usize;
}

struct Subring<P>(std::marker::PhantomData<P>);
impl<T: Entry, P: Publication> Spsc<T> for Subring<P> {
    type P = Producer<T, P>;
    type C = Consumer<T, P>;
    fn pair() -> Result<(Self::P, Self::C), String> {
        Ring::<T, P>::with_capacity(CAPACITY as u32).ctx("subring ring")
    }
    fn push(p: &mut Self::P, v: T) -> bool {
        p.push(v).is_ok()
    }
    fn pop(c: &mut Self::C) -> Option<T> {
        // In-process, both indices are this process's own: they cannot be corrupt.
        c.pop().ok().flatten()
    }
    fn push_batch(p: &mut Self::P, vs: &[T]) -> usize {
        p.push_slice(vs).unwrap_or(0)
    }
    fn pop_batch(c: &mut Self::C, out: &mut [T]) -> usize {
        c.pop_slice(out).unwrap_or(0)
    }
}

struct Rtrb;
impl<T: Entry> Spsc<T> for Rtrb {
    type P = rtrb::Producer<T>;
    type C = rtrb::Consumer<T>;
    fn pair() -> Result<(Self::P, Self::C), String> {
        Ok(rtrb::RingBuffer::new(CAPACITY))
    }
    fn push(p: &mut Self::P, v: T) -> bool {
        p.push(v).is_ok()
    }
    fn pop(c: &mut Self::C) -> Option<T> {
        c.pop().ok()
    }
    fn push_batch(p: &mut Self::P, vs: &[T]) -> usize {
        let n = vs.len().min(p.slots());
        match p.write_chunk_uninit(n) {
            Ok(chunk) => chunk.fill_from_iter(vs.iter().copied()),
            Err(_) => 0,
        }
    }
    fn pop_batch(c: &mut Self::C, out: &mut [T]) -> usize {
        let n = out.len().min(c.slots());
        let Ok(chunk) = c.read_chunk(n) else { return 0 };
        let (a, b) = chunk.as_slices();
        out[..a.len()].copy_from_slice(a);
        out[a.len()..a.len() + b.len()].copy_from_slice(b);
        chunk.commit_all();
        n
    }
}

struct Crossbeam;
impl<T: Entry> Spsc<T> for Crossbeam {
    type P = std::sync::Arc<ArrayQueue<T>>;
    type C = std::sync::Arc<ArrayQueue<T>>;
    fn pair() -> Result<(Self::P, Self::C), String> {
        let q = std::sync::Arc::new(ArrayQueue::new(CAPACITY));
        Ok((q.clone(), q))
    }
    fn push(p: &mut Self::P, v: T) -> bool {
        p.push(v).is_ok()
    }
    fn pop(c: &mut Self::C) -> Option<T> {
        c.pop()
    }
    fn push_batch(p: &mut Self::P, vs: &[T]) -> usize {
        vs.iter().take_while(|v| p.push(**v).is_ok()).count()
    }
    fn pop_batch(c: &mut Self::C, out: &mut [T]) -> usize {
        let mut n = 0;
        while n < out.len() {
            match c.pop() {
                Some(v) => {
                    out[n] = v;
                    n += 1;
                }
                None => break,
            }
        }
        n
    }
}

/// Spins, checking the clock every 1024 calls, until `f` makes progress; fails after [`STALL`].
struct Stall {
    spins: u32,
    since: Option<Instant>,
}

impl Stall {
    fn new() -> Self {
        Stall {
            spins: 0,
            since: None,
        }
    }
    fn progress(&mut self) {
        self.spins = 0;
        self.since = None;
    }
    fn idle(&mut self) -> bool {
        std::hint::spin_loop();
        self.spins = self.spins.wrapping_add(1);
        if self.spins % 1024 != 0 {
            return true;
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        since.elapsed() < STALL
    }
}

/// Entries per second from the first push until the consumer has taken every entry.
fn measure<T: Entry, Q: Spsc<T>>(entries: u64, batched: bool) -> Result<f64, String> {
    let (mut p, mut c) = Q::pair()?;
    let _pin = AffinityGuard::pin(0)?;
    let producer = std::thread::Builder::new()
        .name("spsc-producer".into())
        .spawn(move || -> Result<(), String> {
            peers::pin(1)?;
            let mut stall = Stall::new();
            let mut i = 0u64;
            let mut batch = [T::zeroed(); BATCH];
            while i < entries {
                let pushed = if batched {
                    let n = (entries - i).min(BATCH as u64) as usize;
                    for (k, e) in batch[..n].iter_mut().enumerate() {
                        *e = T::make(i + k as u64);
                    }
                    Q::push_batch(&mut p, &batch[..n]) as u64
                } else {
                    u64::from(Q::push(&mut p, T::make(i)))
                };
                if pushed > 0 {
                    i += pushed;
                    stall.progress();
                } else if !stall.idle() {
                    return Err(format!("producer stalled at entry {i}"));
                }
            }
            Ok(())
        })
        .ctx("spawning the producer")?;
    let start = Instant::now();
    let mut stall = Stall::new();
    let mut next = 0u64;
    let mut out = vec![T::zeroed(); BATCH];
    let result = (|| {
        while next < entries {
            let got: &[T] = if batched {
                let n = Q::pop_batch(&mut c, &mut out);
                &out[..n]
            } else {
                match Q::pop(&mut c) {
                    Some(v) => {
                        out[0] = v;
                        &out[..1]
                    }
                    None => &[],
                }
            };
            if got.is_empty() {
                if !stall.idle() {
                    return Err(format!("consumer stalled at entry {next}"));
                }
                continue;
            }
            stall.progress();
            for e in got {
                if e.seq() != next {
                    return Err(format!("entry {} arrived where {next} was due", e.seq()));
                }
                next += 1;
            }
        }
        Ok(entries as f64 / start.elapsed().as_secs_f64())
    })();
    let produced = producer
        .join()
        .map_err(|_| "the producer panicked".to_string())?;
    produced?;
    result
}

fn section<T: Entry>(
    name: &str,
    cfg: &SpscConfig,
    batched: bool,
    report: &mut Report,
    progress: &mut dyn Progress,
) -> Result<(), String> {
    let mut s = Section::new(name, cfg.reps);
    type Run = fn(u64, bool) -> Result<f64, String>;
    let runs: [(&str, Run); 4] = [
        ("subring ring", measure::<T, Subring<Indexed>>),
        ("subring ring, stamped", measure::<T, Subring<Stamped>>),
        ("rtrb", measure::<T, Rtrb>),
        ("crossbeam ArrayQueue", measure::<T, Crossbeam>),
    ];
    for rep in 0..cfg.reps {
        let before = peers::probe();
        // Rotate the order each repetition.
        for k in 0..runs.len() {
            let (row, run) = runs[(k + rep) % runs.len()];
            progress.step(row);
            let rate = run(cfg.entries, batched).map_err(|e| format!("{name}, {row}: {e}"))?;
            s.rate(rep, row, Unit::OpsPerSec, rate);
        }
        s.label(rep, before, peers::probe());
    }
    // Rows in a fixed order whatever ran first.
    s.order(&runs.map(|r| r.0));
    s.compare("rtrb", "subring ring", Some(">= 1.0"));
    s.compare("crossbeam ArrayQueue", "subring ring", None);
    s.compare("subring ring, stamped", "subring ring", None);
    s.finish(report);
    Ok(())
}

/// One measurement each of the 8-byte, one-at-a-time stream through subring's indexed ring,
/// its stamped ring and rtrb, in that order (entries per second): what
/// `bench/examples/spsc_single.rs` alternates to compare the three within one placement.
pub fn single_entry_rates(entries: u64) -> Result<[(&'static str, f64); 3], String> {
    Ok([
        (
            "indexed",
            measure::<[u64; 1], Subring<Indexed>>(entries, false)?,
        ),
        (
            "stamped",
            measure::<[u64; 1], Subring<Stamped>>(entries, false)?,
        ),
        ("rtrb", measure::<[u64; 1], Rtrb>(entries, false)?),
    ])
}

/// Runs the four SPSC sections into `report`.
pub fn run(
    cfg: &SpscConfig,
    report: &mut Report,
    progress: &mut dyn Progress,
) -> Result<(), String> {
    progress.begin("spsc", 4 * 4 * cfg.reps as u64);
    section::<[u64; 1]>(
        "spsc ring, 8-byte entries, one at a time",
        cfg,
        false,
        report,
        progress,
    )?;
    section::<[u64; 1]>(
        "spsc ring, 8-byte entries, batches of 32",
        cfg,
        true,
        report,
        progress,
    )?;
    section::<[u64; 8]>(
        "spsc ring, 64-byte entries, one at a time",
        cfg,
        false,
        report,
        progress,
    )?;
    section::<[u64; 8]>(
        "spsc ring, 64-byte entries, batches of 32",
        cfg,
        true,
        report,
        progress,
    )?;
    Ok(())
}
