//! The block service: every client's requests multiplexed onto one io_uring, each completed
//! when the kernel completes it, with the kernel reading and writing the client's own buffers.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::Arc;

use subring_planes::data::{Region, RegionOptions};
use subring_planes::queue::{Completer, Submitter};
use subring_shm::{BufHandle, ClientInfo, ClientMemory, Completions, Ctx, Pending, Service};
use subring_uring::{
    Completion, FixedBuf, OnFull, Op, OpError, RegionKey, Submission, Target, Uring, UringStats,
    WaitMode,
};

use crate::device::Device;
use crate::proto::{BlkCompletion, BlkOp, BlkRequest, Status, FLAG_DIRECT};

/// How the block service is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlkConfig {
    /// The file or block device served (it must exist; its size is the device's).
    pub path: PathBuf,
    /// Try `O_DIRECT` (default): reads and writes go between the disk and the client's memory
    /// by DMA. Where the file system has no direct I/O (tmpfs), the service falls back to
    /// buffered I/O and says so ([`BlkService::direct`]).
    pub direct: bool,
    /// Operations in the kernel at once, over all clients (default 256). Each client is also
    /// bounded by the server's [`max_deferred`](subring_shm::ServerConfig::max_deferred).
    pub depth: u32,
    /// Largest read or write (default 1 MiB).
    pub max_io: u32,
    /// `true` (default): the kernel reads into and writes from the client's buffers, registered
    /// as fixed buffers of the service's ring. `false`: the service copies through buffers of
    /// its own (the design this service exists to avoid; kept to measure it against).
    pub zero_copy: bool,
    /// Submission batching (default 16): while the kernel has at least this many operations
    /// in flight, new ones are handed over once this many have gathered (their completions
    /// wake the service meanwhile); below it, at once.
    pub submit_batch: u32,
}

impl BlkConfig {
    /// Defaults for the device at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        BlkConfig {
            path: path.into(),
            direct: true,
            depth: 256,
            max_io: 1 << 20,
            zero_copy: true,
            submit_batch: 16,
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
    /// A configuration value is out of range.
    #[error("invalid block service configuration: {0}")]
    Config(String),
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
    /// Requests refused with a [`Status`] (bad op, handle, range, length, alignment).
    pub refused: u64,
    /// Bytes read and written by the kernel for clients.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Bytes the service itself copied between its buffers and a client's (0 when zero-copy).
    pub bytes_copied: u64,
    /// Client regions registered with the ring as fixed buffers, and unregistered.
    pub regions_registered: u64,
    /// See `regions_registered`.
    pub regions_unregistered: u64,
    /// Clients that left with operations in the kernel.
    pub departed_with_io: u64,
    /// Cancellations issued for departed clients' operations.
    pub cancels: u64,
    /// Completions reaped for clients already gone (waited for before their memory went).
    pub completed_after_departure: u64,
    /// Departed clients whose operations all completed and whose memory was released.
    pub retired: u64,
    /// The most operations one client had in the service at once.
    pub peak_client_in_flight: u32,
    /// The ring's counters (enters, doorbells).
    pub uring: UringStats,
}

/// Cancel operations carry this bit in their token; their completions are not operations.
const CANCEL: u64 = 1 << 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Flush,
    Discard,
}

/// Where an operation's bytes are.
#[derive(Debug, Clone, Copy)]
enum Bytes {
    None,
    /// The client's memory, registered under a key.
    Client(RegionKey, BufHandle),
    /// A staging slot of the service's own (copy mode); the client's bytes are `handle`.
    Staging {
        slot: u32,
        handle: BufHandle,
    },
}

/// An operation the service holds for a client.
#[derive(Debug)]
struct Io {
    client: u64,
    tag: u64,
    kind: Kind,
    offset: u64,
    len: u32,
    bytes: Bytes,
    write_seq: Option<u64>,
    pending: Pending,
    /// Pushed to the ring (and so cancellable).
    pushed: bool,
}

/// A flush waiting for the writes before it.
#[derive(Debug)]
struct WaitingFlush {
    /// Writes with a lower sequence number must complete first.
    barrier: u64,
    tag: u64,
    pending: Pending,
}

