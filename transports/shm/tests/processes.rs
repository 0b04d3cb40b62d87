//! The shm transport across real processes: this test binary re-executes itself as the echo
//! server (`child_server`) or as a client (`child_client_forever`), and the tests talk to,
//! kill and reap those children. Every wait is bounded; every child is reaped.

mod support;

use std::time::{Duration, Instant};

use subring_shm::echo::{self, EchoOp, EchoReq, EchoStatus, ECHO_PROTOCOL};
use subring_shm::queue::{Completer, QueueError, Submitter};
use subring_shm::{BufHandle, NotifyMode, Server, ServerConfig, ServerSleep};
use support::*;

const PATH_ENV: &str = "SUBRING_SHM_TEST_PATH";
const MODE_ENV: &str = "SUBRING_SHM_TEST_MODE";
/// `futex` makes the child server sleep on futexes ([`ServerSleep::Futex`]) instead of epoll.
const SLEEP_ENV: &str = "SUBRING_SHM_TEST_SLEEP";

/// The echo server, as a child process. Serves until killed (or two minutes pass).
#[test]
#[ignore = "run as a child process by the other tests"]
fn child_server() {
    let Ok(path) = std::env::var(PATH_ENV) else {
        return;
    };
    let mut config = ServerConfig::new(ECHO_PROTOCOL);
    if std::env::var(SLEEP_ENV).as_deref() == Ok("futex") {
        config.sleep = ServerSleep::Futex;
    }
    let mut server = Server::bind(&path, config, echo::handler_factory()).unwrap();
    let secs = std::env::var("SUBRING_SHM_TEST_SERVE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    server.run_for(Duration::from_secs(secs)).unwrap();
}

/// A client that streams echo requests until killed (or two minutes pass).
#[test]
#[ignore = "run as a child process by the other tests"]
fn child_client_forever() {
    let Ok(path) = std::env::var(PATH_ENV) else {
        return;
    };
    let mode = std::env::var(MODE_ENV).unwrap().parse().unwrap();
    let mut client = connect_retry(path.as_ref(), &options(mode), WAIT);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        echo_many(&mut client, 100, 8, 200);
    }
}

fn start_server(test: &str) -> (ChildGuard, std::path::PathBuf) {
    start_server_sleeping(test, ServerSleep::Epoll)
}

fn start_server_sleeping(test: &str, sleep: ServerSleep) -> (ChildGuard, std::path::PathBuf) {
    let secs = std::env::var("SUBRING_SHM_TEST_SERVE_SECS").ok();
    start_server_serving(test, sleep, secs)
}

/// A child server that serves for `secs` seconds (`None`: the default two minutes).
fn start_server_serving(
    test: &str,
    sleep: ServerSleep,
    secs: Option<String>,
) -> (ChildGuard, std::path::PathBuf) {
    let path = socket_path(test);
    let sleep = match sleep {
        ServerSleep::Epoll => "epoll",
        ServerSleep::Futex => "futex",
    };
    let mut env = vec![
        (PATH_ENV, path.display().to_string()),
        (SLEEP_ENV, sleep.into()),
    ];
    if let Some(secs) = secs {
        env.push(("SUBRING_SHM_TEST_SERVE_SECS", secs));
    }
    let child = spawn_child("child_server", &env);
    (child, path)
}

const SLEEPS: [ServerSleep; 2] = [ServerSleep::Epoll, ServerSleep::Futex];

#[test]
fn echo_across_processes_in_every_mode() {
    for sleep in SLEEPS {
        echo_in_every_mode(sleep);
    }
}

fn echo_in_every_mode(sleep: ServerSleep) {
    let (_server, path) = start_server_sleeping(&format!("every_mode_{sleep:?}"), sleep);
    for mode in NotifyMode::ALL {
        let mut client = connect_retry(&path, &options(mode), WAIT);
        assert_ne!(client.server_pid(), std::process::id());
        echo_many(&mut client, 2_000, 16, 256);
        let (kick, call) = (client.doorbell_stats(), client.notify_stats());
        assert!(kick.rung + kick.skipped > 0, "{mode}: doorbell used");
        assert!(call.waits > 0, "{mode}: waited for completions");
        if mode == NotifyMode::Spin {
            assert_eq!(kick.rung, 0, "a spin-mode client never rings the doorbell");
            assert_eq!(call.sleeps, 0, "a spin-mode client never sleeps");
        }
    }
}

