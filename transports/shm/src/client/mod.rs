//! The client: connects, checks what the server hands over, and submits through the planes'
//! queue-pair traits.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::Pod;
use nix::sys::socket::{
    connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, UnixAddr,
};
use nix::sys::time::TimeVal;
use subring_planes::control::DoorbellStats;
use subring_planes::data::{Buf, BufHandle, BufferPool, Lender, PoolError, Region, RegionOptions};
use subring_planes::interrupt::{EventFdSignal, NotifyMode, NotifyStats};
use subring_planes::pair::{AppSide, PairConfig, PairSignals};
use subring_planes::queue::{Completer, QueueError, Rejected, Submitter};

use crate::peer_fd::{ConnSocket, PeerFd};
use crate::proto::{self, ClientMsg, EntryShape, Hello, Incoming, ServerMsg, Welcome};
use crate::watch::Watch;
use crate::{ConfigError, Error, FdError};

mod connect;
mod futex_poll;

use futex_poll::FutexPoll;

/// What a client asks the server for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// The application protocol spoken over the rings; the server must speak the same.
    pub protocol: String,
    /// How this client waits for completions, and how it asks the server to wait for it:
    /// `Spin` — both sides poll (no system calls; a core each); `Adaptive` — spin for an adaptive
    /// budget, then sleep; `EventFd` / `Futex` — sleep at once.
    pub mode: NotifyMode,
    /// Submission ring entries (a power of two).
    pub sq_capacity: u32,
    /// Completion ring entries (a power of two).
    pub cq_capacity: u32,
    /// Bytes per payload buffer (a multiple of 64).
    pub buf_size: u32,
    /// Number of payload buffers.
    pub buf_count: u32,
    /// How long to wait for the server's answer to a control message.
    pub control_timeout: Duration,
    /// How often a waiting client checks whether the server process is still alive, if it
    /// cannot learn of the death at once: normally it can, and this is not used. A dead server
    /// hangs up the control socket; in [`NotifyMode::EventFd`] a wait sleeps on that hang-up
    /// beside the eventfd, and in the other modes a watcher thread (one per process) sleeps on
    /// it and wakes the client. Only if that thread could not be started does a waiting client
    /// look every `liveness_interval`, reporting a dead server as [`QueueError::PeerGone`]
    /// within about this long.
    pub liveness_interval: Duration,
    /// Ask for event-idx suppression: [`Client::wait_completions`] then sleeps until the
    /// last completion it waits for and is not woken by the ones before (if the server
    /// grants it; see [`Client::event_idx`]). On by default.
    pub event_idx: bool,
    /// The server may be hostile: use only wake-ups it cannot make block
    /// ([`untrusted_server`](Self::untrusted_server)). Off by default.
    pub untrusted_server: bool,
}

impl ClientOptions {
    /// Defaults for `protocol`: adaptive mode, 256-entry rings, 64 buffers of 4 KiB.
    pub fn new(protocol: &str) -> Self {
        ClientOptions {
            protocol: protocol.to_string(),
            mode: NotifyMode::Adaptive,
            sq_capacity: 256,
            cq_capacity: 256,
            buf_size: 4096,
            buf_count: 64,
            control_timeout: Duration::from_secs(10),
            liveness_interval: Duration::from_millis(50),
            event_idx: true,
            untrusted_server: false,
        }
    }

