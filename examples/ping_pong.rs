//! Two processes, one ring pair: a round-trip ping-pong in every notify mode.
//!
//! ```text
//! cargo run --release --example ping_pong [-- ROUND_TRIPS]
//! ```
//!
//! The parent creates a sealed memfd holding a submission and a completion ring, and eventfds
//! for the modes that use them; it re-executes itself as the child (the subsystem), handing the
//! fds over by inheritance. The child maps the memfd, checks the ring headers, and echoes every
//! request. The parent times each round trip and prints what crossed each plane.

use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use subring::data::{Region, RegionOptions};
use subring::interrupt::{EventFdSignal, NotifyMode};
use subring::pair::{AppSide, PairConfig, PairLayout, PairSignals, ServiceSide};
use subring::queue::{Completer, Submitter};

type Error = Box<dyn std::error::Error>;

const TIMEOUT: Option<Duration> = Some(Duration::from_secs(30));

fn config(mode: NotifyMode) -> PairConfig {
    PairConfig::default().with_capacity(64).with_mode(mode)
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        return serve(args.get(2).ok_or("--serve needs a notify mode")?.parse()?);
    }
    let round_trips: usize = match args.get(1) {
        Some(n) => n
            .parse()
            .map_err(|_| format!("round trips must be a number, got {n:?}"))?,
        None => 50_000,
    };
    println!("subring ping-pong: this process submits, a child process (the subsystem) echoes.");
    println!("Both map one sealed memfd holding a submission ring and a completion ring;");
    println!("each round trip is one 8-byte entry each way. {round_trips} round trips per mode.\n");
    println!(
        "{:<9} {:>9} {:>9} {:>9} {:>16} {:>16} {:>9} {:>10}",
        "mode", "p50 ns", "p99 ns", "mean ns", "doorbells", "interrupts", "sleeps", "syscalls"
    );
    println!(
        "{:<9} {:>9} {:>9} {:>9} {:>16} {:>16} {:>9} {:>10}",
        "", "", "", "", "rung/skipped", "sent/suppressed", "app+svc", "per trip"
    );
    for mode in NotifyMode::ALL {
        run(mode, round_trips)?;
    }
    println!("\nspin never sleeps and makes no syscalls; eventfd and futex sleep when idle and");
    println!("ring only when the other side announced sleep; adaptive spins first, then sleeps.");
    println!(
        "syscalls per trip counts wake-ups sent plus sleeps (an eventfd sleep is poll + read)."
    );
    Ok(())
}

/// Parent: creates the pair, spawns the subsystem, measures round trips.
fn run(mode: NotifyMode, round_trips: usize) -> Result<(), Error> {
    let cfg = config(mode);
    let layout = PairLayout::of::<u64, u64>(&cfg)?;
    let region = Arc::new(Region::memfd(
        "ping-pong",
        layout.size,
        RegionOptions::new(),
    )?);
    let signals = PairSignals::for_config(&cfg)?;
    // The pair is laid out here; the child attaches the subsystem's side to the same memory.
    subring::pair::create::<u64, u64>(&region, 0, &cfg)?;

    let mut fds: Vec<RawFd> = vec![region.fd().ok_or("memfd region has an fd")?.as_raw_fd()];
    let kick = signals.kick.as_ref().map(|s| s.as_fd().as_raw_fd());
    let call = signals.call.as_ref().map(|s| s.as_fd().as_raw_fd());
    fds.extend(kick.iter().chain(call.iter()));
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--serve").arg(mode.to_string());
    cmd.env(
        "PING_PONG_FDS",
        format!("{},{},{}", fds[0], opt(kick), opt(call)),
    );
    cmd.env("PING_PONG_LEN", layout.size.to_string());
    cmd.stdout(Stdio::piped());
    // SAFETY: runs in the forked child before exec; fcntl is async-signal-safe and nothing is
    // allocated. It clears close-on-exec on exactly the fds handed over.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &fds {
                if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;

    let mut app = AppSide::<u64, u64>::attach(region, 0, &cfg, signals)?;
    let mut samples = Vec::with_capacity(round_trips);
    let warmup = round_trips / 10;
    for i in 0..(warmup + round_trips) as u64 {
        let start = Instant::now();
        app.push(i)?;
        app.submit()?;
        app.wait(TIMEOUT)?;
        let echoed = app.reap()?.ok_or("woken without a completion")?;
        let took = start.elapsed();
        if echoed != i {
            return Err(format!("sent {i}, got back {echoed}").into());
        }
        if i >= warmup as u64 {
            samples.push(took.as_nanos() as u64);
        }
    }
    let bell = app.doorbell_stats();
    let irq = app.notify_stats();
    drop(app); // the child sees the app gone and exits after printing its counters

    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("child stdout")?).read_line(&mut line)?;
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("subsystem process failed: {status}").into());
    }
    let svc: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [sent, suppressed, svc_sleeps] = svc[..] else {
        return Err(format!("unexpected counters from the child: {line:?}").into());
    };

    samples.sort_unstable();
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    let mean = samples.iter().sum::<u64>() / samples.len() as u64;
    let total = (warmup + round_trips) as f64;
    let sleep_cost = if mode == NotifyMode::EventFd { 2 } else { 1 };
    let syscalls = (bell.rung + sent + (irq.sleeps + svc_sleeps) * sleep_cost) as f64 / total;
    println!(
        "{:<9} {:>9} {:>9} {:>9} {:>16} {:>16} {:>9} {:>10.3}",
        mode.to_string(),
        pct(0.50),
        pct(0.99),
        mean,
        format!("{}/{}", bell.rung, bell.skipped),
        format!("{sent}/{suppressed}"),
        irq.sleeps + svc_sleeps,
        syscalls
    );
    Ok(())
}

fn opt(fd: Option<RawFd>) -> String {
    fd.map_or(String::new(), |fd| fd.to_string())
}

fn inherited(field: Option<&str>) -> Result<Option<OwnedFd>, Error> {
    match field.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => {
            let fd: RawFd = s.parse()?;
            // SAFETY: the parent handed this fd to us by inheritance, for our use only.
            Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
        }
    }
}

/// Child: maps the memfd, attaches as the subsystem, echoes until the app closes.
fn serve(mode: NotifyMode) -> Result<(), Error> {
    let fds = std::env::var("PING_PONG_FDS")?;
    let mut fields = fds.split(',');
    let len: usize = std::env::var("PING_PONG_LEN")?.parse()?;
    let region_fd = inherited(fields.next())?.ok_or("no region fd")?;
    let region = Arc::new(Region::from_fd(region_fd, Some(len), RegionOptions::new())?);
    let signals = PairSignals {
        kick: inherited(fields.next())?
            .map(EventFdSignal::from_fd)
            .transpose()?,
        call: inherited(fields.next())?
            .map(EventFdSignal::from_fd)
            .transpose()?,
    };
    let mut service = ServiceSide::<u64, u64>::attach(region, 0, &config(mode), signals)?;
    service.run(|x| x, Some(Duration::from_secs(60)))?;
    let (kick, call) = service.stats();
    println!("{} {} {}", call.sent, call.suppressed, kick.sleeps);
    Ok(())
}
