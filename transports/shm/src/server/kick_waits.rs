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
/// The user data of a cancellation's own completion (posted only if it fails: a successful
/// one skips its completion).
const CANCEL: u64 = u64::MAX;
/// Submission ring entries: arms beyond them are submitted in several calls.
const ENTRIES: u32 = 64;
/// Submit calls that may each take only part of the queue before a submit gives up.
const SUBMIT_TRIES: u32 = 4;

/// Which of a client's words a wait is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Word {
    /// The submission ring's wake word: the client's doorbell for requests.
    Requests = 0,
    /// The completion ring's producer word: the client's reaping, while its ring is full.
    Room = 1,
}

fn user_data(client: u64, which: Word) -> u64 {
    client << 1 | which as u64
}

/// The waits, one io_uring for the server.
pub(crate) struct KickWaits {
    ring: IoUring,
    /// The waits armed (submitted or still queued) and not yet reaped, by user data, each
    /// with its word: the handle keeps the word's memory mapped for as long as the kernel may
    /// read it (a queued entry is read at the submit, whenever that comes).
    pending: HashMap<u64, WakeRef>,
    /// Clients gone whose cancellation could not be submitted: tried again before each sleep
    /// (a wait left armed would keep its word's memory mapped until the ring goes).
    cancels_due: Vec<u64>,
}

impl KickWaits {
    /// An io_uring for futex waits with room for every completion `max_clients` clients can
    /// have outstanding (two waits each, and those of clients gone since the last reap);
    /// `Unsupported` if the kernel has no `IORING_OP_FUTEX_WAIT`.
    pub(crate) fn new(max_clients: u32) -> io::Result<Self> {
        let cq = (u64::from(max_clients) * 4 + 64)
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
        Ok(KickWaits {
            ring,
            pending: HashMap::new(),
            cancels_due: Vec::new(),
        })
    }

