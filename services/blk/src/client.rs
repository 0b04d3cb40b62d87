//! The client side: a shm client of the block protocol whose buffers are owned values, lent
//! with each read or write and handed back with its completion.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use subring_shm::queue::{Completer, QueueError, Submitter};
use subring_shm::{Buf, BufHandle, Client, ClientOptions, NotifyMode, PoolError};

use crate::proto::{
    BlkCompletion, BlkOp, BlkRequest, Status, BLK_PROTOCOL, FLAG_DIRECT, FLAG_READ_ONLY,
};

/// How a [`BlkClient`] connects.
#[derive(Debug, Clone)]
pub struct BlkOptions {
    /// The shm client options (protocol [`BLK_PROTOCOL`]).
    pub shm: ClientOptions,
}

impl Default for BlkOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl BlkOptions {
    /// 64 buffers of 64 KiB (page multiples, as direct I/O needs), rings of 64 entries, the
    /// shm client's default notify mode.
    pub fn new() -> Self {
        BlkOptions {
            shm: ClientOptions::new(BLK_PROTOCOL)
                .buffers(64 << 10, 64)
                .capacity(64),
        }
    }

    /// A client that does not trust its server ([`ClientOptions::untrusted_server`]): it takes
    /// only futex wake-ups, which a server cannot make block, and rings a futex doorbell.
    pub fn untrusted_server(mut self) -> Self {
        self.shm = self.shm.untrusted_server();
        self
    }

    /// `count` buffers of `size` bytes (keep `size` a multiple of 4096 for direct I/O).
    pub fn buffers(mut self, size: u32, count: u32) -> Self {
        self.shm = self.shm.buffers(size, count);
        self
    }

    /// Ring capacity (requests in flight at most).
    pub fn capacity(mut self, capacity: u32) -> Self {
        self.shm = self.shm.capacity(capacity);
        self
    }

