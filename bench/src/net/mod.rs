//! The net section: a TCP echo service on loopback, subring's (`examples/tcp_echo`: one thread,
//! one ring, multishot accept, multishot recv into a provided-buffer ring, each buffer sent back
//! from where it was received) against the servers a user would write otherwise, each on one
//! thread: an epoll loop (mio), tokio's current-thread runtime, and, with the `runtimes`
//! feature, tokio-uring and compio.
//!
//! Every server runs in a forked process pinned to CPU 1; the load is the example's load
//! generator on CPU 0, the same for every server: one thread and a ring of its own, its
//! sockets as direct descriptors, a multishot receive per connection into a provided-buffer
//! ring, batched waits, and every byte of every echo checked in place (it shares the two cores
//! with the server, so the cheaper it is, the more the rate shows the server). Work: 1, 16 and 64 connections, 64-byte and 4 KiB messages, one
//! message in flight per connection; each row reports requests per second, and the latency
//! rows the median and 99th percentile round trip, and the CPU rows the server process's CPU
//! time per request (`/proc/PID/schedstat`: what a server costs, whichever side of the loopback
//! is the bottleneck). In each repetition and work every server is forked and connected at
//! once, then loaded by turns, a slice of the time each (5 slices of 200 ms in a full run), in
//! the order of a rotation that changes with each repetition: a drift of the machine's speed
//! falls on every server alike. Every repetition is labelled with the placement probe.
//! subring's row also reports the server's `io_uring_enter` calls per request.

#[path = "../../../examples/tcp_echo/load.rs"]
#[allow(dead_code, missing_docs)]
mod load;
mod peers;
#[path = "../../../examples/tcp_echo/server/mod.rs"]
#[allow(dead_code, missing_docs)]
mod server;

use std::io::Read;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::peers::{AffinityGuard, Latency};
use crate::report::{Report, Section, Unit};
use crate::{Context, Progress};

/// The CPU the forked servers are pinned to; the load generator runs on the other.
const SERVER_CPU: usize = 1;
const CLIENT_CPU: usize = 0;

/// How much to measure.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Repetitions.
    pub reps: usize,
    /// How long each server is loaded, per repetition and work.
    pub duration: Duration,
    /// In how many slices that time is given, the servers taking turns.
    pub slices: usize,
}

impl NetConfig {
    /// The full run (`quick`: a short one).
    pub fn new(quick: bool) -> Self {
        NetConfig {
            reps: if quick { 3 } else { 7 },
            duration: Duration::from_millis(if quick { 300 } else { 1000 }),
            slices: if quick { 3 } else { 5 },
        }
    }
}

/// The servers compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    Subring,
    Epoll,
    Tokio,
    #[cfg(feature = "runtimes")]
    TokioUring,
    #[cfg(feature = "runtimes")]
    Compio,
}

const SUBRING: &str = "subring (io_uring)";
const EPOLL: &str = "epoll (mio)";
const TOKIO: &str = "tokio";
#[cfg(feature = "runtimes")]
const TOKIO_URING: &str = "tokio-uring";
#[cfg(feature = "runtimes")]
const COMPIO: &str = "compio";

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Subring => SUBRING,
            Server::Epoll => EPOLL,
            Server::Tokio => TOKIO,
            #[cfg(feature = "runtimes")]
            Server::TokioUring => TOKIO_URING,
            #[cfg(feature = "runtimes")]
            Server::Compio => COMPIO,
        }
    }

    fn all() -> Vec<Server> {
        #[allow(unused_mut)] // extended only with the `runtimes` feature
        let mut v = vec![Server::Subring, Server::Epoll, Server::Tokio];
        #[cfg(feature = "runtimes")]
        v.extend([Server::TokioUring, Server::Compio]);
        v
    }
}

/// One measurement: requests per second, round-trip latencies, and the server's system calls
/// per request where counted.
struct Measured {
    rate: f64,
    latency: Latency,
    enters_per_request: Option<f64>,
    /// The server process's CPU time (user and system) per request, in ns.
    cpu_per_request: f64,
}

/// CPU time a process has run, in ns (`/proc/PID/schedstat`'s first field).
fn cpu_ns(pid: libc::pid_t) -> Result<u64, String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ctx("read schedstat")?;
    s.split_whitespace()
        .next()
        .and_then(|x| x.parse().ok())
        .ok_or_else(|| format!("schedstat of {pid}: {s:?}"))
}

