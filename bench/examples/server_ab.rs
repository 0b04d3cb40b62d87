//! A same-run A/B of servers: the spin round trip of one client against each of several
//! `echo_server` programs (typically the same example built from two commits), measured in turn
//! within each repetition, with the raw spin floor before each repetition. Server changes are
//! compared within the same few hundred milliseconds of the VM, where an A/B by alternating
//! builds between whole bench runs lets the VM's placement change in between (on the project's
//! VM the spin round trip has periods of 1.2-1.35x the floor and of 1.45-1.7x, which a server
//! change can move between: performance-history.md, "looks between idle turns").
//!
//! ```sh
//! git worktree add /tmp/before HEAD~1
//! (cd /tmp/before && cargo build --release --example echo_server)
//! cargo build --release --example echo_server
//! cargo run --release -p subring-bench --example server_ab -- \
//!     /tmp/before/target/release/examples/echo_server target/release/examples/echo_server
//! ```
//!
//! Each measurement starts the server on CPU 1 (listening on a fresh socket path), connects a
//! spin-mode client on CPU 0, makes 2,000 round trips to warm up and then 20,000 `PING` round
//! trips each waiting with a timeout, and stops the server. The statistic is the mean of the
//! middle 80% of the samples (the clock here counts in 10 ns steps, so a median moves in steps of
//! 5-8%). Each line shows the floor, the first server's mean, and every other server's mean over
//! the first's; the last line, the median of those ratios. `--reps N` sets the repetitions (12).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use subring_bench::ipc::{round_trip, WAIT_TIMEOUT};
use subring_bench::peers::{self, Placement};
use subring_shm::echo::{EchoReq, EchoResp, ECHO_PROTOCOL};
use subring_shm::{Client, ClientOptions, NotifyMode};

const WARM_UP: usize = 2_000;
const TRIPS: usize = 20_000;

/// The mean of the middle 80% of `samples`.
fn trimmed_mean(samples: &mut [u64]) -> f64 {
    samples.sort_unstable();
    let (lo, hi) = (samples.len() / 10, samples.len() - samples.len() / 10);
    let mid = &samples[lo..hi.max(lo + 1)];
    mid.iter().sum::<u64>() as f64 / mid.len() as f64
}

/// A server process that is killed and reaped when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program` on CPU 1 listening on `socket`, and waits (up to 10 s) until it listens.
fn start(program: &Path, socket: &Path) -> Result<Server, String> {
    let _ = std::fs::remove_file(socket);
    let child = Command::new(program)
        .arg(socket)
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", program.display()))?;
    let server = Server(child);
    let mut cpus = CpuSet::new();
    cpus.set(1).map_err(|e| e.to_string())?;
    sched_setaffinity(Pid::from_raw(server.0.id() as i32), &cpus)
        .map_err(|e| format!("pinning {} to CPU 1: {e}", program.display()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if Instant::now() > deadline {
            return Err(format!("{} did not listen within 10 s", program.display()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(server)
}

/// The trimmed mean round trip, in ns, of a spin client against `program`.
fn measure(program: &Path, socket: &Path) -> Result<f64, String> {
    let _server = start(program, socket)?;
    let options = ClientOptions::new(ECHO_PROTOCOL).mode(NotifyMode::Spin);
    let mut client: Client<EchoReq, EchoResp> =
        Client::connect(socket, &options).map_err(|e| format!("connecting: {e}"))?;
    let mut seq = 0;
    for _ in 0..WARM_UP {
        seq += 1;
        round_trip(&mut client, seq, Some(WAIT_TIMEOUT))?;
    }
    let mut samples = Vec::with_capacity(TRIPS);
    for _ in 0..TRIPS {
        seq += 1;
        let t0 = Instant::now();
        round_trip(&mut client, seq, Some(WAIT_TIMEOUT))?;
        samples.push(t0.elapsed().as_nanos() as u64);
    }
    Ok(trimmed_mean(&mut samples))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut reps = 12;
    let mut programs = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--reps" {
            reps = args
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or("--reps takes a number")?;
        } else {
            programs.push(PathBuf::from(arg));
        }
    }
    if programs.len() < 2 {
        return Err("usage: server_ab [--reps N] SERVER_A SERVER_B [SERVER...]".into());
    }
    peers::pin(0)?;
    let socket =
        std::env::temp_dir().join(format!("subring-server-ab-{}.sock", std::process::id()));
    let mut ratios = vec![Vec::new(); programs.len()];
    for rep in 0..reps {
        let floor = trimmed_mean(&mut peers::spin_floor_rt(TRIPS, Placement::Split)?.samples_ns);
        let mut means = vec![0.0; programs.len()];
        for k in 0..programs.len() {
            let i = (k + rep) % programs.len();
            means[i] = measure(&programs[i], &socket)?;
        }
        let mut line = format!(
            "floor {floor:6.1} ns  first {:6.1} ns ({:.2}x)",
            means[0],
            means[0] / floor
        );
        for i in 1..programs.len() {
            let r = means[i] / means[0];
            ratios[i].push(r);
            line += &format!("  #{}/first {r:.3}", i + 1);
        }
        println!("{line}");
    }
    let _ = std::fs::remove_file(&socket);
    for (i, r) in ratios.iter_mut().enumerate().skip(1) {
        r.sort_by(f64::total_cmp);
        println!(
            "#{}/first: median {:.3} (range {:.3}-{:.3})",
            i + 1,
            r[r.len() / 2],
            r[0],
            r[r.len() - 1]
        );
    }
    Ok(())
}
