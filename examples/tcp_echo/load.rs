//! The load generator: connections on one ring of its own, each sending a message, waiting for
//! the whole echo, checking every byte of it, and sending the next, until the time is up.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use subring_planes::queue::{Completer, QueueError, Submitter};
use subring_uring::{
    BufGroup, BufRingOptions, Completion, OnFull, Op, Output, Submission, Target, Uring,
};

use super::server::Res;

/// What a run measured.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Requests echoed and checked.
    pub requests: u64,
    /// How long the run took.
    pub elapsed: Duration,
    /// Round-trip latencies, in nanoseconds, sorted.
    pub latencies_ns: Vec<u64>,
}

impl LoadReport {
    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency at quantile `q` (0..=1).
    pub fn quantile(&self, q: f64) -> Duration {
        let n = self.latencies_ns.len();
        if n == 0 {
            return Duration::ZERO;
        }
        let i = ((n - 1) as f64 * q).round() as usize;
        Duration::from_nanos(self.latencies_ns[i])
    }
}

const SEND: u64 = 1 << 40;
const RECV: u64 = 2 << 40;
const KIND: u64 = 0xff << 40;

struct Conn {
    /// The socket, registered in the ring's file table at this connection's index.
    stream: TcpStream,
    /// The message in flight, to check its echo against.
    msg: Vec<u8>,
    /// A buffer for the next send, when no send holds it.
    spare: Option<Vec<u8>>,
    /// Bytes of the echo received and checked so far.
    got: usize,
    /// The number of the message in flight (or last sent).
    seq: u64,
    sent_at: Instant,
}

/// Writes message `seq` of connection `conn` into `out`.
fn message(conn: usize, seq: u64, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        *b = (conn as u64 * 31 + seq * 7 + i as u64 / 3) as u8;
    }
}

/// Runs `conns` connections to `addr`, `size`-byte messages, for `duration`.
pub fn load(addr: SocketAddr, conns: usize, size: usize, duration: Duration) -> Res<LoadReport> {
    Load::connect(addr, conns, size)?.run(duration)
}

/// Connections to one server on a ring of the generator's own, loaded in runs: between runs
/// no message is in flight (the receives stay armed), so several servers can be loaded by
/// turns, each on its own connections.
///
/// Each connection keeps a multishot receive armed on a provided-buffer ring, and checks each
/// buffer against the message in place: the generator costs as little as it can, so that the
/// rate shows the server.
pub struct Load {
    ring: Uring,
    group: BufGroup,
    conns: Vec<Conn>,
    size: usize,
}

impl Load {
    /// Opens `conns` connections to `addr` for `size`-byte messages.
    pub fn connect(addr: SocketAddr, conns: usize, size: usize) -> Res<Load> {
        let mut ring = Uring::builder()
            .entries(512)
            .single_issuer(true)
            .defer_taskrun(true)
            .on_full(OnFull::Submit)
            .build()?;
        let bufs = (2 * conns).next_power_of_two().max(16);
        let group = ring.register_buf_ring(BufRingOptions::new(0, size.max(64), bufs))?;
        let mut load = Load {
            ring,
            group,
            conns: Vec::with_capacity(conns),
            size,
        };
        for _ in 0..conns {
            let stream = TcpStream::connect(addr)?;
            stream.set_nodelay(true)?;
            load.conns.push(Conn {
                stream,
                msg: vec![0; size],
                spare: Some(vec![0; size]),
                got: 0,
                seq: 0,
                sent_at: Instant::now(),
            });
        }
        // Direct descriptors: an operation on one needs no descriptor lookup.
        let streams: Vec<&TcpStream> = load.conns.iter().map(|c| &c.stream).collect();
        load.ring.register_files(&streams)?;
        for id in 0..conns {
            load.recv(id)?;
        }
        Ok(load)
    }

    fn push(&mut self, token: u64, op: Op) -> Res<()> {
        self.ring
            .push(Submission::new(token, op))
            .map_err(|r| r.error.into())
    }

    fn recv(&mut self, id: usize) -> Res<()> {
        let op = Op::RecvMulti {
            fd: Target::Fixed(id as u32),
            group: self.group,
            flags: 0,
        };
        self.push(RECV | id as u64, op)
    }

