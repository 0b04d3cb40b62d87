//! The server's futex sleep ([`ServerSleep::Futex`](crate::ServerSleep::Futex)): the main thread
//! sleeps on every client's kick word at once (a planes [`SleepSet`]), and a control thread
//! sleeps in the server's epoll set (listener, control sockets, stop) and raises the set's alarm
//! when that set has something for the main thread.
//!
//! Two hand-offs, each a planes protocol with a loom model:
//! - control → main: [`Alarm::raise`] wakes the main thread wherever it sleeps (the sleep set's
//!   protocol, `a_sleep_set_sees_its_peer_and_its_alarm`);
//! - main → control: once the main thread has taken the events (a non-blocking `epoll_wait`), it
//!   lowers the alarm and notifies the ack word, on which the control thread waits before it
//!   polls the epoll set again (the set is level-triggered: polling it before the main thread has
//!   taken the events would report them again at once). That is the sleep/wake protocol on one
//!   word (`sleep_wake_no_lost_wakeup`).
//!
//! The two together are modelled too, rewritten over the same primitives:
//! `the_futex_servers_control_and_main_threads_hand_off` (planes/tests/loom/sets.rs), with the
//! negative control that acknowledges before lowering the alarm.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use subring_planes::interrupt::{
    Alarm, FutexNotifier, FutexSignal, Notifier, SleepNotifier, SleepSet, SpinPolicy, WaitError,
    WakeRef, WAIT_ANY_MAX,
};
use subring_planes::sync::{AtomicU32, Ordering::*};

/// Clients a futex-sleeping server can sleep on: one `futex_waitv` word each, and one spare
/// (the sleep set's own word, for when it has no client).
pub(crate) const MAX_FUTEX_CLIENTS: u32 = WAIT_ANY_MAX as u32 - 1;

/// How long the control thread waits for the main thread to take a raised alarm before it
/// wakes every word the main thread may sleep on.
pub(crate) const ALARM_RETRY: Duration = Duration::from_millis(10);

#[derive(Default)]
struct Flags {
    /// The control thread could not poll and has stopped.
    failed: AtomicU32,
    quitting: AtomicU32,
}

fn notifier(word: &WakeRef) -> FutexNotifier {
    SleepNotifier::new(word.clone(), FutexSignal::new(), SpinPolicy::none())
}

/// The main thread's half; dropping it stops and joins the control thread.
pub(crate) struct FutexSleep {
    set: SleepSet,
    flags: Arc<Flags>,
    ack: FutexNotifier,
    quit: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl FutexSleep {
    /// Starts the control thread over `epoll` (a duplicate of the server's epoll descriptor).
    pub(crate) fn start(epoll: OwnedFd) -> io::Result<Self> {
        let set = SleepSet::new();
        let flags = Arc::new(Flags::default());
        let ack_word = WakeRef::local();
        let quit = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        let control = Control {
            epoll,
            quit: quit.clone(),
            flags: flags.clone(),
            alarm: set.alarm(),
            ack_wait: notifier(&ack_word),
        };
        let thread = std::thread::Builder::new()
            .name("subring-shm-control".into())
            .spawn(move || control.run())?;
        Ok(FutexSleep {
            set,
            flags,
            ack: notifier(&ack_word),
            quit,
            thread: Some(thread),
        })
    }

    /// Whether the control thread has something for the main thread.
    pub(crate) fn pending(&self) -> bool {
        self.set.is_raised()
    }

    /// The kick words to sleep on, when the clients change. If a client `departed` since the
    /// last change, the words replaced (its among them, maybe the last handles to its memory)
    /// are dropped on the dropper thread, as the rest of its memory is: unmapping the region,
    /// and freeing it, takes in proportion to what the client filled.
    pub(crate) fn set_words(&mut self, words: Vec<WakeRef>, departed: bool) -> io::Result<()> {
        let old = self.set.set_words(words)?;
        if departed && !old.is_empty() {
            crate::peer_fd::drop_elsewhere(old);
        }
        Ok(())
    }

    /// Sleeps until a kick word (each announced sleeping, its ring re-checked) is woken, the
    /// control thread has events, or `timeout` passes. Returns whether the control thread has
    /// events ([`take`](Self::take) them then).
    #[inline(always)]
    pub(crate) fn sleep(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        self.set.sleep(timeout)
    }

    /// Called after the main thread has taken the epoll set's events: lets the control thread
    /// poll again. Fails if the control thread stopped on an error.
    pub(crate) fn take(&self) -> io::Result<()> {
        if self.flags.failed.load(Acquire) != 0 {
            return Err(io::Error::other(
                "the server's control thread could not poll its sockets and stopped",
            ));
        }
        self.set.lower();
        self.ack.notify()?;
        Ok(())
    }
}

impl Drop for FutexSleep {
    fn drop(&mut self) {
        self.flags.quitting.store(1, Release);
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
    flags: Arc<Flags>,
    alarm: Alarm,
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
            if self.flags.quitting.load(Acquire) != 0 {
                return;
            }
            match polled {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(_) => {
                    self.flags.failed.store(1, Release);
                    let _ = self.alarm.raise();
                    // The main thread learns of the failure when it takes the alarm, which a
                    // client may hide as it may any other.
                    self.wait_until_taken();
                    return;
                }
            }
            // Best effort: if a wake fails, the main thread still sees the alarm before its
            // next sleep.
            let _ = self.alarm.raise();
            self.wait_until_taken();
        }
    }

