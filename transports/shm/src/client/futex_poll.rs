//! A futex-mode client's completions as a descriptor an event loop can watch: an io_uring of
//! the client's own with a `FUTEX_WAIT` (Linux 6.7) on its completion ring's wake word
//! ([`FutexWaits`]), readable when the server's futex wake completes the wait.
//!
//! The wait follows the external-wait protocol of [`Client::arm`](super::Client::arm): the
//! word announces the sleep and the ring is re-checked first, so a wait armed after the
//! server already claimed the word completes at once (the word no longer says "sleeping"),
//! and one armed at an earlier sleep, still pending, is woken by the server's next futex wake
//! (the loom model `a_wait_armed_across_sleeps_loses_no_wakeup` is this protocol). Completed
//! waits are reaped before each arming and at each disarm, so the descriptor stops being
//! readable and the next sleep arms afresh.
//!
//! A pending wait is a waiter on the word like any other, and the server's wake-up wakes one
//! waiter: before the client blocks on the word itself (a [`Completer::wait`] of its own), the
//! pending wait is cancelled, so that it cannot take the wake-up meant for that wait. Each wait
//! has a key of its own, so a cancelled wait whose completion comes later (it is posted by the
//! thread that armed it) is never taken for the one armed after it.
//!
//! The ring is set up with io_uring's defaults on purpose: a wait's completion is task work
//! that interrupts the thread that armed it, and that interruption is what ends an
//! `epoll_wait` it sleeps in. `COOP_TASKRUN` (no interruption) or `DEFER_TASKRUN` (completions
//! only inside `io_uring_enter`) would leave such a sleep unwoken.
//!
//! [`Completer::wait`]: subring_planes::queue::Completer::wait
//!
//! Nothing here is the server's: the ring, its descriptor and the word's mapping are the
//! client's, so a hostile server can neither block the wait nor keep it from ending at its
//! timeout (the event loop's).

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use subring_planes::interrupt::WakeRef;

use crate::futex_waits::FutexWaits;

/// The io_uring and the word it waits on.
pub(super) struct FutexPoll {
    waits: FutexWaits,
    word: WakeRef,
    /// The key of the wait armed last, unless it was cancelled.
    current: Option<u64>,
    /// The key of the next wait.
    next_key: u64,
}

impl FutexPoll {
    /// A ring for waits on `word` (the completion ring's consumer wake word); `Unsupported`
    /// where the kernel has no io_uring `FUTEX_WAIT`.
    pub(super) fn new(word: WakeRef) -> io::Result<Self> {
        Ok(FutexPoll {
            // Room for the wait and the cancelled ones whose completions are not reaped yet.
            waits: FutexWaits::new(8)?,
            word,
            current: None,
            next_key: 0,
        })
    }

    /// After the word announced a sleep and the ring was re-checked: makes sure a wait is
    /// armed (reaping one that completed first) and submitted. Armed while the word does not
    /// say "sleeping", the wait completes at once: a spurious wake-up, never a lost one.
    pub(super) fn arm(&mut self) -> io::Result<()> {
        self.waits.reap()?;
        if !self.current.is_some_and(|key| self.waits.is_pending(key)) {
            let key = self.next_key;
            self.next_key = self.next_key.wrapping_add(1);
            self.waits.arm(key, &self.word)?;
            self.current = Some(key);
        }
        self.waits.submit()
    }

    /// Cancels the pending wait, if there is one: the client is about to block on the word
    /// itself, and the wait must not take its wake-up. If the cancellation cannot be made,
    /// the wait stays this ring's current one (the next call tries again) and the error says
    /// why: blocking then could sleep through the wake-up.
    pub(super) fn cancel(&mut self) -> io::Result<()> {
        // Earlier cancellations that failed (their waits are no longer current), first.
        self.waits.retry_cancels();
        self.waits.reap()?;
        if let Some(key) = self.current {
            if self.waits.is_pending(key) {
                self.waits.cancel(&[key])?;
            }
        }
        self.current = None;
        Ok(())
    }

