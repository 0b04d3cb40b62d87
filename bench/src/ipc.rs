//! The cross-process sections: the shm transport against what a user would otherwise pick,
//! interleaved inside each repetition (the VM's vCPU placement drifts):
//!
//! - round trips of an 8-byte request (subring-shm's echo `PING`, a 32-byte entry each way) in
//!   spin, adaptive, eventfd and futex modes (futex: both sides sleep on futexes, the server on
//!   its clients' kick words, [`ServerSleep::Futex`]), against a raw shared-memory spin ping-pong
//!   (the physical floor), a raw eventfd pair (blocking reads, and waiting in epoll as subring's
//!   eventfd mode does), a raw futex pair, a pipe pair and a Unix socket pair — with the
//!   processes on two cores (`split`) and on one (`shared`); on two cores also a bare queue
//!   pair in spin mode with no server ([`pair_spin_rt`]), which splits the gap to the floor
//!   between the rings and the server's turn, and a futex-mode client that does not trust its
//!   server (a futex doorbell, which the server, asleep in epoll, waits on through io_uring);
//! - with the processes on two cores, the same round trip awaited in a tokio runtime
//!   ([`crate::asyncrt`]): subring's `AsyncClient` against a tokio `UnixStream`;
//! - 4 KiB payload throughput: the client writes each payload into a shared buffer and the server
//!   reads it in place (`TOUCH`: every byte read once), against a Unix socket and a raw
//!   shared-memory ring of 64 x 4 KiB slots (copy in, copy out). The client lends its buffers
//!   through a [`Lender`](subring_planes::data::Lender), the streaming path; a second row makes
//!   an owned `Buf` per payload instead (what that path costs).
//!
//! Each repetition is labelled near/far by a cache-line ping-pong probe before and after it.
//! Client-side system calls per round trip come from subring's counters.
//!
//! Every measurement forks: run these sections while the process has one thread (besides
//! subring-shm's hang-up watcher, which sleeps in `epoll_wait` and holds no lock while it does).

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::peers::{self, AffinityGuard, Latency, Placement};
use crate::report::{Report, Section, Unit};
use crate::Progress;
use subring_shm::echo::{self, EchoOp, EchoReq, EchoResp, EchoStatus, ECHO_PROTOCOL};
use subring_shm::queue::{Completer, Submitter};
use subring_shm::{Client, ClientOptions, NotifyMode, Server, ServerConfig, ServerSleep};

const PAYLOAD: usize = 4096;

/// How much to measure.
#[derive(Clone, Debug)]
pub struct IpcConfig {
    /// Repetitions.
    pub reps: usize,
    /// Round trips per measurement with the processes on two cores.
    pub round_trips: usize,
    /// Round trips per measurement with both on one core.
    pub shared_round_trips: usize,
    /// Bytes per throughput measurement.
    pub bytes: usize,
}

impl IpcConfig {
    /// The full run (`quick`: a short one).
    pub fn new(quick: bool) -> Self {
        if quick {
            IpcConfig {
                reps: 3,
                round_trips: 5_000,
                shared_round_trips: 1_000,
                // At 10-15 GB/s, fewer bytes measure mostly the processes' start (64 MiB gave
                // the copying ring a third of its full-run rate).
                bytes: 256 << 20,
            }
        } else {
            IpcConfig {
                reps: 5,
                round_trips: 20_000,
                shared_round_trips: 5_000,
                bytes: 512 << 20,
            }
        }
    }
}

/// One subring round-trip measurement: latencies and client-side syscalls per round trip.
#[derive(Debug)]
pub struct Measured {
    /// One sample per round trip.
    pub latency: Latency,
    /// Client-side system calls (doorbells rung and sleeps) per round trip.
    pub syscalls: f64,
}

