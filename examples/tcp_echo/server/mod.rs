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
//!
//! No client holds the server's resources for as long as it likes ([`ServerConfig`] has the
//! limits, `sweep.rs` the checks, made every [`SWEEP`]):
//! - a send from a ring buffer that has not completed within `send_stall` (its client does not
//!   read) is cancelled and goes on from a copy, so such a client keeps no ring buffer (but a
//!   zero-copy send, `zero_copy_from` and up, off by default for these buffers, keeps its
//!   buffer until the kernel's notification, which waits for the peer to take the bytes: the
//!   connection's `TCP_USER_TIMEOUT`, set to `send_timeout`, bounds that wait);
//! - a connection whose sends make no progress for `send_timeout`, or that holds more than
//!   `max_held` bytes not yet sent back, is closed;
//! - while connections wait for a slot, a connection that has done nothing for `idle_evict`
//!   is closed to make room.

mod conn;
mod handle;
mod sweep;

use conn::{conn_of, Chunk, Conn};

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
    /// How long a send from a ring buffer may wait to complete (its client not reading)
    /// before it is cancelled and its bytes go on from a copy, giving the buffer back.
    pub send_stall: Duration,
    /// How long a connection's sends may make no progress before it is closed.
    pub send_timeout: Duration,
    /// Bytes a connection may hold, received and not yet sent back, before it is closed (a
    /// client that sends and does not read).
    pub max_held: usize,
    /// While connections wait for a slot: how long a connection may do nothing (receive no
    /// bytes, have none to send) before it is closed to make room.
    pub idle_evict: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            buf_size: 4096,
            bufs: 256,
            zero_copy_from: 16 * 1024,
            max_conns: 1024,
            per_conn: 8,
            send_stall: Duration::from_secs(1),
            send_timeout: Duration::from_secs(30),
            max_held: 128 * 1024,
            idle_evict: Duration::from_secs(10),
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
    /// Sends from ring buffers cancelled after `send_stall`, to go on from a copy.
    pub stalled_sends: u64,
    /// Connections closed for sends that made no progress for `send_timeout`, or for holding
    /// more than `max_held` bytes.
    pub closed_slow: u64,
    /// Connections closed after `idle_evict` to make room for one waiting.
    pub evicted_idle: u64,
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
/// How often the connections' limits are checked (`sweep.rs`): a turn's wait ends by then.
const SWEEP: Duration = Duration::from_millis(100);

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
    /// When the connections' limits are next checked.
    next_sweep: Instant,
    /// The time at this turn's start (one clock read a turn).
    now: Instant,
    /// Closes pushed whose completion has not come (their slots are not free yet).
    closes_in_flight: usize,
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
    if cfg.max_held < cfg.buf_size {
        return Err(format!(
            "max_held {} is under a buffer ({} bytes): every receive would close its connection",
            cfg.max_held, cfg.buf_size
        )
        .into());
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
        next_sweep: Instant::now() + SWEEP,
        now: Instant::now(),
        closes_in_flight: 0,
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
        match s.ring.wait_batch(min, BATCH_WAIT, Some(SWEEP)) {
            Ok(()) | Err(QueueError::Timeout(_)) => {}
            Err(e) => return Err(e.into()),
        }
        s.now = Instant::now();
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
        if s.now >= s.next_sweep {
            s.next_sweep = s.now + SWEEP;
            s.sweep()?;
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
