//! Futex waits an event loop can watch: io_uring's `FUTEX_WAIT` (Linux 6.7) on wake words
//! ([`WakeWord`](subring_planes::interrupt::WakeWord)), the ring's descriptor readable when one
//! completes. An epoll-sleeping server waits this way on the futex doorbells of clients that
//! do not trust it with an eventfd (`server/kick_waits.rs`), and a futex-mode client in an
//! event loop (tokio, mio) on its completion ring's word.
//!
//! A wait, once armed, stays armed across sleeps until a wake-up (or a word that no longer
//! says "sleeping" when it is armed) completes it: the word's protocol is the sleep/wake one,
//! and a pending wait is woken by the peer's next futex wake whatever the word held in
//! between, as a `FUTEX_WAIT` made by the sleeping thread would be. Each wait has a key, the
//! caller's name for its word; a key is armed at most once at a time.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use io_uring::{opcode, squeue, IoUring, Probe};
use subring_planes::interrupt::WakeRef;

/// `FUTEX2_SIZE_U32`: a 32-bit futex, shared between processes (no `FUTEX2_PRIVATE`), as the
/// clients' `FUTEX_WAKE` is.
const FUTEX2_SIZE_U32: u32 = 0x02;
/// `FUTEX_BITSET_MATCH_ANY`.
const MATCH_ANY: u64 = u32::MAX as u64;
/// The user data of a cancellation's own completion (posted only if it fails: a successful
/// one skips its completion).
const CANCEL: u64 = u64::MAX;
/// Submission ring entries: arms beyond them are submitted in several calls.
const ENTRIES: u32 = 64;
/// Submit calls that may each take only part of the queue before a submit gives up.
const SUBMIT_TRIES: u32 = 4;

/// Futex waits on one io_uring.
pub(crate) struct FutexWaits {
    ring: IoUring,
    /// The waits armed (submitted or still queued) and not yet reaped, by user data, each
    /// with its word: the handle keeps the word's memory mapped for as long as the kernel may
    /// read it (a queued entry is read at the submit, whenever that comes).
    pending: HashMap<u64, WakeRef>,
    /// Keys of the pending waits cancelled because their clients left.
    departed: HashSet<u64>,
    /// Keys whose cancellation could not be submitted: tried again before each sleep (a wait
    /// left armed would keep its word's memory mapped until the ring goes).
    cancels_due: Vec<u64>,
    /// Submits left to fail, for tests of what a failed submit leaves.
    #[cfg(test)]
    pub(crate) fail_submits: u32,
}

