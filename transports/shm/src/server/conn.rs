//! A server's connections: those still saying hello, and the set-up clients it serves.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytemuck::Pod;
use nix::sys::socket::UnixCredentials;
use subring_planes::interrupt::WakeRef;
use subring_planes::pair::ServiceSide;
use subring_planes::queue::QueueError;

use super::config::ClientInfo;
use super::ctx::{ClientMemory, Ctx, Outbox};
use super::service::{Ledger, Route, Service};
use crate::peer_fd::ConnSocket;

/// A connected, set-up client.
pub(crate) struct Active<S, C, K> {
    pub(crate) service: ServiceSide<S, C>,
    /// The service's state for this client.
    pub(crate) client: K,
    pub(crate) info: ClientInfo,
    pub(crate) memory: ClientMemory,
    /// Completions waiting for room in the completion ring.
    pub(crate) pending: VecDeque<C>,
    /// The completion ring was full (or completions are pending) at the last turn.
    pub(crate) blocked: bool,
    /// Completions staged from [`Service::poll`] and not yet published.
    pub(crate) unflushed: bool,
    /// The word a futex-sleeping server sleeps on for this client's requests (kick mode
    /// futex).
    pub(crate) kick_word: Option<WakeRef>,
    /// The word a futex-sleeping server sleeps on while this client's completion ring is
    /// full: the client's reaping wakes it (kick mode futex).
    pub(crate) room_word: Option<WakeRef>,
    /// What the server announced sleep on for this client at the last [`arm_all`].
    ///
    /// [`arm_all`]: super::Server::arm_all
    pub(crate) armed: Armed,
    /// What this client's word in the futex sleep set is.
    pub(crate) in_set: Armed,
    /// The client's deferred requests.
    pub(crate) ledger: Arc<Ledger>,
    /// The last turn stopped short of the client's ready requests: they spent its
    /// [`Limits::turn_bytes`] (the rest wait in the ring for the next turn).
    pub(crate) cut_short: bool,
    /// The client said it is leaving (its shutdown message): it is served under the usual
    /// limits until a turn takes nothing from it, and then released.
    pub(crate) leaving: bool,
    /// What one turn may take from the client: the configured budget, or with
    /// [`ServerConfig::share_by_user`](crate::ServerConfig::share_by_user) its part of its
    /// user's (kept here, beside the rest of the client's state, so that a turn reads no
    /// configuration).
    pub(crate) limits: Limits,
}

/// What a sleeping server waits for from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Armed {
    /// Requests: the client's doorbell (its kick word) wakes the server.
    Requests,
    /// Room in its full completion ring: the client's reaping (its completion ring's
    /// producer word) wakes the server.
    Room,
    /// Nothing from the client: it is at its deferred limit, and the service's answers wake
    /// the server.
    Nothing,
}

pub(crate) enum Outcome {
    /// `taken` requests handed to the service, `deferred` of them deferred, and `staged`
    /// completions published.
    Served {
        taken: u32,
        deferred: u32,
        staged: u32,
    },
    /// The client closed its side and left nothing to serve.
    Finished,
}

/// How many requests one turn may take from a client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) batch: u32,
    pub(crate) max_deferred: u32,
    /// Bytes of its memory one client's requests may touch per turn.
    pub(crate) turn_bytes: u64,
}

impl Limits {
    /// One of `share` clients' part of these limits, when they split them evenly: the batch
    /// rounded up (each takes at least one request, so a share never stops a client, nor
    /// makes a leaving one look done), the bytes rounded down (at least one). A budget of
    /// nothing stays nothing (0 bytes: one request a turn).
    #[inline]
    pub(crate) fn shared(self, share: u32) -> Self {
        let share = share.max(1);
        Limits {
            batch: self.batch.div_ceil(share).max(self.batch.min(1)),
            max_deferred: self.max_deferred,
            turn_bytes: (self.turn_bytes / u64::from(share)).max(self.turn_bytes.min(1)),
        }
    }

    /// For a client that is leaving: everything it published, within its deferred limit.
    pub(crate) fn draining(max_deferred: u32) -> Self {
        Limits {
            batch: u32::MAX,
            max_deferred,
            turn_bytes: u64::MAX,
        }
    }
}

