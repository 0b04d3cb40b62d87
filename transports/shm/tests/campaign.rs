//! The adversarial campaign, hostile clients' side: an echo server in a process of its own,
//! hostile client processes in every notify mode that write edge and random values into every
//! word of the shared memory they can reach (ring headers, indices, stamps, the pair header)
//! while they push nasty requests, kick and reconnect, and that are SIGKILLed at random
//! moments; beside them, an honest client (this process) that checks every byte of every
//! answer and times every round trip. At the end the server must have released everything:
//! its descriptors and mappings are counted before and after.
//!
//! Bounded here (a few thousand writes per server sleep); the soak runs the same with more:
//! `SUBRING_CAMPAIGN_ITERS=1000000 cargo test --release -p subring-shm --test campaign -- --nocapture`.
//! The hostile server's side is `hostile_server.rs`.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use subring_shm::echo::{EchoReq, ECHO_PROTOCOL};
use subring_shm::queue::{Completer, Submitter};
use subring_shm::{echo, BufHandle, ClientOptions, NotifyMode, Server, ServerConfig, ServerSleep};
use support::*;

const PATH_ENV: &str = "SUBRING_CAMPAIGN_SOCKET";
const SLEEP_ENV: &str = "SUBRING_CAMPAIGN_SLEEP";
const MODE_ENV: &str = "SUBRING_CAMPAIGN_MODE";
const WRITES_ENV: &str = "SUBRING_CAMPAIGN_WRITES";
const SEED_ENV: &str = "SUBRING_CAMPAIGN_SEED";
const PROGRESS_ENV: &str = "SUBRING_CAMPAIGN_PROGRESS";
const UNTRUSTING_ENV: &str = "SUBRING_CAMPAIGN_UNTRUSTING";

