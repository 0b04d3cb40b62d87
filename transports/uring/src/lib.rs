//! The kernel as a subsystem: subring's three planes over io_uring.
//!
//! - **Data plane**: the submission and completion queues are io_uring's own rings (set up and
//!   mapped by the `io-uring` crate). A planes [`Region`] can be registered as fixed buffers
//!   ([`Uring::register_region`]), and then a [`BufHandle`] into it — or a pool [`Buf`] — is what
//!   a fixed read or write names: the kernel moves data straight into memory that another process
//!   may also map. Files can be registered too ([`Uring::register_files`]).
//! - **Control plane**: the doorbell is `io_uring_enter`. In SQPOLL mode it is skipped unless the
//!   kernel's polling thread has set `IORING_SQ_NEED_WAKEUP` ([`Uring`] implements the planes'
//!   [`Doorbell`]). Many entries, one doorbell.
//! - **Interrupt plane**: completions are polled from the CQ, waited for in `io_uring_enter`, or
//!   signalled through an eventfd registered with the ring — the planes' [`EventFdSignal`], so it
//!   can sit in epoll/mio/tokio beside everything else ([`WaitMode`]).
//!
//! [`Uring`] implements the planes' [`Submitter`] and [`Completer`] traits, so generic code runs
//! over it as over any other transport. Operations ([`Op`]) own their buffers until their own
//! completion hands them back; completions are matched by the caller's token; an operation's
//! failure is an [`io::Error`] that names the operation ([`OpError`]).
//!
//! # Examples
//! ```
//! use subring_planes::queue::{Completer, Submitter};
//! use subring_uring::{Op, Submission, Uring};
//!
//! let mut ring = Uring::builder().entries(8).build()?;
//! ring.push(Submission::new(7, Op::Nop)).map_err(|r| r.error)?;
//! ring.submit()?;
//! ring.wait(Some(std::time::Duration::from_secs(5)))?;
//! let done = ring.reap()?.expect("a completion");
//! assert_eq!(done.token, 7);
//! assert_eq!(done.result?, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations)]

mod op;

use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, squeue, types, IoUring, Probe};
use rustix::io_uring::{io_uring_enter, IoringEnterFlags};
use subring_planes::control::{Doorbell, DoorbellStats, Rung};
use subring_planes::data::{BufHandle, Region};
use subring_planes::interrupt::{EventFdSignal, NotifyStats, Signal, WakeWord};
use subring_planes::queue::{Completer, QueueError, Rejected, Submitter};

pub use op::{FixedBuf, Link, Op, Output, Submission, Target};
#[doc(no_inline)]
pub use subring_planes::data::Buf;

/// Marks `user_data` values that name one of this ring's slots (an operation owning memory).
const OWNED: u64 = 1 << 63;
/// Marks `user_data` values of operations that own no memory and so need no slot: the value
/// carries the token (low [`LIGHT_TOKEN_BITS`] bits) and the operation's kind (bits 56..60).
/// Values with neither bit are messages from another ring ([`Op::MsgRing`]).
const LIGHT: u64 = 1 << 62;
const LIGHT_TOKEN_BITS: u32 = 56;
const LIGHT_TOKEN_MASK: u64 = (1 << LIGHT_TOKEN_BITS) - 1;

/// Operations that own no memory the kernel touches, by kind number in `user_data`.
const LIGHT_OPS: [&str; 5] = ["nop", "fsync", "close", "msg_ring", "cancel"];

fn light_kind(op: &Op) -> Option<u64> {
    // Indices into `LIGHT_OPS`.
    match op {
        Op::Nop => Some(0),
        Op::Fsync { .. } => Some(1),
        Op::Close { .. } => Some(2),
        Op::MsgRing { .. } => Some(3),
        Op::Cancel { .. } => Some(4),
        _ => None,
    }
}
/// The largest single fixed buffer the kernel accepts (1 GiB); bigger regions are registered in
/// pieces of this size.
const FIXED_CHUNK: usize = 1 << 30;

