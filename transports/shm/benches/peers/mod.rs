//! Peer measurements for the cross-process IPC benchmark: what the same job costs over the
//! transports a user would otherwise pick, measured the same way as subring.
//!
//! Every measurement forks one child process after setting everything up (pipes, socketpairs,
//! eventfds, `MAP_SHARED` memory), pins parent and child as [`Placement`] says, and measures
//! in the parent:
//!
//! * round trips ([`pipe_rt`], [`unix_socket_rt`], [`eventfd_rt`], [`spin_floor_rt`]): the
//!   parent sends an 8-byte message (or publishes a counter in shared memory) and the child
//!   echoes it; one sample per round trip, after `n / 10` untimed warm-up round trips;
//! * throughput ([`unix_socket_throughput`], [`shm_ring_throughput`]): bytes per second from
//!   the first byte written until the consumer acknowledges that it has read (copied out and
//!   summed) all of it; the acknowledgement carries a checksum the parent verifies.
//!
//! [`probe`] and [`label`] tell which vCPU placement the host gave us ("near" or "far").
//!
//! Nothing here can hang: parent waits are `poll()`s, socket send timeouts or spins that check a
//! deadline; children are killed if the parent dies (`PR_SET_PDEATHSIG`), and are always reaped,
//! killed if they do not exit in time. Failures come back as `Err(String)` naming what failed.
//! Call these while the process is single-threaded: the child of `fork()` only runs a loop of
//! raw syscalls and atomics, then `_exit`s.

// The words below live in `MAP_SHARED` memory shared by two processes, which the loom shim
// (`subring_planes::sync`) cannot model: use the std atomics directly.
#![allow(clippy::disallowed_types)]

use std::fmt;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the parent waits for any one reply (or for progress in a spin) before failing.
const WAIT: Duration = Duration::from_secs(5);
/// How long a spinning child waits for the parent's next message before giving up.
const CHILD_WAIT: Duration = Duration::from_secs(30);
/// How long a child gets to exit once told to stop, before it is killed.
const REAP_WITHIN: Duration = Duration::from_secs(2);
/// Time budgets after which a measurement stops early and reports what it has.
const RT_BUDGET: Duration = Duration::from_secs(20);
const SPIN_BUDGET: Duration = Duration::from_secs(3);
const THROUGHPUT_BUDGET: Duration = Duration::from_secs(10);
/// Child exit codes.
const EXIT_PIN: i32 = 3;
const EXIT_IO: i32 = 4;
const EXIT_ORPHAN: i32 = 5;
const EXIT_PANIC: i32 = 101;
/// Distance between words written by different processes (two lines: adjacent-line prefetch).
const LINE: usize = 128;
/// Value of a shared word that tells the child to exit.
const QUIT: u64 = u64::MAX;

/// Where the parent and the child run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Parent on CPU 0, child on CPU 1: every handoff crosses cores.
    Split,
    /// Both on CPU 0: every handoff needs the scheduler to switch processes.
    Shared,
}

impl Placement {
    /// The `(parent, child)` CPUs of this placement.
    pub fn cpus(self) -> (usize, usize) {
        match self {
            Placement::Split => (0, 1),
            Placement::Shared => (0, 0),
        }
    }
}

/// Round-trip latencies of one measurement.
#[derive(Clone, Debug, Default)]
pub struct Latency {
    /// One sample per round trip, in ns. Fewer than the `n` asked for (but at least one) when
    /// the measurement ran out of its time budget, as spinning in [`Placement::Shared`] does.
    pub samples_ns: Vec<u64>,
}

impl Latency {
    /// Median round trip in ns (NaN without samples).
    pub fn p50(&self) -> f64 {
        self.percentile(0.50)
    }

    /// 99th-percentile round trip in ns (NaN without samples).
    pub fn p99(&self) -> f64 {
        self.percentile(0.99)
    }

    /// Mean round trip in ns (NaN without samples).
    pub fn mean(&self) -> f64 {
        let total: f64 = self.samples_ns.iter().map(|&ns| ns as f64).sum();
        total / self.samples_ns.len() as f64
    }

