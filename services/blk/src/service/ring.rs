//! The service's side of its io_uring: requests checked and turned into operations, the
//! backlog pumped into the ring, submission batching, and completions turned into answers.

use super::*;
use subring_uring::SubmitError;

pub(super) fn errno_of(e: &io::Error) -> i32 {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<OpError>())
        .and_then(|op| op.source.raw_os_error())
        .or(e.raw_os_error())
        .unwrap_or(libc::EIO)
}

/// Whether a push the ring turned away may succeed later as it is. Only the operation's own
/// fault, which the ring finds before queueing it ([`SubmitError`]: a buffer it cannot use as
/// one fixed buffer, say), fails it for good. A full ring, or a failed submit to make room in
/// it, is the ring's trouble, not this operation's: answering it (and then every operation
/// behind it, which would meet the same full ring) with an error would be wrong.
fn retry_later(e: &QueueError) -> bool {
    SubmitError::of(e).is_none()
}

/// Whether a registration the ring refused stays refused until memory is freed: the kernel's
/// refusal (its locked-memory limit, say) or a full table. A table that cannot change while
/// fixed operations are in flight (a kernel without sparse tables) is refused for now only.
fn lasting(e: &RegisterError) -> bool {
    !matches!(
        e,
        RegisterError::TableInUse { .. } | RegisterError::InFlight { .. }
    )
}

/// A fixed read or write of `buf` at `offset`.
fn transfer(kind: Kind, fd: Target, buf: FixedBuf, offset: u64) -> Op {
    match kind {
        Kind::Read => Op::ReadFixed { fd, buf, offset },
        _ => Op::WriteFixed { fd, buf, offset },
    }
}

/// How many operations one client may have in the ring while `active` clients (those with
/// operations in the service) share its `depth` and another client under its share has
/// operations waiting: an even part, but at least 4 (or the whole ring, if smaller), as the
/// kernel's block layer shares a device's tags between the queues using it
/// (`hctx_may_queue`). A client alone may fill the ring; one that filled it before the others
/// came keeps what it has in the kernel, and gets no more while they want slots. Unlike the
/// block layer's, the share binds only under contention: a client holding a slot or two does
/// not cap a busy one at its share of an idle ring.
pub(super) fn fair_share(depth: u32, active: usize) -> u32 {
    let active = u32::try_from(active.max(1)).unwrap_or(u32::MAX);
    depth.div_ceil(active).max(depth.min(4))
}

pub(super) fn refused(tag: u64, status: Status) -> BlkCompletion {
    BlkCompletion {
        tag,
        value: 0,
        status: status as i32,
        flags: 0,
    }
}

impl BlkService {
    pub(super) fn new_op(&mut self, io: Io) -> u32 {
        let client = self.clients.get_mut(&io.client).expect("a known client");
        client.in_flight += 1;
        self.stats.peak_client_in_flight = self.stats.peak_client_in_flight.max(client.in_flight);
        self.ops.insert(io.client, io)
    }

