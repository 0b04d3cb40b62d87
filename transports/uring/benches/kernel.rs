//! The kernel transport against the raw `io-uring` crate and a plain `pread` loop, on the same
//! work, interleaved inside each repetition so that ratios are fair on a noisy machine.
//!
//! ```text
//! cargo bench -p subring-uring --bench kernel [-- --quick] [--reps N] [--file-mib N]
//! ```
//!
//! Work: NOP at batch 1 and 32; 4 KiB random reads of a page-cached file at queue depth 1 and
//! 32. The QD 32 reads also run through tokio-uring and compio (32 tasks, one read in flight
//! each), the completion-based Rust runtimes users would otherwise pick. Each repetition is labelled near/far by a cache-line ping-pong probe run before and after
//! it (the VM's vCPU placement changes every few seconds to minutes).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subring_planes::sync::{AtomicU64, Ordering};

use io_uring::{opcode, types, IoUring};
use subring_planes::queue::{Completer, Submitter};
use subring_uring::{Op, Output, Submission, Target, Uring, WaitMode};

const BLOCK: usize = 4096;

struct Config {
    reps: usize,
    nop_ops: u64,
    read_ops: u64,
    file_len: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| {
                v.parse::<u64>()
                    .unwrap_or_else(|_| panic!("{name} takes a number"))
            })
    };
    let cfg = Config {
        reps: value("--reps").unwrap_or(if quick { 3 } else { 7 }) as usize,
        nop_ops: if quick { 200_000 } else { 1_000_000 },
        read_ops: if quick { 50_000 } else { 200_000 },
        file_len: value("--file-mib").unwrap_or(if quick { 64 } else { 256 }) << 20,
    };
    let path = std::env::temp_dir().join(format!("subring-bench-{}", std::process::id()));
    make_file(&path, cfg.file_len);
    let file = File::open(&path).unwrap();

    println!(
        "kernel transport benchmark: {} repetitions, {} MiB file, {} CPUs",
        cfg.reps,
        cfg.file_len >> 20,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let works: [(&str, Work); 5] = [
        ("nop batch 1", Work::Nop(1)),
        ("nop batch 32", Work::Nop(32)),
        ("4K read QD 1", Work::Read(1)),
        ("4K read QD 32", Work::Read(32)),
        ("4K QD32 SQPOLL", Work::ReadSqpoll(32)),
    ];
    // results[work][rep] = (raw ops/s, subring ops/s, pread ops/s, subring enters/op)
    let mut results = vec![Vec::new(); works.len()];
    let mut labels = Vec::new();
    // (subring, tokio-uring, compio) ops/s for QD 32 reads, per repetition.
    let mut peers: Vec<(f64, f64, f64)> = Vec::new();
    for rep in 0..cfg.reps {
        let before = probe();
        for (w, (_, work)) in works.iter().enumerate() {
            if let Work::Read(_) | Work::ReadSqpoll(_) = work {
                warm(&file, cfg.file_len);
            }
            // Alternate the order each repetition.
            let (raw, sub) = if rep % 2 == 0 {
                let raw = run_raw(work, &file, &cfg);
                (raw, run_subring(work, &file, &cfg))
            } else {
                let sub = run_subring(work, &file, &cfg);
                (run_raw(work, &file, &cfg), sub)
            };
            let pread = match work {
                Work::Read(_) => run_pread(&file, &cfg),
                Work::Nop(_) | Work::ReadSqpoll(_) => f64::NAN,
            };
            results[w].push((raw, sub.0, pread, sub.1, raw_enters(work)));
            if let Work::Read(32) = work {
                let (tokio, compio) = if rep % 2 == 0 {
                    let t = run_tokio_uring(&path, &cfg, 32);
                    (t, run_compio(&path, &cfg, 32))
                } else {
                    let c = run_compio(&path, &cfg, 32);
                    (run_tokio_uring(&path, &cfg, 32), c)
                };
                peers.push((sub.0, tokio, compio));
            }
        }
        let after = probe();
        labels.push(label(before, after));
        eprintln!(
            "rep {}/{} done ({}: probe {before:.0} / {after:.0} ns)",
            rep + 1,
            cfg.reps,
            labels[rep]
        );
    }
    println!();
    println!(
        "{:<15} {:>12} {:>12} {:>12} {:>22} {:>16} {:>14}",
        "work",
        "raw io-uring",
        "subring",
        "pread",
        "subring/raw med [min,max]",
        "subring/pread",
        "enters/op s|r"
    );
    for (w, (name, _)) in works.iter().enumerate() {
        let r = &results[w];
        let raw = median(r.iter().map(|x| x.0).collect());
        let sub = median(r.iter().map(|x| x.1).collect());
        let pread = median(r.iter().map(|x| x.2).collect());
        let ratios: Vec<f64> = r.iter().map(|x| x.1 / x.0).collect();
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
        let vs_pread = if pread.is_nan() {
            "-".to_string()
        } else {
            format!("{:.2}", median(r.iter().map(|x| x.1 / x.2).collect()))
        };
        println!(
            "{:<15} {:>12} {:>12} {:>12} {:>10.3} [{:.3},{:.3}] {:>16} {:>7.3}|{:.3}",
            name,
            rate(raw),
            rate(sub),
            if pread.is_nan() {
                "-".into()
            } else {
                rate(pread)
            },
            median(ratios.clone()),
            lo,
            hi,
            vs_pread,
            median(r.iter().map(|x| x.3).collect()),
            r[0].4,
        );
    }
    println!();
    println!(
        "{:<15} {:>12} {:>12} {:>12} {:>26} {:>26}",
        "work", "subring", "tokio-uring", "compio", "subring/tokio-uring med", "subring/compio med"
    );
    let range = |v: Vec<f64>| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
        format!("{:.3} [{lo:.3},{hi:.3}]", median(v))
    };
    println!(
        "{:<15} {:>12} {:>12} {:>12} {:>26} {:>26}",
        "4K read QD 32",
        rate(median(peers.iter().map(|p| p.0).collect())),
        rate(median(peers.iter().map(|p| p.1).collect())),
        rate(median(peers.iter().map(|p| p.2).collect())),
        range(peers.iter().map(|p| p.0 / p.1).collect()),
        range(peers.iter().map(|p| p.0 / p.2).collect()),
    );
    let _ = std::fs::remove_file(&path);
    println!(
        "\nrepetition placement (cache-line round trip before/after): {}",
        labels.join(", ")
    );
    println!(
        "ratios are per repetition (subring and its peer measured back to back), median [min,max]."
    );
    println!("enters/op: io_uring_enter calls per operation, subring | raw loop (same strategy).");
}