impl<S: Pod, C: Pod, K> Active<S, C, K> {
    /// Whether the client has as many requests deferred as it may: its ring is not served (nor
    /// armed: its requests wait there) until the service answers some.
    pub(crate) fn at_deferred_limit(&self, max_deferred: u32) -> bool {
        Ledger::unanswered(&self.ledger) >= max_deferred
    }

    /// Delivers what waits in `pending`, takes a batch of requests and hands them to the
    /// service, and publishes the completions.
    ///
    /// Each request is copied out of the ring (the client cannot change it while it is
    /// handled) and handed over before the next is read; the batch is released with one store
    /// after the last. A batch that spends the client's byte budget stops there: the rest
    /// stays in the ring for the next turn.
    #[inline]
    pub(crate) fn serve<V: Service<S, C, Client = K>>(
        &mut self,
        service: &mut V,
        limits: Limits,
    ) -> Result<Outcome, QueueError> {
        let delivered = if self.pending.is_empty() {
            0
        } else {
            self.deliver_pending()?
        };
        let unanswered = Ledger::unanswered(&self.ledger);
        let batch = limits
            .batch
            .min(limits.max_deferred.saturating_sub(unanswered));
        let (mut taken, mut room, mut staged, mut deferred) = (0, 0, delivered, 0);
        self.cut_short = false;
        if self.pending.is_empty() && batch > 0 {
            let ready = self.service.requests_available_up_to(batch)?.min(batch);
            // The app's completion head is re-read only when the cached one leaves too little
            // room: its line moves every time the app reaps, and reading it on every turn would
            // put a cache-line transfer on every round trip.
            room = self.service.completion_space_for(ready.max(1))?;
            let n = room.min(ready);
            let mut touched = 0u64;
            while taken < n {
                let Some(request) = self.service.ready_request(taken) else {
                    break;
                };
                let mut ctx = Ctx {
                    info: &self.info,
                    memory: &self.memory,
                    sink: Outbox {
                        stager: self.service.stager(),
                        pending: &mut self.pending,
                        staged: 0,
                    },
                    ledger: &self.ledger,
                    deferred: 0,
                    touched: 0,
                };
                service.request(&mut self.client, &mut ctx, request);
                taken += 1;
                deferred += ctx.deferred;
                touched = touched.saturating_add(ctx.touched);
                staged += ctx.sink.staged;
                // One client's requests touch a bounded number of bytes per turn: an expensive
                // client cannot hold the turn (the rest of its batch waits for the next one).
                if touched >= limits.turn_bytes {
                    self.cut_short = taken < n;
                    break;
                }
            }
            self.service.release_requests(taken);
        }
        if staged > 0 || self.unflushed {
            self.unflushed = false;
            self.service.flush()?;
        } else if taken > 0 {
            // Requests taken and none answered yet (deferred): no flush looks at an app asleep
            // on its full submission ring, and a server that keeps polling never arms either.
            self.service.wake_app_for_room()?;
        }
        self.blocked = !self.pending.is_empty() || (room == 0 && taken == 0 && batch > 0);
        if self.blocked {
            // Nothing more is taken until the client reaps: a client asleep on its full
            // submission ring is told so (its wait for space ends with `Full`). At every such
            // turn, not only the first: answers published after the last look (the service's
            // poll) may have filled the ring again after the client reaped and went back to
            // sleep. A sleeping server's `arm_room` looks too; a server that only polls, or
            // keeps polling for its other clients, never arms. A fence and a load once per
            // publication while the client's completion ring is full (a client that rewrites
            // its wake word without reaping gets one wake-up per publication, not per turn).
            self.service.wake_app_to_reap()?;
        }
        if taken == 0 && staged == 0 && self.service.app_closed() {
            // Closed: everything it published before closing has been taken (the Acquire in
            // `app_closed` makes it visible) once the ring reads empty after seeing the flag.
            // (A client at its deferred limit, `batch` 0, still has its requests read: they
            // are served, not dropped, once the service answers.) Closed with nothing taken for
            // want of room (its completion ring full, or answers waiting for room), it is
            // finished too, and the requests still in its ring are not run: a closed client
            // reaps nothing more, so they are nobody's to answer (as for a client that died),
            // and waiting on it would have the server find its ring ready, turn after turn,
            // without end.
            if batch > 0 && (self.blocked || !self.service.requests_ready()?) {
                return Ok(Outcome::Finished);
            }
        }
        Ok(Outcome::Served {
            taken,
            deferred,
            staged,
        })
    }