/// Runs the net sections into `report`.
pub fn run(
    cfg: &NetConfig,
    report: &mut Report,
    progress: &mut dyn Progress,
) -> Result<(), String> {
    let works: [(usize, usize); 6] = [
        (1, 64),
        (16, 64),
        (64, 64),
        (1, 4096),
        (16, 4096),
        (64, 4096),
    ];
    let servers = Server::all();
    progress.begin("net", (cfg.reps * works.len()) as u64);
    let name = |conns: usize, size: usize| {
        let bytes = if size >= 1024 {
            format!("{} KiB", size / 1024)
        } else {
            format!("{size} B")
        };
        format!(
            "net echo {bytes}, {conns} connection{}",
            if conns == 1 { "" } else { "s" }
        )
    };
    let mut rates: Vec<Section> = works
        .iter()
        .map(|(c, s)| Section::new(&format!("{}: requests/s", name(*c, *s)), cfg.reps))
        .collect();
    let mut cpu: Vec<Section> = works
        .iter()
        .map(|(c, s)| {
            Section::new(
                &format!("{}: server CPU per request", name(*c, *s)),
                cfg.reps,
            )
        })
        .collect();
    let mut latencies: Vec<Section> = works
        .iter()
        .map(|(c, s)| Section::new(&format!("{}: round trip", name(*c, *s)), cfg.reps))
        .collect();
    for rep in 0..cfg.reps {
        let before = crate::peers::probe();
        for (w, (conns, size)) in works.iter().enumerate() {
            // The servers in this repetition's rotation, loaded by turns.
            let order: Vec<Server> = (0..servers.len())
                .map(|k| servers[(k + rep) % servers.len()])
                .collect();
            progress.step(&format!("x{conns} {size} B"));
            let measured = measure(&order, *conns, *size, cfg)
                .map_err(|e| format!("{conns} connections, {size} B: {e}"))?;
            for (server, m) in order.iter().zip(measured) {
                rates[w].rate(rep, server.name(), Unit::OpsPerSec, m.rate);
                latencies[w].latency(rep, server.name(), &m.latency);
                cpu[w].rate(rep, server.name(), Unit::Ns, m.cpu_per_request);
                if let Some(e) = m.enters_per_request {
                    rates[w].syscalls(server.name(), e);
                }
            }
        }
        let after = crate::peers::probe();
        for s in rates
            .iter_mut()
            .chain(latencies.iter_mut())
            .chain(cpu.iter_mut())
        {
            s.label(rep, before, after);
        }
    }
    for ((((conns, size), mut r), mut l), mut c) in works.iter().zip(rates).zip(latencies).zip(cpu)
    {
        let order: Vec<&str> = servers.iter().map(|s| s.name()).collect();
        let headline = *conns == 64 && *size == 64;
        for s in [&mut r, &mut l, &mut c] {
            s.order(&order);
            for peer in &servers[1..] {
                s.compare(peer.name(), SUBRING, None);
            }
        }
        r.compare(TOKIO, SUBRING, headline.then_some(">= 1.2"));
        #[cfg(feature = "runtimes")]
        {
            r.compare(TOKIO_URING, SUBRING, headline.then_some(">= 1.0"));
            r.compare(COMPIO, SUBRING, headline.then_some(">= 1.0"));
        }
        r.finish(report);
        l.finish(report);
        c.finish(report);
    }
    #[cfg(not(feature = "runtimes"))]
    report.skipped.push((
        "net echo: tokio-uring and compio".into(),
        "built without the `runtimes` feature".into(),
    ));
    Ok(())
}

/// A server forked on a listener on loopback, and the load generator's connections to it.
struct Running {
    server: Server,
    child: crate::peers::Child,
    /// subring's server stops when this is readable and reports its counters on `stats`; the
    /// others are killed.
    stop: EventFd,
    stats: Option<OwnedFd>,
    addr: std::net::SocketAddr,
    /// Connected once every server is forked (so that no server inherits another's
    /// connections).
    load: Option<load::Load>,
    requests: u64,
    elapsed: Duration,
    cpu_ns: u64,
    latencies_ns: Vec<u64>,
}

