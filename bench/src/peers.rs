//! Peer measurements for the cross-process IPC section of the suite: what the same job costs over the
//! transports a user would otherwise pick, measured the same way as subring.
//!
//! Each measurement sets everything up (pipes, socketpairs, eventfds, `MAP_SHARED` memory), forks
//! one child, pins parent and child as [`Placement`] says, and measures in the parent:
//!
//! * round trips ([`pipe_rt`], [`unix_socket_rt`], [`eventfd_rt`], [`spin_floor_rt`]): the
//!   parent sends an 8-byte message (or publishes a counter in shared memory) and the child
//!   echoes it; one sample per round trip, after `n / 10` untimed warm-up round trips;
//! * throughput ([`unix_socket_throughput`], [`shm_ring_throughput`]): bytes per second from the
//!   first byte written until the consumer acknowledges that it has read (copied out, summed)
//!   all of it; the acknowledgement carries a checksum that the parent verifies.
//!
//! [`probe`] and [`label`] tell which vCPU placement the host gave us ("near" or "far").
//!
//! Nothing here can hang, though the round trips block as their users would (plain blocking
//! reads, no timeouts): the parent's side of a measurement is interrupted by a SIGALRM after a
//! minute (`ParentAlarm`), spins check a deadline, socket throughput has socket timeouts, a
//! child lives two minutes at most (SIGALRM, default action), children are SIGKILLed if the
//! parent dies (`PR_SET_PDEATHSIG`), and are always reaped, killed if they do not exit in time. Failures come back as `Err(String)` saying what
//! failed. Call these while the process is single-threaded: the child of `fork()` only runs a
//! loop of raw syscalls and atomics, then `_exit`s.

// The words below live in `MAP_SHARED` memory shared by two processes, which the loom shim
// (`subring_planes::sync`) cannot model: use the std atomics directly.
#![allow(clippy::disallowed_types)]

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::mem::size_of;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::ptr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the parent waits for any one reply (or for progress in a spin) before failing.
const WAIT: Duration = Duration::from_secs(5);
/// How long a spinning child waits for the parent's next message before giving up.
pub(crate) const CHILD_WAIT: Duration = Duration::from_secs(30);
/// How long a child gets to exit once told to stop, before it is killed.
const REAP_WITHIN: Duration = Duration::from_secs(2);
/// Time budgets after which a measurement stops early and reports what it has: spinning in
/// [`Placement::Shared`] takes a scheduler tick per handoff, so the spinners get less.
pub(crate) const RT_BUDGET: Duration = Duration::from_secs(20);
const SOCKET_BUDGET: Duration = Duration::from_secs(10);
const SPIN_BUDGET: Duration = Duration::from_secs(3);
/// Child exit codes.
const EXIT_PIN: i32 = 3;
const EXIT_IO: i32 = 4;
const EXIT_ORPHAN: i32 = 5;
const EXIT_PANIC: i32 = 101;
/// Distance between words written by different processes (two lines: adjacent-line prefetch).
const LINE: usize = 128;
/// Value of a shared word that tells the child to exit.
pub(crate) const QUIT: u64 = u64::MAX;

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

    /// `points` evenly spaced quantiles from 0 to 1 (the last one the maximum), as
    /// `(quantile, ns)`: the distribution, for a chart.
    pub fn cdf(&self, points: usize) -> Vec<(f64, f64)> {
        let mut sorted = self.samples_ns.clone();
        if sorted.is_empty() || points < 2 {
            return Vec::new();
        }
        sorted.sort_unstable();
        (0..points)
            .map(|i| {
                let q = i as f64 / (points - 1) as f64;
                let at = ((q * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1);
                (q, sorted[at] as f64)
            })
            .collect()
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

/// Describes a failed I/O call, naming a socket timeout (`SO_SNDTIMEO`/`SO_RCVTIMEO`) as one.
fn io_err(what: &str) -> impl Fn(io::Error) -> String + '_ {
    move |e| match e.kind() {
        io::ErrorKind::WouldBlock => format!("{what}: timed out after {WAIT:?}"),
        _ => format!("{what}: {e}"),
    }
}

/// Pins the calling thread to `cpu` without allocating (so that a forked child may call it).
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
    match unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), set) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
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
}