    /// For a server that may be hostile: only wake-ups it cannot make block. A descriptor a
    /// server hands over shares its open file, flags included, so a server holding the eventfd
    /// this client's doorbell writes can clear `O_NONBLOCK` and fill its counter, and the
    /// client's next kick blocks for good; the epoll instance an eventfd-mode client waits in
    /// is the server's too. With this, the client asks for a futex doorbell, and the
    /// connection is refused ([`Error::Untrusted`](crate::Error::Untrusted)) unless its
    /// doorbell is a futex wake or nothing (spin mode); [`NotifyMode::EventFd`] is refused as
    /// this client's own mode (a configuration error). A `FUTEX_WAKE` never blocks, nor does a
    /// `FUTEX_WAIT` longer than its timeout. A server that sleeps on futexes
    /// ([`ServerSleep::Futex`](crate::ServerSleep::Futex)) gives every client a futex
    /// doorbell; one that sleeps in epoll (the default) waits on this client's word through
    /// io_uring (`IORING_OP_FUTEX_WAIT`, Linux 6.7), or refuses the client where the kernel
    /// lacks it ([`Refusal::Unsupported`](crate::proto::Refusal::Unsupported)). Such a client should
    /// wait with timeouts: a wait without one ends only with a completion or the server's
    /// hang-up, neither of which a hostile server owes it. In an event loop (tokio, mio),
    /// such a client runs in [`NotifyMode::Futex`] and waits through an io_uring of its own
    /// ([`Client::poll_fd`]).
    pub fn untrusted_server(mut self) -> Self {
        self.untrusted_server = true;
        self
    }

    /// With notify mode `mode`.
    pub fn mode(mut self, mode: NotifyMode) -> Self {
        self.mode = mode;
        self
    }

    /// With both rings of `capacity` entries.
    pub fn capacity(mut self, capacity: u32) -> Self {
        self.sq_capacity = capacity;
        self.cq_capacity = capacity;
        self
    }

    /// With `count` payload buffers of `size` bytes.
    pub fn buffers(mut self, size: u32, count: u32) -> Self {
        self.buf_size = size;
        self.buf_count = count;
        self
    }
}

/// A connection to a server: submits `S`, reaps `C` ([`Submitter`], [`Completer`]), and owns the
/// payload buffers ([`alloc`](Client::alloc), [`reclaim`](Client::reclaim)).
///
/// A server that dies is reported as [`QueueError::PeerGone`] by the next
/// [`wait`](Completer::wait), or ends one in progress, at once (see
/// [`ClientOptions::liveness_interval`]), and by [`push`](Submitter::push) once the ring is full
/// or the death has been seen.
pub struct Client<S: Pod, C: Pod> {
    /// The hang-up watcher's registration (modes other than eventfd), held for its drop, which
    /// ends the watch before the rest of the client goes.
    _watch: Option<Watch>,
    app: AppSide<S, C>,
    pool: Arc<BufferPool>,
    region: Arc<Region>,
    extra: Vec<Arc<Region>>,
    /// Shut down, emptied and closed when the client goes (see [`ConnSocket`]), after the
    /// watcher's copy (`_watch`, dropped first), so that its close is the last one.
    socket: ConnSocket,
    welcome: Welcome,
    options: ClientOptions,
    gone: bool,
    /// Whether a blocked wait ends when the control socket hangs up: it sleeps on the hang-up
    /// itself (eventfd mode), or the watcher does (`_watch`).
    sees_hangup: bool,
    /// Futex mode in an event loop: the io_uring whose wait on the completion word makes
    /// [`poll_fd`](Self::poll_fd) readable, made at its first call.
    futex_poll: Option<FutexPoll>,
}