/// Runs subring-shm's echo server in a forked child pinned to `cpu`, serving the other end of `client`'s
/// socket until the client leaves; returns the child.
pub fn fork_server(
    cpu: usize,
    sleep: ServerSleep,
) -> Result<(peers::Child, std::os::fd::OwnedFd), String> {
    let (server_end, client_end) = subring_shm::socket_pair().map_err(|e| e.to_string())?;
    let child = peers::fork_pinned(cpu, &[client_end.as_raw_fd()], move || {
        let run = || -> Result<(), subring_shm::Error> {
            // Serves until the client leaves, sleeping without a timeout as a server run for
            // good would (the parent kills it if it outstays the measurement, and it dies with
            // the parent).
            let mut config = ServerConfig::new(ECHO_PROTOCOL);
            config.exit_when_empty = true;
            config.sleep = sleep;
            let mut server = Server::new(config, echo::handler_factory())?;
            server.add_connection(server_end)?;
            server.run()
        };
        match run() {
            Ok(()) => 0,
            Err(_) => 4,
        }
    })?;
    Ok((child, client_end))
}

fn connect(
    client_end: std::os::fd::OwnedFd,
    mode: NotifyMode,
    bufs: u32,
) -> Result<Client<EchoReq, EchoResp>, String> {
    connect_with(client_end, mode, bufs, false)
}

/// [`connect`], as a client that does not trust its server (a futex doorbell) if `untrusting`.
fn connect_with(
    client_end: std::os::fd::OwnedFd,
    mode: NotifyMode,
    bufs: u32,
    untrusting: bool,
) -> Result<Client<EchoReq, EchoResp>, String> {
    let mut options = ClientOptions::new(ECHO_PROTOCOL)
        .mode(mode)
        .buffers(PAYLOAD as u32, bufs);
    if untrusting {
        options = options.untrusted_server();
    }
    Client::from_socket(client_end, &options).map_err(|e| format!("connect ({mode}): {e}"))
}

/// How long a measured client waits for its answer before giving up: users pass a timeout, so
/// the bench's clients do too (rows marked "untimed" wait without one, to show what the timeout
/// costs).
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// One `PING` round trip through `client` (a shm `Client`, or a bare queue pair's app side).
pub fn round_trip<Q: Submitter<Entry = EchoReq> + Completer<Completion = EchoResp>>(
    client: &mut Q,
    seq: u64,
    timeout: Option<Duration>,
) -> Result<(), String> {
    let req = EchoReq {
        seq,
        op: EchoOp::PING,
        ..EchoReq::default()
    };
    client.push(req).map_err(|r| r.error.to_string())?;
    client.submit().map_err(|e| e.to_string())?;
    loop {
        if let Some(r) = client.reap().map_err(|e| e.to_string())? {
            if r.seq != seq || r.status != EchoStatus::OK {
                return Err(format!("bad answer {r:?} to {seq}"));
            }
            return Ok(());
        }
        client.wait(timeout).map_err(|e| format!("wait: {e}"))?;
    }
}

/// Measures `n` echo round trips of a client in `mode`, waiting with `timeout`, against a
/// forked server that sleeps as `sleep` says, placed as `placement` says (after an untimed
/// warm-up of `n / 10`).
pub fn subring_rt(
    mode: NotifyMode,
    timeout: Option<Duration>,
    sleep: ServerSleep,
    n: usize,
    placement: Placement,
) -> Result<Measured, String> {
    subring_rt_with(mode, timeout, sleep, false, n, placement)
}

/// [`subring_rt`], the client not trusting its server (`ClientOptions::untrusted_server`: a
/// futex doorbell, which a server sleeping in epoll waits on through io_uring) if `untrusting`.
pub fn subring_rt_with(
    mode: NotifyMode,
    timeout: Option<Duration>,
    sleep: ServerSleep,
    untrusting: bool,
    n: usize,
    placement: Placement,
) -> Result<Measured, String> {
    let (parent_cpu, child_cpu) = placement.cpus();
    let _pin = AffinityGuard::pin(parent_cpu)?;
    let (child, client_end) = fork_server(child_cpu, sleep)?;
    let mut client = connect_with(client_end, mode, 8, untrusting)?;
    // Warm-up and timing as for every peer (`peers::sample`); the counters cover both.
    let (rung0, sleeps0) = (client.doorbell_stats().rung, client.notify_stats().sleeps);
    let mut seq = 0;
    let latency = peers::sample(n, peers::RT_BUDGET, || {
        seq += 1;
        round_trip(&mut client, seq, timeout)
    })?;
    let trips = seq.max(1);
    let rung = client.doorbell_stats().rung - rung0;
    let sleeps = client.notify_stats().sleeps - sleeps0;
    drop(client);
    child.reap(Duration::from_secs(5))?;
    Ok(Measured {
        syscalls: (rung + sleeps) as f64 / trips as f64,
        latency,
    })
}