    /// Sends connection `id` its next message.
    fn send(&mut self, id: usize) -> Res<()> {
        let c = &mut self.conns[id];
        c.seq += 1;
        message(id, c.seq, &mut c.msg);
        let mut buf = c.spare.take().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(&c.msg);
        c.sent_at = Instant::now();
        let fd = Target::Fixed(id as u32);
        self.push(SEND | id as u64, Op::Send { fd, buf, flags: 0 })
    }

    /// Loads the server for `duration`: every connection sends a message, waits for its whole
    /// echo, checks it and sends the next, until the time is up; then each finishes the message
    /// it has in flight.
    pub fn run(&mut self, duration: Duration) -> Res<LoadReport> {
        let start = Instant::now();
        let end = start + duration;
        let give_up = end + Duration::from_secs(10);
        for id in 0..self.conns.len() {
            self.send(id)?;
        }
        let mut report = LoadReport::default();
        let mut running = self.conns.len();
        let mut done = Vec::with_capacity(256);
        // Echoes completed in the last turn, and sends queued since.
        let (mut last, mut sends) = (0, running);
        while running > 0 {
            if Instant::now() > give_up {
                return Err(format!(
                    "no echo for 10 s after the run: {running} connections stalled"
                )
                .into());
            }
            // Like the server: one enter per batch, for the queued sends' completions and
            // half as many echoes as the last turn brought, or what came within 20 us.
            let min = match last {
                0 | 1 => 1,
                n => sends + n / 2,
            };
            (last, sends) = (0, 0);
            match self
                .ring
                .wait_batch(min, Duration::from_micros(20), Some(Duration::from_secs(1)))
            {
                Ok(()) | Err(QueueError::Timeout(_)) => {}
                Err(e) => return Err(e.into()),
            }
            done.clear();
            self.ring.reap_into(&mut done, 256)?;
            for comp in done.drain(..) {
                let id = (comp.token & !KIND) as usize;
                if comp.token & KIND == SEND {
                    self.sent(id, comp)?;
                    continue;
                }
                if !self.received(id, comp)? {
                    continue;
                }
                report.requests += 1;
                last += 1;
                let c = &mut self.conns[id];
                report
                    .latencies_ns
                    .push(c.sent_at.elapsed().as_nanos() as u64);
                if Instant::now() >= end {
                    running -= 1;
                    continue;
                }
                sends += 1;
                self.send(id)?;
            }
        }
        report.elapsed = start.elapsed();
        report.latencies_ns.sort_unstable();
        Ok(report)
    }

    /// A send completed: keeps its buffer for the next, or sends the rest of a short one.
    fn sent(&mut self, id: usize, comp: Completion) -> Res<()> {
        let n = comp.result? as usize;
        let Output::Buf(buf) = comp.output else {
            return Err("a send without its buffer".into());
        };
        if n < buf.len() {
            let fd = Target::Fixed(id as u32);
            let rest = buf[n..].to_vec();
            return self.push(
                comp.token,
                Op::Send {
                    fd,
                    buf: rest,
                    flags: 0,
                },
            );
        }
        self.conns[id].spare = Some(buf);
        Ok(())
    }

    /// A receive completed: checks its bytes against the message, re-arms a receive that
    /// ended; true once the whole echo is in.
    fn received(&mut self, id: usize, comp: Completion) -> Res<bool> {
        let errno = comp.errno();
        let buf = match (comp.result, comp.output) {
            (Ok(_), Output::Pooled(buf)) => buf,
            (Err(_), _) if errno == Some(libc::ENOBUFS) => {
                self.recv(id)?;
                return Ok(false);
            }
            (Err(e), _) => return Err(e.into()),
            (Ok(_), _) => return Err(format!("connection {id}: the server closed it").into()),
        };
        if !comp.more {
            self.recv(id)?;
        }
        let c = &mut self.conns[id];
        let Some(expect) = c.msg.get(c.got..c.got + buf.len()) else {
            return Err(format!("connection {id}, message {}: the echo is too long", c.seq).into());
        };
        let mut at = 0;
        let mut same = true;
        buf.bytes().for_each_chunk(|chunk| {
            same &= chunk == &expect[at..at + chunk.len()];
            at += chunk.len();
        });
        if !same {
            return Err(format!("connection {id}, message {}: the echo differs", c.seq).into());
        }
        c.got += buf.len();
        if c.got < self.size {
            return Ok(false);
        }
        c.got = 0;
        Ok(true)
    }
}