impl<S: Pod, C: Pod> fmt::Debug for Client<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.welcome.client_id)
            .field("server_pid", &self.welcome.server_pid)
            .field("mode", &self.options.mode)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl<S: Pod, C: Pod> Client<S, C> {
    /// A free payload buffer, or `None` while all are in use (lent to the server or held here).
    pub fn alloc(&self) -> Option<Buf> {
        self.pool.alloc()
    }

    /// Pushes the entry `entry` makes of `buf`'s handle, and lends `buf` once the ring has taken
    /// it: a push the ring refuses ([`QueueError::Full`], say) hands the entry back and `buf`
    /// returns to the pool, so no loan is left behind. (Lending first, then pushing, leaves the
    /// buffer lent for good when the push is refused.) The entry handed back names a buffer
    /// that is the pool's again: retry with a buffer of your own (another `push_lending`), not
    /// by pushing that entry. The server sees the entry after [`submit`](Submitter::submit).
    pub fn push_lending(
        &mut self,
        buf: Buf,
        entry: impl FnOnce(BufHandle) -> S,
    ) -> Result<(), Rejected<S>> {
        self.push(entry(buf.handle()))?;
        let _lent = buf.lend();
        Ok(())
    }

    /// Takes back a buffer the server returned in a completion, after checking that `handle`
    /// names a buffer this client lent.
    pub fn reclaim(&self, handle: BufHandle) -> Result<Buf, PoolError> {
        self.pool.reclaim(handle)
    }

    /// The next completion and the buffer it brings back, waiting up to `timeout`
    /// ([`wait_reap`](Completer::wait_reap)); `returned` picks the completion's field that
    /// carries the lent handle. The buffer comes back as an owned [`Buf`] that returns to the
    /// pool when dropped, so no loan is forgotten. A handle that names no buffer this client
    /// lent is [`Error::Pool`] (the server broke the protocol; its completion is dropped).
    pub fn wait_reap_buf(
        &mut self,
        timeout: Duration,
        returned: impl FnOnce(&C) -> BufHandle,
    ) -> Result<(C, Buf), Error> {
        let completion = self.wait_reap(timeout)?;
        let buf = self.pool.reclaim(returned(&completion))?;
        Ok((completion, buf))
    }

    /// A [`Lender`] over the payload buffer pool: the fast path for a stream of payloads that
    /// are written into buffers, lent to the server and returned in its answers (no
    /// [`Buf`] is made; see [`Lender`] for what it saves and what it reserves).
    pub fn lender(&self) -> Lender {
        self.pool.lender()
    }

    /// The payload buffer pool.
    pub fn pool(&self) -> &Arc<BufferPool> {
        &self.pool
    }

    /// The shared region (rings and buffers).
    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// The server's number for this connection.
    pub fn id(&self) -> u64 {
        self.welcome.client_id
    }

    /// The server's process id, as the kernel reports it for the connection (`SO_PEERCRED`:
    /// the process that accepted it, or that made the socket pair; in this process's pid
    /// namespace), never the number the server's welcome gave; 0 if the kernel would not say.
    pub fn server_pid(&self) -> u32 {
        self.welcome.server_pid
    }

    /// The notify mode of this connection.
    pub fn mode(&self) -> NotifyMode {
        self.options.mode
    }

    /// How this client's doorbell wakes the server, as the server chose it: never (a spin
    /// client is polled), an eventfd write (a server sleeping in epoll) or a futex wake (a
    /// server sleeping on futexes).
    pub fn kick_mode(&self) -> NotifyMode {
        self.welcome.kick_mode.into()
    }

    /// The descriptor this client sleeps on in eventfd mode, for an event loop (epoll, mio,
    /// tokio's `AsyncFd`): an epoll instance that watches the server's call eventfd, readable
    /// while a wake-up is pending. Call [`arm`](Self::arm) before waiting on it and
    /// [`disarm`](Self::disarm) after.
    pub fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
        self.app.completion_fd()
    }

    /// The control socket: readable or hung up when the server speaks or dies; put it in the
    /// same event loop as [`completion_fd`](Self::completion_fd).
    pub fn control_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// The descriptor an event loop (epoll, mio, tokio's `AsyncFd`) watches for this client's
    /// completions: in [`NotifyMode::EventFd`], [`completion_fd`](Self::completion_fd); in
    /// [`NotifyMode::Futex`], an io_uring of this client's own (made at the first call),
    /// readable when the `FUTEX_WAIT` that [`arm`](Self::arm) puts on the completion ring's
    /// wake word ends at the server's futex wake (io_uring's `FUTEX_WAIT`, Linux 6.7; where
    /// the kernel lacks it, an [`Error::Io`] naming it). Nothing in that wait is the server's,
    /// so a client that does not trust its server ([`ClientOptions::untrusted_server`]) can
    /// wait in an event loop this way. Other modes are refused ([`ConfigError::Mode`]): they
    /// spin. Watch [`control_fd`](Self::control_fd) beside it for the server's messages and
    /// hang-up; [`arm`](Self::arm) before waiting, [`disarm`](Self::disarm) (or
    /// [`disarm_edge`](Self::disarm_edge)) after.
    ///
    /// In futex mode the kernel completes the wait in the thread that armed it, interrupting
    /// it as a signal would: an `epoll_wait` it sleeps in (which the kernel never restarts)
    /// returns `EINTR` once, and the descriptor is readable when it is called again; so may
    /// other blocking calls of that thread that are not restarted (socket calls with a
    /// timeout, say). Event loops retry on `EINTR` (tokio does; a mio loop retries
    /// [`std::io::ErrorKind::Interrupted`]). Before a blocking wait of its own on the
    /// completions ([`Completer::wait`] and the rest), the client cancels the event loop's
    /// pending wait, so that the server's wake-up reaches the blocked thread.
    pub fn poll_fd(&mut self) -> Result<BorrowedFd<'_>, Error> {
        match self.options.mode {
            NotifyMode::EventFd => {}
            NotifyMode::Futex => {
                if self.futex_poll.is_none() {
                    let op = "setting up an io_uring FUTEX_WAIT (Linux 6.7) on the completion \
                              word, for an event loop";
                    let io = |source| Error::Io { op, source };
                    let mut poll = FutexPoll::new(self.app.completion_wake()).map_err(io)?;
                    // Armed at once: this client may have armed before it had the ring (the
                    // wait then ends at the server's wake-up, or at once if it already came).
                    poll.arm().map_err(io)?;
                    self.futex_poll = Some(poll);
                }
                if let Some(poll) = &self.futex_poll {
                    return Ok(poll.as_fd());
                }
            }
            given => {
                return Err(ConfigError::Mode {
                    what: "waiting in an event loop in a mode other than eventfd",
                    needs: NotifyMode::Futex,
                    given,
                }
                .into())
            }
        }
        self.completion_fd().ok_or_else(|| Error::Io {
            op: "an eventfd-mode client's completion descriptor",
            source: std::io::Error::other("the client has none"),
        })
    }

    /// Prepares to wait on [`poll_fd`](Self::poll_fd) (or
    /// [`completion_fd`](Self::completion_fd)): `true` if completions are already there
    /// (reap instead of waiting), [`QueueError::PeerGone`] if the server has closed its side
    /// and nothing is left to reap (an event loop that took `true` for "reap" would turn
    /// without end, never waiting again). In futex mode, once `poll_fd` was made, this arms
    /// its `FUTEX_WAIT` (one `io_uring_enter`, unless one is still armed from an earlier
    /// wait).
    pub fn arm(&mut self) -> Result<bool, QueueError> {
        if self.app.arm()? {
            // Completions, or the server's close (which the arm also reports as ready).
            if !self.app.completions_ready()? && self.server_gone() {
                self.app.disarm_edge();
                return Err(QueueError::PeerGone);
            }
            return Ok(true);
        }
        if let Some(poll) = &mut self.futex_poll {
            if let Err(e) = poll.arm() {
                self.app.disarm_edge();
                return Err(QueueError::Io(e));
            }
        }
        Ok(false)
    }

    /// Ends a wait begun with [`arm`](Self::arm).
    pub fn disarm(&mut self) -> Result<(), QueueError> {
        self.app.disarm()?;
        if let Some(poll) = &mut self.futex_poll {
            poll.reap()?;
        }
        Ok(())
    }

    /// Ends a wait begun with [`arm`](Self::arm) in an edge-triggered event loop (epoll with
    /// `EPOLLET`, tokio, mio), without the read that drains the eventfd: every wake-up is a new
    /// edge there.
    pub fn disarm_edge(&mut self) {
        self.app.disarm_edge();
        if let Some(poll) = &mut self.futex_poll {
            // A reap fails only if completions overflowed the ring, which one wait cannot
            // do; the next `arm` reaps again and reports it.
            let _ = poll.reap();
        }
    }

    /// Whether completions are waiting to be reaped (no system call).
    pub fn completions_ready(&mut self) -> Result<bool, QueueError> {
        self.app.completions_ready()
    }

    /// Whether the server is known to be gone (closed its side or hung up the socket).
    pub fn server_gone(&mut self) -> bool {
        if !self.gone && (self.app.peer_closed() || proto::hung_up(self.socket.as_fd())) {
            self.gone = true;
        }
        self.gone
    }

    /// Registers another memory region with the server (it must be a memfd [`Region`] with an
    /// id other than 0, unique on this connection): handles whose `region` is that id then
    /// resolve in it on the server side. Blocks until the server answers, at most
    /// [`ClientOptions::control_timeout`]: a server that answers later, or out of turn, ends
    /// the connection (the answers would be read one behind the questions), and the client is
    /// gone from then on.
    pub fn register_region(&mut self, region: Arc<Region>) -> Result<(), Error> {
        if self.gone {
            return Err(QueueError::PeerGone.into());
        }
        let id = region.id();
        if id == 0 || self.extra.iter().any(|r| r.id() == id) {
            return Err(ConfigError::RegionId { id }.into());
        }
        let fd = region.fd().ok_or(ConfigError::NotMemfd { id })?;
        let deadline = Instant::now().checked_add(self.options.control_timeout);
        proto::send_until(
            self.socket.as_fd(),
            &ClientMsg::RegisterRegion {
                id,
                len: region.len() as u64,
            },
            &[fd],
            deadline,
        )?;
        let answer = match proto::recv_blocking::<ServerMsg>(
            self.socket.as_fd(),
            deadline,
            "region registration",
        ) {
            // An answer this process could not take, or one that came too late, stays queued,
            // and every later one would be read one behind: the connection ends.
            Err(e) => {
                self.gone = true;
                return Err(e);
            }
            Ok(answer) => answer,
        };
        match answer {
            Incoming::Message(ServerMsg::Registered { id: got }, _) if got == id => {
                self.extra.push(region);
                Ok(())
            }
            Incoming::Message(ServerMsg::Refused(r), _) => Err(Error::Refused(r)),
            Incoming::Message(ServerMsg::Goodbye { reason }, _) => {
                self.gone = true;
                Err(Error::Malformed {
                    what: "registration answer",
                    detail: format!("server closed the connection: {reason}"),
                })
            }
            other => {
                // Out of turn (an answer to another registration, or no answer at all): the
                // answers are out of step with the questions, and the connection ends.
                self.gone = true;
                Err(Error::Malformed {
                    what: "registration answer",
                    detail: format!("unexpected {other:?}"),
                })
            }
        }
    }

    fn note_gone(&mut self) -> QueueError {
        self.gone = true;
        QueueError::PeerGone
    }
}