    /// Nearest-rank percentile `q` (0..=1) of a sorted copy.
    fn percentile(&self, q: f64) -> f64 {
        let mut sorted = self.samples_ns.clone();
        if sorted.is_empty() {
            return f64::NAN;
        }
        sorted.sort_unstable();
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1] as f64
    }
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

// ---------------------------------------------------------------------------------------------
// CPU affinity

/// Pins the calling thread to `cpu` without allocating (so a forked child may call it).
fn try_pin(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `cpu_set_t` is a plain bit array, for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu < CPU_SETSIZE` (checked above), so the bit lies inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    set_affinity(&set)
}

fn set_affinity(set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: pid 0 is the calling thread; `set` is a valid `cpu_set_t` of the size we pass.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Pins the calling thread (the whole process, if it is single-threaded) to CPU `cpu`.
pub fn pin(cpu: usize) -> Result<(), String> {
    try_pin(cpu).map_err(|e| format!("pin to CPU {cpu}: sched_setaffinity: {e}"))
}

/// The calling thread's CPU mask, saved when made and restored when dropped.
pub struct AffinityGuard {
    saved: libc::cpu_set_t,
}

impl AffinityGuard {
    /// Saves the calling thread's current CPU mask (`sched_getaffinity`).
    pub fn save() -> Result<Self, String> {
        // SAFETY: all zeroes is a valid (empty) `cpu_set_t`.
        let mut saved: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: pid 0 is the calling thread; `saved` is writable and of the size we pass.
        let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut saved) };
        if rc != 0 {
            return Err(os_err("sched_getaffinity"));
        }
        Ok(Self { saved })
    }

    /// Saves the current mask, then [`pin`]s the calling thread to `cpu`.
    pub fn pin(cpu: usize) -> Result<Self, String> {
        let guard = Self::save()?;
        pin(cpu)?;
        Ok(guard)
    }

    /// The CPUs of the saved mask.
    pub fn cpus(&self) -> Vec<usize> {
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: every `c < CPU_SETSIZE` lies inside the set.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &self.saved) })
            .collect()
    }
}

impl Drop for AffinityGuard {
    fn drop(&mut self) {
        // Nothing to report to: the mask was valid when saved, so this only fails if CPUs went
        // offline meanwhile, and then the kernel keeps the current mask.
        let _ = set_affinity(&self.saved);
    }
}

impl fmt::Debug for AffinityGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AffinityGuard")
            .field("saved_cpus", &self.cpus())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A forked child process. Dropping it without [`Child::reap`] kills and reaps it.
#[derive(Debug)]
pub struct Child {
    pid: libc::pid_t,
    reaped: bool,
}

/// Forks a child that closes `close_in_child` (the parent's ends of pipes and sockets, so that
/// it sees EOF when the parent closes them), pins itself to `cpu`, runs `body` and `_exit`s with
/// the code `body` returns (3 if it could not pin itself, 101 if `body` panicked). The child is
/// SIGKILLed if the parent dies, and never returns into the caller.
///
/// Call it while single-threaded, or give it a `body` that only makes async-signal-safe calls:
/// in the child, a lock held by another thread at the fork would never be released.
pub fn fork_pinned(
    cpu: usize,
    close_in_child: &[RawFd],
    body: impl FnOnce() -> i32,
) -> Result<Child, String> {
    // SAFETY: getpid has no preconditions and cannot fail.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the child only runs `child_main` (raw syscalls, then `body`, which the caller
    // promises is fork-safe) and ends in `_exit`, so it never returns into the caller's frames.
    match unsafe { libc::fork() } {
        -1 => Err(os_err("fork")),
        0 => {
            let code = child_main(parent, cpu, close_in_child, body);
            // SAFETY: `_exit` ends the child at once, running no destructors, atexit handlers or
            // bench harness code: those belong to the parent.
            unsafe { libc::_exit(code) }
        }
        pid => Ok(Child { pid, reaped: false }),
    }
}

fn child_main(parent: libc::pid_t, cpu: usize, close: &[RawFd], body: impl FnOnce() -> i32) -> i32 {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory.
    let armed = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    // SAFETY: getppid has no preconditions and cannot fail.
    if armed != 0 || unsafe { libc::getppid() } != parent {
        return EXIT_ORPHAN; // the parent died before the death signal was armed
    }
    for &fd in close {
        // SAFETY: these are the child's copies of the parent's ends; nothing in the child uses
        // them again (their `OwnedFd`s are never dropped here: the child `_exit`s).
        unsafe { libc::close(fd) };
    }
    if try_pin(cpu).is_err() {
        return EXIT_PIN;
    }
    std::panic::catch_unwind(AssertUnwindSafe(body)).unwrap_or(EXIT_PANIC)
}

impl Child {
    /// The child's process id.
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Sends SIGKILL (harmless if the child has already exited but is not reaped yet).
    pub fn kill(&self) {
        if !self.reaped {
            // SAFETY: `pid` is our own child and not reaped yet, so the pid cannot be reused.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }

    /// Waits up to `within` for the child to exit, SIGKILLing and reaping it if it does not.
    /// `Ok` only if it exited with code 0.
    pub fn reap(mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.wait(libc::WNOHANG)? {
                return exit_status(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                self.wait(0)?;
                return Err(format!("child still running after {within:?}: killed"));
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// `waitpid` with `flags`: `Some(status)` once reaped, `None` if still running (WNOHANG).
    fn wait(&mut self, flags: libc::c_int) -> Result<Option<libc::c_int>, String> {
        let mut status = 0;
        loop {
            // SAFETY: `status` is a valid out-pointer; `pid` is our own child, not reaped yet.
            let rc = unsafe { libc::waitpid(self.pid, &mut status, flags) };
            if rc == self.pid {
                self.reaped = true;
                return Ok(Some(status));
            }
            if rc == 0 {
                return Ok(None);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                self.reaped = true; // e.g. ECHILD: there is nothing left to wait for
                return Err(format!("waitpid({}): {e}", self.pid));
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
            let _ = self.wait(0);
        }
    }
}

fn exit_status(status: libc::c_int) -> Result<(), String> {
    if libc::WIFEXITED(status) {
        match libc::WEXITSTATUS(status) {
            0 => Ok(()),
            EXIT_PIN => Err("child could not pin itself to its CPU".into()),
            EXIT_IO => Err("child failed to read or write".into()),
            EXIT_ORPHAN => Err("child could not arm PR_SET_PDEATHSIG".into()),
            EXIT_PANIC => Err("child panicked".into()),
            code => Err(format!("child exited with code {code}")),
        }
    } else if libc::WIFSIGNALED(status) {
        Err(format!("child killed by signal {}", libc::WTERMSIG(status)))
    } else {
        Err(format!("child wait status {status:#x}"))
    }
}

/// Pins the parent, forks `child` (pinned), runs `parent`, then reaps the child, killing it
/// first if `parent` failed; restores the caller's CPU mask.
fn run<T>(
    what: &str,
    placement: Placement,
    close_in_child: &[RawFd],
    child: impl FnOnce() -> i32,
    parent: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    let (parent_cpu, child_cpu) = placement.cpus();
    let _restore = AffinityGuard::pin(parent_cpu).map_err(|e| format!("{what}: {e}"))?;
    let kid = fork_pinned(child_cpu, close_in_child, child).map_err(|e| format!("{what}: {e}"))?;
    let result = parent();
    if result.is_err() {
        kid.kill();
    }
    match (result, kid.reap(REAP_WITHIN)) {
        (Ok(v), Ok(())) => Ok(v),
        (Ok(_), Err(c)) => Err(format!("{what}: {c}")),
        (Err(e), Ok(())) => Err(format!("{what}: {e}")),
        (Err(e), Err(c)) => Err(format!("{what}: {e} ({c})")),
    }
}

/// Runs `n / 10` untimed warm-up round trips (for at most a quarter of `budget`), then up to `n`
/// timed ones, stopping after the first sample that ends past `budget`.
fn sample(
    n: usize,
    budget: Duration,
    mut round_trip: impl FnMut() -> Result<(), String>,
) -> Result<Latency, String> {
    let start = Instant::now();
    for _ in 0..n / 10 {
        if start.elapsed() >= budget / 4 {
            break;
        }
        round_trip()?;
    }
    let stop = start + budget;
    let mut samples_ns = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        round_trip()?;
        let t1 = Instant::now();
        samples_ns.push(u64::try_from((t1 - t0).as_nanos()).unwrap_or(u64::MAX));
        if t1 >= stop {
            break;
        }
    }
    Ok(Latency { samples_ns })
}

// ---------------------------------------------------------------------------------------------
// File descriptors and shared memory

fn owned(fd: libc::c_int, what: &str) -> Result<OwnedFd, String> {
    if fd < 0 {
        return Err(os_err(what));
    }
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A pipe, as `(read end, write end)`.
fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_err("pipe2"));
    }
    Ok((owned(fds[0], "pipe2")?, owned(fds[1], "pipe2")?))
}

fn socketpair() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [-1; 2];
    let kind = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    if unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) } != 0 {
        return Err(os_err("socketpair(AF_UNIX, SOCK_STREAM)"));
    }
    Ok((owned(fds[0], "socketpair")?, owned(fds[1], "socketpair")?))
}

fn eventfd() -> Result<OwnedFd, String> {
    // SAFETY: eventfd takes plain integers and touches no memory.
    owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) }, "eventfd")
}

fn read_some(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Blocking read of all of `buf`; `Ok(false)` on EOF before its first byte.
fn read_full(fd: RawFd, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match read_some(fd, &mut buf[got..])? {
            0 if got == 0 => return Ok(false),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    Ok(true)
}

fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

fn wait_readable(fd: RawFd, wait: Duration) -> Result<(), String> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = wait.as_millis().min(i32::MAX as u128) as libc::c_int;
    loop {
        // SAFETY: `pfd` is one valid pollfd and we pass a count of 1.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            0 => return Err(format!("no reply within {wait:?}")),
            n if n > 0 => return Ok(()), // POLLIN, POLLHUP or POLLERR: the read tells which
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(format!("poll: {e}"));
                }
            }
        }
    }
}

/// Reads all of `buf`, each read behind a `poll` of at most `wait`.
fn recv_exact(fd: RawFd, buf: &mut [u8], wait: Duration) -> Result<(), String> {
    let mut got = 0;
    while got < buf.len() {
        wait_readable(fd, wait)?;
        match read_some(fd, &mut buf[got..]) {
            Ok(0) => return Err("the child closed its end (EOF)".into()),
            Ok(n) => got += n,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Ok(())
}

fn send(fd: RawFd, buf: &[u8]) -> Result<(), String> {
    write_all(fd, buf).map_err(|e| format!("write: {e}"))
}

/// An anonymous `MAP_SHARED` mapping, shared with children forked after it was made.
struct Shm {
    base: *mut u8,
    len: usize,
}

impl Shm {
    fn new(len: usize) -> Result<Self, String> {
        let (prot, flags) = (
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
        );
        // SAFETY: a fresh anonymous mapping: no address hint, no file, aliases nothing.
        let p = unsafe { libc::mmap(ptr::null_mut(), len, prot, flags, -1, 0) };
        if p == libc::MAP_FAILED {
            return Err(os_err(&format!(
                "mmap({len} bytes, MAP_SHARED|MAP_ANONYMOUS)"
            )));
        }
        Ok(Self {
            base: p.cast(),
            len,
        })
    }

    /// The atomic word at `offset`.
    fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(
            offset % 8 == 0 && offset + 8 <= self.len,
            "word {offset} outside the mapping"
        );
        // SAFETY: in bounds and 8-aligned (the base is page-aligned), zeroed by mmap, mapped for
        // as long as `&self` lives, and only ever accessed atomically, by either process.
        unsafe { AtomicU64::from_ptr(self.base.add(offset).cast()) }
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: `base..base + len` is our own mapping; every borrow of it (`word`) has ended.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Spins (Acquire loads) until `done(value)`; returns that value. Fails after `wait` without it.
fn spin_until(word: &AtomicU64, wait: Duration, done: impl Fn(u64) -> bool) -> Result<u64, String> {
    /// Spins between clock reads, so that the clock does not slow the fast path.
    const CHECK_EVERY: u32 = 1024;
    let mut deadline = None;
    let mut spins = 0u32;
    loop {
        let value = word.load(Ordering::Acquire);
        if done(value) {
            return Ok(value);
        }
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins % CHECK_EVERY == 0 {
            let now = Instant::now();
            match deadline {
                None => deadline = Some(now + wait),
                Some(d) if now >= d => return Err(format!("no progress within {wait:?}")),
                Some(_) => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips

/// Child: echoes 8-byte messages from `rx` to `tx` until EOF.
fn echo(rx: RawFd, tx: RawFd) -> i32 {
    let mut buf = [0u8; 8];
    loop {
        match read_full(rx, &mut buf) {
            Ok(true) => {}
            Ok(false) => return 0,
            Err(_) => return EXIT_IO,
        }
        if write_all(tx, &buf).is_err() {
            return EXIT_IO;
        }
    }
}

/// Round trips of an 8-byte counter that the child echoes; each end is `(rx, tx)`, and the
/// `OwnedFd`s of each side are the descriptors that side keeps.
fn echo_rt(
    what: &str,
    n: usize,
    placement: Placement,
    (parent_rx, parent_tx, parent_fds): (RawFd, RawFd, Vec<OwnedFd>),
    (child_rx, child_tx, child_fds): (RawFd, RawFd, Vec<OwnedFd>),
) -> Result<Latency, String> {
    let close: Vec<RawFd> = parent_fds.iter().map(AsRawFd::as_raw_fd).collect();
    run(
        what,
        placement,
        &close,
        || echo(child_rx, child_tx),
        || {
            drop(child_fds); // so that a dead child reads as EOF
            let mut seq = 0u64;
            let latency = sample(n, RT_BUDGET, || {
                seq += 1;
                send(parent_tx, &seq.to_ne_bytes())?;
                let mut back = [0u8; 8];
                recv_exact(parent_rx, &mut back, WAIT)?;
                match u64::from_ne_bytes(back) {
                    echoed if echoed == seq => Ok(()),
                    echoed => Err(format!("sent {seq}, child echoed {echoed}")),
                }
            });
            drop(parent_fds); // the child reads EOF and exits
            latency
        },
    )
}

/// Round trips of an 8-byte message over two pipes (parent → child, child → parent).
pub fn pipe_rt(n: usize, placement: Placement) -> Result<Latency, String> {
    let (down_rx, down_tx) = pipe().map_err(|e| format!("pipe_rt: {e}"))?;
    let (up_rx, up_tx) = pipe().map_err(|e| format!("pipe_rt: {e}"))?;
    let parent = (up_rx.as_raw_fd(), down_tx.as_raw_fd(), vec![up_rx, down_tx]);
    let child = (down_rx.as_raw_fd(), up_tx.as_raw_fd(), vec![down_rx, up_tx]);
    echo_rt("pipe_rt", n, placement, parent, child)
}

/// Round trips of an 8-byte message over an `AF_UNIX` `SOCK_STREAM` socketpair.
pub fn unix_socket_rt(n: usize, placement: Placement) -> Result<Latency, String> {
    let (mine, theirs) = socketpair().map_err(|e| format!("unix_socket_rt: {e}"))?;
    let (m, t) = (mine.as_raw_fd(), theirs.as_raw_fd());
    echo_rt(
        "unix_socket_rt",
        n,
        placement,
        (m, m, vec![mine]),
        (t, t, vec![theirs]),
    )
}

/// Round trips over two eventfds: the parent writes 1 to one, the child reads it and writes 1
/// to the other, which the parent reads.
pub fn eventfd_rt(n: usize, placement: Placement) -> Result<Latency, String> {
    let err = |e: String| format!("eventfd_rt: {e}");
    let (down_fd, up_fd) = (eventfd().map_err(err)?, eventfd().map_err(err)?);
    let (down, up) = (down_fd.as_raw_fd(), up_fd.as_raw_fd()); // both live until we return
    let child = move || {
        let mut buf = [0u8; 8];
        loop {
            if !matches!(read_full(down, &mut buf), Ok(true)) {
                return EXIT_IO;
            }
            if u64::from_ne_bytes(buf) != 1 {
                return 0; // the parent's stop value
            }
            if write_all(up, &1u64.to_ne_bytes()).is_err() {
                return EXIT_IO;
            }
        }
    };
    run("eventfd_rt", placement, &[], child, || {
        let latency = sample(n, RT_BUDGET, || {
            send(down, &1u64.to_ne_bytes())?;
            let mut buf = [0u8; 8];
            recv_exact(up, &mut buf, WAIT)?;
            match u64::from_ne_bytes(buf) {
                1 => Ok(()),
                got => Err(format!("eventfd counter {got}, expected 1")),
            }
        })?;
        send(down, &2u64.to_ne_bytes())?; // stop (an eventfd has no EOF)
        Ok(latency)
    })
}

/// Round trips through shared memory alone: the parent publishes a counter in one word
/// (`swap`, SeqCst), the child spins on it (Acquire loads) and publishes it back in another word
/// two cache lines away, on which the parent spins. The floor any shared-memory transport pays.
///
/// In [`Placement::Shared`] each spin lasts until the scheduler preempts the spinner, so this
/// stops after about 3 s with however many samples it has (at least one).
pub fn spin_floor_rt(n: usize, placement: Placement) -> Result<Latency, String> {
    let shm = Shm::new(4096).map_err(|e| format!("spin_floor_rt: {e}"))?;
    let (ping, pong) = (shm.word(0), shm.word(LINE));
    let child = || {
        let mut last = 0;
        loop {
            match spin_until(ping, CHILD_WAIT, |v| v != last) {
                Ok(QUIT) => return 0,
                Ok(v) => last = v,
                Err(_) => return EXIT_IO,
            }
            pong.swap(last, Ordering::SeqCst);
        }
    };
    run("spin_floor_rt", placement, &[], child, || {
        let mut seq = 0u64;
        let latency = sample(n, SPIN_BUDGET, || {
            seq += 1;
            ping.swap(seq, Ordering::SeqCst);
            spin_until(pong, WAIT, |v| v == seq).map(drop)
        });
        ping.swap(QUIT, Ordering::SeqCst);
        latency
    })
}

// ---------------------------------------------------------------------------------------------
// Throughput

/// A recognisable, non-constant payload.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(131) + 7) as u8).collect()
}

fn byte_sum(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0u64, |sum, &b| sum.wrapping_add(u64::from(b)))
}

/// Bytes per second over an `AF_UNIX` `SOCK_STREAM` socketpair: the parent writes
/// `total_bytes` in `msg`-byte writes, the child reads them into a `msg`-byte buffer and sums
/// every byte, and on EOF acknowledges with one byte (the low byte of the sum, which the parent
/// checks). Timed from the first write to the acknowledgement. Stops early (and reports the
/// bytes actually sent) after 10 s.
pub fn unix_socket_throughput(
    total_bytes: usize,
    msg: usize,
    placement: Placement,
) -> Result<f64, String> {
    const WHAT: &str = "unix_socket_throughput";
    if total_bytes == 0 || msg == 0 {
        return Err(format!("{WHAT}: total_bytes and msg must be > 0"));
    }
    let (mine, theirs) = socketpair().map_err(|e| format!("{WHAT}: {e}"))?;
    let (m, t) = (mine.as_raw_fd(), theirs.as_raw_fd());
    // Bound every blocking write: a stuck child must not hang the parent on a full socket.
    let tv = libc::timeval {
        tv_sec: WAIT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    let tv_len = size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: `tv` is a valid timeval and `tv_len` is its exact size.
    let rc = unsafe {
        libc::setsockopt(
            m,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            ptr::from_ref(&tv).cast(),
            tv_len,
        )
    };
    if rc != 0 {
        return Err(os_err(&format!("{WHAT}: setsockopt(SO_SNDTIMEO)")));
    }
    let (src, mut sink) = (pattern(msg), vec![0u8; msg]);
    let child = move || {
        let mut sum = 0u64;
        loop {
            match read_some(t, &mut sink) {
                Ok(0) => break,
                Ok(n) => sum = sum.wrapping_add(byte_sum(&sink[..n])),
                Err(_) => return EXIT_IO,
            }
        }
        match write_all(t, &[sum as u8]) {
            Ok(()) => 0,
            Err(_) => EXIT_IO,
        }
    };
    run(WHAT, placement, &[m], child, move || {
        drop(theirs);
        let full_sum = byte_sum(&src);
        let (mut sent, mut expect, mut writes) = (0usize, 0u64, 0u64);
        let start = Instant::now();
        while sent < total_bytes {
            writes += 1;
            if writes % 64 == 0 && start.elapsed() >= THROUGHPUT_BUDGET {
                break;
            }
            let len = msg.min(total_bytes - sent);
            send(m, &src[..len])?;
            expect = expect.wrapping_add(if len == msg {
                full_sum
            } else {
                byte_sum(&src[..len])
            });
            sent += len;
        }
        // SAFETY: `m` is our open socket; shutdown touches no memory.
        if unsafe { libc::shutdown(m, libc::SHUT_WR) } != 0 {
            return Err(os_err("shutdown(SHUT_WR)"));
        }
        let mut ack = [0u8; 1];
        recv_exact(m, &mut ack, WAIT)?;
        let secs = start.elapsed().as_secs_f64();
        if ack[0] != expect as u8 {
            return Err(format!(
                "checksum: child acked {:#04x}, expected {:#04x}",
                ack[0], expect as u8
            ));
        }
        drop(mine);
        Ok(sent as f64 / secs)
    })
}

/// The raw SPSC ring of [`shm_ring_throughput`], in `MAP_SHARED` memory.
#[derive(Clone, Copy)]
struct Ring<'a> {
    /// Messages published by the producer ([`QUIT`]: the consumer must exit).
    head: &'a AtomicU64,
    /// Messages consumed; on the consumer's line, with `checksum`.
    tail: &'a AtomicU64,
    /// The consumer's running checksum, valid up to `tail`.
    checksum: &'a AtomicU64,
    slots: *mut u8,
    slot: usize,
    count: usize,
    total_bytes: usize,
}

impl Ring<'_> {
    fn slot_ptr(&self, k: u64) -> *mut u8 {
        // SAFETY: `k % count < count`, so the offset stays inside the `count * slot` bytes.
        unsafe { self.slots.add((k % self.count as u64) as usize * self.slot) }
    }

    /// Length of the message that follows the first `sent` bytes.
    fn len(&self, sent: usize) -> usize {
        self.slot.min(self.total_bytes - sent)
    }
}

/// What the consumer sums of each message: its first, middle and last bytes.
fn spot_sum(msg: &[u8]) -> u64 {
    [msg[0], msg[msg.len() / 2], msg[msg.len() - 1]]
        .iter()
        .map(|&b| u64::from(b))
        .sum()
}

/// Child: copies each published slot out into `dst`, spot-sums it, releases it.
fn consume(ring: Ring<'_>, mut dst: Vec<u8>) -> i32 {
    let (mut k, mut published, mut got, mut sum) = (0u64, 0u64, 0usize, 0u64);
    loop {
        if k == published {
            published = match spin_until(ring.head, CHILD_WAIT, |h| h != k) {
                Ok(QUIT) => return 0,
                Ok(h) => h,
                Err(_) => return EXIT_IO,
            };
        }
        let len = ring.len(got);
        // SAFETY: slot `k` was published (head > k, read with Acquire) and the producer does not
        // touch it again until `tail` passes `k`; `dst` holds `slot >= len` bytes.
        unsafe { ptr::copy_nonoverlapping(ring.slot_ptr(k), dst.as_mut_ptr(), len) };
        let copied = std::hint::black_box(&dst[..len]); // the copy must really happen
        sum = sum.wrapping_add(spot_sum(copied));
        got += len;
        k += 1;
        ring.checksum.store(sum, Ordering::Relaxed);
        ring.tail.store(k, Ordering::Release);
    }
}

/// Bytes per second through a raw SPSC ring of `slots` × `slot` bytes in `MAP_SHARED` memory,
/// with `head` and `tail` counters on separate cache lines: the parent copies a `slot`-byte
/// source buffer into each free slot and publishes it, the child copies each published slot
/// out into a private buffer, spot-sums it and releases it. Timed from the first copy in until
/// the child has released every slot (its checksum is checked). The "raw shared-memory ring"
/// reference; stops early (and reports the bytes actually moved) after 10 s.
pub fn shm_ring_throughput(
    total_bytes: usize,
    slot: usize,
    slots: usize,
    placement: Placement,
) -> Result<f64, String> {
    const WHAT: &str = "shm_ring_throughput";
    /// Where the slots start: a page after the counters.
    const DATA: usize = 4096;
    if total_bytes == 0 || slot == 0 || slots == 0 {
        return Err(format!("{WHAT}: total_bytes, slot and slots must be > 0"));
    }
    let len = slot.checked_mul(slots).and_then(|d| d.checked_add(DATA));
    let shm = Shm::new(len.ok_or(format!("{WHAT}: {slots} x {slot} bytes overflow"))?)
        .map_err(|e| format!("{WHAT}: {e}"))?;
    let ring = Ring {
        head: shm.word(0),
        tail: shm.word(LINE),
        checksum: shm.word(LINE + 8),
        // SAFETY: `DATA < len`, so this stays inside the mapping.
        slots: unsafe { shm.base.add(DATA) },
        slot,
        count: slots,
        total_bytes,
    };
    let (src, dst) = (pattern(slot), vec![0u8; slot]);
    run(
        WHAT,
        placement,
        &[],
        move || consume(ring, dst),
        || {
            let (mut k, mut free_below, mut sent, mut expect) = (0u64, slots as u64, 0usize, 0u64);
            let start = Instant::now();
            while sent < total_bytes {
                if k % 64 == 63 && start.elapsed() >= THROUGHPUT_BUDGET {
                    break;
                }
                if k == free_below {
                    // Slot `k` is free once the consumer has released message `k - slots`.
                    free_below =
                        spin_until(ring.tail, WAIT, |t| t + slots as u64 > k)? + slots as u64;
                }
                let len = ring.len(sent);
                // SAFETY: slot `k` lies in the ring and was released (tail > k - slots, Acquire);
                // the consumer does not read it before `head` passes `k`; `src` has `len` bytes.
                unsafe { ptr::copy_nonoverlapping(src.as_ptr(), ring.slot_ptr(k), len) };
                k += 1;
                ring.head.store(k, Ordering::Release);
                expect = expect.wrapping_add(spot_sum(&src[..len]));
                sent += len;
            }
            spin_until(ring.tail, WAIT, |t| t == k)?;
            let secs = start.elapsed().as_secs_f64();
            let sum = ring.checksum.load(Ordering::Relaxed); // ordered by the Acquire on `tail`
            ring.head.store(QUIT, Ordering::Release);
            if sum != expect {
                return Err(format!("checksum: child summed {sum}, expected {expect}"));
            }
            Ok(sent as f64 / secs)
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Placement probe

/// Mean cache-line round trip between two threads, in ns (20 000 rounds, 5 s at most): which
/// vCPU placement the host gave us. NaN if the other thread never ran (or could not start).
/// Pins nothing.
pub fn probe() -> f64 {
    const ROUNDS: u64 = 20_000;
    let line = Arc::new(AtomicU64::new(0));
    let other = Arc::clone(&line);
    let deadline = Instant::now() + Duration::from_secs(5);
    let left = move || deadline.saturating_duration_since(Instant::now());
    let spawned = std::thread::Builder::new()
        .name("peers-probe".into())
        .spawn(move || {
            for i in 0..ROUNDS {
                if spin_until(&other, left(), |v| v == 2 * i + 1).is_err() {
                    return;
                }
                other.store(2 * i + 2, Ordering::Release);
            }
        });
    let Ok(thread) = spawned else { return f64::NAN };
    let start = Instant::now();
    for i in 0..ROUNDS {
        line.store(2 * i + 1, Ordering::Release);
        if spin_until(&line, left(), |v| v == 2 * i + 2).is_err() {
            let _ = thread.join();
            return f64::NAN;
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / ROUNDS as f64;
    match thread.join() {
        Ok(()) => ns,
        Err(_) => f64::NAN,
    }
}

/// "near" if both probes are under 250 ns, "far" if neither is, "mixed" otherwise.
pub fn label(before: f64, after: f64) -> &'static str {
    let near = |ns: f64| ns < 250.0;
    match (near(before), near(after)) {
        (true, true) => "near",
        (false, false) => "far",
        _ => "mixed",
    }
}
