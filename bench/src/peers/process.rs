//! Child processes: pinning, forking a pinned child, reaping it, the parent's alarm, and
//! sampling round trips.

use super::*;

pub(super) fn os_err(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

/// Describes a failed I/O call, naming a socket timeout (`SO_SNDTIMEO`/`SO_RCVTIMEO`) as one.
pub(super) fn io_err(what: &str) -> impl Fn(io::Error) -> String + '_ {
    move |e| match e.kind() {
        io::ErrorKind::WouldBlock => format!("{what}: timed out after {WAIT:?}"),
        _ => format!("{what}: {e}"),
    }
}

/// Pins the calling thread to `cpu` without allocating (so that a forked child may call it).
pub(super) fn try_pin(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `cpu_set_t` is a plain bit array, for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu < CPU_SETSIZE` (checked above), so the bit lies inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    set_affinity(&set)
}

pub(super) fn set_affinity(set: &libc::cpu_set_t) -> io::Result<()> {
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
pub(super) const CHILD_LIFETIME_SECS: u32 = 120;

pub(super) fn child_main(
    parent: libc::pid_t,
    cpu: usize,
    close: &[RawFd],
    body: impl FnOnce() -> i32,
) -> i32 {
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
    pub(super) fn wait(&mut self, flags: libc::c_int) -> Result<Option<libc::c_int>, String> {
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

pub(super) fn exit_status(status: libc::c_int) -> Result<(), String> {
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

/// How long the parent side of one measurement may take, in seconds, before its blocking waits
/// are interrupted: far longer than any measurement's budget.
pub(super) const PARENT_LIMIT_SECS: u32 = 60;

/// While it lives, a SIGALRM is due [`PARENT_LIMIT_SECS`] after it was armed, with a handler
/// that does nothing and is installed without `SA_RESTART`: a blocking system call still waiting
/// then fails with `EINTR` instead of hanging the suite. Dropping it cancels the alarm and puts
/// back the previous handler.
pub(super) struct ParentAlarm {
    previous: libc::sigaction,
}

extern "C" fn on_parent_alarm(_signal: libc::c_int) {}

impl ParentAlarm {
    pub(super) fn arm() -> Result<Self, String> {
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