impl<S: Pod, C: Pod> Submitter for Client<S, C> {
    type Entry = S;

    fn push(&mut self, entry: S) -> Result<(), Rejected<S>> {
        if self.gone {
            return Err(Rejected::new(entry, QueueError::PeerGone));
        }
        match self.app.push(entry) {
            // A full ring is where a client would otherwise wait forever on a dead server.
            Err(Rejected {
                entry,
                error: QueueError::Full,
            }) if self.server_gone() => Err(Rejected::new(entry, QueueError::PeerGone)),
            other => other,
        }
    }

    fn push_slice(&mut self, entries: &[S]) -> Result<usize, QueueError> {
        if self.gone {
            return Err(QueueError::PeerGone);
        }
        let n = self.app.push_slice(entries)?;
        if n == 0 && !entries.is_empty() && self.server_gone() {
            return Err(QueueError::PeerGone);
        }
        Ok(n)
    }

    fn space(&mut self) -> Result<usize, QueueError> {
        self.app.space()
    }

    #[inline(always)]
    fn submit(&mut self) -> Result<usize, QueueError> {
        if self.gone {
            return Err(QueueError::PeerGone);
        }
        match self.app.submit() {
            // The server said it closed: gone for good, whatever its word says later (what
            // was staged is never sent, so a caller that takes it back cannot see it go).
            Err(QueueError::PeerGone) => Err(self.note_gone()),
            other => other,
        }
    }

