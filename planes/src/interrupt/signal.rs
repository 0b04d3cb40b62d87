//! Blocking primitives behind [`SleepNotifier`](super::SleepNotifier): an eventfd, a futex, and
//! (under loom) a model of an eventfd.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[cfg(not(loom))]
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
#[cfg(not(loom))]
use nix::sys::epoll::EpollTimeout;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};
#[cfg(not(loom))]
use rustix::thread::futex;

use super::WakeWord;

/// How a [`Signal::block`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// Woken, timed out, or spuriously: the caller re-checks its condition.
    Recheck,
    /// Nothing was signalled, but a descriptor registered with
    /// [`EventFdSignal::watch_hangup`] hung up: the peer is gone, and no wake-up will come.
    HangUp,
}

/// The kernel object a sleeping side blocks on and a notifying side pokes.
pub trait Signal: fmt::Debug + Send {
    /// Wakes a side blocked in [`Signal::block`] (or makes its next block return at once).
    fn wake(&self, word: &WakeWord) -> io::Result<()>;

    /// Blocks until woken, the timeout passes, or spuriously. `word` is the shared wake word,
    /// which the caller has set to "sleeping".
    fn block(&self, word: &WakeWord, timeout: Option<Duration>) -> io::Result<Woke>;
}

/// An eventfd: wakes are counted by the kernel until read, so a wake sent before the waiter
/// blocks is not lost. Clones share the same eventfd.
///
/// [`block`](Signal::block) waits in a private epoll instance where the eventfd is registered
/// edge-triggered (`EPOLLET`): every write to the eventfd, including one made before the
/// waiter blocks, reports it once, so the waiter need not read (drain) the counter after each
/// wake-up. A blocking wait is then one system call (`epoll_wait`), as a blocking `read` of a
/// plain eventfd is, instead of `poll` plus `read`. The counter is left to grow (it saturates
/// only after 2^64 - 2 wake-ups); [`drain`](EventFdSignal::drain) empties it for callers that
/// watch the fd level-triggered in their own event loop.
///
/// The same epoll set can also watch the peer's liveness
/// ([`watch_hangup`](EventFdSignal::watch_hangup)): a socket whose other end closes, for
/// instance when the peer process dies, ends a blocked wait with [`Woke::HangUp`]. A waiter
/// then needs no timeout, and no periodic wake-up, to notice a dead peer.
#[derive(Debug, Clone)]
pub struct EventFdSignal {
    fd: Arc<EventFd>,
    /// Created at the first `block`: sides that only wake never pay the extra fd.
    waiter: Arc<OnceLock<Epoll>>,
    /// Under loom, the eventfd's counter and its edge as the waiter's epoll set sees them: the
    /// fd is still created (for `AsFd`), but every write, read and wait goes to the model.
    #[cfg(loom)]
    model: Arc<EventFdModel>,
}

/// The modelled eventfd (loom builds): `write` adds to the counter and raises an edge; an
/// edge-triggered epoll wait reports a raised edge once, and only while the counter is
/// non-zero (epoll re-polls the file before reporting it, so a write that was drained since
/// is not reported); `read` takes the counter; a level-triggered poll waits for a non-zero
/// counter. Timeouts and hang-ups are not modelled.
#[cfg(loom)]
#[derive(Debug, Default)]
struct EventFdModel {
    state: crate::sync::Mutex<EventFdState>,
    changed: crate::sync::Condvar,
}

#[cfg(loom)]
#[derive(Debug, Default)]
struct EventFdState {
    count: u64,
    edge: bool,
}