impl Drop for AffinityGuard {
    fn drop(&mut self) {
        // The mask was valid when saved; should CPUs have gone offline since, the kernel refuses
        // and keeps the current mask, and there is nobody to tell in a destructor.
        let _ = set_affinity(&self.saved);
    }
}

impl fmt::Debug for AffinityGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AffinityGuard").finish_non_exhaustive()
    }
}

/// A forked child process. Dropping it without [`Child::reap`] kills and reaps it.
#[derive(Debug)]
pub struct Child {
    pid: libc::pid_t,
    reaped: bool,
}

/// Forks a child that closes `close_in_child` (the parent's ends of pipes and sockets, so that
/// it reads EOF once the parent closes them), pins itself to `cpu`, runs `body` and `_exit`s with
/// the code `body` returns (3 if it could not pin itself, 101 if `body` panicked). The child is
/// SIGKILLed if the parent dies, and never returns into the caller. In the parent, `body` is
/// dropped right after the fork, closing whatever it owns (such as the child's ends).
///
/// Call it while single-threaded, or with a `body` that only makes async-signal-safe calls: in
/// the child, a lock that another thread held at the fork is never released.
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

/// How long a forked child may live, in seconds: far longer than any one measurement.
const CHILD_LIFETIME_SECS: u32 = 120;

