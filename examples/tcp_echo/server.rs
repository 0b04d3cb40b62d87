//! The echo server: one thread, one ring. A multishot accept takes the connections, a multishot
//! recv per connection fills buffers the kernel picks from a provided-buffer ring, and each
//! buffer is sent straight back (zero-copy from registered memory when it is large enough to
//! pay), then dropped, which returns it to the ring. Sends on one connection go one at a time,
//! so the echo keeps its order.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use subring_planes::data::{Buf, Region, RegionOptions};
use subring_planes::queue::{Completer, QueueError, Submitter};
use subring_uring::{
    BufGroup, BufRingOptions, Completion, FixedBuf, OnFull, Op, Output, SharedFd, Submission,
    Target, Uring,
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            buf_size: 4096,
            bufs: 256,
            zero_copy_from: 16 * 1024,
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
    /// Multishot receives re-armed after the ring ran out of buffers.
    pub enobufs: u64,
    /// `io_uring_enter` calls.
    pub enters: u64,
}

/// Errors of the example: each names what failed.
pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const ACCEPT: u64 = 1 << 40;
const STOP: u64 = 2 << 40;
const RECV: u64 = 3 << 40;
const SEND: u64 = 4 << 40;
const KIND: u64 = 0xff << 40;

struct Conn {
    fd: SharedFd,
    /// Received buffers waiting for their turn to be sent back.
    queue: VecDeque<Buf>,
    sending: bool,
    /// The peer finished (or the connection failed): close once the queue is sent.
    closing: bool,
}

struct Server {
    ring: Uring,
    group: BufGroup,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    cfg: ServerConfig,
    stats: ServerStats,
}

/// Echoes every connection on `listener` until `stop` (an eventfd, say) becomes readable, then
/// finishes the sends in flight (waiting at most a second for them).
pub fn serve(listener: &TcpListener, stop: BorrowedFd<'_>, cfg: ServerConfig) -> Res<ServerStats> {
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
    let group =
        ring.register_buf_ring(BufRingOptions::new(0, cfg.buf_size, cfg.bufs).region(region, 0))?;
    let mut s = Server {
        ring,
        group,
        conns: Vec::new(),
        free: Vec::new(),
        cfg,
        stats: ServerStats::default(),
    };
    s.push(
        ACCEPT,
        Op::AcceptMulti {
            fd: Target::fd(listener.as_fd().try_clone_to_owned()?),
        },
    )?;
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
        // last turn brought, or whatever came within 20 us. (Re-arms queued with the sends do
        // not complete at once and a zero-copy send completes twice: the count is a target, and
        // the 20 us bound it.) (Counting completions without the
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
            .wait_batch(min, Duration::from_micros(20), Some(Duration::from_secs(1)))
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
            s.complete(c, listener)?;
        }
        last = ((s.stats.recvs - recvs) as usize).min(128);
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

impl Server {
    fn push(&mut self, token: u64, op: Op) -> Res<()> {
        self.ring
            .push(Submission::new(token, op))
            .map_err(|r| r.error.into())
    }

    fn complete(&mut self, c: Completion, listener: &TcpListener) -> Res<()> {
        let id = (c.token & !KIND) as usize;
        match c.token & KIND {
            ACCEPT => {
                if let Output::Fd(fd) = c.output {
                    self.stats.connections += 1;
                    let fd = SharedFd::from(fd);
                    let id = self.free.pop().unwrap_or(self.conns.len());
                    let conn = Conn {
                        fd: fd.clone(),
                        queue: VecDeque::new(),
                        sending: false,
                        closing: false,
                    };
                    match self.conns.get_mut(id) {
                        Some(slot) => *slot = Some(conn),
                        None => self.conns.push(Some(conn)),
                    }
                    self.arm_recv(id)?;
                }
                if !c.more {
                    self.push(
                        ACCEPT,
                        Op::AcceptMulti {
                            fd: Target::fd(listener.as_fd().try_clone_to_owned()?),
                        },
                    )?;
                }
            }
            RECV => {
                let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else {
                    return Ok(());
                };
                match (&c.result, c.output) {
                    (Ok(_), Output::Pooled(buf)) => {
                        self.stats.recvs += 1;
                        conn.queue.push_back(buf);
                        if !c.more {
                            self.arm_recv(id)?;
                        }
                    }
                    (Err(e), _) if e.to_string().contains("os error 105") => {
                        // ENOBUFS: every buffer is in flight; they come back as sends finish.
                        self.stats.enobufs += 1;
                        self.arm_recv(id)?;
                    }
                    // End of stream, or a failed connection.
                    _ if !c.more => conn.closing = true,
                    _ => {}
                }
                self.send_next(id)?;
            }
            SEND => {
                if c.more {
                    // A zero-copy send's first completion; its buffer comes with the next.
                    return Ok(());
                }
                let sent = c.result.as_ref().map(|n| *n as usize);
                let buf = match c.output {
                    Output::Pooled(b) | Output::Fixed(FixedBuf::Buf(b)) => Some(b),
                    _ => None,
                };
                let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else {
                    return Ok(());
                };
                conn.sending = false;
                match (sent, buf) {
                    (Ok(n), Some(b)) if n < b.len() => {
                        // A short send (rare): the rest goes as a copy, ahead of what is queued.
                        let rest = b.to_vec()[n..].to_vec();
                        self.stats.bytes += n as u64;
                        conn.sending = true;
                        let fd = Target::Fd(conn.fd.clone());
                        self.push(
                            SEND | id as u64,
                            Op::Send {
                                fd,
                                buf: rest,
                                flags: libc::MSG_NOSIGNAL,
                            },
                        )?;
                        return Ok(());
                    }
                    (Ok(n), _) => self.stats.bytes += n as u64,
                    (Err(_), _) => conn.closing = true,
                }
                self.send_next(id)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn arm_recv(&mut self, id: usize) -> Res<()> {
        let Some(conn) = self.conns.get(id).and_then(Option::as_ref) else {
            return Ok(());
        };
        let op = Op::RecvMulti {
            fd: Target::Fd(conn.fd.clone()),
            group: self.group,
            flags: 0,
        };
        self.push(RECV | id as u64, op)
    }

    /// Sends the next queued buffer of connection `id` if none is being sent; closes it once
    /// it is finished and everything is sent.
    fn send_next(&mut self, id: usize) -> Res<()> {
        let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else {
            return Ok(());
        };
        if conn.sending {
            return Ok(());
        }
        let Some(buf) = conn.queue.pop_front() else {
            if conn.closing {
                // In-flight operations hold the descriptor until they complete.
                self.conns[id] = None;
                self.free.push(id);
            }
            return Ok(());
        };
        conn.sending = true;
        let fd = Target::Fd(conn.fd.clone());
        let flags = libc::MSG_NOSIGNAL;
        let op = if buf.len() >= self.cfg.zero_copy_from {
            Op::SendZcFixed {
                fd,
                buf: FixedBuf::Buf(buf),
                flags,
            }
        } else {
            Op::SendBuf { fd, buf, flags }
        };
        self.push(SEND | id as u64, op)
    }
}
