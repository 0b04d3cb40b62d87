//! The control plane's wire format: versioned control messages over a `SOCK_SEQPACKET` Unix
//! socket, file descriptors passed beside them with `SCM_RIGHTS`.
//!
//! Every message is one datagram:
//! ```text
//! "SBSH"  version: u16 LE  kind: u8  body
//! ```
//! `kind` [`KIND_MESSAGE`] carries a postcard-encoded [`ClientMsg`] or [`ServerMsg`].
//! `kind` [`KIND_VERSION_REFUSED`] carries only the refusing side's version (u16 LE) and never
//! changes shape, so that two sides of different versions can always tell each other so, however
//! the message types evolve.

use std::fmt;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};
use subring_planes::interrupt::NotifyMode;

use crate::peer_fd::PeerFd;
use crate::{Error, FdError};

/// The first bytes of every control message.
pub const PROTOCOL_MAGIC: [u8; 4] = *b"SBSH";
/// The control protocol version this build speaks. It also covers the layout of the shared
/// memory it sets up, so two builds that would lay out the rings differently, or encode their
/// messages differently, refuse each other at the handshake. (Version 2: ring slots carry
/// stamps. Version 3: [`Refusal::Unaligned`]. Version 4: a side that finds a ring full sleeps
/// on its producer word, and the other side wakes it after reaping. Version 5: event-idx
/// suppression, asked for in [`Hello::event_idx`] and granted in [`Welcome::event_idx`]; a
/// wake word may say "sleeping until entry N". Version 6: the welcome's call descriptor is an
/// epoll instance watching the server's eventfd, not the eventfd. Version 7:
/// [`Refusal::UserBusy`]. Version 8: [`Hello::futex_doorbell`] and [`Refusal::Unsupported`].
/// Version 9: ring stamps name laps (ring layout version 5), so fresh memory is an empty ring.)
pub const PROTOCOL_VERSION: u16 = 9;
/// A control message carrying a postcard-encoded body.
pub const KIND_MESSAGE: u8 = 1;
/// A refusal because of a version mismatch; its body is the refusing side's version.
pub const KIND_VERSION_REFUSED: u8 = 0xff;
/// The largest control message accepted.
pub const MAX_MESSAGE: usize = 4096;
/// The most file descriptors one control message may carry.
pub const MAX_FDS: usize = 4;

const HEADER: usize = 7;

/// Size and alignment of an entry type, compared across the two sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryShape {
    /// `size_of`.
    pub size: u32,
    /// `align_of`.
    pub align: u32,
}

impl EntryShape {
    /// The shape of `T`.
    pub fn of<T>() -> Self {
        EntryShape {
            size: std::mem::size_of::<T>() as u32,
            align: std::mem::align_of::<T>() as u32,
        }
    }
}

impl fmt::Display for EntryShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes aligned to {}", self.size, self.align)
    }
}

/// A notify mode on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireMode {
    /// [`NotifyMode::Spin`].
    Spin,
    /// [`NotifyMode::Adaptive`].
    Adaptive,
    /// [`NotifyMode::EventFd`].
    EventFd,
    /// [`NotifyMode::Futex`].
    Futex,
}

impl From<NotifyMode> for WireMode {
    fn from(m: NotifyMode) -> Self {
        match m {
            NotifyMode::Spin => WireMode::Spin,
            NotifyMode::Adaptive => WireMode::Adaptive,
            NotifyMode::EventFd => WireMode::EventFd,
            NotifyMode::Futex => WireMode::Futex,
        }
    }
}

impl From<WireMode> for NotifyMode {
    fn from(m: WireMode) -> Self {
        match m {
            WireMode::Spin => NotifyMode::Spin,
            WireMode::Adaptive => NotifyMode::Adaptive,
            WireMode::EventFd => NotifyMode::EventFd,
            WireMode::Futex => NotifyMode::Futex,
        }
    }
}

/// What a client asks for when it connects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The application protocol the client speaks (the server's must be the same).
    pub protocol: String,
    /// Shape of the submission entries.
    pub request: EntryShape,
    /// Shape of the completion entries.
    pub completion: EntryShape,
    /// Submission ring entries (a power of two).
    pub sq_capacity: u32,
    /// Completion ring entries (a power of two).
    pub cq_capacity: u32,
    /// How the client waits for completions, and how it wants the server to wait for it.
    pub mode: WireMode,
    /// Bytes per payload buffer.
    pub buf_size: u32,
    /// Number of payload buffers.
    pub buf_count: u32,
    /// Whether the client asks for event-idx suppression (`PairConfig::event_idx`).
    pub event_idx: bool,
    /// Whether the client rings its doorbell only as a futex wake (or not at all, in spin
    /// mode): it takes no eventfd doorbell, which a server holding the eventfd could make
    /// block ([`ClientOptions::untrusted_server`](crate::ClientOptions::untrusted_server)). A
    /// server that sleeps in epoll then waits on the client's word through io_uring, or
    /// refuses ([`Refusal::Unsupported`]).
    pub futex_doorbell: bool,
}