    /// Sleeps until the server takes a request (it wakes this client when it does), or, as
    /// [`wait`](Completer::wait) does, until the server is seen gone.
    fn wait_space(&mut self, timeout: Option<Duration>) -> Result<(), QueueError> {
        if self.gone {
            return Err(QueueError::PeerGone);
        }
        if self.sees_hangup {
            return match self.app.wait_space(timeout) {
                Err(QueueError::PeerGone) => Err(self.note_gone()),
                Err(QueueError::Corrupt(_)) if self.server_gone() => Err(self.note_gone()),
                other => other,
            };
        }
        self.wait_in_slices(timeout, WaitFor::Space).map(drop)
    }

    fn doorbell_stats(&self) -> DoorbellStats {
        self.app.doorbell_stats()
    }
}

/// What a client's wait is for.
#[derive(Clone, Copy)]
enum WaitFor {
    Completions,
    Space,
    /// This many completions.
    Batch(usize),
}

impl<S: Pod, C: Pod> Completer for Client<S, C> {
    type Completion = C;

    fn reap(&mut self) -> Result<Option<C>, QueueError> {
        self.app.reap()
    }

    fn reap_into(&mut self, out: &mut Vec<C>, max: usize) -> Result<usize, QueueError> {
        self.app.reap_into(out, max)
    }