    /// Checks a read or write and finds where its bytes go; `Err` is the refusal. Adds to
    /// `charge` the bytes of a window registered (or refused by the kernel) for it: work to
    /// count against the client's turn.
    pub(super) fn plan_transfer(
        &mut self,
        id: u64,
        memory: &ClientMemory,
        req: &BlkRequest,
        charge: &mut u64,
    ) -> Result<Bytes, Status> {
        if req.len == 0 || req.len > req.buf.len || req.len > self.config.max_io {
            return Err(Status::BadLength);
        }
        match req.offset.checked_add(u64::from(req.len)) {
            Some(end) if end <= self.device.size => {}
            _ => return Err(Status::BadRange),
        }
        let handle = BufHandle {
            len: req.len,
            ..req.buf
        };
        let region = memory.resolve(handle).map_err(|_| Status::BadHandle)?;
        if let Some(align) = self.device.direct {
            let addr = region.as_ptr() as usize + handle.offset as usize;
            if req.offset % u64::from(align.offset) != 0
                || req.len % align.offset != 0
                || addr % align.memory as usize != 0
            {
                return Err(Status::BadAlignment);
            }
        }
        let client = self.clients.get_mut(&id).expect("a known client");
        if self.staging.is_some() {
            // The copy happens later, through the client's memory as the service keeps it:
            // that must know the region (it is a snapshot, and the client may have registered
            // the region since the service took it). Regions are only ever added.
            if client.memory.resolve(handle).is_err() {
                client.memory = memory.clone();
            }
            return Ok(Bytes::Staging { slot: None, handle });
        }
        // The window of the region that holds the buffer: `window` bytes from a multiple of
        // it, and `max_io` more, which any buffer starting in it fits in (its length was
        // checked against `max_io` above).
        let window = self.config.register_window & !4095;
        let index = handle.offset / window;
        let Ok(index32) = u32::try_from(index) else {
            return Err(Status::BadHandle);
        };
        let key = match client.windows.get(&(region.id(), index32)) {
            Some(&(key, _)) => key,
            None => {
                // First use of this window: register it (once per window per client), which
                // pins it, within the client's and the service's limits. Against the limits a
                // window counts the bytes it alone covers: the `max_io` it shares with the next
                // window is that one's, so a region used whole counts its length, as it did
                // registered whole.
                let start = index * window;
                let region_len = region.len() as u64;
                let end = (start + window + u64::from(self.config.max_io)).min(region_len);
                let len = end - start;
                let own = (start + window).min(region_len) - start;
                if client.registered.saturating_add(own) > self.config.max_registered
                    || self.registered.saturating_add(own) > self.config.max_registered_total
                {
                    return Err(Status::NoMemory);
                }
                // The kernel refused this client before, and nothing was freed since: asking
                // again would only pin and unpin the window once more.
                if client.refused_at == Some(self.stats.regions_unregistered) {
                    return Err(Status::NoMemory);
                }
                *charge = charge.saturating_add(len);
                let key = match self
                    .ring
                    .register_range(region.clone(), start as usize..end as usize)
                {
                    Ok(key) => key,
                    Err(e) => {
                        if lasting(&e) {
                            self.stats.registrations_refused += 1;
                            client.refused_at = Some(self.stats.regions_unregistered);
                        }
                        return Err(Status::NoMemory);
                    }
                };
                self.stats.regions_registered += 1;
                self.stats.bytes_registered += len;
                client.registered += own;
                self.registered += own;
                client.windows.insert((region.id(), index32), (key, own));
                key
            }
        };
        Ok(Bytes::Client(key, handle))
    }

