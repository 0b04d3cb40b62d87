//! The threads that close what may block, and do the work a peer can make long: a file on a
//! FUSE mount waits for its daemon's answer to the flush, a tty for its output to drain, a Unix
//! socket for whatever is still queued on it; and a peer can send 253 descriptors in every
//! message, each of which must be closed, and leave a connection's queue full of them.
//!
//! So the thread that receives them (a server's event loop, serving every other client) only
//! hands them over, those of a message refused whole in one job ([`close_all`]), and a
//! connection's end in one job too ([`drain`]): reading out what is queued on it is done
//! here, not there. Checking each descriptor's kind and closing it one by one on the event
//! loop let one client that sent descriptors, or left its queue full of them, stall every
//! other client for tenths of a second at each message, and for good when it reconnected
//! again and again (`tests/hostile_fds.rs`).
//!
//! A closer turns lingering off before each close (`SO_LINGER`: a socket's close then does not
//! wait for its unsent data; anything else answers `ENOTSOCK`), so no kind needs telling apart.
//! What must not wait behind a close that blocks (the memory of a departed client, whose
//! unmapping cannot block but takes a while) goes to a thread of its own, the dropper
//! ([`drop_elsewhere`]).
//!
//! Each close that blocks holds one thread (a daemon that never answers holds it for good),
//! with the rest of its job, and the others go on. Four start with the first job; while every
//! one is held in a close (one that has taken over 20 ms) another starts, up to sixteen. A
//! peer that holds all of them only makes refused descriptors wait, and pile up until the
//! descriptor limit, which the server meets without spinning (it refuses new connections).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{setsockopt, sockopt};
use subring_planes::sync::{AtomicU64, Mutex, Ordering::Relaxed};

/// Threads started with the first close.
pub(super) const CLOSER_THREADS: u64 = 4;
/// Threads at most.
const MAX_CLOSER_THREADS: u64 = 16;

/// What a closer thread does.
pub(super) enum Job {
    /// Close these (lingering off first).
    Close(Vec<OwnedFd>),
    /// Read out this side's end of a connection, already shut down, then close it
    /// ([`super::drain`]).
    Drain(OwnedFd),
}

/// How long a close may take before its thread counts as held (by a close that blocks), so
/// that another may start: long enough that a thread busy with a flood of quick closes never
/// counts (each starting thread takes a core's share from the threads serving clients).
const HELD: Duration = Duration::from_millis(20);

/// Closer threads sharing one queue.
pub(super) struct Closers {
    tx: Sender<Job>,
    rx: Arc<Mutex<Receiver<Job>>>,
    /// Threads started.
    threads: AtomicU64,
    /// Held while a thread is started: its slot is the next one, and one that fails to start
    /// leaves no gap.
    starting: Mutex<()>,
    /// Per thread, when its close in progress started (nanoseconds since `epoch`, plus one),
    /// or 0 between closes.
    closing: Arc<[AtomicU64; MAX_CLOSER_THREADS as usize]>,
    epoch: Instant,
}

/// Where a closer thread says when its close in progress started.
struct Clock<'a> {
    slot: &'a AtomicU64,
    epoch: Instant,
}

impl Clock<'_> {
    /// Closes `fd` after turning its lingering off (a socket's close then does not wait for its
    /// unsent data; anything else refuses the option), with the time it started in the slot.
    fn close(&self, fd: OwnedFd) {
        self.closing(|| {
            // (Timed too: it waits for the socket's lock, which a close elsewhere may hold.)
            let _ = setsockopt(
                &fd.as_fd(),
                sockopt::Linger,
                &libc::linger {
                    l_onoff: 0,
                    l_linger: 0,
                },
            );
            drop(fd)
        });
    }

    /// Runs `f` (a close) with the time it started in the slot.
    fn closing(&self, f: impl FnOnce()) {
        let since = self.epoch.elapsed().as_nanos() as u64;
        self.slot.store(since.saturating_add(1), Relaxed);
        f();
        self.slot.store(0, Relaxed);
    }
}

