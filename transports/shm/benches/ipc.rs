//! Cross-process benchmark of the shm transport against what a user would otherwise pick, in
//! one run, interleaved inside each repetition (the VM's vCPU placement drifts; see
//! `../shared/targets.md`):
//!
//! - round trips of an 8-byte request (subring-shm's echo `PING`, a 32-byte entry each way) in
//!   spin, adaptive and eventfd modes, against a raw shared-memory spin ping-pong (the physical
//!   floor), a raw eventfd pair, a pipe pair and a Unix socket pair — with the processes on two
//!   cores (`split`) and on one (`shared`);
//! - 4 KiB payload throughput: the client writes each payload into a shared buffer and the server
//!   reads it in place (`TOUCH`: every byte read once), against a Unix socket and a raw
//!   shared-memory ring of 64 x 4 KiB slots (copy in, copy out).
//!
//! Each repetition is labelled near/far by a cache-line ping-pong probe before and after it.
//! Reported: per-measurement medians over repetitions, and the median of the per-repetition
//! ratios subring/peer. Client-side system calls per round trip come from subring's counters.
//!
//! ```sh
//! cargo bench -p subring-shm --bench ipc            # 5 repetitions
//! cargo bench -p subring-shm --bench ipc -- --quick # 2 short repetitions
//! ```

#[allow(dead_code)] // shared helpers; not every one is used by this bench
mod peers;

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use peers::{AffinityGuard, Latency, Placement};
use subring_shm::echo::{self, op, status, EchoReq, EchoResp, ECHO_PROTOCOL};
use subring_shm::queue::{Completer, Submitter};
use subring_shm::{Client, ClientOptions, NotifyMode, Server, ServerConfig};

const PAYLOAD: usize = 4096;

struct Config {
    reps: usize,
    round_trips: usize,
    shared_round_trips: usize,
    bytes: usize,
}

/// One subring round-trip measurement: latencies and client-side syscalls per round trip.
struct Measured {
    latency: Latency,
    syscalls: f64,
}

