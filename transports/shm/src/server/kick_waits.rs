//! An epoll-sleeping server's futex doorbells: for clients that take no eventfd doorbell (they
//! do not trust the server with one: [`ClientOptions::untrusted_server`]), the server waits on
//! their wake words with io_uring's `FUTEX_WAIT` (Linux 6.7), the ring's descriptor in its
//! epoll set, so that a client's futex wake makes the ring readable and ends the server's
//! `epoll_wait`.
//!
//! A wait, once armed, stays armed across the server's sleeps until a wake-up (or a word that
//! no longer says "sleeping" when it is armed) completes it: the word's protocol is the
//! sleep/wake one ([`WakeWord`](subring_planes::interrupt::WakeWord)), and a pending wait is
//! woken by the client's next futex wake whatever the word held in between, as a `FUTEX_WAIT`
//! made by the sleeping thread would be. Each client has at most two waits (its submission
//! ring's word, and its completion ring's producer word for room), and they are cancelled when
//! it goes.
//!
//! [`ClientOptions::untrusted_server`]: crate::ClientOptions::untrusted_server

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use io_uring::{opcode, squeue, IoUring, Probe};
use subring_planes::interrupt::WakeRef;

/// `FUTEX2_SIZE_U32`: a 32-bit futex, shared between processes (no `FUTEX2_PRIVATE`), as the
/// clients' `FUTEX_WAKE` is.
const FUTEX2_SIZE_U32: u32 = 0x02;
/// `FUTEX_BITSET_MATCH_ANY`.
const MATCH_ANY: u64 = u32::MAX as u64;
/// The user data of a cancellation's own completion.
const CANCEL: u64 = u64::MAX;
/// Submission ring entries: arms beyond them are submitted in several calls.
const ENTRIES: u32 = 64;

/// Which of a client's words a wait is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Word {
    /// The submission ring's wake word: the client's doorbell for requests.
    Requests = 0,
    /// The completion ring's producer word: the client's reaping, while its ring is full.
    Room = 1,
}

/// The waits, one io_uring for the server.
pub(crate) struct KickWaits {
    ring: IoUring,
    /// Each client's pending waits, by [`Word`].
    pending: HashMap<u64, [bool; 2]>,
    /// Waits armed (counted for the server's stats).
    pub(crate) armed: u64,
}

impl KickWaits {
    /// An io_uring for futex waits; `Unsupported` if the kernel has no `IORING_OP_FUTEX_WAIT`.
    pub(crate) fn new() -> io::Result<Self> {
        let ring = IoUring::new(ENTRIES)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::FutexWait::CODE) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring has no FUTEX_WAIT (Linux 6.7 and later)",
            ));
        }
        Ok(KickWaits {
            ring,
            pending: HashMap::new(),
            armed: 0,
        })
    }

    /// The descriptor to watch: readable when a wait has completed.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the ring's descriptor is open while `self.ring` is, and the borrow is tied
        // to `self`.
        unsafe { BorrowedFd::borrow_raw(self.ring.as_raw_fd()) }
    }

    /// Arms a wait on `client`'s `which` word unless one is pending. Submitted by the next
    /// [`submit`](Self::submit), which the caller makes before this borrow of `word` ends.
    pub(crate) fn arm(&mut self, client: u64, which: Word, word: &WakeRef) -> io::Result<()> {
        if self.pending.get(&client).is_some_and(|p| p[which as usize]) {
            return Ok(());
        }
        let (addr, sleeping) = word.futex_wait_target();
        let entry = opcode::FutexWait::new(addr, u64::from(sleeping), MATCH_ANY, FUTEX2_SIZE_U32)
            .build()
            .user_data(client << 1 | which as u64);
        self.push(&entry)?;
        self.pending.entry(client).or_default()[which as usize] = true;
        self.armed += 1;
        Ok(())
    }

    /// Cancels `client`'s pending waits (it is going).
    pub(crate) fn cancel(&mut self, client: u64) -> io::Result<()> {
        let Some(pending) = self.pending.remove(&client) else {
            return Ok(());
        };
        for which in [Word::Requests, Word::Room] {
            if pending[which as usize] {
                let entry = opcode::AsyncCancel::new(client << 1 | which as u64)
                    .build()
                    .user_data(CANCEL);
                self.push(&entry)?;
            }
        }
        self.submit()
    }

    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        if self.ring.submission().is_full() {
            self.submit_now()?;
        }
        // SAFETY: a futex wait reads its word only when the kernel issues it, during the
        // submit that the caller makes before the word's `WakeRef` goes (`arm`), and never
        // after: a pending wait is keyed on the word's page, and its wake-up touches no user
        // memory. A cancellation points at no memory.
        unsafe { self.ring.submission().push(entry) }
            .map_err(|_| io::Error::other("the futex-wait ring is full after a submit"))
    }

    /// Submits what was armed or cancelled (no system call if nothing was).
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        self.submit_now()
    }

    fn submit_now(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes the completed waits: those clients' words need arming again. Returns how many.
    pub(crate) fn reap(&mut self) -> io::Result<usize> {
        let mut n = 0;
        loop {
            for cqe in self.ring.completion() {
                let data = cqe.user_data();
                if data == CANCEL {
                    continue;
                }
                let which = (data & 1) as usize;
                if let Some(pending) = self.pending.get_mut(&(data >> 1)) {
                    pending[which] = false;
                    n += 1;
                }
            }
            // Completions beyond the ring's room wait in the kernel's overflow list (a wait
            // stays armed until reaped, so none may be lost): an enter moves them over.
            if !self.ring.submission().cq_overflow() {
                return Ok(n);
            }
            self.submit_now()?;
        }
    }

    /// Pending waits (for tests).
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.pending
            .values()
            .map(|p| p.iter().filter(|&&b| b).count())
            .sum()
    }
}