    /// How this client waits for completions.
    pub fn mode(mut self, mode: NotifyMode) -> Self {
        self.shm = self.shm.mode(mode);
        self
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlkResultError {
    /// The service refused it.
    #[error("the block service refused the request: {0:?}")]
    Refused(Status),
    /// The kernel failed it (an errno).
    #[error("the kernel failed the request: {}", std::io::Error::from_raw_os_error(*.0))]
    Os(i32),
    /// The service answered with a status this client does not know.
    #[error("unknown status {0} from the block service")]
    Unknown(i32),
    /// The service said it moved more bytes than the request asked for (it breaks the
    /// protocol): `value` against the request's `len`.
    #[error("the block service answered {value} bytes for a request of {len}")]
    TooLong {
        /// What the service answered.
        value: u64,
        /// The request's length.
        len: u32,
    },
}

/// A finished request.
#[derive(Debug)]
pub struct BlkDone {
    /// The tag it was sent with.
    pub tag: u64,
    /// Bytes transferred (the device size for info), or why it failed.
    pub result: Result<u64, BlkResultError>,
    /// The buffer it lent, back (a read's length set to the bytes read). The server says when
    /// it is done with a buffer, and the client cannot check it: a server that breaks the
    /// protocol and answers a read before its kernel has filled the buffer can still change
    /// the bytes. A `Buf`'s safe accessors copy through a volatile view, so that is wrong
    /// data, never undefined behaviour (its `unsafe` slice makes that promise the caller's).
    pub buf: Option<Buf>,
}

/// A request that could not be queued: its buffer back, and why.
#[derive(Debug, thiserror::Error)]
#[error("block request not queued: {error}")]
pub struct Refused {
    /// The buffer the request would have lent.
    pub buf: Option<Buf>,
    /// Why (`Full`: the submission ring or the client's in-flight table is full; reap first).
    #[source]
    pub error: QueueError,
}

/// A read longer than the buffer it was to land in: the `InvalidInput` [`std::io::Error`]
/// inside a [`Refused`] carries it (find it with `get_ref` and `downcast_ref`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a read of {len} bytes into a buffer of {capacity}")]
pub struct ReadTooLong {
    /// The length asked for.
    pub len: usize,
    /// The buffer's capacity.
    pub capacity: usize,
}

/// `?` in a function that returns [`QueueError`]: the reason goes up, the buffer returns to
/// its pool.
impl From<Refused> for QueueError {
    fn from(r: Refused) -> Self {
        r.error
    }
}

/// Why the client failed (the connection, or a server that broke the protocol).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlkClientError {
    /// Connecting or talking to the server failed.
    #[error(transparent)]
    Shm(#[from] subring_shm::Error),
    /// The queue pair failed (the server left, a timeout).
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The server answered a request this client never sent, or answered one twice (every
    /// request's tag on the wire names its slot and that slot's generation, so a repeated
    /// answer never matches a later request in the same slot).
    #[error("the server answered unknown request tag {0:#x}")]
    UnknownTag(u64),
    /// The server failed the info request that opens every connection.
    #[error("the server failed the info request: {0}")]
    Info(#[source] BlkResultError),
    /// A buffer could not be taken back.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

impl From<Refused> for BlkClientError {
    fn from(r: Refused) -> Self {
        BlkClientError::Queue(r.error)
    }
}

#[derive(Debug)]
struct Slot {
    tag: u64,
    op: BlkOp,
    len: u32,
    buf: Option<BufHandle>,
}

/// Requests one client may have unanswered at once: past it, a request is refused (`Full`)
/// until completions are reaped, so that a server that takes requests and never answers
/// cannot make the client's table grow without bound. (A server holds few at once: the ring,
/// and its bound on deferred requests.)
pub const MAX_IN_FLIGHT: usize = 1 << 16;

/// A client of a block service: requests with owned buffers, completions that hand them back.
#[derive(Debug)]
pub struct BlkClient {
    client: Client<BlkRequest, BlkCompletion>,
    slots: Vec<Option<Slot>>,
    /// Each slot's generation: a request's tag on the wire is its slot and the generation the
    /// slot had when the request took it.
    generations: Vec<u32>,
    free: Vec<u32>,
    size: u64,
    direct: bool,
    read_only: bool,
    /// The flags of the last completion (the info answer's).
    last_flags: u32,
}

impl BlkClient {
    /// Connects to the block service at `path` and asks for the device's size.
    pub fn connect(path: impl AsRef<Path>, options: &BlkOptions) -> Result<Self, BlkClientError> {
        Self::start(Client::connect(path, &options.shm)?, options)
    }

    /// Connects over an already-connected socket ([`subring_shm::socket_pair`]).
    pub fn from_socket(socket: OwnedFd, options: &BlkOptions) -> Result<Self, BlkClientError> {
        Self::start(Client::from_socket(socket, &options.shm)?, options)
    }

    fn start(
        client: Client<BlkRequest, BlkCompletion>,
        options: &BlkOptions,
    ) -> Result<Self, BlkClientError> {
        let mut this = BlkClient {
            client,
            slots: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            size: 0,
            direct: false,
            read_only: false,
            last_flags: 0,
        };
        this.push(u64::MAX, BlkOp::Info, 0, 0, None)?;
        this.submit()?;
        let done = this.next(Some(options.shm.control_timeout))?;
        let (size, flags) = match done.result {
            Ok(size) => (size, this.last_flags),
            Err(e) => return Err(BlkClientError::Info(e)),
        };
        this.size = size;
        this.direct = flags & FLAG_DIRECT != 0;
        this.read_only = flags & FLAG_READ_ONLY != 0;
        Ok(this)
    }

    /// The device's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the service reads and writes the device with `O_DIRECT`.
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// Whether the service serves the device read-only (its writes and discards are refused
    /// with [`Status::ReadOnly`]).
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// A free buffer of this client's pool, if any.
    pub fn alloc(&self) -> Option<Buf> {
        self.client.alloc()
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// The underlying shm client (its counters, its fds for an event loop).
    pub fn shm(&mut self) -> &mut Client<BlkRequest, BlkCompletion> {
        &mut self.client
    }

    fn push(
        &mut self,
        tag: u64,
        op: BlkOp,
        offset: u64,
        len: u32,
        buf: Option<Buf>,
    ) -> Result<(), Refused> {
        let Some((slot, wire)) = self.take_slot() else {
            return Err(Refused {
                buf,
                error: QueueError::Full,
            });
        };
        let handle = buf.as_ref().map(Buf::handle).unwrap_or_default();
        let req = BlkRequest {
            tag: wire,
            offset,
            buf: handle,
            len,
            op: op as u32,
        };
        if let Err(r) = self.client.push(req) {
            self.free.push(slot);
            return Err(Refused {
                buf,
                error: r.error,
            });
        }
        // Lent from here on: the server may read or write it until the completion.
        let lent = buf.map(Buf::lend);
        self.slots[slot as usize] = Some(Slot {
            tag,
            op,
            len,
            buf: lent,
        });
        Ok(())
    }

    /// Queues a read of `len` bytes at `offset` into `buf` (at most its capacity).
    pub fn read(&mut self, tag: u64, offset: u64, mut buf: Buf, len: usize) -> Result<(), Refused> {
        let capacity = buf.capacity();
        if len > capacity {
            return Err(Refused {
                buf: Some(buf),
                error: QueueError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    ReadTooLong { len, capacity },
                )),
            });
        }
        buf.set_len(len);
        self.push(tag, BlkOp::Read, offset, len as u32, Some(buf))
    }

    /// Queues a write of `buf`'s bytes at `offset`.
    pub fn write(&mut self, tag: u64, offset: u64, buf: Buf) -> Result<(), Refused> {
        let len = buf.len() as u32;
        self.push(tag, BlkOp::Write, offset, len, Some(buf))
    }

    /// Queues a flush: it completes once every write that completed before it (or was in
    /// flight when it was sent) is durable.
    pub fn flush(&mut self, tag: u64) -> Result<(), Refused> {
        self.push(tag, BlkOp::Flush, 0, 0, None)
    }

    /// Queues a discard of `len` bytes at `offset`.
    pub fn discard(&mut self, tag: u64, offset: u64, len: u32) -> Result<(), Refused> {
        self.push(tag, BlkOp::Discard, offset, len, None)
    }

    /// Sends a raw request (tests of a service's checks; the client tracks it like any other,
    /// and lends no buffer).
    pub fn raw(
        &mut self,
        tag: u64,
        op: u32,
        offset: u64,
        len: u32,
        handle: BufHandle,
    ) -> Result<(), Refused> {
        let Some((slot, wire)) = self.take_slot() else {
            return Err(Refused {
                buf: None,
                error: QueueError::Full,
            });
        };
        let req = BlkRequest {
            tag: wire,
            offset,
            buf: handle,
            len,
            op,
        };
        if let Err(r) = self.client.push(req) {
            self.free.push(slot);
            return Err(Refused {
                buf: None,
                error: r.error,
            });
        }
        self.slots[slot as usize] = Some(Slot {
            tag,
            op: BlkOp::from_wire(op).unwrap_or(BlkOp::Info),
            len,
            buf: None,
        });
        Ok(())
    }

    /// A free slot for a request, and the tag that names it on the wire (the slot and a new
    /// generation of it); `None` with [`MAX_IN_FLIGHT`] requests unanswered.
    fn take_slot(&mut self) -> Option<(u32, u64)> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None if self.slots.len() < MAX_IN_FLIGHT => {
                self.slots.push(None);
                self.generations.push(0);
                self.slots.len() as u32 - 1
            }
            None => return None,
        };
        let generation = &mut self.generations[slot as usize];
        *generation = generation.wrapping_add(1);
        Some((slot, u64::from(*generation) << 32 | u64::from(slot)))
    }

    /// Makes queued requests visible to the service (and rings its doorbell if it sleeps).
    pub fn submit(&mut self) -> Result<usize, QueueError> {
        self.client.submit()
    }

    /// The next completion, if one is ready.
    pub fn try_next(&mut self) -> Result<Option<BlkDone>, BlkClientError> {
        let Some(c) = self.client.reap()? else {
            return Ok(None);
        };
        self.finish(c).map(Some)
    }

    /// The next completion, waiting up to `timeout` (`None`: as long as it takes).
    pub fn next(&mut self, timeout: Option<Duration>) -> Result<BlkDone, BlkClientError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            if let Some(done) = self.try_next()? {
                return Ok(done);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Err(QueueError::Timeout(timeout.unwrap_or_default()).into());
            }
            self.client.wait(left)?;
        }
    }