impl FutexWaits {
    /// An io_uring for futex waits with room for every completion `max_waits` waits can have
    /// outstanding (twice as many, for those cancelled since the last reap); `Unsupported` if
    /// the kernel has no `IORING_OP_FUTEX_WAIT`.
    pub(crate) fn new(max_waits: u32) -> io::Result<Self> {
        let cq = (u64::from(max_waits) * 2 + 64)
            .next_power_of_two()
            .clamp(128, 65536) as u32;
        let ring = IoUring::builder().setup_cqsize(cq).build(ENTRIES)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::FutexWait::CODE) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring has no FUTEX_WAIT (Linux 6.7 and later)",
            ));
        }
        Ok(FutexWaits {
            ring,
            pending: HashMap::new(),
            departed: HashSet::new(),
            cancels_due: Vec::new(),
            #[cfg(test)]
            fail_submits: 0,
        })
    }

    /// The descriptor to watch: readable when a wait has completed.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the ring's descriptor is open while `self.ring` is, and the borrow is tied
        // to `self`.
        unsafe { BorrowedFd::borrow_raw(self.ring.as_raw_fd()) }
    }

    /// Arms a wait on `word`, under `key`, unless one is pending under that key (then returns
    /// `false`); submitted by the next [`submit`](Self::submit).
    pub(crate) fn arm(&mut self, key: u64, word: &WakeRef) -> io::Result<bool> {
        debug_assert_ne!(key, CANCEL, "the cancellations' key");
        let data = key;
        if self.pending.contains_key(&data) {
            return Ok(false);
        }
        let (addr, sleeping) = word.futex_wait_target();
        let entry = opcode::FutexWait::new(addr, u64::from(sleeping), MATCH_ANY, FUTEX2_SIZE_U32)
            .build()
            .user_data(data);
        self.push(&entry)?;
        self.pending.insert(data, word.clone());
        Ok(true)
    }

    /// Cancels the pending waits under `keys` (their words are going), and reaps what has
    /// completed: a server too busy to sleep still takes the completions of the clients that
    /// leave. Each word stays mapped until its wait's completion is reaped (or the whole set of
    /// waits is dropped: a queued wait reads its word only at the submit, and a pending one
    /// is keyed on the word's page, not its memory). A cancellation that fails is tried again
    /// by [`retry_cancels`](Self::retry_cancels).
    pub(crate) fn cancel(&mut self, keys: &[u64]) -> io::Result<()> {
        let departed: Vec<u64> = keys
            .iter()
            .copied()
            .filter(|k| self.pending.contains_key(k))
            .collect();
        self.departed.extend(departed);
        let cancelled = self.try_cancel(keys);
        if cancelled.is_err() {
            for &key in keys {
                if !self.cancels_due.contains(&key) {
                    self.cancels_due.push(key);
                }
            }
        }
        cancelled
    }

    /// Tries again the cancellations that failed.
    pub(crate) fn retry_cancels(&mut self) {
        let mut due = std::mem::take(&mut self.cancels_due);
        due.retain(|&key| self.try_cancel(&[key]).is_err());
        self.cancels_due.extend(due);
    }

    fn try_cancel(&mut self, keys: &[u64]) -> io::Result<()> {
        for &data in keys {
            if self.pending.contains_key(&data) {
                let entry = opcode::AsyncCancel::new(data)
                    .build()
                    .flags(squeue::Flags::SKIP_SUCCESS)
                    .user_data(CANCEL);
                self.push(&entry)?;
            }
        }
        self.submit()?;
        self.reap().map(drop)
    }

    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        if self.ring.submission().is_full() {
            self.submit_now()?;
        }
        // SAFETY: a futex wait reads its word when the kernel issues it, at a submit, and
        // never after (a pending wait is keyed on the word's page; its wake-up touches no user
        // memory). The word stays mapped until then: `arm` keeps its `WakeRef` in `pending`
        // until the wait's completion is reaped, which comes after its submit. A cancellation
        // points at no memory.
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

    /// Submits the whole queue: a submit may take only part of it (the kernel could not
    /// allocate a request), and a wait left queued must not be taken for armed.
    fn submit_now(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if self.fail_submits > 0 {
            self.fail_submits -= 1;
            return Err(io::Error::other("a submit failed (made to, by a test)"));
        }
        let mut tries = 0;
        loop {
            match self.ring.submit() {
                Ok(_) if self.ring.submission().is_empty() => return Ok(()),
                // Part of the queue, or none of it (the kernel could not allocate a request).
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            tries += 1;
            if tries == SUBMIT_TRIES {
                return Err(io::Error::other(
                    "the kernel took only part of the futex waits (out of memory?)",
                ));
            }
        }
    }

    /// Takes the completed waits: their words need arming again. Returns how many.
    pub(crate) fn reap(&mut self) -> io::Result<usize> {
        let mut n = 0;
        loop {
            for cqe in self.ring.completion() {
                let data = cqe.user_data();
                if data == CANCEL {
                    continue;
                }
                if let Some(word) = self.pending.remove(&data) {
                    n += 1;
                    // A departed client's word may be the last handle to its memory, whose
                    // unmapping is the dropper thread's work, as the rest of it is.
                    if self.departed.remove(&data) {
                        crate::peer_fd::drop_elsewhere(word);
                    }
                }
            }
            // Completions beyond the ring's room wait in the kernel's overflow list (the
            // ring is sized so that they should not): an enter moves them over.
            if !self.ring.submission().cq_overflow() {
                return Ok(n);
            }
            self.submit_now()?;
        }
    }

    /// Whether a wait is pending under `key` (armed, and its completion not reaped).
    pub(crate) fn is_pending(&self, key: u64) -> bool {
        self.pending.contains_key(&key)
    }

    /// Pending waits (for tests).
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }
}

impl AsFd for FutexWaits {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use subring_planes::interrupt::{FutexSignal, Signal};

    /// A ring, or `None` (the test says why and passes) where the kernel has no io_uring
    /// futex waits, or io_uring is off (a sysctl, a container's seccomp profile).
    fn waits() -> Option<FutexWaits> {
        match FutexWaits::new(128) {
            Ok(w) => Some(w),
            Err(e) if missing(&e) => {
                eprintln!("skipped: no io_uring futex waits here: {e}");
                None
            }
            Err(e) => panic!("io_uring: {e}"),
        }
    }

    /// Whether `e` says this kernel has no io_uring futex waits (an older kernel, io_uring
    /// turned off by a sysctl or a seccomp profile): a test then skips, unless
    /// `SUBRING_REQUIRE_FUTEX_WAITS` is set (CI sets it where the kernel has them).
    pub(crate) fn missing(e: &io::Error) -> bool {
        let missing = matches!(
            e.kind(),
            io::ErrorKind::Unsupported | io::ErrorKind::PermissionDenied
        ) || e.raw_os_error() == Some(libc::ENOSYS);
        assert!(
            !missing || std::env::var_os("SUBRING_REQUIRE_FUTEX_WAITS").is_none(),
            "SUBRING_REQUIRE_FUTEX_WAITS is set, but io_uring has no futex waits here: {e}"
        );
        missing
    }

