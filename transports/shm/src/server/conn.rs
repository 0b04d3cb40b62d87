//! A server's connections: those still saying hello, and the set-up clients it serves.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use bytemuck::Pod;
use subring_planes::interrupt::WakeRef;
use subring_planes::pair::ServiceSide;
use subring_planes::queue::QueueError;

use super::config::ClientInfo;
use super::ctx::{ClientMemory, Ctx, Outbox, Sink};
use super::service::{Ledger, Route, Service};

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
    /// Requests taken from the ring but not yet handed to the service: the rest of a batch
    /// cut short by [`Limits::turn_bytes`]. Served first at the next turn.
    pub(crate) carry: VecDeque<S>,
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
    pub(crate) fn serve<V: Service<S, C, Client = K>>(
        &mut self,
        service: &mut V,
        scratch: &mut Vec<S>,
        limits: Limits,
    ) -> Result<Outcome, QueueError> {
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
        let unanswered = Ledger::unanswered(&self.ledger);
        let batch = limits
            .batch
            .min(limits.max_deferred.saturating_sub(unanswered));
        scratch.clear();
        if self.pending.is_empty() && batch > 0 {
            if !self.carry.is_empty() {
                // The rest of a batch cut short last turn comes first (its completion room was
                // counted when it was taken).
                let n = (batch as usize).min(self.carry.len());
                scratch.extend(self.carry.drain(..n));
                taken = n as u32;
                room = taken;
            } else {
                // The app's completion head is re-read only when the cached one leaves too
                // little room: its line moves every time the app reaps, and reading it on
                // every turn would put a cache-line transfer on every round trip.
                let ready = self.service.requests_available_up_to(batch)?.min(batch);
                room = self.service.completion_space_for(ready.max(1))?;
                if room > 0 && ready > 0 {
                    let chunk = self.service.requests(room.min(ready))?;
                    scratch.extend(chunk.iter());
                    chunk.release_all();
                    taken = scratch.len() as u32;
                }
            }
        }
        let mut staged = delivered;
        let mut deferred = 0;
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
                ledger: &self.ledger,
                deferred: 0,
                touched: 0,
            };
            let mut served = 0;
            for request in scratch.iter() {
                service.request(&mut self.client, &mut ctx, *request);
                served += 1;
                // One client's requests touch a bounded number of bytes per turn: an expensive
                // client cannot hold the turn (the rest of its batch waits for the next one).
                if ctx.touched >= limits.turn_bytes {
                    break;
                }
            }
            self.carry.extend(scratch.drain(served..));
            taken = served as u32;
            deferred = ctx.deferred;
            staged += outbox.staged;
        }
        if staged > 0 || self.unflushed {
            self.unflushed = false;
            self.service.flush()?;
        }
        self.blocked = !self.pending.is_empty() || (room == 0 && taken == 0 && batch > 0);
        if taken == 0 && staged == 0 && self.carry.is_empty() && self.service.app_closed() {
            // Closed: everything it published before closing has been taken (the Acquire in
            // `app_closed` makes it visible) once the ring reads empty after seeing the flag.
            // (A client at its deferred limit still has its requests read: they are served,
            // not dropped, once the service answers.)
            if batch > 0 && !self.service.requests_ready()? {
                return Ok(Outcome::Finished);
            }
        }
        Ok(Outcome::Served {
            taken,
            deferred,
            staged,
        })
    }
}

pub(crate) enum State<S, C, K> {
    Handshake { deadline: Instant },
    Active(Box<Active<S, C, K>>),
}

pub(crate) struct Conn<S, C, K> {
    pub(crate) id: u64,
    pub(crate) socket: OwnedFd,
    pub(crate) state: State<S, C, K>,
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
            service: &mut a.service,
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
