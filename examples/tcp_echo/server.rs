//! The echo server: one thread, one ring. A multishot accept takes the connections, and each
//! is installed in a slot of the ring's file table that the server picks (a direct descriptor:
//! no descriptor lookup per operation; an accept straight into the table would reset a
//! connection it has no free slot for, so the server installs them itself). A multishot recv
//! per connection fills buffers the kernel picks from a provided-buffer ring, and each buffer
//! is sent straight back (zero-copy from registered memory when it is large enough to pay),
//! then dropped, which returns it to the ring. Sends on one connection go one at a time, so
//! the echo keeps its order.
//!
//! A receive that found the ring empty is re-armed once the ring has a buffer again rather
//! than at once, and accepting stops while as many connections wait for a slot as can be
//! served, or for 10 ms after it failed (out of descriptors, say).
//!
//! The buffer ring is shared, and a multishot receive takes as many buffers as its data fills,
//! so a client that sends without reading its echoes would come to hold every buffer and stall
//! the others. A connection that holds [`ServerConfig::per_conn`] buffers therefore gives them
//! back: what it holds is copied into memory of its own, its multishot receive is cancelled,
//! and from then on it receives into its own memory, a buffer's worth at a time, while it
//! holds fewer than `per_conn`. (Its first burst can still take every free buffer for a
//! moment; a hard bound needs the kernel's total byte limit on a multishot receive, the
//! submission's `optlen` in recent kernels, which the io-uring crate does not expose yet.)

use std::collections::VecDeque;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use subring_planes::data::{Buf, Region, RegionOptions};
use subring_planes::queue::{Completer, QueueError, Submitter};
use subring_uring::{
    BufGroup, BufRingOptions, CloseTarget, Completion, FixedBuf, OnFull, Op, Output, SharedFd,
    Submission, SubmitError, Target, Uring,
};

/// How the server runs.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    /// Bytes per receive buffer.
    pub buf_size: usize,
    /// Receive buffers in the ring (shared by every connection).
    pub bufs: usize,
    /// Echo with a zero-copy send from this many bytes up (`usize::MAX`: never).
    pub zero_copy_from: usize,
    /// Connections served at once (slots in the ring's file table); as many more wait,
    /// accepted, for a slot.
    pub max_conns: u32,
    /// Receive buffers a connection may hold (received, not yet sent back) before it gives
    /// them back and receives into memory of its own.
    pub per_conn: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            buf_size: 4096,
            bufs: 256,
            zero_copy_from: 16 * 1024,
            max_conns: 1024,
            per_conn: 8,
        }
    }
}

/// What a server did.
#[derive(Debug, Default, Clone, Copy)]
pub struct ServerStats {
    /// Connections accepted.
    pub connections: u64,
    /// Bytes echoed.
    pub bytes: u64,
    /// Receive completions with data.
    pub recvs: u64,
    /// Receives that found the ring out of buffers (re-armed when one comes back).
    pub enobufs: u64,
    /// `io_uring_enter` calls.
    pub enters: u64,
    /// Connections that waited for a slot.
    pub waited: u64,
    /// Times accepting was retried after it failed.
    pub accept_retries: u64,
    /// Connections that came to hold `per_conn` buffers and gave them back.
    pub demoted: u64,
}

/// Errors of the example: each names what failed.
pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const ACCEPT: u64 = 1 << 40;
const STOP: u64 = 2 << 40;
const RECV: u64 = 3 << 40;
const SEND: u64 = 4 << 40;
const CLOSE: u64 = 5 << 40;
const INSTALL: u64 = 6 << 40;
const RETRY: u64 = 7 << 40;
const CANCEL: u64 = 8 << 40;
const KIND: u64 = 0xff << 40;
/// A connection's token: its kind, its slot's generation (modulo 2^20) and its slot.
const GEN_SHIFT: u32 = 20;
const SLOT: u64 = (1 << GEN_SHIFT) - 1;
const GEN: u64 = (1 << 20) - 1;
/// How long accepting pauses after it failed.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

struct Conn {
    /// This connection's generation of its slot: a completion of an earlier connection in
    /// the same slot is told apart by it.
    generation: u64,
    /// Received data waiting for its turn to be sent back.
    queue: VecDeque<Chunk>,
    sending: bool,
    /// A receive is in flight ...
    receiving: bool,
    /// ... and it is the multishot one.
    multishot: bool,
    /// Its cancel was asked for (the connection is closing, or was demoted).
    cancelled: bool,
    /// It held `per_conn` buffers: it receives into memory of its own now.
    demoted: bool,
    /// Its last receive found the ring empty: re-armed when a buffer comes back.
    starved: bool,
    /// The peer finished (or the connection failed): close once the queue is sent.
    closing: bool,
}

