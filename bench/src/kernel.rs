//! The kernel sections: the kernel transport against the raw `io-uring` crate and a plain
//! `pread` loop on the same work, interleaved inside each repetition (the order alternates).
//!
//! Work: NOP at batch 1 and 32; 4 KiB random reads of a page-cached file at queue depth 1 and
//! 32, and at 32 with SQPOLL. With the `runtimes` feature the QD 32 reads also run through
//! tokio-uring and compio (32 tasks, one read in flight each), the completion-based Rust
//! runtimes users would otherwise pick. The file is re-read untimed before each read
//! measurement (this VM evicts idle page cache).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
use subring_planes::queue::{Completer, Submitter};
use subring_uring::{Op, Output, Submission, Target, Uring, WaitMode};

use crate::report::{Report, Section, Unit};
use crate::{peers, Context, Progress};

const BLOCK: usize = 4096;

/// How much to measure.
#[derive(Clone, Debug)]
pub struct KernelConfig {
    /// Repetitions.
    pub reps: usize,
    /// NOPs per measurement.
    pub nop_ops: u64,
    /// Reads per measurement.
    pub read_ops: u64,
    /// Size of the file read.
    pub file_len: u64,
    /// Where the file goes.
    pub dir: PathBuf,
}

impl KernelConfig {
    /// The full run (`quick`: a short one).
    pub fn new(quick: bool) -> Self {
        KernelConfig {
            reps: if quick { 3 } else { 7 },
            nop_ops: if quick { 200_000 } else { 1_000_000 },
            read_ops: if quick { 50_000 } else { 200_000 },
            file_len: if quick { 64 << 20 } else { 256 << 20 },
            dir: std::env::temp_dir(),
        }
    }
}

