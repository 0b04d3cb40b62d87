//! The transport's errors: what failed, with the offending values as fields.

use std::time::Duration;

use subring_planes::interrupt::NotifyMode;
use subring_planes::queue::QueueError;

use crate::proto::Refusal;
use crate::{PoolError, RegionError};

/// Why a connection, a control request or the server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
    /// Connecting to or listening on a socket path failed.
    #[error("{what} {path}: {source}{hint}")]
    Path {
        /// What was being done (`"cannot connect to"`, `"cannot listen on"`).
        what: &'static str,
        /// The socket path.
        path: String,
        /// The kernel's error (match its `kind()`: `NotFound` where nobody serves the path,
        /// `ConnectionRefused` for a stale socket file, `AddrInUse` where a server listens).
        #[source]
        source: std::io::Error,
        /// What the error probably means, for people (`" (no such socket: is the server
        /// running?)"`), or empty.
        hint: &'static str,
    },
    /// The two sides speak different control-protocol versions.
    #[error("control protocol version mismatch: this side speaks version {ours}, the peer {peer}")]
    Version {
        /// Our version.
        ours: u16,
        /// The peer's.
        peer: u16,
    },
    /// The peer sent something that is not a valid control message.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was malformed.
        what: &'static str,
        /// How.
        detail: String,
    },
    /// The server refused the connection or request.
    #[error("server refused: {0}")]
    Refused(Refusal),
    /// The server set the connection up in a way a client that does not trust it refuses
    /// ([`ClientOptions::untrusted_server`](crate::ClientOptions::untrusted_server)).
    #[error("refused an untrusted server's setup: {detail}")]
    Untrusted {
        /// What was refused, and what the server would have to do instead.
        detail: String,
    },
    /// The peer did not answer in time.
    #[error("timed out after {after:?} waiting for {waiting_for}")]
    Timeout {
        /// What was awaited.
        waiting_for: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// The peer closed the control socket.
    #[error("peer closed the control socket during {during}")]
    Closed {
        /// What was being done.
        during: &'static str,
    },
    /// File descriptors that came with a message are missing, extra, or of the wrong kind.
    #[error("bad file descriptors from peer: {0}")]
    BadFds(#[from] FdError),
    /// A configuration value or argument is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The shared memory could not be created, mapped or checked.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// The payload buffers could not be set up.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The queue pair could not be set up or used.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        use std::io::ErrorKind;
        let kind = match &e {
            Error::Io { source, .. } | Error::Path { source, .. } => source.kind(),
            Error::Timeout { .. } => ErrorKind::TimedOut,
            Error::Closed { .. } => ErrorKind::BrokenPipe,
            Error::Queue(QueueError::PeerGone) => ErrorKind::BrokenPipe,
            Error::Config(_) => ErrorKind::InvalidInput,
            _ => ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, e)
    }
}

/// Checks a ring capacity the way the rings will.
pub(crate) fn check_capacity(field: &'static str, value: u32, max: u32) -> Result<(), ConfigError> {
    if value < 2 || !value.is_power_of_two() || value > max {
        return Err(ConfigError::Capacity { field, value, max });
    }
    Ok(())
}

/// The longest timeout or interval a configuration takes: a day, a limit of subring's (a
/// deadline is an `Instant`, and one far enough ahead cannot be represented).
pub(crate) const LONGEST_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// A length of time between 1 µs and `max`.
pub(crate) fn check_duration(
    field: &'static str,
    value: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    let min = Duration::from_micros(1);
    if value < min || value > max {
        return Err(ConfigError::Duration {
            field,
            value,
            min,
            max,
        });
    }
    Ok(())
}