/// How [`Uring::wait`](Completer::wait) waits for completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WaitMode {
    /// Poll the completion queue without system calls (until the timeout).
    Poll,
    /// Block in `io_uring_enter` with `IORING_ENTER_GETEVENTS` (and a timeout, `EXT_ARG`).
    #[default]
    Enter,
    /// Block on an eventfd registered with the ring ([`Uring::completion_fd`]), which an event
    /// loop can also watch.
    EventFd,
}

/// What a push does when the submission queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFull {
    /// Hand the submission back with [`QueueError::Full`]: back-pressure the caller sees.
    #[default]
    Reject,
    /// Submit what is queued (one `io_uring_enter`) to make room, then push.
    Submit,
}

/// Counters of one ring, for reporting system calls per operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UringStats {
    /// `io_uring_enter` calls made (submits, waits, flushes).
    pub enters: u64,
    /// Operations pushed.
    pub pushed: u64,
    /// Completions reaped.
    pub completed: u64,
    /// Times a CQ overflow (or deferred task work) had to be flushed with an extra enter.
    pub flushes: u64,
    /// Doorbells rung and skipped.
    pub doorbell: DoorbellStats,
}

/// An operation that failed: which one, its token, and the kernel's error.
#[derive(Debug, thiserror::Error)]
#[error("io_uring {op} (token {token}) failed: {source}")]
pub struct OpError {
    /// The operation's name ([`Op::name`]).
    pub op: &'static str,
    /// The token it was submitted with.
    pub token: u64,
    /// The error (`raw_os_error` gives the errno).
    #[source]
    pub source: io::Error,
}

impl OpError {
    fn into_io(self) -> io::Error {
        io::Error::new(self.source.kind(), self)
    }
}

/// A finished operation.
#[derive(Debug)]
pub struct Completion {
    /// The token it was submitted with.
    pub token: u64,
    /// The kernel's result: bytes transferred, a new descriptor, a poll mask, ... The error is an
    /// [`OpError`] inside an [`io::Error`] of the same kind.
    pub result: io::Result<u32>,
    /// The resources the operation owned.
    pub output: Output,
}

/// Builds a [`Uring`].
#[derive(Debug, Clone)]
pub struct UringBuilder {
    entries: u32,
    cq_entries: Option<u32>,
    sqpoll_idle: Option<u32>,
    coop_taskrun: bool,
    single_issuer: bool,
    defer_taskrun: bool,
    wait: WaitMode,
    on_full: OnFull,
    disabled: Vec<u8>,
}

impl Default for UringBuilder {
    fn default() -> Self {
        UringBuilder {
            entries: 256,
            cq_entries: None,
            sqpoll_idle: None,
            coop_taskrun: false,
            single_issuer: false,
            defer_taskrun: false,
            wait: WaitMode::Enter,
            on_full: OnFull::Reject,
            disabled: Vec::new(),
        }
    }
}

impl UringBuilder {
    /// Submission queue entries (rounded up to a power of two by the kernel).
    pub fn entries(mut self, n: u32) -> Self {
        self.entries = n;
        self
    }

    /// Completion queue entries (default: twice the submission entries).
    pub fn cq_entries(mut self, n: u32) -> Self {
        self.cq_entries = Some(n);
        self
    }

    /// A kernel thread polls the submission queue (`IORING_SETUP_SQPOLL`); it sleeps after
    /// `idle_ms` without work, and only then does a submit need `io_uring_enter`.
    pub fn sqpoll(mut self, idle_ms: u32) -> Self {
        self.sqpoll_idle = Some(idle_ms);
        self
    }

    /// `IORING_SETUP_COOP_TASKRUN`: completions are not forced in by interrupting the task.
    pub fn coop_taskrun(mut self, yes: bool) -> Self {
        self.coop_taskrun = yes;
        self
    }

    /// `IORING_SETUP_SINGLE_ISSUER`: only the creating thread submits (the ring must stay on it).
    pub fn single_issuer(mut self, yes: bool) -> Self {
        self.single_issuer = yes;
        self
    }

