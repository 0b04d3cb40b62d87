//! Round trips awaited in a tokio runtime: subring-shm's `AsyncClient` (its completion eventfd
//! registered with tokio through `AsyncFd`; or, in futex mode as a client that does not trust
//! its server, an io_uring futex wait of its own) against a tokio `UnixStream`, the way a tokio user
//! would talk to a process otherwise, both against a server in another process (subring's echo
//! server; a blocking 8-byte echo on the socket). Measured in the `split` placement beside the
//! blocking rows of [`crate::ipc`], so the async layer's own cost shows against
//! "subring eventfd".

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use subring_shm::echo::{EchoOp, EchoReq, EchoResp, EchoStatus, ECHO_PROTOCOL};
use subring_shm::tokio::AsyncClient;
use subring_shm::{ClientOptions, NotifyMode, ServerSleep};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::peers::{self, AffinityGuard, Latency, Placement, RT_BUDGET};

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

/// `n / 10` untimed warm-up round trips (at most a quarter of the budget), then up to `n`
/// timed ones, as `peers::sample` does for blocking peers; `$rt` is an `async` round trip.
macro_rules! sample_async {
    ($n:expr, $rt:expr) => {{
        let start = Instant::now();
        for _ in 0..$n / 10 {
            if start.elapsed() >= RT_BUDGET / 4 {
                break;
            }
            $rt?;
        }
        let mut samples_ns = Vec::with_capacity($n);
        for _ in 0..$n {
            let t0 = Instant::now();
            $rt?;
            let t1 = Instant::now();
            samples_ns.push(u64::try_from((t1 - t0).as_nanos()).unwrap_or(u64::MAX));
            if t1 >= start + RT_BUDGET {
                break;
            }
        }
        Ok::<Latency, String>(Latency { samples_ns })
    }};
}

/// `n` echo round trips of an [`AsyncClient`] in a current-thread runtime, against a forked
/// server that sleeps in epoll: in eventfd mode, or (`untrusting`) in futex mode as a client
/// that does not trust its server (a futex doorbell, which the server waits on through
/// io_uring, and completions awaited through an io_uring futex wait of the client's own).
pub fn subring_async_rt(
    n: usize,
    placement: Placement,
    untrusting: bool,
) -> Result<Latency, String> {
    let (parent_cpu, child_cpu) = placement.cpus();
    let _pin = AffinityGuard::pin(parent_cpu)?;
    let (child, client_end) = crate::ipc::fork_server(child_cpu, ServerSleep::Epoll)?;
    let latency = runtime()?.block_on(async {
        let mut options = ClientOptions::new(ECHO_PROTOCOL)
            .mode(NotifyMode::EventFd)
            .buffers(4096, 8);
        if untrusting {
            options = options.mode(NotifyMode::Futex).untrusted_server();
        }
        let mut client = AsyncClient::<EchoReq, EchoResp>::from_socket(client_end, &options)
            .map_err(|e| format!("connect: {e}"))?;
        let mut seq = 0u64;
        sample_async!(n, {
            seq += 1;
            let req = EchoReq {
                seq,
                op: EchoOp::PING,
                ..EchoReq::default()
            };
            match client.call(req).await {
                Ok(r) if r.seq == seq && r.status == EchoStatus::OK => Ok(()),
                Ok(r) => Err(format!("bad answer {r:?} to {seq}")),
                Err(e) => Err(format!("call: {e}")),
            }
        })
    });
    child.reap(std::time::Duration::from_secs(5))?;
    latency
}

/// `n` round trips of an 8-byte message over a tokio `UnixStream` (`write_all`, `read_exact`)
/// to a forked child that echoes them with blocking reads and writes.
pub fn tokio_unix_rt(n: usize, placement: Placement) -> Result<Latency, String> {
    let (parent, child) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let close = [parent.as_raw_fd()];
    let echo = move || {
        let mut child = child;
        let mut buf = [0u8; 8];
        // EOF or an error ends the child: the parent is done (or gone).
        while child.read_exact(&mut buf).is_ok() {
            if child.write_all(&buf).is_err() {
                return 1;
            }
        }
        0
    };
    peers::run("tokio_unix_rt", placement, &close, echo, || {
        runtime()?.block_on(async {
            parent
                .set_nonblocking(true)
                .map_err(|e| format!("nonblocking: {e}"))?;
            let mut stream = tokio::net::UnixStream::from_std(parent)
                .map_err(|e| format!("tokio UnixStream: {e}"))?;
            let mut seq = 0u64;
            sample_async!(n, {
                seq += 1;
                let mut back = [0u8; 8];
                let io = async {
                    stream.write_all(&seq.to_ne_bytes()).await?;
                    stream.read_exact(&mut back).await
                };
                match io.await {
                    Ok(_) if u64::from_ne_bytes(back) == seq => Ok(()),
                    Ok(_) => Err(format!("sent {seq}, echoed {}", u64::from_ne_bytes(back))),
                    Err(e) => Err(format!("round trip: {e}")),
                }
            })
        })
    })
}