/// Removes the file when dropped.
pub(crate) struct TempFile(pub(crate) PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the kernel sections into `report`.
pub fn run(
    cfg: &KernelConfig,
    report: &mut Report,
    progress: &mut dyn Progress,
) -> Result<(), String> {
    let works: [(&str, Work); 5] = [
        ("kernel nop, batch 1", Work::Nop(1)),
        ("kernel nop, batch 32", Work::Nop(32)),
        ("kernel 4K random read, QD 1", Work::Read(1)),
        ("kernel 4K random read, QD 32", Work::Read(32)),
        ("kernel 4K random read, QD 32, SQPOLL", Work::ReadSqpoll(32)),
    ];
    let runtimes = cfg!(feature = "runtimes");
    progress.begin("kernel", (cfg.reps * works.len()) as u64 + 1);
    // Fails here, with one clear line, when io_uring is not available.
    Uring::builder()
        .entries(8)
        .build()
        .ctx("io_uring is not available (io_uring_setup)")?;
    progress.step("writing the file");
    let path = cfg
        .dir
        .join(format!("subring-bench-{}", std::process::id()));
    make_file(&path, cfg.file_len).ctx(&format!("writing {}", path.display()))?;
    let _cleanup = TempFile(path.clone());
    let file = File::open(&path).ctx(&format!("opening {}", path.display()))?;
    let mut sections: Vec<Section> = works
        .iter()
        .map(|(n, _)| Section::new(n, cfg.reps))
        .collect();
    for rep in 0..cfg.reps {
        let before = peers::probe();
        for ((name, work), section) in works.iter().zip(sections.iter_mut()) {
            progress.step(name);
            let is_read = !matches!(work, Work::Nop(_));
            if is_read {
                warm(&file, cfg.file_len).ctx("reading the file")?;
            }
            let (raw, sub) = if rep % 2 == 0 {
                let raw = run_raw(work, &file, cfg)?;
                settle(work);
                (raw, run_subring(work, &file, cfg)?)
            } else {
                let sub = run_subring(work, &file, cfg)?;
                settle(work);
                (run_raw(work, &file, cfg)?, sub)
            };
            settle(work);
            section.rate(rep, "subring", Unit::OpsPerSec, sub.0);
            section.syscalls("subring", sub.1);
            section.rate(rep, "raw io-uring", Unit::OpsPerSec, raw.0);
            section.syscalls("raw io-uring", raw.1);
            if !matches!(work, Work::ReadSqpoll(_)) {
                let inline = run_raw_with(work, &file, cfg, InlineEnter)?;
                section.rate(rep, RAW_INLINE, Unit::OpsPerSec, inline.0);
                section.syscalls(RAW_INLINE, inline.1);
            }
            if matches!(work, Work::Nop(32) | Work::Read(32)) {
                // The setup modes that keep completion work off the submitter's back: one
                // repetition's figure each, beside the default ring's.
                for (row, setup) in [(COOP, Setup::Coop), (DEFER, Setup::Defer)] {
                    let m = run_subring_in(work, &file, cfg, setup)?;
                    section.rate(rep, row, Unit::OpsPerSec, m.0);
                    section.syscalls(row, m.1);
                }
            }
            if let Work::Read(_) = work {
                section.rate(rep, "pread", Unit::OpsPerSec, run_pread(&file, cfg)?);
                section.syscalls("pread", 1.0);
            }
            if runtimes {
                if let Work::Read(32) = work {
                    let (tokio, compio) = runtime_peers(&path, cfg, rep)?;
                    section.rate(rep, "tokio-uring", Unit::OpsPerSec, tokio);
                    section.rate(rep, "compio", Unit::OpsPerSec, compio);
                }
            }
        }
        let after = peers::probe();
        for s in &mut sections {
            s.label(rep, before, after);
        }
    }
    for s in &mut sections {
        s.compare("raw io-uring", "subring", Some(">= 0.95"));
        s.compare(RAW_INLINE, "subring", None);
        s.compare("pread", "subring", None);
        s.compare("tokio-uring", "subring", Some("> 1"));
        s.compare("compio", "subring", Some("> 1"));
        s.compare(COOP, "subring", None);
        s.compare(DEFER, "subring", None);
    }
    for s in sections {
        s.finish(report);
    }
    Ok(())
}

#[cfg(feature = "runtimes")]
fn runtime_peers(path: &Path, cfg: &KernelConfig, rep: usize) -> Result<(f64, f64), String> {
    Ok(if rep % 2 == 0 {
        let t = run_tokio_uring(path, cfg, 32)?;
        (t, run_compio(path, cfg, 32)?)
    } else {
        let c = run_compio(path, cfg, 32)?;
        (run_tokio_uring(path, cfg, 32)?, c)
    })
}

#[cfg(not(feature = "runtimes"))]
fn runtime_peers(_: &Path, _: &KernelConfig, _: usize) -> Result<(f64, f64), String> {
    Err("built without the `runtimes` feature".into())
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

/// After an SQPOLL run, waits (at most 2 s) until the ring's kernel polling thread has exited.
/// It outlives the dropped ring for a while and, on two vCPUs, takes CPU time from whatever
/// runs next: without this wait the second of the two SQPOLL runs in a repetition was about
/// 20% slower, whichever it was.
fn settle(work: &Work) {
    if !matches!(work, Work::ReadSqpoll(_)) {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while sqpoll_threads() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// This process's io_uring SQPOLL threads (`iou-sqp-*` in `/proc/self/task`).
fn sqpoll_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with("iou-sqp"))
        .count()
}

/// Writes `len` bytes (whole MiB) of pseudo-random data to `path` and syncs them to the device.
pub(crate) fn make_file(path: &Path, len: u64) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    let mut block = vec![0u8; 1 << 20];
    let mut x = 0x243f6a8885a308d3u64;
    for _ in 0..len >> 20 {
        for b in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block)?;
    }
    f.sync_all()
}

/// Reads the whole file untimed: the VM evicts idle page cache, and reads should be cached.
fn warm(file: &File, len: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        match file.read_at(&mut buf, off)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => off += n as u64,
        }
    }
    Ok(())
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