impl Closers {
    /// The queue and its first [`CLOSER_THREADS`] threads (as many as could start).
    pub(super) fn new() -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let closers = Closers {
            tx,
            rx: Arc::new(Mutex::new(rx)),
            threads: AtomicU64::new(0),
            starting: Mutex::new(()),
            closing: Arc::new(std::array::from_fn(|_| AtomicU64::new(0))),
            epoch: Instant::now(),
        };
        for _ in 0..CLOSER_THREADS {
            closers.spawn_below(CLOSER_THREADS);
        }
        closers
    }

    /// Threads started.
    pub(super) fn threads(&self) -> u64 {
        self.threads.load(Relaxed)
    }

    /// Threads in the middle of a close.
    #[cfg(test)]
    pub(super) fn busy(&self) -> u64 {
        self.closing.iter().filter(|s| s.load(Relaxed) != 0).count() as u64
    }

    /// Whether every thread started is held: in a close that started over [`HELD`] ago.
    fn all_held(&self) -> bool {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let held = HELD.as_nanos() as u64;
        self.closing[..self.threads().min(MAX_CLOSER_THREADS) as usize]
            .iter()
            .all(|s| matches!(s.load(Relaxed), since if since != 0 && now.saturating_sub(since) > held))
    }

    /// Starts another closer thread if fewer than `limit` run, in the next slot.
    fn spawn_below(&self, limit: u64) {
        let _starting = self.starting.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.threads();
        if n >= limit {
            return;
        }
        let (rx, closing, epoch) = (self.rx.clone(), self.closing.clone(), self.epoch);
        let started = std::thread::Builder::new()
            .name("subring-fd-closer".into())
            .spawn(move || {
                let clock = Clock {
                    slot: &closing[n as usize],
                    epoch,
                };
                loop {
                    let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    // Each close may block (that is why it is here): outside the lock, so that
                    // the other threads go on taking work.
                    match next {
                        Ok(job) => clock.run(job),
                        Err(_) => return,
                    }
                }
            });
        if started.is_ok() {
            self.threads.store(n + 1, Relaxed);
        }
    }

    /// Queues `job` for the first closer thread free, starting another while every one is held
    /// in a close (up to [`MAX_CLOSER_THREADS`]); `Err` (the caller does it) if no thread could
    /// start.
    pub(super) fn run(&self, job: Job) -> Result<(), Job> {
        if self.all_held() {
            self.spawn_below(MAX_CLOSER_THREADS);
        }
        if self.threads() == 0 {
            return Err(job);
        }
        self.tx.send(job).map_err(|mpsc::SendError(job)| job)
    }
}

impl Clock<'_> {
    /// Does `job`.
    fn run(&self, job: Job) {
        match job {
            Job::Close(fds) => fds.into_iter().for_each(|fd| self.close(fd)),
            Job::Drain(socket) => {
                // Reading out never blocks, and closes each message's descriptors as they come
                // off the queue (handed to the queue instead, a queue full of them would pile up
                // in this process faster than they are closed); the socket's close cannot block
                // once its queue is empty, and may if it is not.
                super::drain::read_queue(socket.as_fd(), |fds| {
                    fds.into_iter().for_each(|fd| self.close(fd))
                });
                self.closing(|| drop(socket));
            }
        }
    }
}

/// The closer threads of this process, with the id of the process that started them: a forked
/// child (threads do not survive a fork) starts its own at its first job.
static CLOSERS: Mutex<Option<(u32, Arc<Closers>)>> = Mutex::new(None);

/// The closer threads of this process, started if there are none yet (or only a parent's,
/// inherited through `fork` without their threads: forgotten, not dropped, as their locks may
/// have been held at the fork).
fn closers() -> Arc<Closers> {
    let mut slot = CLOSERS.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    match slot.take() {
        Some((owner, pool)) if owner == pid => {
            *slot = Some((owner, pool.clone()));
            pool
        }
        stale => {
            std::mem::forget(stale);
            let pool = Arc::new(Closers::new());
            *slot = Some((pid, pool.clone()));
            pool
        }
    }
}

/// Runs `job` on a closer thread; on this one if none could start. With lingering off a
/// socket's close does not wait there; a file on a FUSE mount still could.
fn run(job: Job) {
    let Err(job) = closers().run(job) else {
        return;
    };
    let slot = AtomicU64::new(0);
    Clock {
        slot: &slot,
        epoch: Instant::now(),
    }
    .run(job);
}

/// Closes `fd` on a closer thread (see [`run`]).
pub(super) fn close(fd: OwnedFd) {
    run(Job::Close(vec![fd]));
}

/// Closes every one of `fds` on a closer thread, in one job (see [`run`]).
pub(super) fn close_all(fds: Vec<OwnedFd>) {
    if !fds.is_empty() {
        run(Job::Close(fds));
    }
}

/// The dropper thread of this process, with the id of the process that started it: a forked
/// child starts its own.
type Dropper = Mutex<Option<(u32, Sender<Box<dyn Send>>)>>;
static DROPPER: Dropper = Mutex::new(None);

/// Drops `value` on the dropper thread, a thread of its own (not a closer: a closer may be held
/// for good by a close that blocks, and what is dropped here must not wait behind it: memory,
/// whose unmapping and freeing cannot block); here if it cannot start.
pub(super) fn drop_elsewhere(value: Box<dyn Send>) {
    let mut slot = DROPPER.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    if !matches!(&*slot, Some((owner, _)) if *owner == pid) {
        // A parent's, inherited through `fork` without its thread: forgotten, not dropped.
        std::mem::forget(slot.take());
        let (tx, rx) = mpsc::channel::<Box<dyn Send>>();
        let started = std::thread::Builder::new()
            .name("subring-dropper".into())
            .spawn(move || rx.into_iter().for_each(drop));
        if started.is_err() {
            drop(slot);
            return drop(value);
        }
        *slot = Some((pid, tx));
    }
    let sent = slot.as_ref().map(|(_, tx)| tx.send(value));
    drop(slot);
    if let Some(Err(mpsc::SendError(value))) = sent {
        drop(value);
    }
}

/// Reads out `socket` (this side's end of a connection, already shut down) and closes it, on a
/// closer thread (see [`run`]).
pub(super) fn drain(socket: OwnedFd) {
    run(Job::Drain(socket));
}