    /// Moves backlogged operations into the ring while it has room, the clients taken in turn,
    /// each up to its [`fair_share`] of the ring while another client under its share has
    /// operations waiting. An operation the ring refuses for good (not because it is full) is
    /// answered with an error, not retried: it would otherwise hold the front of the backlog,
    /// and every client's operations behind it.
    pub(super) fn pump(&mut self) {
        // Computed at the first operation that could go (most calls find none).
        let mut share = None;
        // Clients passed over in a row. Once every waiting client has been passed over, each
        // holds its share, and the share is not enforced for the rest of this call: slots that
        // nobody under its share wants are not left idle (a client that comes later waits at
        // most for one of the others' operations to complete).
        let mut passed = 0;
        let mut conserving = false;
        // Of those, passed over in a row for their bytes in the kernel (which binds whether
        // others wait or not): once every waiting client has been, nothing can go before some
        // completions.
        let mut capped = 0;
        while let Some(token) = self.ops.front() {
            if self.ring.in_flight() >= self.config.depth as usize {
                return;
            }
            let Some(io) = self.ops.get_mut(token) else {
                self.ops.pop_front(token);
                continue;
            };
            if io.pushed {
                // Never twice (the table's generations keep a token's entry unique; this is
                // the guard).
                self.ops.pop_front(token);
                continue;
            }
            let client = io.client;
            let bytes = match io.kind {
                Kind::Read | Kind::Write => u64::from(io.len),
                _ => 0,
            };
            let in_ring = self.clients[&client].bytes_in_ring;
            if in_ring > 0 && in_ring + bytes > self.config.max_client_bytes_in_ring {
                // Enough of its bytes are in the kernel, ahead of anyone else's: it goes again
                // once some of its own complete (which is bound to happen).
                self.stats.bytes_waits += 1;
                self.ops.pass_turn();
                capped += 1;
                if capped >= self.ops.waiting_clients() {
                    return;
                }
                // A pass like any other: once every waiting client has been passed over, for
                // its share or its bytes, the share is not enforced (slots nobody under their
                // share can take go to whoever waits).
                passed += 1;
                conserving |= passed >= self.ops.waiting_clients();
                continue;
            }
            let share = *share.get_or_insert_with(|| {
                let active = self.clients.values().filter(|c| c.in_flight > 0).count();
                fair_share(self.config.depth, active)
            });
            if !conserving
                && self.clients[&client].in_ring >= share
                && self.ops.others_waiting(client)
            {
                // Its share of the ring is in the kernel: the others go first, and it goes
                // again once some of its own complete (which is bound to happen: it has
                // operations in the kernel).
                self.stats.share_waits += 1;
                self.ops.pass_turn();
                passed += 1;
                capped = 0;
                conserving |= passed >= self.ops.waiting_clients();
                continue;
            }
            passed = 0;
            capped = 0;
            let io = self.ops.get_mut(token).expect("looked at it");
            let fd = Target::Fixed(0);
            // `Err(status)`: the operation is answered with `status` instead.
            let planned: Result<Op, i32> = match (io.kind, io.bytes) {
                (Kind::Flush, _) => Ok(Op::Fsync { fd, datasync: true }),
                (Kind::Discard, _) => Ok(Op::Fallocate {
                    fd,
                    offset: io.offset,
                    len: u64::from(io.len),
                    mode: libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                }),
                (kind, Bytes::Client(key, handle)) => {
                    Ok(transfer(kind, fd, FixedBuf::In(key, handle), io.offset))
                }
                (kind, Bytes::Staging { slot, handle }) => 'staged: {
                    let staging = self.staging.as_mut().expect("copy mode");
                    // A slot is taken (and a write's bytes copied in) once, at the first offer:
                    // an operation the full ring turned away keeps its slot for the next one.
                    let slot = match slot {
                        Some(slot) => slot,
                        None => {
                            let Some(slot) = staging.free.pop() else {
                                return;
                            };
                            io.bytes = Bytes::Staging {
                                slot: Some(slot),
                                handle,
                            };
                            if kind == Kind::Write {
                                let at = staging.slot(slot, io.len);
                                let memory = &self.clients[&io.client].memory;
                                // SAFETY: the staging region is this process's own anonymous
                                // memory (never shared); `slot` was free, so neither the kernel
                                // nor another operation uses its bytes.
                                let dst = unsafe { staging_bytes(&staging.region, at) };
                                match memory.read(handle, dst) {
                                    Ok(n) => self.stats.bytes_copied += n as u64,
                                    // Resolved when it came, so not expected: but a write whose
                                    // bytes could not be copied is not written.
                                    Err(_) => break 'staged Err(Status::BadHandle as i32),
                                }
                            }
                            slot
                        }
                    };
                    let at = staging.slot(slot, io.len);
                    Ok(transfer(kind, fd, FixedBuf::In(staging.key, at), io.offset))
                }
                (_, Bytes::None) => unreachable!("reads and writes have bytes"),
            };
            let op = match planned {
                Ok(op) => op,
                Err(status) => {
                    self.fail_unsent(token, status);
                    continue;
                }
            };
            match self.ring.push(Submission::new(u64::from(token), op)) {
                Ok(()) => {
                    if let Some(io) = self.ops.get_mut(token) {
                        io.pushed = true;
                    }
                    self.ops.pop_front(token);
                    let c = self.clients.get_mut(&client).expect("a known client");
                    if c.in_ring >= share {
                        self.stats.beyond_share += 1;
                    }
                    c.in_ring += 1;
                    c.bytes_in_ring += bytes;
                    self.stats.peak_client_bytes_in_ring =
                        self.stats.peak_client_bytes_in_ring.max(c.bytes_in_ring);
                    capped = 0;
                    if self.ops.others_waiting(client) {
                        self.stats.peak_shared_in_ring =
                            self.stats.peak_shared_in_ring.max(c.in_ring);
                    }
                }
                // The ring is full even after submitting (or the kernel asked to retry the
                // submit): try again next turn.
                Err(r) if retry_later(&r.error) => return,
                Err(_) => {
                    let status = match self.ops.get(token).map(|io| io.kind) {
                        Some(Kind::Read | Kind::Write) => Status::BadHandle as i32,
                        _ => -libc::EIO,
                    };
                    self.fail_unsent(token, status);
                }
            }
        }
    }

    /// Answers (at the next poll) the operation at the front of the backlog, which never
    /// reached the kernel, with `status`, and forgets it.
    fn fail_unsent(&mut self, token: u32, status: i32) {
        self.ops.pop_front(token);
        let Some(io) = self.ops.take(token) else {
            return;
        };
        self.release_staging(&io);
        self.stats.unsendable += 1;
        let client = self.clients.get_mut(&io.client).expect("a known client");
        client.in_flight -= 1;
        if let Some(seq) = io.write_seq {
            client.writes.remove(&seq);
        }
        self.orphans.push((
            io.pending,
            BlkCompletion {
                tag: io.tag,
                value: 0,
                status,
                flags: 0,
            },
        ));
        self.release_flushes(io.client);
        self.retire_if_done(io.client);
    }

    /// Gives back the staging slot `io` holds, if any.
    pub(super) fn release_staging(&mut self, io: &Io) {
        if let Bytes::Staging {
            slot: Some(slot), ..
        } = io.bytes
        {
            self.staging.as_mut().expect("copy mode").free.push(slot);
        }
    }

    /// Submits what is queued once enough has gathered (`submit_batch`), or at once while the
    /// kernel has fewer than that in flight (the device must not starve for the sake of a
    /// batch). Between those, new requests wait for the next completion, which is bound to
    /// come (the kernel has work) and wakes the server: one enter then carries many requests.
    pub(super) fn submit(&mut self) {
        let queued = self.ring.queued();
        if queued == 0 {
            return;
        }
        let in_kernel = self.ring.in_flight() - queued;
        let batch = self.config.submit_batch as usize;
        if queued >= batch || in_kernel < batch {
            let _ = self.ring.submit();
        }
    }

    /// Work waits (queued in the ring, or in the backlog) with nothing in the kernel to wake
    /// the service when it completes: a submit failed for now (`EAGAIN` from the kernel, say),
    /// or a push did. Asleep, the service would leave that work until some client rang;
    /// awake, it tries again at the next turn.
    pub(super) fn stalled(&mut self) -> bool {
        let queued = self.ring.queued();
        let nothing_in_kernel = self.ring.in_flight() == queued;
        nothing_in_kernel && (queued > 0 || self.ops.front().is_some())
    }

    /// Turns the ring's completions into the clients' answers.
    pub(super) fn reap(&mut self, done: &mut Completions<'_, BlkCompletion>) -> u32 {
        if self.ring.reap_into(&mut self.completions, 4096).is_err() {
            return 0;
        }
        let mut n = 0;
        let mut completions = std::mem::take(&mut self.completions);
        for c in completions.drain(..) {
            if c.token & CANCEL != 0 {
                continue;
            }
            n += 1;
            self.finish(c, done);
        }
        self.completions = completions;
        if n > 0 {
            self.retry_unregister();
        }
        n
    }

    pub(super) fn finish(&mut self, c: Completion, done: &mut Completions<'_, BlkCompletion>) {
        let Ok(token) = u32::try_from(c.token) else {
            return;
        };
        let Some(io) = self.ops.take(token) else {
            return;
        };
        let (mut value, mut status) = match &c.result {
            Ok(n) => (u64::from(*n), 0),
            Err(e) => (0, -errno_of(e)),
        };
        let client = self.clients.get_mut(&io.client).expect("a known client");
        client.in_flight -= 1;
        if io.pushed {
            client.in_ring -= 1;
            if matches!(io.kind, Kind::Read | Kind::Write) {
                client.bytes_in_ring -= u64::from(io.len);
            }
        }
        debug_assert!(client.in_ring <= client.in_flight);
        match io.kind {
            Kind::Read => {
                self.stats.reads += 1;
                self.stats.bytes_read += value;
            }
            Kind::Write => {
                self.stats.writes += 1;
                self.stats.bytes_written += value;
            }
            Kind::Flush => self.stats.flushes += 1,
            Kind::Discard => self.stats.discards += 1,
        }
        if let Bytes::Staging {
            slot: Some(slot),
            handle,
        } = io.bytes
        {
            let staging = self.staging.as_mut().expect("copy mode");
            if io.kind == Kind::Read && status == 0 && !client.gone {
                let at = staging.slot(slot, value as u32);
                // SAFETY: the staging region is this process's own memory; the kernel has
                // completed the read into this slot, and the slot is not free yet.
                let src = unsafe { staging_bytes(&staging.region, at) };
                match client.memory.write(handle, src) {
                    Ok(n) => self.stats.bytes_copied += n as u64,
                    // Resolved when it came, so not expected: but a read whose bytes did not
                    // reach the client is not a success.
                    Err(_) => (value, status) = (0, Status::BadHandle as i32),
                }
            }
            staging.free.push(slot);
        }
        if let Some(seq) = io.write_seq {
            client.writes.remove(&seq);
        }
        if client.gone {
            self.stats.completed_after_departure += 1;
        }
        done.complete(
            io.pending,
            BlkCompletion {
                tag: io.tag,
                value,
                status,
                flags: 0,
            },
        );
        self.release_flushes(io.client);
        self.retire_if_done(io.client);
    }

    /// Queues the client's waiting flushes whose writes have all completed.
    pub(super) fn release_flushes(&mut self, id: u64) {
        loop {
            let Some(client) = self.clients.get_mut(&id) else {
                return;
            };
            let oldest_write = client.writes.first().copied().unwrap_or(u64::MAX);
            match client.flushes.front() {
                Some(f) if f.barrier <= oldest_write => {}
                _ => return,
            }
            let f = client.flushes.pop_front().expect("looked at it");
            if client.gone {
                self.orphans
                    .push((f.pending, refused(f.tag, Status::BadOp)));
                continue;
            }
            self.new_op(Io {
                client: id,
                tag: f.tag,
                kind: Kind::Flush,
                offset: 0,
                len: 0,
                bytes: Bytes::None,
                write_seq: None,
                pending: f.pending,
                pushed: false,
            });
        }
    }

    /// A departed client with nothing left in the kernel: unregister its memory from the ring
    /// (the kernel holds no reference to it any more) and forget it.
    pub(super) fn retire_if_done(&mut self, id: u64) {
        let Some(client) = self.clients.get(&id) else {
            return;
        };
        if !client.gone || client.in_flight > 0 || !client.flushes.is_empty() {
            return;
        }
        let client = self.clients.remove(&id).expect("looked at it");
        for (_, (key, len)) in client.windows {
            self.unregister(key, len);
        }
        self.stats.retired += 1;
    }

    /// Unregisters a departed client's region; one the ring refuses now (it still counts an
    /// operation on it, say) is kept and tried again after later completions, so that its
    /// memory and table slots are not held for good.
    fn unregister(&mut self, key: RegionKey, len: u64) {
        if !self.try_unregister(key, len) {
            self.stats.unregister_retries += 1;
            self.retiring.push((key, len));
        }
    }

    /// One attempt at unregistering a window of `len` bytes; `false` if the ring refused for
    /// now.
    fn try_unregister(&mut self, key: RegionKey, len: u64) -> bool {
        match self.ring.unregister_region(key) {
            Ok(_) => {
                self.stats.regions_unregistered += 1;
                self.registered -= len;
                true
            }
            Err(RegisterError::NoKey { .. }) => true,
            Err(_) => false,
        }
    }

    /// Tries again the unregistrations the ring refused (after completions: one of them may
    /// have been what held a region).
    fn retry_unregister(&mut self) {
        let mut retiring = std::mem::take(&mut self.retiring);
        retiring.retain(|&(key, len)| !self.try_unregister(key, len));
        self.retiring = retiring;
    }
}