    /// Waits until the main thread has taken the events (or the server quits). Every
    /// [`ALARM_RETRY`] the alarm is still raised, it wakes every word the main thread may sleep
    /// on: a client can undo the alarm's first wake-up through its kick word (`SleepSet`'s
    /// docs), and must not keep the server from its control events for longer than that.
    fn wait_until_taken(&self) {
        let (alarm, flags) = (&self.alarm, &self.flags);
        let mut taken = || !alarm.is_raised() || flags.quitting.load(Acquire) != 0;
        loop {
            match self.ack_wait.wait_until(&mut taken, Some(ALARM_RETRY)) {
                Ok(()) => return,
                Err(WaitError::Timeout(_)) => {
                    let _ = self.alarm.wake_all();
                }
                Err(_) => {
                    // A futex wait cannot fail for a live word; if it does, poll again after a
                    // pause rather than spin.
                    std::thread::sleep(Duration::from_millis(1));
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
    use std::time::Instant;

    /// A client that sets its kick word back to "awake" while the main thread sleeps on it
    /// (or dies between claiming it and waking it) leaves the alarm's first wake-up nothing to
    /// claim: the control thread's retry still brings the main thread its events.
    #[test]
    fn a_kick_word_cleared_under_the_sleeper_does_not_hide_a_control_event() {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
        let event = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).unwrap();
        epoll
            .add(&event, EpollEvent::new(EpollFlags::EPOLLIN, 0))
            .unwrap();
        let mut sleep = FutexSleep::start(epoll.0.try_clone().unwrap()).unwrap();
        let kick = WakeRef::local();
        sleep.set_words(vec![kick.clone()], false).unwrap();
        kick.announce_sleep();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            tid_tx.send(nix::unistd::gettid()).unwrap();
            let start = Instant::now();
            let raised = sleep.sleep(Some(Duration::from_secs(20)));
            (raised.map_err(|e| e.to_string()), start.elapsed(), sleep)
        });
        // The main thread in its FUTEX_WAIT on the kick word, before the client's store.
        let tid = tid_rx.recv().unwrap();
        let start = Instant::now();
        loop {
            let line = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall"))
                .unwrap_or_default();
            let nr: Option<libc::c_long> =
                line.split_whitespace().next().and_then(|n| n.parse().ok());
            if nr == Some(libc::SYS_futex) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the main thread is not in FUTEX_WAIT after 5 s ({line:?})"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        kick.cancel_sleep(); // the client's store: "awake", and no wake-up
        event.write(1).unwrap(); // a control event: a connection, a hang-up, a stop
        let start = Instant::now();
        while !sleeper.is_finished() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the main thread slept through a control event for 5 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let (raised, took, sleep) = sleeper.join().unwrap();
        assert_eq!(raised, Ok(true), "woken by the alarm");
        println!("woken {took:?} after it slept (retry every {ALARM_RETRY:?})");
        drop(sleep);
    }
}
