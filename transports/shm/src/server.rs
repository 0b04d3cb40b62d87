//! The server: accepts clients, sets up a queue pair for each, and serves them all from one
//! thread that polls while there is work and sleeps in `epoll` when there is none.

use std::collections::VecDeque;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::Pod;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{
    accept4, bind, getsockopt, listen, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    UnixAddr,
};
use subring_planes::data::{BufHandle, PoolError, PoolLayout, Region, RegionError, RegionOptions};
use subring_planes::interrupt::{NotifyMode, NotifyStats, WaitAny, WakeRef, WAIT_ANY_MAX};
use subring_planes::pair::{PairConfig, PairLayout, PairSignals, ServiceSide};
use subring_planes::queue::QueueError;

use crate::futex_sleep::{FutexSleep, MAX_FUTEX_CLIENTS};
use crate::proto::{self, ClientMsg, EntryShape, Hello, Incoming, Refusal, ServerMsg, Welcome};
use crate::{check_capacity, Error};

/// Limits and policies of a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The application protocol served; clients must name the same one.
    pub protocol: String,
    /// Clients served at once; more are refused with [`Refusal::Busy`].
    pub max_clients: u32,
    /// Largest ring a client may ask for (entries).
    pub max_capacity: u32,
    /// Largest payload buffer a client may ask for (bytes).
    pub max_buf_size: u32,
    /// Largest shared memory per client, and per registered region (bytes).
    pub max_region_len: u64,
    /// Regions a client may register beside its own.
    pub max_regions: u32,
    /// How long a new connection may take to say hello.
    pub handshake_timeout: Duration,
    /// The longest the server keeps polling after its last request before it sleeps, while an
    /// adaptive client is connected. The window adapts below this: it grows while requests keep
    /// arriving within it and shrinks when it runs out, so a client that shares the server's CPU
    /// (and so cannot submit while the server polls) soon finds it asleep.
    pub idle_poll: Duration,
    /// Requests taken from one client per turn, so that one busy client cannot starve others.
    pub batch: u32,
    /// [`Server::run`] returns once every client has left, after at least one came: a server
    /// for one session (a parent's private subsystem, a test, a benchmark) that needs no stop
    /// signal and no timed turns to notice it is done.
    pub exit_when_empty: bool,
    /// How the server sleeps when no client has work.
    pub sleep: ServerSleep,
}

/// How a server sleeps when no client has work ([`ServerConfig::sleep`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerSleep {
    /// In `epoll`, on the listener, the control sockets and one kick eventfd per client: the
    /// clients' doorbell is an eventfd write.
    #[default]
    Epoll,
    /// In `futex_waitv` on the clients' kick words (at most 127 clients): the clients' doorbell
    /// is a futex wake, and no eventfd or epoll stands between a kick and the server. A control
    /// thread sleeps in `epoll` on the listener and the control sockets and wakes the server
    /// when they need it. Needs Linux 5.16. The control thread starts with the server and does
    /// not survive `fork`: make the server in the process that runs it.
    Futex,
}

impl ServerConfig {
    /// Defaults for `protocol`: 64 clients, rings up to 64K entries, buffers up to 1 MiB,
    /// 1 GiB per region, 8 extra regions, 5 s handshakes, 50 µs adaptive polling.
    pub fn new(protocol: &str) -> Self {
        ServerConfig {
            protocol: protocol.to_string(),
            max_clients: 64,
            max_capacity: 1 << 16,
            max_buf_size: 1 << 20,
            max_region_len: 1 << 30,
            max_regions: 8,
            handshake_timeout: Duration::from_secs(5),
            idle_poll: Duration::from_micros(50),
            batch: 64,
            exit_when_empty: false,
            sleep: ServerSleep::Epoll,
        }
    }
}

/// Who a connection belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The server's number for the connection.
    pub id: u64,
    /// The client's process id (`SO_PEERCRED`), if the kernel gave one.
    pub pid: Option<u32>,
    /// The connection's notify mode.
    pub mode: NotifyMode,
}

/// Serves one client's requests. Implemented for closures `FnMut(&mut Ctx<'_, C>, S)`.
pub trait Handler<S, C> {
    /// Handles `request`: complete it now with [`Ctx::complete`], or keep what is needed and
    /// complete it on a later request.
    fn request(&mut self, ctx: &mut Ctx<'_, C>, request: S);
}

impl<S, C, F: FnMut(&mut Ctx<'_, C>, S)> Handler<S, C> for F {
    fn request(&mut self, ctx: &mut Ctx<'_, C>, request: S) {
        self(ctx, request)
    }
}

/// A handle from a client that does not name its memory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandleError {
    /// It does not name a buffer of the client's pool.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// It falls outside the registered region it names.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// It names a region the client never registered.
    #[error("buffer handle names region {0}, which this client has not registered")]
    UnknownRegion(u32),
}

/// A client's memory as the server sees it: handles are checked against it before any access.
struct Memory {
    region: Arc<Region>,
    pool: PoolLayout,
    extra: Vec<Arc<Region>>,
}

impl Memory {
    /// Where `handle`'s bytes are, after checking it: its region and start.
    fn locate(&self, handle: BufHandle) -> Result<(&Region, usize), HandleError> {
        if handle.region == self.pool.region {
            self.pool.check(handle)?;
            return Ok((&self.region, handle.offset as usize));
        }
        let region = self
            .extra
            .iter()
            .find(|r| r.id() == handle.region)
            .ok_or(HandleError::UnknownRegion(handle.region))?;
        region.check_handle(handle)?;
        Ok((region, handle.offset as usize))
    }
}

trait Sink<C> {
    fn complete(&mut self, completion: C);
}

/// What a handler sees of its client: its memory and its completion queue.
pub struct Ctx<'a, C> {
    info: &'a ClientInfo,
    memory: &'a Memory,
    sink: &'a mut dyn Sink<C>,
}

