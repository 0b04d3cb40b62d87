//! One thread driving both ends of a subring-shm echo round trip, for counting instructions per
//! round trip with callgrind (perf counters do not work on the project's VM, and one thread
//! has no cache-line traffic or spinning to blur the count):
//!
//! ```sh
//! cargo build --release -p subring-bench --example rt_ops
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/rt.out target/release/examples/rt_ops
//! callgrind_annotate --inclusive=yes /tmp/rt.out | head -40
//! ```
//!
//! A client in spin mode (the bench's `subring spin` row) pushes a `PING`, submits it, the
//! server runs one turn ([`Server::poll`]) and the client reaps the answer: 1,000,000 times,
//! so the instruction total divided by 10^6 is the instructions per round trip, both sides and
//! the loop included (the set-up, a handshake on a thread, is a few million more).
//! `Server::poll`'s inclusive count divided by 10^6 is the server's share.
//!
//! With the argument `touch`, each request is instead a 4 KiB payload the client writes into
//! one of its shared buffers and the server word-sums in place (`TOUCH`), as the bench's
//! zero-copy stream does: the per-payload instructions of that row, one at a time. With
//! `stream`, the client drives the same payloads as the bench's zero-copy stream does: up to
//! 64 in flight, lent through a `Lender`, a submit every 16, the answers reaped in batches and
//! their buffers taken back (the server's turns run between the client's pushes and reaps);
//! 100,000 payloads, so the total divided by 10^5 is the instructions per payload and the
//! client's share is the total less `Server::poll`'s.

use std::hint::black_box;
use std::time::{Duration, Instant};

use subring_shm::echo::{self, EchoOp, EchoReq, EchoResp, EchoStatus, ECHO_PROTOCOL};
use subring_shm::queue::{Completer, Submitter};
use subring_shm::{Client, ClientOptions, NotifyMode, Server, ServerConfig};

const N: u64 = 1_000_000;
const PAYLOAD: usize = 4096;
/// Payloads in flight in `stream` mode (the bench's zero-copy stream's window).
const IN_FLIGHT: usize = 64;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (server_end, client_end) = subring_shm::socket_pair()?;
    let mut server = Server::new(ServerConfig::new(ECHO_PROTOCOL), echo::handler_factory())?;
    server.add_connection(server_end)?;
    // The handshake needs the server turning while the client connects.
    let serving = std::thread::spawn(move || -> Result<_, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.stats().welcomed == 0 {
            if Instant::now() > deadline {
                return Err("no handshake within 10 s".into());
            }
            server
                .run_for(Duration::from_millis(1))
                .map_err(|e| e.to_string())?;
        }
        Ok(server)
    });
    let (touch, stream) = match std::env::args().nth(1).as_deref() {
        None => (false, false),
        Some("touch") => (true, false),
        Some("stream") => (true, true),
        Some(other) => return Err(format!("usage: rt_ops [touch | stream], not {other:?}").into()),
    };
    let options = ClientOptions::new(ECHO_PROTOCOL)
        .mode(NotifyMode::Spin)
        .buffers(PAYLOAD as u32, IN_FLIGHT as u32);
    let mut client: Client<EchoReq, EchoResp> = Client::from_socket(client_end, &options)?;
    let mut server = serving.join().map_err(|_| "server thread panicked")??;
    let source: Vec<u8> = (0..PAYLOAD).map(|i| (i * 7) as u8).collect();
    let expect = echo::word_sum(&source);
    let trips = if touch { N / 10 } else { N };
    if stream {
        let turn = || server.poll().map(drop);
        return stream_payloads(&mut client, turn, &source, expect, trips as usize);
    }
    let turn = || server.poll().map(drop);
    if touch {
        round_trips::<true>(&mut client, turn, &source, expect, trips)
    } else {
        round_trips::<false>(&mut client, turn, &source, expect, trips)
    }
}

/// `trips` echo round trips, one at a time, a server turn between each push and reap: `PING`s,
/// or with `TOUCH` 4 KiB `TOUCH` payloads copied from `source` (whose word sum is `expect`).
/// Each mode is a function of its own, never inlined (`TOUCH` is a constant), so that one
/// mode's code cannot change how the compiler inlines another's calls: the `PING` count rose
/// from 562 to 651 instructions per round trip when the pool calls of the `TOUCH` branch grew,
/// with nothing changed on the `PING` path.
#[inline(never)]
fn round_trips<const TOUCH: bool>(
    client: &mut Client<EchoReq, EchoResp>,
    mut turn: impl FnMut() -> Result<(), subring_shm::Error>,
    source: &[u8],
    expect: u64,
    trips: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    for seq in 1..=trips {
        let mut req = EchoReq {
            seq,
            op: EchoOp::PING,
            ..EchoReq::default()
        };
        if TOUCH {
            let mut buf = client.alloc().ok_or("no free buffer")?;
            buf.fill_from(source);
            req.op = EchoOp::TOUCH;
            req.buf = buf.lend();
        }
        client.push(black_box(req)).map_err(|r| r.error)?;
        client.submit()?;
        turn()?;
        let r = client.reap()?.ok_or("no answer after a server turn")?;
        if r.seq != seq || r.status != EchoStatus::OK {
            return Err(format!("bad answer {r:?} to {seq}").into());
        }
        if TOUCH {
            if r.value != expect {
                return Err(format!("server summed {}, expected {expect}", r.value).into());
            }
            drop(client.reclaim(r.buf)?);
        }
    }
    Ok(())
}

/// The bench's zero-copy stream loop (`subring_throughput` in bench/src/ipc.rs), with a server
/// turn wherever the client would otherwise wait: `count` payloads.
#[inline(never)]
fn stream_payloads(
    client: &mut Client<EchoReq, EchoResp>,
    mut turn: impl FnMut() -> Result<(), subring_shm::Error>,
    source: &[u8],
    expect: u64,
    count: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let (mut sent, mut done) = (0usize, 0usize);
    let mut out = Vec::with_capacity(IN_FLIGHT);
    let mut lender = client.lender();
    while done < count {
        let mut pushed = 0;
        while sent < count && sent - done < IN_FLIGHT {
            let req = EchoReq {
                seq: sent as u64,
                op: EchoOp::TOUCH,
                reserved: 0,
                buf: lender.lend_copy(source).ok_or("no free buffer")?,
            };
            client.push(black_box(req)).map_err(|r| r.error)?;
            sent += 1;
            pushed += 1;
            if pushed % 16 == 0 {
                client.submit()?;
                turn()?;
            }
        }
        client.submit()?;
        turn()?;
        out.clear();
        if client.reap_into(&mut out, IN_FLIGHT)? == 0 {
            return Err("no answers after a server turn".into());
        }
        for r in &out {
            if r.status != EchoStatus::OK || r.value != expect {
                return Err(format!("server read {r:?}, expected sum {expect}").into());
            }
            lender.take_back(r.buf)?;
            done += 1;
        }
    }
    Ok(())
}