    /// Inlined into the caller, system call included (see `ModeNotifier` in the planes for
    /// why); a client without a hang-up watch waits out of line.
    #[inline(always)]
    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), QueueError> {
        if self.futex_poll.is_some() {
            self.cancel_futex_poll()?;
        }
        if self.sees_hangup {
            // A dead server hangs up the socket, which ends the wait (this client sleeps on the
            // hang-up, or the watcher does): one wait, for as long as the caller asked (with no
            // timeout, no timer and no periodic wake-up at all).
            return match self.app.wait(timeout) {
                Err(QueueError::PeerGone) => Err(self.note_gone()),
                // A corrupt ring ends the wait before the hang-up is looked at: a server that
                // corrupted it and died would otherwise be reported as corrupt forever.
                Err(QueueError::Corrupt(_)) if self.server_gone() => Err(self.note_gone()),
                other => other,
            };
        }
        self.wait_in_slices(timeout, WaitFor::Completions).map(drop)
    }

    fn notify_stats(&self) -> NotifyStats {
        self.app.notify_stats()
    }
}

impl<S: Pod, C: Pod> Client<S, C> {
    /// Waits until `n` completions are ready to reap, the server is gone, or `timeout` passes
    /// with at least one there; returns how many are ready. Interrupt coalescing: with
    /// event-idx suppression (asked for in [`ClientOptions::event_idx`] and granted by the
    /// server: [`event_idx`](Self::event_idx)) the server wakes this client once, when it
    /// posts the `n`-th, instead of at every completion. Ask for no more than are in flight,
    /// or the wait lasts until the timeout. See [`AppSide::wait_completions`].
    pub fn wait_completions(
        &mut self,
        n: usize,
        timeout: Option<Duration>,
    ) -> Result<usize, QueueError> {
        // As the queue pair takes it: between 1 and what the ring holds (the sliced wait
        // compares what came with it).
        let n = n.clamp(1, self.app.completion_capacity());
        if self.futex_poll.is_some() {
            self.cancel_futex_poll()?;
        }
        if self.sees_hangup {
            return match self.app.wait_completions(n, timeout) {
                Err(QueueError::PeerGone) => Err(self.note_gone()),
                Err(QueueError::Corrupt(_)) if self.server_gone() => Err(self.note_gone()),
                other => other,
            };
        }
        self.wait_in_slices(timeout, WaitFor::Batch(n))
    }