impl<C> fmt::Debug for Ctx<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx").field("client", self.info).finish()
    }
}

impl<C> Ctx<'_, C> {
    /// The client.
    pub fn client(&self) -> &ClientInfo {
        self.info
    }

    /// Posts a completion. Never fails: if the completion ring is full it waits in the
    /// server's memory (and the server takes no more requests from this client until it has
    /// been delivered), so nothing is lost.
    pub fn complete(&mut self, completion: C) {
        self.sink.complete(completion)
    }

    /// The bytes `handle` names, in place (zero-copy), after checking that they are one of the
    /// client's buffers or inside a region it registered.
    ///
    /// The bounds are this process's to check and are never exceeded. The contents are the
    /// client's: a client that breaks the protocol (writes a buffer while it is lent to the
    /// server) can change them while you read, as with any memory shared with another process.
    /// Treat them as untrusted input; [`read`](Self::read) takes a snapshot instead.
    pub fn payload(&self, handle: BufHandle) -> Result<&[u8], HandleError> {
        let (region, offset) = self.memory.locate(handle)?;
        // SAFETY: `locate` checked `offset + len` against the region, a sealed memfd mapping
        // (it cannot shrink under us) kept alive by the connection for longer than `&self`. The
        // bytes are plain `u8`s, valid whatever their value; see the doc above for a peer that
        // writes them meanwhile.
        Ok(unsafe { std::slice::from_raw_parts(region.as_ptr().add(offset), handle.len as usize) })
    }

    /// The bytes `handle` names, in place and writable: how the server answers into a buffer
    /// the client lent it. Checked like [`payload`](Self::payload).
    pub fn payload_mut(&mut self, handle: BufHandle) -> Result<&mut [u8], HandleError> {
        let (region, offset) = self.memory.locate(handle)?;
        // SAFETY: bounds as in `payload`; `&mut self` keeps this the only slice the context
        // hands out while it lives.
        Ok(unsafe {
            std::slice::from_raw_parts_mut(region.as_ptr().add(offset), handle.len as usize)
        })
    }

    /// Copies the bytes `handle` names into `dst` (as many as fit) and returns how many.
    pub fn read(&self, handle: BufHandle, dst: &mut [u8]) -> Result<usize, HandleError> {
        let (region, _) = self.memory.locate(handle)?;
        Ok(region.read_into(handle, dst)?)
    }

    /// Copies `src` into the buffer `handle` names (as much as fits) and returns how many bytes.
    pub fn write(&mut self, handle: BufHandle, src: &[u8]) -> Result<usize, HandleError> {
        let n = src.len().min(handle.len as usize);
        self.payload_mut(handle)?[..n].copy_from_slice(&src[..n]);
        Ok(n)
    }
}

struct Outbox<'a, S, C> {
    service: &'a mut ServiceSide<S, C>,
    pending: &'a mut VecDeque<C>,
    staged: u32,
}

impl<S: Pod, C: Pod> Sink<C> for Outbox<'_, S, C> {
    fn complete(&mut self, completion: C) {
        if !self.pending.is_empty() {
            self.pending.push_back(completion);
            return;
        }
        match self.service.complete(completion) {
            Ok(()) => self.staged += 1,
            // Full, or a corrupt index that the next turn reports: keep it either way.
            Err(r) => self.pending.push_back(r.entry),
        }
    }
}

/// A connected, set-up client.
struct Active<S, C, H> {
    service: ServiceSide<S, C>,
    handler: H,
    info: ClientInfo,
    memory: Memory,
    pending: VecDeque<C>,
    /// The completion ring was full (or completions are pending) at the last turn.
    blocked: bool,
    /// The word a futex-sleeping server sleeps on for this client (kick mode futex).
    kick_word: Option<WakeRef>,
}

enum Outcome {
    /// `taken` requests handed to the handler and `staged` completions published.
    Served { taken: u32, staged: u32 },
    /// The client closed its side and left nothing to serve.
    Finished,
}

impl<S: Pod, C: Pod, H: Handler<S, C>> Active<S, C, H> {
    fn serve(&mut self, scratch: &mut Vec<S>, batch: u32) -> Result<Outcome, QueueError> {
        let mut delivered = 0u32;
        while let Some(c) = self.pending.pop_front() {
            match self.service.complete(c) {
                Ok(()) => delivered += 1,
                Err(r) => {
                    self.pending.push_front(r.entry);
                    match r.error {
                        QueueError::Full => break,
                        e => return Err(e),
                    }
                }
            }
        }
        let mut taken = 0;
        let mut room = 0;
        if self.pending.is_empty() {
            // The app's completion head is re-read only when the cached one leaves too little
            // room: its line moves every time the app reaps, and reading it on every turn would
            // put a cache-line transfer on every round trip.
            let ready = self.service.requests_available_up_to(batch)?.min(batch);
            room = self.service.completion_space_for(ready.max(1))?;
            if room > 0 && ready > 0 {
                let chunk = self.service.requests(room.min(ready))?;
                scratch.clear();
                scratch.extend(chunk.iter());
                chunk.release_all();
                taken = scratch.len() as u32;
            }
        }
        let mut staged = delivered;
        if taken > 0 {
            let mut outbox = Outbox {
                service: &mut self.service,
                pending: &mut self.pending,
                staged: 0,
            };
            let mut ctx = Ctx {
                info: &self.info,
                memory: &self.memory,
                sink: &mut outbox,
            };
            for request in scratch.drain(..) {
                self.handler.request(&mut ctx, request);
            }
            staged += outbox.staged;
        }
        if staged > 0 {
            self.service.flush()?;
        }
        self.blocked = !self.pending.is_empty() || (room == 0 && taken == 0);
        if taken == 0 && staged == 0 && self.service.app_closed() {
            // Closed: everything it published before closing has been taken (the Acquire in
            // `app_closed` makes it visible) once the ring reads empty after seeing the flag.
            if !self.service.requests_ready()? {
                return Ok(Outcome::Finished);
            }
        }
        Ok(Outcome::Served { taken, staged })
    }
}

