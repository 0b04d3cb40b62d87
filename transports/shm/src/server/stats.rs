//! What a server counts.

use subring_planes::interrupt::NotifyStats;

/// Counters of a server's life (more may come).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Connections accepted (including refused ones).
    pub accepted: u64,
    /// Connections set up.
    pub welcomed: u64,
    /// Connections refused at handshake.
    pub refused: u64,
    /// Of those, connections closed at once because the process had no descriptor left.
    pub refused_no_fds: u64,
    /// Of those, connections that had said nothing, closed to make room for a newer one (past
    /// [`ServerConfig::max_handshakes`](crate::ServerConfig::max_handshakes)).
    pub made_room: u64,
    /// Of those, hellos refused because their user had
    /// [`ServerConfig::max_clients_per_user`](crate::ServerConfig::max_clients_per_user)
    /// clients already.
    pub user_busy: u64,
    /// Connections released (closed, died, or evicted).
    pub released: u64,
    /// Connections evicted for a protocol violation (corrupt ring index, garbage message).
    pub evicted: u64,
    /// Requests handled.
    pub requests: u64,
    /// Requests a service deferred ([`Ctx::defer`](crate::Ctx::defer)) to answer later.
    pub deferred: u64,
    /// Completions of deferred requests that found their client gone, and were dropped.
    pub discarded: u64,
    /// Deferred requests whose [`Pending`](crate::Pending) token the service dropped without
    /// completing it: the client never got an answer. A service bug, counted here.
    pub abandoned: u64,
    /// Clients gone whose deferred requests the service has not all answered (or dropped) yet.
    pub departing: u64,
    /// Times the server slept (in `epoll_wait`, or on its clients' futex words).
    pub sleeps: u64,
    /// Futex waits a server sleeping in epoll armed through io_uring, on the words of clients
    /// that ring a futex doorbell ([`Hello::futex_doorbell`](crate::proto::Hello)): one per
    /// wake-up of such a client, or fewer (a wait stays armed across sleeps until woken).
    pub futex_doorbell_waits: u64,
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
    pub(crate) fn add(&mut self, (_, call): (NotifyStats, NotifyStats)) {
        self.sent += call.sent;
        self.suppressed += call.suppressed;
    }
}
