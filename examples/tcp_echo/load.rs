//! The load generator: connections on one ring of its own, each sending a message, waiting for
//! the whole echo, checking every byte of it, and sending the next, until the time is up.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use subring_planes::queue::{Completer, QueueError, Submitter};
use subring_uring::{OnFull, Op, Output, SharedFd, Submission, Target, Uring};

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
    fd: SharedFd,
    msg: Vec<u8>,
    got: Vec<u8>,
    seq: u64,
    sent_at: Instant,
    done: bool,
}

fn message(conn: usize, seq: u64, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (conn as u64 * 31 + seq * 7 + i as u64 / 3) as u8)
        .collect()
}

/// Runs `conns` connections to `addr`, `size`-byte messages, for `duration`.
pub fn load(addr: SocketAddr, conns: usize, size: usize, duration: Duration) -> Res<LoadReport> {
    let mut ring = Uring::builder()
        .entries(512)
        .single_issuer(true)
        .defer_taskrun(true)
        .on_full(OnFull::Submit)
        .build()?;
    let mut all = Vec::with_capacity(conns);
    for id in 0..conns {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        all.push(Conn {
            fd: SharedFd::from(OwnedFd::from(stream)),
            msg: message(id, 0, size),
            got: Vec::with_capacity(size),
            seq: 0,
            sent_at: Instant::now(),
            done: false,
        });
    }
    let push = |ring: &mut Uring, token: u64, op: Op| -> Res<()> {
        ring.push(Submission::new(token, op))
            .map_err(|r| r.error.into())
    };
    let start = Instant::now();
    let end = start + duration;
    let give_up = end + Duration::from_secs(10);
    for (id, c) in all.iter_mut().enumerate() {
        c.sent_at = Instant::now();
        let fd = Target::Fd(c.fd.clone());
        push(
            &mut ring,
            SEND | id as u64,
            Op::Send {
                fd: fd.clone(),
                buf: c.msg.clone(),
                flags: 0,
            },
        )?;
        push(
            &mut ring,
            RECV | id as u64,
            Op::Recv {
                fd,
                buf: vec![0; size],
                flags: 0,
            },
        )?;
    }
    let mut report = LoadReport::default();
    let mut running = conns;
    let mut done = Vec::with_capacity(256);
    while running > 0 {
        if Instant::now() > give_up {
            return Err(
                format!("no echo for 10 s after the run: {running} connections stalled").into(),
            );
        }
        match ring.wait(Some(Duration::from_secs(1))) {
            Ok(()) | Err(QueueError::Timeout(_)) => {}
            Err(e) => return Err(e.into()),
        }
        done.clear();
        ring.reap_into(&mut done, 256)?;
        for comp in done.drain(..) {
            let id = (comp.token & !KIND) as usize;
            let n = comp.result? as usize;
            let c = &mut all[id];
            let Output::Buf(buf) = comp.output else {
                return Err("a send or recv without its buffer".into());
            };
            let fd = Target::Fd(c.fd.clone());
            if comp.token & KIND == SEND {
                if n < buf.len() {
                    push(
                        &mut ring,
                        comp.token,
                        Op::Send {
                            fd,
                            buf: buf[n..].to_vec(),
                            flags: 0,
                        },
                    )?;
                }
                continue;
            }
            if n == 0 {
                return Err(format!("connection {id}: the server closed it").into());
            }
            c.got.extend_from_slice(&buf);
            if c.got.len() < size {
                push(
                    &mut ring,
                    comp.token,
                    Op::Recv {
                        fd,
                        buf: vec![0; size - c.got.len()],
                        flags: 0,
                    },
                )?;
                continue;
            }
            if c.got != c.msg {
                return Err(format!("connection {id}, message {}: the echo differs", c.seq).into());
            }
            report.requests += 1;
            report
                .latencies_ns
                .push(c.sent_at.elapsed().as_nanos() as u64);
            c.got.clear();
            if Instant::now() >= end {
                c.done = true;
                running -= 1;
                continue;
            }
            c.seq += 1;
            c.msg = message(id, c.seq, size);
            c.sent_at = Instant::now();
            push(
                &mut ring,
                SEND | id as u64,
                Op::Send {
                    fd: fd.clone(),
                    buf: c.msg.clone(),
                    flags: 0,
                },
            )?;
            push(
                &mut ring,
                RECV | id as u64,
                Op::Recv {
                    fd,
                    buf: vec![0; size],
                    flags: 0,
                },
            )?;
        }
    }
    report.elapsed = start.elapsed();
    report.latencies_ns.sort_unstable();
    debug_assert!(all.iter().all(|c| c.done));
    Ok(report)
}