enum State<S, C, H> {
    Handshake { deadline: Instant },
    Active(Box<Active<S, C, H>>),
}

struct Conn<S, C, H> {
    id: u64,
    socket: OwnedFd,
    state: State<S, C, H>,
}

/// Counters of a server's life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted (including refused ones).
    pub accepted: u64,
    /// Connections set up.
    pub welcomed: u64,
    /// Connections refused at handshake.
    pub refused: u64,
    /// Connections released (closed, died, or evicted).
    pub released: u64,
    /// Connections evicted for a protocol violation (corrupt ring index, garbage message).
    pub evicted: u64,
    /// Requests handled.
    pub requests: u64,
    /// Times the server slept in `epoll_wait`.
    pub sleeps: u64,
    /// Clients connected now.
    pub clients: u64,
    /// Completion notifications ("calls") to clients, over every connection so far: `sent`
    /// made a system call (an eventfd write), `suppressed` did not (the client was not asleep).
    pub calls: CallStats,
}

/// Completion notifications to clients (see [`ServerStats::calls`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Notifications that made a wake-up system call.
    pub sent: u64,
    /// Notifications skipped because the client was not asleep.
    pub suppressed: u64,
}

impl CallStats {
    fn add(&mut self, (_, call): (NotifyStats, NotifyStats)) {
        self.sent += call.sent;
        self.suppressed += call.suppressed;
    }
}

/// The adaptive polling window (see [`ServerConfig::idle_poll`]).
#[derive(Debug)]
struct Window {
    now_ns: u64,
    max_ns: u64,
    sleeps_since_probe: u32,
}

const WINDOW_MIN_NS: u64 = 2_000;
const WINDOW_PROBE_EVERY: u32 = 32;

impl Window {
    fn new(max: Duration) -> Self {
        let max_ns = max.as_nanos().min(u64::MAX as u128) as u64;
        Window {
            now_ns: max_ns,
            max_ns,
            sleeps_since_probe: 0,
        }
    }

    /// The window for this idle period.
    fn current(&mut self) -> u64 {
        if self.now_ns == 0 && self.max_ns > 0 {
            self.sleeps_since_probe += 1;
            if self.sleeps_since_probe >= WINDOW_PROBE_EVERY {
                self.sleeps_since_probe = 0;
                return WINDOW_MIN_NS.min(self.max_ns);
            }
        }
        self.now_ns
    }

    /// Work arrived while polling: poll longer next time.
    fn hit(&mut self) {
        self.now_ns =
            (self.now_ns.saturating_mul(2)).clamp(WINDOW_MIN_NS.min(self.max_ns), self.max_ns);
    }

    /// The window ran out: poll less next time.
    fn miss(&mut self) {
        self.now_ns /= 2;
        if self.now_ns < WINDOW_MIN_NS {
            self.now_ns = 0;
        }
    }
}

const LISTENER: u64 = u64::MAX;
const STOP: u64 = u64::MAX - 1;
/// Polling turns between two non-blocking looks at the sockets (an `epoll_wait` system call:
/// about a microsecond, during which a polling client's request waits).
const EVENT_CHECK_EVERY: u64 = 2048;
/// Polling turns between two clock reads.
const CLOCK_EVERY: u32 = 16;

/// A server of `S` requests and `C` completions, one [`Handler`] `H` per client.
pub struct Server<S: Pod, C: Pod, H> {
    config: ServerConfig,
    factory: Box<dyn FnMut(&ClientInfo) -> H + Send>,
    listener: Option<(OwnedFd, PathBuf)>,
    epoll: Epoll,
    stop: Arc<EventFd>,
    stopping: bool,
    conns: Vec<Conn<S, C, H>>,
    next_id: u64,
    stats: ServerStats,
    window: Window,
    spin_clients: usize,
    adaptive_clients: usize,
    scratch: Vec<S>,
    events: Vec<EpollEvent>,
    turns: u64,
    idle_since: Option<Instant>,
    idle_turns: u64,
    /// The futex sleep's control thread, with [`ServerSleep::Futex`].
    futex: Option<FutexSleep>,
    /// A client with a kick word came or went since the futex sleep's words were set.
    kick_words_changed: bool,
}

impl<S: Pod, C: Pod, H> fmt::Debug for Server<S, C, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("protocol", &self.config.protocol)
            .field("path", &self.listener.as_ref().map(|l| &l.1))
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn os(op: &'static str) -> impl FnOnce(Errno) -> Error {
    move |e| Error::Io {
        op,
        source: e.into(),
    }
}

fn listen_on(path: &Path) -> Result<OwnedFd, Error> {
    let shown = path.display().to_string();
    let path_error = |source: std::io::Error| Error::Path {
        what: "cannot listen on",
        path: shown.clone(),
        source,
    };
    let addr = UnixAddr::new(path).map_err(|e| path_error(e.into()))?;
    let open = || {
        socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(os("socket(AF_UNIX, SOCK_SEQPACKET)"))
    };
    let sock = open()?;
    match bind(sock.as_raw_fd(), &addr) {
        Ok(()) => {}
        Err(Errno::EADDRINUSE) => {
            // A socket file is there. If a server answers it is in use; if nobody does, it is
            // left over from a server that died, and is replaced.
            let probe = open()?;
            match nix::sys::socket::connect(probe.as_raw_fd(), &addr) {
                Err(Errno::ECONNREFUSED) => {
                    std::fs::remove_file(path).map_err(path_error)?;
                    bind(sock.as_raw_fd(), &addr).map_err(|e| path_error(e.into()))?;
                }
                _ => {
                    return Err(path_error(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "another server is listening there",
                    )))
                }
            }
        }
        Err(e) => return Err(path_error(e.into())),
    }
    listen(&sock, Backlog::new(128).unwrap_or(Backlog::MAXCONN))
        .map_err(|e| path_error(e.into()))?;
    Ok(sock)
}