#[derive(Clone, Copy)]
enum Work {
    Nop(usize),
    Read(usize),
    /// Reads with a kernel thread polling the SQ and the application polling the CQ: no
    /// `io_uring_enter` unless the kernel thread went to sleep.
    ReadSqpoll(usize),
}

/// The SQPOLL thread's idle time before it sleeps.
const SQPOLL_IDLE_MS: u32 = 2000;

fn rate(ops_per_s: f64) -> String {
    if ops_per_s >= 1e6 {
        format!("{:.2} M/s", ops_per_s / 1e6)
    } else {
        format!("{:.0} K/s", ops_per_s / 1e3)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn make_file(path: &std::path::Path, len: u64) {
    let mut f = File::create(path).unwrap();
    let mut block = vec![0u8; 1 << 20];
    let mut x = 0x243f6a8885a308d3u64;
    for _ in 0..len >> 20 {
        for b in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block).unwrap();
    }
}

/// Reads the whole file untimed: the VM evicts idle page cache, and reads should be cached.
fn warm(file: &File, len: u64) {
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        off += file.read_at(&mut buf, off).unwrap() as u64;
    }
}

struct Offsets(u64, u64);
impl Offsets {
    fn new(file_len: u64) -> Self {
        Self::seeded(file_len, 0)
    }
    /// A different (non-zero) stream per seed, for tasks that each draw their own offsets.
    fn seeded(file_len: u64, seed: u64) -> Self {
        let state = (0x9e3779b97f4a7c15 ^ seed.wrapping_mul(0xbf58476d1ce4e5b9)) | 1;
        Offsets(state, file_len / BLOCK as u64)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % self.1) * BLOCK as u64
    }
}

/// The raw loop's io_uring_enter calls per operation: one per batch (nop) or per wait (reads),
/// counted in the loops below.
static RAW_ENTERS: AtomicU64 = AtomicU64::new(0);
static RAW_OPS: AtomicU64 = AtomicU64::new(0);

fn raw_enters(_: &Work) -> f64 {
    let ops = RAW_OPS.swap(0, Ordering::Relaxed);
    RAW_ENTERS.swap(0, Ordering::Relaxed) as f64 / ops.max(1) as f64
}