fn child_main(parent: libc::pid_t, cpu: usize, close: &[RawFd], body: impl FnOnce() -> i32) -> i32 {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory.
    let armed = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    // SAFETY: getppid has no preconditions and cannot fail.
    if armed != 0 || unsafe { libc::getppid() } != parent {
        return EXIT_ORPHAN; // the parent died before the death signal was armed
    }
    for &fd in close {
        // SAFETY: these are the child's copies of the parent's ends; nothing in the child uses
        // them again (their owners are never dropped here: the child `_exit`s).
        unsafe { libc::close(fd) };
    }
    if try_pin(cpu).is_err() {
        return EXIT_PIN;
    }
    // A backstop for waits without a timeout on either side: a child that wedges is killed
    // by SIGALRM's default action (a handler the parent had installed is reset first), which
    // ends the parent's wait with EOF or a hang-up.
    // SAFETY: signal() resets a disposition and alarm() takes seconds; neither touches memory.
    unsafe {
        libc::signal(libc::SIGALRM, libc::SIG_DFL);
        libc::alarm(CHILD_LIFETIME_SECS);
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

    /// `waitpid` with `flags`: `Some(status)` once reaped, `None` while running (WNOHANG).
    fn wait(&mut self, flags: libc::c_int) -> Result<Option<libc::c_int>, String> {
        let mut status = 0;
        loop {
            // SAFETY: `status` is a valid out-pointer; `pid` is our own child, not reaped yet.
            let rc = unsafe { libc::waitpid(self.pid, &mut status, flags) };
            if rc == self.pid {
                self.reaped = true;
                return Ok(Some(status));
            } else if rc == 0 {
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
    if libc::WIFSIGNALED(status) {
        return Err(format!("child killed by signal {}", libc::WTERMSIG(status)));
    }
    match libc::WEXITSTATUS(status) {
        0 => Ok(()),
        EXIT_PIN => Err("child could not pin itself to its CPU".into()),
        EXIT_IO => Err("child failed to read, write or make progress".into()),
        EXIT_ORPHAN => Err("child could not arm PR_SET_PDEATHSIG".into()),
        EXIT_PANIC => Err("child panicked".into()),
        code => Err(format!("child exited with code {code}")),
    }
}

/// Pins the parent, forks `child` (pinned), runs `parent`, then reaps the child, killing it
/// first if `parent` failed; restores the caller's CPU mask.
pub(crate) fn run<T>(
    what: &str,
    placement: Placement,
    close_in_child: &[RawFd],
    child: impl FnOnce() -> i32,
    parent: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    let (parent_cpu, child_cpu) = placement.cpus();
    let _restore = AffinityGuard::pin(parent_cpu).map_err(|e| format!("{what}: {e}"))?;
    let kid = fork_pinned(child_cpu, close_in_child, child).map_err(|e| format!("{what}: {e}"))?;
    let result = ParentAlarm::arm().and_then(|_alarm| parent());
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
pub(crate) fn sample(
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
    let mut samples_ns = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        round_trip()?;
        let t1 = Instant::now();
        samples_ns.push(u64::try_from((t1 - t0).as_nanos()).unwrap_or(u64::MAX));
        if t1 >= start + budget {
            break;
        }
    }
    Ok(Latency { samples_ns })
}

/// A pipe, as `(read end, write end)`.
fn pipe() -> Result<(File, File), String> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_err("pipe2"));
    }
    // SAFETY: pipe2 succeeded, so both are fresh descriptors that nothing else owns.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

fn eventfd() -> Result<File, String> {
    eventfd_with(0)
}

fn eventfd_with(flags: libc::c_int) -> Result<File, String> {
    // SAFETY: eventfd takes plain integers and touches no memory.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | flags) };
    if fd < 0 {
        return Err(os_err("eventfd"));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// One side's ends of a channel: `(rx, tx)`.
type Ends = (File, File);

/// A connected `AF_UNIX` `SOCK_STREAM` pair, each side as [`Ends`] (two descriptors).
fn socket_ends() -> Result<(Ends, Ends), String> {
    let split = |s: UnixStream| -> io::Result<Ends> {
        let rx = File::from(OwnedFd::from(s));
        Ok((rx.try_clone()?, rx))
    };
    let (a, b) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    Ok((
        split(a).map_err(|e| format!("dup: {e}"))?,
        split(b).map_err(|e| format!("dup: {e}"))?,
    ))
}

/// Reads all of `buf` from `rx`, blocking as a plain `read` loop does: the peers wait the way a
/// user of a pipe, socket or eventfd would, with no `poll` and no timer in the way. The wait is
/// still bounded: [`run`] arms a [`ParentAlarm`], whose signal makes a read still blocked when
/// it fires fail with `EINTR`, reported here.
fn recv(rx: &File, buf: &mut [u8]) -> Result<(), String> {
    let mut got = 0;
    while got < buf.len() {
        let rest = &mut buf[got..];
        // SAFETY: `rest` is valid for writes of `rest.len()` bytes; `rx` is an open descriptor.
        let n = unsafe { libc::read(rx.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len()) };
        match n {
            0 => return Err("the child closed its end (EOF)".into()),
            n if n > 0 => got += n as usize,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {
                return Err(format!(
                    "no reply within {PARENT_LIMIT_SECS} s (interrupted by the time limit)"
                ))
            }
            _ => return Err(os_err("read")),
        }
    }
    Ok(())
}

/// How long the parent side of one measurement may take, in seconds, before its blocking waits
/// are interrupted: far longer than any measurement's budget.
const PARENT_LIMIT_SECS: u32 = 60;

/// While it lives, a SIGALRM is due [`PARENT_LIMIT_SECS`] after it was armed, with a handler
/// that does nothing and is installed without `SA_RESTART`: a blocking system call still waiting
/// then fails with `EINTR` instead of hanging the suite. Dropping it cancels the alarm and puts
/// back the previous handler.
struct ParentAlarm {
    previous: libc::sigaction,
}

extern "C" fn on_parent_alarm(_signal: libc::c_int) {}

impl ParentAlarm {
    fn arm() -> Result<Self, String> {
        // SAFETY: an all-zero sigaction is a valid value (no handler, empty mask, no flags).
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_parent_alarm as extern "C" fn(libc::c_int) as usize;
        // SAFETY: zeroed: `previous` is only read back after sigaction filled it in.
        let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid sigactions; the handler is async-signal-safe (it
        // does nothing) and lives for the whole program.
        if unsafe { libc::sigaction(libc::SIGALRM, &action, &mut previous) } != 0 {
            return Err(os_err("sigaction(SIGALRM)"));
        }
        // SAFETY: alarm takes a number of seconds and touches no memory.
        unsafe { libc::alarm(PARENT_LIMIT_SECS) };
        Ok(ParentAlarm { previous })
    }
}

impl Drop for ParentAlarm {
    fn drop(&mut self) {
        // SAFETY: alarm(0) cancels the pending alarm; `previous` came from sigaction.
        unsafe {
            libc::alarm(0);
            libc::sigaction(libc::SIGALRM, &self.previous, ptr::null_mut());
        }
    }
}

/// An anonymous `MAP_SHARED` mapping, shared with children forked after it was made.
struct Shm {
    base: *mut u8,
    len: usize,
}

impl Shm {
    fn new(len: usize) -> Result<Self, String> {
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_SHARED | libc::MAP_ANONYMOUS;
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

    /// The 32-bit atomic word at `offset` (a futex).
    fn word32(&self, offset: usize) -> &AtomicU32 {
        assert!(
            offset % 4 == 0 && offset + 4 <= self.len,
            "word {offset} outside the mapping"
        );
        // SAFETY: as for `word`, 4-aligned.
        unsafe { AtomicU32::from_ptr(self.base.add(offset).cast()) }
    }
}

/// `FUTEX_WAKE` of one waiter on `word` (shared: the word is in memory both processes map).
fn futex_wake(word: &AtomicU32) -> Result<(), String> {
    // SAFETY: FUTEX_WAKE only uses the address to find waiters; the word is live and aligned.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            1,
            ptr::null::<libc::timespec>(),
            ptr::null::<u32>(),
            0,
        )
    };
    if r < 0 {
        return Err(os_err("futex(FUTEX_WAKE)"));
    }
    Ok(())
}

/// `FUTEX_WAIT` on `word` while it holds `seen`, with no timeout. EAGAIN (it changed) is a
/// success; EINTR (the parent's time limit) is an error.
fn futex_wait(word: &AtomicU32, seen: u32) -> Result<(), String> {
    // SAFETY: FUTEX_WAIT reads the live, aligned word and compares it with `seen` atomically
    // with going to sleep; no timeout pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            seen,
            ptr::null::<libc::timespec>(),
            ptr::null::<u32>(),
            0,
        )
    };
    if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN) {
        return Err(os_err("futex(FUTEX_WAIT)"));
    }
    Ok(())
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: `base..base + len` is our own mapping, and no borrow of it outlives `self`.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Spins (Acquire loads) until `done(value)`; returns that value. Fails after `wait` without.
fn spin_until(word: &AtomicU64, wait: Duration, done: impl Fn(u64) -> bool) -> Result<u64, String> {
    /// Spins between clock reads, so that reading the clock does not slow the fast path.
    const CHECK_EVERY: u32 = 1024;
    let (mut deadline, mut spins) = (None, 0u32);
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

/// Round trips of an 8-byte counter that the child echoes; each side's ends are `(rx, tx)`.
fn echo_rt(
    what: &str,
    n: usize,
    placement: Placement,
    (parent_rx, parent_tx): Ends,
    (child_rx, child_tx): Ends,
) -> Result<Latency, String> {
    let close = [parent_rx.as_raw_fd(), parent_tx.as_raw_fd()];
    let echo = move || {
        let mut buf = [0u8; 8];
        // EOF or an error ends the child: the parent is done (or gone).
        while (&child_rx).read_exact(&mut buf).is_ok() {
            if (&child_tx).write_all(&buf).is_err() {
                return EXIT_IO;
            }
        }
        0
    };
    run(what, placement, &close, echo, || {
        let mut seq = 0u64;
        let latency = sample(n, RT_BUDGET, || {
            seq += 1;
            (&parent_tx)
                .write_all(&seq.to_ne_bytes())
                .map_err(io_err("write"))?;
            let mut back = [0u8; 8];
            recv(&parent_rx, &mut back)?;
            match u64::from_ne_bytes(back) {
                echoed if echoed == seq => Ok(()),
                echoed => Err(format!("sent {seq}, child echoed {echoed}")),
            }
        });
        drop((parent_rx, parent_tx)); // the child reads EOF and exits
        latency
    })
}

/// Round trips of an 8-byte message over two pipes (parent → child, child → parent).
pub fn pipe_rt(n: usize, placement: Placement) -> Result<Latency, String> {
    let (down_rx, down_tx) = pipe().map_err(|e| format!("pipe_rt: {e}"))?;
    let (up_rx, up_tx) = pipe().map_err(|e| format!("pipe_rt: {e}"))?;
    echo_rt("pipe_rt", n, placement, (up_rx, down_tx), (down_rx, up_tx))
}

/// Round trips of an 8-byte message over an `AF_UNIX` `SOCK_STREAM` socketpair.
pub fn unix_socket_rt(n: usize, placement: Placement) -> Result<Latency, String> {
    let (parent, child) = socket_ends().map_err(|e| format!("unix_socket_rt: {e}"))?;
    echo_rt("unix_socket_rt", n, placement, parent, child)
}

/// Round trips over two eventfds: the parent writes 1 to one; the child reads it and writes 1
/// to the other, which the parent reads.
pub fn eventfd_rt(n: usize, placement: Placement) -> Result<Latency, String> {
    let err = |e: String| format!("eventfd_rt: {e}");
    let (down, up) = (eventfd().map_err(err)?, eventfd().map_err(err)?);
    let child = || {
        let mut buf = [0u8; 8];
        loop {
            if (&down).read_exact(&mut buf).is_err() {
                return EXIT_IO;
            } else if u64::from_ne_bytes(buf) != 1 {
                return 0; // the parent's stop value
            } else if (&up).write_all(&1u64.to_ne_bytes()).is_err() {
                return EXIT_IO;
            }
        }
    };
    run("eventfd_rt", placement, &[], child, || {
        let latency = sample(n, RT_BUDGET, || {
            (&down)
                .write_all(&1u64.to_ne_bytes())
                .map_err(io_err("write"))?;
            let mut buf = [0u8; 8];
            recv(&up, &mut buf)?;
            match u64::from_ne_bytes(buf) {
                1 => Ok(()),
                got => Err(format!("eventfd counter {got}, expected 1")),
            }
        })?;
        // An eventfd has no EOF: tell the child to stop.
        (&down)
            .write_all(&2u64.to_ne_bytes())
            .map_err(io_err("write"))?;
        Ok(latency)
    })
}

/// An edge-triggered `epoll` set holding one non-blocking eventfd: waiting never reads the
/// counter (each write is an edge), as subring's eventfd signal waits.
struct EdgeWait(File);

impl EdgeWait {
    fn new(efd: &File) -> Result<Self, String> {
        // SAFETY: epoll_create1 takes a flag and touches no memory.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(os_err("epoll_create1"));
        }
        // SAFETY: `ep` is a fresh descriptor that nothing else owns.
        let ep = unsafe { File::from_raw_fd(ep) };
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: both descriptors are open; `ev` is a valid event the kernel copies.
        if unsafe {
            libc::epoll_ctl(
                ep.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                efd.as_raw_fd(),
                &mut ev,
            )
        } != 0
        {
            return Err(os_err("epoll_ctl"));
        }
        Ok(EdgeWait(ep))
    }

    /// Waits, with no timeout, for the next write.
    fn wait(&self) -> Result<(), String> {
        let mut ev = [libc::epoll_event { events: 0, u64: 0 }];
        // SAFETY: `ev` has room for the one event we ask for.
        match unsafe { libc::epoll_wait(self.0.as_raw_fd(), ev.as_mut_ptr(), 1, -1) } {
            1 => Ok(()),
            // The parent's time limit (a child has no handler: SIGALRM kills it).
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {
                Err("interrupted by the time limit".into())
            }
            _ => Err(os_err("epoll_wait")),
        }
    }
}

/// [`eventfd_rt`] with both sides waiting the way subring's eventfd mode does: in an
/// edge-triggered `epoll` on a non-blocking eventfd, without a timeout, never reading the
/// counter (subring waits in epoll because its sides also watch sockets and other rings: a
/// client notices a dead server through its control socket's hang-up, registered in the same
/// epoll set, which costs nothing per wait). Against [`eventfd_rt`] this is the price of that
/// way of waiting; subring's eventfd mode against this is the price of its shared-memory rings.
pub fn eventfd_epoll_rt(n: usize, placement: Placement) -> Result<Latency, String> {
    let err = |e: String| format!("eventfd_epoll_rt: {e}");
    let (down, up) = (
        eventfd_with(libc::EFD_NONBLOCK).map_err(err)?,
        eventfd_with(libc::EFD_NONBLOCK).map_err(err)?,
    );
    let shm = Shm::new(4096).map_err(err)?;
    let stop = shm.word(0);
    let child = || {
        let Ok(waiter) = EdgeWait::new(&down) else {
            return EXIT_IO;
        };
        loop {
            if waiter.wait().is_err() {
                return EXIT_IO;
            } else if stop.load(Ordering::Acquire) != 0 {
                return 0;
            } else if (&up).write_all(&1u64.to_ne_bytes()).is_err() {
                return EXIT_IO;
            }
        }
    };
    run("eventfd_epoll_rt", placement, &[], child, || {
        let waiter = EdgeWait::new(&up)?;
        let latency = sample(n, RT_BUDGET, || {
            (&down)
                .write_all(&1u64.to_ne_bytes())
                .map_err(io_err("write"))?;
            waiter.wait()
        })?;
        stop.store(1, Ordering::Release);
        (&down)
            .write_all(&1u64.to_ne_bytes())
            .map_err(io_err("write"))?;
        Ok(latency)
    })
}

/// Round trips through two futex words in shared memory, always waking: the parent stores a
/// counter in one word and wakes it; the child, asleep on it, stores the counter in the other
/// word and wakes that, on which the parent sleeps. The raw form of subring's futex mode (which
/// wakes only a side that announced sleep, and carries entries in rings).
pub fn futex_rt(n: usize, placement: Placement) -> Result<Latency, String> {
    const FUTEX_QUIT: u32 = u32::MAX;
    let shm = Shm::new(4096).map_err(|e| format!("futex_rt: {e}"))?;
    let (ping, pong) = (shm.word32(0), shm.word32(LINE));
    let child = || {
        let mut last = 0;
        loop {
            let v = ping.load(Ordering::Acquire);
            if v == last {
                if futex_wait(ping, last).is_err() {
                    return EXIT_IO;
                }
                continue;
            }
            if v == FUTEX_QUIT {
                return 0;
            }
            last = v;
            pong.store(v, Ordering::Release);
            if futex_wake(pong).is_err() {
                return EXIT_IO;
            }
        }
    };
    run("futex_rt", placement, &[], child, || {
        let mut seq = 0u32;
        let latency = sample(n, RT_BUDGET, || {
            seq += 1;
            ping.store(seq, Ordering::Release);
            futex_wake(ping)?;
            loop {
                let v = pong.load(Ordering::Acquire);
                if v == seq {
                    return Ok(());
                }
                futex_wait(pong, v)?;
            }
        });
        ping.store(FUTEX_QUIT, Ordering::Release);
        futex_wake(ping)?;
        latency
    })
}

/// Round trips through shared memory alone: the parent publishes a counter in one word (`swap`,
/// SeqCst); the child spins on it (Acquire loads) and publishes it back in another word two
/// cache lines away, on which the parent spins. The floor of any shared-memory transport.
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

/// A recognisable, non-constant payload.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(131) + 7) as u8).collect()
}

/// The sum of all bytes (per 256-byte chunk in `u16`, which cannot overflow and vectorises).
fn byte_sum(bytes: &[u8]) -> u64 {
    let chunk_sum = |c: &[u8]| u64::from(c.iter().map(|&b| u16::from(b)).sum::<u16>());
    bytes.chunks(256).map(chunk_sum).sum()
}

/// Bytes per second over an `AF_UNIX` `SOCK_STREAM` socketpair: the parent writes `total_bytes`
/// in `msg`-byte writes; the child reads them into a `msg`-byte buffer, sums every byte, and at
/// EOF acknowledges with one byte (the low byte of the sum, which the parent checks). Timed from
/// the first write to the acknowledgement. Stops early (counting the bytes sent) after 10 s.
pub fn unix_socket_throughput(
    total_bytes: usize,
    msg: usize,
    placement: Placement,
) -> Result<f64, String> {
    const WHAT: &str = "unix_socket_throughput";
    if total_bytes == 0 || msg == 0 {
        return Err(format!("{WHAT}: total_bytes and msg must be > 0"));
    }
    let (mine, theirs) = UnixStream::pair().map_err(|e| format!("{WHAT}: socketpair: {e}"))?;
    // Bound every blocking call: a stuck child must not hang the parent on a full socket.
    let timeouts = mine
        .set_write_timeout(Some(WAIT))
        .and_then(|()| mine.set_read_timeout(Some(WAIT)));
    timeouts.map_err(|e| format!("{WHAT}: setting socket timeouts: {e}"))?;
    let (src, mut sink) = (pattern(msg), vec![0u8; msg]);
    let child = move || {
        let mut sum = 0u64;
        loop {
            match (&theirs).read(&mut sink) {
                Ok(0) => break,
                Ok(n) => sum = sum.wrapping_add(byte_sum(&sink[..n])),
                Err(_) => return EXIT_IO,
            }
        }
        (&theirs).write_all(&[sum as u8]).map_or(EXIT_IO, |()| 0)
    };
    run(WHAT, placement, &[mine.as_raw_fd()], child, || {
        let (mut sent, mut writes) = (0usize, 0u64);
        let start = Instant::now();
        while sent < total_bytes && (writes % 64 != 63 || start.elapsed() < SOCKET_BUDGET) {
            let len = msg.min(total_bytes - sent);
            (&mine).write_all(&src[..len]).map_err(io_err("write"))?;
            sent += len;
            writes += 1;
        }
        mine.shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown(SHUT_WR): {e}"))?;
        let mut ack = [0u8; 1];
        (&mine)
            .read_exact(&mut ack)
            .map_err(io_err("reading the ack"))?;
        let secs = start.elapsed().as_secs_f64();
        // Every write but the last was a whole `src`.
        let whole = byte_sum(&src).wrapping_mul((sent / msg) as u64);
        let expect = whole.wrapping_add(byte_sum(&src[..sent % msg]));
        if ack[0] != expect as u8 {
            return Err(format!(
                "checksum: child acked {}, expected {}",
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
    /// The consumer's running checksum, up to date with `tail`.
    checksum: &'a AtomicU64,
    data: *mut u8,
    slot: usize,
    slots: usize,
    total_bytes: usize,
}

impl Ring<'_> {
    fn slot_ptr(&self, k: u64) -> *mut u8 {
        // SAFETY: `k % slots < slots`, so the offset stays inside the `slots * slot` data bytes.
        unsafe { self.data.add((k % self.slots as u64) as usize * self.slot) }
    }

    /// Length of the message that follows the first `sent` bytes.
    fn len(&self, sent: usize) -> usize {
        self.slot.min(self.total_bytes - sent)
    }
}

/// What the consumer sums of each message: its first, middle and last bytes.
fn spot_sum(msg: &[u8]) -> u64 {
    [msg[0], msg[msg.len() / 2], msg[msg.len() - 1]]
        .map(u64::from)
        .iter()
        .sum()
}

/// Child: copies each published slot out into `dst`, spot-sums the copy, releases the slot.
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
        sum = sum.wrapping_add(spot_sum(std::hint::black_box(&dst[..len]))); // really copy
        got += len;
        k += 1;
        ring.checksum.store(sum, Ordering::Relaxed);
        ring.tail.store(k, Ordering::Release);
    }
}

/// Bytes per second through a raw SPSC ring of `slots` × `slot` bytes in `MAP_SHARED` memory,
/// with `head` and `tail` counters on separate cache lines: the parent copies a `slot`-byte
/// source buffer into each free slot and publishes it; the child copies each published slot out
/// into a private buffer, spot-sums it and releases it. Timed from the first copy in until the
/// child has released every slot (its checksum is checked). The "raw shared-memory ring"
/// reference. Stops early (counting the bytes moved) after 3 s, which in [`Placement::Shared`]
/// (one scheduler tick per ring's worth) it does.
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
        // SAFETY: the mapping holds `DATA + slots * slot` bytes.
        data: unsafe { shm.base.add(DATA) },
        slot,
        slots,
        total_bytes,
    };
    // SAFETY: the data bytes lie inside the mapping, and no other process exists yet. Touching
    // them now keeps page faults out of the timed loop.
    unsafe { ptr::write_bytes(ring.data, 1, slots * slot) };
    let (src, dst, depth) = (pattern(slot), vec![1u8; slot], slots as u64);
    let producer = || {
        let (mut k, mut free_below, mut sent, mut expect) = (0u64, depth, 0usize, 0u64);
        let start = Instant::now();
        while sent < total_bytes && (k % 64 != 63 || start.elapsed() < SPIN_BUDGET) {
            if k == free_below {
                // Slot `k` is free once the consumer has released message `k - slots`.
                free_below = spin_until(ring.tail, WAIT, |t| t + depth > k)? + depth;
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
    };
    run(WHAT, placement, &[], move || consume(ring, dst), producer)
}

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
    thread.join().map_or(f64::NAN, |()| ns)
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