fn millis(timeout: Option<Duration>) -> EpollTimeout {
    match timeout {
        None => EpollTimeout::NONE,
        Some(t) => {
            let ms = t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128);
            EpollTimeout::try_from(ms as u64).unwrap_or(EpollTimeout::MAX)
        }
    }
}

impl<S: Pod + Send, C: Pod + Send, H: Handler<S, C> + Send + 'static> Server<S, C, H> {
    /// A server with no listening socket: clients arrive through
    /// [`add_connection`](Self::add_connection). `factory` makes each client's handler.
    pub fn new(
        config: ServerConfig,
        factory: impl FnMut(&ClientInfo) -> H + Send + 'static,
    ) -> Result<Self, Error> {
        if config.max_clients == 0 || config.batch == 0 {
            return Err(Error::Config(
                "max_clients and batch must be at least 1".into(),
            ));
        }
        check_capacity("max_capacity", config.max_capacity, 1 << 30).map_err(Error::Config)?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(os("epoll_create1"))?;
        let futex = match config.sleep {
            ServerSleep::Epoll => None,
            ServerSleep::Futex => {
                if config.max_clients > MAX_FUTEX_CLIENTS {
                    return Err(Error::Config(format!(
                        "a futex-sleeping server watches at most {MAX_FUTEX_CLIENTS} clients \
                         (futex_waitv takes {WAIT_ANY_MAX} words, one is its own); \
                         max_clients is {}",
                        config.max_clients
                    )));
                }
                if !WaitAny::supported() {
                    return Err(Error::Config(
                        "futex sleep needs futex_waitv, which this kernel lacks (Linux 5.16+)"
                            .into(),
                    ));
                }
                let dup = epoll.0.try_clone().map_err(|source| Error::Io {
                    op: "dup(epoll) for the control thread",
                    source,
                })?;
                Some(FutexSleep::start(dup).map_err(|source| Error::Io {
                    op: "starting the server's control thread",
                    source,
                })?)
            }
        };
        let stop = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(os("eventfd"))?;
        epoll
            .add(&stop, EpollEvent::new(EpollFlags::EPOLLIN, STOP))
            .map_err(os("epoll_ctl(ADD stop eventfd)"))?;
        Ok(Server {
            window: Window::new(config.idle_poll),
            config,
            factory: Box::new(factory),
            listener: None,
            epoll,
            stop: Arc::new(stop),
            stopping: false,
            conns: Vec::new(),
            next_id: 1,
            stats: ServerStats::default(),
            spin_clients: 0,
            adaptive_clients: 0,
            scratch: Vec::new(),
            events: vec![EpollEvent::empty(); 64],
            turns: 0,
            idle_since: None,
            idle_turns: 0,
            futex,
            kick_words_changed: false,
        })
    }

    /// A server listening at `path` (a socket file left by a dead server is replaced; one a
    /// live server answers on is an error).
    pub fn bind(
        path: impl AsRef<Path>,
        config: ServerConfig,
        factory: impl FnMut(&ClientInfo) -> H + Send + 'static,
    ) -> Result<Self, Error> {
        let mut server = Self::new(config, factory)?;
        let path = path.as_ref();
        let sock = listen_on(path)?;
        server
            .epoll
            .add(&sock, EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))
            .map_err(os("epoll_ctl(ADD listener)"))?;
        server.listener = Some((sock, path.to_path_buf()));
        Ok(server)
    }

    /// Adds an already-connected `SOCK_SEQPACKET` socket (one end of
    /// [`socket_pair`](crate::socket_pair)): the handshake proceeds as for an accepted one.
    pub fn add_connection(&mut self, socket: OwnedFd) -> Result<(), Error> {
        nix::fcntl::fcntl(
            &socket,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(os("fcntl(O_NONBLOCK) on a client socket"))?;
        self.admit(socket)
    }

    /// Counters so far.
    pub fn stats(&self) -> ServerStats {
        let mut s = self.stats;
        s.clients = self
            .conns
            .iter()
            .filter(|c| matches!(c.state, State::Active(_)))
            .count() as u64;
        for c in &self.conns {
            if let State::Active(a) = &c.state {
                s.calls.add(a.service.stats());
            }
        }
        s
    }

    /// Something that stops the server from another thread.
    pub fn stopper(&self) -> Stopper {
        Stopper(self.stop.clone())
    }

    /// Serves until stopped ([`Stopper::stop`]), or, with [`ServerConfig::exit_when_empty`],
    /// until every client has left; then says goodbye to any client still connected.
    pub fn run(&mut self) -> Result<(), Error> {
        while !self.stopping {
            self.turn()?;
            if self.config.exit_when_empty && self.is_empty_after_use() {
                break;
            }
        }
        self.release_all("the server is stopping");
        Ok(())
    }

    /// Some client came (welcomed or refused) and none is connected now, not even one still
    /// saying hello.
    fn is_empty_after_use(&self) -> bool {
        self.stats.welcomed + self.stats.refused > 0 && self.conns.is_empty()
    }

    /// Serves for about `limit`, then returns (for tests and single-threaded programs that do
    /// other work between turns).
    pub fn run_for(&mut self, limit: Duration) -> Result<(), Error> {
        let end = Instant::now() + limit;
        let mut turns = 0u32;
        while !self.stopping {
            // A clock read costs about as much as a polling turn (tens of ns in a VM): look at
            // it every few turns, and after every turn that slept.
            if turns % CLOCK_EVERY == 0 && Instant::now() >= end {
                break;
            }
            turns = turns.wrapping_add(1);
            if self.turn_bounded(Some(end))? {
                turns = 0;
            }
        }
        Ok(())
    }

    /// Runs the server on a thread of its own (a dedicated polling thread, like SQPOLL).
    pub fn spawn(mut self) -> Result<ServerThread<S, C, H>, Error> {
        let stopper = self.stopper();
        let thread = std::thread::Builder::new()
            .name("subring-shm-server".into())
            .spawn(move || {
                self.run()?;
                Ok(self)
            })
            .map_err(|e| Error::Io {
                op: "spawning the server thread",
                source: e,
            })?;
        Ok(ServerThread {
            stopper,
            thread: Some(thread),
        })
    }

    #[inline(always)]
    fn turn(&mut self) -> Result<(), Error> {
        self.turn_bounded(None).map(drop)
    }

    /// One turn: serve what is ready; when nothing was, keep polling (spin clients, or within
    /// the adaptive window) or arm every ring and sleep in epoll. Returns whether it slept.
    #[inline(always)]
    fn turn_bounded(&mut self, until: Option<Instant>) -> Result<bool, Error> {
        self.turns += 1;
        let work = self.serve_all();
        if work > 0 {
            if self.idle_since.take().is_some() {
                self.window.hit();
            }
            self.idle_turns = 0;
            if self.turns % EVENT_CHECK_EVERY == 0 {
                self.poll_events(Some(Duration::ZERO))?;
            }
            self.take_control_events()?;
            return Ok(false);
        }
        self.idle_turns += 1;
        if self.keep_polling() {
            std::hint::spin_loop();
            if self.idle_turns % EVENT_CHECK_EVERY == 0 {
                self.poll_events(Some(Duration::ZERO))?;
            }
            self.take_control_events()?;
            return Ok(false);
        }
        if self.idle_since.take().is_some() {
            self.window.miss();
        }
        // The last client may have left during this turn: a server that exits when empty must
        // not go to sleep with nothing left to wake it.
        if self.config.exit_when_empty && self.is_empty_after_use() {
            return Ok(false);
        }
        if self.arm_all() {
            self.disarm_all();
            return Ok(false);
        }
        let mut timeout = self.sleep_limit();
        if let Some(until) = until {
            let left = until.saturating_duration_since(Instant::now());
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        self.stats.sleeps += 1;
        let slept = self.sleep(timeout);
        self.disarm_all();
        self.idle_turns = 0;
        slept.map(|()| true)
    }

    /// Sleeps (every ring armed) in epoll, or with [`ServerSleep::Futex`] on the clients' kick
    /// words, until a kick, an event or `timeout`.
    #[inline(always)]
    fn sleep(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        let Some(futex) = &mut self.futex else {
            return self.poll_events(timeout);
        };
        let io = |source| Error::Io {
            op: "sleeping on the clients' kick words",
            source,
        };
        if std::mem::take(&mut self.kick_words_changed) {
            let words = self
                .conns
                .iter()
                .filter_map(|c| match &c.state {
                    State::Active(a) => a.kick_word.clone(),
                    State::Handshake { .. } => None,
                })
                .collect();
            futex.set_words(words).map_err(io)?;
        }
        if futex.sleep(timeout).map_err(io)? {
            self.take_control_events()
        } else {
            self.expire_handshakes();
            Ok(())
        }
    }

    /// With [`ServerSleep::Futex`]: if the control thread says the epoll set has events, takes
    /// them (a non-blocking `epoll_wait`) and lets it poll again.
    fn take_control_events(&mut self) -> Result<(), Error> {
        if !self.futex.as_ref().is_some_and(FutexSleep::pending) {
            return Ok(());
        }
        self.poll_events(Some(Duration::ZERO))?;
        if let Some(futex) = &self.futex {
            futex.take().map_err(|source| Error::Io {
                op: "the server's control thread",
                source,
            })?;
        }
        Ok(())
    }

    fn keep_polling(&mut self) -> bool {
        if self.spin_clients > 0 {
            return true;
        }
        if self.adaptive_clients == 0 {
            return false;
        }
        // The window is time, but the clock is read only every few idle turns.
        if self.idle_since.is_some() && self.idle_turns % CLOCK_EVERY as u64 != 0 {
            return true;
        }
        let now = Instant::now();
        let since = *self.idle_since.get_or_insert(now);
        let window = if self.idle_turns == 1 {
            self.window.current()
        } else {
            self.window
                .now_ns
                .max(WINDOW_MIN_NS.min(self.window.max_ns))
        };
        (now.duration_since(since).as_nanos() as u64) < window
    }

    /// How long the server may sleep: until the nearest handshake deadline, and briefly while
    /// a client's completion ring is full (the client does not ring when it makes room).
    fn sleep_limit(&self) -> Option<Duration> {
        // The clock is read only if a handshake is pending: a served client's round trip
        // should not pay for a clock read (tens of ns in a VM) on its way to the sleep.
        let mut now = None;
        let mut limit: Option<Duration> = None;
        let mut tighten = |d: Duration| limit = Some(limit.map_or(d, |l| l.min(d)));
        for c in &self.conns {
            match &c.state {
                State::Handshake { deadline } => tighten(
                    deadline.saturating_duration_since(*now.get_or_insert_with(Instant::now)),
                ),
                State::Active(a) if a.blocked => tighten(Duration::from_millis(1)),
                State::Active(_) => {}
            }
        }
        limit
    }

    fn serve_all(&mut self) -> u32 {
        let mut work = 0;
        let mut requests = 0u64;
        let mut i = 0;
        while i < self.conns.len() {
            let outcome = match &mut self.conns[i].state {
                State::Active(a) => a.serve(&mut self.scratch, self.config.batch),
                State::Handshake { .. } => Ok(Outcome::Served {
                    taken: 0,
                    staged: 0,
                }),
            };
            match outcome {
                Ok(Outcome::Served { taken, staged }) => {
                    work += taken + staged;
                    requests += u64::from(taken);
                    i += 1;
                }
                Ok(Outcome::Finished) => self.release(i, None),
                Err(e) => self.release(i, Some(format!("queue pair failed: {e}"))),
            }
        }
        self.stats.requests += requests;
        work
    }

    /// Announces sleep on every ring that can wake us; `true` if one already has work.
    fn arm_all(&mut self) -> bool {
        let mut ready = false;
        let mut i = 0;
        while i < self.conns.len() {
            if let State::Active(a) = &mut self.conns[i].state {
                match a.service.arm() {
                    Ok(true) => ready = true,
                    Ok(false) => {}
                    Err(e) => {
                        self.release(i, Some(format!("queue pair failed: {e}")));
                        continue;
                    }
                }
            }
            i += 1;
        }
        ready
    }

    fn disarm_all(&mut self) {
        for c in &mut self.conns {
            if let State::Active(a) = &mut c.state {
                // The kick eventfds are registered edge-triggered: no drain (a `read` per
                // wake-up) is needed for the next kick to report them again.
                a.service.disarm_edge_triggered();
            }
        }
    }

    fn poll_events(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        let n = match self.epoll.wait(&mut self.events, millis(timeout)) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(os("epoll_wait")(e)),
        };
        for k in 0..n {
            let ev = self.events[k];
            match ev.data() {
                LISTENER => self.accept_all()?,
                STOP => {
                    let _ = self.stop.read();
                    self.stopping = true;
                }
                token if token % 2 == 0 => self.on_socket(token / 2, ev.events()),
                _ => {} // a kick eventfd: `disarm_all` drains it, the next turn serves.
            }
        }
        self.expire_handshakes();
        Ok(())
    }

    fn accept_all(&mut self) -> Result<(), Error> {
        let Some(listener) = self.listener.as_ref().map(|l| l.0.as_raw_fd()) else {
            return Ok(());
        };
        loop {
            match accept4(listener, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK) {
                Ok(fd) => {
                    // SAFETY: accept4 returned a new descriptor that nothing else owns.
                    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                    // A client we cannot register is dropped (it sees the hang-up); the
                    // server goes on.
                    let _ = self.admit(sock);
                }
                Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
                // Out of descriptors or memory: try again at the next event.
                Err(Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM) => {
                    return Ok(())
                }
                Err(e) => return Err(os("accept4")(e)),
            }
        }
    }

    fn admit(&mut self, socket: OwnedFd) -> Result<(), Error> {
        self.stats.accepted += 1;
        let id = self.next_id;
        self.next_id += 1;
        self.epoll
            .add(
                &socket,
                EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP, id * 2),
            )
            .map_err(os("epoll_ctl(ADD client socket)"))?;
        self.conns.push(Conn {
            id,
            socket,
            state: State::Handshake {
                deadline: Instant::now() + self.config.handshake_timeout,
            },
        });
        Ok(())
    }

    fn expire_handshakes(&mut self) {
        // As in `sleep_limit`: no clock read unless a handshake is pending (this runs after
        // every wake-up, before the request that woke the server is served).
        let mut now = None;
        let mut i = 0;
        while i < self.conns.len() {
            if matches!(self.conns[i].state, State::Handshake { deadline }
                if deadline <= *now.get_or_insert_with(Instant::now))
            {
                self.release(i, Some("no hello within the handshake timeout".into()));
            } else {
                i += 1;
            }
        }
    }

    fn on_socket(&mut self, id: u64, events: EpollFlags) {
        let Some(i) = self.conns.iter().position(|c| c.id == id) else {
            return;
        };
        if events.contains(EpollFlags::EPOLLIN) {
            // Read every message that is there; a hang-up after them is seen below.
            loop {
                let msg = proto::recv::<ClientMsg>(self.conns[i].socket.as_fd());
                match msg {
                    Ok(None) => break,
                    Ok(Some(m)) => {
                        if !self.on_message(i, m) {
                            return;
                        }
                    }
                    Err(Error::Closed { .. }) => {
                        self.release(i, None);
                        return;
                    }
                    Err(Error::Version { peer, .. }) => {
                        let _ = proto::send_version_refusal(self.conns[i].socket.as_fd());
                        self.release(i, Some(format!("client speaks control version {peer}")));
                        return;
                    }
                    Err(e) => {
                        let why = e.to_string();
                        let _ = proto::send(
                            self.conns[i].socket.as_fd(),
                            &ServerMsg::Refused(Refusal::Malformed(why.clone())),
                            &[],
                        );
                        self.release(i, Some(why));
                        return;
                    }
                }
            }
        }
        if events.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLERR) {
            // The client closed its socket or died: serve what it published, then release.
            if let State::Active(a) = &mut self.conns[i].state {
                let _ = a.serve(&mut self.scratch, u32::MAX);
            }
            self.release(i, None);
        }
    }

    /// Handles one control message from connection `i`; `false` if the connection is gone.
    fn on_message(&mut self, i: usize, msg: Incoming<ClientMsg>) -> bool {
        let (msg, fds) = match msg {
            Incoming::VersionRefused(v) => {
                self.release(
                    i,
                    Some(format!("client refused our version, it speaks {v}")),
                );
                return false;
            }
            Incoming::Message(m, fds) => (m, fds),
        };
        let handshake = matches!(self.conns[i].state, State::Handshake { .. });
        match (msg, handshake) {
            (ClientMsg::Hello(hello), true) => match self.welcome(i, &hello, fds) {
                Ok(()) => true,
                Err(refusal) => {
                    let _ = proto::send(
                        self.conns[i].socket.as_fd(),
                        &ServerMsg::Refused(refusal.clone()),
                        &[],
                    );
                    self.release(i, Some(refusal.to_string()));
                    false
                }
            },
            (ClientMsg::RegisterRegion { id, len }, false) => {
                let answer = match self.register(i, id, len, fds) {
                    Ok(()) => ServerMsg::Registered { id },
                    Err(r) => ServerMsg::Refused(r),
                };
                let _ = proto::send(self.conns[i].socket.as_fd(), &answer, &[]);
                true
            }
            (ClientMsg::Shutdown, false) => {
                if let State::Active(a) = &mut self.conns[i].state {
                    let _ = a.serve(&mut self.scratch, u32::MAX);
                }
                self.release(i, None);
                false
            }
            (other, _) => {
                let why = format!(
                    "unexpected {other:?} {}",
                    if handshake {
                        "before hello"
                    } else {
                        "after hello"
                    }
                );
                let _ = proto::send(
                    self.conns[i].socket.as_fd(),
                    &ServerMsg::Refused(Refusal::Malformed(why.clone())),
                    &[],
                );
                self.release(i, Some(why));
                false
            }
        }
    }

    fn check_hello(&self, hello: &Hello, fds: &[OwnedFd]) -> Result<(), Refusal> {
        let cfg = &self.config;
        if !fds.is_empty() {
            return Err(Refusal::Malformed(format!(
                "hello carried {} file descriptors, expected none",
                fds.len()
            )));
        }
        if hello.protocol != cfg.protocol {
            return Err(Refusal::Protocol {
                server: cfg.protocol.clone(),
                client: hello.protocol.clone(),
            });
        }
        for (which, server, client) in [
            ("request", EntryShape::of::<S>(), hello.request),
            ("completion", EntryShape::of::<C>(), hello.completion),
        ] {
            if server != client {
                return Err(Refusal::EntryShape {
                    which: which.into(),
                    server,
                    client,
                });
            }
        }
        let limit = |what: &str, asked: u64, min: u64, max: u64| {
            if asked < min || asked > max {
                Err(Refusal::Limit {
                    what: what.into(),
                    asked,
                    min,
                    max,
                })
            } else {
                Ok(())
            }
        };
        for (what, cap) in [
            ("submission ring capacity", hello.sq_capacity),
            ("completion ring capacity", hello.cq_capacity),
        ] {
            limit(what, cap.into(), 2, cfg.max_capacity.into())?;
            if !cap.is_power_of_two() {
                return Err(Refusal::Malformed(format!(
                    "{what} {cap} is not a power of two"
                )));
            }
        }
        limit(
            "buffer size",
            hello.buf_size.into(),
            64,
            cfg.max_buf_size.into(),
        )?;
        if hello.buf_size % 64 != 0 {
            return Err(Refusal::Malformed(format!(
                "buffer size {} is not a multiple of 64",
                hello.buf_size
            )));
        }
        limit("buffer count", hello.buf_count.into(), 1, 1 << 20)?;
        let active = self
            .conns
            .iter()
            .filter(|c| matches!(c.state, State::Active(_)))
            .count();
        if active >= cfg.max_clients as usize {
            return Err(Refusal::Busy {
                max_clients: cfg.max_clients,
            });
        }
        Ok(())
    }

    fn welcome(&mut self, i: usize, hello: &Hello, fds: Vec<OwnedFd>) -> Result<(), Refusal> {
        self.check_hello(hello, &fds)?;
        let mode: NotifyMode = hello.mode.into();
        let config = PairConfig {
            sq_capacity: hello.sq_capacity,
            cq_capacity: hello.cq_capacity,
            // The server waits for a spin client by polling it; for everyone else it sleeps in
            // epoll, where their doorbell is the kick eventfd, or on their kick words.
            kick_mode: match (mode, self.config.sleep) {
                (NotifyMode::Spin, _) => NotifyMode::Spin,
                (_, ServerSleep::Epoll) => NotifyMode::EventFd,
                (_, ServerSleep::Futex) => NotifyMode::Futex,
            },
            call_mode: mode,
        };
        let internal = |e: &dyn fmt::Display| Refusal::Internal(e.to_string());
        let pair = PairLayout::of::<S, C>(&config).map_err(|e| internal(&e))?;
        let pool_offset = pair.size.next_multiple_of(4096) as u64;
        let span = u64::from(hello.buf_size) * u64::from(hello.buf_count);
        let region_len = (pool_offset + span).next_multiple_of(4096);
        if region_len > self.config.max_region_len {
            return Err(Refusal::Limit {
                what: "shared memory (rings and buffers) in bytes".into(),
                asked: region_len,
                min: 1,
                max: self.config.max_region_len,
            });
        }
        let id = self.conns[i].id;
        let region = Region::memfd(
            &format!("subring-shm-{id}"),
            region_len as usize,
            RegionOptions::new().id(0),
        )
        .map_err(|e| internal(&e))?;
        let region = Arc::new(region);
        let signals = PairSignals::for_config(&config).map_err(|e| internal(&e))?;
        let service = ServiceSide::<S, C>::create(region.clone(), 0, &config, signals.clone())
            .map_err(|e| internal(&e))?;
        let welcome = Welcome {
            client_id: id,
            server_pid: std::process::id(),
            region_len,
            pair_offset: 0,
            pool_offset,
            buf_size: hello.buf_size,
            buf_count: hello.buf_count,
            sq_capacity: hello.sq_capacity,
            cq_capacity: hello.cq_capacity,
            kick_mode: config.kick_mode.into(),
            call_mode: config.call_mode.into(),
            kick_fd: signals.kick.is_some(),
            call_fd: signals.call.is_some(),
        };
        let memfd = region
            .fd()
            .ok_or_else(|| Refusal::Internal("memfd region has no fd".into()))?;
        let mut pass: Vec<BorrowedFd<'_>> = vec![memfd];
        pass.extend(signals.kick.as_ref().map(|s| s.as_fd()));
        pass.extend(signals.call.as_ref().map(|s| s.as_fd()));
        let socket = &self.conns[i].socket;
        proto::send(socket.as_fd(), &ServerMsg::Welcome(welcome), &pass)
            .map_err(|e| internal(&e))?;
        if let Some(kick) = &signals.kick {
            self.epoll
                .add(
                    kick,
                    EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, id * 2 + 1),
                )
                .map_err(|e| internal(&e))?;
        }
        let pid = getsockopt(socket, sockopt::PeerCredentials)
            .ok()
            .and_then(|c| u32::try_from(c.pid()).ok())
            .filter(|p| *p != 0);
        let info = ClientInfo { id, pid, mode };
        let handler = (self.factory)(&info);
        let kick_word = (config.kick_mode == NotifyMode::Futex).then(|| service.kick_word());
        self.kick_words_changed |= kick_word.is_some();
        match mode {
            NotifyMode::Spin => self.spin_clients += 1,
            NotifyMode::Adaptive => self.adaptive_clients += 1,
            _ => {}
        }
        self.conns[i].state = State::Active(Box::new(Active {
            service,
            handler,
            info,
            memory: Memory {
                pool: PoolLayout {
                    region: 0,
                    base: pool_offset,
                    buf_size: hello.buf_size,
                    count: hello.buf_count,
                },
                region,
                extra: Vec::new(),
            },
            pending: VecDeque::new(),
            blocked: false,
            kick_word,
        }));
        self.stats.welcomed += 1;
        Ok(())
    }

    fn register(&mut self, i: usize, id: u32, len: u64, fds: Vec<OwnedFd>) -> Result<(), Refusal> {
        let max_len = self.config.max_region_len;
        let max_regions = self.config.max_regions;
        let State::Active(a) = &mut self.conns[i].state else {
            return Err(Refusal::Malformed(
                "region registration before hello".into(),
            ));
        };
        if fds.len() != 1 {
            return Err(Refusal::Malformed(format!(
                "region registration carried {} descriptors, expected 1",
                fds.len()
            )));
        }
        if id == 0 || a.memory.extra.iter().any(|r| r.id() == id) {
            return Err(Refusal::Malformed(format!(
                "region id {id} is reserved or already registered"
            )));
        }
        if a.memory.extra.len() >= max_regions as usize {
            return Err(Refusal::Limit {
                what: "registered regions".into(),
                asked: a.memory.extra.len() as u64 + 1,
                min: 0,
                max: max_regions.into(),
            });
        }
        if len == 0 || len > max_len {
            return Err(Refusal::Limit {
                what: "registered region length".into(),
                asked: len,
                min: 1,
                max: max_len,
            });
        }
        let fd = fds.into_iter().next().expect("count checked above");
        let region = Region::from_fd(fd, Some(len as usize), RegionOptions::new().id(id))
            .map_err(|e| Refusal::Malformed(format!("region {id}: {e}")))?;
        a.memory.extra.push(Arc::new(region));
        Ok(())
    }

    /// Releases connection `i`: says why if it is an eviction, unregisters its fds, drops its
    /// queue pair (which tells the client the service side closed) and its memory.
    fn release(&mut self, i: usize, why: Option<String>) {
        let conn = self.conns.swap_remove(i);
        if let Some(reason) = why {
            if matches!(conn.state, State::Active(_)) {
                self.stats.evicted += 1;
                let _ = proto::send(conn.socket.as_fd(), &ServerMsg::Goodbye { reason }, &[]);
            } else {
                self.stats.refused += 1;
            }
        }
        let _ = self.epoll.delete(&conn.socket);
        if let State::Active(a) = &conn.state {
            if let Some(kick) = a.service.kick_fd() {
                let _ = self.epoll.delete(kick);
            }
            match a.info.mode {
                NotifyMode::Spin => self.spin_clients -= 1,
                NotifyMode::Adaptive => self.adaptive_clients -= 1,
                _ => {}
            }
            self.stats.calls.add(a.service.stats());
            self.stats.released += 1;
            self.kick_words_changed |= a.kick_word.is_some();
        }
    }

    fn release_all(&mut self, reason: &str) {
        while !self.conns.is_empty() {
            let last = self.conns.len() - 1;
            if let State::Active(a) = &mut self.conns[last].state {
                let _ = a.serve(&mut self.scratch, u32::MAX);
            }
            let _ = proto::send(
                self.conns[last].socket.as_fd(),
                &ServerMsg::Goodbye {
                    reason: reason.into(),
                },
                &[],
            );
            self.release(last, None);
        }
    }
}

