//! The server: accepts clients, sets up a queue pair for each, and serves them all from one
//! thread that polls while there is work and sleeps in `epoll` (or on the clients' futex words)
//! when there is none.
//!
//! - [`config`]: limits and policies; what the server knows of a client.
//! - [`service`]: the [`Service`] API (answering now or later, event sources, departures) and
//!   the per-client [`Handler`] shortcut.
//! - [`ctx`]: what a service sees of a client while handling a request, and its memory.
//! - [`conn`]: connections and serving one client's batch.
//! - [`admission`]: the listener, accepting and admitting connections, expiring silent ones,
//!   release. [`handshake`]: hello and welcome, registration.
//! - [`window`]: the adaptive polling window. [`stats`]: counters. [`thread`]: running on a
//!   thread of its own.

mod admission;
mod config;
mod conn;
mod ctx;
mod event_loop;
mod handshake;
mod kick_waits;
mod service;
mod stats;
mod thread;
mod window;

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::Pod;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use subring_planes::interrupt::WaitAny;
use subring_planes::sync::{fence, Ordering::Acquire};

pub use config::{ClientInfo, ServerConfig, ServerSleep};
pub use ctx::{ClientMemory, Ctx, HandleError};
pub use service::{Completions, Handler, Pending, PerClient, Service};
pub use stats::{CallStats, ServerStats};
pub use thread::{ServerThread, Stopper};

use crate::error::{check_capacity, check_duration, LONGEST_TIMEOUT};
use crate::futex_sleep::{FutexSleep, MAX_FUTEX_CLIENTS};
use crate::futex_waits::FutexWaits;
use crate::ConfigError;
use crate::Error;
use admission::listen_on;
use conn::{Armed, Conn, Limits, Outcome, State, Table};
use kick_waits::Word;
use service::Ledger;
use window::Window;

const LISTENER: u64 = u64::MAX;
const STOP: u64 = u64::MAX - 1;
/// Polling turns between two non-blocking looks at the sockets (an `epoll_wait` system call:
/// about a microsecond, during which a polling client's request waits).
const EVENT_CHECK_EVERY: u64 = 2048;
/// Polling turns between two clock reads.
const CLOCK_EVERY: u32 = 16;

/// Every event source a service watches ([`Server::watch`]) wakes the server with this token.
const SOURCE: u64 = u64::MAX - 2;
/// The io_uring of futex-doorbell waits (`kick_waits`).
const KICK_WAITS: u64 = u64::MAX - 3;
/// The longest sleep when a futex-doorbell wait could not be armed.
const KICK_WAIT_RETRY: Duration = Duration::from_millis(1);

/// A server of `S` requests and `C` completions, running the [`Service`] `V` for its clients
/// (with [`Server::new`], one [`Handler`] per client: `V` is [`PerClient`]).
pub struct Server<S: Pod, C: Pod, V: Service<S, C>> {
    config: ServerConfig,
    service: V,
    /// Descriptors the service watches (duplicates the server owns).
    sources: Vec<OwnedFd>,
    /// The deferred-request ledgers of clients gone while some were unanswered.
    departing: Vec<Arc<Ledger>>,
    /// A descriptor kept in reserve for the descriptor limit (see `accept_all`).
    spare_fd: Option<OwnedFd>,
    /// This turn was long: a client spent its byte budget.
    heavy_turn: bool,
    listener: Option<(OwnedFd, PathBuf)>,
    epoll: Epoll,
    stop: Arc<EventFd>,
    stopping: bool,
    conns: Vec<Conn<S, C, V::Client>>,
    next_id: u64,
    stats: ServerStats,
    window: Window,
    spin_clients: usize,
    adaptive_clients: usize,
    events: Vec<EpollEvent>,
    idle_since: Option<Instant>,
    idle_turns: u64,
    /// Polling turns since the last look at the sockets ([`EVENT_CHECK_EVERY`]).
    since_events: u64,
    /// The futex sleep's control thread, with [`ServerSleep::Futex`].
    futex: Option<FutexSleep>,
    /// A client with a kick word came or went since the futex sleep's words were set.
    kick_words_changed: bool,
    /// A client with a kick word left since the sleep set's words were last set: the words
    /// replaced go to the dropper thread (they may hold the last of its memory).
    words_departed: bool,
    /// Sleeping in epoll: the io_uring that waits on futex doorbells, while a client that
    /// asked for one is connected.
    kick_waits: Option<FutexWaits>,
    /// Those clients.
    futex_doorbells: usize,
    /// A client came or went since each client's part of its user's budget was counted
    /// ([`ServerConfig::share_by_user`]).
    shares_stale: bool,
}

impl<S: Pod, C: Pod, V: Service<S, C>> fmt::Debug for Server<S, C, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("protocol", &self.config.protocol)
            .field("path", &self.listener.as_ref().map(|l| &l.1))
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A descriptor to keep in reserve: `/dev/null`, read-only.
pub(crate) fn spare_fd() -> Option<OwnedFd> {
    std::fs::File::open("/dev/null").ok().map(OwnedFd::from)
}