    fn finish(&mut self, c: BlkCompletion) -> Result<BlkDone, BlkClientError> {
        // The tag is the server's to echo: it must name a request in flight here, in the
        // generation of its slot that the request took.
        let (index, generation) = (c.tag & u64::from(u32::MAX), (c.tag >> 32) as u32);
        let index = usize::try_from(index).map_err(|_| BlkClientError::UnknownTag(c.tag))?;
        if self.generations.get(index) != Some(&generation) {
            return Err(BlkClientError::UnknownTag(c.tag));
        }
        let slot = self.slots[index]
            .take()
            .ok_or(BlkClientError::UnknownTag(c.tag))?;
        self.free.push(index as u32);
        self.last_flags = c.flags;
        let mut buf = match slot.buf {
            Some(h) => Some(self.client.reclaim(h)?),
            None => None,
        };
        let result =
            match c.status {
                // A read, write or discard moves at most what it asked for.
                0 if matches!(slot.op, BlkOp::Read | BlkOp::Write | BlkOp::Discard)
                    && c.value > u64::from(slot.len) =>
                {
                    Err(BlkResultError::TooLong {
                        value: c.value,
                        len: slot.len,
                    })
                }
                0 => Ok(c.value),
                s if s < 0 => Err(s
                    .checked_neg()
                    .map_or(BlkResultError::Unknown(s), BlkResultError::Os)),
                s => Err(Status::from_code(s)
                    .map_or(BlkResultError::Unknown(s), BlkResultError::Refused)),
            };
        if let (Some(b), BlkOp::Read) = (buf.as_mut(), slot.op) {
            // Bounded by the request's length (checked above), itself at most the capacity.
            let n = match result {
                Ok(n) => usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .min(slot.len as usize),
                Err(_) => 0,
            };
            b.set_len(n);
        }
        Ok(BlkDone {
            tag: slot.tag,
            result,
            buf,
        })
    }
}