impl Conn {
    /// The chunks it holds: queued, and the one being sent.
    fn held(&self) -> usize {
        self.queue.len() + usize::from(self.sending)
    }
}

/// Received bytes: a buffer of the ring, or memory of the connection's own.
enum Chunk {
    Ring(Buf),
    Own(Vec<u8>),
}

struct Server {
    ring: Uring,
    group: BufGroup,
    listener: SharedFd,
    /// By slot of the file table.
    conns: Vec<Option<Conn>>,
    /// Each slot's last generation.
    generations: Vec<u64>,
    /// Slots neither in use nor being closed.
    free: Vec<u32>,
    /// Accepted connections waiting for a slot (at most `max_conns`).
    waiting: VecDeque<OwnedFd>,
    /// Slots whose receive waits for a buffer to come back.
    starved: Vec<usize>,
    /// A multishot accept is in flight; its cancel was asked for.
    accepting: bool,
    accept_cancelled: bool,
    /// Accepting failed: it is retried when the timer fires.
    accept_retry: bool,
    cfg: ServerConfig,
    stats: ServerStats,
}

/// How long a turn's wait holds out for its whole batch before it takes what came. Every
/// closed-loop client's round trip pays up to this much at each turn that its request misses
/// the batch's count (the next receives are a round trip away when the sends go out, so a turn
/// often does), so it is kept short against a round trip on loopback (15 us here): at 20 us,
/// 16 connections ran at 0.76-0.79x tokio's rate, at 2 us 0.94-0.96x, with 64 connections
/// 0.98-1.07x and 1.08-1.12x (performance-history.md, "the echo server's batch wait").
const BATCH_WAIT: Duration = Duration::from_micros(2);

/// Echoes every connection on `listener` until `stop` (an eventfd, say) becomes readable, then
/// finishes the sends in flight (waiting at most a second for them).
pub fn serve(listener: &TcpListener, stop: BorrowedFd<'_>, cfg: ServerConfig) -> Res<ServerStats> {
    if cfg.per_conn == 0 {
        return Err("per_conn is 0: a connection could never receive".into());
    }
    let mut ring = Uring::builder()
        .entries(512)
        .single_issuer(true)
        .defer_taskrun(true)
        .on_full(OnFull::Submit)
        .build()?;
    // The receive buffers live in one region, registered as fixed buffers too, so that a buffer
    // received can be sent back zero-copy from where it is.
    let region = Arc::new(Region::anonymous(
        cfg.buf_size * cfg.bufs,
        RegionOptions::new(),
    )?);
    ring.register_region(region.clone())?;
    if cfg.max_conns as u64 > SLOT {
        return Err(format!("max_conns {} is over {SLOT}", cfg.max_conns).into());
    }
    ring.register_files_sparse(cfg.max_conns)?;
    let group =
        ring.register_buf_ring(BufRingOptions::new(0, cfg.buf_size, cfg.bufs).region(region, 0))?;
    let mut s = Server {
        ring,
        group,
        listener: SharedFd::from(listener.as_fd().try_clone_to_owned()?),
        conns: (0..cfg.max_conns).map(|_| None).collect(),
        generations: vec![0; cfg.max_conns as usize],
        free: (0..cfg.max_conns).rev().collect(),
        waiting: VecDeque::new(),
        starved: Vec::new(),
        accepting: false,
        accept_cancelled: false,
        accept_retry: false,
        cfg,
        stats: ServerStats::default(),
    };
    s.accept()?;
    s.push(
        STOP,
        Op::Poll {
            fd: Target::fd(stop.try_clone_to_owned()?),
            events: libc::POLLIN as u32,
        },
    )?;
    let mut done = Vec::with_capacity(256);
    // Receives with data in the last turn.
    let mut last = 0;
    let mut stop_by = None;
    loop {
        // One enter per turn submits what the last turn queued and waits. The sends among it
        // complete during that very enter (a send to a socket with room finishes inline), so
        // the batch waited for is the queued entries' completions plus as many receives as the
        // last turn brought, or whatever came within `BATCH_WAIT`. (Re-arms queued with the
        // sends do not complete at once and a zero-copy send completes twice: the count is a
        // target, and `BATCH_WAIT` bounds it.) (Counting completions without the
        // sends made a wait return at once on them: 0.31 enters per request at 64
        // connections, against 0.07-0.09 now; performance-history.md, "echo batches".) A turn
        // that brought at most one receive waits for the first completion: one connection's
        // next request is a round trip away, and waiting for it with the send's completion in
        // hand would only delay the send's buffer.
        let min = match last {
            0 | 1 => 1,
            n => s.ring.queued() + n,
        };
        match s
            .ring
            .wait_batch(min, BATCH_WAIT, Some(Duration::from_secs(1)))
        {
            Ok(()) | Err(QueueError::Timeout(_)) => {}
            Err(e) => return Err(e.into()),
        }
        done.clear();
        let recvs = s.stats.recvs;
        s.ring.reap_into(&mut done, 256)?;
        for c in done.drain(..) {
            if c.token == STOP {
                stop_by = Some(Instant::now() + Duration::from_secs(1));
                continue;
            }
            s.complete(c)?;
        }
        last = ((s.stats.recvs - recvs) as usize).min(128);
        // Receives that found the ring empty go again once it has a buffer (checked after the
        // whole turn: its buffer may have come back before its completion was reaped).
        if !s.starved.is_empty() {
            let room = s.ring.buf_ring_stats(s.group).map(|b| b.in_kernel + b.free);
            if room.unwrap_or(0) > 0 {
                s.feed_starved()?;
            }
        }
        // Asked to stop: once the sends in flight are done (a zero-copy send's buffer comes
        // back after the echo is out), or after a second.
        if let Some(by) = stop_by {
            let sending = s.conns.iter().flatten().any(|c| c.sending);
            if !sending || Instant::now() >= by {
                s.stats.enters = s.ring.stats().enters;
                return Ok(s.stats);
            }
        }
    }
}

