//! A sample subsystem: an echo service with zero-copy payloads, used by the examples, the
//! tests and the benchmark (and a template for a real service).
//!
//! The client lends a buffer holding a payload in an [`EchoReq`]. The server reads it in place,
//! answers with its checksum and — for [`EchoOp::UPPER`] — rewrites it in place to upper case, then
//! returns the buffer in an [`EchoResp`]. A handle that does not name the client's memory is
//! answered with [`EchoStatus::BAD_HANDLE`], and the server goes on serving.

use std::fmt;

use bytemuck::{Pod, Zeroable};
use subring_planes::data::BufHandle;

use crate::{ClientInfo, Ctx};

/// The application protocol name of the echo service.
pub const ECHO_PROTOCOL: &str = "subring-echo/1";

/// A request operation: a `u32` on the wire (any value is a valid entry; the server answers
/// an unknown one with [`EchoStatus::BAD_OP`]), named by the constants.
#[repr(transparent)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct EchoOp(pub u32);

impl EchoOp {
    /// Answer with the checksum of the payload (read in place).
    pub const SUM: EchoOp = EchoOp(1);
    /// Answer with the checksum, and upper-case the payload in place.
    pub const UPPER: EchoOp = EchoOp(2);
    /// Answer at once, touching no payload (round-trip measurements).
    pub const PING: EchoOp = EchoOp(3);
    /// Answer with the server's counters (only through [`EchoHandler`]): `sum` = clients
    /// connected now, `value` = connections that have ended.
    pub const STATS: EchoOp = EchoOp(4);
    /// Read every byte of the payload in place (summing it as 64-bit words, as fast as memory
    /// allows) and answer with the sum in `value`: what a subsystem consuming bulk data does.
    pub const TOUCH: EchoOp = EchoOp(5);
}

impl fmt::Debug for EchoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EchoOp::SUM => f.write_str("SUM"),
            EchoOp::UPPER => f.write_str("UPPER"),
            EchoOp::PING => f.write_str("PING"),
            EchoOp::STATS => f.write_str("STATS"),
            EchoOp::TOUCH => f.write_str("TOUCH"),
            EchoOp(other) => write!(f, "EchoOp({other})"),
        }
    }
}

/// A completion status: a `u32` on the wire, named by the constants.
#[repr(transparent)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct EchoStatus(pub u32);

impl EchoStatus {
    /// Done.
    pub const OK: EchoStatus = EchoStatus(0);
    /// The handle did not name the client's memory.
    pub const BAD_HANDLE: EchoStatus = EchoStatus(1);
    /// Unknown operation.
    pub const BAD_OP: EchoStatus = EchoStatus(2);
    /// The payload is longer than [`MAX_PAYLOAD`].
    pub const TOO_LONG: EchoStatus = EchoStatus(3);
}

impl fmt::Debug for EchoStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EchoStatus::OK => f.write_str("OK"),
            EchoStatus::BAD_HANDLE => f.write_str("BAD_HANDLE"),
            EchoStatus::BAD_OP => f.write_str("BAD_OP"),
            EchoStatus::TOO_LONG => f.write_str("TOO_LONG"),
            EchoStatus(other) => write!(f, "EchoStatus({other})"),
        }
    }
}

/// The longest payload one request may have the server touch (1 MiB): a service bounds its
/// own work per request, so that one client's request cannot hold the server's turn (with
/// the server's per-turn byte budget, [`ServerConfig::turn_bytes`](crate::ServerConfig), this
/// bounds what one client costs the others).
pub const MAX_PAYLOAD: u32 = 1 << 20;

/// An echo request.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct EchoReq {
    /// The client's sequence number, echoed back.
    pub seq: u64,
    /// What to do.
    pub op: EchoOp,
    /// Zero.
    pub reserved: u32,
    /// The payload (empty for `PING` and `STATS`).
    pub buf: BufHandle,
}

/// An echo completion.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct EchoResp {
    /// The request's sequence number.
    pub seq: u64,
    /// How it went.
    pub status: EchoStatus,
    /// Checksum of the payload as the server read it ([`checksum`]).
    pub sum: u32,
    /// An operation-specific value.
    pub value: u64,
    /// The payload buffer, returned.
    pub buf: BufHandle,
}

