//! A blocking round trip between two processes whose futex wake and wait travel through
//! io_uring (`IORING_OP_FUTEX_WAKE` and `IORING_OP_FUTEX_WAIT`, Linux 6.7+), each side's wake of
//! the other and its own wait submitted in one `io_uring_enter`: one system call per side per
//! round trip instead of `futex(2)`'s two. Measured against the bench's `futex(2)` pair and pipe
//! pair, alternating, five times (20,000 round trips each, parent on CPU 0, child on CPU 1):
//! the question was whether fewer system calls would take a blocking round trip below a pipe's
//! (issue 24). Each median is printed with its ratio to the pipe's.
//!
//! ```sh
//! cargo run --release -p subring-bench --example uring_futex_rt
//! ```

// A raw peer, like the bench's: std atomics on a shared page, not the planes' shim.
#![allow(clippy::disallowed_types)]

use std::sync::atomic::{AtomicU32, Ordering::*};
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
use subring_bench::peers::{self, Placement};

/// `FUTEX2_SIZE_U32`: a 32-bit futex, shared between processes (no `FUTEX2_PRIVATE`).
const FUTEX2_SIZE_U32: u32 = 0x02;
const MATCH_ANY: u64 = 0xffff_ffff;
const QUIT: u32 = u32::MAX;
/// How long one enter may wait before the measurement fails (a peer that died).
const WAIT: Duration = Duration::from_secs(5);

type Result<T> = std::result::Result<T, String>;

fn ring(defer: bool) -> Result<IoUring> {
    let mut b = IoUring::builder();
    if defer {
        b.setup_single_issuer().setup_defer_taskrun();
    }
    b.build(8).map_err(|e| format!("io_uring setup: {e}"))
}

fn push(ring: &mut IoUring, entry: &io_uring::squeue::Entry) -> Result<()> {
    // SAFETY: the futex word the entry names lives in a mapping that outlives the ring's use
    // of it (the process's shared page, never unmapped before exit).
    unsafe { ring.submission().push(entry) }.map_err(|_| "submission ring full".to_string())
}

/// Submits what is queued and waits for `want` completions, at most [`WAIT`].
fn enter(ring: &mut IoUring, want: usize) -> Result<usize> {
    let ts = types::Timespec::from(WAIT);
    let args = types::SubmitArgs::new().timespec(&ts);
    match ring.submitter().submit_with_args(want, &args) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ETIME) => return Err("no answer in 5 s".into()),
        Err(e) => return Err(format!("io_uring_enter: {e}")),
    }
    Ok(ring.completion().count())
}

/// Publishes `publish` (if any) and wakes its waiter, then waits until `wait_word` satisfies
/// `ready`, the wake and each wait submitted together; returns the word's value.
fn step(
    ring: &mut IoUring,
    publish: Option<(&AtomicU32, u32)>,
    wait_word: &AtomicU32,
    ready: impl Fn(u32) -> bool,
) -> Result<u32> {
    let mut outstanding = 0;
    if let Some((word, value)) = publish {
        word.store(value, Release);
        push(
            ring,
            &opcode::FutexWake::new(word.as_ptr(), 1, MATCH_ANY, FUTEX2_SIZE_U32).build(),
        )?;
        outstanding += 1;
    }
    loop {
        let now = wait_word.load(Acquire);
        if ready(now) {
            while outstanding > 0 {
                outstanding -= enter(ring, outstanding)?.min(outstanding);
            }
            return Ok(now);
        }
        let wait = opcode::FutexWait::new(
            wait_word.as_ptr(),
            u64::from(now),
            MATCH_ANY,
            FUTEX2_SIZE_U32,
        );
        push(ring, &wait.build())?;
        outstanding += 1;
        outstanding -= enter(ring, outstanding)?.min(outstanding);
    }
}

/// The median round trip in ns over io_uring futex operations.
fn uring_rt(n: usize, defer: bool) -> Result<f64> {
    // SAFETY: a fresh shared anonymous page (inherited by the child), never unmapped.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return Err("mmap".into());
    }
    let page = page.cast::<u8>();
    // SAFETY: two aligned words of the page, on lines of their own, only accessed atomically.
    let (ping, pong): (&'static AtomicU32, &'static AtomicU32) = unsafe {
        (
            AtomicU32::from_ptr(page.cast()),
            AtomicU32::from_ptr(page.add(128).cast()),
        )
    };
    let _pin = peers::AffinityGuard::pin(0)?;
    let child = peers::fork_pinned(1, &[], move || {
        let serve = || -> Result<()> {
            let mut r = ring(defer)?;
            let (mut last, mut publish) = (0, None);
            loop {
                let v = step(&mut r, publish, ping, |v| v != last)?;
                if v == QUIT {
                    return Ok(());
                }
                last = v;
                publish = Some((pong, v));
            }
        };
        match serve() {
            Ok(()) => 0,
            Err(_) => 4,
        }
    })?;
    let measured = (|| -> Result<f64> {
        let mut r = ring(defer)?;
        let mut samples = Vec::with_capacity(n);
        let warm = n / 10;
        for seq in 1..=(n + warm) as u32 {
            let t0 = Instant::now();
            step(&mut r, Some((ping, seq)), pong, |v| v == seq)?;
            if seq as usize > warm {
                samples.push(t0.elapsed().as_nanos() as u64);
            }
        }
        step(&mut r, Some((ping, QUIT)), pong, |_| true)?;
        samples.sort_unstable();
        Ok(samples[samples.len() / 2] as f64)
    })();
    if measured.is_err() {
        child.kill();
    }
    child.reap(WAIT)?;
    measured
}

fn main() -> Result<()> {
    let n = 20_000;
    for _ in 0..5 {
        let plain = uring_rt(n, false)?;
        let defer = uring_rt(n, true)?;
        let futex = peers::futex_rt(n, Placement::Split)?.p50();
        let pipe = peers::pipe_rt(n, Placement::Split)?.p50();
        println!(
            "io_uring futex {:5.1} us ({:.2}x pipe), with DEFER_TASKRUN {:5.1} us ({:.2}x), \
             futex(2) {:5.1} us ({:.2}x), pipe {:5.1} us",
            plain / 1e3,
            plain / pipe,
            defer / 1e3,
            defer / pipe,
            futex / 1e3,
            futex / pipe,
            pipe / 1e3,
        );
    }
    Ok(())
}
