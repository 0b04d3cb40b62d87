//! The adversarial campaign, hostile server's side: fake servers, each in a process of its own,
//! that set up a real queue pair for a client and then scribble edge and random values on
//! every word of it (ring headers, indices, stamps, the pair header) while they serve, some
//! answers with forged handles; each is SIGKILLed at a random moment or leaves by itself. The
//! client (this process, in every notify mode, lending its buffers one `Buf` at a time or through
//! a `Lender`) pushes, waits with a timeout and reaps; it must
//! only ever see errors, timeouts or wrong answers about its own requests (no panic, no hang,
//! no buffer taken back that it did not lend), see every death as `PeerGone` promptly, and
//! hold no more descriptors or mappings at the end than at the start.
//!
//! One test in this binary, so that counting this process's descriptors is exact. Bounded
//! here; the soak: `SUBRING_CAMPAIGN_ITERS=1000000 cargo test --release -p subring-shm --test
//! hostile_server -- --nocapture`.

mod support;

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    accept, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};
use subring_shm::echo::{self, EchoReq, EchoResp, ECHO_PROTOCOL};
use subring_shm::queue::{Completer, QueueError, Submitter};
use subring_shm::{BufHandle, Client, ClientOptions, NotifyMode};
use support::*;

const PATH_ENV: &str = "SUBRING_HOSTILE_SERVER_SOCKET";
const MODE_ENV: &str = "SUBRING_HOSTILE_SERVER_MODE";
const SEED_ENV: &str = "SUBRING_HOSTILE_SERVER_SEED";
const STEPS_ENV: &str = "SUBRING_HOSTILE_SERVER_STEPS";