/// FNV-1a over `bytes`, folded to 32 bits: what the server answers for a payload.
pub fn checksum(bytes: &[u8]) -> u32 {
    fold(fnv(FNV_START, bytes))
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn fold(h: u64) -> u32 {
    (h ^ (h >> 32)) as u32
}

/// The wrapping sum of `bytes` read as little-endian 64-bit words (a short tail padded with
/// zeros): reads every byte once, at memory speed.
pub fn word_sum(bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    let mut sum = chunks
        .by_ref()
        .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunk")))
        .fold(0u64, u64::wrapping_add);
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut last = [0u8; 8];
        last[..tail.len()].copy_from_slice(tail);
        sum = sum.wrapping_add(u64::from_le_bytes(last));
    }
    sum
}

/// Serves one echo request (every operation but `STATS`, which [`EchoHandler`] answers).
pub fn serve(ctx: &mut Ctx<'_, EchoResp>, req: EchoReq) {
    let mut resp = EchoResp {
        seq: req.seq,
        buf: req.buf,
        ..EchoResp::default()
    };
    match req.op {
        EchoOp::SUM | EchoOp::TOUCH | EchoOp::UPPER if req.buf.len > MAX_PAYLOAD => {
            resp.status = EchoStatus::TOO_LONG
        }
        EchoOp::PING => {}
        // The payload is shared memory the client can write while it is read: it is copied
        // out a chunk at a time (`SharedBytes`), and each byte is seen once.
        EchoOp::SUM => match ctx.payload(req.buf) {
            Ok(bytes) => {
                let mut h = FNV_START;
                bytes.for_each_chunk(|c| h = fnv(h, c));
                resp.sum = fold(h);
            }
            Err(_) => resp.status = EchoStatus::BAD_HANDLE,
        },
        EchoOp::TOUCH => match ctx.payload(req.buf) {
            // In place (volatile reads): the same sum as `word_sum`.
            Ok(bytes) => resp.value = bytes.sum_words_le(),
            Err(_) => resp.status = EchoStatus::BAD_HANDLE,
        },
        EchoOp::UPPER => match ctx.payload(req.buf) {
            Ok(bytes) => {
                let mut h = FNV_START;
                bytes.update_chunks(|c| {
                    h = fnv(h, c);
                    c.make_ascii_uppercase();
                });
                resp.sum = fold(h);
            }
            Err(_) => resp.status = EchoStatus::BAD_HANDLE,
        },
        _ => resp.status = EchoStatus::BAD_OP,
    }
    ctx.complete(resp);
}

/// A handler factory for [`Server::new`](crate::Server::new): each client gets a handler
/// that serves [`serve`] and reports the shared counters for [`EchoOp::STATS`].
pub fn handler_factory() -> impl FnMut(&ClientInfo) -> EchoHandler + Send + 'static {
    let counters = std::sync::Arc::new(SharedCounters::default());
    move |_info| EchoHandler::new(counters.clone())
}

/// Counters shared by the handlers of one server.
#[derive(Debug, Default)]
pub struct SharedCounters {
    live: subring_planes::sync::AtomicU64,
    ended: subring_planes::sync::AtomicU64,
}

/// The echo handler [`handler_factory`] makes.
#[derive(Debug)]
pub struct EchoHandler {
    counters: std::sync::Arc<SharedCounters>,
}

impl EchoHandler {
    fn new(counters: std::sync::Arc<SharedCounters>) -> Self {
        counters
            .live
            .fetch_add(1, subring_planes::sync::Ordering::Relaxed);
        EchoHandler { counters }
    }
}

impl Drop for EchoHandler {
    fn drop(&mut self) {
        use subring_planes::sync::Ordering::Relaxed;
        self.counters.live.fetch_sub(1, Relaxed);
        self.counters.ended.fetch_add(1, Relaxed);
    }
}

impl crate::Handler<EchoReq, EchoResp> for EchoHandler {
    fn request(&mut self, ctx: &mut Ctx<'_, EchoResp>, req: EchoReq) {
        use subring_planes::sync::Ordering::Relaxed;
        if req.op == EchoOp::STATS {
            ctx.complete(EchoResp {
                seq: req.seq,
                sum: self.counters.live.load(Relaxed) as u32,
                value: self.counters.ended.load(Relaxed),
                buf: req.buf,
                ..EchoResp::default()
            });
            return;
        }
        serve(ctx, req);
    }
}
