//! `subring tour`: a userspace subsystem in a child process, then the kernel as a subsystem,
//! each beside the classic way of doing the same work, with what crossed which plane; then the
//! two chained: a storage process whose kernel reads land in the tour's memory.
//!
//! - [`userspace`]: step 1, the echo server in a child process (and its server half).
//! - [`kernel`]: step 2, io_uring reads into fixed buffers.
//! - [`chain`]: step 3, the block service (and its server half).

mod chain;
mod kernel;
mod userspace;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;
use subring::data::SharedBytes;

use crate::Error;

pub use chain::serve_blk;
pub use userspace::serve;

pub(crate) const PAYLOAD: usize = 4096;
/// Round trips per mode.
pub(crate) const ROUND_TRIPS: u64 = 3000;
/// Requests in flight in the pipelined run.
pub(crate) const DEPTH: u64 = 32;
/// Requests in the pipelined run.
pub(crate) const PIPELINED: u64 = 20_000;
/// Connections the tour makes to the child's server (three modes and the pipelined run).
pub(crate) const CONNECTIONS: u64 = 4;
/// How long anything in the tour may wait for the other process.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);
/// The kernel part: file size and reads.
pub(crate) const FILE_LEN: u64 = 32 << 20;
pub(crate) const READS: u64 = 50_000;

/// Round-trip latencies of a tour row (an HDR histogram, three significant digits).
pub(crate) struct Latency(hdrhistogram::Histogram<u64>);

impl Latency {
    pub(crate) fn new() -> Self {
        // Three significant digits, auto-resizing: valid arguments, so it cannot fail.
        Latency(hdrhistogram::Histogram::new(3).expect("a valid histogram"))
    }

