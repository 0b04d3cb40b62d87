//! Waiting for completions: entering the kernel, polling, or sleeping on the eventfd.

use super::*;

impl Uring {
    fn deadline_left(deadline: Option<Instant>) -> Option<Option<Duration>> {
        match deadline {
            None => Some(None),
            Some(d) => d
                .checked_duration_since(Instant::now())
                .filter(|r| !r.is_zero())
                .map(Some),
        }
    }

    pub(crate) fn cq_len(&mut self) -> usize {
        self.ring.completion().len()
    }

    /// Submits what is queued and waits until at least `min` completions are ready (or the
    /// timeout passes): in [`WaitMode::Enter`] one `io_uring_enter` does both, like liburing's
    /// `io_uring_submit_and_wait`. `min` is capped at the number of operations in flight
    /// (operations, not completions: with one multishot operation in flight, it waits for one).
    ///
    /// The common case (no timeout, one enter that brings what was asked for) is inlined into
    /// the caller, system call included; everything else continues out of line.
    ///
    /// Without a timeout, a ring with nothing in flight and nothing to reap refuses the wait
    /// ([`NothingInFlight`]) rather than block forever.
    #[inline(always)]
    pub fn wait_for(&mut self, min: usize, timeout: Option<Duration>) -> Result<(), QueueError> {
        self.book.replenish_all();
        let in_flight = self.in_flight();
        let min = min.clamp(1, in_flight.max(1));
        self.notify.waits += 1;
        if self.wait != WaitMode::Enter || timeout.is_some() {
            return self.wait_for_slow(min, timeout);
        }
        let have = self.cq_len();
        if have >= min {
            self.notify.without_sleep += 1;
            return Ok(());
        }
        if in_flight == 0 {
            return Err(NothingInFlight.into());
        }
        // No flush first: the enter below carries GETEVENTS, which makes the kernel flush
        // overflowed completions and run deferred task work before it decides to sleep. It
        // also submits anything pushed since the last doorbell.
        self.notify.sleeps += 1;
        self.stats.enters += 1;
        match self.enter_and_wait(min - have) {
            Ok(_) => self.note_enter_submits(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        if self.cq_len() >= min {
            return Ok(());
        }
        // Short (a signal, or completions the kernel still holds).
        self.enter_until(min, None, None)
    }

    /// What an enter that submitted does to the doorbell's books (called once it returned:
    /// one the kernel refused submitted nothing).
    #[inline(always)]
    fn note_enter_submits(&mut self) {
        if self.unsubmitted() > 0 {
            self.rung_at = self.stats.pushed;
            self.stats.doorbell.record(Rung::Rang);
        }
    }

    /// [`Uring::wait_for`] with a timeout, or in a wait mode other than [`WaitMode::Enter`]
    /// (`min` already capped and the wait counted).
    #[inline(never)]
    fn wait_for_slow(&mut self, min: usize, timeout: Option<Duration>) -> Result<(), QueueError> {
        if timeout.is_none() && self.in_flight() == 0 && self.cq_len() == 0 {
            return Err(NothingInFlight.into());
        }
        if self.wait != WaitMode::Enter {
            return self.wait_without_enter(min, timeout);
        }
        if self.cq_len() >= min {
            self.notify.without_sleep += 1;
            return Ok(());
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        self.enter_until(min, deadline, timeout)
    }

    /// Waits for a batch: until `min` completions are ready, or, once `batch_wait` has passed,
    /// as soon as at least one is (the kernel's `min_wait_usec`, Linux 6.12), or until the
    /// timeout passes. Queued entries are submitted in the same system call. A busy server
    /// that waits this way makes one `io_uring_enter` per batch rather than per completion,
    /// and an idle one waits no longer than `batch_wait` for a lone completion.
    ///
    /// On a kernel without `IORING_FEAT_MIN_TIMEOUT` it is [`Uring::wait_for`]`(1, timeout)`;
    /// in a wait mode other than [`WaitMode::Enter`], `wait_for(min.min(1), ..)` too.
    pub fn wait_batch(
        &mut self,
        min: usize,
        batch_wait: Duration,
        timeout: Option<Duration>,
    ) -> Result<(), QueueError> {
        if min <= 1 || self.wait != WaitMode::Enter || !self.ring.params().is_feature_min_timeout()
        {
            return self.wait_for(1, timeout);
        }
        self.book.replenish_all();
        self.notify.waits += 1;
        if self.cq_len() >= min {
            self.notify.without_sleep += 1;
            return Ok(());
        }
        if self.flush_if_needed()? && self.cq_len() >= min {
            return Ok(());
        }
        if timeout.is_none() && self.in_flight() == 0 && self.cq_len() == 0 {
            return Err(NothingInFlight.into());
        }
        // The timeout bounds the whole wait; the kernel needs one to take `min_wait_usec`.
        let limit = timeout.unwrap_or(Duration::from_secs(u32::MAX.into()));
        let ts = types::Timespec::from(limit);
        let usec = u32::try_from(batch_wait.as_micros())
            .unwrap_or(u32::MAX)
            .max(1);
        let args = types::SubmitArgs::new().timespec(&ts).min_wait_usec(usec);
        let min = min.min(self.in_flight().max(1));
        self.notify.sleeps += 1;
        self.stats.enters += 1;
        match self.ring.submitter().submit_with_args(min, &args) {
            Ok(_) => self.note_enter_submits(),
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => {
                if self.cq_len() == 0 {
                    self.notify.timeouts += 1;
                    return Err(QueueError::Timeout(limit));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(self.enter_error(e).into()),
        }
        Ok(())
    }

    /// Enters (submitting and waiting) until `min` completions are ready or `deadline`
    /// passes; after a short enter, flushes what the kernel says it still holds.
    #[inline(never)]
    fn enter_until(
        &mut self,
        min: usize,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Result<(), QueueError> {
        let mut have = self.cq_len();
        loop {
            if have >= min {
                return Ok(());
            }
            // Not enough yet (before the first enter here, or after a short one: a signal, the
            // timeout, or completions the kernel still holds): flush what the kernel says it
            // holds, and look again.
            if self.flush_if_needed()? {
                have = self.cq_len();
                if have >= min {
                    return Ok(());
                }
            }
            let Some(left) = Self::deadline_left(deadline) else {
                self.notify.timeouts += 1;
                return Err(QueueError::Timeout(timeout.unwrap_or_default()));
            };
            self.notify.sleeps += 1;
            self.stats.enters += 1;
            let want = min - have;
            let entered = match left.map(types::Timespec::from) {
                Some(ts) => {
                    let args = types::SubmitArgs::new().timespec(&ts);
                    self.ring.submitter().submit_with_args(want, &args)
                }
                // Without a timeout, a plain enter: no argument block to copy in.
                None => self.enter_and_wait(want),
            };
            match entered {
                // The enter submitted what was pushed since the last doorbell.
                Ok(_) => self.note_enter_submits(),
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.enter_error(e).into()),
            }
            have = self.cq_len();
        }
    }

    /// One `io_uring_enter` that submits what is queued and waits for `want` completions: what
    /// `Submitter::submit_and_wait` does for a wait, as an instruction inlined into the caller.
    /// A `want` above zero always carries GETEVENTS, which also flushes overflowed completions
    /// and runs deferred task work, so the queue's flags need no look; with SQPOLL the entry
    /// also wakes the polling thread if it sleeps.
    ///
    /// Why inline, through rustix's direct system call rather than the io-uring crate's
    /// out-of-line `submit_and_wait` and libc's `syscall()`: on this kind of machine (AMD, with
    /// the kernel's "Safe RET" return-predictor mitigation) the first `ret` after a system call
    /// mispredicts at a cost of about 90 ns, and every further one about 7 ns. A wait with no
    /// frame to return through pays neither. docs/runs/2026-11-24-session-4.md has the measurement.
    #[inline(always)]
    fn enter_and_wait(&mut self, want: usize) -> io::Result<usize> {
        let to_submit = self.ring.submission().len() as u32;
        let mut flags = IoringEnterFlags::GETEVENTS;
        if self.is_sqpoll() && self.ring.submission().need_wakeup() {
            // `need_wakeup` issues the SeqCst fence that pairs with the kernel thread's barrier
            // before it sleeps.
            flags |= IoringEnterFlags::SQ_WAKEUP;
        }
        self.enter(to_submit, want as u32, flags)
    }

    /// `io_uring_enter` on this ring with no argument block, inlined (see
    /// [`Uring::enter_and_wait`] for why).
    #[inline(always)]
    pub(crate) fn enter(
        &self,
        to_submit: u32,
        want: u32,
        flags: IoringEnterFlags,
    ) -> io::Result<usize> {
        // SAFETY: the ring's own fd, flags the kernel defines for this call with no argument
        // block, and `to_submit` counts entries already published in the SQ (every pointer
        // they carry was vouched for when it was pushed, see `push_one`).
        let entered = unsafe { io_uring_enter(self.ring.as_fd(), to_submit, want, flags) };
        entered
            .map(|n| n as usize)
            .map_err(|e| self.enter_error(io::Error::from(e)))
    }

    /// An `io_uring_enter` error, with `EEXIST` from a single-issuer ring entered from another
    /// thread named as such ([`SubmitError::NotTheIssuer`]).
    ///
    /// [`SubmitError::NotTheIssuer`]: crate::SubmitError::NotTheIssuer
    #[cold]
    #[inline(never)]
    pub(crate) fn enter_error(&self, e: io::Error) -> io::Error {
        let params = self.ring.params();
        if e.raw_os_error() != Some(libc::EEXIST) || !params.is_setup_single_issuer() {
            return e;
        }
        let defer = self.defer_taskrun;
        let error = crate::SubmitError::NotTheIssuer {
            setup: if defer {
                "DEFER_TASKRUN"
            } else {
                "SINGLE_ISSUER"
            },
            waits: if defer { " or wait on it" } else { "" },
        };
        io::Error::new(io::ErrorKind::PermissionDenied, error)
    }

    /// [`Uring::wait_for`] in [`WaitMode::Poll`] and [`WaitMode::EventFd`]: submit, then poll
    /// the CQ or sleep on the eventfd.
    fn wait_without_enter(
        &mut self,
        min: usize,
        timeout: Option<Duration>,
    ) -> Result<(), QueueError> {
        if self.cq_len() >= min || (self.flush_if_needed()? && self.cq_len() >= min) {
            self.notify.without_sleep += 1;
            return Ok(());
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        self.submit()?;
        let word = WakeWord::new();
        loop {
            if self.cq_len() >= min || (self.flush_if_needed()? && self.cq_len() >= min) {
                self.notify.without_sleep += u64::from(self.wait == WaitMode::Poll);
                return Ok(());
            }
            let Some(left) = Self::deadline_left(deadline) else {
                self.notify.timeouts += 1;
                return Err(QueueError::Timeout(timeout.unwrap_or_default()));
            };
            match &self.eventfd {
                // The kernel signals the eventfd on every completion and the count persists,
                // so one that lands between the check above and this block is not lost.
                Some(efd) => {
                    self.notify.sleeps += 1;
                    efd.block(&word, left)?;
                }
                None => std::hint::spin_loop(),
            }
        }
    }
}