    /// `IORING_SETUP_DEFER_TASKRUN` (implies single issuer): completion work runs only when this
    /// thread enters the kernel to wait or flush. Reaping flushes it when the kernel says so.
    pub fn defer_taskrun(mut self, yes: bool) -> Self {
        self.defer_taskrun = yes;
        self
    }

    /// How waits wait (default [`WaitMode::Enter`]).
    pub fn wait_mode(mut self, mode: WaitMode) -> Self {
        self.wait = mode;
        self
    }

    /// What a push into a full submission queue does (default [`OnFull::Reject`]).
    pub fn on_full(mut self, on_full: OnFull) -> Self {
        self.on_full = on_full;
        self
    }

    /// Treats these opcodes as unsupported, as if the kernel lacked them (to forbid them, or to
    /// exercise a fallback).
    pub fn disable_opcodes(mut self, opcodes: &[u8]) -> Self {
        self.disabled.extend_from_slice(opcodes);
        self
    }

    /// Sets the ring up. Setup flags the kernel rejects come back as an error naming them.
    pub fn build(self) -> io::Result<Uring> {
        let mut b = IoUring::builder();
        let mut flags = Vec::new();
        if let Some(cq) = self.cq_entries {
            b.setup_cqsize(cq);
        }
        if let Some(idle) = self.sqpoll_idle {
            b.setup_sqpoll(idle);
            flags.push("SQPOLL");
        }
        if self.coop_taskrun {
            b.setup_coop_taskrun();
            flags.push("COOP_TASKRUN");
        }
        if self.single_issuer || self.defer_taskrun {
            b.setup_single_issuer();
            flags.push("SINGLE_ISSUER");
        }
        if self.defer_taskrun {
            b.setup_defer_taskrun();
            b.setup_taskrun_flag();
            flags.push("DEFER_TASKRUN");
        }
        let ring = b.build(self.entries).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "io_uring setup with {} entries{}{} failed: {e}",
                    self.entries,
                    if flags.is_empty() { "" } else { " and " },
                    flags.join("|")
                ),
            )
        })?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        let eventfd = match self.wait {
            WaitMode::EventFd => {
                let efd = EventFdSignal::new()?;
                ring.submitter().register_eventfd(efd.as_fd().as_raw_fd())?;
                Some(efd)
            }
            _ => None,
        };
        // One bit per opcode, looked up on every push.
        let mut supported = [0u64; 4];
        for op in 0..=u8::MAX {
            if probe.is_supported(op) && !self.disabled.contains(&op) {
                supported[usize::from(op / 64)] |= 1 << (op % 64);
            }
        }
        Ok(Uring {
            ring,
            supported,
            book: Book::default(),
            rung_at: 0,
            regions: Vec::new(),
            files: 0,
            eventfd,
            wait: self.wait,
            on_full: self.on_full,
            stats: UringStats::default(),
            notify: NotifyStats::default(),
        })
    }
}

/// One in-flight operation: what the kernel may still read or write.
#[derive(Debug)]
struct Slot {
    token: u64,
    op: Option<Op>,
    aux: op::Aux,
}

/// The operations in flight that own memory, and what completions have told about them.
#[derive(Debug, Default)]
struct Book {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Completions reaped that were not for this ring's operations (messages from other
    /// rings, unknown slots): counted in `stats.completed`, never in flight here.
    foreign: u64,
}

impl Book {
    /// A free slot for an operation that owns memory.
    #[inline]
    fn take_slot(&mut self) -> usize {
        match self.free.pop() {
            Some(k) => k as usize,
            None => {
                self.slots.push(Slot {
                    token: 0,
                    op: None,
                    aux: op::Aux::None,
                });
                self.slots.len() - 1
            }
        }
    }

    /// Turns a reaped completion entry into a [`Completion`], releasing its slot. The caller
    /// counts it in `stats.completed`.
    fn complete(&mut self, cqe: &cqueue::Entry) -> Completion {
        let mut done = MaybeUninit::uninit();
        self.complete_into(cqe, &mut done);
        // SAFETY: `complete_into` initialises `done` on every path.
        unsafe { done.assume_init() }
    }