    pub(crate) fn record(&mut self, took: Duration) {
        // Auto-resizing: a value is only refused when it overflows u64 ns (584 years).
        let _ = self
            .0
            .record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Median, ns.
    pub(crate) fn p50(&self) -> f64 {
        self.0.value_at_quantile(0.5) as f64
    }

    /// 99th percentile, ns.
    pub(crate) fn p99(&self) -> f64 {
        self.0.value_at_quantile(0.99) as f64
    }
}

pub(crate) fn us(ns: f64) -> String {
    if ns < 10_000.0 {
        format!("{:.2} us", ns / 1e3)
    } else {
        format!("{:.1} us", ns / 1e3)
    }
}

/// Kills and reaps the child if the tour stops early.
pub(crate) struct Reaped(pub(crate) Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The tour's own directory (its sockets and files), made anew with mode 0700, so that no
/// other user can put a listener or a link where the tour looks; removed with all it holds
/// when the tour ends.
pub(crate) struct TourDir(PathBuf);

impl TourDir {
    pub(crate) fn new() -> Result<Self, Error> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        for n in 0..100 {
            let dir = base.join(format!("subring-tour-{}-{n}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(TourDir(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(format!("making a directory in {}: {e}", base.display()).into())
                }
            }
        }
        Err(format!(
            "no free name for the tour's directory in {}",
            base.display()
        )
        .into())
    }

    /// `name` in the directory.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TourDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Connects with `connect` until it succeeds, `PATIENCE` passes, or the child process it talks
/// to has exited (it will never listen then: said at once, with its status).
pub(crate) fn connect_to_child<T>(
    child: &mut Reaped,
    what: &str,
    mut connect: impl FnMut() -> Result<T, Error>,
) -> Result<T, Error> {
    let start = std::time::Instant::now();
    loop {
        match connect() {
            Ok(c) => return Ok(c),
            Err(e) => {
                if let Some(c) = child.0.as_mut() {
                    if let Some(status) = c.try_wait()? {
                        return Err(format!("{what} exited ({status}) before it served").into());
                    }
                }
                if start.elapsed() > PATIENCE {
                    return Err(e);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Waits for the child to exit, at most `limit` (then the guard kills it), and returns what it
/// printed (a line of counters: the pipe holds it while the child exits).
pub(crate) fn finish(child: &mut Reaped, what: &str, limit: Duration) -> Result<String, Error> {
    let c = child
        .0
        .as_mut()
        .ok_or_else(|| format!("{what} already reaped"))?;
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = c
            .try_wait()
            .map_err(|e| format!("waiting for {what}: {e}"))?
        {
            break status;
        }
        if start.elapsed() > limit {
            return Err(format!("{what} did not exit within {limit:?}").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut out = String::new();
    if let Some(mut stdout) = c.stdout.take() {
        std::io::Read::read_to_string(&mut stdout, &mut out)
            .map_err(|e| format!("reading what {what} printed: {e}"))?;
    }
    child.0 = None;
    if !status.success() {
        return Err(format!("{what} failed ({status})").into());
    }
    Ok(out)
}

pub(crate) fn payload(seq: u64, buf: &mut [u8]) {
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for word in buf.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes());
    }
}

/// Runs the tour's `steps` (every one if none is named).
pub fn run(steps: &[u8]) -> Result<(), Error> {
    let take = |step| steps.is_empty() || steps.contains(&step);
    println!("subring tour: one interface shape, two subsystems, and the two chained.");
    println!("Every subsystem interface has a data plane (shared rings and buffers), a control");
    println!("plane (the doorbell that says work is queued) and an interrupt plane (the event");
    println!("that says work is done). Each step below counts what crossed each plane.\n");
    let dir = TourDir::new()?;
    if take(1) {
        userspace::userspace(&dir)?;
        println!();
    }
    // Steps 2 and 3 need io_uring, which a kernel can leave out or forbid (a container's
    // seccomp profile, `kernel.io_uring_disabled`): without it they are skipped, said why.
    let uring = if take(2) || take(3) {
        kernel::available()
    } else {
        Ok(())
    };
    for (step, title) in [
        (2, "2. The kernel as a subsystem: io_uring"),
        (
            3,
            "3. The chain: a storage process fronting the kernel, reads landing in our memory",
        ),
    ] {
        if !take(step) {
            continue;
        }
        println!("{title}");
        match &uring {
            Ok(()) if step == 2 => kernel::kernel(&dir)?,
            Ok(()) => chain::chain(&dir)?,
            Err(why) => println!(
                "   Skipped: io_uring is not available here ({why}). On Linux 5.6 or later it is \
                 forbidden by a seccomp profile (Docker's default, for one) or by the \
                 kernel.io_uring_disabled sysctl."
            ),
        }
        if step == 2 && take(3) {
            println!();
        }
    }
    println!("\nMore: `subring bench --quick` measures all of this against its peers;");
    println!("examples/ has two-terminal echo and block servers, std::io streams and a file copy.");
    Ok(())
}

/// The 8 bytes at `offset` of the tour's file: a function of the offset, so that any block
/// read can be checked.
pub(crate) fn word_at(offset: u64) -> u64 {
    let mut x = offset.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d;
    x ^= x >> 31;
    x.wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

pub(crate) fn make_file(path: &Path) -> Result<File, Error> {
    let what = |op: &str, e: std::io::Error| format!("{op} {}: {e}", path.display());
    let mut f = File::create(path).map_err(|e| what("creating", e))?;
    let mut block = vec![0u8; 1 << 20];
    for mib in 0..FILE_LEN >> 20 {
        for (i, w) in block.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&word_at((mib << 20) + 8 * i as u64).to_le_bytes());
        }
        f.write_all(&block).map_err(|e| what("writing", e))?;
    }
    drop(f);
    let f = File::open(path).map_err(|e| what("opening", e))?;
    // Read it once, untimed, so that both ways read from the page cache.
    let mut off = 0;
    while off < FILE_LEN {
        match f.read_at(&mut block, off).map_err(|e| what("reading", e))? {
            0 => return Err(format!("{} ended at {off} bytes", path.display()).into()),
            n => off += n as u64,
        }
    }
    Ok(f)
}

pub(crate) fn offsets() -> impl FnMut() -> u64 {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % (FILE_LEN / PAYLOAD as u64)) * PAYLOAD as u64
    }
}

/// Checks every 64th word of a block read at `offset` (copied out of the shared buffer one word
/// at a time: the buffer is memory another process maps).
pub(crate) fn check_block(bytes: SharedBytes<'_>, offset: u64) -> Result<(), Error> {
    for i in (0..bytes.len() / 8).step_by(64) {
        let at = offset + 8 * i as u64;
        let word = bytes.read_obj::<u64>(8 * i).expect("inside the block");
        if u64::from_le(word) != word_at(at) {
            return Err(format!("read the wrong bytes at offset {at}").into());
        }
    }
    Ok(())
}