/// The connection in a token's slot if the token is of its generation (else the completion is
/// of an earlier connection in that slot, whose buffer, if any, just goes back to the ring).
fn conn_of(conns: &mut [Option<Conn>], token: u64) -> Option<(usize, &mut Conn)> {
    let slot = (token & SLOT) as usize;
    let generation = (token >> GEN_SHIFT) & GEN;
    let conn = conns.get_mut(slot)?.as_mut()?;
    (conn.generation & GEN == generation).then_some((slot, conn))
}

impl Server {
    fn push(&mut self, token: u64, op: Op) -> Res<()> {
        self.ring
            .push(Submission::new(token, op))
            .map_err(|r| r.error.into())
    }

    /// Cancels the operation of `token`. Its last completion may be reaped already, in this
    /// turn's batch, and not handled yet: then there is nothing to cancel.
    fn cancel(&mut self, token: u64) -> Res<()> {
        match self
            .ring
            .push(Submission::new(CANCEL, Op::Cancel { token }))
        {
            Ok(()) => Ok(()),
            Err(r)
                if matches!(
                    SubmitError::of(&r.error),
                    Some(SubmitError::NotInFlight { .. })
                ) =>
            {
                Ok(())
            }
            Err(r) => Err(r.error.into()),
        }
    }

    /// Arms the multishot accept unless it is in flight, paused after a failure, or as many
    /// connections wait for a slot as can be served.
    fn accept(&mut self) -> Res<()> {
        if self.accepting || self.accept_retry || self.waiting.len() >= self.cfg.max_conns as usize
        {
            return Ok(());
        }
        self.accepting = true;
        let fd = Target::Fd(self.listener.clone());
        self.push(ACCEPT, Op::AcceptMulti { fd })
    }

    /// Installs connection `fd` in a free slot, or has it wait for one.
    fn install(&mut self, fd: OwnedFd) -> Res<()> {
        let Some(slot) = self.free.pop() else {
            self.stats.waited += 1;
            self.waiting.push_back(fd);
            if self.waiting.len() >= self.cfg.max_conns as usize
                && self.accepting
                && !self.accept_cancelled
            {
                self.accept_cancelled = true;
                self.cancel(ACCEPT)?;
            }
            return Ok(());
        };
        let slot = slot as usize;
        self.generations[slot] += 1;
        self.conns[slot] = Some(Conn {
            generation: self.generations[slot],
            queue: VecDeque::new(),
            sending: false,
            receiving: false,
            multishot: false,
            cancelled: false,
            demoted: false,
            starved: false,
            closing: false,
        });
        // The table takes its own reference; the descriptor closes when the update completes.
        let op = Op::FilesUpdate {
            offset: slot as u32,
            fds: vec![Some(SharedFd::from(fd))],
        };
        self.push(self.token(INSTALL, slot), op)
    }