    /// [`Book::complete`], written straight into `dst` (building the value and moving it in
    /// copied it through the stack). A `user_data` that names no operation of this ring (a
    /// message from another ring, or an empty slot) is counted in `foreign`.
    #[inline]
    fn complete_into(&mut self, cqe: &cqueue::Entry, dst: &mut MaybeUninit<Completion>) {
        let (ud, res) = (cqe.user_data(), cqe.result());
        if ud & OWNED == 0 {
            dst.write(self.complete_slotless(ud, res));
            return;
        }
        let key = (ud & !OWNED) as usize;
        let taken = self
            .slots
            .get_mut(key)
            .and_then(|s| Some((s.token, s.op.take()?, std::mem::take(&mut s.aux))));
        let Some((token, op, aux)) = taken else {
            dst.write(self.unknown_slot(ud, key));
            return;
        };
        self.free.push(key as u32);
        let result = match res {
            0.. => Ok(res as u32),
            _ => failed(&op, token, res),
        };
        dst.write(Completion {
            token,
            result,
            output: op::output(op, aux, res),
        });
    }

    /// The completion of a light operation (see `light_kind`) or of a message from another
    /// ring.
    #[cold]
    fn complete_slotless(&mut self, ud: u64, res: i32) -> Completion {
        if ud & LIGHT != 0 {
            let token = ud & LIGHT_TOKEN_MASK;
            let kind = ((ud & !LIGHT) >> LIGHT_TOKEN_BITS) as usize;
            let op = LIGHT_OPS.get(kind).copied().unwrap_or("unknown");
            return Completion {
                token,
                result: if res < 0 {
                    Err(OpError {
                        op,
                        token,
                        source: io::Error::from_raw_os_error(-res),
                    }
                    .into_io())
                } else {
                    Ok(res as u32)
                },
                output: Output::None,
            };
        }
        self.foreign += 1;
        Completion {
            token: ud,
            result: if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                Ok(res as u32)
            },
            output: Output::Message,
        }
    }

    /// The completion for a slot with nothing in flight: the kernel (or whoever wrote the
    /// `user_data`) named an operation this ring does not have.
    #[cold]
    fn unknown_slot(&mut self, ud: u64, key: usize) -> Completion {
        self.foreign += 1;
        Completion {
            token: ud,
            result: Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("completion for unknown operation slot {key}"),
            )),
            output: Output::None,
        }
    }
}

/// The result of an operation the kernel finished with `res < 0`.
#[cold]
fn failed(op: &Op, token: u64, res: i32) -> io::Result<u32> {
    match op {
        // A timer that fires has done its job.
        Op::Timeout { .. } if res == -libc::ETIME => Ok(0),
        _ => Err(OpError {
            op: op.name(),
            token,
            source: io::Error::from_raw_os_error(-res),
        }
        .into_io()),
    }
}

#[derive(Debug)]
struct Registered {
    region: Arc<Region>,
    first_index: u16,
}

/// An io_uring instance with typed, owning operations, speaking the planes' queue-pair traits.
pub struct Uring {
    ring: IoUring,
    /// Opcodes the kernel supports and the builder did not disable, as a bit set.
    supported: [u64; 4],
    /// Operations in flight. A field of its own so that completions can be matched to them
    /// while the completion queue (`ring`) is borrowed: reaping reads entries in place.
    book: Book,
    /// `stats.pushed` when the doorbell was last rung: what was pushed since is unsubmitted.
    /// (Counts that can be derived are not kept: every counter is a store per operation.)
    rung_at: u64,
    regions: Vec<Registered>,
    files: u32,
    eventfd: Option<EventFdSignal>,
    wait: WaitMode,
    on_full: OnFull,
    stats: UringStats,
    notify: NotifyStats,
}

impl fmt::Debug for Uring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Uring")
            .field("fd", &self.ring.as_raw_fd())
            .field("in_flight", &self.in_flight())
            .field("wait", &self.wait)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

