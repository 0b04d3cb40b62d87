//! A server's limits and policies, and what it knows of a client.

use std::time::Duration;

use subring_planes::interrupt::NotifyMode;

/// Limits and policies of a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The application protocol served; clients must name the same one.
    pub protocol: String,
    /// Clients served at once; more are refused with [`Refusal::Busy`](crate::proto::Refusal::Busy).
    pub max_clients: u32,
    /// Clients of one user (the effective user id the kernel gives for the connecting
    /// process) served at once; more of that user's are refused with
    /// [`Refusal::UserBusy`](crate::proto::Refusal::UserBusy), so that one user cannot take
    /// every place from the others. No limit of its own by default (`u32::MAX`: only
    /// `max_clients` counts): set it below `max_clients` for a server that several users share.
    /// Connections whose credentials the kernel did not give count as one user. A connection
    /// handed in with
    /// [`Server::add_connection`](crate::Server::add_connection) carries the credentials of
    /// the process that made the socket pair (usually the server's own), and counts as that
    /// user's.
    pub max_clients_per_user: u32,
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
    /// Connections that may be saying hello at once; past it, one that has said nothing is
    /// closed to make room for the newcomer: the oldest of the user who would then hold the
    /// most (the newcomer counted; between users holding as many, the oldest of all), so that
    /// a user flooding the server with silent connections pushes out its own, not another
    /// user's (who holds fewer).
    pub max_handshakes: u32,
    /// The longest the server keeps polling after its last request before it sleeps, while an
    /// adaptive client is connected. The window adapts below this: it grows while requests keep
    /// arriving within it and shrinks when it runs out, so a client that shares the server's CPU
    /// (and so cannot submit while the server polls) soon finds it asleep. Shrunk to nothing, it
    /// probes again now and then (20 µs, at most this long), so that a stream of requests that
    /// starts later is caught rather than served with a sleep and a wake-up between every two
    /// submits.
    pub idle_poll: Duration,
    /// Requests taken from one client per turn, so that one busy client cannot starve others.
    pub batch: u32,
    /// Bytes of its memory one client's requests may touch per turn through [`Ctx`]'s
    /// accessors (`payload`, `read`, `write`): once they have, the rest of its
    /// batch waits for the next turn, so that a client of expensive requests cannot starve the
    /// others either. (A single request is never split: a service bounds its own work per
    /// request.)
    ///
    /// [`Ctx`]: crate::Ctx
    pub turn_bytes: u64,
    /// The per-turn budgets ([`batch`](Self::batch), [`turn_bytes`](Self::turn_bytes)) are a
    /// user's rather than a client's: the clients of one user (as
    /// [`max_clients_per_user`](Self::max_clients_per_user) counts them: connections handed
    /// in with [`Server::add_connection`](crate::Server::add_connection) are usually all the
    /// server's own user's) split one client's budget evenly each turn. Each takes at least
    /// one request, so a user gets one client's budget per turn, or one request per client
    /// when it has more clients than `batch` (bound that with `max_clients_per_user`),
    /// however many connections it opens. An idle client's part is not passed to the user's
    /// others. Off by default: each client has a budget of its own.
    pub share_by_user: bool,
    /// Requests of one client that a [`Service`](crate::Service) may hold unanswered at once
    /// ([`Ctx::defer`](crate::Ctx::defer)): while a client has this many, the server takes no
    /// more of its requests (they wait in its ring: back-pressure it sees).
    pub max_deferred: u32,
    /// [`Server::run`](crate::Server::run) returns once every client has left, after at least one came: a server
    /// for one session (a parent's private subsystem, a test, a benchmark) that needs no stop
    /// signal and no timed turns to notice it is done.
    pub exit_when_empty: bool,
    /// How the server sleeps when no client has work.
    pub sleep: ServerSleep,
    /// Grant event-idx suppression to clients that ask for it (`ClientOptions::event_idx`):
    /// the server then wakes a client that waits for several completions only when the last
    /// of them is posted. On by default; off, for instance, to measure what it saves.
    pub event_idx: bool,
}

/// How a server sleeps when no client has work ([`ServerConfig::sleep`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerSleep {
    /// In `epoll`, on the listener, the control sockets and one kick eventfd per client: the
    /// clients' doorbell is an eventfd write. A client that asks for a futex doorbell
    /// ([`ClientOptions::untrusted_server`](crate::ClientOptions::untrusted_server)) rings a
    /// futex wake instead, which the server waits on through io_uring (`FUTEX_WAIT`, Linux
    /// 6.7; the ring is set up at the first such client and closed after the last, and where
    /// the kernel lacks it or io_uring is off, by a sysctl or a seccomp profile, such clients
    /// are refused). The ring's completions run as task work on the thread that armed the
    /// waits, interrupting its sleep: serve on one thread, and expect `EINTR` from a blocking
    /// call a service makes on it.
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
    /// Defaults for `protocol`: 64 clients (of any users), rings up to 64K entries,
    /// buffers up to 1 MiB, 1 GiB per region, 8 extra regions, 5 s handshakes (64 at once),
    /// 50 µs adaptive polling, 64 requests or 1 MiB touched per client per turn (budgets not
    /// shared by user), 1024 deferred requests per client.
    pub fn new(protocol: &str) -> Self {
        ServerConfig {
            protocol: protocol.to_string(),
            max_clients: 64,
            max_clients_per_user: u32::MAX,
            max_capacity: 1 << 16,
            max_buf_size: 1 << 20,
            max_region_len: 1 << 30,
            max_regions: 8,
            handshake_timeout: Duration::from_secs(5),
            max_handshakes: 64,
            idle_poll: Duration::from_micros(50),
            batch: 64,
            turn_bytes: 1 << 20,
            max_deferred: 1024,
            share_by_user: false,
            exit_when_empty: false,
            sleep: ServerSleep::Epoll,
            event_idx: true,
        }
    }
}

/// Who a connection belongs to: the credentials are the kernel's (`SO_PEERCRED`, taken when
/// the client connected), not anything the client said, so a service can decide on them (what
/// a user may read or write, say).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientInfo {
    /// The server's number for the connection.
    pub id: u64,
    /// The client's process id, if the kernel gave one (not for a peer in another pid
    /// namespace the server cannot see).
    pub pid: Option<u32>,
    /// The client's effective user id, if the kernel gave its credentials.
    pub uid: Option<u32>,
    /// The client's effective group id, if the kernel gave its credentials.
    pub gid: Option<u32>,
    /// The connection's notify mode.
    pub mode: NotifyMode,
}