    /// Takes a completed wait, so that the descriptor is not readable until the next one.
    pub(super) fn reap(&mut self) -> io::Result<()> {
        self.waits.reap().map(drop)
    }

    /// Whether a wait is armed and not yet reaped.
    #[cfg(test)]
    pub(super) fn armed(&self) -> bool {
        self.current.is_some_and(|key| self.waits.is_pending(key))
    }
}

impl AsFd for FutexPoll {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.waits.fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    // The server's side: claims the word and wakes it, if it says "sleeping".
    use crate::futex_waits::tests::ring_doorbell as wake;

    /// Whether `fd` turns readable within `limit`.
    fn readable_within(fd: BorrowedFd<'_>, limit: Duration) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let start = Instant::now();
        loop {
            let left = limit.saturating_sub(start.elapsed());
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(n) => return n > 0,
                // The wait's completion interrupts this thread, which armed it.
                Err(nix::errno::Errno::EINTR) if start.elapsed() < limit => continue,
                Err(e) => panic!("poll: {e}"),
            }
        }
    }

    /// A ring for waits on `word`, or `None` (the test skips) where the kernel has no io_uring
    /// futex waits.
    fn poll_on(word: &WakeRef) -> Option<FutexPoll> {
        match FutexPoll::new(word.clone()) {
            Ok(p) => Some(p),
            Err(e) if crate::futex_waits::tests::missing(&e) => {
                eprintln!("skipped: no io_uring futex waits here: {e}");
                None
            }
            Err(e) => panic!("io_uring: {e}"),
        }
    }

    /// A word announcing a sleep and a ring with a wait armed on it (as `poll_on`).
    fn armed() -> Option<(WakeRef, FutexPoll)> {
        let word = WakeRef::local();
        let mut poll = poll_on(&word)?;
        word.announce_sleep();
        poll.arm().unwrap();
        assert!(poll.armed());
        Some((word, poll))
    }

    /// A wait that completed while nobody looked (a wake-up the event loop took for another
    /// event) is reaped at the next arming, and a fresh one armed in its place: the next
    /// wake-up makes the descriptor readable again.
    #[test]
    fn a_completed_wait_is_replaced_at_the_next_arming() {
        let Some((word, mut poll)) = armed() else {
            return;
        };
        assert!(!readable_within(poll.as_fd(), Duration::from_millis(20)));
        assert!(wake(&word));
        assert!(readable_within(poll.as_fd(), Duration::from_secs(5)));
        // Not reaped: the next sleep announces and arms.
        word.cancel_sleep();
        word.announce_sleep();
        poll.arm().unwrap();
        poll.reap().unwrap();
        assert!(
            poll.armed(),
            "the completed wait was taken for an armed one"
        );
        assert!(wake(&word));
        assert!(readable_within(poll.as_fd(), Duration::from_secs(5)));
        poll.reap().unwrap();
        assert!(!poll.armed());
    }

    /// A cancellation that cannot be made (its submit fails) is reported, and the wait stays
    /// current: a blocking wait that went ahead could sleep through the wake-up this wait
    /// would take. The next cancellation makes it, and the kernel ends the wait.
    #[test]
    fn a_failed_cancellation_keeps_the_wait_until_one_is_made() {
        let Some((_word, mut poll)) = armed() else {
            return;
        };
        poll.waits.fail_submits = 1;
        assert!(
            poll.cancel().is_err(),
            "a failed cancellation was not reported"
        );
        assert!(
            poll.armed(),
            "the wait was dropped though nothing cancelled it"
        );
        poll.cancel().unwrap();
        assert!(!poll.armed());
        let start = Instant::now();
        while poll.waits.pending() > 0 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the wait was never cancelled"
            );
            std::thread::sleep(Duration::from_millis(1));
            poll.reap().unwrap();
        }
    }
}