    /// Before a blocking wait on the completion word: cancels the event loop's io_uring wait
    /// on it ([`poll_fd`](Self::poll_fd)), which the server's wake-up (it wakes one waiter)
    /// could otherwise reach instead of this thread. The next [`arm`](Self::arm) arms anew.
    #[cold]
    fn cancel_futex_poll(&mut self) -> Result<(), QueueError> {
        match &mut self.futex_poll {
            Some(poll) => Ok(poll.cancel()?),
            None => Ok(()),
        }
    }

    /// Whether event-idx suppression is on for this connection (asked for, and granted).
    pub fn event_idx(&self) -> bool {
        self.app.event_idx()
    }

    /// [`Completer::wait`], [`Submitter::wait_space`] and
    /// [`wait_completions`](Self::wait_completions) for a client that cannot see the server's
    /// death as a hang-up; returns how many completions are ready for a batch wait.
    #[inline(never)]
    fn wait_in_slices(
        &mut self,
        timeout: Option<Duration>,
        what: WaitFor,
    ) -> Result<usize, QueueError> {
        // No watcher (it could not start): the wait is cut into liveness slices. Time is tracked
        // by adding up the slices that timed out (each lasted at least its length), not by
        // reading the clock: a clock read costs about a cross-core round trip in a VM.
        let mut left = timeout;
        loop {
            let slice = left.map_or(self.options.liveness_interval, |l| {
                l.min(self.options.liveness_interval)
            });
            let waited = match what {
                WaitFor::Completions => self.app.wait(Some(slice)).map(|()| 1),
                WaitFor::Space => self.app.wait_space(Some(slice)).map(|()| 0),
                WaitFor::Batch(n) => match self.app.wait_completions(n, Some(slice)) {
                    // A partial batch at the end of a slice, not of the caller's time: wait
                    // on (unless the server is gone, or has closed).
                    Ok(k) if k < n && !self.app.peer_closed() && left.is_none_or(|l| l > slice) => {
                        Err(QueueError::Timeout(slice))
                    }
                    other => other,
                },
            };
            match waited {
                Ok(k) => return Ok(k),
                Err(QueueError::PeerGone) => return Err(self.note_gone()),
                Err(QueueError::Timeout(_)) => {
                    if self.server_gone() {
                        // Completions published before the death are still reaped first.
                        return match what {
                            WaitFor::Completions | WaitFor::Batch(_) => {
                                match self.app.completions_available()? {
                                    0 => Err(QueueError::PeerGone),
                                    k => Ok(k),
                                }
                            }
                            WaitFor::Space => Err(QueueError::PeerGone),
                        };
                    }
                    left = left.map(|l| l.saturating_sub(slice));
                    if left.is_some_and(|l| l.is_zero()) {
                        if let WaitFor::Batch(_) = what {
                            let k = self.app.completions_available()?;
                            if k > 0 {
                                return Ok(k);
                            }
                        }
                        return Err(QueueError::Timeout(timeout.unwrap_or_default()));
                    }
                }
                // A server that corrupted the ring and died: its death is the news.
                Err(QueueError::Corrupt(_)) if self.server_gone() => return Err(self.note_gone()),
                Err(e) => return Err(e),
            }
        }
    }
}

impl<S: Pod, C: Pod> Drop for Client<S, C> {
    fn drop(&mut self) {
        // The queue pair closes when `app` drops; tell the server too, best effort (it also
        // sees the socket hang up).
        if !self.gone {
            // Publish what was pushed but not submitted, so the server sees it before the
            // shutdown message (nothing queued is lost).
            let _ = self.app.submit();
            let _ = proto::send(self.socket.as_fd(), &ClientMsg::Shutdown, &[]);
        }
    }
}