    /// Delivers completions that waited for room in the completion ring, in order; returns how
    /// many went.
    #[cold]
    fn deliver_pending(&mut self) -> Result<u32, QueueError> {
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
        Ok(delivered)
    }
}

pub(crate) enum State<S, C, K> {
    Handshake { deadline: Instant },
    Active(Box<Active<S, C, K>>),
}

pub(crate) struct Conn<S, C, K> {
    pub(crate) id: u64,
    /// Shut down, emptied of whatever is queued on it and closed when the connection goes
    /// (see [`ConnSocket`]).
    pub(crate) socket: ConnSocket,
    /// Who connected (`SO_PEERCRED`, read when the connection was admitted).
    pub(crate) creds: Option<UnixCredentials>,
    pub(crate) state: State<S, C, K>,
}

impl<S, C, K> Conn<S, C, K> {
    /// The connecting process's effective user id, if the kernel gave its credentials.
    pub(crate) fn uid(&self) -> Option<u32> {
        self.creds.map(|c| c.uid())
    }
}

/// The connection table as [`Completions`](super::Completions) sees it.
pub(crate) struct Table<'a, S, C, K> {
    pub(crate) conns: &'a mut [Conn<S, C, K>],
    /// Where the last client was found: completions come in runs for one client.
    pub(crate) hint: usize,
}

impl<S, C, K> Table<'_, S, C, K> {
    fn find(&self, id: u64) -> Option<usize> {
        if self.conns.get(self.hint).is_some_and(|c| c.id == id) {
            return Some(self.hint);
        }
        self.conns.iter().position(|c| c.id == id)
    }
}

impl<S: Pod, C: Pod, K> Route<C> for Table<'_, S, C, K> {
    fn deliver(&mut self, id: u64, completion: C) -> bool {
        let Some(i) = self.find(id) else {
            return false;
        };
        self.hint = i;
        let State::Active(a) = &mut self.conns[i].state else {
            return false;
        };
        let mut outbox = Outbox {
            stager: a.service.stager(),
            pending: &mut a.pending,
            staged: 0,
        };
        outbox.complete(completion);
        a.unflushed = true;
        true
    }

    fn client(&self, id: u64) -> Option<(&ClientInfo, &ClientMemory)> {
        match &self.conns[self.find(id)?].state {
            State::Active(a) => Some((&a.info, &a.memory)),
            State::Handshake { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Limits;

    /// A user's clients split its turn budget: the batch rounded up (each takes a request at
    /// least), the bytes rounded down but never to nothing; the deferred limit is each
    /// client's own.
    #[test]
    fn a_share_of_the_limits_leaves_each_client_something() {
        let limits = Limits {
            batch: 64,
            max_deferred: 1024,
            turn_bytes: 1 << 20,
        };
        let parts = |share| {
            let l = limits.shared(share);
            (l.batch, l.turn_bytes, l.max_deferred)
        };
        assert_eq!(parts(1), (64, 1 << 20, 1024));
        assert_eq!(parts(6), (11, (1 << 20) / 6, 1024));
        assert_eq!(parts(64), (1, 1 << 14, 1024));
        assert_eq!(parts(100), (1, (1 << 20) / 100, 1024));
        assert_eq!(
            parts(0),
            (64, 1 << 20, 1024),
            "no clients counted: one share"
        );
        let tiny = Limits {
            batch: 1,
            max_deferred: 1,
            turn_bytes: 3,
        }
        .shared(8);
        assert_eq!((tiny.batch, tiny.turn_bytes), (1, 1));
        let none = Limits {
            batch: 8,
            max_deferred: 1,
            turn_bytes: 0,
        }
        .shared(3);
        assert_eq!(
            (none.batch, none.turn_bytes),
            (3, 0),
            "no bytes: none shared"
        );
        let idle = Limits {
            batch: 0,
            max_deferred: 1,
            turn_bytes: 8,
        }
        .shared(3);
        assert_eq!(idle.batch, 0, "no requests: none shared");
    }
}
