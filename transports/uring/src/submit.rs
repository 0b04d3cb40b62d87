//! Validating and queueing submissions, and the doorbell.

use super::*;

impl Uring {
    /// Entries pushed since the doorbell was last rung (what the next submit hands over).
    pub fn queued(&self) -> usize {
        self.unsubmitted() as usize
    }

    /// Validates a submission against this ring (nothing changes if it is refused) and
    /// resolves into `fin` what its entry needs from the ring. (An out-parameter rather than a
    /// returned `Result<Finish, _>`: that was copied through the stack with a
    /// store-forwarding stall.)
    #[inline(always)]
    fn validate(&self, sub: &Submission, fin: &mut op::Finish) -> Result<(), QueueError> {
        if !self.supports(sub.op.opcode()) {
            return Err(unsupported(sub.op.name(), sub.op.opcode()));
        }
        let target = match &sub.op {
            Op::Read { fd, .. }
            | Op::Write { fd, .. }
            | Op::Readv { fd, .. }
            | Op::Writev { fd, .. }
            | Op::ReadFixed { fd, .. }
            | Op::WriteFixed { fd, .. }
            | Op::Fsync { fd, .. }
            | Op::Send { fd, .. }
            | Op::SendZc { fd, .. }
            | Op::SendBuf { fd, .. }
            | Op::SendZcFixed { fd, .. }
            | Op::Recv { fd, .. }
            | Op::SendMsg { fd, .. }
            | Op::RecvMsg { fd, .. }
            | Op::Accept { fd }
            | Op::AcceptMulti { fd }
            | Op::AcceptDirect { fd, .. }
            | Op::AcceptMultiDirect { fd }
            | Op::RecvMulti { fd, .. }
            | Op::RecvMultiBundle { fd, .. }
            | Op::SendBundle { fd, .. }
            | Op::ReadMulti { fd, .. }
            | Op::PollMulti { fd, .. }
            | Op::Connect { fd, .. }
            | Op::Poll { fd, .. }
            | Op::CancelFd { fd, .. }
            | Op::Bind { fd, .. }
            | Op::Listen { fd, .. }
            | Op::Shutdown { fd, .. }
            | Op::Fallocate { fd, .. } => match fd {
                Target::Fixed(i) => Some(*i),
                Target::Fd(_) => None,
            },
            Op::Close {
                fd: CloseTarget::Fixed(i),
            } => Some(*i),
            _ => None,
        };
        if let Some(i) = target {
            if i >= self.files {
                return Err(file_out_of_range(i, self.files));
            }
        }
        match &sub.op {
            Op::ReadFixed { buf, .. } => fin.fixed = Some(self.resolve_fixed(buf, true)?),
            Op::WriteFixed { buf, .. } | Op::SendZcFixed { buf, .. } => {
                fin.fixed = Some(self.resolve_fixed(buf, false)?)
            }
            Op::MsgRing { token, .. } if token & (OWNED | LIGHT) != 0 => {
                return Err(SubmitError::TokenBits { token: *token }.into());
            }
            Op::Cancel { token }
            | Op::TimeoutRemove { token }
            | Op::TimeoutUpdate { token, .. } => fin.cancel_target = self.cancel_target(*token)?,
            Op::AcceptDirect { slot, .. }
            | Op::SocketDirect { slot, .. }
            | Op::OpenAtDirect { slot, .. } => self.check_slot(*slot)?,
            Op::AcceptMultiDirect { .. } => self.check_slot(DirectSlot::Any)?,
            Op::FilesUpdate { offset, fds } => {
                let end = u64::from(*offset) + fds.len() as u64;
                if end > u64::from(self.files) {
                    return Err(file_out_of_range(
                        u32::try_from(end - 1).unwrap_or(u32::MAX),
                        self.files,
                    ));
                }
            }
            Op::RecvMulti { group, .. }
            | Op::RecvMultiBundle { group, .. }
            | Op::ReadMulti { group, .. } => self.check_group(&sub.op, *group)?,
            Op::SendBundle { group, flags, .. } => {
                if flags & libc::MSG_ZEROCOPY != 0 {
                    return Err(SubmitError::ZeroCopyFlag { op: sub.op.name() }.into());
                }
                self.check_send_group(&sub.op, *group)?
            }
            Op::Send { flags, .. } | Op::SendBuf { flags, .. } | Op::SendMsg { flags, .. }
                if flags & libc::MSG_ZEROCOPY != 0 =>
            {
                return Err(SubmitError::ZeroCopyFlag { op: sub.op.name() }.into());
            }
            _ => {}
        }
        fin.flags = match sub.link {
            Link::None => squeue::Flags::empty(),
            Link::Soft => squeue::Flags::IO_LINK,
            Link::Hard => squeue::Flags::IO_HARDLINK,
        };
        Ok(())
    }