/// The row of a client that does not trust its server.
const UNTRUSTING: &str = "subring futex, untrusting";
/// The row of an async client that does not trust its server (futex mode, in tokio).
const ASYNC_UNTRUSTING: &str = "subring async (tokio), futex, untrusting";

/// Whether this kernel has io_uring futex waits (`IORING_OP_FUTEX_WAIT`, Linux 6.7), which a
/// server sleeping in epoll needs to give a client a futex doorbell.
fn io_uring_futex_waits() -> bool {
    let Ok(ring) = io_uring::IoUring::new(2) else {
        return false;
    };
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).is_ok()
        && probe.is_supported(io_uring::opcode::FutexWait::CODE)
}

/// Payloads in flight at once: as many as the raw ring it is compared with has slots.
const IN_FLIGHT: usize = 64;

/// How the zero-copy client gets its buffers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Loans {
    /// A [`Lender`](subring_planes::data::Lender): `lend_copy` and `take_back`, the streaming
    /// path (no `Buf`, no read-modify-write per payload on the way out).
    Lender,
    /// An owned `Buf` per payload: `alloc`, `fill_from`, `lend`, then `reclaim` and drop.
    Bufs,
}

/// Bytes per second: 4 KiB payloads written by the client into shared buffers, read in place
/// by the server, streamed with up to [`IN_FLIGHT`] in flight (the client refills buffers as
/// completions return them and waits only when all are out); and the client's system calls
/// per payload (doorbells rung, sleeps taken: none while the server keeps polling).
fn subring_throughput(total: usize, loans: Loans) -> Result<(f64, f64), String> {
    let _pin = AffinityGuard::pin(0)?;
    let (child, client_end) = fork_server(1, ServerSleep::Epoll)?;
    let mut client = connect(client_end, NotifyMode::Adaptive, IN_FLIGHT as u32)?;
    let source: Vec<u8> = (0..PAYLOAD).map(|i| (i * 7) as u8).collect();
    let expect = echo::word_sum(&source);
    let count = total / PAYLOAD;
    let (mut sent, mut done) = (0usize, 0usize);
    let mut out = Vec::with_capacity(IN_FLIGHT);
    let mut lender = client.lender();
    let start = Instant::now();
    while done < count {
        let mut pushed = 0;
        while sent < count && sent - done < IN_FLIGHT {
            let buf = match loans {
                Loans::Lender => lender.lend_copy(&source).ok_or("no free buffer")?,
                Loans::Bufs => {
                    let mut buf = client.alloc().ok_or("no free buffer")?;
                    buf.fill_from(&source);
                    buf.lend()
                }
            };
            let req = EchoReq {
                seq: sent as u64,
                op: EchoOp::TOUCH,
                reserved: 0,
                buf,
            };
            client.push(req).map_err(|r| r.error.to_string())?;
            sent += 1;
            pushed += 1;
            // Hand the server work early rather than a whole window at once.
            if pushed % 16 == 0 {
                client.submit().map_err(|e| e.to_string())?;
            }
        }
        client.submit().map_err(|e| e.to_string())?;
        out.clear();
        if client
            .reap_into(&mut out, IN_FLIGHT)
            .map_err(|e| e.to_string())?
            == 0
        {
            client
                .wait(Some(Duration::from_secs(5)))
                .map_err(|e| format!("wait: {e}"))?;
            client
                .reap_into(&mut out, IN_FLIGHT)
                .map_err(|e| e.to_string())?;
        }
        for r in &out {
            if r.status != EchoStatus::OK || r.value != expect {
                return Err(format!("server read {r:?}, expected sum {expect}"));
            }
            match loans {
                Loans::Lender => lender.take_back(r.buf).map_err(|e| e.to_string())?,
                Loans::Bufs => drop(client.reclaim(r.buf).map_err(|e| e.to_string())?),
            }
            done += 1;
        }
    }
    let rate = (count * PAYLOAD) as f64 / start.elapsed().as_secs_f64();
    let syscalls = client.doorbell_stats().rung + client.notify_stats().sleeps;
    drop(lender);
    drop(client);
    child.reap(Duration::from_secs(5))?;
    Ok((rate, syscalls as f64 / count.max(1) as f64))
}

