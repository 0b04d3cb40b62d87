//! How the block service is set up, why it fails to start, and what it counts.

use std::io;
use std::path::PathBuf;

use subring_uring::UringStats;

/// How the block service is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlkConfig {
    /// The file or block device served (it must exist; its size is the device's).
    pub path: PathBuf,
    /// Try `O_DIRECT` (default): reads and writes go between the disk and the client's memory
    /// by DMA. Where the file system has no direct I/O (tmpfs), the service falls back to
    /// buffered I/O and says so ([`BlkService::direct`](crate::BlkService::direct)).
    pub direct: bool,
    /// Operations in the kernel at once, over all clients (default 256). The clients share
    /// it: while several have operations in the service, a client holding an even part of it
    /// (at least 4) is given no more slots while another client under its part has operations
    /// waiting, so that a client with hundreds queued cannot hold the device's whole queue.
    /// Slots no such client wants go to whoever waits. Each client is also bounded by the
    /// server's [`max_deferred`](subring_shm::ServerConfig::max_deferred).
    pub depth: u32,
    /// Largest read or write (default 1 MiB).
    pub max_io: u32,
    /// Bytes of reads and writes one client may have in the kernel at once (default 16 MiB;
    /// not 0). The kernel serves what it is given in order (its worker threads, the device's
    /// queue): a client with 64 reads of 8 MiB in flight had another client's 4 KiB read wait
    /// behind 512 MiB of them, 45 ms. Past this, the client's next operation waits in the
    /// service until some of its own complete (one larger than this goes alone). 16 MiB in
    /// flight is more than a device needs to stream at full speed.
    pub max_client_bytes_in_ring: u64,
    /// `true` (default): the kernel reads into and writes from the client's buffers, registered
    /// as fixed buffers of the service's ring. `false`: the service copies through buffers of
    /// its own (the design this service exists to avoid; kept to measure it against).
    pub zero_copy: bool,
    /// Submission batching (default 16): while the kernel has at least this many operations
    /// in flight, new ones are handed over once this many have gathered (their completions
    /// wake the service meanwhile); below it, at once.
    pub submit_batch: u32,
    /// Most bytes of one client's memory the service registers with its ring (default 1 GiB).
    /// Registered memory is pinned (the kernel faults it in and holds it until it is
    /// unregistered): this bounds the memory one client can make the service's process hold.
    /// A read or write that would register more is refused with
    /// [`Status::NoMemory`](crate::Status::NoMemory). (Zero-copy mode only.)
    pub max_registered: u64,
    /// Most bytes of all clients' memory registered at once (default 4 GiB); past it, as
    /// past `max_registered`. The kernel also holds a ring made without `CAP_IPC_LOCK` to the
    /// locked-memory limit of the service's user (`RLIMIT_MEMLOCK`, often 8 MiB): past that,
    /// registrations fail and the requests that need them are refused with `NoMemory`
    /// ([`BlkStats::registrations_refused`] counts them). Run the service with the capability,
    /// or a limit above this total, to serve every client's memory zero-copy.
    pub max_registered_total: u64,
    /// Bytes of a client's region registered at a time (default 4 MiB; rounded down to a
    /// multiple of 4096, at least 4096, and with `max_io` at most 1 GiB):
    /// a read or write registers the window of its buffer's region that holds the buffer
    /// (this many bytes, from a multiple of it, and `max_io` more, so that any buffer fits in
    /// one), the first time one names it, not the whole region. Pinning a window faults in
    /// whatever of it the client never touched, work in proportion to its size: the request
    /// that causes it is charged the window's bytes against the client's
    /// [`turn_bytes`](subring_shm::ServerConfig::turn_bytes), so a client makes the service
    /// pin at most about one window per turn, however large its memory. Windows stay
    /// registered until the client leaves. Against `max_registered` and
    /// `max_registered_total` a window counts the bytes it alone covers (this many), not the
    /// `max_io` it shares with the next: a region used whole counts its length.
    pub register_window: u64,
    /// Serve the device read-only (default `false`): it is opened without write access, writes
    /// and discards are refused with [`Status::ReadOnly`](crate::Status::ReadOnly), and the
    /// info answer says so ([`FLAG_READ_ONLY`](crate::proto::FLAG_READ_ONLY)). For a base
    /// image many clients share, or a file the service's user may only read.
    pub read_only: bool,
}