/// The bytes `at` names in the service's own staging region.
///
/// # Safety
/// The region must be private to this process, and nothing else (the kernel included) may use
/// those bytes while the slice lives.
// (Mutable bytes from a shared `Region`: its memory is raw, not owned by the reference; the
// contract above is what makes the slice exclusive.)
#[allow(clippy::mut_from_ref)]
pub(super) unsafe fn staging_bytes(region: &Region, at: BufHandle) -> &mut [u8] {
    debug_assert!(region.check_handle(at).is_ok());
    // SAFETY: the slot lies inside the region (slots are laid out within its length), and the
    // caller guarantees exclusive use.
    unsafe {
        std::slice::from_raw_parts_mut(region.as_ptr().add(at.offset as usize), at.len as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_is_shared_evenly_but_not_finely() {
        assert_eq!(fair_share(256, 0), 256, "no one else: all of it");
        assert_eq!(fair_share(256, 1), 256);
        assert_eq!(fair_share(256, 2), 128);
        assert_eq!(fair_share(256, 3), 86);
        assert_eq!(fair_share(256, 64), 4);
        assert_eq!(fair_share(256, 1000), 4, "at least four each");
        assert_eq!(fair_share(8, 2), 4);
        assert_eq!(
            fair_share(2, 5),
            2,
            "never less than four, unless the ring is smaller"
        );
        assert_eq!(fair_share(1, 3), 1);
    }

    #[test]
    fn a_table_in_use_is_not_a_lasting_refusal() {
        assert!(!lasting(&RegisterError::TableInUse { in_flight: 3 }));
        assert!(lasting(&RegisterError::TableFull {
            wanted: 1,
            slots: 16384
        }));
        assert!(lasting(&RegisterError::Os {
            len: 1 << 20,
            source: io::Error::from_raw_os_error(libc::ENOMEM),
        }));
    }

    #[test]
    fn only_the_operations_own_fault_is_not_retried() {
        assert!(retry_later(&QueueError::Full));
        // A submit to make room that failed: the ring's trouble.
        for errno in [
            libc::EAGAIN,
            libc::EBUSY,
            libc::EINTR,
            libc::ENOMEM,
            libc::ENXIO,
        ] {
            assert!(retry_later(&QueueError::Io(io::Error::from_raw_os_error(
                errno
            ))));
        }
        // What the ring says of an operation it cannot take.
        let own = QueueError::from(SubmitError::FileOutOfRange {
            index: 3,
            registered: 1,
        });
        assert!(!retry_later(&own));
    }
}
