//! The adversarial campaign: peers that write random values into every word of the shared
//! memory they can reach (ring headers and indices, stamps, the pair header, payloads) while
//! they push, kick and reconnect, beside honest peers that must see no difference.
//!
//! Bounded here (a few thousand writes per mode); a soak runs the same with more:
//! `SUBRING_CAMPAIGN_ITERS=1000000 cargo test --release -p subring-shm --test campaign`.

// The tests' own bookkeeping (a stop flag) is not a protocol under test: std types.
#![allow(clippy::disallowed_types)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use subring_shm::echo::{self, EchoReq, EchoResp, ECHO_PROTOCOL};
use subring_shm::queue::{Completer, Submitter};
use subring_shm::{BufHandle, Client, NotifyMode, Server, ServerConfig, ServerSleep};
use support::*;

/// Random writes per mode (override with `SUBRING_CAMPAIGN_ITERS`).
fn iterations() -> u64 {
    std::env::var("SUBRING_CAMPAIGN_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// A value a hostile writer would pick: random, or one of the edges.
    fn nasty(&mut self) -> u64 {
        match self.below(8) {
            0 => 0,
            1 => u64::MAX,
            2 => u64::from(u32::MAX),
            3 => 1 << 63,
            4 => self.below(1 << 20),
            _ => self.next(),
        }
    }
}

/// One hostile client's life: connect, scribble on the shared words below its pool while
/// pushing requests with nasty handles and kicking, until evicted or out of writes; then
/// again, until `writes` are spent. Returns (writes made, connections used).
fn scribbler(path: &std::path::Path, mode: NotifyMode, writes: u64, seed: u64) -> (u64, u64) {
    let mut rng = Rng(seed | 1);
    let mut made = 0;
    let mut connections = 0;
    while made < writes {
        let mut client = connect_retry(path, &options(mode), WAIT);
        connections += 1;
        let region = client.region().clone();
        let pool_base = client.pool().layout().base;
        let per_connection = 50 + rng.below(500);
        for _ in 0..per_connection {
            // A word of the rings or their headers (the memory both sides read).
            let offset = rng.below(pool_base / 8) * 8;
            let word = rng.nasty().to_ne_bytes();
            let handle = BufHandle {
                offset,
                len: 8,
                region: 0,
            };
            region.write_from(handle, &word).expect("inside the region");
            made += 1;
            let req = EchoReq {
                seq: rng.next(),
                op: rng.below(7) as u32,
                reserved: 0,
                buf: BufHandle {
                    offset: rng.nasty(),
                    len: rng.nasty() as u32,
                    region: rng.below(3) as u32,
                },
            };
            // Any error is this client's own problem: go on, or start over.
            if client.push(req).is_err() || client.submit().is_err() {
                break;
            }
            if rng.below(16) == 0 {
                let _ = client.wait(Some(Duration::from_millis(1)));
                while let Ok(Some(_)) = client.reap() {}
            }
        }
        drop(client);
    }
    (made, connections)
}

/// Honest round trips while hostile clients scribble: every answer right, none slow to come
/// beyond the bounded waits.
fn honest_beside_scribblers(sleep: ServerSleep) {
    let path = socket_path(&format!("campaign-{sleep:?}"));
    let mut config = ServerConfig::new(ECHO_PROTOCOL);
    config.sleep = sleep;
    let server = Server::bind(&path, config, echo::handler_factory())
        .unwrap()
        .spawn()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let checked = Arc::new(AtomicU64::new(0));
    let honest = std::thread::spawn({
        let (path, stop, checked) = (path.clone(), stop.clone(), checked.clone());
        move || {
            let mut client = connect_retry(&path, &options(NotifyMode::EventFd), WAIT);
            while !stop.load(Relaxed) {
                // Payloads in its own buffers, checked byte for byte (support::echo_many).
                echo_many(&mut client, 64, 8, 200);
                checked.fetch_add(64, Relaxed);
            }
        }
    });
    let start = Instant::now();
    let mut total = (0, 0);
    for (k, mode) in NotifyMode::ALL.into_iter().enumerate() {
        let (writes, connections) = scribbler(&path, mode, iterations(), 0x5eed + k as u64);
        total.0 += writes;
        total.1 += connections;
    }
    stop.store(true, Relaxed);
    honest
        .join()
        .expect("the honest client saw every answer right");
    let server = server.stop().expect("the server survived");
    let stats = server.stats();
    eprintln!(
        "{sleep:?} server: {} random writes over {} hostile connections in {:?}; {} honest \
         echoes checked; {} evictions",
        total.0,
        total.1,
        start.elapsed(),
        checked.load(Relaxed),
        stats.evicted
    );
    assert!(checked.load(Relaxed) > 0);
    assert_eq!(stats.clients, 0);
}

#[test]
fn scribbling_clients_do_not_hurt_an_honest_one_epoll_server() {
    honest_beside_scribblers(ServerSleep::Epoll);
}

#[test]
fn scribbling_clients_do_not_hurt_an_honest_one_futex_server() {
    honest_beside_scribblers(ServerSleep::Futex);
}

/// A server that scribbles on the pair it set up while it serves: its client gets errors
/// (`Corrupt`, `PeerGone`, timeouts) or wrong answers about its own requests, but never
/// panics or waits beyond the timeouts it gave, and never takes back a buffer it did not lend.
#[test]
fn a_scribbling_server_does_not_hurt_its_client() {
    use subring_planes::pair::{PairConfig, PairSignals, ServiceSide};
    use subring_shm::proto::{self, ServerMsg, Welcome, WireMode};
    use subring_shm::{ClientOptions, Region, RegionOptions};
    let mut rng = Rng(0xbad5_e7ee);
    let mut made = 0u64;
    let mut outcomes = [0u64; 3]; // ok, errors, timeouts
    while made < iterations() {
        let mode = NotifyMode::ALL[rng.below(4) as usize];
        let config = PairConfig {
            sq_capacity: 64,
            cq_capacity: 64,
            kick_mode: NotifyMode::Futex,
            call_mode: mode,
        };
        let region = Arc::new(
            Region::memfd("scribbling-server", 1 << 20, RegionOptions::new().id(0)).unwrap(),
        );
        let signals = PairSignals::for_config(&config).unwrap();
        let mut service =
            ServiceSide::<EchoReq, EchoResp>::create(region.clone(), 0, &config, signals.clone())
                .unwrap();
        let pool_offset: u64 = 1 << 16;
        let welcome = Welcome {
            client_id: 1,
            server_pid: std::process::id(),
            region_len: 1 << 20,
            pair_offset: 0,
            pool_offset,
            buf_size: 256,
            buf_count: 32,
            sq_capacity: 64,
            cq_capacity: 64,
            kick_mode: WireMode::Futex,
            call_mode: mode.into(),
            kick_fd: false,
            call_fd: signals.call.is_some(),
        };
        let body = postcard::to_stdvec(&ServerMsg::Welcome(welcome)).unwrap();
        let bytes = frame(proto::PROTOCOL_VERSION, proto::KIND_MESSAGE, &body);
        let (ours, theirs) = subring_shm::socket_pair().unwrap();
        use std::os::fd::{AsFd, AsRawFd};
        let mut fds = vec![region.fd().unwrap().as_raw_fd()];
        if let Some(call) = &signals.call {
            fds.push(call.as_fd().as_raw_fd());
        }
        send_raw(&ours, &bytes, &fds);
        let mut options = ClientOptions::new(ECHO_PROTOCOL)
            .buffers(256, 32)
            .capacity(64)
            .mode(mode);
        options.control_timeout = Duration::from_secs(2);
        let mut client = Client::<EchoReq, EchoResp>::from_socket(theirs, &options).unwrap();
        for _ in 0..(20 + rng.below(200)) {
            // The server's side: scribble, and sometimes serve (honestly or not).
            let offset = rng.below(pool_offset / 8) * 8;
            let handle = BufHandle {
                offset,
                len: 8,
                region: 0,
            };
            region
                .write_from(handle, &rng.nasty().to_ne_bytes())
                .unwrap();
            made += 1;
            while let Ok(Some(req)) = service.pop_request() {
                let mut resp = EchoResp {
                    seq: req.seq,
                    buf: req.buf,
                    ..EchoResp::default()
                };
                if rng.below(4) == 0 {
                    resp.buf.offset = rng.nasty();
                }
                let _ = service.complete(resp);
            }
            let _ = service.flush();
            // The client's side: a request with a buffer, a bounded wait, reaping, and taking
            // buffers back only through the pool's checks.
            if let Some(buf) = client.alloc() {
                let req = EchoReq {
                    seq: made,
                    op: echo::op::SUM,
                    reserved: 0,
                    buf: buf.lend(),
                };
                if client.push(req).is_ok() {
                    let _ = client.submit();
                }
            }
            match client.wait(Some(Duration::from_millis(1))) {
                Ok(()) => outcomes[0] += 1,
                Err(subring_shm::queue::QueueError::Timeout(_)) => outcomes[2] += 1,
                Err(_) => outcomes[1] += 1,
            }
            loop {
                match client.reap() {
                    Ok(Some(c)) => {
                        // A hostile handle is refused by the pool, never handed out.
                        let _ = client.reclaim(c.buf);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        outcomes[1] += 1;
                        break;
                    }
                }
            }
        }
        drop(client);
        drop(ours);
    }
    eprintln!(
        "a scribbling server: {made} random writes; client waits: {} ended with completions, \
         {} with errors, {} timed out",
        outcomes[0], outcomes[1], outcomes[2]
    );
}