/// Runs the echo server in a forked child pinned to `cpu`, serving the other end of `client`'s
/// socket until the client leaves; returns the child.
fn fork_server(cpu: usize) -> Result<(peers::Child, std::os::fd::OwnedFd), String> {
    let (server_end, client_end) = subring_shm::socket_pair().map_err(|e| e.to_string())?;
    let child = peers::fork_pinned(cpu, &[client_end.as_raw_fd()], move || {
        let run = || -> Result<(), subring_shm::Error> {
            let mut server =
                Server::new(ServerConfig::new(ECHO_PROTOCOL), echo::handler_factory())?;
            server.add_connection(server_end)?;
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(120) {
                server.run_for(Duration::from_millis(5))?;
                let s = server.stats();
                if s.welcomed + s.refused > 0 && s.clients == 0 {
                    break;
                }
            }
            Ok(())
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
    let options = ClientOptions::new(ECHO_PROTOCOL)
        .mode(mode)
        .buffers(PAYLOAD as u32, bufs);
    Client::from_socket(client_end, &options).map_err(|e| format!("connect ({mode}): {e}"))
}

fn round_trip(client: &mut Client<EchoReq, EchoResp>, seq: u64) -> Result<(), String> {
    let req = EchoReq {
        seq,
        op: op::PING,
        ..EchoReq::default()
    };
    client.push(req).map_err(|r| r.error.to_string())?;
    client.submit().map_err(|e| e.to_string())?;
    loop {
        if let Some(r) = client.reap().map_err(|e| e.to_string())? {
            if r.seq != seq || r.status != status::OK {
                return Err(format!("bad answer {r:?} to {seq}"));
            }
            return Ok(());
        }
        client
            .wait(Some(Duration::from_secs(5)))
            .map_err(|e| format!("wait: {e}"))?;
    }
}

fn subring_rt(mode: NotifyMode, n: usize, placement: Placement) -> Result<Measured, String> {
    let (parent_cpu, child_cpu) = placement.cpus();
    let _pin = AffinityGuard::pin(parent_cpu)?;
    let (child, client_end) = fork_server(child_cpu)?;
    let mut client = connect(client_end, mode, 8)?;
    for seq in 0..(n / 10) as u64 {
        round_trip(&mut client, seq)?;
    }
    let (rung0, sleeps0) = (client.doorbell_stats().rung, client.notify_stats().sleeps);
    let mut samples = Vec::with_capacity(n);
    let budget = Instant::now() + Duration::from_secs(20);
    for seq in 0..n as u64 {
        let t = Instant::now();
        round_trip(&mut client, seq + n as u64)?;
        samples.push(t.elapsed().as_nanos() as u64);
        if Instant::now() > budget {
            break;
        }
    }
    let rung = client.doorbell_stats().rung - rung0;
    let sleeps = client.notify_stats().sleeps - sleeps0;
    drop(client);
    child.reap(Duration::from_secs(5))?;
    Ok(Measured {
        syscalls: (rung + sleeps) as f64 / samples.len() as f64,
        latency: Latency {
            samples_ns: samples,
        },
    })
}

/// Bytes per second: 4 KiB payloads written by the client into shared buffers, read in place
/// by the server, up to 32 in flight.
fn subring_throughput(total: usize) -> Result<f64, String> {
    let _pin = AffinityGuard::pin(0)?;
    let (child, client_end) = fork_server(1)?;
    let mut client = connect(client_end, NotifyMode::Adaptive, 64)?;
    let source: Vec<u8> = (0..PAYLOAD).map(|i| (i * 7) as u8).collect();
    let expect = echo::word_sum(&source);
    let count = total / PAYLOAD;
    let (mut sent, mut done) = (0usize, 0usize);
    let mut out = Vec::with_capacity(64);
    let start = Instant::now();
    while done < count {
        while sent < count && sent - done < 32 {
            let mut buf = client.alloc().ok_or("no free buffer")?;
            buf.fill_from(&source);
            let req = EchoReq {
                seq: sent as u64,
                op: op::TOUCH,
                reserved: 0,
                buf: buf.lend(),
            };
            client.push(req).map_err(|r| r.error.to_string())?;
            sent += 1;
        }
        client.submit().map_err(|e| e.to_string())?;
        client
            .wait(Some(Duration::from_secs(5)))
            .map_err(|e| format!("wait: {e}"))?;
        out.clear();
        client.reap_into(&mut out, 64).map_err(|e| e.to_string())?;
        for r in &out {
            if r.status != status::OK || r.value != expect {
                return Err(format!("server read {r:?}, expected sum {expect}"));
            }
            drop(client.reclaim(r.buf).map_err(|e| e.to_string())?);
            done += 1;
        }
    }
    let rate = (count * PAYLOAD) as f64 / start.elapsed().as_secs_f64();
    drop(client);
    child.reap(Duration::from_secs(5))?;
    Ok(rate)
}

#[derive(Default)]
struct Rep {
    label: &'static str,
    /// (name, placement, p50 ns, p99 ns, syscalls per round trip or NaN)
    rts: Vec<(&'static str, &'static str, f64, f64, f64)>,
    /// (name, bytes/s)
    tput: Vec<(&'static str, f64)>,
}

impl Rep {
    fn p50(&self, name: &str, placement: &str) -> Option<f64> {
        self.rts
            .iter()
            .find(|r| r.0 == name && r.1 == placement)
            .map(|r| r.2)
    }
    fn tput(&self, name: &str) -> Option<f64> {
        self.tput.iter().find(|r| r.0 == name).map(|r| r.1)
    }
}

fn place_name(p: Placement) -> &'static str {
    match p {
        Placement::Split => "split",
        Placement::Shared => "shared",
    }
}

fn run_rep(cfg: &Config) -> Result<Rep, String> {
    let before = peers::probe();
    let mut rep = Rep::default();
    for placement in [Placement::Split, Placement::Shared] {
        let pn = place_name(placement);
        let n = match placement {
            Placement::Split => cfg.round_trips,
            Placement::Shared => cfg.shared_round_trips,
        };
        let mut record =
            |name: &'static str, m: Result<(Latency, f64), String>| -> Result<(), String> {
                let (l, sys) = m.map_err(|e| format!("{name} ({pn}): {e}"))?;
                rep.rts.push((name, pn, l.p50(), l.p99(), sys));
                Ok(())
            };
        let sub = |mode| subring_rt(mode, n, placement).map(|m| (m.latency, m.syscalls));
        // Interleaved: each subring mode beside the peers, in one repetition.
        record(
            "raw spin (floor)",
            peers::spin_floor_rt(
                if placement == Placement::Split {
                    n
                } else {
                    n / 20
                },
                placement,
            )
            .map(|l| (l, 0.0)),
        )?;
        if placement == Placement::Split {
            record("subring spin", sub(NotifyMode::Spin))?;
        }
        record("subring adaptive", sub(NotifyMode::Adaptive))?;
        record("subring eventfd", sub(NotifyMode::EventFd))?;
        record(
            "raw eventfd",
            peers::eventfd_rt(n, placement).map(|l| (l, 2.0)),
        )?;
        record("pipe", peers::pipe_rt(n, placement).map(|l| (l, 2.0)))?;
        record(
            "unix socket",
            peers::unix_socket_rt(n, placement).map(|l| (l, 2.0)),
        )?;
    }
    rep.tput
        .push(("subring zero-copy", subring_throughput(cfg.bytes)?));
    rep.tput.push((
        "raw shm ring 64x4K",
        peers::shm_ring_throughput(cfg.bytes, PAYLOAD, 64, Placement::Split)?,
    ));
    rep.tput.push((
        "unix socket",
        peers::unix_socket_throughput(cfg.bytes, PAYLOAD, Placement::Split)?,
    ));
    let after = peers::probe();
    rep.label = peers::label(before, after);
    eprintln!("  probe {before:.0} / {after:.0} ns: {}", rep.label);
    Ok(rep)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let cfg = if quick {
        Config {
            reps: 2,
            round_trips: 3_000,
            shared_round_trips: 1_000,
            bytes: 64 << 20,
        }
    } else {
        Config {
            reps: 5,
            round_trips: 20_000,
            shared_round_trips: 5_000,
            bytes: 512 << 20,
        }
    };
    let mut reps = Vec::new();
    for i in 0..cfg.reps {
        eprintln!("repetition {}/{}", i + 1, cfg.reps);
        match run_rep(&cfg) {
            Ok(r) => reps.push(r),
            Err(e) => {
                eprintln!("ipc bench: {e}");
                std::process::exit(1);
            }
        }
    }
    let labels: Vec<_> = reps.iter().map(|r| r.label).collect();
    println!("\nrepetitions: {} ({})", reps.len(), labels.join(", "));
    println!("\nround trip, 8-byte request (median over repetitions)");
    println!(
        "{:<8} {:<18} {:>10} {:>10} {:>14}",
        "cpus", "mechanism", "p50 ns", "p99 ns", "syscalls/rt*"
    );
    for (name, pn, ..) in reps[0].rts.iter().map(|r| (r.0, r.1, ())) {
        let pick = |f: fn(&(&str, &str, f64, f64, f64)) -> f64| {
            median(
                reps.iter()
                    .filter_map(|r| r.rts.iter().find(|x| x.0 == name && x.1 == pn))
                    .map(f)
                    .collect(),
            )
        };
        println!(
            "{:<8} {:<18} {:>10.0} {:>10.0} {:>14.2}",
            pn,
            name,
            pick(|x| x.2),
            pick(|x| x.3),
            pick(|x| x.4)
        );
    }
    println!("* client side; subring's from its counters, the raw peers' by construction (a write and a read)");
    let ratio = |a: &str, b: &str, pn: &str| {
        median(
            reps.iter()
                .filter_map(|r| Some(r.p50(a, pn)? / r.p50(b, pn)?))
                .collect(),
        )
    };
    let best = |pn: &str, r: &Rep| -> Option<f64> {
        let e = r.p50("subring eventfd", pn)?;
        Some(r.p50("subring spin", pn).map_or(e, |s| s.min(e)))
    };
    println!("\nratios of p50 round trips (median of per-repetition ratios; goal in brackets)");
    println!(
        "  split  spin / raw spin floor          {:>6.2}  [<= 1.5]",
        ratio("subring spin", "raw spin (floor)", "split")
    );
    println!(
        "  split  eventfd / raw eventfd          {:>6.2}  [<= 1.1]",
        ratio("subring eventfd", "raw eventfd", "split")
    );
    println!(
        "  split  eventfd / pipe                 {:>6.2}  [< 1]",
        ratio("subring eventfd", "pipe", "split")
    );
    println!(
        "  split  eventfd / unix socket          {:>6.2}  [< 1]",
        ratio("subring eventfd", "unix socket", "split")
    );
    for pn in ["split", "shared"] {
        let r = median(
            reps.iter()
                .filter_map(|r| Some(r.p50("subring adaptive", pn)? / best(pn, r)?))
                .collect(),
        );
        println!("  {pn:<6} adaptive / best(spin, eventfd)  {r:>6.2}  [<= 1.5]");
    }
    println!(
        "  shared eventfd / raw eventfd          {:>6.2}",
        ratio("subring eventfd", "raw eventfd", "shared")
    );
    println!(
        "\n4 KiB payload throughput, written by the client, read by the server (GB/s, median)"
    );
    for name in ["subring zero-copy", "raw shm ring 64x4K", "unix socket"] {
        let v = median(reps.iter().filter_map(|r| r.tput(name)).collect());
        println!("  {name:<20} {:>6.2}", v / 1e9);
    }
    let tratio = |b: &str| {
        median(
            reps.iter()
                .filter_map(|r| Some(r.tput("subring zero-copy")? / r.tput(b)?))
                .collect(),
        )
    };
    println!(
        "  zero-copy / unix socket   {:>6.2}  [>= 3]",
        tratio("unix socket")
    );
    println!(
        "  zero-copy / raw shm ring  {:>6.2}  [>= 0.9]",
        tratio("raw shm ring 64x4K")
    );
}