    /// An operation picking buffers must name a registered group; a bundle needs the kernel's
    /// support and a group consumed whole.
    #[inline(never)]
    fn check_group(&self, op: &Op, group: BufGroup) -> Result<(), QueueError> {
        let Some(g) = self.book.groups.iter().find(|g| g.id == group.id()) else {
            return Err(SubmitError::NoBufGroup { group: group.id() }.into());
        };
        if let Op::RecvMultiBundle { .. } = op {
            if !self.ring.params().is_feature_recvsend_bundle() {
                return Err(unsupported(op.name(), op.opcode()));
            }
            if g.incremental() {
                return Err(SubmitError::BundleOnIncremental { group: group.id() }.into());
            }
        }
        Ok(())
    }

    /// A send bundle names a registered send ring, with no other send bundle on it in flight.
    #[inline(never)]
    fn check_send_group(&self, op: &Op, group: BufGroup) -> Result<(), QueueError> {
        let Some(g) = self.book.send_groups.iter().find(|g| g.id == group.id()) else {
            return Err(SubmitError::NoBufGroup { group: group.id() }.into());
        };
        if !g.in_step() {
            return Err(SubmitError::SendRingOutOfStep { group: group.id() }.into());
        }
        if !self.ring.params().is_feature_recvsend_bundle() {
            return Err(unsupported(op.name(), op.opcode()));
        }
        let busy = self
            .book
            .slots
            .iter()
            .any(|s| matches!(&s.op, Some(Op::SendBundle { group: g, .. }) if *g == group));
        if busy {
            return Err(SubmitError::BundleInFlight { group: group.id() }.into());
        }
        Ok(())
    }

    /// A direct descriptor's slot must lie in the registered file table (or, for any slot, a
    /// table must be registered).
    fn check_slot(&self, slot: DirectSlot) -> Result<(), QueueError> {
        match slot {
            DirectSlot::At(i) if i >= self.files => Err(file_out_of_range(i, self.files)),
            DirectSlot::Any if self.files == 0 => Err(SubmitError::NoFileTable.into()),
            _ => Ok(()),
        }
    }

    /// The `user_data` of the in-flight operation submitted with `token`, for a cancel.
    #[inline(never)]
    fn cancel_target(&self, token: u64) -> Result<u64, QueueError> {
        let (key, slot) = self
            .book
            .slots
            .iter()
            .enumerate()
            .find(|(_, s)| s.op.is_some() && s.token == token)
            .ok_or(SubmitError::NotInFlight { token })?;
        Ok(Book::user_data(key, slot.seal))
    }

    /// A push into a full submission queue: makes room ([`OnFull`]) and pushes, or hands the
    /// submission back saying why not.
    #[cold]
    #[inline(never)]
    fn push_when_full(&mut self, sub: Submission) -> Result<(), Rejected<Submission>> {
        if self.on_full == OnFull::Submit {
            if let Err(e) = self.submit() {
                return Err(Rejected::new(sub, e));
            }
            if !self.ring.submission().is_full() {
                return self.push_one(sub);
            }
        }
        Err(Rejected::new(sub, QueueError::Full))
    }

    #[inline(always)]
    fn push_one(&mut self, mut sub: Submission) -> Result<(), Rejected<Submission>> {
        let mut fin = op::Finish {
            user_data: 0,
            flags: squeue::Flags::empty(),
            fixed: None,
            cancel_target: 0,
        };
        if let Err(e) = self.validate(&sub, &mut fin) {
            return Err(Rejected::new(sub, e));
        }
        if let Some(group) = sub.op.buf_group() {
            // Re-arming after `ENOBUFS`: the buffers freed since are posted first.
            self.book.replenish(group);
        }
        // Room first: once built, the entry is certain to be queued. One view of the queue
        // (one read of the kernel's head) serves the check and the push. A full queue leaves
        // this path for good: a call here that the fast path merged back from made the
        // compiler keep the submission in memory and re-read what kind of operation it is.
        let mut sq = self.ring.submission();
        if sq.is_full() {
            drop(sq);
            return self.push_when_full(sub);
        }
        let light = match sub.token <= LIGHT_TOKEN_MASK {
            true => light_kind(&sub.op),
            false => None,
        };
        let key = match light {
            Some(kind) => {
                fin.user_data = LIGHT | kind << LIGHT_TOKEN_BITS | sub.token;
                None
            }
            None => {
                let (key, seal) = self.book.take_slot();
                fin.user_data = Book::user_data(key, seal);
                Some(key)
            }
        };
        let mut aux = op::Aux::None;
        let queued = op::build(&mut sub.op, &mut aux, &fin, |entry| {
            // SAFETY: every pointer in `entry` targets heap memory owned by `sub.op` or `aux`
            // (buffers, paths, boxes), which move into `self.book.slots[key]` below without
            // moving what they point to and stay there until this entry's completion is reaped
            // (or, on drop, until the kernel has completed or cancelled it); or a registered
            // region kept alive by `self.fixed`. Light operations (`light_kind`) point to no
            // memory.
            unsafe { sq.push(entry) }.is_ok()
        });
        // Publishes the new tail.
        drop(sq);
        if !queued {
            // Not reached: there was room and only this ring pushes.
            if let Some(key) = key {
                self.book.free.push(key as u32);
            }
            return Err(Rejected::new(sub, QueueError::Full));
        }
        self.stats.pushed += 1;
        match key {
            Some(key) => {
                let slot = &mut self.book.slots[key];
                slot.token = sub.token;
                slot.op = Some(sub.op);
                op::put_aux(&mut slot.aux, aux);
                if let Some(fixed) = &fin.fixed {
                    // The region stays registered until this operation completes.
                    slot.region = fixed.key;
                    self.book.fixed_in_flight[fixed.key as usize] += 1;
                }
            }
            // Light operations own no heap memory (see `light_kind`): nothing to drop, and
            // forgetting spares a call to the `Op` drop glue per push. Building their entries
            // records nothing in `aux` either, and `drop_aux` drops it without a call then.
            None => {
                op::drop_aux(aux);
                std::mem::forget(sub);
                self.book.light += 1;
            }
        }
        Ok(())
    }
}

