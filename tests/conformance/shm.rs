//! The shm pairing: a [`Client`] talking to the echo subsystem ([`subring::shm::echo`]) served
//! by a [`Server`] on a thread of this process, over a socket pair.
//!
//! Odd tokens carry a payload in one of the client's shared buffers (`UPPER`: the server
//! answers with the payload's checksum and upper-cases it in place); even tokens are `PING`s.
//! The server thread runs the server in short `run_for` slices, publishes its counters between
//! them, and can be told to pause (which is how a completion is held back: the echo subsystem
//! has no delay of its own).

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use subring::interrupt::NotifyMode;
use subring::shm::echo::{self, checksum, EchoOp, EchoReq, EchoResp, EchoStatus, ECHO_PROTOCOL};
use subring::shm::{Client, ClientInfo, ClientOptions, Ctx, Handler, Server, ServerConfig};
use subring::sync::{AtomicU64, Ordering::SeqCst};

use crate::Transport;

/// How long each `run_for` slice of the server thread lasts.
const SLICE: Duration = Duration::from_millis(2);
/// Bytes per payload buffer.
const BUF_SIZE: u32 = 256;

enum Cmd {
    /// Stop serving until `until`; say so on `parked` first.
    Pause { until: Instant, parked: Sender<()> },
}

/// The echo subsystem's handler, counting the requests it is given (`ServerStats::requests`
/// counts taken requests and staged completions together, so it cannot say this).
struct Counting {
    inner: echo::EchoHandler,
    served: Arc<AtomicU64>,
}

impl Handler<EchoReq, EchoResp> for Counting {
    fn request(&mut self, ctx: &mut Ctx<'_, EchoResp>, request: EchoReq) {
        self.served.fetch_add(1, SeqCst);
        self.inner.request(ctx, request);
    }
}

/// The server's counters, published by its thread between slices.
#[derive(Debug, Default)]
struct Published {
    welcomed: AtomicU64,
    released: AtomicU64,
    evicted: AtomicU64,
    clients: AtomicU64,
}

fn serve(
    mut server: Server<EchoReq, EchoResp, subring::shm::PerClient<Counting>>,
    cmds: Receiver<Cmd>,
    published: Arc<Published>,
) -> Result<(), String> {
    loop {
        match cmds.try_recv() {
            Ok(Cmd::Pause { until, parked }) => {
                let _ = parked.send(());
                let left = until.saturating_duration_since(Instant::now());
                std::thread::sleep(left.min(Duration::from_secs(10)));
            }
            Err(TryRecvError::Empty) => {
                server
                    .run_for(SLICE)
                    .map_err(|e| format!("server failed: {e}"))?;
            }
            // The fixture dropped its sender: stop.
            Err(TryRecvError::Disconnected) => return Ok(()),
        }
        let s = server.stats();
        // Counters first, clients last: whoever sees the client count sees counters at least
        // as new.
        published.welcomed.store(s.welcomed, SeqCst);
        published.released.store(s.released, SeqCst);
        published.evicted.store(s.evicted, SeqCst);
        published.clients.store(s.clients, SeqCst);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ping,
    Upper { len: usize },
}

fn payload(token: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| b'a' + ((token as usize + i) % 26) as u8)
        .collect()
}

/// The server thread and what each token in flight was.
#[derive(Debug)]
pub struct ShmEcho {
    cmds: Option<Sender<Cmd>>,
    server: Option<JoinHandle<Result<(), String>>>,
    published: Arc<Published>,
    served: Arc<AtomicU64>,
    expect: HashMap<u64, Kind>,
}