#[cold]
#[inline(never)]
// (Takes the name and opcode, not the `Op`: a reference passed to a function that is not
// inlined would keep the submission in memory on the push path.)
fn unsupported(name: &'static str, opcode: u8) -> QueueError {
    QueueError::Io(io::Error::new(
        io::ErrorKind::Unsupported,
        format!("io_uring operation {name} (opcode {opcode}) is not supported by this kernel"),
    ))
}

#[cold]
#[inline(never)]
fn file_out_of_range(index: u32, registered: u32) -> QueueError {
    invalid(format!(
        "registered file index {index} is out of range ({registered} registered)"
    ))
}

#[cold]
fn invalid(msg: String) -> QueueError {
    QueueError::Io(io::Error::new(io::ErrorKind::InvalidInput, msg))
}

#[inline(always)]
fn retry_eintr<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

impl Uring {
    /// A builder with the defaults: 256 entries, no special setup flags, [`WaitMode::Enter`].
    pub fn builder() -> UringBuilder {
        UringBuilder::default()
    }

    /// The ring's fd: the target of [`Op::MsgRing`] from another ring.
    pub fn ring_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// The registered eventfd in [`WaitMode::EventFd`]: readable when completions may be ready.
    pub fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
        self.eventfd.as_ref().map(|e| e.as_fd())
    }

    /// Whether the running kernel supports `opcode` (and it is not disabled in the builder).
    pub fn supports(&self, opcode: u8) -> bool {
        self.supported[usize::from(opcode / 64)] & (1 << (opcode % 64)) != 0
    }

    /// Whether a kernel thread polls the submission queue.
    pub fn is_sqpoll(&self) -> bool {
        self.ring.params().is_setup_sqpoll()
    }

    /// Operations submitted (or queued) whose completion has not been reaped.
    pub fn in_flight(&self) -> usize {
        (self.stats.pushed - (self.stats.completed - self.book.foreign)) as usize
    }

    /// Entries pushed since the doorbell was last rung.
    fn unsubmitted(&self) -> u64 {
        self.stats.pushed - self.rung_at
    }

    /// Counters.
    pub fn stats(&self) -> UringStats {
        self.stats
    }

    /// Registers `region` as fixed buffers (after any registered before), so that fixed reads
    /// and writes can name its memory by [`BufHandle`] or pool [`Buf`]. Region ids must be
    /// distinct. Fails while fixed operations are in flight.
    pub fn register_region(&mut self, region: Arc<Region>) -> io::Result<()> {
        if self.regions.iter().any(|r| r.region.id() == region.id()) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("a region with id {} is already registered", region.id()),
            ));
        }
        if self.book.slots.iter().any(|s| {
            matches!(
                s.op,
                Some(Op::ReadFixed { .. }) | Some(Op::WriteFixed { .. })
            )
        }) {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                "cannot re-register fixed buffers while fixed operations are in flight",
            ));
        }
        let first_index = self
            .regions
            .iter()
            .map(|r| r.region.len().div_ceil(FIXED_CHUNK))
            .sum::<usize>();
        let mut regions: Vec<&Arc<Region>> = self.regions.iter().map(|r| &r.region).collect();
        regions.push(&region);
        let iovecs: Vec<libc::iovec> = regions
            .iter()
            .flat_map(|r| {
                (0..r.len())
                    .step_by(FIXED_CHUNK)
                    .map(move |off| libc::iovec {
                        // SAFETY: `off < len`, so the pointer stays inside the mapping.
                        iov_base: unsafe { r.as_ptr().add(off) }.cast(),
                        iov_len: (r.len() - off).min(FIXED_CHUNK),
                    })
            })
            .collect();
        let first_index = u16::try_from(first_index)
            .ok()
            .filter(|_| iovecs.len() <= u16::MAX as usize)
            .ok_or_else(|| io::Error::other("too many fixed buffers"))?;
        if !self.regions.is_empty() {
            self.ring.submitter().unregister_buffers()?;
        }
        // SAFETY: every iovec covers mapped memory of a region that `self.regions` keeps alive
        // for as long as it stays registered (regions are only dropped with the ring, after the
        // ring's fd is closed).
        unsafe { self.ring.submitter().register_buffers(&iovecs) }.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "registering {} bytes of fixed buffers failed: {e}",
                    region.len()
                ),
            )
        })?;
        self.regions.push(Registered {
            region,
            first_index,
        });
        Ok(())
    }

    /// Registers files, replacing any registered before; [`Target::Fixed`]`(i)` then names
    /// `fds[i]`.
    pub fn register_files(&mut self, fds: &[RawFd]) -> io::Result<()> {
        if self.files > 0 {
            self.ring.submitter().unregister_files()?;
            self.files = 0;
        }
        self.ring.submitter().register_files(fds)?;
        self.files = fds.len() as u32;
        Ok(())
    }

    /// Resolves a fixed buffer to an address in a registered region.
    fn resolve_fixed(&self, buf: &FixedBuf, for_read: bool) -> Result<op::FixedAddr, QueueError> {
        let handle: BufHandle = buf.handle(for_read);
        let reg = self
            .regions
            .iter()
            .find(|r| r.region.id() == handle.region)
            .ok_or_else(|| invalid(format!("no registered region has id {}", handle.region)))?;
        reg.region
            .check_handle(handle)
            .map_err(|e| invalid(format!("fixed buffer: {e}")))?;
        let base = reg.region.as_ptr();
        if let FixedBuf::Buf(b) = buf {
            // The id matched; make sure the pool buffer really lives in this mapping.
            let p = b.as_ptr() as usize;
            if p < base as usize || p + b.capacity() > base as usize + reg.region.len() {
                return Err(invalid(format!(
                    "fixed buffer is not inside the registered region with id {}",
                    handle.region
                )));
            }
        }
        let offset = handle.offset as usize;
        let chunk = offset / FIXED_CHUNK;
        if offset % FIXED_CHUNK + handle.len as usize > FIXED_CHUNK {
            return Err(invalid(
                "fixed buffer crosses a 1 GiB registration boundary".into(),
            ));
        }
        Ok(op::FixedAddr {
            // SAFETY: `check_handle` put `offset + len` inside the mapping.
            ptr: unsafe { base.add(offset) },
            len: handle.len,
            index: reg.first_index + chunk as u16,
        })
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
            | Op::Close { fd }
            | Op::Send { fd, .. }
            | Op::Recv { fd, .. }
            | Op::Accept { fd }
            | Op::Connect { fd, .. }
            | Op::Poll { fd, .. } => Some(*fd),
            _ => None,
        };
        if let Some(Target::Fixed(i)) = target {
            if i >= self.files {
                return Err(file_out_of_range(i, self.files));
            }
        }
        match &sub.op {
            Op::ReadFixed { buf, .. } => fin.fixed = Some(self.resolve_fixed(buf, true)?),
            Op::WriteFixed { buf, .. } => fin.fixed = Some(self.resolve_fixed(buf, false)?),
            Op::MsgRing { token, .. } if token & (OWNED | LIGHT) != 0 => {
                return Err(invalid(format!(
                    "message token {token:#x} has one of its top two bits set"
                )));
            }
            Op::Cancel { token } => fin.cancel_target = self.cancel_target(*token)?,
            _ => {}
        }
        fin.flags = match sub.link {
            Link::None => squeue::Flags::empty(),
            Link::Soft => squeue::Flags::IO_LINK,
            Link::Hard => squeue::Flags::IO_HARDLINK,
        };
        Ok(())
    }

    /// The `user_data` of the in-flight operation submitted with `token`, for a cancel.
    #[inline(never)]
    fn cancel_target(&self, token: u64) -> Result<u64, QueueError> {
        let key = self
            .book
            .slots
            .iter()
            .position(|s| s.op.is_some() && s.token == token)
            .ok_or_else(|| {
                QueueError::Io(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no operation with token {token} is in flight"),
                ))
            })?;
        Ok(OWNED | key as u64)
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
                let key = self.book.take_slot();
                fin.user_data = OWNED | key as u64;
                Some(key)
            }
        };
        let mut aux = op::Aux::None;
        let queued = op::build(&mut sub.op, &mut aux, &fin, |entry| {
            // SAFETY: every pointer in `entry` targets heap memory owned by `sub.op` or `aux`
            // (buffers, paths, boxes), which move into `self.book.slots[key]` below without
            // moving what they point to and stay there until this entry's completion is reaped
            // (or, on drop, until the kernel has completed or cancelled it); or a registered
            // region kept alive by `self.regions`. Light operations (`light_kind`) point to no
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
                slot.aux = aux;
            }
            // Light operations own no heap memory (see `light_kind`): nothing to drop, and
            // forgetting spares a call to the `Op` drop glue per push.
            None => std::mem::forget(sub),
        }
        Ok(())
    }

    /// Moves up to `max` completions from the CQ into `out`, reading the entries where they
    /// lie, with one head update; returns how many. The caller counts them.
    #[inline]
    fn drain(&mut self, out: &mut Vec<Completion>, max: usize) -> usize {
        let mut cq = self.ring.completion();
        let avail = cq.len().min(max);
        if avail == 0 {
            return 0;
        }
        out.reserve(avail);
        let len = out.len();
        let mut written = 0;
        // The bounded side first: `zip` pulls from its first iterator first, and an entry
        // pulled from the CQ is consumed.
        for (dst, cqe) in out.spare_capacity_mut()[..avail].iter_mut().zip(&mut cq) {
            let ud = cqe.user_data();
            // Light operations (NOPs and the like) that succeeded are finished here and written
            // straight into the vector: building the value elsewhere and moving it in copied it
            // with wide loads over narrow stores, a store-forwarding stall per completion.
            if ud & (OWNED | LIGHT) == LIGHT && cqe.result() >= 0 {
                dst.write(Completion {
                    token: ud & LIGHT_TOKEN_MASK,
                    result: Ok(cqe.result() as u32),
                    output: Output::None,
                });
            } else {
                self.book.complete_into(&cqe, dst);
            }
            written += 1;
        }
        // SAFETY: the loop initialised the first `written` spare elements, in order.
        unsafe { out.set_len(len + written) };
        // Dropping `cq` publishes the new head.
        written
    }

    /// Enters the kernel to flush overflowed completions or deferred task work, if it says so.
    #[cold]
    fn flush_if_needed(&mut self) -> io::Result<bool> {
        let (overflow, taskrun) = {
            let sq = self.ring.submission();
            (sq.cq_overflow(), sq.taskrun())
        };
        if overflow || taskrun {
            retry_eintr(|| self.ring.submitter().submit_and_wait(0))?;
            self.stats.enters += 1;
            self.stats.flushes += 1;
            return Ok(true);
        }
        Ok(false)
    }

    fn deadline_left(deadline: Option<Instant>) -> Option<Option<Duration>> {
        match deadline {
            None => Some(None),
            Some(d) => d
                .checked_duration_since(Instant::now())
                .filter(|r| !r.is_zero())
                .map(Some),
        }
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
        self.rung_at = self.stats.pushed;
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

    fn doorbell_stats(&self) -> DoorbellStats {
        self.stats.doorbell
    }
}