impl Doorbell for Uring {
    /// Tells the kernel about entries pushed since the last ring: an `io_uring_enter`, or, with
    /// SQPOLL, nothing unless the polling thread has set `IORING_SQ_NEED_WAKEUP`. With nothing
    /// new pushed it does nothing (and counts nothing).
    #[inline]
    fn ring(&mut self) -> io::Result<Rung> {
        if self.unsubmitted() == 0 {
            return Ok(Rung::Skipped);
        }
        let sqpoll = self.is_sqpoll();
        let rung = if sqpoll {
            // `need_wakeup` issues the SeqCst fence between publishing the tail and reading the
            // flag that pairs with the kernel thread's barrier before it sleeps (liburing's
            // `sq_ring_needs_enter`).
            if self.ring.submission().need_wakeup() {
                let n = self.ring.submission().len() as u32;
                retry_eintr(|| self.enter(n, 0, IoringEnterFlags::SQ_WAKEUP))?;
                Rung::Rang
            } else {
                Rung::Skipped
            }
        } else {
            let n = self.ring.submission().len() as u32;
            retry_eintr(|| self.enter(n, 0, IoringEnterFlags::empty()))?;
            Rung::Rang
        };
        // Only now: an enter the kernel refused (another thread entering a single-issuer ring)
        // leaves the entries to be submitted again.
        self.rung_at = self.stats.pushed;
        if rung == Rung::Rang {
            self.stats.enters += 1;
        }
        self.stats.doorbell.record(rung);
        Ok(rung)
    }

    fn stats(&self) -> DoorbellStats {
        self.stats.doorbell
    }
}

impl Submitter for Uring {
    type Entry = Submission;

    #[inline]
    fn push(&mut self, entry: Submission) -> Result<(), Rejected<Submission>> {
        self.push_one(entry)
    }

    fn space(&mut self) -> Result<usize, QueueError> {
        let sq = self.ring.submission();
        Ok(sq.capacity() - sq.len())
    }

    /// Makes queued entries visible to the kernel and rings the doorbell; returns how many
    /// entries were queued.
    #[inline]
    fn submit(&mut self) -> Result<usize, QueueError> {
        let queued = self.unsubmitted() as usize;
        Doorbell::ring(self)?;
        Ok(queued)
    }

    /// The kernel takes submissions when they are submitted: this submits what is queued,
    /// and then the ring has room at once. With SQPOLL the kernel thread takes them in its own
    /// time, and the wait sleeps in `io_uring_enter` (`IORING_ENTER_SQ_WAIT`) until it has.
    /// Fails with [`QueueError::Full`] if the kernel took none (it refuses new submissions
    /// while completions it could not post are waiting: reap them).
    fn wait_space(&mut self, timeout: Option<Duration>) -> Result<(), QueueError> {
        if self.space()? > 0 {
            return Ok(());
        }
        Submitter::submit(self)?;
        if self.is_sqpoll() {
            // The SQPOLL thread was woken by the submit if it slept; each `SQ_WAIT` returns
            // once it has taken entries.
            let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
            while self.space()? == 0 {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(QueueError::Timeout(timeout.unwrap_or_default()));
                }
                self.ring
                    .submitter()
                    .squeue_wait()
                    .map_err(|e| QueueError::Io(self.enter_error(e)))?;
            }
        }
        match self.space()? {
            0 => Err(QueueError::Full),
            _ => Ok(()),
        }
    }

    fn doorbell_stats(&self) -> DoorbellStats {
        self.stats.doorbell
    }
}