pub(crate) fn os(op: &'static str) -> impl FnOnce(Errno) -> Error {
    move |e| Error::Io {
        op,
        source: e.into(),
    }
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

impl<S: Pod + Send, C: Pod + Send, H: Handler<S, C> + Send + 'static> Server<S, C, PerClient<H>> {
    /// A server with no listening socket: clients arrive through
    /// [`add_connection`](Self::add_connection). `factory` makes each client's handler.
    pub fn new(
        config: ServerConfig,
        factory: impl FnMut(&ClientInfo) -> H + Send + 'static,
    ) -> Result<Self, Error> {
        Self::with_service(config, PerClient::new(factory))
    }

    /// A server listening at `path` (a socket file left by a dead server is replaced; one a
    /// live server answers on is an error). `factory` makes each client's handler.
    pub fn bind(
        path: impl AsRef<Path>,
        config: ServerConfig,
        factory: impl FnMut(&ClientInfo) -> H + Send + 'static,
    ) -> Result<Self, Error> {
        Self::bind_service(path, config, PerClient::new(factory))
    }
}

impl<S, C, F> Server<S, C, PerClient<F>>
where
    S: Pod + Send,
    C: Pod + Send,
    F: FnMut(&mut Ctx<'_, C>, S) + Clone + Send + 'static,
{
    /// A server whose every client is served by a clone of `handler` (a closure whose
    /// argument types are inferred), with no listening socket.
    ///
    /// ```
    /// # use subring_shm::{Server, ServerConfig};
    /// let server = Server::from_fn(ServerConfig::new("inc/1"), |ctx, x: u64| ctx.complete(x + 1))?;
    /// # let _: Server<u64, u64, _> = server;
    /// # Ok::<(), subring_shm::Error>(())
    /// ```
    pub fn from_fn(config: ServerConfig, handler: F) -> Result<Self, Error> {
        Self::new(config, move |_| handler.clone())
    }

    /// A server listening at `path` whose every client is served by a clone of `handler`.
    ///
    /// ```
    /// # use subring_shm::{Server, ServerConfig};
    /// let dir = std::env::temp_dir().join(format!("subring-bind-fn-{}", std::process::id()));
    /// std::fs::create_dir(&dir)?;
    /// let path = dir.join("inc.sock");
    /// let server = Server::bind_fn(&path, ServerConfig::new("inc/1"), |ctx, x: u64| {
    ///     ctx.complete(x + 1)
    /// })?;
    /// # let _: &Server<u64, u64, _> = &server;
    /// drop(server);
    /// std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn bind_fn(
        path: impl AsRef<Path>,
        config: ServerConfig,
        handler: F,
    ) -> Result<Self, Error> {
        Self::bind(path, config, move |_| handler.clone())
    }
}