    fn complete(&mut self, c: Completion) -> Res<()> {
        let errno = c.errno();
        match c.token & KIND {
            ACCEPT => {
                if let Output::Fd(fd) = c.output {
                    self.stats.connections += 1;
                    self.install(fd)?;
                }
                if !c.more {
                    self.accepting = false;
                    self.accept_cancelled = false;
                    if errno.is_some_and(|e| e != libc::ECANCELED) {
                        // Out of descriptors, say: try again a little later, not at once.
                        self.stats.accept_retries += 1;
                        self.accept_retry = true;
                        let op = Op::Timeout {
                            after: ACCEPT_RETRY,
                            count: 0,
                        };
                        self.push(RETRY, op)?;
                    }
                    self.accept()?;
                }
            }
            RETRY => {
                self.accept_retry = false;
                self.accept()?;
            }
            INSTALL => {
                let Some((slot, _)) = conn_of(&mut self.conns, c.token) else {
                    return Ok(());
                };
                match c.result {
                    Ok(_) => self.arm_recv(slot)?,
                    // Not installed: nothing to close, the slot is free again.
                    Err(_) => {
                        self.conns[slot] = None;
                        self.slot_freed(slot as u32)?;
                    }
                }
            }
            CLOSE => self.slot_freed((c.token & SLOT) as u32)?,
            RECV => {
                let Some((slot, conn)) = conn_of(&mut self.conns, c.token) else {
                    return Ok(());
                };
                match (&c.result, c.output) {
                    (Ok(_), Output::Pooled(buf)) => {
                        self.stats.recvs += 1;
                        conn.queue.push_back(Chunk::Ring(buf));
                    }
                    // A demoted connection's receive into its own memory.
                    (Ok(n), Output::Buf(mut v)) if *n > 0 => {
                        self.stats.recvs += 1;
                        v.truncate(*n as usize);
                        conn.queue.push_back(Chunk::Own(v));
                    }
                    _ => {}
                }
                if !conn.demoted && conn.held() >= self.cfg.per_conn {
                    conn.demoted = true;
                    self.stats.demoted += 1;
                }
                if conn.demoted {
                    // The ring's buffers go back; the bytes stay, copied.
                    for chunk in conn.queue.iter_mut() {
                        if let Chunk::Ring(b) = chunk {
                            *chunk = Chunk::Own(b.to_vec());
                        }
                    }
                }
                if !c.more {
                    conn.receiving = false;
                    match errno {
                        // Every buffer is in flight: re-armed when one comes back.
                        Some(libc::ENOBUFS) => {
                            self.stats.enobufs += 1;
                            conn.starved = true;
                            self.starved.push(slot);
                        }
                        // Cancelled for closing, or on demotion.
                        Some(libc::ECANCELED) if conn.cancelled => {}
                        // End of stream, or a failed connection.
                        Some(_) => conn.closing = true,
                        None if c.result.as_ref().is_ok_and(|n| *n == 0) => conn.closing = true,
                        // The kernel ended the multishot with data: go on.
                        None => {}
                    }
                    conn.cancelled = false;
                }
                self.send_next(slot)?;
                self.resume_recv(slot)?;
            }
            SEND => {
                if c.more {
                    // A zero-copy send's first completion; its buffer comes with the next.
                    return Ok(());
                }
                let sent = c.result.as_ref().map(|n| *n as usize);
                let rest = match (&sent, &c.output) {
                    (Ok(n), Output::Pooled(b) | Output::Fixed(FixedBuf::Buf(b)))
                        if *n < b.len() =>
                    {
                        Some(b.to_vec()[*n..].to_vec())
                    }
                    (Ok(n), Output::Buf(v)) if *n < v.len() => Some(v[*n..].to_vec()),
                    _ => None,
                };
                // The buffer goes back to the ring here.
                drop(c.output);
                let Some((slot, conn)) = conn_of(&mut self.conns, c.token) else {
                    return Ok(());
                };
                conn.sending = false;
                match (sent, rest) {
                    (Ok(n), Some(rest)) => {
                        // A short send (rare): the rest goes as a copy, ahead of what is queued.
                        self.stats.bytes += n as u64;
                        conn.sending = true;
                        let op = Op::Send {
                            fd: Target::Fixed(slot as u32),
                            buf: rest,
                            flags: libc::MSG_NOSIGNAL,
                        };
                        return self.push(c.token, op);
                    }
                    (Ok(n), None) => self.stats.bytes += n as u64,
                    (Err(_), _) => {
                        // The connection is broken: what it still holds is not sent.
                        conn.closing = true;
                        conn.queue.clear();
                    }
                }
                self.send_next(slot)?;
                self.resume_recv(slot)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// `slot` is empty: a waiting connection takes it.
    fn slot_freed(&mut self, slot: u32) -> Res<()> {
        self.free.push(slot);
        if let Some(fd) = self.waiting.pop_front() {
            self.install(fd)?;
        }
        self.accept()
    }

    /// The token of `kind` for the connection in `slot`.
    fn token(&self, kind: u64, slot: usize) -> u64 {
        kind | (self.generations[slot] & GEN) << GEN_SHIFT | slot as u64
    }

    fn arm_recv(&mut self, slot: usize) -> Res<()> {
        let fd = Target::Fixed(slot as u32);
        let Some(conn) = self.conns[slot].as_mut() else {
            return Ok(());
        };
        conn.receiving = true;
        conn.multishot = !conn.demoted;
        let op = match conn.demoted {
            false => Op::RecvMulti {
                fd,
                group: self.group,
                flags: 0,
            },
            true => Op::Recv {
                fd,
                buf: vec![0; self.cfg.buf_size],
                flags: 0,
            },
        };
        self.push(self.token(RECV, slot), op)
    }

    /// Re-arms the receives that found the ring empty, now that it has a buffer.
    fn feed_starved(&mut self) -> Res<()> {
        for slot in std::mem::take(&mut self.starved) {
            if let Some(conn) = self.conns[slot].as_mut() {
                conn.starved = false;
                self.resume_recv(slot)?;
            }
        }
        Ok(())
    }

    /// Re-arms the receive of the connection in `slot` if it ended (and the ring had a
    /// buffer; for a demoted connection, while it holds fewer than `per_conn` buffers), or
    /// cancels it if the connection is closing (so that its close is not held up) or was
    /// demoted with its multishot receive still in flight.
    fn resume_recv(&mut self, slot: usize) -> Res<()> {
        let token = self.token(RECV, slot);
        let per_conn = self.cfg.per_conn;
        let Some(conn) = self.conns[slot].as_mut() else {
            return Ok(());
        };
        if conn.receiving {
            if (conn.closing || conn.demoted && conn.multishot) && !conn.cancelled {
                conn.cancelled = true;
                self.cancel(token)?;
            }
        } else if !conn.closing && !conn.starved && (!conn.demoted || conn.held() < per_conn) {
            self.arm_recv(slot)?;
        }
        Ok(())
    }

    /// Sends the next queued buffer of the connection in `slot` if none is being sent; closes
    /// it once it is finished, nothing is queued and its receive has ended.
    fn send_next(&mut self, slot: usize) -> Res<()> {
        let token = self.token(SEND, slot);
        let Some(conn) = self.conns[slot].as_mut() else {
            return Ok(());
        };
        if conn.sending {
            return Ok(());
        }
        let Some(chunk) = conn.queue.pop_front() else {
            if conn.closing && !conn.receiving {
                // The slot is free once the close is done; completions of this connection
                // still to come are of an earlier generation by then, and ignored.
                self.conns[slot] = None;
                self.starved.retain(|s| *s != slot);
                let fd = CloseTarget::Fixed(slot as u32);
                self.push(self.token(CLOSE, slot), Op::Close { fd })?;
            }
            return Ok(());
        };
        conn.sending = true;
        let fd = Target::Fixed(slot as u32);
        let flags = libc::MSG_NOSIGNAL;
        let op = match chunk {
            Chunk::Ring(buf) if buf.len() >= self.cfg.zero_copy_from => Op::SendZcFixed {
                fd,
                buf: FixedBuf::Buf(buf),
                flags,
            },
            Chunk::Ring(buf) => Op::SendBuf { fd, buf, flags },
            Chunk::Own(buf) => Op::Send { fd, buf, flags },
        };
        self.push(token, op)
    }
}