impl ShmEcho {
    fn stop(&mut self) -> Result<(), String> {
        self.cmds = None; // disconnects: the server thread returns after its slice
        let Some(handle) = self.server.take() else {
            return Ok(());
        };
        let start = Instant::now();
        while !handle.is_finished() {
            if start.elapsed() > Duration::from_secs(15) {
                return Err("the server thread did not stop".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        handle
            .join()
            .map_err(|_| "the server thread panicked".to_string())?
    }

    fn expect(&mut self, token: u64, kind: Kind) {
        let old = self.expect.insert(token, kind);
        assert!(old.is_none(), "token {token} requested twice");
    }
}

impl Drop for ShmEcho {
    fn drop(&mut self) {
        let stopped = self.stop();
        if !std::thread::panicking() {
            stopped.expect("the server thread ends cleanly");
        }
    }
}

impl Transport for ShmEcho {
    type Q = Client<EchoReq, EchoResp>;
    type Mode = NotifyMode;
    /// One client's requests are taken in ring order and echo completes each at once.
    const IN_ORDER: bool = true;

    fn modes() -> Vec<NotifyMode> {
        NotifyMode::ALL.to_vec()
    }

    fn default_mode() -> NotifyMode {
        NotifyMode::Adaptive
    }

    fn open(mode: NotifyMode, capacity: u32) -> (Self, Self::Q) {
        let (server_end, client_end) = subring::shm::socket_pair().expect("socket pair");
        let served = Arc::new(AtomicU64::new(0));
        let counter = served.clone();
        let mut echo_handler = echo::handler_factory();
        let factory = move |info: &ClientInfo| Counting {
            inner: echo_handler(info),
            served: counter.clone(),
        };
        let mut server =
            Server::new(ServerConfig::new(ECHO_PROTOCOL), factory).expect("echo server");
        server.add_connection(server_end).expect("add connection");
        let (tx, rx) = mpsc::channel();
        let published = Arc::new(Published::default());
        let for_thread = published.clone();
        let thread = std::thread::Builder::new()
            .name("conformance-shm-server".into())
            .spawn(move || serve(server, rx, for_thread))
            .expect("spawn the server thread");
        let fixture = ShmEcho {
            cmds: Some(tx),
            server: Some(thread),
            published,
            served,
            expect: HashMap::new(),
        };
        // Enough buffers for every request the suite can have in flight (half carry one).
        let options = ClientOptions::new(ECHO_PROTOCOL)
            .mode(mode)
            .capacity(capacity)
            .buffers(BUF_SIZE, 4 * capacity);
        let client = Client::from_socket(client_end, &options)
            .unwrap_or_else(|e| panic!("echo client in {mode}: {e}"));
        (fixture, client)
    }

    fn request(&mut self, q: &mut Self::Q, token: u64) -> EchoReq {
        if token % 2 == 0 {
            self.expect(token, Kind::Ping);
            return EchoReq {
                seq: token,
                op: EchoOp::PING,
                ..EchoReq::default()
            };
        }
        let mut buf = q
            .alloc()
            .unwrap_or_else(|| panic!("token {token}: the client's buffer pool is exhausted"));
        let len = 64 + (token as usize % 4) * 48;
        buf.fill_from(&payload(token, len));
        self.expect(token, Kind::Upper { len });
        EchoReq {
            seq: token,
            op: EchoOp::UPPER,
            reserved: 0,
            buf: buf.lend(),
        }
    }

    /// Pauses the server (and waits until it has parked), then returns a `PING`.
    fn delayed(&mut self, _q: &mut Self::Q, token: u64, delay: Duration) -> EchoReq {
        let (parked_tx, parked) = mpsc::channel();
        self.cmds
            .as_ref()
            .expect("server running")
            .send(Cmd::Pause {
                until: Instant::now() + delay,
                parked: parked_tx,
            })
            .expect("the server thread takes commands");
        parked
            .recv_timeout(Duration::from_secs(10))
            .expect("the server thread parks");
        self.expect(token, Kind::Ping);
        EchoReq {
            seq: token,
            op: EchoOp::PING,
            ..EchoReq::default()
        }
    }

    fn check(&mut self, q: &mut Self::Q, c: EchoResp) -> Result<u64, String> {
        let token = c.seq;
        let kind = self
            .expect
            .remove(&token)
            .ok_or_else(|| format!("completion for seq {token}, which was never requested"))?;
        if c.status != EchoStatus::OK {
            return Err(format!("seq {token} ({kind:?}): status {:?}", c.status));
        }
        match kind {
            Kind::Ping => {
                if c.sum != 0 || c.buf.len != 0 {
                    return Err(format!("seq {token}: a ping came back with {c:?}"));
                }
            }
            Kind::Upper { len } => {
                let buf = q
                    .reclaim(c.buf)
                    .map_err(|e| format!("seq {token}: our buffer did not come back: {e}"))?;
                let sent = payload(token, len);
                if c.sum != checksum(&sent) {
                    return Err(format!(
                        "seq {token}: checksum {:#x} of what the server read, expected {:#x}",
                        c.sum,
                        checksum(&sent)
                    ));
                }
                let buf = buf.to_vec();
                if buf != sent.to_ascii_uppercase() {
                    return Err(format!(
                        "seq {token}: payload not upper-cased in place: {:?}",
                        String::from_utf8_lossy(&buf)
                    ));
                }
            }
        }
        Ok(token)
    }

    /// The server takes a client's requests only while its completion ring has room.
    fn outstanding_limit(capacity: usize) -> Option<usize> {
        Some(2 * capacity)
    }

    /// A spin client is polled by the server and never rings.
    fn doorbell_always_skipped(mode: NotifyMode) -> bool {
        mode == NotifyMode::Spin
    }

    fn waiter_sleeps(mode: NotifyMode) -> bool {
        mode != NotifyMode::Spin
    }

    fn served(&self) -> Option<u64> {
        Some(self.served.load(SeqCst))
    }

    /// The server sees the client leave (`stats().clients` back to 0), releasing it without
    /// an eviction.
    fn finish(&mut self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        let p = &self.published;
        // `clients` is published last, so a snapshot showing it 0 with a release counted is
        // one taken after the client left (not the initial zeroes).
        while p.clients.load(SeqCst) != 0 || p.released.load(SeqCst) == 0 {
            if start.elapsed() > limit {
                return Err(format!(
                    "the server still counts {} clients {limit:?} after the client's drop",
                    p.clients.load(SeqCst)
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let welcomed = p.welcomed.load(SeqCst);
        let (released, evicted) = (p.released.load(SeqCst), p.evicted.load(SeqCst));
        if welcomed != 1 || released != 1 || evicted != 0 {
            return Err(format!(
                "the connection ended with welcomed {welcomed}, released {released}, \
                 evicted {evicted} (expected 1, 1, 0)"
            ));
        }
        self.stop()
    }
}
