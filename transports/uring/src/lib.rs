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

mod book;
mod bufring;
mod builder;
mod error;
mod fd;
mod op;
mod reap;
mod register;
mod submit;
#[cfg(feature = "tokio")]
pub mod tokio;
mod wait;

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

pub use bufring::{
    BufChunk, BufGroup, BufRingError, BufRingOptions, BufRingStats, SendRejected,
    MAX_BUF_RING_ENTRIES,
};
pub use builder::UringBuilder;
pub use error::{NothingInFlight, SubmitError};
pub use fd::{CloseTarget, FdOwner, SharedFd};
pub use op::{DirectSlot, FixedBuf, Link, Op, Output, Submission, Target};
pub use register::{RegionKey, RegisterError};

use book::Book;
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

/// Operations that own no memory the kernel touches, by kind number in `user_data` (`msg_ring`
/// no longer is: it holds the target ring's descriptor; its number stays reserved).
const LIGHT_OPS: [&str; 9] = [
    "nop",
    "fsync",
    "close",
    "msg_ring",
    "cancel",
    "fallocate",
    "cancel_fd",
    "cancel_all",
    "timeout_remove",
];

/// An operation's light kind, if it is light: it owns nothing the kernel uses after the push.
/// One that targets a shared descriptor is not: it holds the descriptor until its completion.
fn light_kind(op: &Op) -> Option<u64> {
    // Indices into `LIGHT_OPS`.
    match op {
        Op::Nop => Some(0),
        Op::Fsync {
            fd: Target::Fixed(_),
            ..
        } => Some(1),
        Op::Close {
            fd: CloseTarget::Fixed(_),
        } => Some(2),
        Op::Cancel { .. } => Some(4),
        Op::CancelFd {
            fd: Target::Fixed(_),
            ..
        } => Some(6),
        Op::CancelAll => Some(7),
        Op::TimeoutRemove { .. } => Some(8),
        Op::Fallocate {
            fd: Target::Fixed(_),
            ..
        } => Some(5),
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
    /// Completions that left their operation in flight: those of a multishot operation that
    /// stays armed ([`Completion::more`]). Operations finished are `completed - continued -
    /// foreign`.
    pub continued: u64,
    /// Times a CQ overflow (or deferred task work) had to be flushed with an extra enter.
    pub flushes: u64,
    /// Doorbells rung and skipped.
    pub doorbell: DoorbellStats,
    /// Completions that named no operation of this ring: messages from other rings
    /// ([`Op::MsgRing`]), and forged ones whose seal did not match (see [`Completion`]).
    pub foreign: u64,
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
    /// The resources the operation owned, or what this completion of a multishot operation
    /// carries (a descriptor, a picked buffer).
    pub output: Output,
    /// The operation stays in flight and more completions with its token will follow
    /// (`IORING_CQE_F_MORE`: a multishot operation still armed). `false` on the last
    /// completion of every operation, and on the only one of most.
    pub more: bool,
}

impl Completion {
    /// The kernel's error number if the operation failed (`ENOBUFS` for a receive whose buffer
    /// ring ran dry, `ECANCELED`, ...), the [`OpError`]'s inside [`Completion::result`]; `None`
    /// if it succeeded.
    ///
    /// ```
    /// # use subring_uring::{Completion, Output};
    /// # fn ran_dry(c: &Completion) -> bool {
    /// c.errno() == Some(libc::ENOBUFS)
    /// # }
    /// ```
    pub fn errno(&self) -> Option<i32> {
        let e = self.result.as_ref().err()?;
        match e.get_ref().and_then(|e| e.downcast_ref::<OpError>()) {
            Some(op) => op.source.raw_os_error(),
            None => e.raw_os_error(),
        }
    }
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
    fixed: register::FixedTable,
    files: u32,
    eventfd: Option<EventFdSignal>,
    wait: WaitMode,
    on_full: OnFull,
    stats: UringStats,
    notify: NotifyStats,
    /// Set up with `IORING_SETUP_DEFER_TASKRUN` (the io-uring crate's parameters do not say).
    defer_taskrun: bool,
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
fn unsupported(op: &'static str, opcode: u8) -> QueueError {
    SubmitError::Unsupported { op, opcode }.into()
}

#[cold]
#[inline(never)]
fn file_out_of_range(index: u32, registered: u32) -> QueueError {
    SubmitError::FileOutOfRange { index, registered }.into()
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

    /// The ring's descriptor.
    pub fn ring_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the `IoUring` owns this descriptor and lives as long as the borrow.
        unsafe { BorrowedFd::borrow_raw(self.ring.as_raw_fd()) }
    }

    /// A descriptor of this ring that another ring's [`Op::MsgRing`] can target: a duplicate,
    /// shared by the operations that use it (the ring stays valid for them even if this
    /// `Uring` is dropped first).
    pub fn shared_fd(&self) -> io::Result<SharedFd> {
        Ok(SharedFd::from(self.ring_fd().try_clone_to_owned()?))
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

    /// Operations submitted (or queued) whose last completion has not been reaped (a multishot
    /// operation counts once, however many completions it made).
    pub fn in_flight(&self) -> usize {
        (self.stats.pushed + self.book.foreign + self.book.continued)
            .saturating_sub(self.stats.completed) as usize
    }

    /// Whether an operation that owns memory the kernel may use is still in flight: what
    /// dropping the ring must wait for, whatever the counters say.
    fn owned_in_flight(&self) -> bool {
        self.book.slots.iter().any(|s| s.op.is_some())
    }

    /// Entries pushed since the doorbell was last rung.
    fn unsubmitted(&self) -> u64 {
        self.stats.pushed - self.rung_at
    }

    /// Counters.
    pub fn stats(&self) -> UringStats {
        UringStats {
            foreign: self.book.foreign,
            continued: self.book.continued,
            ..self.stats
        }
    }
}

impl Drop for Uring {
    /// Operations still in flight own memory the kernel may write: cancel them all and wait
    /// (bounded) for their completions before freeing anything. Whatever the kernel has still
    /// not completed after that is leaked, never freed under it.
    fn drop(&mut self) {
        if self.in_flight() > 0 || self.owned_in_flight() {
            self.cancel_and_drain();
        }
        if self.in_flight() > 0 || self.owned_in_flight() {
            for slot in self.book.slots.drain(..) {
                if slot.op.is_some() {
                    std::mem::forget(slot);
                }
            }
            // The kernel may still pick buffers from the rings and write them: their memory
            // and pools are leaked with the operations.
            std::mem::forget(std::mem::take(&mut self.book.groups));
            std::mem::forget(std::mem::take(&mut self.book.send_groups));
            return;
        }
        // Nothing in flight can pick a buffer any more: every buffer still posted comes back.
        for mut group in std::mem::take(&mut self.book.groups) {
            match self.ring.submitter().unregister_buf_ring(group.id) {
                Ok(()) => group.reclaim_all(),
                // Still registered (a single-issuer ring dropped on another thread): its memory
                // stays mapped for the kernel, which can pick nothing now (nothing in flight).
                Err(_) => std::mem::forget(group),
            }
        }
        for group in std::mem::take(&mut self.book.send_groups) {
            // Its queued buffers go back to their pools once the kernel reads the ring no more.
            if self.ring.submitter().unregister_buf_ring(group.id).is_err() {
                std::mem::forget(group);
            }
        }
    }
}

impl Uring {
    /// Cancels every operation in flight and reaps completions until none is left, for at most
    /// 10 s.
    fn cancel_and_drain(&mut self) {
        let cancel = io_uring::opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(0);
        // SAFETY: a cancel-any entry points to no memory.
        let mut cancel_queued = unsafe { self.ring.submission().push(&cancel) }.is_ok();
        let deadline = Instant::now() + Duration::from_secs(10);
        while (self.in_flight() > 0 || self.owned_in_flight()) && Instant::now() < deadline {
            if !cancel_queued {
                // The queue was full: the enter below takes entries, and the cancel goes in
                // once there is room.
                // SAFETY: as above.
                cancel_queued = unsafe { self.ring.submission().push(&cancel) }.is_ok();
            }
            let ts = types::Timespec::new().nsec(10_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            let entered = self.ring.submitter().submit_with_args(1, &args);
            if entered.is_err_and(|e| e.raw_os_error() == Some(libc::EEXIST)) {
                // A single-issuer ring on another thread than its own: the kernel will take
                // nothing from this one, so waiting is pointless; what is in flight is leaked.
                break;
            }
            loop {
                let next = self.ring.completion().next();
                let Some(cqe) = next else { break };
                if cqe.user_data() & (OWNED | LIGHT) != 0 {
                    self.stats.completed += 1;
                    drop(self.book.complete(&cqe));
                }
            }
        }
    }
}
