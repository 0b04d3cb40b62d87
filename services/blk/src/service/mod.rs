//! The block service: every client's requests multiplexed onto one io_uring, each completed
//! when the kernel completes it, with the kernel reading and writing the client's own buffers.
//!
//! - [`config`]: [`BlkConfig`], [`BlkError`], [`BlkStats`].
//! - `ring`: requests into operations, the backlog, submission batching, completions.
//! - here: the service's state and its [`Service`] calls (connect, request, poll, sleep,
//!   disconnect).

mod config;
mod ring;
mod table;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use subring_planes::data::{Region, RegionOptions};
use subring_planes::queue::{Completer, QueueError, Submitter};
use subring_shm::{
    BufHandle, ClientInfo, ClientMemory, Completions, ConfigError, Ctx, Pending, Service,
};
use subring_uring::{
    Completion, FixedBuf, OnFull, Op, OpError, RegionKey, RegisterError, Submission, Target, Uring,
    WaitMode,
};

use crate::device::Device;
use crate::proto::{BlkCompletion, BlkOp, BlkRequest, Status, FLAG_DIRECT, FLAG_READ_ONLY};

pub use config::{BlkConfig, BlkError, BlkStats};
use ring::refused;
use table::OpTable;

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
    /// A staging slot of the service's own (copy mode; `None` until the operation is first
    /// offered to the ring); the client's bytes are `handle`.
    Staging {
        slot: Option<u32>,
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
    /// (Region id, window index) → the window's registration with the ring, and the bytes it
    /// counts against the limits (those it alone covers).
    windows: HashMap<(u32, u32), (RegionKey, u64)>,
    /// Bytes of its memory registered (pinned).
    registered: u64,
    /// The service's `regions_unregistered` when the kernel last refused to register one of
    /// this client's windows: until it moves (memory was freed), the client's requests that
    /// need a new window are refused without asking the kernel again.
    refused_at: Option<u64>,
    /// Operations held (waiting for the ring, or in it).
    in_flight: u32,
    /// Of those, operations in the ring (pushed and not yet completed).
    in_ring: u32,
    /// Bytes of reads and writes of those.
    bytes_in_ring: u64,
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

impl Staging {
    /// The first `len` bytes of staging slot `slot`.
    fn slot(&self, slot: u32, len: u32) -> BufHandle {
        BufHandle {
            offset: u64::from(slot) * u64::from(self.slot_size),
            len,
            region: self.region.id(),
        }
    }
}

/// A block device served to shm clients ([`Service`] of [`BlkRequest`]s): see the crate docs.
#[derive(Debug)]
pub struct BlkService {
    ring: Uring,
    device: Device,
    config: BlkConfig,
    clients: HashMap<u64, ClientState>,
    /// Operations by token, with the backlog of those accepted and not yet in the ring (depth
    /// reached, or no staging slot).
    ops: OpTable<Io>,
    /// Answers to hand back at the next poll (they need `Completions`): for departed clients,
    /// and for operations the ring refused for good.
    orphans: Vec<(Pending, BlkCompletion)>,
    staging: Option<Staging>,
    completions: Vec<Completion>,
    /// Departed clients' windows whose unregistration failed (with their lengths): retried
    /// after completions.
    retiring: Vec<(RegionKey, u64)>,
    /// Bytes of clients' memory registered with the ring now.
    registered: u64,
    stats: BlkStats,
}

impl BlkService {
    /// Opens the device and sets up the ring.
    pub fn open(config: BlkConfig) -> Result<Self, BlkError> {
        if config.depth == 0 || config.depth > 32768 {
            return Err(ConfigError::OutOfRange {
                field: "depth",
                value: config.depth.into(),
                min: 1,
                max: 32768,
            }
            .into());
        }
        let most_window = (1u64 << 30).saturating_sub(config.max_io.into());
        if !(4096..=most_window).contains(&config.register_window) {
            return Err(ConfigError::OutOfRange {
                field: "register_window",
                value: config.register_window,
                min: 4096,
                max: most_window,
            }
            .into());
        }
        for (field, value) in [
            ("max_io", config.max_io as u64),
            ("max_client_bytes_in_ring", config.max_client_bytes_in_ring),
            ("submit_batch", config.submit_batch as u64),
            ("max_registered", config.max_registered),
            ("max_registered_total", config.max_registered_total),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { field }.into());
            }
        }
        let device = Device::open(&config.path, config.direct, !config.read_only)
            .map_err(BlkError::Device)?;
        let mut ring = Uring::builder()
            .entries(config.depth)
            .cq_entries(config.depth * 4)
            .wait_mode(WaitMode::EventFd)
            .on_full(OnFull::Submit)
            .build()
            .map_err(BlkError::Uring)?;
        ring.register_files(&[&device.file])
            .map_err(BlkError::Uring)?;
        let staging = if config.zero_copy {
            None
        } else {
            let slot_size = config.max_io.next_multiple_of(4096);
            let len = slot_size as usize * config.depth as usize;
            let region = Arc::new(Region::anonymous(len, RegionOptions::new().id(u32::MAX))?);
            let key = ring.register_region(region.clone())?;
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
            ops: OpTable::default(),
            orphans: Vec::new(),
            staging,
            completions: Vec::new(),
            retiring: Vec::new(),
            registered: 0,
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

    /// Whether the device is served read-only ([`BlkConfig::read_only`]).
    pub fn read_only(&self) -> bool {
        self.config.read_only
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

    /// Windows of client regions registered with the ring now ([`BlkConfig::register_window`]).
    pub fn registered_regions(&self) -> usize {
        self.ring.registered_regions() - usize::from(self.staging.is_some())
    }

    /// Bytes of clients' memory registered with the ring (pinned) now.
    pub fn registered_bytes(&self) -> u64 {
        self.registered
    }

    /// Operations in the kernel or waiting to go there.
    pub fn in_flight(&self) -> usize {
        self.ops.len()
    }

    /// Clients the service still holds state for (connected, or departed with operations
    /// not yet completed).
    pub fn clients(&self) -> usize {
        self.clients.len()
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
            windows: HashMap::new(),
            registered: 0,
            refused_at: None,
            in_flight: 0,
            in_ring: 0,
            bytes_in_ring: 0,
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
        if self.config.read_only && matches!(op, BlkOp::Write | BlkOp::Discard) {
            return refuse(self, ctx, Status::ReadOnly);
        }
        let (kind, bytes) = match op {
            BlkOp::Info => {
                return ctx.complete(BlkCompletion {
                    tag: req.tag,
                    value: self.device.size,
                    status: 0,
                    flags: if self.direct() { FLAG_DIRECT } else { 0 }
                        | if self.read_only() { FLAG_READ_ONLY } else { 0 },
                });
            }
            BlkOp::Read | BlkOp::Write => {
                let memory = ctx.memory();
                let mut charge = 0;
                let planned = self.plan_transfer(id, memory, &req, &mut charge);
                ctx.charge(charge);
                match planned {
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
        !self.orphans.is_empty() || self.ring.completions_ready() > 0 || self.stalled()
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
        let tokens: Vec<u32> = self.ops.tokens().collect();
        for token in tokens {
            let Some(io) = self.ops.get(token) else {
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
                        token: u64::from(token),
                    };
                    if self
                        .ring
                        .push(Submission::new(CANCEL | u64::from(token), cancel))
                        .is_ok()
                    {
                        self.stats.cancels += 1;
                    }
                }
                cancelled = true;
            } else {
                // Never reached the kernel: answer it now. (Its backlog entry goes stale: the
                // slot may serve another client's operation at once, offered once.)
                let io = self.ops.take(token).expect("looked at it");
                self.release_staging(&io);
                if let Some(c) = self.clients.get_mut(&id) {
                    c.in_flight -= 1;
                }
                self.stats.answered_unsent += 1;
                self.orphans
                    .push((io.pending, refused(io.tag, Status::BadOp)));
            }
        }
        self.ops.forget(id);
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
