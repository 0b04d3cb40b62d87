//! The service API: what a server runs for its clients, answering each request now or later.
//!
//! A [`Service`] is one object for the whole server (it can own an io_uring, a file, a cache
//! shared by every client) with a piece of state per client. It answers a request in the
//! call ([`Ctx::complete`]), or defers it ([`Ctx::defer`]) and completes it later from
//! [`Service::poll`], which the server calls on every turn and whenever one of the service's
//! own event sources ([`Server::watch`](crate::Server::watch)) fires while it sleeps.
//!
//! The simple case, one handler per client that answers in the call, is a closure or a
//! [`Handler`], wrapped by [`Server::new`](crate::Server::new) in [`PerClient`].

use std::fmt;
use std::sync::Arc;

use subring_planes::sync::{AtomicU64, Ordering::*};

use super::config::ClientInfo;
use super::ctx::{ClientMemory, Ctx};

/// What a server runs for its clients: requests `S`, completions `C`.
///
/// The server calls, all on its own thread:
/// - [`connect`](Self::connect) when a client has been welcomed,
/// - [`request`](Self::request) for each of its requests, in order, a bounded batch per client
///   per turn,
/// - [`poll`](Self::poll) once per turn, and after every wake-up,
/// - [`before_sleep`](Self::before_sleep) when no client has work and the server is about to
///   sleep,
/// - [`disconnect`](Self::disconnect) when a client has left (closed, died or was evicted).
///
/// # Example: answering from another event source
/// A service that holds every request until another thread writes its eventfd (a stand-in for
/// an io_uring's completion eventfd, a timer, a device), then answers them all. The server
/// sleeps meanwhile, with no timer: the eventfd wakes it.
/// ```
/// use std::os::fd::AsFd;
/// use std::sync::Arc;
/// use std::time::Duration;
/// use nix::sys::eventfd::{EfdFlags, EventFd};
/// use subring_shm::queue::{Completer, Submitter};
/// use subring_shm::{
///     Client, ClientInfo, ClientOptions, Completions, Ctx, Pending, Server, ServerConfig, Service,
/// };
///
/// struct Gate {
///     gate: Arc<EventFd>,
///     held: Vec<(Pending, u64)>,
/// }
///
/// impl Service<u64, u64> for Gate {
///     type Client = ();
///     fn connect(&mut self, _: &ClientInfo) {}
///     fn request(&mut self, _: &mut (), ctx: &mut Ctx<'_, u64>, x: u64) {
///         self.held.push((ctx.defer(), x)); // answered later, from `poll`
///     }
///     fn poll(&mut self, done: &mut Completions<'_, u64>) -> u32 {
///         if self.gate.read().is_err() {
///             return 0; // not opened (the eventfd is non-blocking)
///         }
///         let n = self.held.len() as u32;
///         for (pending, x) in self.held.drain(..) {
///             done.complete(pending, x + 1);
///         }
///         n
///     }
/// }
///
/// let gate = Arc::new(EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?);
/// let (server_end, client_end) = subring_shm::socket_pair()?;
/// let service = Gate { gate: gate.clone(), held: Vec::new() };
/// let mut server = Server::with_service(ServerConfig::new("gate"), service)?;
/// server.watch(gate.as_fd())?; // the server's sleep now covers the gate
/// server.add_connection(server_end)?;
/// let server = server.spawn()?;
///
/// let mut client = Client::<u64, u64>::from_socket(client_end, &ClientOptions::new("gate"))?;
/// client.push(41).unwrap();
/// client.submit()?;
/// std::thread::spawn(move || {
///     std::thread::sleep(Duration::from_millis(20));
///     gate.write(1).unwrap(); // another event source fires
/// });
/// client.wait(Some(Duration::from_secs(10)))?; // asleep until the answer comes
/// assert_eq!(client.reap()?, Some(42));
/// drop(client);
/// assert_eq!(server.stop()?.stats().deferred, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Service<S, C> {
    /// What the service keeps per client.
    type Client;

    /// A client has been welcomed: make its state.
    fn connect(&mut self, client: &ClientInfo) -> Self::Client;

    /// Handles one request: answer it now with [`Ctx::complete`], or take a token with
    /// [`Ctx::defer`] and answer later.
    fn request(&mut self, client: &mut Self::Client, ctx: &mut Ctx<'_, C>, request: S);

    /// Advances the service's own work (reaps an io_uring, reads a timer, ...) and completes
    /// what is done with [`Completions::complete`]; returns how much it did (0: nothing), which
    /// counts as the server's work for its polling decisions.
    ///
    /// Called once per turn, so it should be cheap when there is nothing to do (a look at a
    /// completion queue, not a system call).
    fn poll(&mut self, completions: &mut Completions<'_, C>) -> u32 {
        let _ = completions;
        0
    }

    /// The server has no client work and is about to sleep until a client or one of the
    /// service's watched fds wakes it: hand queued work to its subsystem (an io_uring
    /// submit), and return `true` if something is already waiting for [`poll`](Self::poll)
    /// (the server then does not sleep).
    fn before_sleep(&mut self) -> bool {
        false
    }

    /// A client has left. Its deferred requests can no longer be answered (their completions
    /// are dropped and counted in [`ServerStats::discarded`](crate::ServerStats::discarded)):
    /// cancel what can be cancelled. The server counts the client as departing until every
    /// one of its [`Pending`] tokens has been completed or dropped.
    fn disconnect(&mut self, client: Self::Client, info: &ClientInfo) {
        let _ = (client, info);
    }
}

