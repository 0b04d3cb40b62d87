//! The server's futex sleep ([`ServerSleep::Futex`](crate::ServerSleep::Futex)): the main thread
//! sleeps in one `futex_waitv` on every client's kick word, and a control thread sleeps in the
//! server's epoll set (listener, control sockets, stop) and wakes the main thread when that set
//! has something for it.
//!
//! Two hand-offs, each the planes' sleep/wake protocol on a process-local word:
//! - control → main: the control thread sets `pending` and notifies the main word; the main
//!   thread announces sleep on that word beside the kick words and re-checks `pending` before it
//!   sleeps.
//! - main → control: once the main thread has taken the events (a non-blocking `epoll_wait`), it
//!   clears `pending` and notifies the ack word, on which the control thread waits before it
//!   polls the epoll set again (the set is level-triggered: polling it before the main thread has
//!   taken the events would report them again at once).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use subring_planes::interrupt::{
    FutexNotifier, FutexSignal, Notifier, SleepNotifier, SpinPolicy, WaitAny, WakeRef, WakeWord,
    WAIT_ANY_MAX,
};
use subring_planes::sync::{AtomicU32, Ordering::*};

/// Clients a futex-sleeping server can sleep on: one `futex_waitv` word each, and one for the
/// control thread.
pub(crate) const MAX_FUTEX_CLIENTS: u32 = WAIT_ANY_MAX as u32 - 1;

const NOTHING: u32 = 0;
const EVENTS: u32 = 1;
const FAILED: u32 = 2;

struct Shared {
    /// `NOTHING`, `EVENTS` (the epoll set has something for the main thread) or `FAILED` (the
    /// control thread could not poll and has stopped).
    pending: AtomicU32,
    quitting: AtomicU32,
}

fn notifier(word: &WakeRef) -> FutexNotifier {
    SleepNotifier::new(word.clone(), FutexSignal::new(), SpinPolicy::none())
}

/// The main thread's half; dropping it stops and joins the control thread.
pub(crate) struct FutexSleep {
    shared: Arc<Shared>,
    main_word: WakeRef,
    ack: FutexNotifier,
    quit: Arc<EventFd>,
    set: WaitAny,
    thread: Option<JoinHandle<()>>,
}

impl FutexSleep {
    /// Starts the control thread over `epoll` (a duplicate of the server's epoll descriptor).
    pub(crate) fn start(epoll: OwnedFd) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            pending: AtomicU32::new(NOTHING),
            quitting: AtomicU32::new(0),
        });
        let main_word = WakeRef::local();
        let ack_word = WakeRef::local();
        let quit = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        let control = Control {
            epoll,
            quit: quit.clone(),
            shared: shared.clone(),
            to_main: notifier(&main_word),
            ack_wait: notifier(&ack_word),
        };
        let thread = std::thread::Builder::new()
            .name("subring-shm-control".into())
            .spawn(move || control.run())?;
        Ok(FutexSleep {
            shared,
            main_word,
            ack: notifier(&ack_word),
            quit,
            set: WaitAny::new(),
            thread: Some(thread),
        })
    }

    /// Whether the control thread has something for the main thread (a relaxed look, for the
    /// polling loop; [`sleep`](Self::sleep) and [`take`](Self::take) order properly).
    pub(crate) fn pending(&self) -> bool {
        self.shared.pending.load(Relaxed) != NOTHING
    }

    /// Sleeps until a kick word in `kicks` (each announced sleeping, its ring re-checked) or the
    /// control thread wakes us, or `timeout` passes. Returns whether the control thread has
    /// events for us ([`take`](Self::take) them then).
    pub(crate) fn sleep<'w>(
        &mut self,
        kicks: impl Iterator<Item = &'w WakeWord>,
        timeout: Option<std::time::Duration>,
    ) -> io::Result<bool> {
        self.main_word.announce_sleep();
        // SYNC POINT (sleep-dekker): the fence in `announce_sleep` pairs with the one in the
        // control thread's `notify`: it sees us sleeping, or we see `pending` here.
        if self.shared.pending.load(Acquire) != NOTHING {
            self.main_word.cancel_sleep();
            return Ok(true);
        }
        let main: &WakeWord = &self.main_word;
        // The identity `map` lets the kick words' longer borrow shorten to the main word's.
        #[allow(clippy::map_identity)]
        let words = std::iter::once(main).chain(kicks.map(|w| w));
        let slept = self.set.wait(words, timeout);
        self.main_word.cancel_sleep();
        slept?;
        Ok(self.shared.pending.load(Acquire) != NOTHING)
    }

    /// Called after the main thread has taken the epoll set's events: lets the control thread
    /// poll again. Fails if the control thread stopped on an error.
    pub(crate) fn take(&self) -> io::Result<()> {
        if self.shared.pending.load(Acquire) == FAILED {
            return Err(io::Error::other(
                "the server's control thread could not poll its sockets and stopped",
            ));
        }
        // SYNC POINT (pair-close style hand-off): Release pairs with the control thread's
        // Acquire load in its wait condition: it polls again only after our epoll_wait.
        self.shared.pending.store(NOTHING, Release);
        self.ack.notify()?;
        Ok(())
    }
}

impl Drop for FutexSleep {
    fn drop(&mut self) {
        self.shared.quitting.store(1, Release);
        // Wake the control thread wherever it sleeps: in poll (the quit eventfd) or waiting for
        // an acknowledgement (the ack word).
        let _ = self.quit.write(1);
        let _ = self.ack.notify();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The control thread's half.
struct Control {
    epoll: OwnedFd,
    quit: Arc<EventFd>,
    shared: Arc<Shared>,
    to_main: FutexNotifier,
    ack_wait: FutexNotifier,
}

impl Control {
    fn run(self) {
        loop {
            let mut fds = [
                PollFd::new(self.epoll.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.quit.as_fd(), PollFlags::POLLIN),
            ];
            let polled = poll(&mut fds, PollTimeout::NONE);
            if self.shared.quitting.load(Acquire) != 0 {
                return;
            }
            let report = match polled {
                Ok(_) => EVENTS,
                Err(Errno::EINTR) => continue,
                Err(_) => FAILED,
            };
            self.shared.pending.store(report, Release);
            // Best effort: if the wake fails, the main thread still sees `pending` before its
            // next sleep.
            let _ = self.to_main.notify();
            if report == FAILED {
                return;
            }
            let shared = &self.shared;
            let mut taken =
                || shared.pending.load(Acquire) == NOTHING || shared.quitting.load(Acquire) != 0;
            if self.ack_wait.wait_until(&mut taken, None).is_err() {
                // A futex wait cannot fail for a live word; if it does, poll again after a
                // pause rather than spin.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
}