/// What the server grants; the shared memory and eventfds travel beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The server's number for this connection.
    pub client_id: u64,
    /// The server's process id.
    pub server_pid: u32,
    /// Length of the shared memfd.
    pub region_len: u64,
    /// Offset of the queue pair in it.
    pub pair_offset: u64,
    /// Offset of the payload buffers in it.
    pub pool_offset: u64,
    /// Bytes per payload buffer.
    pub buf_size: u32,
    /// Number of payload buffers.
    pub buf_count: u32,
    /// Submission ring entries.
    pub sq_capacity: u32,
    /// Completion ring entries.
    pub cq_capacity: u32,
    /// How the server waits for submissions (the client's doorbell follows it).
    pub kick_mode: WireMode,
    /// How the client waits for completions.
    pub call_mode: WireMode,
    /// Whether a kick eventfd follows the memfd.
    pub kick_fd: bool,
    /// Whether the call descriptor follows (after the kick eventfd, if any): an epoll instance
    /// that watches the server's call eventfd, which the client waits in (the server keeps the
    /// eventfd itself: a client holding it could make the server's wake-ups block).
    pub call_fd: bool,
    /// Whether event-idx suppression is on: the client asked for it and the server grants it.
    /// The queue pair's header records the same.
    pub event_idx: bool,
}

/// Why a server refused a connection or request. More reasons may come with later protocol
/// versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Refusal {
    /// The client speaks another application protocol.
    Protocol {
        /// The server's protocol.
        server: String,
        /// The client's protocol.
        client: String,
    },
    /// An entry type has another shape on the server.
    EntryShape {
        /// `"request"` or `"completion"`.
        which: String,
        /// The server's shape.
        server: EntryShape,
        /// The client's shape.
        client: EntryShape,
    },
    /// A size the client asked for is out of the server's limits.
    Limit {
        /// What was asked for.
        what: String,
        /// The value asked for.
        asked: u64,
        /// The smallest allowed.
        min: u64,
        /// The largest allowed.
        max: u64,
    },
    /// The server serves its maximum number of clients.
    Busy {
        /// That maximum.
        max_clients: u32,
    },
    /// The client's message made no sense.
    Malformed(String),
    /// The server failed to set the connection up.
    Internal(String),
    /// A size that must be a multiple of `of` (a power of two, where `of` is 0) is not.
    Unaligned {
        /// What was asked for.
        what: String,
        /// The value asked for.
        asked: u64,
        /// What it must be a multiple of; 0 where it must be a power of two.
        of: u64,
    },
    /// The server serves its maximum number of clients of the connecting user
    /// ([`ServerConfig::max_clients_per_user`](crate::ServerConfig::max_clients_per_user)).
    UserBusy {
        /// The user, as the kernel gave the server the client's credentials (`None` if it gave
        /// none).
        uid: Option<u32>,
        /// That maximum.
        max_per_user: u32,
    },
    /// The server cannot give what the client asked for on this system.
    Unsupported {
        /// What was asked for.
        what: String,
        /// What it would need.
        needs: String,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Protocol { server, client } => write!(
                f,
                "the server speaks application protocol {server:?}, the client {client:?}"
            ),
            Refusal::EntryShape {
                which,
                server,
                client,
            } => write!(
                f,
                "{which} entries are {server} on the server but {client} on the client"
            ),
            Refusal::Limit {
                what,
                asked,
                min,
                max,
            } => write!(
                f,
                "{what} {asked} is outside the server's range {min}..={max}"
            ),
            Refusal::Busy { max_clients } => {
                write!(
                    f,
                    "the server already serves its maximum of {max_clients} clients"
                )
            }
            Refusal::Malformed(why) => write!(f, "malformed request: {why}"),
            Refusal::Internal(why) => write!(f, "server-side failure: {why}"),
            Refusal::Unaligned { what, asked, of: 0 } => {
                write!(f, "{what} {asked} is not a power of two")
            }
            Refusal::Unaligned { what, asked, of } => {
                write!(f, "{what} {asked} is not a multiple of {of}")
            }
            Refusal::UserBusy { uid, max_per_user } => {
                let user = uid.map_or("this user".to_string(), |u| format!("user {u}"));
                write!(
                    f,
                    "the server already serves its maximum of {max_per_user} clients of {user}"
                )
            }
            Refusal::Unsupported { what, needs } => {
                write!(f, "the server cannot give {what} here: it needs {needs}")
            }
        }
    }
}

/// Client → server control messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// Opens a connection.
    Hello(Hello),
    /// Registers another memory region (its sealed memfd travels beside): handles naming
    /// region `id` then resolve in it.
    RegisterRegion {
        /// The id handles will carry (not 0, which is the connection's own region).
        id: u32,
        /// Its length.
        len: u64,
    },
    /// The client is closing; the server releases the connection.
    Shutdown,
}

/// Server → client control messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// The connection is set up.
    Welcome(Welcome),
    /// The connection or a request was refused.
    Refused(Refusal),
    /// A region was registered.
    Registered {
        /// Its id.
        id: u32,
    },
    /// The server is closing this connection.
    Goodbye {
        /// Why.
        reason: String,
    },
}

mod io;

pub use io::socket_pair;
pub(crate) use io::{
    check_seqpacket, hung_up, recv, recv_blocking, rights_in, send, send_until,
    send_version_refusal, Incoming,
};