/// Serves one client's requests, in the call. Implemented for closures `FnMut(&mut Ctx<'_, C>,
/// S)`. A server of handlers is a [`PerClient`] service.
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

/// The service of a server made with [`Server::new`](crate::Server::new): a factory makes
/// one [`Handler`] per client, and each request goes to its client's handler.
pub struct PerClient<H> {
    factory: Box<dyn FnMut(&ClientInfo) -> H + Send>,
}

impl<H> PerClient<H> {
    /// A service that makes each client's handler with `factory`.
    pub fn new(factory: impl FnMut(&ClientInfo) -> H + Send + 'static) -> Self {
        PerClient {
            factory: Box::new(factory),
        }
    }
}

impl<H> fmt::Debug for PerClient<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerClient").finish_non_exhaustive()
    }
}

impl<S, C, H: Handler<S, C>> Service<S, C> for PerClient<H> {
    type Client = H;

    fn connect(&mut self, client: &ClientInfo) -> H {
        (self.factory)(client)
    }

    #[inline(always)]
    fn request(&mut self, handler: &mut H, ctx: &mut Ctx<'_, C>, request: S) {
        handler.request(ctx, request)
    }
}

/// One client's deferred requests: a [`Pending`] token holds a reference, so the count of
/// references beyond the server's own is the number unanswered.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Tokens dropped without completing.
    abandoned: AtomicU64,
}

impl Ledger {
    /// Deferred requests not yet answered (nor abandoned), given the server's own reference.
    pub(crate) fn unanswered(this: &Arc<Ledger>) -> u32 {
        (Arc::strong_count(this) - 1).min(u32::MAX as usize) as u32
    }

    /// Tokens abandoned so far. Read once no token is left ([`Ledger::unanswered`] is 0),
    /// after an Acquire fence, it is final: each drop counts before it lets go of its reference.
    pub(crate) fn abandoned(&self) -> u64 {
        self.abandoned.load(Acquire)
    }
}

/// A request a service deferred ([`Ctx::defer`]): complete it with
/// [`Completions::complete`]. Dropping it instead leaves the client without an answer; the
/// server counts that in [`ServerStats::abandoned`](crate::ServerStats::abandoned).
#[must_use = "a deferred request must be completed with Completions::complete"]
pub struct Pending {
    client: u64,
    ledger: Option<Arc<Ledger>>,
}

impl Pending {
    pub(crate) fn new(client: u64, ledger: Arc<Ledger>) -> Self {
        Pending {
            client,
            ledger: Some(ledger),
        }
    }

    /// The client's id ([`ClientInfo::id`]).
    pub fn client(&self) -> u64 {
        self.client
    }

    /// Consumes the token as answered.
    fn answered(mut self) -> (u64, Option<Arc<Ledger>>) {
        (self.client, self.ledger.take())
    }
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("client", &self.client)
            .finish()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(ledger) = self.ledger.take() {
            // Counted before the reference goes (Release): whoever sees the count of references
            // fall sees this too.
            ledger.abandoned.fetch_add(1, Release);
        }
    }
}

/// Where a service's completions of deferred requests go ([`Service::poll`]).
pub struct Completions<'a, C> {
    pub(crate) route: &'a mut dyn Route<C>,
    pub(crate) delivered: u32,
    pub(crate) discarded: u64,
}

impl<C> fmt::Debug for Completions<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completions")
            .field("delivered", &self.delivered)
            .field("discarded", &self.discarded)
            .finish()
    }
}

/// How [`Completions`] reaches the clients (the server's connection table).
pub(crate) trait Route<C> {
    /// Posts `completion` to client `id`; `false` if it is gone.
    fn deliver(&mut self, id: u64, completion: C) -> bool;
    /// Client `id`'s memory and description, if it is still connected.
    fn client(&self, id: u64) -> Option<(&ClientInfo, &ClientMemory)>;
}

impl<C> Completions<'_, C> {
    /// Answers a deferred request. Returns `false` if its client has left (the completion is
    /// dropped and counted in [`ServerStats::discarded`](crate::ServerStats::discarded)). A
    /// full completion ring never loses it: it waits in the server's memory, as with
    /// [`Ctx::complete`].
    pub fn complete(&mut self, pending: Pending, completion: C) -> bool {
        let (client, ledger) = pending.answered();
        let delivered = self.route.deliver(client, completion);
        if delivered {
            self.delivered += 1;
        } else {
            self.discarded += 1;
        }
        drop(ledger);
        delivered
    }

    /// The memory of the client a deferred request came from, if it is still connected (to
    /// copy an answer into its buffers).
    pub fn memory(&self, pending: &Pending) -> Option<&ClientMemory> {
        self.route.client(pending.client).map(|(_, m)| m)
    }

    /// The client a deferred request came from, if it is still connected.
    pub fn client(&self, pending: &Pending) -> Option<&ClientInfo> {
        self.route.client(pending.client).map(|(i, _)| i)
    }

    /// Completions delivered so far in this call.
    pub fn delivered(&self) -> u32 {
        self.delivered
    }
}
