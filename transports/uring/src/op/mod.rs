//! Typed operations that own their resources, and the one place raw submission entries are
//! built from them.
//!
//! An [`Op`] is moved into the ring with every buffer, path, address and timespec the kernel
//! will read or write; the ring keeps it until the operation's own completion, then hands the
//! resources back in that [`Completion`](crate::Completion). Dropping anything early cannot free
//! memory the kernel still uses: the caller no longer has it.

use std::ffi::CString;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Duration;

use io_uring::{opcode, squeue, types};
use subring_planes::data::{Buf, BufHandle};

use crate::fd::{CloseTarget, SharedFd};

/// The file an operation targets: a descriptor the operation holds until its completion, or an
/// index into the ring's registered files
/// ([`Uring::register_files`](crate::Uring::register_files)), which the kernel holds itself.
#[derive(Debug, Clone)]
pub enum Target {
    /// A descriptor of this process, shared with the operation (see [`SharedFd`]).
    Fd(SharedFd),
    /// An index into the registered file table.
    Fixed(u32),
}

impl Target {
    /// A target sharing `fd` (an `Arc<File>`, `&Arc<OwnedFd>`, an `OwnedFd`, ...).
    pub fn fd(fd: impl Into<SharedFd>) -> Self {
        Target::Fd(fd.into())
    }
}

impl From<SharedFd> for Target {
    fn from(fd: SharedFd) -> Self {
        Target::Fd(fd)
    }
}

/// Where an operation that makes a descriptor puts it in the registered file table (a *direct
/// descriptor*: never in the process's table, usable only through this ring as
/// [`Target::Fixed`]). The table must be registered first
/// ([`Uring::register_files_sparse`](crate::Uring::register_files_sparse) makes one of empty
/// slots).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectSlot {
    /// This slot (replacing what it held).
    At(u32),
    /// A free slot the kernel picks (`IORING_FILE_INDEX_ALLOC`); the completion names it.
    Any,
}

/// Memory a fixed-buffer read or write uses: it must lie in a region registered with
/// [`Uring::register_region`](crate::Uring::register_region).
#[derive(Debug)]
pub enum FixedBuf {
    /// A pool buffer this process owns: a read fills its capacity and sets its length; a write
    /// sends its length. It comes back with the completion.
    Buf(Buf),
    /// Bytes named by a handle (for example, one a client process sent): checked against the
    /// registered regions; the kernel reads or writes them in place.
    Handle(BufHandle),
    /// Bytes a handle names in the region registered under a key
    /// ([`Uring::register_region`](crate::Uring::register_region)): checked against that
    /// region, whatever other registered regions share its id (a service that registers many
    /// clients' memory, each with its own region 0, names each client's by key).
    In(crate::RegionKey, BufHandle),
}

impl FixedBuf {
    pub(crate) fn handle(&self, for_read: bool) -> BufHandle {
        match self {
            FixedBuf::Buf(b) => {
                let mut h = b.handle();
                if for_read {
                    h.len = b.capacity() as u32;
                }
                h
            }
            FixedBuf::Handle(h) | FixedBuf::In(_, h) => *h,
        }
    }
}