fn run_raw(work: &Work, file: &File, cfg: &Config) -> f64 {
    let mut ring = match work {
        Work::ReadSqpoll(_) => IoUring::builder()
            .setup_sqpoll(SQPOLL_IDLE_MS)
            .build(256)
            .unwrap(),
        _ => IoUring::new(256).unwrap(),
    };
    let (mut enters, start);
    let ops;
    match *work {
        Work::Nop(batch) => {
            ops = cfg.nop_ops / batch as u64 * batch as u64;
            enters = 0u64;
            start = Instant::now();
            let mut done = 0;
            while done < ops {
                for _ in 0..batch {
                    let e = opcode::Nop::new().build().user_data(1);
                    // SAFETY: a NOP entry points to no memory.
                    unsafe { ring.submission().push(&e).unwrap() };
                }
                ring.submit_and_wait(batch).unwrap();
                enters += 1;
                done += ring.completion().count() as u64;
            }
        }
        Work::Read(depth) | Work::ReadSqpoll(depth) => {
            let sqpoll = matches!(work, Work::ReadSqpoll(_));
            ops = cfg.read_ops;
            let mut bufs = vec![vec![0u8; BLOCK]; depth];
            let mut offsets = Offsets::new(cfg.file_len);
            let fd = types::Fd(file.as_raw_fd());
            enters = 0;
            start = Instant::now();
            let (mut issued, mut done) = (0u64, 0u64);
            let mut push = |ring: &mut IoUring, i: usize, off: u64| {
                let e = opcode::Read::new(fd, bufs[i].as_mut_ptr(), BLOCK as u32)
                    .offset(off)
                    .build()
                    .user_data(i as u64);
                // SAFETY: `bufs[i]` outlives the loop and is not reused until its completion.
                unsafe { ring.submission().push(&e).unwrap() };
            };
            for i in 0..depth.min(ops as usize) {
                push(&mut ring, i, offsets.next());
                issued += 1;
            }
            while done < ops {
                if !sqpoll {
                    ring.submit_and_wait(1).unwrap();
                    enters += 1;
                } else if ring.submission().need_wakeup() {
                    ring.submit().unwrap();
                    enters += 1;
                } else {
                    std::hint::spin_loop();
                }
                let finished: Vec<(usize, i32)> = ring
                    .completion()
                    .map(|c| (c.user_data() as usize, c.result()))
                    .collect();
                for (i, res) in finished {
                    assert_eq!(res, BLOCK as i32, "raw read failed");
                    done += 1;
                    if issued < ops {
                        push(&mut ring, i, offsets.next());
                        issued += 1;
                    }
                }
            }
        }
    }
    let took = start.elapsed();
    RAW_ENTERS.store(enters, Ordering::Relaxed);
    RAW_OPS.store(ops, Ordering::Relaxed);
    ops as f64 / took.as_secs_f64()
}

/// Returns (ops/s, io_uring_enter calls per op).
fn run_subring(work: &Work, file: &File, cfg: &Config) -> (f64, f64) {
    let mut ring = match work {
        Work::ReadSqpoll(_) => Uring::builder()
            .entries(256)
            .sqpoll(SQPOLL_IDLE_MS)
            .wait_mode(WaitMode::Poll)
            .build()
            .unwrap(),
        _ => Uring::builder().entries(256).build().unwrap(),
    };
    let mut out = Vec::with_capacity(64);
    let (start, ops);
    match *work {
        Work::Nop(batch) => {
            ops = cfg.nop_ops / batch as u64 * batch as u64;
            start = Instant::now();
            let mut done = 0;
            while done < ops {
                for i in 0..batch {
                    ring.push(Submission::new(i as u64, Op::Nop)).unwrap();
                }
                ring.wait_for(batch, None).unwrap();
                out.clear();
                done += ring.reap_into(&mut out, batch).unwrap() as u64;
            }
        }
        Work::Read(depth) | Work::ReadSqpoll(depth) => {
            ops = cfg.read_ops;
            let fd = Target::Fd(file.as_raw_fd());
            let mut offsets = Offsets::new(cfg.file_len);
            start = Instant::now();
            let (mut issued, mut done) = (0u64, 0u64);
            for i in 0..depth.min(ops as usize) {
                let op = Op::Read {
                    fd,
                    buf: vec![0; BLOCK],
                    offset: offsets.next(),
                };
                ring.push(Submission::new(i as u64, op)).unwrap();
                issued += 1;
            }
            while done < ops {
                ring.wait_for(1, None).unwrap();
                out.clear();
                ring.reap_into(&mut out, depth).unwrap();
                for c in out.drain(..) {
                    assert_eq!(c.result.unwrap() as usize, BLOCK, "subring read failed");
                    done += 1;
                    if issued < ops {
                        let Output::Buf(buf) = c.output else {
                            panic!("read returns its buffer")
                        };
                        let op = Op::Read {
                            fd,
                            buf,
                            offset: offsets.next(),
                        };
                        ring.push(Submission::new(c.token, op)).unwrap();
                        issued += 1;
                    }
                }
            }
        }
    }
    let took = start.elapsed();
    (
        ops as f64 / took.as_secs_f64(),
        ring.stats().enters as f64 / ops as f64,
    )
}