#[derive(Debug)]
struct ClientState {
    memory: ClientMemory,
    /// Region id → its registration with the ring.
    keys: Vec<(u32, RegionKey)>,
    in_flight: u32,
    writes: BTreeSet<u64>,
    next_write: u64,
    flushes: VecDeque<WaitingFlush>,
    gone: bool,
}

/// The service's own buffers, for copy mode.
#[derive(Debug)]
struct Staging {
    region: Arc<Region>,
    key: RegionKey,
    slot_size: u32,
    free: Vec<u32>,
}

/// A block device served to shm clients ([`Service`] of [`BlkRequest`]s): see the crate docs.
#[derive(Debug)]
pub struct BlkService {
    ring: Uring,
    device: Device,
    config: BlkConfig,
    clients: HashMap<u64, ClientState>,
    ops: Vec<Option<Io>>,
    free_ops: Vec<u32>,
    /// Operations accepted and not yet in the ring (depth reached, or no staging slot).
    backlog: VecDeque<u32>,
    /// Answers for departed clients to hand back at the next poll (they need `Completions`).
    orphans: Vec<(Pending, BlkCompletion)>,
    staging: Option<Staging>,
    completions: Vec<Completion>,
    stats: BlkStats,
}

fn errno_of(e: &io::Error) -> i32 {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<OpError>())
        .and_then(|op| op.source.raw_os_error())
        .or(e.raw_os_error())
        .unwrap_or(libc::EIO)
}

fn refused(tag: u64, status: Status) -> BlkCompletion {
    BlkCompletion {
        tag,
        value: 0,
        status: status as i32,
        flags: 0,
    }
}

impl BlkService {
    /// Opens the device and sets up the ring.
    pub fn open(config: BlkConfig) -> Result<Self, BlkError> {
        if config.depth == 0 || config.depth > 32768 {
            return Err(BlkError::Config(format!(
                "depth {} must be between 1 and 32768",
                config.depth
            )));
        }
        if config.max_io == 0 || config.submit_batch == 0 {
            return Err(BlkError::Config(
                "max_io and submit_batch must be at least 1".into(),
            ));
        }
        let device = Device::open(&config.path, config.direct).map_err(BlkError::Device)?;
        let mut ring = Uring::builder()
            .entries(config.depth)
            .cq_entries(config.depth * 4)
            .wait_mode(WaitMode::EventFd)
            .on_full(OnFull::Submit)
            .build()
            .map_err(BlkError::Uring)?;
        ring.register_files(&[device.file.as_raw_fd()])
            .map_err(BlkError::Uring)?;
        let staging = if config.zero_copy {
            None
        } else {
            let slot_size = config.max_io.next_multiple_of(4096);
            let len = slot_size as usize * config.depth as usize;
            let region = Arc::new(
                Region::anonymous(len, RegionOptions::new().id(u32::MAX))
                    .map_err(|e| BlkError::Uring(io::Error::other(e)))?,
            );
            let key = ring
                .register_region(region.clone())
                .map_err(BlkError::Uring)?;
            Some(Staging {
                region,
                key,
                slot_size,
                free: (0..config.depth).rev().collect(),
            })
        };
        Ok(BlkService {
            ring,
            device,
            config,
            clients: HashMap::new(),
            ops: Vec::new(),
            free_ops: Vec::new(),
            backlog: VecDeque::new(),
            orphans: Vec::new(),
            staging,
            completions: Vec::new(),
            stats: BlkStats::default(),
        })
    }