/// An operation for the kernel, owning everything the kernel will touch.
#[derive(Debug)]
#[non_exhaustive]
pub enum Op {
    /// Does nothing; completes with 0.
    Nop,
    /// `pread`: fills `buf` (up to its length) from `offset`; the completion's buffer is
    /// truncated to the bytes read. `offset` `u64::MAX` uses the file position.
    Read {
        /// File.
        fd: Target,
        /// Destination; its length is how much to read.
        buf: Vec<u8>,
        /// File offset.
        offset: u64,
    },
    /// `pwrite` of all of `buf` at `offset`.
    Write {
        /// File.
        fd: Target,
        /// Bytes to write.
        buf: Vec<u8>,
        /// File offset.
        offset: u64,
    },
    /// `preadv` into several buffers (each up to its length).
    Readv {
        /// File.
        fd: Target,
        /// Destinations.
        bufs: Vec<Vec<u8>>,
        /// File offset.
        offset: u64,
    },
    /// `pwritev` of several buffers.
    Writev {
        /// File.
        fd: Target,
        /// Sources.
        bufs: Vec<Vec<u8>>,
        /// File offset.
        offset: u64,
    },
    /// A read into registered memory (`IORING_OP_READ_FIXED`).
    ReadFixed {
        /// File.
        fd: Target,
        /// Destination in a registered region.
        buf: FixedBuf,
        /// File offset.
        offset: u64,
    },
    /// A write from registered memory (`IORING_OP_WRITE_FIXED`).
    WriteFixed {
        /// File.
        fd: Target,
        /// Source in a registered region.
        buf: FixedBuf,
        /// File offset.
        offset: u64,
    },
    /// `fsync`, or `fdatasync` when `datasync`.
    Fsync {
        /// File.
        fd: Target,
        /// Only data (and the metadata needed to read it back).
        datasync: bool,
    },
    /// `openat`: the new descriptor comes back owned, in [`Output::Fd`].
    OpenAt {
        /// Directory (`None`: the current directory).
        dir: Option<SharedFd>,
        /// Path.
        path: CString,
        /// `open(2)` flags (`O_CLOEXEC` is added).
        flags: i32,
        /// Mode for created files.
        mode: u32,
    },
    /// `close` of a descriptor the caller gives up, or of a registered file slot.
    Close {
        /// What to close.
        fd: CloseTarget,
    },
    /// `statx`: the completion carries the result.
    Statx {
        /// Directory (`None`: the current directory).
        dir: Option<SharedFd>,
        /// Path.
        path: CString,
        /// `AT_*` flags.
        flags: i32,
        /// `STATX_*` mask.
        mask: u32,
    },
    /// `send` of all of `buf`.
    Send {
        /// Socket.
        fd: Target,
        /// Bytes.
        buf: Vec<u8>,
        /// `MSG_*` flags.
        flags: i32,
    },
    /// `send` of a pool buffer's bytes (one the ring picked and filled, say: an echo sends the
    /// very buffer it received), without copying them out first; the buffer comes back in
    /// [`Output::Pooled`]. The kernel reads memory that other processes mapping the pool's
    /// region could change meanwhile: what is sent is what the buffer holds when it is read.
    SendBuf {
        /// Socket.
        fd: Target,
        /// The bytes, up to the buffer's length.
        buf: Buf,
        /// `MSG_*` flags.
        flags: i32,
    },
    /// Zero-copy `send` of all of `buf` (`IORING_OP_SEND_ZC`, Linux 6.0): the kernel sends
    /// from `buf` itself, so it keeps reading it after the send is reported. Two completions:
    /// the first with the bytes sent and [`more`](crate::Completion::more) set (no buffer
    /// yet), then, once the kernel's notification says it no longer reads the buffer, the last
    /// one with the same result and the buffer in [`Output::Buf`]. A send that fails is told the
    /// same way: its error in the first completion and again, with the buffer, in the last (or
    /// in one completion, with the buffer, where the kernel posts no notification for it). The
    /// buffer cannot come back earlier: the operation owns it.
    SendZc {
        /// Socket.
        fd: Target,
        /// Bytes.
        buf: Vec<u8>,
        /// `MSG_*` flags.
        flags: i32,
    },
    /// [`Op::SendZc`] from registered memory (`IORING_RECVSEND_FIXED_BUF`): the kernel maps
    /// nothing per send. The buffer comes back in [`Output::Fixed`] with the last completion.
    SendZcFixed {
        /// Socket.
        fd: Target,
        /// Bytes, in a registered region (a pool buffer sends its length).
        buf: FixedBuf,
        /// `MSG_*` flags.
        flags: i32,
    },
    /// `recv` into `buf` (up to its length); truncated to the bytes received.
    Recv {
        /// Socket.
        fd: Target,
        /// Destination.
        buf: Vec<u8>,
        /// `MSG_*` flags.
        flags: i32,
    },
    /// Multishot `recv` (Linux 6.0): one completion per arrival of data, each with a buffer the
    /// kernel picked from `group`'s ring ([`Output::Pooled`]), while
    /// [`more`](crate::Completion::more) is set. It ends with `more` clear: at end of stream
    /// (result 0), on an error, with `ENOBUFS` when the ring ran out of buffers (no byte is
    /// lost: what did not fit stays in the socket), or with data when the kernel stops it on
    /// its own (a full completion queue, say). Drop the buffers you are done with and push
    /// it again to re-arm.
    RecvMulti {
        /// Socket.
        fd: Target,
        /// The buffer ring to pick from.
        group: crate::BufGroup,
        /// `MSG_*` flags (not `MSG_WAITALL`).
        flags: i32,
    },
    /// [`Op::RecvMulti`] taking as many buffers per completion as the data fills
    /// (`IORING_RECVSEND_BUNDLE`, Linux 6.10): one completion, and one pass through the
    /// socket, for what would otherwise be a completion per buffer. The buffers come in
    /// [`Output::Bundle`], each filled whole but the last, in the order of the data. Not on a
    /// ring registered with [`incremental`](crate::BufRingOptions::incremental) consumption.
    RecvMultiBundle {
        /// Socket.
        fd: Target,
        /// The buffer ring to pick from.
        group: crate::BufGroup,
        /// `MSG_*` flags (not `MSG_WAITALL`).
        flags: i32,
    },
    /// Sends the buffers posted to send ring `group`
    /// ([`Uring::post_send`](crate::Uring::post_send)), in order (`IORING_RECVSEND_BUNDLE` on
    /// a send, Linux 6.10). The kernel goes in rounds (up to 256 buffers each): a round's
    /// completion has [`more`](crate::Completion::more) set, its result the round's bytes, and
    /// [`Output::Bundle`] the round's buffers, back from the ring; the last completion ends
    /// the operation, which may stop before the ring is empty (newer kernels stop after a
    /// round that had to wait for room in the socket; a full completion queue stops it too):
    /// push it again for the rest. An error ends it as well, handing back every buffer the
    /// kernel took (as its head says), whatever went out. One at a time per send ring; with
    /// nothing posted it fails with `ENOBUFS`. `MSG_ZEROCOPY` is refused (the kernel would
    /// keep reading the pages after the buffers come back: [`Op::SendZc`] is the zero-copy
    /// send).
    SendBundle {
        /// Socket.
        fd: Target,
        /// The send ring.
        group: crate::BufGroup,
        /// `MSG_*` flags.
        flags: i32,
    },
    /// Multishot `read` of a pollable file (a pipe, a socket, an eventfd; Linux 6.7): like
    /// [`Op::RecvMulti`], one buffer from `group` per completion.
    ReadMulti {
        /// File.
        fd: Target,
        /// The buffer ring to pick from.
        group: crate::BufGroup,
    },
    /// `sendmsg` of `bufs` (gathered), to `to` on an unconnected socket; the buffers come back
    /// in [`Output::Bufs`].
    SendMsg {
        /// Socket.
        fd: Target,
        /// Bytes, in order.
        bufs: Vec<Vec<u8>>,
        /// Destination (`None` on a connected socket); boxed, so that this rarely used field
        /// does not make every operation larger.
        to: Option<Box<SocketAddr>>,
        /// `MSG_*` flags.
        flags: i32,
    },
    /// `recvmsg` into `bufs` (scattered, up to their lengths): comes back as [`Output::Msg`],
    /// the buffers truncated to the bytes received, with the sender's address and the
    /// message flags (`MSG_TRUNC` if the datagram did not fit).
    RecvMsg {
        /// Socket.
        fd: Target,
        /// Destinations, in order.
        bufs: Vec<Vec<u8>>,
        /// `MSG_*` flags.
        flags: i32,
    },
    /// `accept4` (with `SOCK_CLOEXEC`): the new descriptor comes back owned, in
    /// [`Output::Fd`].
    Accept {
        /// Listening socket.
        fd: Target,
    },
    /// Multishot `accept4` (with `SOCK_CLOEXEC`; Linux 5.19): one completion per connection,
    /// each with its descriptor in [`Output::Fd`] and
    /// [`more`](crate::Completion::more) set while the operation stays armed. The last
    /// completion (an error, a cancel, or the kernel ending it) has `more` clear; pushing the
    /// operation again re-arms it.
    AcceptMulti {
        /// Listening socket.
        fd: Target,
    },
    /// `accept4` into the registered file table: the connection is a direct descriptor,
    /// named by the completion's [`Output::Slot`] (Linux 5.19).
    AcceptDirect {
        /// Listening socket.
        fd: Target,
        /// Where the connection goes.
        slot: DirectSlot,
    },
    /// Multishot accept into free slots of the registered file table: each completion names
    /// the slot the kernel picked ([`Output::Slot`]), while
    /// [`more`](crate::Completion::more) is set (Linux 5.19).
    AcceptMultiDirect {
        /// Listening socket.
        fd: Target,
    },
    /// `connect` to `addr`.
    Connect {
        /// Socket.
        fd: Target,
        /// Peer address.
        addr: SocketAddr,
    },
    /// A timer: completes with 0 after `after`, or once `count` other completions arrived
    /// (0: time only).
    Timeout {
        /// Delay.
        after: Duration,
        /// Completions that end it early (0: none).
        count: u32,
    },
    /// Cancels the previous (linked) operation if it has not completed within `after`; must
    /// follow an operation submitted with [`Link::Soft`] or [`Link::Hard`].
    LinkTimeout {
        /// Limit.
        after: Duration,
    },
    /// Cancels the in-flight operation submitted with `token` (completes with 0 if found; the
    /// target then completes on its own with `ECANCELED`). The targets are operations that can
    /// wait (I/O, poll, accept, timeouts); nop, fsync, close, msg_ring and cancel itself are not
    /// tracked for cancellation, and naming one is refused with `NotFound`.
    Cancel {
        /// Token of the operation to cancel.
        token: u64,
    },
    /// Cancels the operations in flight on `fd` (`IORING_ASYNC_CANCEL_FD`): the first one found
    /// (fails with `ENOENT` if there is none), or every one with `all` (then completes with how
    /// many, 0 if none; Linux 5.19).
    CancelFd {
        /// The descriptor whose operations to cancel.
        fd: Target,
        /// Every operation on it, not only the first.
        all: bool,
    },
    /// Cancels every operation of this ring in flight (`IORING_ASYNC_CANCEL_ANY`): completes
    /// with how many, 0 if none (Linux 5.19).
    CancelAll,
    /// Removes the pending [`Op::Timeout`] submitted with `token`: it completes with
    /// `ECANCELED`, this with 0.
    TimeoutRemove {
        /// Token of the timeout.
        token: u64,
    },
    /// Re-arms the pending [`Op::Timeout`] submitted with `token` to fire `after` from now
    /// (Linux 5.11).
    TimeoutUpdate {
        /// Token of the timeout.
        token: u64,
        /// The new delay.
        after: Duration,
    },
    /// Waits until `fd` is ready for `events` (`POLLIN`, ...): completes with the ready mask.
    Poll {
        /// Descriptor.
        fd: Target,
        /// `poll(2)` events.
        events: u32,
    },
    /// Multishot poll (Linux 5.13): a completion with the ready mask each time `fd` becomes
    /// ready for `events`, with [`more`](crate::Completion::more) set while it stays armed.
    PollMulti {
        /// Descriptor.
        fd: Target,
        /// `poll(2)` events.
        events: u32,
    },
    /// `fallocate`: allocates, punches a hole in (`FALLOC_FL_PUNCH_HOLE |
    /// FALLOC_FL_KEEP_SIZE`: a discard) or zeroes `len` bytes at `offset`.
    Fallocate {
        /// File.
        fd: Target,
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
        /// `FALLOC_FL_*` flags.
        mode: i32,
    },
    /// `socket(domain, ty | SOCK_CLOEXEC, protocol)`: the new socket comes back owned, in
    /// [`Output::Fd`] (Linux 5.19).
    Socket {
        /// `AF_INET`, `AF_INET6`, `AF_UNIX`, ...
        domain: i32,
        /// `SOCK_STREAM`, `SOCK_DGRAM`, ... (`SOCK_CLOEXEC` is added).
        ty: i32,
        /// Usually 0.
        protocol: i32,
    },
    /// `socket` into the registered file table: a direct descriptor, named by the
    /// completion's [`Output::Slot`] (Linux 5.19).
    SocketDirect {
        /// `AF_INET`, `AF_INET6`, `AF_UNIX`, ...
        domain: i32,
        /// `SOCK_STREAM`, `SOCK_DGRAM`, ...
        ty: i32,
        /// Usually 0.
        protocol: i32,
        /// Where the socket goes.
        slot: DirectSlot,
    },
    /// `openat` into the registered file table: a direct descriptor, named by the
    /// completion's [`Output::Slot`] (Linux 5.15).
    OpenAtDirect {
        /// Directory (`None`: the current directory).
        dir: Option<SharedFd>,
        /// Path.
        path: CString,
        /// `open(2)` flags (`O_CLOEXEC` does not apply to a direct descriptor).
        flags: i32,
        /// Mode for created files.
        mode: u32,
        /// Where the file goes.
        slot: DirectSlot,
    },
    /// Replaces slots `offset..offset + fds.len()` of the registered file table, in order
    /// (`IORING_OP_FILES_UPDATE`): a descriptor installs its file (the kernel takes its own
    /// reference), `None` empties the slot. Completes with how many slots were updated.
    FilesUpdate {
        /// The first slot.
        offset: u32,
        /// What each slot gets.
        fds: Vec<Option<SharedFd>>,
    },
    /// `bind` to `addr` (Linux 6.11).
    Bind {
        /// Socket.
        fd: Target,
        /// Local address.
        addr: SocketAddr,
    },
    /// `listen` with `backlog` (Linux 6.11).
    Listen {
        /// Socket.
        fd: Target,
        /// Pending connections the kernel queues.
        backlog: i32,
    },
    /// `shutdown` of one or both directions (`libc::SHUT_RD`, `SHUT_WR`, `SHUT_RDWR`; Linux
    /// 5.11).
    Shutdown {
        /// Socket.
        fd: Target,
        /// Which directions.
        how: i32,
    },
    /// Posts a completion into another ring (`IORING_OP_MSG_RING`): a kernel-mediated doorbell.
    /// The target ring reaps a [`Output::Message`] completion with `token` and `result`.
    MsgRing {
        /// The target ring ([`Uring::shared_fd`](crate::Uring::shared_fd)).
        ring: SharedFd,
        /// The result value the target sees.
        result: i32,
        /// The token the target sees (the top two bits must be clear).
        token: u64,
    },
}