/// Returns (ops/s, io_uring_enter calls per op) of the raw loop. Each work's loop is a
/// function of its own, kept out of line on both sides: one function holding every loop let
/// the compiler's inlining and register choices for one work change the code of another.
fn run_raw(work: &Work, file: &File, cfg: &KernelConfig) -> Result<(f64, f64), String> {
    run_raw_with(work, file, cfg, CrateEnter)
}

/// The raw loops with the enter inlined into them (no frame to return through after the
/// system call): what subring does, written by hand.
const RAW_INLINE: &str = "raw io-uring, inline enter";

/// How a raw loop enters the kernel to submit and wait.
trait Enter: Copy {
    /// Submits the `pushed` entries queued and waits for `want` completions.
    fn submit_and_wait(self, ring: &IoUring, pushed: u32, want: usize) -> std::io::Result<()>;
}

/// The io-uring crate's `submit_and_wait`, as its users write it.
#[derive(Clone, Copy)]
struct CrateEnter;

impl Enter for CrateEnter {
    #[inline(always)]
    fn submit_and_wait(self, ring: &IoUring, _: u32, want: usize) -> std::io::Result<()> {
        ring.submit_and_wait(want).map(drop)
    }
}

/// `io_uring_enter` through rustix's inlined system call.
#[derive(Clone, Copy)]
struct InlineEnter;

impl Enter for InlineEnter {
    #[inline(always)]
    fn submit_and_wait(self, ring: &IoUring, pushed: u32, want: usize) -> std::io::Result<()> {
        use rustix::io_uring::{io_uring_enter, IoringEnterFlags};
        use std::os::fd::AsFd;
        // SAFETY: the ring's own fd, no argument block; the `pushed` entries are published and
        // point to memory that outlives their completions (the callers' SAFETY comments).
        unsafe {
            io_uring_enter(
                ring.as_fd(),
                pushed,
                want as u32,
                IoringEnterFlags::GETEVENTS,
            )
        }
        .map(drop)
        .map_err(Into::into)
    }
}

fn run_raw_with(
    work: &Work,
    file: &File,
    cfg: &KernelConfig,
    enter: impl Enter,
) -> Result<(f64, f64), String> {
    let mut ring = match work {
        Work::ReadSqpoll(_) => IoUring::builder().setup_sqpoll(SQPOLL_IDLE_MS).build(256),
        _ => IoUring::new(256),
    }
    .ctx("raw io_uring setup")?;
    let (ops, enters, took) = match *work {
        Work::Nop(batch) => {
            let ops = cfg.nop_ops / batch as u64 * batch as u64;
            let (enters, took) = raw_nops(&mut ring, batch, ops, enter)?;
            (ops, enters, took)
        }
        Work::Read(depth) | Work::ReadSqpoll(depth) => {
            let sqpoll = matches!(work, Work::ReadSqpoll(_));
            let (enters, took) = raw_reads(&mut ring, file, cfg, depth, sqpoll, enter)?;
            (cfg.read_ops, enters, took)
        }
    };
    Ok((ops as f64 / took.as_secs_f64(), enters as f64 / ops as f64))
}

/// `ops` NOPs in batches of `batch`, one `submit_and_wait` per batch.
#[inline(never)]
fn raw_nops(
    ring: &mut IoUring,
    batch: usize,
    ops: u64,
    enter: impl Enter,
) -> Result<(u64, Duration), String> {
    let mut enters = 0u64;
    let start = Instant::now();
    let mut done = 0;
    while done < ops {
        for _ in 0..batch {
            let e = opcode::Nop::new().build().user_data(1);
            // SAFETY: a NOP entry points to no memory.
            unsafe { ring.submission().push(&e) }.ctx("raw push")?;
        }
        enter
            .submit_and_wait(ring, batch as u32, batch)
            .ctx("raw submit")?;
        enters += 1;
        // Look at every completion, as any caller must (and as subring does): a loop
        // that only counted them would let the compiler skip reading the CQ.
        for c in ring.completion() {
            if c.result() < 0 {
                return Err(format!("raw nop failed: {}", c.result()));
            }
            std::hint::black_box(c.user_data());
            done += 1;
        }
    }
    Ok((enters, start.elapsed()))
}