#[cfg(loom)]
impl EventFdModel {
    fn lock(&self) -> loom::sync::MutexGuard<'_, EventFdState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) {
        let mut s = self.lock();
        s.count += 1;
        s.edge = true;
        self.changed.notify_all();
    }

    fn read(&self) -> u64 {
        std::mem::take(&mut self.lock().count)
    }

    fn wait_edge(&self) {
        let mut s = self.lock();
        loop {
            if std::mem::take(&mut s.edge) && s.count > 0 {
                return;
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn wait_readable(&self) {
        let mut s = self.lock();
        while s.count == 0 {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Epoll data of the eventfd in the waiter's set.
const SIGNALLED: u64 = 0;
/// Epoll data of a descriptor watched for hang-up.
const HUNG_UP: u64 = 1;

#[cfg(not(loom))]
fn epoll_timeout(timeout: Option<Duration>) -> EpollTimeout {
    match timeout {
        None => EpollTimeout::NONE,
        // Round up so that a sub-millisecond remainder still sleeps rather than spinning.
        Some(t) => {
            let ms = t.as_micros().div_ceil(1000).min(i32::MAX as u128);
            EpollTimeout::try_from(ms as u64).unwrap_or(EpollTimeout::MAX)
        }
    }
}

impl EventFdSignal {
    /// A fresh non-blocking, close-on-exec eventfd.
    pub fn new() -> io::Result<Self> {
        let fd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(EventFdSignal::wrap(fd))
    }

    fn wrap(fd: EventFd) -> Self {
        EventFdSignal {
            fd: Arc::new(fd),
            waiter: Arc::new(OnceLock::new()),
            #[cfg(loom)]
            model: Arc::default(),
        }
    }

    /// Loom builds only: waits the way a level-triggered event loop (`poll`, epoll without
    /// `EPOLLET`) waits on this fd: until its counter is non-zero.
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn wait_readable_for_loom(&self) {
        self.model.wait_readable();
    }

    /// Wraps an eventfd received from a peer, after checking that it is one (its
    /// `/proc/self/fd` link reads `anon_inode:[eventfd]`) and making it non-blocking.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        if link.as_os_str() != "anon_inode:[eventfd]" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "fd {} is not an eventfd (it is {})",
                    fd.as_raw_fd(),
                    link.display()
                ),
            ));
        }
        let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
        fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        // SAFETY: the fd was just checked to be an eventfd.
        let fd = unsafe { EventFd::from_owned_fd(fd) };
        Ok(EventFdSignal::wrap(fd))
    }

    /// The epoll instance [`block`](Signal::block) waits in, created on first use.
    fn waiter(&self) -> io::Result<&Epoll> {
        if let Some(epoll) = self.waiter.get() {
            return Ok(epoll);
        }
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let event = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, SIGNALLED);
        epoll.add(self.fd.as_fd(), event)?;
        // A racing first use on a clone may have set it: either instance works (each reports
        // every write), and the loser's is closed here.
        let _ = self.waiter.set(epoll);
        Ok(self
            .waiter
            .get()
            .unwrap_or_else(|| unreachable!("set above")))
    }

    /// Opens now the epoll instance that blocking waits use (otherwise opened at the first
    /// wait), so that a side that will wait holds all its descriptors from the start and a
    /// failure to open it shows up here rather than in the middle of a wait.
    pub fn prepare_wait(&self) -> io::Result<()> {
        self.waiter().map(drop)
    }

    /// Makes blocking waits also end when `fd` hangs up: its peer closed the connection or shut
    /// down its writing side (`EPOLLRDHUP`), or the fd reports `EPOLLHUP` or `EPOLLERR`. A wait
    /// that ends that way, with no wake-up signalled, returns [`Woke::HangUp`], and so does every
    /// later one (the condition is level-triggered). Data arriving on `fd` does not end a wait.
    ///
    /// Meant for the socket a peer's death closes (a control connection): the waiter learns of
    /// the death at once instead of at its next timeout. Clones share the registration. The
    /// registration ends when `fd`'s open file is closed (by every process that holds it).
    pub fn watch_hangup(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let event = EpollEvent::new(EpollFlags::EPOLLRDHUP, HUNG_UP);
        self.waiter()?.add(fd, event).map_err(io::Error::from)
    }

    /// Drains pending wake-ups without blocking; returns how many were pending.
    pub fn drain(&self) -> io::Result<u64> {
        #[cfg(loom)]
        return Ok(self.model.read());
        #[cfg(not(loom))]
        match self.fd.read() {
            Ok(n) => Ok(n),
            Err(Errno::EAGAIN) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

impl AsFd for EventFdSignal {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Signal for EventFdSignal {
    fn wake(&self, _word: &WakeWord) -> io::Result<()> {
        #[cfg(loom)]
        {
            self.model.write();
            Ok(())
        }
        #[cfg(not(loom))]
        match self.fd.write(1) {
            // The counter is saturated: the waiter has plenty of wake-ups pending already.
            Ok(_) | Err(Errno::EAGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    #[cfg(loom)]
    fn block(&self, _word: &WakeWord, _timeout: Option<Duration>) -> io::Result<Woke> {
        self.model.wait_edge();
        Ok(Woke::Recheck)
    }

    #[cfg(not(loom))]
    fn block(&self, _word: &WakeWord, timeout: Option<Duration>) -> io::Result<Woke> {
        let epoll = self.waiter()?;
        // Room for both the eventfd and a hung-up descriptor, so that a wake-up is never hidden
        // behind a hang-up.
        let mut events = [EpollEvent::empty(); 2];
        match epoll.wait(&mut events, epoll_timeout(timeout)) {
            Ok(n) => {
                let ready = &events[..n];
                let hung_up = ready.iter().any(|e| e.data() == HUNG_UP);
                let signalled = ready.iter().any(|e| e.data() == SIGNALLED);
                Ok(if hung_up && !signalled {
                    Woke::HangUp
                } else {
                    Woke::Recheck
                })
            }
            // Interrupted: the caller re-checks its condition.
            Err(Errno::EINTR) => Ok(Woke::Recheck),
            Err(e) => Err(e.into()),
        }
    }
}

/// A futex on the wake word itself: no fd, works across processes that map the same memory
/// (the futex is not `FUTEX_PRIVATE`, so the kernel keys it by the shared page).
#[derive(Debug, Clone, Copy, Default)]
pub struct FutexSignal(());

impl FutexSignal {
    /// The futex signal (it has no state of its own).
    pub fn new() -> Self {
        FutexSignal(())
    }
}

#[cfg(not(loom))]
impl Signal for FutexSignal {
    #[inline(always)]
    fn wake(&self, word: &WakeWord) -> io::Result<()> {
        futex::wake(word.futex_word().as_std(), futex::Flags::empty(), 1)?;
        Ok(())
    }

    #[inline(always)]
    fn block(&self, word: &WakeWord, timeout: Option<Duration>) -> io::Result<Woke> {
        futex_wait(word, timeout)?;
        Ok(Woke::Recheck)
    }
}

/// `FUTEX_WAIT` on `word` while it still holds the waiter's announcement (sleeping, or
/// sleeping until an entry), for at most `timeout` (relative). Returns `Ok` however the wait
/// ended that calls for a re-check: woken, the word no longer the announcement (EAGAIN, or
/// already cleared when we looked), timed out or interrupted.
#[cfg(not(loom))]
#[inline(always)]
pub(super) fn futex_wait(word: &WakeWord, timeout: Option<Duration>) -> io::Result<()> {
    // A notifier that claimed the wake-up cleared the word first: then there is nothing to
    // wait for. Otherwise the kernel compares the word with this value atomically with
    // queueing us, so a claim after this load makes the wait return at once.
    let Some(announced) = word.announced() else {
        return Ok(());
    };
    let ts = timeout.map(|t| futex::Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    let r = futex::wait(
        word.futex_word().as_std(),
        futex::Flags::empty(),
        announced,
        ts.as_ref(),
    );
    futex_wait_result(r)
}

/// A futex wait's result: EAGAIN (a word was no longer the value waited on), ETIMEDOUT and
/// EINTR mean "re-check", as a wake-up does; anything else is an error.
#[cfg(not(loom))]
#[inline(always)]
pub(super) fn futex_wait_result<T>(r: rustix::io::Result<T>) -> io::Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::TIMEDOUT | rustix::io::Errno::INTR) => {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Under loom, `FUTEX_WAIT` is modelled as yielding until the word is no longer "sleeping".
/// That is exact for this protocol: a notifier always clears the word before it wakes.
#[cfg(loom)]
impl Signal for FutexSignal {
    /// `FUTEX_WAKE`, modelled: counted on the word.
    fn wake(&self, word: &WakeWord) -> io::Result<()> {
        word.loom_futex_wake();
        Ok(())
    }
    /// `FUTEX_WAIT(word, announced)` as `futex_wait` runs it, modelled: it returns at once if
    /// the word holds no announcement, and otherwise only after a wake-up (never spuriously;
    /// timeouts are not modelled). `futex_wait`'s two reads (the announcement, then the
    /// kernel's compare with it) are one read here: they differ only if a notifier claimed the
    /// word in between, and then the real wait returns at once while the modelled one either
    /// reads the cleared word or is woken by that notifier's wake-up. (One load fewer per
    /// modelled wait keeps the futex models' state space, and CI's loom step, in bounds.)
    fn block(&self, word: &WakeWord, _timeout: Option<Duration>) -> io::Result<Woke> {
        let (seen, value) = word.loom_futex_enter();
        if super::wake::is_asleep(value) {
            while !word.loom_woken_since(seen) {
                crate::sync::thread::yield_now();
            }
        }
        Ok(Woke::Recheck)
    }
}