/// How an operation is chained to the next one submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Link {
    /// Not linked.
    #[default]
    None,
    /// The next operation starts only after this one succeeds (`IOSQE_IO_LINK`); a failure
    /// cancels the rest of the chain.
    Soft,
    /// The next operation starts after this one completes, whatever its result
    /// (`IOSQE_IO_HARDLINK`).
    Hard,
}

/// An operation with the token its completion will carry.
#[derive(Debug)]
pub struct Submission {
    /// Chosen by the caller; comes back in the [`Completion`](crate::Completion).
    pub token: u64,
    /// The operation.
    pub op: Op,
    /// Chaining to the next submission.
    pub link: Link,
}

impl Submission {
    /// An unlinked submission.
    pub fn new(token: u64, op: Op) -> Self {
        Submission {
            token,
            op,
            link: Link::None,
        }
    }

    /// The same submission, linked to the next one.
    pub fn link(mut self, link: Link) -> Self {
        self.link = link;
        self
    }
}

/// What an operation hands back with its completion.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output {
    /// Nothing to return.
    None,
    /// The buffer of a read, write, send or recv (truncated to the bytes read or received).
    Buf(Vec<u8>),
    /// The buffers of a vectored read or write (a read's are truncated to what was filled).
    Bufs(Vec<Vec<u8>>),
    /// The fixed buffer of a fixed read or write (a pool buffer's length is set to the bytes read).
    Fixed(FixedBuf),
    /// The result of a `statx`.
    Statx(Box<libc::statx>),
    /// A message posted by another ring with [`Op::MsgRing`].
    Message,
    /// The descriptor an `accept`, `openat` or `socket` made, owned by the caller now (closed
    /// if dropped).
    Fd(OwnedFd),
    /// A pool buffer: one the kernel picked from a provided-buffer ring and filled (its length
    /// is the bytes received), or the one an [`Op::SendBuf`] sent. Yours now: dropping it frees
    /// it in its pool (and a buffer ring's is posted to the kernel again).
    Pooled(Buf),
    /// The buffers one completion of an [`Op::RecvMultiBundle`] filled, in the order of the
    /// data (empty when the completion received nothing; each goes back to its ring when
    /// dropped), or those an [`Op::SendBundle`] sent, back from its send ring.
    Bundle(Vec<Buf>),
    /// The bytes one receive put into a buffer of a ring consumed
    /// [incrementally](crate::BufRingOptions::incremental).
    Chunk(crate::BufChunk),
    /// The registered-file slot of a direct descriptor an operation made
    /// ([`DirectSlot`]): name it with [`Target::Fixed`], close it with
    /// [`CloseTarget::Fixed`](crate::CloseTarget::Fixed).
    Slot(u32),
    /// What a `recvmsg` received.
    Msg {
        /// The buffers, truncated to the bytes received.
        bufs: Vec<Vec<u8>>,
        /// The sender, if the socket reports one (an IPv4 or IPv6 address).
        from: Option<SocketAddr>,
        /// The message flags (`MSG_TRUNC`, ...).
        flags: i32,
    },
}

mod build;
mod kinds;

pub(crate) use build::{
    build, drop_aux, most_bytes, output, plain_failed, put_aux, take_plain_buf, too_long, Aux,
    Finish, FixedAddr,
};

impl DirectSlot {
    pub(crate) fn kernel(self) -> types::DestinationSlot {
        match self {
            // In range: checked at push against the table.
            DirectSlot::At(i) => types::DestinationSlot::try_from_slot_target(i)
                .unwrap_or_else(|_| types::DestinationSlot::auto_target()),
            DirectSlot::Any => types::DestinationSlot::auto_target(),
        }
    }
}