impl BlkConfig {
    /// Defaults for the device at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        BlkConfig {
            path: path.into(),
            direct: true,
            depth: 256,
            max_io: 1 << 20,
            max_client_bytes_in_ring: 16 << 20,
            zero_copy: true,
            submit_batch: 16,
            max_registered: 1 << 30,
            max_registered_total: 4 << 30,
            register_window: 4 << 20,
            read_only: false,
        }
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlkError {
    /// The device could not be opened or sized.
    #[error("cannot open the device: {0}")]
    Device(#[source] io::Error),
    /// The io_uring could not be set up.
    #[error("io_uring setup for the block service failed: {0}")]
    Uring(#[source] io::Error),
    /// The service's staging buffers (for copying mode) could not be set up.
    #[error("the block service's staging buffers: {0}")]
    Staging(#[from] subring_shm::RegionError),
    /// The staging buffers could not be registered with the ring.
    #[error("the block service's staging buffers: {0}")]
    Register(#[from] subring_uring::RegisterError),
    /// A configuration value is out of range.
    #[error("invalid block service configuration: {0}")]
    Config(#[from] subring_shm::ConfigError),
    /// The shm server could not be set up around the service.
    #[error(transparent)]
    Server(#[from] subring_shm::Error),
}

/// Counters of the block service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlkStats {
    /// Reads completed (successfully or not).
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Flushes completed.
    pub flushes: u64,
    /// Flushes that had to wait for writes in flight before them.
    pub flushes_waited: u64,
    /// Discards completed.
    pub discards: u64,
    /// Requests refused with a [`Status`](crate::Status) (bad op, handle, range, length,
    /// alignment, memory).
    pub refused: u64,
    /// Bytes read and written by the kernel for clients.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Bytes the service itself copied between its buffers and a client's (0 when zero-copy).
    pub bytes_copied: u64,
    /// Windows of client regions ([`BlkConfig::register_window`]) registered with the ring as
    /// fixed buffers, and unregistered.
    pub regions_registered: u64,
    /// See `regions_registered`.
    pub regions_unregistered: u64,
    /// Bytes of client memory those windows registered (pinned), in all.
    pub bytes_registered: u64,
    /// Registrations refused for good: by the kernel (its locked-memory limit, say), or for
    /// want of room in the ring's table (not a table busy for now). After one, the client's
    /// requests that would register more are refused at once (`NoMemory`) until some memory
    /// is unregistered, so that a client cannot make the service pin and unpin a window at
    /// every request.
    pub registrations_refused: u64,
    /// Clients that left with operations in the kernel.
    pub departed_with_io: u64,
    /// Cancellations issued for departed clients' operations.
    pub cancels: u64,
    /// Completions reaped for clients already gone (waited for before their memory went).
    pub completed_after_departure: u64,
    /// Departed clients whose operations all completed and whose memory was released.
    pub retired: u64,
    /// Requests of departed clients answered without reaching the kernel (they were waiting
    /// for room in the ring).
    pub answered_unsent: u64,
    /// Operations answered with an error instead of reaching the kernel: the ring refused them
    /// for good (a buffer it cannot use as one fixed buffer, say), or, in copy mode, a write's
    /// bytes could not be copied in.
    pub unsendable: u64,
    /// Departed clients' regions whose unregistration the ring refused at first, and which
    /// were tried again after later completions.
    pub unregister_retries: u64,
    /// The most operations one client had in the service at once.
    pub peak_client_in_flight: u32,
    /// Turns a client with operations waiting was passed over because it had its share of the
    /// ring in the kernel (see [`BlkConfig::depth`]).
    pub share_waits: u64,
    /// Slots given to a client that already had its share of the ring in the kernel, because
    /// no other client under its share was waiting (the share binds only under contention).
    pub beyond_share: u64,
    /// Turns a client's next operation waited because the client had
    /// [`BlkConfig::max_client_bytes_in_ring`] bytes in the kernel.
    pub bytes_waits: u64,
    /// The most bytes of reads and writes one client had in the kernel at once.
    pub peak_client_bytes_in_ring: u64,
    /// The most operations one client had in the ring right after the service gave it another
    /// while another client's operations waited for the ring: at most its share, unless every
    /// client waiting had its share (slots are not left idle then).
    pub peak_shared_in_ring: u32,
    /// The ring's counters (enters, doorbells).
    pub uring: UringStats,
}