impl AsFd for KickWaits {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use subring_planes::interrupt::{FutexSignal, Signal};

    fn waits() -> Option<KickWaits> {
        match KickWaits::new() {
            Ok(w) => Some(w),
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                eprintln!("skipped: {e}");
                None
            }
            Err(e) => panic!("io_uring: {e}"),
        }
    }

    /// Reaps until `n` waits have completed, or a second passes.
    fn reap_until(w: &mut KickWaits, n: usize) -> usize {
        let start = Instant::now();
        let mut got = 0;
        while got < n && start.elapsed() < Duration::from_secs(1) {
            got += w.reap().unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        got
    }

    #[test]
    fn a_wait_stays_armed_until_the_word_is_woken() {
        let Some(mut w) = waits() else { return };
        let word = WakeRef::local();
        word.announce_sleep();
        w.arm(7, Word::Requests, &word).unwrap();
        // Armed once: a second arm while it is pending adds nothing.
        w.arm(7, Word::Requests, &word).unwrap();
        w.submit().unwrap();
        assert_eq!((w.armed, w.pending()), (1, 1));
        assert_eq!(reap_until(&mut w, 1), 0, "completed without a wake-up");
        // The peer's doorbell: claim the word, wake it.
        assert!(word.take_sleeper());
        FutexSignal::new().wake(&word).unwrap();
        assert_eq!(reap_until(&mut w, 1), 1);
        assert_eq!(w.pending(), 0);
    }

    #[test]
    fn a_word_that_no_longer_says_sleeping_completes_its_wait_at_once() {
        let Some(mut w) = waits() else { return };
        let word = WakeRef::local();
        // Not announced: the client already claimed it (or scribbled on it).
        w.arm(3, Word::Room, &word).unwrap();
        w.submit().unwrap();
        assert_eq!(reap_until(&mut w, 1), 1);
        assert_eq!(w.pending(), 0);
    }

    #[test]
    fn a_leaving_clients_waits_are_cancelled() {
        let Some(mut w) = waits() else { return };
        let (a, b) = (WakeRef::local(), WakeRef::local());
        a.announce_sleep();
        b.announce_sleep();
        w.arm(9, Word::Requests, &a).unwrap();
        w.arm(9, Word::Room, &b).unwrap();
        w.submit().unwrap();
        assert_eq!(w.pending(), 2);
        w.cancel(9).unwrap();
        assert_eq!(w.pending(), 0);
        // Both waits and both cancellations complete: the ring holds nothing afterwards (a
        // wait left armed would complete only on a wake, which never comes).
        let start = Instant::now();
        let mut seen = 0;
        while seen < 4 && start.elapsed() < Duration::from_secs(1) {
            seen += w.ring.completion().count();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(seen, 4, "the waits were not all cancelled");
    }
}