    /// The descriptor the server should watch ([`Server::watch`](subring_shm::Server::watch)):
    /// the ring's completion eventfd.
    pub fn completion_fd(&self) -> BorrowedFd<'_> {
        self.ring
            .completion_fd()
            .expect("the ring is built in eventfd wait mode")
    }

    /// The device's size in bytes.
    pub fn size(&self) -> u64 {
        self.device.size
    }

    /// Whether the device is served with `O_DIRECT`.
    pub fn direct(&self) -> bool {
        self.device.direct.is_some()
    }

    /// Whether the kernel works in the clients' buffers (no copy in the service).
    pub fn zero_copy(&self) -> bool {
        self.staging.is_none()
    }

    /// Counters.
    pub fn stats(&self) -> BlkStats {
        BlkStats {
            uring: self.ring.stats(),
            ..self.stats
        }
    }

    /// Client regions registered with the ring now.
    pub fn registered_regions(&self) -> usize {
        self.ring.registered_regions() - usize::from(self.staging.is_some())
    }

    /// Operations in the kernel or waiting to go there.
    pub fn in_flight(&self) -> usize {
        self.ops.iter().filter(|o| o.is_some()).count()
    }

    /// Clients the service still holds state for (connected, or departed with operations
    /// not yet completed).
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    fn new_op(&mut self, io: Io) -> u32 {
        let client = self.clients.get_mut(&io.client).expect("a known client");
        client.in_flight += 1;
        self.stats.peak_client_in_flight = self.stats.peak_client_in_flight.max(client.in_flight);
        let token = match self.free_ops.pop() {
            Some(t) => {
                self.ops[t as usize] = Some(io);
                t
            }
            None => {
                self.ops.push(Some(io));
                self.ops.len() as u32 - 1
            }
        };
        self.backlog.push_back(token);
        token
    }

    /// Checks a read or write and finds where its bytes go; `Err` is the refusal.
    fn plan_transfer(
        &mut self,
        id: u64,
        memory: &ClientMemory,
        req: &BlkRequest,
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
        if self.staging.is_some() {
            return Ok(Bytes::Staging { slot: 0, handle });
        }
        let client = self.clients.get_mut(&id).expect("a known client");
        let key = match client.keys.iter().find(|(r, _)| *r == region.id()) {
            Some((_, key)) => *key,
            None => {
                // First use of this region: register it (once per region per client).
                let key = self
                    .ring
                    .register_region(region.clone())
                    .map_err(|_| Status::BadHandle)?;
                self.stats.regions_registered += 1;
                client.keys.push((region.id(), key));
                key
            }
        };
        Ok(Bytes::Client(key, handle))
    }

    /// Moves backlogged operations into the ring while it has room.
    fn pump(&mut self) {
        while let Some(&token) = self.backlog.front() {
            if self.ring.in_flight() >= self.config.depth as usize {
                return;
            }
            let Some(io) = self.ops[token as usize].as_mut() else {
                // Answered while waiting (its client left).
                self.backlog.pop_front();
                continue;
            };
            let fd = Target::Fixed(0);
            let op = match (io.kind, io.bytes) {
                (Kind::Flush, _) => Op::Fsync { fd, datasync: true },
                (Kind::Discard, _) => Op::Fallocate {
                    fd,
                    offset: io.offset,
                    len: u64::from(io.len),
                    mode: libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                },
                (kind, Bytes::Client(key, handle)) => {
                    let buf = FixedBuf::In(key, handle);
                    match kind {
                        Kind::Read => Op::ReadFixed {
                            fd,
                            buf,
                            offset: io.offset,
                        },
                        _ => Op::WriteFixed {
                            fd,
                            buf,
                            offset: io.offset,
                        },
                    }
                }
                (kind, Bytes::Staging { handle, .. }) => {
                    let staging = self.staging.as_mut().expect("copy mode");
                    let Some(slot) = staging.free.pop() else {
                        return;
                    };
                    let at = BufHandle {
                        offset: u64::from(slot) * u64::from(staging.slot_size),
                        len: io.len,
                        region: staging.region.id(),
                    };
                    io.bytes = Bytes::Staging { slot, handle };
                    if kind == Kind::Write {
                        let memory = &self.clients[&io.client].memory;
                        // SAFETY: the staging region is this process's own anonymous memory
                        // (never shared); `slot` was free, so neither the kernel nor another
                        // operation uses its bytes.
                        let dst = unsafe { staging_bytes(&staging.region, at) };
                        let n = memory.read(handle, dst).unwrap_or(0);
                        self.stats.bytes_copied += n as u64;
                    }
                    let buf = FixedBuf::In(staging.key, at);
                    match kind {
                        Kind::Read => Op::ReadFixed {
                            fd,
                            buf,
                            offset: io.offset,
                        },
                        _ => Op::WriteFixed {
                            fd,
                            buf,
                            offset: io.offset,
                        },
                    }
                }
                (_, Bytes::None) => unreachable!("reads and writes have bytes"),
            };
            match self.ring.push(Submission::new(u64::from(token), op)) {
                Ok(()) => {
                    io.pushed = true;
                    self.backlog.pop_front();
                }
                // The ring is full even after submitting: try again next turn.
                Err(_) => return,
            }
        }
    }

    /// Submits what is queued once enough has gathered (`submit_batch`), or at once while the
    /// kernel has fewer than that in flight (the device must not starve for the sake of a
    /// batch). Between those, new requests wait for the next completion, which is bound to
    /// come (the kernel has work) and wakes the server: one enter then carries many requests.
    fn submit(&mut self) {
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

    /// Turns the ring's completions into the clients' answers.
    fn reap(&mut self, done: &mut Completions<'_, BlkCompletion>) -> u32 {
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
        n
    }

    fn finish(&mut self, c: Completion, done: &mut Completions<'_, BlkCompletion>) {
        let token = c.token as usize;
        let Some(io) = self.ops.get_mut(token).and_then(Option::take) else {
            return;
        };
        self.free_ops.push(token as u32);
        let (value, status) = match &c.result {
            Ok(n) => (u64::from(*n), 0),
            Err(e) => (0, -errno_of(e)),
        };
        let client = self.clients.get_mut(&io.client).expect("a known client");
        client.in_flight -= 1;
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
        if let Bytes::Staging { slot, handle } = io.bytes {
            let staging = self.staging.as_mut().expect("copy mode");
            if io.kind == Kind::Read && status == 0 && !client.gone {
                let at = BufHandle {
                    offset: u64::from(slot) * u64::from(staging.slot_size),
                    len: value as u32,
                    region: staging.region.id(),
                };
                // SAFETY: the staging region is this process's own memory; the kernel has
                // completed the read into this slot, and the slot is not free yet.
                let src = unsafe { staging_bytes(&staging.region, at) };
                let n = client.memory.write(handle, src).unwrap_or(0);
                self.stats.bytes_copied += n as u64;
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
    fn release_flushes(&mut self, id: u64) {
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
    fn retire_if_done(&mut self, id: u64) {
        let Some(client) = self.clients.get(&id) else {
            return;
        };
        if !client.gone || client.in_flight > 0 || !client.flushes.is_empty() {
            return;
        }
        let client = self.clients.remove(&id).expect("looked at it");
        for (_, key) in client.keys {
            if self.ring.unregister_region(key).is_ok() {
                self.stats.regions_unregistered += 1;
            }
        }
        self.stats.retired += 1;
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
unsafe fn staging_bytes(region: &Region, at: BufHandle) -> &mut [u8] {
    debug_assert!(region.check_handle(at).is_ok());
    // SAFETY: the slot lies inside the region (slots are laid out within its length), and the
    // caller guarantees exclusive use.
    unsafe {
        std::slice::from_raw_parts_mut(region.as_ptr().add(at.offset as usize), at.len as usize)
    }
}

impl Service<BlkRequest, BlkCompletion> for BlkService {
    type Client = u64;

    fn connect(&mut self, client: &ClientInfo) -> u64 {
        client.id
    }

    fn request(&mut self, id: &mut u64, ctx: &mut Ctx<'_, BlkCompletion>, req: BlkRequest) {
        let id = *id;
        self.clients.entry(id).or_insert_with(|| ClientState {
            memory: ctx.memory().clone(),
            keys: Vec::new(),
            in_flight: 0,
            writes: BTreeSet::new(),
            next_write: 0,
            flushes: VecDeque::new(),
            gone: false,
        });
        let refuse = |this: &mut Self, ctx: &mut Ctx<'_, BlkCompletion>, status: Status| {
            this.stats.refused += 1;
            ctx.complete(refused(req.tag, status));
        };
        let Some(op) = BlkOp::from_wire(req.op) else {
            return refuse(self, ctx, Status::BadOp);
        };
        let (kind, bytes) = match op {
            BlkOp::Info => {
                return ctx.complete(BlkCompletion {
                    tag: req.tag,
                    value: self.device.size,
                    status: 0,
                    flags: if self.direct() { FLAG_DIRECT } else { 0 },
                });
            }
            BlkOp::Read | BlkOp::Write => {
                let memory = ctx.memory().clone();
                match self.plan_transfer(id, &memory, &req) {
                    Ok(bytes) => (
                        if op == BlkOp::Read {
                            Kind::Read
                        } else {
                            Kind::Write
                        },
                        bytes,
                    ),
                    Err(status) => return refuse(self, ctx, status),
                }
            }
            BlkOp::Discard => {
                match req.offset.checked_add(u64::from(req.len)) {
                    Some(end) if end <= self.device.size && req.len > 0 => {}
                    _ => return refuse(self, ctx, Status::BadRange),
                }
                (Kind::Discard, Bytes::None)
            }
            BlkOp::Flush => {
                let pending = ctx.defer();
                let client = self.clients.get_mut(&id).expect("inserted above");
                if !client.writes.is_empty() {
                    self.stats.flushes_waited += 1;
                    client.flushes.push_back(WaitingFlush {
                        barrier: client.next_write,
                        tag: req.tag,
                        pending,
                    });
                    return;
                }
                self.new_op(Io {
                    client: id,
                    tag: req.tag,
                    kind: Kind::Flush,
                    offset: 0,
                    len: 0,
                    bytes: Bytes::None,
                    write_seq: None,
                    pending,
                    pushed: false,
                });
                return;
            }
        };
        let client = self.clients.get_mut(&id).expect("inserted above");
        let write_seq = (kind == Kind::Write).then(|| {
            let seq = client.next_write;
            client.next_write += 1;
            client.writes.insert(seq);
            seq
        });
        let pending = ctx.defer();
        self.new_op(Io {
            client: id,
            tag: req.tag,
            kind,
            offset: req.offset,
            len: req.len,
            bytes,
            write_seq,
            pending,
            pushed: false,
        });
    }

    fn poll(&mut self, done: &mut Completions<'_, BlkCompletion>) -> u32 {
        let mut work = 0;
        for (pending, answer) in self.orphans.drain(..) {
            done.complete(pending, answer);
            work += 1;
        }
        work += self.reap(done);
        self.pump();
        let before = self.ring.stats().enters;
        self.submit();
        if self.ring.stats().enters != before {
            // Buffered reads of cached data complete during the submit itself.
            work += self.reap(done);
            self.pump();
        }
        work
    }

    fn before_sleep(&mut self) -> bool {
        self.pump();
        self.submit();
        !self.orphans.is_empty() || self.ring.completions_ready() > 0
    }

    fn disconnect(&mut self, id: u64, _info: &ClientInfo) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        client.gone = true;
        let flushes: Vec<WaitingFlush> = client.flushes.drain(..).collect();
        for f in flushes {
            self.orphans
                .push((f.pending, refused(f.tag, Status::BadOp)));
        }
        let mut cancelled = false;
        for token in 0..self.ops.len() {
            let Some(io) = self.ops[token].as_ref() else {
                continue;
            };
            if io.client != id {
                continue;
            }
            if io.pushed {
                // In the kernel (or about to be): cancel, and wait for its completion before
                // the client's memory is unregistered.
                if matches!(io.kind, Kind::Read | Kind::Write) {
                    let cancel = Op::Cancel {
                        token: token as u64,
                    };
                    if self
                        .ring
                        .push(Submission::new(CANCEL | token as u64, cancel))
                        .is_ok()
                    {
                        self.stats.cancels += 1;
                    }
                }
                cancelled = true;
            } else {
                // Never reached the kernel: answer it now.
                let io = self.ops[token].take().expect("looked at it");
                self.free_ops.push(token as u32);
                if let Some(c) = self.clients.get_mut(&id) {
                    c.in_flight -= 1;
                }
                self.orphans
                    .push((io.pending, refused(io.tag, Status::BadOp)));
            }
        }
        if cancelled {
            self.stats.departed_with_io += 1;
            let _ = self.ring.submit();
        }
        self.retire_if_done(id);
    }
}

impl AsFd for BlkService {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.completion_fd()
    }
}