/// Hostile writes per server sleep (override with `SUBRING_CAMPAIGN_ITERS`).
fn iterations() -> u64 {
    std::env::var("SUBRING_CAMPAIGN_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000)
}

/// The echo server, as a child process: serves until killed (or ten minutes pass).
#[test]
#[ignore = "run as a child process by the campaign"]
fn child_echo_server() {
    let Ok(path) = std::env::var(PATH_ENV) else {
        return;
    };
    let mut config = ServerConfig::new(ECHO_PROTOCOL);
    if std::env::var(SLEEP_ENV).as_deref() == Ok("futex") {
        config.sleep = ServerSleep::Futex;
    }
    let mut server = Server::bind(&path, config, echo::handler_factory()).unwrap();
    server.run_for(Duration::from_secs(600)).unwrap();
}

/// A hostile client, as a child process: scribbles until its writes are spent (or it is
/// killed), recording its progress in a file every 256 writes.
#[test]
#[ignore = "run as a child process by the campaign"]
fn child_scribbler() {
    let Ok(path) = std::env::var(PATH_ENV) else {
        return;
    };
    let env = |k: &str| std::env::var(k).unwrap();
    let mode: NotifyMode = env(MODE_ENV).parse().unwrap();
    let writes: u64 = env(WRITES_ENV).parse().unwrap();
    let seed: u64 = env(SEED_ENV).parse().unwrap();
    let progress = PathBuf::from(env(PROGRESS_ENV));
    let mut options = options(mode);
    if std::env::var_os(UNTRUSTING_ENV).is_some() {
        options = options.untrusted_server();
    }
    scribble(Path::new(&path), &options, writes, seed, &progress);
}

/// One hostile client's life: connect, scribble on the shared words below its pool while
/// pushing requests with nasty handles and kicking, until evicted or out of writes; then
/// again, until `writes` are spent.
fn scribble(path: &Path, options: &ClientOptions, writes: u64, seed: u64, progress: &Path) {
    let mut rng = Rng(seed | 1);
    let (mut made, mut connections) = (0u64, 0u64);
    let record = |made: u64, connections: u64| {
        let _ = std::fs::write(progress, format!("{made} {connections}"));
    };
    while made < writes {
        let mut client = connect_retry(path, options, WAIT);
        connections += 1;
        let region = client.region().clone();
        let pool_base = client.pool().layout().base;
        for _ in 0..(50 + rng.below(500)) {
            // A word of the rings or their headers (the memory both sides read).
            let offset = rng.below(pool_base / 8) * 8;
            let handle = BufHandle {
                offset,
                len: 8,
                region: 0,
            };
            region
                .write_from(handle, &rng.nasty().to_ne_bytes())
                .expect("inside the region");
            made += 1;
            if made % 256 == 0 {
                record(made, connections);
            }
            let req = EchoReq {
                seq: rng.next(),
                op: subring_shm::echo::EchoOp(rng.below(7) as u32),
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
    }
    record(made, connections);
}

/// What `/proc/<pid>` says a process holds: open descriptors and mappings.
/// The server's open descriptors, and its mappings of memfds (the clients' regions): what a
/// client that left would leave behind if the server leaked it. (Not every mapping: the
/// process's threads, its descriptor closers among them, map stacks and malloc arenas as they
/// first run, which is not a leak.)
fn holdings(pid: u32) -> (usize, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("/memfd:"))
        .count();
    (fds, maps)
}

/// Whether the server holds no more than it did.
fn within(after: (usize, usize), before: (usize, usize)) -> bool {
    after.0 <= before.0 && after.1 <= before.1
}

/// The server's (live clients, ended connections), waiting up to 10 s for `live` to reach
/// `want`.
fn settle(client: &mut subring_shm::Client<EchoReq, echo::EchoResp>, want: u32) -> (u32, u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = stats(client);
        if s.0 == want || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn campaign(sleep: ServerSleep) {
    let name = format!("campaign-{sleep:?}");
    let path = socket_path(&name);
    let sleep_env = match sleep {
        ServerSleep::Epoll => "epoll",
        ServerSleep::Futex => "futex",
    };
    let mut server = spawn_child(
        "child_echo_server",
        &[
            (PATH_ENV, path.display().to_string()),
            (SLEEP_ENV, sleep_env.into()),
        ],
    );
    let mut honest = connect_retry(&path, &options(NotifyMode::EventFd), WAIT);
    // Warm up, then take the server's holdings with only the honest client connected. One
    // client comes and goes first, so that whatever the server sets up once, at its first
    // release, is there before (taken once the holdings are back to what they were before it
    // came, or after 5 s if that first release left something set up for good).
    echo_many(&mut honest, 64, 8, 200);
    let alone = holdings(server.pid());
    let mut passing = connect_retry(&path, &options(NotifyMode::EventFd), WAIT);
    echo_many(&mut passing, 1, 1, 200);
    drop(passing);
    settle(&mut honest, 1);
    // The passing client's memory is unmapped on the server's dropper thread, a moment after
    // its release is counted: the holdings are taken once they are back to what they were
    // before it came (or, if the server set something up for good at that first release, once
    // they stop falling, within 5 s).
    let mut before = holdings(server.pid());
    let settling = Instant::now();
    while !within(before, alone) && settling.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
        before = holdings(server.pid());
    }

    let budget = iterations();
    let mut rng = Rng(0x5eed ^ budget);
    let progress_dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&progress_dir).unwrap();
    let (mut spawned, mut killed, mut untrusting) = (0u64, 0u64, 0u64);
    let futex_doorbells = io_uring_futex_waits();
    // Each child with the moment it is to be SIGKILLed, if it is (one in three).
    let mut children: Vec<(ChildGuard, Option<Instant>)> = Vec::new();
    let (mut checked, mut worst) = (0u64, Duration::ZERO);
    let start = Instant::now();
    let written = |dir: &Path| -> (u64, u64) {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
            .filter_map(|s| {
                let mut it = s.split(' ').map(|n| n.parse::<u64>().unwrap_or(0));
                Some((it.next()?, it.next()?))
            })
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    loop {
        let (made, _) = written(&progress_dir);
        if made >= budget && children.is_empty() {
            break;
        }
        // Two hostile clients at a time, each in a random mode with a random share; one in
        // three of those in futex or adaptive mode asks for a futex doorbell (which a server
        // sleeping in epoll waits on through io_uring), where the kernel has it.
        while children.len() < 2 && made < budget {
            let mode = NotifyMode::ALL[rng.below(4) as usize];
            let mut env = vec![
                (PATH_ENV, path.display().to_string()),
                (MODE_ENV, mode.to_string()),
                (WRITES_ENV, (500 + rng.below(3000)).to_string()),
                (SEED_ENV, rng.next().to_string()),
                (
                    PROGRESS_ENV,
                    progress_dir.join(spawned.to_string()).display().to_string(),
                ),
            ];
            let rings = matches!(mode, NotifyMode::Futex | NotifyMode::Adaptive);
            if rings && rng.below(3) == 0 && futex_doorbells {
                env.push((UNTRUSTING_ENV, "1".into()));
                untrusting += 1;
            }
            let child = spawn_child("child_scribbler", &env);
            spawned += 1;
            let doom = (rng.below(3) == 0)
                .then(|| Instant::now() + Duration::from_millis(5 + rng.below(300)));
            children.push((child, doom));
        }
        // Some die of SIGKILL at a random moment; the rest finish their share.
        children.retain_mut(|(child, doom)| {
            if doom.is_some_and(|t| Instant::now() >= t) {
                child.kill();
                killed += 1;
                return false;
            }
            match child.0.as_mut().unwrap().try_wait().unwrap() {
                Some(status) => {
                    assert!(status.success(), "a hostile client crashed: {status}");
                    child.0 = None;
                    false
                }
                None => true,
            }
        });
        // The honest client: one checked round trip at a time, timed.
        let t = Instant::now();
        echo_many(&mut honest, 1, 1, 200);
        worst = worst.max(t.elapsed());
        checked += 1;
    }
    let (made, connections) = written(&progress_dir);
    let _ = std::fs::remove_dir_all(&progress_dir);
    // Every hostile client is gone: the server holds what it held before they came.
    let (live, ended) = settle(&mut honest, 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = holdings(server.pid());
    while !within(after, before) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        after = holdings(server.pid());
    }
    echo_many(&mut honest, 64, 8, 200);
    eprintln!(
        "{sleep:?} server: {made} hostile writes over {connections} connections from {spawned} \
         client processes ({killed} SIGKILLed, {untrusting} with a futex doorbell) in {:.1?}; \
         {checked} honest round trips, every \
         byte right, the slowest {worst:.1?}; the server ended {ended} connections, has {live} \
         left, and holds {} descriptors and {} mappings (before: {}, {})",
        start.elapsed(),
        after.0,
        after.1,
        before.0,
        before.1
    );
    assert_eq!(live, 1, "only the honest client is left");
    assert!(
        within(after, before),
        "the server leaked descriptors or memfd mappings: {after:?} after, {before:?} before"
    );
    assert!(
        worst < Duration::from_secs(1),
        "an honest round trip took {worst:?}"
    );
    drop(honest);
    assert!(
        server.kill().signal().is_some(),
        "the server was still serving"
    );
}

#[test]
fn hostile_client_processes_do_not_hurt_an_honest_one_epoll_server() {
    campaign(ServerSleep::Epoll);
}

#[test]
fn hostile_client_processes_do_not_hurt_an_honest_one_futex_server() {
    campaign(ServerSleep::Futex);
}