impl Running {
    fn start(server: Server) -> Result<Running, String> {
        let listener = TcpListener::bind("127.0.0.1:0").ctx("bind a loopback listener")?;
        let addr = listener.local_addr().ctx("listener address")?;
        let stop = EventFd::from_flags(EfdFlags::EFD_CLOEXEC).ctx("eventfd")?;
        let (stats_rx, stats_tx) = nix::unistd::pipe().ctx("pipe")?;
        let close = [stats_rx.as_raw_fd()];
        let stop_fd: OwnedFd = stop.as_fd().try_clone_to_owned().ctx("dup eventfd")?;
        let child = crate::peers::fork_pinned(SERVER_CPU, &close, move || {
            let code = match server {
                Server::Subring => {
                    let cfg = server::ServerConfig::default();
                    match server::serve(&listener, stop_fd.as_fd(), cfg) {
                        Ok(stats) => {
                            let line = format!("{} {}\n", stats.enters, stats.recvs);
                            let _ = nix::unistd::write(&stats_tx, line.as_bytes());
                            0
                        }
                        Err(_) => 4,
                    }
                }
                Server::Epoll => peers::mio_echo(listener),
                Server::Tokio => peers::tokio_echo(listener),
                #[cfg(feature = "runtimes")]
                Server::TokioUring => peers::tokio_uring_echo(listener),
                #[cfg(feature = "runtimes")]
                Server::Compio => peers::compio_echo(listener),
            };
            drop(stats_tx);
            code
        })?;
        Ok(Running {
            server,
            child,
            stop,
            stats: Some(stats_rx),
            addr,
            load: None,
            requests: 0,
            elapsed: Duration::ZERO,
            cpu_ns: 0,
            latencies_ns: Vec::new(),
        })
    }

    /// Opens `conns` connections for `size`-byte messages.
    fn connect(&mut self, conns: usize, size: usize) -> Result<(), String> {
        let _pin = AffinityGuard::pin(CLIENT_CPU)?;
        let load =
            load::Load::connect(self.addr, conns, size).map_err(|e| format!("connect: {e}"))?;
        self.load = Some(load);
        Ok(())
    }

    /// Loads the server for `duration`.
    fn slice(&mut self, duration: Duration) -> Result<(), String> {
        let cpu_before = cpu_ns(self.child.pid())?;
        let load = self.load.as_mut().ok_or("not connected")?;
        let r = {
            let _pin = AffinityGuard::pin(CLIENT_CPU)?;
            load.run(duration).map_err(|e| e.to_string())?
        };
        self.cpu_ns += cpu_ns(self.child.pid())?.saturating_sub(cpu_before);
        self.requests += r.requests;
        self.elapsed += r.elapsed;
        self.latencies_ns.extend(r.latencies_ns);
        Ok(())
    }

    /// Stops the server and sums up what it did.
    fn finish(mut self) -> Result<Measured, String> {
        let requests = self.requests.max(1) as f64;
        let enters_per_request = if self.server == Server::Subring {
            self.stop.write(1).ctx("stop the server")?;
            let mut line = String::new();
            let rx = self.stats.take().ok_or("the server's counters, twice")?;
            std::fs::File::from(rx)
                .read_to_string(&mut line)
                .ctx("the server's counters")?;
            self.child.reap(Duration::from_secs(10))?;
            let enters = line
                .split_whitespace()
                .next()
                .and_then(|x| x.parse::<f64>().ok())
                .unwrap_or(f64::NAN);
            Some(enters / requests)
        } else {
            // Dropping the child kills and reaps it.
            drop(self.child);
            None
        };
        self.latencies_ns.sort_unstable();
        Ok(Measured {
            cpu_per_request: self.cpu_ns as f64 / requests,
            rate: self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9),
            latency: Latency {
                samples_ns: self.latencies_ns,
            },
            enters_per_request,
        })
    }
}

/// Forks each of `servers` on a listener on loopback and connects `conns` connections of
/// `size`-byte messages to each; then loads them by turns, a few slices of the configured time
/// each, in their order, so that a drift of the machine's speed falls on every server alike;
/// and stops them.
fn measure(
    servers: &[Server],
    conns: usize,
    size: usize,
    cfg: &NetConfig,
) -> Result<Vec<Measured>, String> {
    let mut running = Vec::with_capacity(servers.len());
    for server in servers {
        let r = Running::start(*server).map_err(|e| format!("{}: {e}", server.name()))?;
        running.push(r);
    }
    for r in running.iter_mut() {
        r.connect(conns, size)
            .map_err(|e| format!("{}: {e}", r.server.name()))?;
    }
    let slice = cfg.duration / cfg.slices as u32;
    for _ in 0..cfg.slices {
        for r in running.iter_mut() {
            r.slice(slice)
                .map_err(|e| format!("{}: {e}", r.server.name()))?;
        }
    }
    running
        .into_iter()
        .map(|r| {
            let name = r.server.name();
            r.finish().map_err(|e| format!("{name}: {e}"))
        })
        .collect()
}
