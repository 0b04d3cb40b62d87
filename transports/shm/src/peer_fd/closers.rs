//! The threads that close what may block: a file on a FUSE mount waits for its daemon's answer
//! to the flush, a tty for its output to drain, a Unix socket for whatever is still queued on
//! it.
//!
//! Each close that blocks holds one thread (a daemon that never answers holds it for good) and
//! the others go on closing. Four start with the first close; while every one is in the middle
//! of a close another starts, up to sixteen. A peer that holds all of them only makes refused descriptors wait, and pile
//! up until the descriptor limit, which the server meets without spinning (it refuses new
//! connections).

use std::os::fd::OwnedFd;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, OnceLock};

use subring_planes::sync::{AtomicU64, Mutex, Ordering::Relaxed};

/// Threads started with the first close.
pub(super) const CLOSER_THREADS: u64 = 4;
/// Threads at most.
const MAX_CLOSER_THREADS: u64 = 16;

/// Closer threads sharing one queue.
pub(super) struct Closers {
    tx: Sender<OwnedFd>,
    rx: Arc<Mutex<Receiver<OwnedFd>>>,
    /// Threads started (or being started).
    threads: AtomicU64,
    /// Threads in the middle of a close.
    busy: Arc<AtomicU64>,
}

impl Closers {
    /// The queue and its first [`CLOSER_THREADS`] threads (as many as could start).
    pub(super) fn new() -> Self {
        let (tx, rx) = mpsc::channel::<OwnedFd>();
        let closers = Closers {
            tx,
            rx: Arc::new(Mutex::new(rx)),
            threads: AtomicU64::new(0),
            busy: Arc::new(AtomicU64::new(0)),
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
    pub(super) fn busy(&self) -> u64 {
        self.busy.load(Relaxed)
    }

    /// Starts another closer thread if fewer than `limit` run (its place taken first, so that
    /// callers racing here start no more than `limit`).
    fn spawn_below(&self, limit: u64) {
        let mut n = self.threads();
        loop {
            if n >= limit {
                return;
            }
            match self.threads.compare_exchange(n, n + 1, Relaxed, Relaxed) {
                Ok(_) => break,
                Err(now) => n = now,
            }
        }
        let (rx, busy) = (self.rx.clone(), self.busy.clone());
        let started = std::thread::Builder::new()
            .name("subring-fd-closer".into())
            .spawn(move || loop {
                let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                // Each close may block (that is why it is here): outside the lock, so that the
                // other threads go on taking work.
                match next {
                    Ok(fd) => {
                        busy.fetch_add(1, Relaxed);
                        drop(fd);
                        busy.fetch_sub(1, Relaxed);
                    }
                    Err(_) => return,
                }
            });
        if started.is_err() {
            self.threads.fetch_sub(1, Relaxed);
        }
    }

    /// Queues `fd` for the first closer thread free, starting another while every one is in
    /// the middle of a close (up to [`MAX_CLOSER_THREADS`]); `Err` (the caller closes it) if no
    /// thread could start.
    pub(super) fn close(&self, fd: OwnedFd) -> Result<(), OwnedFd> {
        if self.busy() >= self.threads() {
            self.spawn_below(MAX_CLOSER_THREADS);
        }
        if self.threads() == 0 {
            return Err(fd);
        }
        self.tx.send(fd).map_err(|mpsc::SendError(fd)| fd)
    }
}

/// The closer threads of this process, and the process they were started in: a forked child
/// has none (threads do not survive a fork), and closes on its own thread.
static CLOSERS: OnceLock<(u32, Closers)> = OnceLock::new();

/// Closes `fd` on a closer thread; on this one if none runs (none could start, or this is a
/// forked child of a process that started them). With lingering off a socket's close does not
/// wait there; a file on a FUSE mount still could.
pub(super) fn close(fd: OwnedFd) {
    let (pid, closers) = CLOSERS.get_or_init(|| (std::process::id(), Closers::new()));
    if *pid != std::process::id() {
        return drop(fd);
    }
    if let Err(fd) = closers.close(fd) {
        drop(fd);
    }
}