/// Section names.
pub const SPLIT: &str = "ipc round trip, 2 cores";
/// Section names.
pub const SHARED: &str = "ipc round trip, 1 shared core";
/// Section names.
pub const PAYLOADS: &str = "4 KiB payloads, client to server";

/// Measurements per repetition (for progress).
const STEPS_PER_REP: u64 = 30;

/// Runs the round-trip and payload sections into `report`.
pub fn run(
    cfg: &IpcConfig,
    report: &mut Report,
    progress: &mut dyn Progress,
) -> Result<(), String> {
    let futex_doorbells = io_uring_futex_waits();
    progress.begin("ipc", cfg.reps as u64 * STEPS_PER_REP);
    let mut split = Section::new(SPLIT, cfg.reps);
    let mut shared = Section::new(SHARED, cfg.reps);
    let mut tput = Section::new(PAYLOADS, cfg.reps);
    for rep in 0..cfg.reps {
        let before = peers::probe();
        for placement in [Placement::Split, Placement::Shared] {
            let (section, n) = match placement {
                Placement::Split => (&mut split, cfg.round_trips),
                Placement::Shared => (&mut shared, cfg.shared_round_trips),
            };
            let mut record = |name: &str, m: Result<Latency, String>, sys: f64| {
                progress.step(name);
                let l = m.map_err(|e| format!("{name} ({placement:?}): {e}"))?;
                section.latency(rep, name, &l);
                section.syscalls(name, sys);
                Ok::<(), String>(())
            };
            // Spinning on one core hands over once per scheduler tick: fewer samples.
            let floor_n = if placement == Placement::Split {
                n
            } else {
                n / 20
            };
            record(
                "raw spin (floor)",
                peers::spin_floor_rt(floor_n, placement),
                0.0,
            )?;
            use ServerSleep::{Epoll, Futex};
            const TIMED: Option<Duration> = Some(WAIT_TIMEOUT);
            type Mode = (&'static str, NotifyMode, Option<Duration>, ServerSleep);
            let modes: &[Mode] = if placement == Placement::Split {
                &[
                    ("subring spin", NotifyMode::Spin, TIMED, Epoll),
                    ("subring adaptive", NotifyMode::Adaptive, TIMED, Epoll),
                    ("subring eventfd", NotifyMode::EventFd, TIMED, Epoll),
                    ("subring eventfd, untimed", NotifyMode::EventFd, None, Epoll),
                    ("subring futex", NotifyMode::Futex, TIMED, Futex),
                    ("subring futex, untimed", NotifyMode::Futex, None, Futex),
                ]
            } else {
                &[
                    ("subring adaptive", NotifyMode::Adaptive, TIMED, Epoll),
                    ("subring eventfd", NotifyMode::EventFd, TIMED, Epoll),
                    ("subring futex", NotifyMode::Futex, TIMED, Futex),
                ]
            };
            if placement == Placement::Split {
                // The rings alone (no server): how much of the gap to the floor is theirs.
                record("subring pair spin", pair_spin_rt(n, placement), 0.0)?;
            }
            if placement == Placement::Split && futex_doorbells {
                // A client that does not trust its server: a futex doorbell, which the server,
                // asleep in epoll, waits on through io_uring.
                let name = UNTRUSTING;
                let m = subring_rt_with(NotifyMode::Futex, TIMED, Epoll, true, n, placement);
                let sys = m.as_ref().map_or(f64::NAN, |m| m.syscalls);
                record(name, m.map(|m| m.latency), sys)?;
            }
            for &(name, mode, timeout, sleep) in modes {
                let m = subring_rt(mode, timeout, sleep, n, placement);
                let sys = m.as_ref().map_or(f64::NAN, |m| m.syscalls);
                record(name, m.map(|m| m.latency), sys)?;
            }
            record("raw eventfd", peers::eventfd_rt(n, placement), 2.0)?;
            record("raw futex", peers::futex_rt(n, placement), 2.0)?;
            record(
                "raw eventfd, epoll waits",
                peers::eventfd_epoll_rt(n, placement),
                2.0,
            )?;
            record("pipe", peers::pipe_rt(n, placement), 2.0)?;
            record("unix socket", peers::unix_socket_rt(n, placement), 2.0)?;
            if placement == Placement::Split {
                // Awaited in a tokio runtime (its system calls are the runtime's: not counted).
                let m = crate::asyncrt::subring_async_rt(n, placement, false);
                record("subring async (tokio)", m, f64::NAN)?;
                if futex_doorbells {
                    let m = crate::asyncrt::subring_async_rt(n, placement, true);
                    record(ASYNC_UNTRUSTING, m, f64::NAN)?;
                }
                let m = crate::asyncrt::tokio_unix_rt(n, placement);
                record("tokio unix socket", m, f64::NAN)?;
            }
        }
        for (row, loans) in [
            ("subring zero-copy", Loans::Lender),
            ("subring zero-copy, a Buf each", Loans::Bufs),
        ] {
            progress.step(row);
            let (rate, syscalls) = subring_throughput(cfg.bytes, loans)?;
            tput.rate(rep, row, Unit::BytesPerSec, rate);
            tput.syscalls(row, syscalls);
        }
        progress.step("raw shm ring 64x4K");
        let raw = peers::shm_ring_throughput(cfg.bytes, PAYLOAD, 64, Placement::Split)?;
        tput.rate(rep, "raw shm ring 64x4K (copy)", Unit::BytesPerSec, raw);
        progress.step("unix socket");
        let unix = peers::unix_socket_throughput(cfg.bytes, PAYLOAD, Placement::Split)?;
        tput.rate(rep, "unix socket", Unit::BytesPerSec, unix);
        let after = peers::probe();
        for s in [&mut split, &mut shared, &mut tput] {
            s.label(rep, before, after);
        }
    }
    split.compare("raw spin (floor)", "subring spin", Some("<= 1.3"));
    split.compare("subring pair spin", "subring spin", None);
    split.compare("raw eventfd", "subring eventfd", Some("<= 1.1"));
    split.compare("raw eventfd, epoll waits", "subring eventfd", None);
    split.compare("pipe", "subring eventfd", Some("< 1"));
    split.compare("unix socket", "subring eventfd", Some("< 1"));
    split.compare("subring eventfd", "subring futex", None);
    if futex_doorbells {
        split.compare("subring futex", UNTRUSTING, None);
    } else {
        report.skipped.push((
            format!("{SPLIT}: {UNTRUSTING}"),
            "no io_uring futex waits here (Linux 6.7; io_uring not turned off), which a server \
             sleeping in epoll needs for a futex doorbell"
                .into(),
        ));
    }
    split.compare(
        "subring eventfd, untimed",
        "subring eventfd",
        Some("<= 1.05"),
    );
    split.compare("subring futex, untimed", "subring futex", Some("<= 1.05"));
    split.compare("raw eventfd", "subring futex", Some("<= 1.1"));
    split.compare("raw futex", "subring futex", Some("<= 1.1"));
    split.compare("pipe", "subring futex", Some("<= 1.0"));
    split.compare("unix socket", "subring futex", Some("<= 0.9"));
    split.compare("tokio unix socket", "subring async (tokio)", Some("< 1"));
    split.compare("subring eventfd", "subring async (tokio)", None);
    if futex_doorbells {
        split.compare("subring async (tokio)", ASYNC_UNTRUSTING, None);
    } else {
        report.skipped.push((
            format!("{SPLIT}: {ASYNC_UNTRUSTING}"),
            "no io_uring futex waits here (Linux 6.7; io_uring not turned off)".into(),
        ));
    }
    split.best_of("best of spin, eventfd", "subring spin", "subring eventfd");
    split.compare("best of spin, eventfd", "subring adaptive", Some("<= 1.5"));
    // Spin mode is not run on one core (spinning there waits out a scheduler tick): blocking
    // is the best subring can do, and adaptive must find it.
    shared.compare("subring eventfd", "subring adaptive", Some("<= 1.5"));
    shared.compare("raw eventfd", "subring eventfd", None);
    shared.compare("raw eventfd, epoll waits", "subring eventfd", None);
    shared.compare("pipe", "subring eventfd", None);
    shared.compare("unix socket", "subring eventfd", None);
    shared.compare("raw futex", "subring futex", None);
    shared.compare("pipe", "subring futex", None);
    tput.compare("unix socket", "subring zero-copy", Some(">= 5"));
    tput.compare(
        "raw shm ring 64x4K (copy)",
        "subring zero-copy",
        Some(">= 1.1"),
    );
    tput.compare("subring zero-copy, a Buf each", "subring zero-copy", None);
    split.finish(report);
    shared.finish(report);
    tput.finish(report);
    Ok(())
}

/// Round trips over a bare queue pair in spin mode (no server: the child runs
/// [`ServiceSide::run`](subring_planes::pair::ServiceSide::run) echoing each 32-byte request
/// as a completion), the client waiting as users do (with a timeout): what the rings cost
/// without the server's turn.
pub fn pair_spin_rt(n: usize, placement: Placement) -> Result<Latency, String> {
    use std::sync::Arc;
    use subring_planes::data::{Region, RegionOptions};
    use subring_planes::pair::{AppSide, PairConfig, PairLayout, PairSignals, ServiceSide};
    let cfg = PairConfig::default()
        .with_capacity(64)
        .with_mode(NotifyMode::Spin);
    let err = |e: &dyn std::fmt::Display| format!("pair_spin_rt: {e}");
    let layout = PairLayout::of::<EchoReq, EchoResp>(&cfg).map_err(|e| err(&e))?;
    let region = Arc::new(
        Region::memfd("pair-spin", layout.size, RegionOptions::new()).map_err(|e| err(&e))?,
    );
    subring_planes::pair::create::<EchoReq, EchoResp>(&region, 0, &cfg).map_err(|e| err(&e))?;
    let (parent_cpu, child_cpu) = placement.cpus();
    let _pin = AffinityGuard::pin(parent_cpu)?;
    let child_region = region.clone();
    let child_cfg = cfg.clone();
    let child = peers::fork_pinned(child_cpu, &[], move || {
        let signals = PairSignals::for_config(&child_cfg);
        let Ok(signals) = signals else { return 4 };
        let Ok(mut service) =
            ServiceSide::<EchoReq, EchoResp>::attach(child_region, 0, &child_cfg, signals)
        else {
            return 4;
        };
        let echo = |r: EchoReq| EchoResp {
            seq: r.seq,
            status: EchoStatus::OK,
            ..EchoResp::default()
        };
        match service.run(echo, Some(Duration::from_secs(30))) {
            Ok(()) => 0,
            Err(_) => 4,
        }
    })?;
    let signals = PairSignals::for_config(&cfg).map_err(|e| err(&e))?;
    let mut app =
        AppSide::<EchoReq, EchoResp>::attach(region, 0, &cfg, signals).map_err(|e| err(&e))?;
    let mut seq = 0;
    let latency = peers::sample(n, peers::RT_BUDGET, || {
        seq += 1;
        round_trip(&mut app, seq, Some(WAIT_TIMEOUT))
    })?;
    drop(app);
    child.reap(Duration::from_secs(5))?;
    Ok(latency)
}