/// `cfg.read_ops` random 4 KiB reads with `depth` in flight.
#[inline(never)]
fn raw_reads(
    ring: &mut IoUring,
    file: &File,
    cfg: &KernelConfig,
    depth: usize,
    sqpoll: bool,
    enter: impl Enter,
) -> Result<(u64, Duration), String> {
    let ops = cfg.read_ops;
    let mut bufs = vec![vec![0u8; BLOCK]; depth];
    let mut offsets = Offsets::new(cfg.file_len);
    let fd = types::Fd(file.as_raw_fd());
    let mut enters = 0;
    let start = Instant::now();
    let (mut issued, mut done) = (0u64, 0u64);
    let mut push = |ring: &mut IoUring, i: usize, off: u64| {
        let e = opcode::Read::new(fd, bufs[i].as_mut_ptr(), BLOCK as u32)
            .offset(off)
            .build()
            .user_data(i as u64);
        // SAFETY: `bufs[i]` outlives the loop and is not reused until its completion.
        unsafe { ring.submission().push(&e) }.ctx("raw push")
    };
    let mut pushed = 0u32;
    for i in 0..depth.min(ops as usize) {
        push(ring, i, offsets.next())?;
        issued += 1;
        pushed += 1;
    }
    while done < ops {
        if !sqpoll {
            enter
                .submit_and_wait(ring, std::mem::take(&mut pushed), 1)
                .ctx("raw submit")?;
            enters += 1;
        } else if ring.submission().need_wakeup() {
            ring.submit().ctx("raw submit")?;
            enters += 1;
        } else {
            std::hint::spin_loop();
        }
        let finished: Vec<(usize, i32)> = ring
            .completion()
            .map(|c| (c.user_data() as usize, c.result()))
            .collect();
        for (i, res) in finished {
            if res != BLOCK as i32 {
                return Err(format!("raw read returned {res}"));
            }
            done += 1;
            if issued < ops {
                push(ring, i, offsets.next())?;
                issued += 1;
                pushed += 1;
            }
        }
    }
    Ok((enters, start.elapsed()))
}

/// Rows of the subring ring in other setup modes.
const COOP: &str = "subring, COOP_TASKRUN";
/// Rows of the subring ring in other setup modes (`DEFER_TASKRUN` implies `SINGLE_ISSUER`).
const DEFER: &str = "subring, DEFER_TASKRUN";

/// The subring ring's setup flags.
#[derive(Clone, Copy)]
enum Setup {
    Default,
    Coop,
    Defer,
}

/// Returns (ops/s, io_uring_enter calls per op). Each work's loop is out of line, as on the
/// raw side.
fn run_subring(work: &Work, file: &File, cfg: &KernelConfig) -> Result<(f64, f64), String> {
    run_subring_in(work, file, cfg, Setup::Default)
}

/// [`run_subring`] with the ring set up as `setup` says.
fn run_subring_in(
    work: &Work,
    file: &File,
    cfg: &KernelConfig,
    setup: Setup,
) -> Result<(f64, f64), String> {
    let builder = match setup {
        Setup::Default => Uring::builder(),
        Setup::Coop => Uring::builder().coop_taskrun(true),
        Setup::Defer => Uring::builder().defer_taskrun(true),
    };
    let mut ring = match work {
        Work::ReadSqpoll(_) => builder
            .entries(256)
            .sqpoll(SQPOLL_IDLE_MS)
            .wait_mode(WaitMode::Poll)
            .build(),
        _ => builder.entries(256).build(),
    }
    .ctx("io_uring setup")?;
    let (ops, took) = match *work {
        Work::Nop(batch) => {
            let ops = cfg.nop_ops / batch as u64 * batch as u64;
            (ops, subring_nops(&mut ring, batch, ops)?)
        }
        Work::Read(depth) | Work::ReadSqpoll(depth) => {
            (cfg.read_ops, subring_reads(&mut ring, file, cfg, depth)?)
        }
    };
    Ok((
        ops as f64 / took.as_secs_f64(),
        ring.stats().enters as f64 / ops as f64,
    ))
}