impl<S: Pod, C: Pod, V: Service<S, C>> Server<S, C, V> {
    /// A server of `service` with no listening socket: clients arrive through
    /// [`add_connection`](Self::add_connection).
    pub fn with_service(config: ServerConfig, service: V) -> Result<Self, Error> {
        for (field, value) in [
            ("max_clients", config.max_clients as usize),
            ("max_clients_per_user", config.max_clients_per_user as usize),
            ("batch", config.batch as usize),
            ("max_deferred", config.max_deferred as usize),
            ("max_handshakes", config.max_handshakes as usize),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { field }.into());
            }
        }
        check_capacity("max_capacity", config.max_capacity, 1 << 30)?;
        check_duration(
            "handshake_timeout",
            config.handshake_timeout,
            LONGEST_TIMEOUT,
        )?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(os("epoll_create1"))?;
        let futex = match config.sleep {
            ServerSleep::Epoll => None,
            ServerSleep::Futex => {
                if config.max_clients > MAX_FUTEX_CLIENTS {
                    return Err(ConfigError::FutexClients {
                        max_clients: config.max_clients,
                        max: MAX_FUTEX_CLIENTS,
                    }
                    .into());
                }
                if !WaitAny::supported() {
                    return Err(ConfigError::Unsupported {
                        what: "futex sleep",
                        needs: "futex_waitv (Linux 5.16 and later)",
                    }
                    .into());
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
            service,
            sources: Vec::new(),
            departing: Vec::new(),
            spare_fd: spare_fd(),
            heavy_turn: false,
            listener: None,
            epoll,
            stop: Arc::new(stop),
            stopping: false,
            conns: Vec::new(),
            next_id: 1,
            stats: ServerStats::default(),
            spin_clients: 0,
            adaptive_clients: 0,
            events: vec![EpollEvent::empty(); 64],
            idle_since: None,
            idle_turns: 0,
            since_events: 0,
            futex,
            kick_words_changed: false,
            words_departed: false,
            kick_waits: None,
            futex_doorbells: 0,
            shares_stale: false,
        })
    }

    /// A server of `service` listening at `path` (a socket file left by a dead server is
    /// replaced; one a live server answers on is an error).
    pub fn bind_service(
        path: impl AsRef<Path>,
        config: ServerConfig,
        service: V,
    ) -> Result<Self, Error> {
        let mut server = Self::with_service(config, service)?;
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
        crate::proto::check_seqpacket(socket.as_fd())?;
        nix::fcntl::fcntl(
            &socket,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(os("fcntl(O_NONBLOCK) on a client socket"))?;
        self.admit(socket)
    }

    /// Watches `fd` for the service: while the server sleeps, `fd` becoming readable wakes it,
    /// and [`Service::poll`] runs (as it does on every turn). An io_uring's completion eventfd
    /// ([`Uring::completion_fd`](https://docs.rs/subring-uring)), a timerfd, an eventfd another
    /// thread writes, a socket. The server watches a duplicate of `fd` it owns.
    ///
    /// Readiness is edge-triggered: the server wakes when something new arrives, so
    /// [`poll`](Service::poll) must take what made `fd` readable (a kernel that writes an
    /// eventfd on every completion needs no draining: each completion is a new edge; a timer
    /// or a socket must be read).
    pub fn watch(&mut self, fd: impl AsFd) -> Result<(), Error> {
        let dup = fd
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| Error::Io {
                op: "dup of a watched descriptor",
                source,
            })?;
        self.epoll
            .add(
                &dup,
                EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, SOURCE),
            )
            .map_err(os("epoll_ctl(ADD a watched descriptor)"))?;
        self.sources.push(dup);
        Ok(())
    }

    /// The service.
    pub fn service(&self) -> &V {
        &self.service
    }

    /// The service, mutably (between runs: [`run_for`](Self::run_for) returns, or the server
    /// thread was stopped).
    pub fn service_mut(&mut self) -> &mut V {
        &mut self.service
    }

    /// Counters so far.
    pub fn stats(&self) -> ServerStats {
        let mut s = self.stats;
        s.departing = self
            .departing
            .iter()
            .filter(|l| Ledger::unanswered(l) > 0)
            .count() as u64;
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
        self.stats.welcomed + self.stats.refused > 0
            && self.conns.is_empty()
            && self.departing.is_empty()
    }

    /// Serves for about `limit`, then returns (for tests and single-threaded programs that do
    /// other work between turns).
    pub fn run_for(&mut self, limit: Duration) -> Result<(), Error> {
        // A limit past what a deadline can hold is no limit.
        let end = Instant::now().checked_add(limit);
        let mut turns = 0u32;
        while !self.stopping {
            // A clock read costs about as much as a polling turn (tens of ns in a VM): look at
            // it every few turns, and after every turn that slept.
            if turns % CLOCK_EVERY == 0 && end.is_some_and(|end| Instant::now() >= end) {
                break;
            }
            turns = turns.wrapping_add(1);
            if self.turn_bounded(end)? {
                turns = 0;
            }
        }
        Ok(())
    }

    /// One turn that never sleeps: serves every client a batch, polls the service, and (every
    /// few thousand calls, or after a turn in which a client spent its byte budget) looks at
    /// the sockets for new clients, hang-ups and control messages. Returns whether it did any
    /// work.
    ///
    /// For a program that runs its own busy loop and serves between its other work (run to
    /// completion, as DPDK applications do); [`run`](Self::run) and
    /// [`run_for`](Self::run_for) also sleep when there is nothing to do. A client in a
    /// blocking mode rings its doorbell only while the server sleeps, so between calls it
    /// is served no later than the next call.
    ///
    /// The loop's end is the caller's: `poll` neither stops nor returns an error when a
    /// [`Stopper`] asks it to stop (see [`stopping`](Self::stopping)), and
    /// [`ServerConfig::exit_when_empty`] does not apply to it.
    pub fn poll(&mut self) -> Result<bool, Error> {
        let work = self.serve_all() + self.poll_service();
        if !self.departing.is_empty() {
            self.retire_departed();
        }
        if self.events_due(work) {
            self.poll_events(Some(Duration::ZERO))?;
        }
        self.take_control_events()?;
        Ok(work > 0)
    }

    /// Whether a [`Stopper`] has asked this server to stop (seen at its last look at the
    /// sockets): [`run`](Self::run) and [`run_for`](Self::run_for) return at once from then
    /// on, and a loop of [`poll`](Self::poll) should end.
    pub fn stopping(&self) -> bool {
        self.stopping
    }

    /// Runs the server on a thread of its own (a dedicated polling thread, like SQPOLL).
    pub fn spawn(mut self) -> Result<ServerThread<S, C, V>, Error>
    where
        Self: Send + 'static,
    {
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
}

impl<S: Pod, C: Pod, V: Service<S, C>> Drop for Server<S, C, V> {
    fn drop(&mut self) {
        if let Some((listener, path)) = self.listener.take() {
            let _ = std::fs::remove_file(path);
            // Connections still in its backlog go with it, and with them whatever their
            // clients queued before being accepted: closed where that cannot hold this thread.
            crate::peer_fd::close_elsewhere(listener);
        }
    }
}
