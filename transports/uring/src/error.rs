//! Why a submission was refused before it reached the kernel, as a type a caller can match.
//!
//! A refused push comes back as [`Rejected`](subring_planes::queue::Rejected) with a
//! [`QueueError::Io`] (the transports share that error type); the `io::Error` inside carries a
//! [`SubmitError`] naming what was wrong, with the offending values as fields.
//! [`SubmitError::of`] finds it.

use std::io;

use subring_planes::data::RegionError;
use subring_planes::queue::QueueError;

use crate::RegionKey;

/// What was wrong with a submission the ring refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The running kernel lacks the operation (or the builder disabled it).
    #[error("io_uring operation {op} (opcode {opcode}) is not supported by this kernel")]
    Unsupported {
        /// The operation's name.
        op: &'static str,
        /// Its opcode.
        opcode: u8,
    },
    /// A registered file index past the table.
    #[error("registered file index {index} is out of range ({registered} registered)")]
    FileOutOfRange {
        /// The index named.
        index: u32,
        /// Files registered.
        registered: u32,
    },
    /// No region is registered under this key (never, or no longer).
    #[error("no region is registered under key {key}")]
    NoRegionKey {
        /// The key named.
        key: RegionKey,
    },
    /// No registered region has this id.
    #[error("no registered region has id {id}")]
    NoRegionId {
        /// The id named.
        id: u32,
    },
    /// Several registered regions have this id: name one by its key (`FixedBuf::In`).
    #[error("several registered regions have id {id}: name one by its key")]
    AmbiguousRegionId {
        /// The id named.
        id: u32,
    },
    /// The fixed buffer's handle is not inside its region.
    #[error("fixed buffer: {0}")]
    BadHandle(#[source] RegionError),
    /// A pool buffer whose region id matched, but that lies in another mapping.
    #[error("fixed buffer is not inside the registered region with id {id}")]
    NotInRegion {
        /// The region id.
        id: u32,
    },
    /// A fixed buffer not inside the window of its region that is registered under its key
    /// ([`Uring::register_range`](crate::Uring::register_range)).
    #[error("fixed buffer is not inside the registered bytes {start}..{end} of its region")]
    OutsideWindow {
        /// The registered window's start.
        start: usize,
        /// Its end.
        end: usize,
    },
    /// A fixed buffer across a 1 GiB boundary of its region's registration.
    #[error("fixed buffer crosses a 1 GiB registration boundary")]
    CrossesChunk,
    /// A message token using the bits the ring keeps to tell its own completions apart.
    #[error("message token {token:#x} has one of its top two bits set")]
    TokenBits {
        /// The token.
        token: u64,
    },
    /// A direct descriptor into any free slot, with no registered file table: register one
    /// first ([`Uring::register_files_sparse`](crate::Uring::register_files_sparse)).
    #[error("no registered file table to put a direct descriptor in")]
    NoFileTable,
    /// A bundle ([`Op::RecvMultiBundle`](crate::Op::RecvMultiBundle)) on a buffer ring that
    /// the kernel consumes incrementally: not supported here.
    #[error("buffer group {group} is consumed incrementally: bundles are not supported on it")]
    BundleOnIncremental {
        /// The group id.
        group: u16,
    },
    /// A send bundle on a send ring that another send bundle is sending from.
    #[error("a send bundle on send ring {group} is in flight: one at a time")]
    BundleInFlight {
        /// The group id.
        group: u16,
    },
    /// A send ring whose record of posted buffers and the kernel's head disagreed at a send
    /// bundle's last completion (the head unreadable, or past what was posted): it takes no
    /// more send bundles; unregister it (its buffers come back).
    #[error("send ring {group} is out of step with the kernel: unregister it")]
    SendRingOutOfStep {
        /// The group id.
        group: u16,
    },
    /// `MSG_ZEROCOPY` on a send whose buffer comes back with its completion: the kernel would
    /// go on reading its pages after that; [`Op::SendZc`](crate::Op::SendZc) is the zero-copy
    /// send.
    #[error("{op} with MSG_ZEROCOPY: use send_zc, whose buffer comes back after the kernel's notification")]
    ZeroCopyFlag {
        /// The operation's name.
        op: &'static str,
    },
    /// An operation naming a buffer group that no buffer ring is registered as.
    #[error("no buffer ring is registered as group {group}")]
    NoBufGroup {
        /// The group id.
        group: u16,
    },
    /// A cancel naming no operation in flight.
    #[error("no operation with token {token} is in flight")]
    NotInFlight {
        /// The token named.
        token: u64,
    },
    /// The ring was set up with `IORING_SETUP_SINGLE_ISSUER` (or `DEFER_TASKRUN`, which implies
    /// it) and entered from a thread other than the one that created it: the kernel refuses
    /// (`EEXIST`). Keep such a ring on its thread.
    #[error(
        "this io_uring was set up with {setup}: only the thread that created it may submit to \
         it{waits} (the kernel answered EEXIST)"
    )]
    NotTheIssuer {
        /// The setup flags that bind the ring to its thread.
        setup: &'static str,
        /// `" or wait on it"` with `DEFER_TASKRUN`, empty otherwise.
        waits: &'static str,
    },
}

impl SubmitError {
    /// The submission error inside `e`, if it is one.
    pub fn of(e: &QueueError) -> Option<&SubmitError> {
        match e {
            QueueError::Io(io) => io.get_ref()?.downcast_ref(),
            _ => None,
        }
    }

    fn kind(&self) -> io::ErrorKind {
        match self {
            SubmitError::Unsupported { .. } => io::ErrorKind::Unsupported,
            SubmitError::NotInFlight { .. } => io::ErrorKind::NotFound,
            SubmitError::NotTheIssuer { .. } => io::ErrorKind::PermissionDenied,
            _ => io::ErrorKind::InvalidInput,
        }
    }
}

impl From<SubmitError> for QueueError {
    #[cold]
    #[inline(never)]
    fn from(e: SubmitError) -> Self {
        QueueError::Io(io::Error::new(e.kind(), e))
    }
}

/// A wait without a timeout on a ring with nothing in flight: it could never end. (A ring that
/// only receives messages from other rings' `MSG_RING` waits for them with a timeout.)
#[derive(Debug, thiserror::Error)]
#[error("nothing is in flight: a wait without a timeout would never end")]
pub struct NothingInFlight;

impl From<NothingInFlight> for QueueError {
    #[cold]
    #[inline(never)]
    fn from(e: NothingInFlight) -> Self {
        QueueError::Io(io::Error::new(io::ErrorKind::InvalidInput, e))
    }
}
