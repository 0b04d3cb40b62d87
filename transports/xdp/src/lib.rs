//! A network device as a subsystem: subring's three planes over AF_XDP.
//!
//! An AF_XDP socket is netmap's design in the kernel, and the three planes exactly:
//! - **Data plane**: a UMEM (one region cut into frames; here a planes [`Region`], a memfd
//!   another process can map, its frames a planes [`BufferPool`]) and four single-producer,
//!   single-consumer rings mapped from the kernel: *fill* (frames the application lends for
//!   receiving) and *TX* (frames to send), produced by the application; *RX* (frames received)
//!   and *completion* (frames sent), produced by the kernel.
//! - **Control plane**: the doorbell is a `sendto` (TX) or `recvfrom` (fill) on the socket,
//!   skipped unless the kernel set `XDP_RING_NEED_WAKEUP` on that ring (bound with
//!   `XDP_USE_NEED_WAKEUP`): [`XskStats`] counts both.
//! - **Interrupt plane**: `poll` on the socket (readable when RX has frames), or busy polling
//!   of the RX ring.
//!
//! Frames are owned values, as in the rest of subring: a frame is a pool [`Buf`] in exactly
//! one place (the pool's free list, the fill ring, the kernel, an [`RxFrame`] in the
//! application's hands, the TX ring, the completion ring), moved, never copied: safe code
//! cannot lose one (dropping it frees it) or post one twice. Every index and descriptor the
//! kernel writes is checked (a ring index more than the ring's size away from what this side
//! has seen, a frame address outside the UMEM or not lent to the kernel, a length past the
//! frame): a bad value is an [`XdpError`], never an access outside the UMEM.
//!
//! The XDP program that sends frames to the socket is built at run time from six BPF
//! instructions and attached with a BPF link ([`XdpProgram`]): no clang, libbpf or libxdp.
//!
//! [`Region`]: subring_planes::data::Region
//! [`BufferPool`]: subring_planes::data::BufferPool
//! [`Buf`]: subring_planes::data::Buf
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations)]

mod bpf;
mod ring;
mod socket;

pub use bpf::{AttachMode, XdpProgram};
pub use ring::RingKind;
pub use socket::{BindMode, RxFrame, TxFrame, XskConfig, XskSocket, XskStats};

/// What went wrong with an AF_XDP socket, its rings or its program.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XdpError {
    /// A configuration value that cannot work (named in the message).
    #[error("AF_XDP configuration: {0}")]
    Config(String),
    /// A system call failed.
    #[error("{what}: {source}")]
    Os {
        /// The call, and what it was for.
        what: &'static str,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused the program; its verifier's log says why.
    #[error("{what}: {source}; verifier log: {log}")]
    Verifier {
        /// The call.
        what: &'static str,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
        /// The verifier's log.
        log: String,
    },
    /// The ring layout the kernel gave (`XDP_MMAP_OFFSETS`) cannot be used.
    #[error("the {ring} ring's layout: {what}")]
    Layout {
        /// Which ring.
        ring: RingKind,
        /// What was wrong.
        what: String,
    },
    /// An index the kernel publishes is impossible: more than the ring's size away from the
    /// one this side has seen.
    #[error("the {ring} ring's {word} index is {value}, impossible against {seen} seen here")]
    CorruptIndex {
        /// Which ring.
        ring: RingKind,
        /// `"producer"` or `"consumer"`.
        word: &'static str,
        /// The value read.
        value: u32,
        /// This side's own index.
        seen: u32,
    },
    /// A descriptor the kernel wrote names memory it was not given.
    #[error("the {ring} ring names frame address {addr:#x} (length {len}): {why}")]
    BadDescriptor {
        /// Which ring.
        ring: RingKind,
        /// The address.
        addr: u64,
        /// The length.
        len: u32,
        /// Why it was refused.
        why: &'static str,
    },
    /// The TX ring is full: reap completions ([`XskSocket::reap_tx`]) and try again.
    #[error("the TX ring is full")]
    Full,
    /// Frames queued for sending did not complete in time (the link is down, or the driver
    /// stalls); they stay the kernel's.
    #[error("{pending} frames queued for sending did not complete within {waited:?}{}", if *link_down { " (the link is down)" } else { "" })]
    TxStalled {
        /// Frames still not completed.
        pending: usize,
        /// How long it waited.
        waited: std::time::Duration,
        /// The kernel said the link is down (`ENETDOWN`).
        link_down: bool,
    },
    /// The interface is down (`ENETDOWN`): queued frames wait for it.
    #[error("the interface is down: frames queued for sending wait for it")]
    LinkDown,
    /// A frame from another socket's (or pool's) memory: its index would name a frame of this
    /// UMEM. Move frames between sockets that share a UMEM, or copy.
    #[error("the frame is not one of this socket's UMEM")]
    ForeignFrame,
}