#[test]
fn many_clients_on_one_server() {
    for sleep in SLEEPS {
        many_clients(sleep);
    }
}

fn many_clients(sleep: ServerSleep) {
    let (_server, path) = start_server_sleeping(&format!("many_clients_{sleep:?}"), sleep);
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let path = path.clone();
            let mode = [NotifyMode::Adaptive, NotifyMode::EventFd, NotifyMode::Futex][i % 3];
            std::thread::spawn(move || {
                let mut client = connect_retry(&path, &options(mode), WAIT);
                echo_many(&mut client, 500, 4 + i as u64, 64 + 16 * i);
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
    let mut probe = connect_retry(&path, &options(NotifyMode::EventFd), WAIT);
    let start = Instant::now();
    loop {
        let (live, ended) = stats(&mut probe);
        if live == 1 && ended >= 6 {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "server still holds clients: live {live}, ended {ended}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn killed_client_is_released_and_others_keep_being_served() {
    for sleep in SLEEPS {
        killed_client(sleep);
    }
}

fn killed_client(sleep: ServerSleep) {
    let (_server, path) = start_server_sleeping(&format!("killed_client_{sleep:?}"), sleep);
    let mut ours = connect_retry(&path, &options(NotifyMode::EventFd), WAIT);
    let mut victim = spawn_child(
        "child_client_forever",
        &[
            (PATH_ENV, path.display().to_string()),
            (MODE_ENV, "eventfd".into()),
        ],
    );
    let start = Instant::now();
    while stats(&mut ours).0 < 2 {
        assert!(start.elapsed() < WAIT, "the child client never connected");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Let it stream for a moment, then kill it mid-stream.
    std::thread::sleep(Duration::from_millis(100));
    victim.kill();
    let start = Instant::now();
    loop {
        let (live, ended) = stats(&mut ours);
        if live == 1 && ended >= 1 {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "killed client not released: live {live}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    echo_many(&mut ours, 500, 8, 128);
}

#[test]
fn killed_server_is_peer_gone_for_its_clients() {
    for mode in [
        NotifyMode::Spin,
        NotifyMode::Adaptive,
        NotifyMode::EventFd,
        NotifyMode::Futex,
    ] {
        let (mut server, path) = start_server(&format!("killed_server_{mode}"));
        let mut client = connect_retry(&path, &options(mode), WAIT);
        echo_many(&mut client, 10, 2, 32);
        server.kill();
        let start = Instant::now();
        match client.wait(Some(WAIT)) {
            Err(QueueError::PeerGone) => {}
            other => panic!("{mode}: waiting on a dead server gave {other:?}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{mode}: took {:?} to notice the server died",
            start.elapsed()
        );
        // Submitting now fails too, at the latest once the ring is full.
        let mut refused = None;
        for _ in 0..1_000 {
            let r = client
                .push(EchoReq::default())
                .map_err(|r| r.error)
                .and_then(|()| client.submit().map(|_| ()));
            if let Err(e) = r {
                refused = Some(e);
                break;
            }
        }
        assert!(
            matches!(refused, Some(QueueError::PeerGone)),
            "{mode}: submitting to a dead server gave {refused:?}"
        );
    }
}

#[test]
fn a_client_waiting_without_a_timeout_sees_its_server_die_in_every_mode() {
    // With liveness checks an hour apart, only the control socket's hang-up can end these
    // waits: an eventfd-mode client sleeps on it beside its eventfd, the others are woken by
    // the process's watcher thread.
    for mode in NotifyMode::ALL {
        let (mut server, path) = start_server(&format!("hang_up_wakes_{mode}"));
        let mut opts = options(mode);
        opts.liveness_interval = Duration::from_secs(3600);
        let mut client = connect_retry(&path, &opts, WAIT);
        echo_many(&mut client, 10, 2, 32);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let got = client.wait(None);
            let _ = tx.send(got);
        });
        std::thread::sleep(Duration::from_millis(50));
        server.kill();
        let got = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| {
                panic!(
                    "{mode}: a client blocked with no timeout was not woken by its server's death"
                )
            });
        assert!(
            matches!(got, Err(QueueError::PeerGone)),
            "{mode}: waiting on a dead server gave {got:?}"
        );
    }
}

#[test]
fn bad_handles_get_an_error_reply_and_the_server_goes_on() {
    let (_server, path) = start_server("bad_handles");
    let mut client = connect_retry(&path, &options(NotifyMode::EventFd), WAIT);
    let good = client.alloc().unwrap().handle();
    let bad = [
        BufHandle {
            offset: 1 << 40,
            len: 16,
            region: 0,
        },
        BufHandle {
            offset: 0,
            len: 64,
            region: 0,
        }, // the ring header, not a buffer
        BufHandle {
            offset: good.offset + 1,
            len: 8,
            region: 0,
        }, // not a buffer start
        BufHandle {
            offset: good.offset,
            len: 1 << 20,
            region: 0,
        }, // longer than a buffer
        BufHandle {
            offset: good.offset,
            len: 8,
            region: 7,
        }, // an unregistered region
        BufHandle {
            offset: u64::MAX - 3,
            len: 16,
            region: 0,
        }, // overflowing
    ];
    for (i, buf) in bad.into_iter().enumerate() {
        for op in [EchoOp::SUM, EchoOp::UPPER] {
            let r = call(
                &mut client,
                EchoReq {
                    seq: i as u64,
                    op,
                    reserved: 0,
                    buf,
                },
            )
            .unwrap();
            assert_eq!(r.status, EchoStatus::BAD_HANDLE, "handle {buf:?} op {op:?}");
            assert_eq!(r.seq, i as u64);
        }
    }
    let r = call(
        &mut client,
        EchoReq {
            op: EchoOp(99),
            ..EchoReq::default()
        },
    )
    .unwrap();
    assert_eq!(r.status, EchoStatus::BAD_OP);
    echo_many(&mut client, 200, 8, 100);
}

/// Sequence-checked messages across two processes in every notify mode and both server
/// sleeps: each answer must carry the next sequence number (the echo server answers one
/// client's requests in order), so a lost, duplicated or reordered message fails at once.
/// 20 000 per mode here; a soak: `SUBRING_SOAK_MESSAGES=1000000000 SUBRING_SHM_TEST_SERVE_SECS=36000
/// cargo test --release -p subring-shm --test processes sequence -- --nocapture`.
#[test]
fn sequence_checked_messages_in_every_mode() {
    let n: u64 = std::env::var("SUBRING_SOAK_MESSAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    // Long enough for four modes at a slow 50 000 messages a second (a soak runs for long).
    let serve = (4 * n / 50_000).max(120).to_string();
    for sleep in SLEEPS {
        let (_server, path) =
            start_server_serving(&format!("sequence_{sleep:?}"), sleep, Some(serve.clone()));
        for mode in NotifyMode::ALL {
            let mut client = connect_retry(&path, &options(mode), WAIT);
            let start = Instant::now();
            let (mut sent, mut next) = (0u64, 0u64);
            let mut out = Vec::with_capacity(64);
            while next < n {
                while sent < n && sent - next < 32 {
                    let req = EchoReq {
                        seq: sent,
                        op: EchoOp::PING,
                        ..EchoReq::default()
                    };
                    if client.push(req).is_err() {
                        break;
                    }
                    sent += 1;
                }
                client.submit().unwrap();
                out.clear();
                if client.reap_into(&mut out, 64).unwrap() == 0 {
                    client.wait(Some(WAIT)).unwrap();
                    client.reap_into(&mut out, 64).unwrap();
                }
                for r in &out {
                    assert_eq!(r.status, EchoStatus::OK);
                    assert_eq!(
                        r.seq, next,
                        "{sleep:?}/{mode}: answer {} where {next} was due (lost, duplicated \
                         or reordered)",
                        r.seq
                    );
                    next += 1;
                }
            }
            eprintln!(
                "{sleep:?} server, {mode} client: {n} sequence-checked messages in {:?}, none \
                 lost, duplicated or reordered",
                start.elapsed()
            );
        }
    }
}

/// SIGKILL at random points, of either side, in random notify modes: every killed client is
/// released by the server, and every client of a killed server sees `PeerGone`, promptly. The
/// bound asserted is a generous 1 s, not a speed (tests run in parallel on small machines): a
/// missed wake-up shows as the 20 s wait timeout, as it did before `ServiceGone::declare` woke
/// unconditionally (a server killed after claiming its sleeping client's word, before its
/// wake-up). The worst times are printed; docs/security.md records a soak's. 8 kills of each
/// kind per server sleep here; more with `SUBRING_KILLS=N`.
#[test]
fn random_kills_are_seen_promptly() {
    let kills: u64 = std::env::var("SUBRING_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let limit = Duration::from_secs(1);
    let mut worst = (Duration::ZERO, Duration::ZERO);
    for sleep in SLEEPS {
        // Clients killed mid-stream.
        let (_server, path) = start_server_sleeping(&format!("random_kills_{sleep:?}"), sleep);
        let mut ours = connect_retry(&path, &options(NotifyMode::EventFd), WAIT);
        for _ in 0..kills {
            let mode = ["spin", "adaptive", "eventfd", "futex"][rand(4) as usize];
            let ended_before = stats(&mut ours).1;
            let mut victim = spawn_child(
                "child_client_forever",
                &[
                    (PATH_ENV, path.display().to_string()),
                    (MODE_ENV, mode.into()),
                ],
            );
            let start = Instant::now();
            while stats(&mut ours).0 < 2 {
                assert!(start.elapsed() < WAIT, "the child client never connected");
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_micros(rand(30_000)));
            victim.kill(); // SIGKILL, and reaped: the process is gone
            let dead = Instant::now();
            loop {
                let (live, ended) = stats(&mut ours);
                if live == 1 && ended > ended_before {
                    break;
                }
                assert!(
                    dead.elapsed() < WAIT,
                    "a killed {mode} client was never released"
                );
                std::thread::sleep(Duration::from_micros(200));
            }
            let took = dead.elapsed();
            worst.0 = worst.0.max(took);
            assert!(
                took < limit,
                "{sleep:?} server: a killed {mode} client was released after {took:?}"
            );
        }
        drop(ours);

        // Servers killed mid-stream.
        for k in 0..kills {
            let (mut server, path) =
                start_server_sleeping(&format!("random_server_kill_{sleep:?}_{k}"), sleep);
            let mode = NotifyMode::ALL[rand(4) as usize];
            let mut client = connect_retry(&path, &options(mode), WAIT);
            let streaming = std::thread::spawn(move || {
                let mut seq = 0;
                loop {
                    let r = call(
                        &mut client,
                        EchoReq {
                            seq,
                            op: EchoOp::PING,
                            ..EchoReq::default()
                        },
                    );
                    match r {
                        Ok(_) => seq += 1,
                        Err(e) => return (Instant::now(), e),
                    }
                }
            });
            std::thread::sleep(Duration::from_micros(1_000 + rand(30_000)));
            server.kill();
            let dead = Instant::now();
            let (seen, error) = streaming.join().unwrap();
            assert!(
                matches!(error, QueueError::PeerGone),
                "{mode}: a dead server gave {error:?}"
            );
            let took = seen.saturating_duration_since(dead);
            worst.1 = worst.1.max(took);
            assert!(
                took < limit,
                "{mode}: the server's death was seen after {took:?}"
            );
        }
    }
    eprintln!(
        "{} kills of each side: worst release of a killed client {:?}, worst PeerGone after a \
         killed server {:?}",
        2 * kills,
        worst.0,
        worst.1
    );
}
