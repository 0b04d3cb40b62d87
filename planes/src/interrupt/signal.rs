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
///
/// **Across processes, the side that wakes keeps its eventfd.** A descriptor passed with
/// `SCM_RIGHTS` shares its open file, flags included, with the peer: a peer holding the eventfd
/// could clear `O_NONBLOCK` on it and write the counter to its maximum, and the waking side's
/// next `write` would block for good (a server's thread, with every client behind it). So the
/// waking side hands over [`peer_waiter`](Self::peer_waiter) instead: an epoll instance that
/// watches its eventfd. The peer waits in it ([`from_peer_waiter`](Self::from_peer_waiter)) but
/// cannot read, write or re-flag the eventfd, and the waking side never waits in the epoll
/// instance (whatever the peer adds to it is the peer's own waits' business).
#[derive(Debug, Clone)]
pub struct EventFdSignal {
    /// The eventfd this side writes to wake: its own (in the peer-waiter form, a local one
    /// that wakes only this side's own waits).
    fd: Arc<EventFd>,
    /// Created at the first `block`: sides that only wake never pay the extra fd. In the
    /// peer-waiter form, the epoll instance the peer handed over.
    waiter: Arc<OnceLock<Epoll>>,
    /// The peer-waiter form (it waits in the peer's epoll instance): the fd for outside event
    /// loops is the epoll instance, and a drain takes its ready events.
    in_peers_epoll: bool,
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

/// Checks that `fd`'s `/proc/self/fd` link reads `expected` (an anonymous inode names its kind
/// there); the error names what it is instead.
fn check_link(fd: &OwnedFd, expected: &str, what: &str) -> io::Result<()> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    if link.as_os_str() != expected {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "fd {} is not {what} (it is {})",
                fd.as_raw_fd(),
                link.display()
            ),
        ));
    }
    Ok(())
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
            in_peers_epoll: false,
            #[cfg(loom)]
            model: Arc::default(),
        }
    }

    /// A fresh epoll instance that watches this eventfd (edge-triggered, as
    /// [`block`](Signal::block)'s own does), to hand to the peer that waits for this side's
    /// wake-ups instead of the eventfd itself (see the type's docs). Each call makes a new one;
    /// this side need not keep it once it is sent.
    pub fn peer_waiter(&self) -> io::Result<OwnedFd> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let event = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, SIGNALLED);
        epoll.add(self.fd.as_fd(), event)?;
        Ok(epoll.0)
    }

    /// Waits in an epoll instance the peer made with [`peer_waiter`](Self::peer_waiter), after
    /// checking that it is one (its `/proc/self/fd` link reads `anon_inode:[eventpoll]`).
    /// [`block`](Signal::block) waits in it; [`wake`](Signal::wake) writes a local eventfd
    /// added to it, which wakes only this side's own waits (a watcher that saw the peer die);
    /// [`drain`](Self::drain) takes its ready events; the fd for an outside event loop
    /// ([`AsFd`]) is the epoll instance, readable while a wake-up is pending.
    ///
    /// It must watch exactly one descriptor when it arrives. That does not make it safe from a
    /// hostile peer: the descriptor may be a file whose poll blocks (FUSE), and a peer that
    /// kept a copy can add more later (spurious wake-ups, each wait re-checks its condition, or
    /// a blocked wait). A side that must not trust its peer that far uses futex modes. (Not for
    /// loom models: it waits in a real epoll instance.)
    pub fn from_peer_waiter(fd: OwnedFd) -> io::Result<Self> {
        check_link(&fd, "anon_inode:[eventpoll]", "an epoll instance")?;
        // What the peer made it watch, as the kernel lists it: one descriptor, as a peer that
        // follows the protocol makes it (its eventfd). This catches a careless peer, not a
        // hostile one: the count does not say what the descriptor is (a FUSE file's poll waits
        // for its daemon), and a peer that kept a copy can add more later.
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
        let watched = info.lines().filter(|l| l.starts_with("tfd:")).count();
        if watched != 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the peer's epoll instance watches {watched} descriptors, not one"),
            ));
        }
        let epoll = Epoll(fd);
        let local = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        let event = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, SIGNALLED);
        epoll.add(local.as_fd(), event)?;
        let mut signal = EventFdSignal::wrap(local);
        signal.in_peers_epoll = true;
        let _ = signal.waiter.set(epoll);
        Ok(signal)
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
        check_link(&fd, "anon_inode:[eventfd]", "an eventfd")?;
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

    /// Drains pending wake-ups without blocking; returns how many were pending (in the
    /// peer-waiter form, how many ready events there were: at least one if any wake-up was).
    pub fn drain(&self) -> io::Result<u64> {
        #[cfg(loom)]
        return Ok(self.model.read());
        #[cfg(not(loom))]
        {
            let mut taken = 0;
            if self.in_peers_epoll {
                // The peer's eventfd is not ours to read: take its edge from the epoll
                // instance (a zero timeout never blocks), then our local eventfd's count.
                let mut events = [EpollEvent::empty(); 4];
                let n = self.waiter()?.wait(&mut events, EpollTimeout::ZERO)?;
                taken = events[..n].iter().filter(|e| e.data() == SIGNALLED).count() as u64;
            }
            match self.fd.read() {
                Ok(n) => Ok(taken + n),
                Err(Errno::EAGAIN) => Ok(taken),
                Err(e) => Err(e.into()),
            }
        }
    }
}

impl AsFd for EventFdSignal {
    /// The eventfd; in the peer-waiter form, the epoll instance (see
    /// [`from_peer_waiter`](EventFdSignal::from_peer_waiter)).
    fn as_fd(&self) -> BorrowedFd<'_> {
        match (self.in_peers_epoll, self.waiter.get()) {
            (true, Some(epoll)) => epoll.0.as_fd(),
            _ => self.fd.as_fd(),
        }
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

/// `FUTEX_WAKE` of every thread waiting on `word`, not only the first: a peer that can write
/// the word can also queue threads of its own on it, ahead of the one the wake is for.
#[cfg(not(loom))]
pub(super) fn futex_wake_every_waiter(word: &WakeWord) -> io::Result<()> {
    // The kernel takes the count as an `int`: `u32::MAX` would be -1, which wakes one.
    futex::wake(
        word.futex_word().as_std(),
        futex::Flags::empty(),
        i32::MAX as u32,
    )?;
    Ok(())
}

/// The modelled `FUTEX_WAKE` of every waiter (the model's wake-ups reach every waiter).
#[cfg(loom)]
pub(super) fn futex_wake_every_waiter(word: &WakeWord) -> io::Result<()> {
    word.loom_futex_wake();
    Ok(())
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