/// Hostile writes in all (override with `SUBRING_CAMPAIGN_ITERS`).
fn iterations() -> u64 {
    std::env::var("SUBRING_CAMPAIGN_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000)
}

const POOL_OFFSET: u64 = 1 << 16;

/// A fake server, as a child process: accepts one client, welcomes it onto a real pair, then
/// scribbles and serves for its steps, and exits.
#[test]
#[ignore = "run as a child process by the campaign"]
fn child_hostile_server() {
    let Ok(path) = std::env::var(PATH_ENV) else {
        return;
    };
    let env = |k: &str| std::env::var(k).unwrap();
    let mode: NotifyMode = env(MODE_ENV).parse().unwrap();
    let mut rng = Rng(env(SEED_ENV).parse::<u64>().unwrap() | 1);
    let steps: u64 = env(STEPS_ENV).parse().unwrap();
    let listener = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let _ = std::fs::remove_file(&path);
    bind(listener.as_raw_fd(), &UnixAddr::new(path.as_str()).unwrap()).unwrap();
    listen(&listener, Backlog::new(4).unwrap()).unwrap();
    // SAFETY: `accept` returned a new descriptor that nothing else owns.
    let conn = unsafe {
        <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(
            accept(listener.as_raw_fd()).unwrap(),
        )
    };
    let FakePair {
        region,
        mut service,
        welcome,
        fds,
    } = fake_pair(mode, 32, POOL_OFFSET);
    send_raw(&conn, &welcome_frame(&welcome), &raw_fds(&fds));
    drop(fds);
    for _ in 0..steps {
        let handle = BufHandle {
            offset: rng.below(POOL_OFFSET / 8) * 8,
            len: 8,
            region: 0,
        };
        region
            .write_from(handle, &rng.nasty().to_ne_bytes())
            .unwrap();
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
        if rng.below(8) == 0 {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    drop(conn);
}

/// What `/proc/self` says this process holds: open descriptors and mappings.
fn holdings() -> (usize, usize) {
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let maps = std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count();
    (fds, maps)
}

/// [`holdings`] once two readings 50 ms apart agree (at most 5 s).
fn settled_holdings() -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = holdings();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = holdings();
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

#[derive(Default, Debug)]
struct Tally {
    servers: u64,
    killed: u64,
    writes: u64,
    completions: u64,
    errors: u64,
    timeouts: u64,
    refused_handles: u64,
    refused_welcomes: u64,
    worst_gone: Duration,
}

/// One fake server's life against a client in `mode`.
fn one_server(path: &std::path::Path, mode: NotifyMode, rng: &mut Rng, tally: &mut Tally) {
    let steps = 200 + rng.below(2000);
    let mut server = spawn_child(
        "child_hostile_server",
        &[
            (PATH_ENV, path.display().to_string()),
            (MODE_ENV, mode.to_string()),
            (SEED_ENV, rng.next().to_string()),
            (STEPS_ENV, steps.to_string()),
        ],
    );
    tally.servers += 1;
    let mut options = ClientOptions::new(ECHO_PROTOCOL)
        .buffers(256, 32)
        .capacity(64)
        .mode(mode);
    options.control_timeout = Duration::from_secs(2);
    let start = Instant::now();
    let mut client = loop {
        match Client::<EchoReq, EchoResp>::connect(path, &options) {
            Ok(c) => break c,
            // The child has not bound its socket yet (or it is still the last one's).
            Err(subring_shm::Error::Path { .. }) if start.elapsed() < WAIT => {
                std::thread::sleep(Duration::from_millis(2))
            }
            // The server scribbled on the pair before the client attached, and the client
            // refused it (the field named in the error): a hostile server's own loss.
            Err(_) => {
                tally.refused_welcomes += 1;
                server.kill();
                tally.writes += steps;
                return;
            }
        }
    };
    // Half the clients lend their buffers through a `Lender` (whose `take_back` meets the
    // forged handles), the rest an owned `Buf` at a time (`reclaim` meets them).
    let mut lender = (rng.below(2) == 0).then(|| client.lender());
    // Half the servers are SIGKILLed at a random moment; the rest leave when done.
    let doom = (rng.below(2) == 0).then(|| Instant::now() + Duration::from_millis(rng.below(15)));
    let mut killed_at = None;
    let mut seq = 0u64;
    loop {
        if killed_at.is_none() && doom.is_some_and(|t| Instant::now() >= t) {
            // Timed from before the kill: the figure includes the kill and the reaping.
            killed_at = Some(Instant::now());
            server.kill();
            tally.killed += 1;
        }
        let lent = match &mut lender {
            Some(lender) => lender.lend_copy(&seq.to_le_bytes()),
            None => client.alloc().map(|buf| buf.lend()),
        };
        if let Some(buf) = lent {
            seq += 1;
            let req = EchoReq {
                seq,
                op: echo::EchoOp::SUM,
                reserved: 0,
                buf,
            };
            match client.push(req) {
                Ok(()) => {
                    let _ = client.submit();
                }
                // Not taken: the buffer comes back (the push failed before the server saw it).
                Err(r) => match &mut lender {
                    Some(lender) => lender.take_back(r.entry.buf).expect("a loan never pushed"),
                    None => drop(client.reclaim(r.entry.buf).expect("a loan never pushed")),
                },
            }
        }
        let gone = match client.wait(Some(Duration::from_millis(1))) {
            Ok(()) => {
                tally.completions += 1;
                false
            }
            Err(QueueError::Timeout(_)) => {
                tally.timeouts += 1;
                false
            }
            Err(QueueError::PeerGone) => true,
            Err(_) => {
                tally.errors += 1;
                false
            }
        };
        loop {
            match client.reap() {
                // A forged handle is refused by the pool, never handed out.
                Ok(Some(c)) => {
                    let taken = match &mut lender {
                        Some(lender) => lender.take_back(c.buf),
                        None => client.reclaim(c.buf).map(drop),
                    };
                    if taken.is_err() {
                        tally.refused_handles += 1;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    tally.errors += 1;
                    break;
                }
            }
        }
        if gone {
            if let Some(t) = killed_at {
                tally.worst_gone = tally.worst_gone.max(t.elapsed());
            }
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the client never saw its server go ({mode})"
        );
        assert!(
            killed_at.is_none_or(|t| t.elapsed() < Duration::from_secs(1)),
            "a SIGKILLed server was not seen gone within 1 s ({mode})"
        );
    }
    if killed_at.is_none() {
        server.wait(Duration::from_secs(20));
    }
    tally.writes += steps;
}

#[test]
fn hostile_server_processes_do_not_hurt_their_clients() {
    let path = socket_path("hostile-server");
    let mut rng = Rng(0xbad5_e7ee ^ iterations());
    let mut tally = Tally::default();
    // A life in each mode first: what the process sets up once (the hang-up watcher thread,
    // the closer thread) is counted in the baseline.
    for mode in NotifyMode::ALL {
        one_server(&path, mode, &mut rng, &mut tally);
    }
    // What the last warm-up life held may still be on its way out (a descriptor on the closer
    // thread's queue, a mapping dropped by a thread not yet scheduled): the baseline is taken
    // once two readings 50 ms apart agree.
    let before = settled_holdings();
    let start = Instant::now();
    let target = tally.writes + iterations();
    while tally.writes < target {
        let mode = NotifyMode::ALL[rng.below(4) as usize];
        one_server(&path, mode, &mut rng, &mut tally);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let grew = |a: (usize, usize)| a.0 > before.0 || a.1 > before.1;
    let mut after = holdings();
    while grew(after) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        after = holdings();
    }
    eprintln!(
        "{} fake servers ({} SIGKILLed) made {} hostile writes in {:.1?}; {} clients refused \
         the scribbled pair at attach; the others' waits: \
         {} ended with completions, {} with errors, {} timed out; {} forged handles refused; \
         the slowest `PeerGone` after a SIGKILL: {:.1?}; descriptors and mappings {after:?} \
         (before: {before:?})",
        tally.servers,
        tally.killed,
        tally.writes,
        start.elapsed(),
        tally.refused_welcomes,
        tally.completions,
        tally.errors,
        tally.timeouts,
        tally.refused_handles,
        tally.worst_gone,
    );
    assert!(
        !grew(after),
        "the clients leaked descriptors or mappings: {after:?} after, {before:?} before"
    );
}