    /// The descriptor to watch: readable when a wait has completed.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the ring's descriptor is open while `self.ring` is, and the borrow is tied
        // to `self`.
        unsafe { BorrowedFd::borrow_raw(self.ring.as_raw_fd()) }
    }

    /// Arms a wait on `client`'s `which` word unless one is pending (then returns `false`);
    /// submitted by the next [`submit`](Self::submit).
    pub(crate) fn arm(&mut self, client: u64, which: Word, word: &WakeRef) -> io::Result<bool> {
        let data = user_data(client, which);
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

    /// Cancels `client`'s pending waits (it is going), and reaps what has completed: a server
    /// too busy to sleep still takes the completions of the clients that leave. Each word stays
    /// mapped until its wait's completion is reaped. A cancellation that fails is tried again
    /// by [`retry_cancels`](Self::retry_cancels).
    pub(crate) fn cancel(&mut self, client: u64) -> io::Result<()> {
        let cancelled = self.try_cancel(client);
        if cancelled.is_err() && !self.cancels_due.contains(&client) {
            self.cancels_due.push(client);
        }
        cancelled
    }

    /// Tries again the cancellations that failed.
    pub(crate) fn retry_cancels(&mut self) {
        let mut due = std::mem::take(&mut self.cancels_due);
        due.retain(|&client| self.try_cancel(client).is_err());
        self.cancels_due.extend(due);
    }

    fn try_cancel(&mut self, client: u64) -> io::Result<()> {
        for which in [Word::Requests, Word::Room] {
            let data = user_data(client, which);
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

    /// Takes the completed waits: those clients' words need arming again. Returns how many.
    pub(crate) fn reap(&mut self) -> io::Result<usize> {
        let mut n = 0;
        loop {
            for cqe in self.ring.completion() {
                let data = cqe.user_data();
                if data != CANCEL && self.pending.remove(&data).is_some() {
                    n += 1;
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

    /// Pending waits (for tests).
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.pending.len()
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

    /// A ring, or `None` (the test says why and passes) where the kernel has no io_uring
    /// futex waits, or io_uring is off (a sysctl, a container's seccomp profile).
    fn waits() -> Option<KickWaits> {
        match KickWaits::new(64) {
            Ok(w) => Some(w),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Unsupported | io::ErrorKind::PermissionDenied
                ) || e.raw_os_error() == Some(libc::ENOSYS) =>
            {
                eprintln!("skipped: no io_uring futex waits here: {e}");
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

    /// Reaps until no wait is pending, or a second passes.
    fn reap_until_none_pending(w: &mut KickWaits) {
        let start = Instant::now();
        while w.pending() > 0 && start.elapsed() < Duration::from_secs(1) {
            w.reap().unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The peer's doorbell: claims the word and wakes it, if it says "sleeping".
    fn ring_doorbell(word: &WakeRef) -> bool {
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
        assert!(w.arm(7, Word::Requests, &word).unwrap());
        // Armed once: a second arm while it is pending adds nothing.
        assert!(!w.arm(7, Word::Requests, &word).unwrap());
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
        w.arm(1, Word::Requests, &word).unwrap();
        w.submit().unwrap();
        word.cancel_sleep();
        // Awake: the peer's doorbell finds nobody asleep and makes no system call.
        assert!(!ring_doorbell(&word));
        assert_eq!(reap_until(&mut w, 1), 0);
        word.announce_sleep();
        assert!(
            !w.arm(1, Word::Requests, &word).unwrap(),
            "armed again while pending"
        );
        w.submit().unwrap();
        assert!(ring_doorbell(&word));
        assert_eq!(reap_until(&mut w, 1), 1);
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

    /// A leaving client's waits are cancelled, and each word is held until its wait's
    /// completion is reaped (then let go: nothing is left pending).
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
        reap_until_none_pending(&mut w);
        assert_eq!(w.pending(), 0, "the waits were not all cancelled");
    }

    /// A cancellation that could not be submitted when its client left is made by the next
    /// `retry_cancels`, and the wait goes.
    #[test]
    fn a_cancellation_that_failed_is_made_later() {
        let Some(mut w) = waits() else { return };
        let word = WakeRef::local();
        word.announce_sleep();
        w.arm(5, Word::Requests, &word).unwrap();
        w.submit().unwrap();
        // As `cancel` leaves it when its submit fails.
        w.cancels_due.push(5);
        w.retry_cancels();
        assert!(w.cancels_due.is_empty());
        reap_until_none_pending(&mut w);
        assert_eq!(w.pending(), 0, "the wait was not cancelled");
    }

    /// A client of `server` with `options`, connected over a socket pair while the server
    /// turns.
    fn connect<V: crate::Service<u64, u64>>(
        server: &mut crate::Server<u64, u64, V>,
        options: &crate::ClientOptions,
    ) -> crate::Client<u64, u64> {
        let (server_end, client_end) = crate::socket_pair().unwrap();
        server.add_connection(server_end).unwrap();
        let options = options.clone();
        let t = std::thread::spawn(move || crate::Client::from_socket(client_end, &options));
        let start = Instant::now();
        while !t.is_finished() {
            assert!(start.elapsed() < Duration::from_secs(5), "connect hangs");
            server.run_for(Duration::from_millis(1)).unwrap();
        }
        t.join().unwrap().unwrap()
    }

    /// Turns `server` until it has `clients` clients (bounded).
    fn turn_until_clients<V: crate::Service<u64, u64>>(
        server: &mut crate::Server<u64, u64, V>,
        clients: u64,
    ) {
        let start = Instant::now();
        while server.stats().clients != clients {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{:?}",
                server.stats()
            );
            server.run_for(Duration::from_millis(1)).unwrap();
        }
    }

    /// The ring (and its descriptor) is there from the first client with a futex doorbell to
    /// the last, and not for other clients.
    #[test]
    fn the_ring_lives_from_the_first_futex_doorbell_client_to_the_last() {
        use crate::{ClientOptions, NotifyMode, Server, ServerConfig};
        if waits().is_none() {
            return;
        }
        let mut server = Server::from_fn(ServerConfig::new("kick/1"), |ctx, x: u64| {
            ctx.complete(x + 1)
        })
        .unwrap();
        let trusting = ClientOptions::new("kick/1").mode(NotifyMode::Futex);
        let untrusting = trusting.clone().untrusted_server();
        let plain = connect(&mut server, &trusting);
        assert!(server.kick_waits.is_none());
        let a = connect(&mut server, &untrusting);
        let b = connect(&mut server, &untrusting);
        assert!(server.kick_waits.is_some());
        assert_eq!(server.futex_doorbells, 2);
        drop(a);
        turn_until_clients(&mut server, 2);
        assert!(server.kick_waits.is_some(), "gone with a client left");
        drop(b);
        turn_until_clients(&mut server, 1);
        assert!(server.kick_waits.is_none(), "kept with no client left");
        drop(plain);
        turn_until_clients(&mut server, 0);
    }
}
