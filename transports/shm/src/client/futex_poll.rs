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
//! Nothing here is the server's: the ring, its descriptor and the word's mapping are the
//! client's, so a hostile server can neither block the wait nor keep it from ending at its
//! timeout (the event loop's).

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use subring_planes::interrupt::WakeRef;

use crate::futex_waits::FutexWaits;

/// The one wait's key.
const COMPLETIONS: u64 = 0;

/// The io_uring and the word it waits on.
pub(super) struct FutexPoll {
    waits: FutexWaits,
    word: WakeRef,
}

impl FutexPoll {
    /// A ring for waits on `word` (the completion ring's consumer wake word); `Unsupported`
    /// where the kernel has no io_uring `FUTEX_WAIT`.
    pub(super) fn new(word: WakeRef) -> io::Result<Self> {
        Ok(FutexPoll {
            waits: FutexWaits::new(1)?,
            word,
        })
    }

    /// After the word announced a sleep and the ring was re-checked: makes sure a wait is
    /// armed (reaping one that completed first) and submitted.
    pub(super) fn arm(&mut self) -> io::Result<()> {
        self.waits.reap()?;
        self.waits.arm(COMPLETIONS, &self.word)?;
        self.waits.submit()
    }

    /// Takes a completed wait, so that the descriptor is not readable until the next one.
    pub(super) fn reap(&mut self) -> io::Result<()> {
        self.waits.reap().map(drop)
    }

    /// Whether a wait is armed and not yet reaped.
    #[cfg(test)]
    pub(super) fn armed(&self) -> bool {
        self.waits.is_pending(COMPLETIONS)
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
    use subring_planes::interrupt::{FutexSignal, Signal};

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

    /// The server's side: claims the word and wakes it, if it says "sleeping".
    fn wake(word: &WakeRef) -> bool {
        let claimed = word.take_sleeper();
        if claimed {
            FutexSignal::new().wake(word).unwrap();
        }
        claimed
    }

    /// A wait that completed while nobody looked (a wake-up the event loop took for another
    /// event) is reaped at the next arming, and a fresh one armed in its place: the next
    /// wake-up makes the descriptor readable again.
    #[test]
    fn a_completed_wait_is_replaced_at_the_next_arming() {
        let word = WakeRef::local();
        let mut poll = match FutexPoll::new(word.clone()) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("skipped: no io_uring futex waits here: {e}");
                return;
            }
        };
        word.announce_sleep();
        poll.arm().unwrap();
        assert!(poll.armed());
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
}
