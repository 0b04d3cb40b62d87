//! The kernel transport against the real kernel: files in a temporary directory, sockets on
//! loopback, fixed buffers in a memfd region.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::opcode;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use subring_planes::data::{BufHandle, BufferPool, Region, RegionOptions};
use subring_planes::queue::{Completer, QueueError, Submitter};
use subring_uring::{
    CloseTarget, FixedBuf, Link, NothingInFlight, OnFull, Op, OpError, Output, RegisterError,
    Submission, SubmitError, Target, Uring, WaitMode,
};

const LIMIT: Option<Duration> = Some(Duration::from_secs(20));

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("subring-uring-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

mod batch_wait;
mod bufring;
mod bundle;
mod cancel;
mod direct;
mod fds;
mod files;
mod incremental;
mod modes;
mod multishot;
mod queues;
mod regions;
mod send_bundle;
mod send_zc;
mod sockets;

/// A target sharing a duplicate of `f`'s descriptor (the operation holds it until it completes).
fn target(f: &impl AsFd) -> Target {
    Target::fd(f.as_fd().try_clone_to_owned().unwrap())
}

/// The operation and token an operation's error names (its `OpError`).
fn op_error(e: &std::io::Error) -> (&'static str, u64) {
    let op = e
        .get_ref()
        .and_then(|e| e.downcast_ref::<OpError>())
        .unwrap_or_else(|| panic!("an OpError inside {e}"));
    (op.op, op.token)
}

/// The refusal inside a rejected push.
fn refusal(e: &QueueError) -> &SubmitError {
    SubmitError::of(e).unwrap_or_else(|| panic!("a SubmitError inside {e}"))
}

fn sub(token: u64, op: Op) -> Submission {
    Submission::new(token, op)
}

/// Pushes, submits once, and reaps until every submission has completed.
fn run(ring: &mut Uring, subs: Vec<Submission>) -> Vec<subring_uring::Completion> {
    let n = subs.len();
    for s in subs {
        ring.push(s).map_err(|r| r.error).unwrap();
    }
    ring.submit().unwrap();
    let mut done = Vec::new();
    while done.len() < n {
        ring.wait(LIMIT).unwrap();
        ring.reap_into(&mut done, n).unwrap();
    }
    done.sort_by_key(|c| c.token);
    done
}

fn open(path: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap()
}

fn buf(out: &Output) -> &[u8] {
    match out {
        Output::Buf(b) => b,
        other => panic!("expected a buffer, got {other:?}"),
    }
}

/// The file a descriptor number names now (device and inode), if it is open.
fn identity(fd: RawFd) -> Option<(u64, u64)> {
    // SAFETY: `stat` is plain old data; `fstat` writes it and only reads the number `fd`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above: an fstat of a number that may be closed is answered with EBADF.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
}

fn open_existing(path: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// A ring with a CQ of 8 and `batches` batches of 8 NOPs submitted (tokens 0 up): the kernel
/// completes them inline and holds what does not fit in the CQ.
fn nops_overflowing_a_cq_of_8(batches: u64) -> Uring {
    let mut ring = Uring::builder().entries(8).cq_entries(8).build().unwrap();
    for batch in 0..batches {
        for i in 0..8 {
            ring.push(sub(batch * 8 + i, Op::Nop)).unwrap();
        }
        ring.submit().unwrap();
    }
    ring
}

fn sorted_tokens(done: &[subring_uring::Completion]) -> Vec<u64> {
    let mut tokens: Vec<u64> = done.iter().map(|c| c.token).collect();
    tokens.sort_unstable();
    tokens
}

/// Waits for and reaps the next completion (20 s at most), for operations with many.
fn next(ring: &mut Uring) -> subring_uring::Completion {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(c) = ring.reap().unwrap() {
            return c;
        }
        assert!(Instant::now() < deadline, "no completion within 20 s");
        ring.wait(Some(Duration::from_millis(100)))
            .or_else(|e| match e {
                QueueError::Timeout(_) => Ok(()),
                e => Err(e),
            })
            .unwrap();
    }
}

/// Pushes one submission and submits it.
fn push(ring: &mut Uring, token: u64, op: Op) {
    ring.push(sub(token, op)).map_err(|r| r.error).unwrap();
    ring.submit().unwrap();
}

/// A connected pair of TCP sockets on loopback: (the one the test writes, the one the ring reads).
fn tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

/// The errno inside a failed operation's `OpError`.
fn errno(e: &std::io::Error) -> Option<i32> {
    e.get_ref()
        .and_then(|e| e.downcast_ref::<OpError>())
        .and_then(|o| o.source.raw_os_error())
}

/// Whether an operation ended cancelled.
fn cancelled(c: &subring_uring::Completion) -> bool {
    let errno_of_result = c.result.as_ref().err().and_then(errno);
    assert_eq!(c.errno(), errno_of_result, "{c:?}");
    c.errno() == Some(libc::ECANCELED)
}

/// The bytes `n` of a test stream.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// The buffer a completion picked from a buffer ring.
fn selected(c: subring_uring::Completion) -> subring_planes::data::Buf {
    match c.output {
        Output::Pooled(b) => b,
        o => panic!("a picked buffer, not {o:?} (result {:?})", c.result),
    }
}

/// Whether the running kernel is at least `major.minor`; says so when it is not (the caller
/// skips).
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let have = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let ok = have >= (major, minor);
    if !ok {
        eprintln!(
            "skipped: needs Linux {major}.{minor}, this is {}",
            release.trim()
        );
    }
    ok
}