/// QD `depth` 4 KiB random reads through tokio-uring: `depth` tasks, one read in flight each.
fn run_tokio_uring(path: &std::path::Path, cfg: &Config, depth: usize) -> f64 {
    let std_file = File::open(path).unwrap();
    let (ops, file_len) = (cfg.read_ops / depth as u64, cfg.file_len);
    tokio_uring::start(async move {
        let file = std::rc::Rc::new(tokio_uring::fs::File::from_std(std_file));
        let start = Instant::now();
        let tasks: Vec<_> = (0..depth)
            .map(|t| {
                let file = file.clone();
                tokio_uring::spawn(async move {
                    let mut offsets = Offsets::seeded(file_len, t as u64);
                    let mut buf = vec![0u8; BLOCK];
                    for _ in 0..ops {
                        let (res, b) = file.read_at(buf, offsets.next()).await;
                        assert_eq!(res.unwrap(), BLOCK, "tokio-uring read failed");
                        buf = b;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        (ops * depth as u64) as f64 / start.elapsed().as_secs_f64()
    })
}

/// The same work through compio.
fn run_compio(path: &std::path::Path, cfg: &Config, depth: usize) -> f64 {
    use compio::io::AsyncReadAt;
    let (ops, file_len) = (cfg.read_ops / depth as u64, cfg.file_len);
    let runtime = compio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let file = compio::fs::File::open(path).await.unwrap();
        let start = Instant::now();
        let tasks: Vec<_> = (0..depth)
            .map(|t| {
                let file = file.clone();
                compio::runtime::spawn(async move {
                    let mut offsets = Offsets::seeded(file_len, t as u64);
                    let mut buf = vec![0u8; BLOCK];
                    for _ in 0..ops {
                        let compio::BufResult(res, b) = file.read_at(buf, offsets.next()).await;
                        assert_eq!(res.unwrap(), BLOCK, "compio read failed");
                        buf = b;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        (ops * depth as u64) as f64 / start.elapsed().as_secs_f64()
    })
}

fn run_pread(file: &File, cfg: &Config) -> f64 {
    let mut buf = vec![0u8; BLOCK];
    let mut offsets = Offsets::new(cfg.file_len);
    let start = Instant::now();
    for _ in 0..cfg.read_ops {
        assert_eq!(file.read_at(&mut buf, offsets.next()).unwrap(), BLOCK);
    }
    cfg.read_ops as f64 / start.elapsed().as_secs_f64()
}

/// Mean cache-line round trip between two threads, in ns: which vCPU placement we are in.
/// NaN if the other thread could not be scheduled (both on one CPU).
fn probe() -> f64 {
    const ROUNDS: u64 = 20_000;
    /// Spins between clock checks, so that the clock does not dominate the round trip.
    const CHECK_EVERY: u32 = 1024;
    let line = Arc::new(AtomicU64::new(0));
    let other = line.clone();
    let wait_for = |line: &AtomicU64, value: u64, deadline: Instant| {
        let mut spins = 0u32;
        while line.load(Ordering::Acquire) != value {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins % CHECK_EVERY == 0 && Instant::now() > deadline {
                return false;
            }
        }
        true
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let t = std::thread::spawn(move || {
        for i in 0..ROUNDS {
            if !wait_for(&other, 2 * i + 1, deadline) {
                return;
            }
            other.store(2 * i + 2, Ordering::Release);
        }
    });
    let start = Instant::now();
    for i in 0..ROUNDS {
        line.store(2 * i + 1, Ordering::Release);
        if !wait_for(&line, 2 * i + 2, deadline) {
            let _ = t.join();
            return f64::NAN;
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / ROUNDS as f64;
    t.join().unwrap();
    ns
}

fn label(before: f64, after: f64) -> &'static str {
    let near = |ns: f64| ns < 250.0;
    match (near(before), near(after)) {
        (true, true) => "near",
        (false, false) => "far",
        _ => "mixed",
    }
}