    /// Reaps until `n` waits have completed, or a second passes.
    fn reap_until(w: &mut FutexWaits, n: usize) -> usize {
        let start = Instant::now();
        let mut got = 0;
        while got < n && start.elapsed() < Duration::from_secs(1) {
            got += w.reap().unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        got
    }

    /// Reaps until no wait is pending, or a second passes.
    fn reap_until_none_pending(w: &mut FutexWaits) {
        let start = Instant::now();
        while w.pending() > 0 && start.elapsed() < Duration::from_secs(1) {
            w.reap().unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The peer's doorbell: claims the word and wakes it, if it says "sleeping".
    pub(crate) fn ring_doorbell(word: &WakeRef) -> bool {
        let claimed = word.take_sleeper();
        if claimed {
            FutexSignal::new().wake(word).unwrap();
        }
        claimed
    }

    #[test]
    fn a_wait_stays_armed_until_the_word_is_woken() {
        let Some(mut w) = waits() else { return };
        let word = WakeRef::local();
        word.announce_sleep();
        assert!(w.arm(7, &word).unwrap());
        // Armed once: a second arm while it is pending adds nothing.
        assert!(!w.arm(7, &word).unwrap());
        w.submit().unwrap();
        assert_eq!(w.pending(), 1);
        assert_eq!(reap_until(&mut w, 1), 0, "completed without a wake-up");
        assert!(ring_doorbell(&word));
        assert_eq!(reap_until(&mut w, 1), 1);
        assert_eq!(w.pending(), 0);
    }

    /// What the server does between two sleeps: it wakes for another reason (the wait stays
    /// armed), cancels its announcement, serves, announces again, and does not arm again. The
    /// wait armed at the first sleep still ends at the peer's doorbell after the second
    /// announcement.
    #[test]
    fn a_wait_armed_at_an_earlier_sleep_is_woken_after_the_next_announcement() {
        let Some(mut w) = waits() else { return };
        let word = WakeRef::local();
        word.announce_sleep();
        w.arm(1, &word).unwrap();
        w.submit().unwrap();
        word.cancel_sleep();
        // Awake: the peer's doorbell finds nobody asleep and makes no system call.
        assert!(!ring_doorbell(&word));
        assert_eq!(reap_until(&mut w, 1), 0);
        word.announce_sleep();
        assert!(!w.arm(1, &word).unwrap(), "armed again while pending");
        w.submit().unwrap();
        assert!(ring_doorbell(&word));
        assert_eq!(reap_until(&mut w, 1), 1);
    }

    #[test]
    fn a_word_that_no_longer_says_sleeping_completes_its_wait_at_once() {
        let Some(mut w) = waits() else { return };
        let word = WakeRef::local();
        // Not announced: the client already claimed it (or scribbled on it).
        w.arm(3, &word).unwrap();
        w.submit().unwrap();
        assert_eq!(reap_until(&mut w, 1), 1);
        assert_eq!(w.pending(), 0);
    }

    /// Cancelled waits go, and each word is held until its wait's completion is reaped (then
    /// let go: nothing is left pending).
    #[test]
    fn cancelled_waits_go() {
        let Some(mut w) = waits() else { return };
        let (a, b) = (WakeRef::local(), WakeRef::local());
        a.announce_sleep();
        b.announce_sleep();
        w.arm(18, &a).unwrap();
        w.arm(19, &b).unwrap();
        w.submit().unwrap();
        assert_eq!(w.pending(), 2);
        w.cancel(&[18, 19]).unwrap();
        reap_until_none_pending(&mut w);
        assert_eq!(w.pending(), 0, "the waits were not all cancelled");
    }

    /// A cancellation that could not be submitted when it was asked for is made by the next
    /// `retry_cancels`, and the wait goes.
    #[test]
    fn a_cancellation_that_failed_is_made_later() {
        let Some(mut w) = waits() else { return };
        let word = WakeRef::local();
        word.announce_sleep();
        w.arm(5, &word).unwrap();
        w.submit().unwrap();
        // As `cancel` leaves it when its submit fails.
        w.cancels_due.push(5);
        w.retry_cancels();
        assert!(w.cancels_due.is_empty());
        reap_until_none_pending(&mut w);
        assert_eq!(w.pending(), 0, "the wait was not cancelled");
    }
}