impl Completer for Uring {
    type Completion = Completion;

    fn reap(&mut self) -> Result<Option<Completion>, QueueError> {
        let mut next = self.ring.completion().next();
        if next.is_none() && self.flush_if_needed()? {
            next = self.ring.completion().next();
        }
        Ok(next.map(|cqe| {
            self.stats.completed += 1;
            self.book.complete(&cqe)
        }))
    }

    /// Moves what the CQ holds, up to `max`, into `out`. If the CQ is empty and the kernel
    /// says completions overflowed (or task work is deferred), flushes them first.
    fn reap_into(&mut self, out: &mut Vec<Completion>, max: usize) -> Result<usize, QueueError> {
        let mut n = self.drain(out, max);
        if n == 0 && max > 0 && self.flush_if_needed()? {
            n = self.drain(out, max);
        }
        self.stats.completed += n as u64;
        Ok(n)
    }

    /// Waits for at least one completion. Queued entries are submitted first (in
    /// [`WaitMode::Enter`], in the same system call).
    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), QueueError> {
        self.wait_for(1, timeout)
    }

    fn notify_stats(&self) -> NotifyStats {
        self.notify
    }
}

impl Uring {
    fn cq_len(&mut self) -> usize {
        self.ring.completion().len()
    }

    /// Submits what is queued and waits until at least `min` completions are ready (or the
    /// timeout passes): in [`WaitMode::Enter`] one `io_uring_enter` does both, like liburing's
    /// `io_uring_submit_and_wait`. `min` is capped at the number of operations in flight.
    ///
    /// The common case (no timeout, one enter that brings what was asked for) is inlined into
    /// the caller, system call included; everything else continues out of line.
    #[inline(always)]
    pub fn wait_for(&mut self, min: usize, timeout: Option<Duration>) -> Result<(), QueueError> {
        let min = min.clamp(1, self.in_flight().max(1));
        self.notify.waits += 1;
        if self.wait != WaitMode::Enter || timeout.is_some() {
            return self.wait_for_slow(min, timeout);
        }
        let have = self.cq_len();
        if have >= min {
            self.notify.without_sleep += 1;
            return Ok(());
        }
        // No flush first: the enter below carries GETEVENTS, which makes the kernel flush
        // overflowed completions and run deferred task work before it decides to sleep. It
        // also submits anything pushed since the last doorbell.
        self.note_enter_submits();
        self.notify.sleeps += 1;
        self.stats.enters += 1;
        if let Err(e) = self.enter_and_wait(min - have) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e.into());
            }
        }
        if self.cq_len() >= min {
            return Ok(());
        }
        // Short (a signal, or completions the kernel still holds).
        self.enter_until(min, None, None)
    }

    /// What an enter that submits does to the doorbell's books.
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
        if self.wait != WaitMode::Enter {
            return self.wait_without_enter(min, timeout);
        }
        if self.cq_len() >= min {
            self.notify.without_sleep += 1;
            return Ok(());
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        self.note_enter_submits();
        self.enter_until(min, deadline, timeout)
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
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
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
    /// frame to return through pays neither. docs/benchmarks.md has the measurement.
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
    fn enter(&self, to_submit: u32, want: u32, flags: IoringEnterFlags) -> io::Result<usize> {
        // SAFETY: the ring's own fd, flags the kernel defines for this call with no argument
        // block, and `to_submit` counts entries already published in the SQ (every pointer
        // they carry was vouched for when it was pushed, see `push_one`).
        let entered = unsafe { io_uring_enter(self.ring.as_fd(), to_submit, want, flags) };
        entered.map(|n| n as usize).map_err(io::Error::from)
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

impl Drop for Uring {
    /// Operations still in flight own memory the kernel may write: cancel them all and wait
    /// (bounded) for their completions before freeing anything. Whatever the kernel has still
    /// not completed after that is leaked, never freed under it.
    fn drop(&mut self) {
        if self.in_flight() == 0 {
            return;
        }
        let cancel = io_uring::opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(0);
        // SAFETY: a cancel-any entry points to no memory.
        let _ = unsafe { self.ring.submission().push(&cancel) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.in_flight() > 0 && Instant::now() < deadline {
            let ts = types::Timespec::new().nsec(10_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            loop {
                let next = self.ring.completion().next();
                let Some(cqe) = next else { break };
                if cqe.user_data() & (OWNED | LIGHT) != 0 {
                    self.stats.completed += 1;
                    drop(self.book.complete(&cqe));
                }
            }
        }
        if self.in_flight() > 0 {
            for slot in self.book.slots.drain(..) {
                if slot.op.is_some() {
                    std::mem::forget(slot);
                }
            }
        }
    }
}