/// `ops` NOPs in batches of `batch`: push them, wait for the batch, reap it.
#[inline(never)]
fn subring_nops(ring: &mut Uring, batch: usize, ops: u64) -> Result<Duration, String> {
    let mut out = Vec::with_capacity(64);
    let start = Instant::now();
    let mut done = 0;
    while done < ops {
        for i in 0..batch {
            ring.push(Submission::new(i as u64, Op::Nop))
                .map_err(|r| format!("push: {}", r.error))?;
        }
        ring.wait_for(batch, None).ctx("wait")?;
        out.clear();
        done += ring.reap_into(&mut out, batch).ctx("reap")? as u64;
    }
    Ok(start.elapsed())
}

/// `cfg.read_ops` random 4 KiB reads with `depth` in flight, each buffer moved into its read
/// and handed back with the completion.
#[inline(never)]
fn subring_reads(
    ring: &mut Uring,
    file: &File,
    cfg: &KernelConfig,
    depth: usize,
) -> Result<Duration, String> {
    let mut out = Vec::with_capacity(64);
    let ops = cfg.read_ops;
    // As a user holds a file for the ring: shared, so that each read holds it until it is done.
    let fd = Target::fd(std::sync::Arc::new(file.try_clone().ctx("dup")?));
    let mut offsets = Offsets::new(cfg.file_len);
    let start = Instant::now();
    let (mut issued, mut done) = (0u64, 0u64);
    for i in 0..depth.min(ops as usize) {
        let op = Op::Read {
            fd: fd.clone(),
            buf: vec![0; BLOCK],
            offset: offsets.next(),
        };
        ring.push(Submission::new(i as u64, op))
            .map_err(|r| format!("push: {}", r.error))?;
        issued += 1;
    }
    while done < ops {
        ring.wait_for(1, None).ctx("wait")?;
        out.clear();
        ring.reap_into(&mut out, depth).ctx("reap")?;
        for c in out.drain(..) {
            let n = c.result.ctx("read")?;
            if n as usize != BLOCK {
                return Err(format!("read returned {n}"));
            }
            done += 1;
            if issued < ops {
                let Output::Buf(buf) = c.output else {
                    return Err("a read did not return its buffer".into());
                };
                let op = Op::Read {
                    fd: fd.clone(),
                    buf,
                    offset: offsets.next(),
                };
                ring.push(Submission::new(c.token, op))
                    .map_err(|r| format!("push: {}", r.error))?;
                issued += 1;
            }
        }
    }
    Ok(start.elapsed())
}

#[cfg(feature = "runtimes")]
/// QD `depth` 4 KiB random reads through tokio-uring: `depth` tasks, one read in flight each.
fn run_tokio_uring(path: &Path, cfg: &KernelConfig, depth: usize) -> Result<f64, String> {
    let std_file = File::open(path).ctx("open")?;
    let (ops, file_len) = (cfg.read_ops / depth as u64, cfg.file_len);
    Ok(tokio_uring::start(async move {
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
    }))
}

/// The same work through compio.
#[cfg(feature = "runtimes")]
fn run_compio(path: &Path, cfg: &KernelConfig, depth: usize) -> Result<f64, String> {
    use compio::io::AsyncReadAt;
    let (ops, file_len) = (cfg.read_ops / depth as u64, cfg.file_len);
    let runtime = compio::runtime::Runtime::new().ctx("compio runtime")?;
    Ok(runtime.block_on(async move {
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
    }))
}

fn run_pread(file: &File, cfg: &KernelConfig) -> Result<f64, String> {
    let mut buf = vec![0u8; BLOCK];
    let mut offsets = Offsets::new(cfg.file_len);
    let start = Instant::now();
    for _ in 0..cfg.read_ops {
        let n = file.read_at(&mut buf, offsets.next()).ctx("pread")?;
        if n != BLOCK {
            return Err(format!("pread returned {n}"));
        }
    }
    Ok(cfg.read_ops as f64 / start.elapsed().as_secs_f64())
}