impl<S: Pod, C: Pod, H> Drop for Server<S, C, H> {
    fn drop(&mut self) {
        if let Some((_, path)) = &self.listener {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Stops a running server from any thread.
#[derive(Debug, Clone)]
pub struct Stopper(Arc<EventFd>);

impl Stopper {
    /// Asks the server to stop: it finishes its turn, says goodbye to its clients and returns.
    pub fn stop(&self) -> Result<(), Error> {
        self.0.write(1).map_err(os("write to the stop eventfd"))?;
        Ok(())
    }
}

type ServerJoin<S, C, H> = std::thread::JoinHandle<Result<Server<S, C, H>, Error>>;

/// A server running on its own thread ([`Server::spawn`]).
#[derive(Debug)]
pub struct ServerThread<S: Pod, C: Pod, H> {
    stopper: Stopper,
    thread: Option<ServerJoin<S, C, H>>,
}

impl<S: Pod, C: Pod, H> ServerThread<S, C, H> {
    /// Something that stops the server.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Stops the server and waits for its thread; returns the server (for its stats).
    pub fn stop(mut self) -> Result<Server<S, C, H>, Error> {
        self.stopper.stop()?;
        self.join()
    }

    fn join(&mut self) -> Result<Server<S, C, H>, Error> {
        let thread = self.thread.take().expect("joined once");
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl<S: Pod, C: Pod, H> Drop for ServerThread<S, C, H> {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.stopper.stop();
            let _ = thread.join();
        }
    }
}