/// An invalid configuration value or argument, with the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A connection handed over (`Server::add_connection`, `Client::from_socket`) that is not
    /// a Unix `SOCK_SEQPACKET` socket ([`socket_pair`](crate::socket_pair) makes them): control
    /// messages rely on its message boundaries.
    #[error("the connection is {found}, not a Unix SOCK_SEQPACKET socket (socket_pair makes one)")]
    NotSeqPacket {
        /// What it is instead.
        found: String,
    },
    /// A count that must be at least 1 is 0.
    #[error("{field} must be at least 1")]
    Zero {
        /// The field's name.
        field: &'static str,
    },
    /// A length of time outside its range: zero, or longer than a day (subring's limit, which
    /// keeps every deadline it computes representable).
    #[error("{field} of {value:?} must be between {min:?} and {max:?}")]
    Duration {
        /// The field's name.
        field: &'static str,
        /// The value given.
        value: Duration,
        /// The shortest allowed.
        min: Duration,
        /// The longest allowed.
        max: Duration,
    },
    /// A value outside its range.
    #[error("{field} {value} must be between {min} and {max}")]
    OutOfRange {
        /// The field's name.
        field: &'static str,
        /// The value given.
        value: u64,
        /// The smallest allowed.
        min: u64,
        /// The largest allowed.
        max: u64,
    },
    /// A ring capacity that is not a power of two between 2 and `max`.
    #[error("{field} {value} must be a power of two between 2 and {max}")]
    Capacity {
        /// The field's name.
        field: &'static str,
        /// The value given.
        value: u32,
        /// The largest allowed.
        max: u32,
    },
    /// A futex-sleeping server asked to watch more clients than `futex_waitv` takes words.
    #[error(
        "a futex-sleeping server watches at most {max} clients (futex_waitv takes one word \
         more, its own); max_clients is {max_clients}"
    )]
    FutexClients {
        /// The `max_clients` asked for.
        max_clients: u32,
        /// The most a futex-sleeping server watches.
        max: u32,
    },
    /// The running kernel lacks what the configuration needs.
    #[error("{what} needs {needs}, which this kernel lacks")]
    Unsupported {
        /// What was asked for.
        what: &'static str,
        /// The kernel feature it needs.
        needs: &'static str,
    },
    /// A notify mode that this use cannot work with.
    #[error("{what} needs notify mode {needs}, not {given}")]
    Mode {
        /// What needs the mode.
        what: &'static str,
        /// The mode it needs.
        needs: NotifyMode,
        /// The mode given.
        given: NotifyMode,
    },
    /// A region id that is reserved (0) or already registered on the connection.
    #[error("region id {id} is reserved or already registered on this connection")]
    RegionId {
        /// The id.
        id: u32,
    },
    /// A region that is not a memfd (an anonymous mapping cannot be shared with a server).
    #[error("region {id} is not a memfd: only memfd regions can be registered with a server")]
    NotMemfd {
        /// The region's id.
        id: u32,
    },
}

/// The kind of descriptor a message should have carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FdKind {
    /// A memfd: a regular file on tmpfs (not hugetlbfs).
    Memfd,
    /// An eventfd.
    EventFd,
    /// An epoll instance (the call descriptor of a welcome).
    Epoll,
}

impl std::fmt::Display for FdKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FdKind::Memfd => "a memfd (a regular file on tmpfs)",
            FdKind::EventFd => "an eventfd",
            FdKind::Epoll => "an epoll instance",
        })
    }
}

/// What was wrong with the descriptors a peer sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FdError {
    /// A control message carried more descriptors than this process had free descriptor
    /// numbers for (it is near its `RLIMIT_NOFILE`): refused whole, its descriptors dropped
    /// where their close cannot block this thread.
    #[error(
        "a control message carried more file descriptors than this process has free \
         descriptor numbers for (near its RLIMIT_NOFILE)"
    )]
    NoRoom,
    /// More descriptors than any message carries (`got` is `None` where the kernel truncated
    /// them, so that their number is unknown).
    #[error("a control message carried {} file descriptors, more than {max}", match got { Some(n) => n.to_string(), None => "more".into() })]
    TooMany {
        /// How many arrived, if known.
        got: Option<usize>,
        /// The most a message carries.
        max: usize,
    },
    /// Another number of descriptors than the message announced.
    #[error("{message} announced {expected} descriptors, {got} arrived")]
    Count {
        /// The message.
        message: &'static str,
        /// How many it announced.
        expected: usize,
        /// How many arrived.
        got: usize,
    },
    /// A descriptor of the wrong kind (refused and closed where closing cannot block).
    #[error("expected {expected}, got a descriptor {got}")]
    Kind {
        /// The kind expected.
        expected: FdKind,
        /// What it was, as `/proc/self/fd` named it (for people; match on `expected`).
        got: String,
    },
    /// An eventfd (or the epoll instance that watches the peer's) that could not be set up for
    /// waiting.
    #[error("the peer's eventfd cannot be used: {0}")]
    EventFd(#[source] std::io::Error),
}
