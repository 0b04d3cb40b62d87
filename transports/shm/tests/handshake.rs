//! The control plane against peers that get it wrong: other versions, garbage, short messages,
//! silence, mismatched types and sizes, unexpected descriptors. The server (on a thread here)
//! refuses each with a message that says why, and goes on serving well-behaved clients.

mod support;

use std::os::fd::AsRawFd;
use std::time::Duration;

use subring_shm::echo::{self, EchoReq, EchoResp, ECHO_PROTOCOL};
use subring_shm::proto::{self, ClientMsg, EntryShape, Hello, Refusal, ServerMsg};
use subring_shm::queue::Submitter;
use subring_shm::{
    Client, ClientOptions, ConfigError, Error, NotifyMode, Server, ServerConfig, ServerSleep,
    ServerThread,
};
use support::*;

type EchoServer = ServerThread<EchoReq, EchoResp, subring_shm::PerClient<echo::EchoHandler>>;

fn server(test: &str, tweak: impl FnOnce(&mut ServerConfig)) -> (EchoServer, std::path::PathBuf) {
    let path = socket_path(test);
    let mut config = ServerConfig::new(ECHO_PROTOCOL);
    config.handshake_timeout = Duration::from_millis(300);
    tweak(&mut config);
    let server = Server::bind(&path, config, echo::handler_factory()).unwrap();
    (server.spawn().unwrap(), path)
}

fn refusal_for(path: &std::path::Path, bytes: &[u8]) -> Refusal {
    let sock = raw_connect(path);
    send_raw(&sock, bytes, &[]);
    match decode(&recv_raw(&sock)) {
        ServerMsg::Refused(r) => {
            // The server then hangs up.
            assert!(
                recv_raw(&sock).is_empty(),
                "server kept a refused connection"
            );
            r
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn still_serves(path: &std::path::Path) {
    let mut client = connect_retry(path, &options(NotifyMode::EventFd), WAIT);
    echo_many(&mut client, 50, 4, 64);
}

#[test]
fn other_versions_are_told_ours_both_ways() {
    let (srv, path) = server("versions", |_| {});
    // A client from the future: the server answers in the version-independent format.
    let sock = raw_connect(&path);
    send_raw(
        &sock,
        &frame(99, proto::KIND_MESSAGE, b"whatever v99 sends"),
        &[],
    );
    let answer = recv_raw(&sock);
    assert_eq!(
        answer,
        frame(
            proto::PROTOCOL_VERSION,
            proto::KIND_VERSION_REFUSED,
            &proto::PROTOCOL_VERSION.to_le_bytes()
        )
    );
    still_serves(&path);
    srv.stop().unwrap();

    // A server from the future refuses us: the client says so.
    let (ours, theirs) = subring_shm::socket_pair().unwrap();
    let fake = std::thread::spawn(move || {
        let _hello = recv_raw(&theirs);
        send_raw(
            &theirs,
            &frame(7, proto::KIND_VERSION_REFUSED, &7u16.to_le_bytes()),
            &[],
        );
    });
    let err =
        Client::<EchoReq, EchoResp>::from_socket(ours, &options(NotifyMode::EventFd)).unwrap_err();
    fake.join().unwrap();
    assert!(
        matches!(
            err,
            Error::Version {
                ours: proto::PROTOCOL_VERSION,
                peer: 7
            }
        ),
        "{err}"
    );
}

#[test]
fn garbage_and_short_messages_are_refused() {
    let (srv, path) = server("garbage", |_| {});
    for (what, bytes) in [
        ("short", b"SB".to_vec()),
        ("wrong magic", b"XXXX\x01\x00\x01hello".to_vec()),
        (
            "garbled body",
            frame(proto::PROTOCOL_VERSION, proto::KIND_MESSAGE, &[0xff; 40]),
        ),
        ("unknown kind", frame(proto::PROTOCOL_VERSION, 9, b"")),
        (
            "message before hello",
            frame(
                proto::PROTOCOL_VERSION,
                proto::KIND_MESSAGE,
                &postcard::to_stdvec(&ClientMsg::Shutdown).unwrap(),
            ),
        ),
    ] {
        let r = refusal_for(&path, &bytes);
        assert!(matches!(r, Refusal::Malformed(_)), "{what}: {r:?}");
        assert!(!r.to_string().is_empty());
    }
    still_serves(&path);
    let stats = srv.stop().unwrap().stats();
    assert!(stats.refused >= 5, "{stats:?}");
}

#[test]
fn mismatched_hellos_are_refused_with_the_reason() {
    let (srv, path) = server("mismatch", |c| c.max_capacity = 1024);
    let encode = |h: Hello| {
        frame(
            proto::PROTOCOL_VERSION,
            proto::KIND_MESSAGE,
            &postcard::to_stdvec(&ClientMsg::Hello(h)).unwrap(),
        )
    };
    type Check = fn(&Refusal) -> bool;
    let cases: Vec<(Hello, Check)> = vec![
        (
            Hello {
                protocol: "other/1".into(),
                ..hello()
            },
            |r| matches!(r, Refusal::Protocol { client, .. } if client == "other/1"),
        ),
        (
            Hello {
                request: EntryShape { size: 8, align: 8 },
                ..hello()
            },
            |r| matches!(r, Refusal::EntryShape { which, client, .. } if which == "request" && client.size == 8),
        ),
        (
            Hello {
                completion: EntryShape { size: 40, align: 4 },
                ..hello()
            },
            |r| matches!(r, Refusal::EntryShape { which, client, .. } if which == "completion" && client.size == 40),
        ),
        (
            Hello {
                sq_capacity: 100,
                ..hello()
            },
            |r| {
                *r == Refusal::Unaligned {
                    what: "submission ring capacity".into(),
                    asked: 100,
                    of: 0,
                }
            },
        ),
        (
            Hello {
                cq_capacity: 1 << 20,
                ..hello()
            },
            |r| {
                *r == Refusal::Limit {
                    what: "completion ring capacity".into(),
                    asked: 1 << 20,
                    min: 2,
                    max: 1024,
                }
            },
        ),
        (
            Hello {
                buf_size: 100,
                ..hello()
            },
            |r| {
                *r == Refusal::Unaligned {
                    what: "buffer size".into(),
                    asked: 100,
                    of: 64,
                }
            },
        ),
        (
            Hello {
                buf_size: 1 << 30,
                ..hello()
            },
            |r| {
                *r == Refusal::Limit {
                    what: "buffer size".into(),
                    asked: 1 << 30,
                    min: 64,
                    max: 1 << 20,
                }
            },
        ),
        (
            Hello {
                buf_count: 0,
                ..hello()
            },
            |r| {
                *r == Refusal::Limit {
                    what: "buffer count".into(),
                    asked: 0,
                    min: 1,
                    max: 1 << 20,
                }
            },
        ),
        (
            Hello {
                buf_size: 1 << 20,
                buf_count: 1 << 20,
                ..hello()
            },
            |r| matches!(r, Refusal::Limit { what, max, .. } if what.starts_with("shared memory") && *max == 1 << 30),
        ),
    ];
    for (h, check) in cases {
        let r = refusal_for(&path, &encode(h.clone()));
        assert!(check(&r), "{h:?}: refusal {r:?}");
    }
    // The typed client reports the same refusal.
    let err = Client::<u64, u64>::connect(&path, &ClientOptions::new(ECHO_PROTOCOL)).unwrap_err();
    assert!(
        matches!(err, Error::Refused(Refusal::EntryShape { .. })),
        "{err}"
    );
    let err = Client::<EchoReq, EchoResp>::connect(&path, &ClientOptions::new("nope")).unwrap_err();
    assert!(
        matches!(&err, Error::Refused(Refusal::Protocol { client, .. }) if client == "nope"),
        "{err}"
    );
    // A hello that smuggles descriptors is refused too (and the descriptor is not kept).
    let sock = raw_connect(&path);
    let extra = nix::sys::eventfd::EventFd::new().unwrap();
    send_raw(&sock, &encode(hello()), &[extra.as_raw_fd()]);
    assert!(matches!(
        decode(&recv_raw(&sock)),
        ServerMsg::Refused(Refusal::Malformed(_))
    ));
    still_serves(&path);
    srv.stop().unwrap();
}

#[test]
fn silent_connections_time_out_and_full_servers_say_busy() {
    let (srv, path) = server("silent", |c| c.max_clients = 2);
    let silent = raw_connect(&path);
    // The server hangs up on a client that says nothing within the handshake timeout.
    assert!(recv_raw(&silent).is_empty(), "silent client not dropped");
    let a = connect_retry(&path, &options(NotifyMode::EventFd), WAIT);
    let b = connect_retry(&path, &options(NotifyMode::EventFd), WAIT);
    let err =
        Client::<EchoReq, EchoResp>::connect(&path, &options(NotifyMode::EventFd)).unwrap_err();
    assert!(
        matches!(err, Error::Refused(Refusal::Busy { max_clients: 2 })),
        "{err}"
    );
    drop((a, b));
    // Room again once they are released.
    let start = std::time::Instant::now();
    loop {
        match Client::<EchoReq, EchoResp>::connect(&path, &options(NotifyMode::EventFd)) {
            Ok(_) => break,
            Err(Error::Refused(Refusal::Busy { .. })) if start.elapsed() < WAIT => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("{e}"),
        }
    }
    srv.stop().unwrap();
}

#[test]
fn socket_paths_in_use_and_missing_are_clear_errors() {
    let (srv, path) = server("in_use", |_| {});
    let err = Server::bind(
        &path,
        ServerConfig::new(ECHO_PROTOCOL),
        echo::handler_factory(),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&path.display().to_string()) && text.contains("another server"),
        "{text}"
    );
    srv.stop().unwrap();
    // A socket file left behind by a dead server is replaced.
    let stale = socket_path("stale");
    {
        let l = std::os::unix::net::UnixListener::bind(&stale).unwrap();
        drop(l);
    }
    assert!(stale.exists());
    let s = Server::bind(
        &stale,
        ServerConfig::new(ECHO_PROTOCOL),
        echo::handler_factory(),
    )
    .unwrap();
    drop(s);
    let err =
        Client::<EchoReq, EchoResp>::connect(socket_path("nobody"), &options(NotifyMode::EventFd))
            .unwrap_err();
    assert!(
        matches!(&err, Error::Path { source, hint, .. }
            if source.kind() == std::io::ErrorKind::NotFound && !hint.is_empty()),
        "{err}"
    );
}

#[test]
fn extra_regions_register_and_resolve() {
    use subring_shm::echo::{EchoOp, EchoStatus};
    use subring_shm::{BufHandle, Region, RegionOptions};
    let at = |region: u32, offset: u64, len: u32| BufHandle {
        offset,
        len,
        region,
    };
    let (srv, path) = server("regions", |c| c.max_regions = 1);
    let mut client = connect_retry(&path, &options(NotifyMode::EventFd), WAIT);
    let region =
        std::sync::Arc::new(Region::memfd("extra", 8192, RegionOptions::new().id(5)).unwrap());
    client.register_region(region.clone()).unwrap();
    let bytes = b"payload in a registered region";
    // SAFETY: the region is ours, 8192 bytes long, and nothing else writes it while we fill it.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), region.as_ptr().add(100), bytes.len()) };
    let h = at(5, 100, bytes.len() as u32);
    let r = call(
        &mut client,
        EchoReq {
            seq: 1,
            op: EchoOp::SUM,
            reserved: 0,
            buf: h,
        },
    )
    .unwrap();
    assert_eq!(r.status, EchoStatus::OK);
    assert_eq!(r.sum, echo::checksum(bytes));
    // Past its end: refused.
    let r = call(
        &mut client,
        EchoReq {
            seq: 2,
            op: EchoOp::SUM,
            reserved: 0,
            buf: at(5, 8190, 16),
        },
    )
    .unwrap();
    assert_eq!(r.status, echo::EchoStatus::BAD_HANDLE);
    // A second region is over this server's limit; a duplicate id or an anonymous region is
    // refused on the client side.
    let second =
        std::sync::Arc::new(Region::memfd("second", 4096, RegionOptions::new().id(6)).unwrap());
    let err = client.register_region(second).unwrap_err();
    assert!(
        matches!(err, Error::Refused(Refusal::Limit { .. })),
        "{err}"
    );
    assert!(client.register_region(region).is_err());
    let anon = std::sync::Arc::new(Region::anonymous(4096, RegionOptions::new().id(9)).unwrap());
    assert!(client.register_region(anon).is_err());
    echo_many(&mut client, 20, 4, 64);
    srv.stop().unwrap();
}

#[test]
fn a_server_that_exits_when_empty_returns_once_its_client_leaves() {
    let sleeps = [ServerSleep::Epoll, ServerSleep::Futex];
    for (mode, sleep) in NotifyMode::ALL
        .into_iter()
        .flat_map(|m| sleeps.map(|s| (m, s)))
    {
        let (server_end, client_end) = subring_shm::socket_pair().unwrap();
        let mut config = ServerConfig::new(ECHO_PROTOCOL);
        config.exit_when_empty = true;
        config.sleep = sleep;
        let mut server = Server::new(config, echo::handler_factory()).unwrap();
        server.add_connection(server_end).unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let result = server.run();
            let _ = done_tx.send(());
            (result, server.stats())
        });
        let mut client =
            Client::<EchoReq, EchoResp>::from_socket(client_end, &options(mode)).unwrap();
        let req = EchoReq {
            seq: 1,
            op: echo::EchoOp::PING,
            ..EchoReq::default()
        };
        let resp = call(&mut client, req).unwrap();
        assert_eq!((resp.seq, resp.status), (1, echo::EchoStatus::OK));
        // Still serving while the client is connected.
        assert!(done_rx.recv_timeout(Duration::from_millis(50)).is_err());
        drop(client);
        // A spin client leaves from the middle of a polling turn: the server must not go to
        // sleep after releasing it.
        done_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| {
                panic!("{mode:?}, {sleep:?}: the server kept running after its client left")
            });
        let (result, stats) = thread.join().unwrap();
        result.unwrap();
        assert_eq!((stats.welcomed, stats.released, stats.clients), (1, 1, 0));
    }
}

/// A server sleeping on futexes still sees its sockets through its control thread: it drops a
/// silent connection at the handshake deadline (a timed futex sleep), welcomes and serves
/// clients of every mode, releases one that leaves, and stops when told. Too many clients for
/// one `futex_waitv` is a configuration error that says so.
#[test]
fn a_futex_sleeping_server_watches_its_sockets() {
    let (srv, path) = server("futex_sleep", |c| c.sleep = ServerSleep::Futex);
    let silent = raw_connect(&path);
    assert!(recv_raw(&silent).is_empty(), "silent client not dropped");
    for mode in NotifyMode::ALL {
        let mut client = connect_retry(&path, &options(mode), WAIT);
        let doorbell = if mode == NotifyMode::Spin {
            NotifyMode::Spin
        } else {
            NotifyMode::Futex
        };
        assert_eq!(client.kick_mode(), doorbell, "{mode}");
        echo_many(&mut client, 300, 8, 64);
        if mode != NotifyMode::Spin {
            // Idle for a while, the server is asleep on its futexes: the next request must
            // ring the doorbell to be served.
            std::thread::sleep(Duration::from_millis(50));
            let rung = client.doorbell_stats().rung;
            let req = EchoReq {
                seq: 7,
                op: echo::EchoOp::PING,
                ..EchoReq::default()
            };
            assert_eq!(call(&mut client, req).unwrap().seq, 7);
            assert_eq!(client.doorbell_stats().rung, rung + 1, "{mode}: rang once");
        }
    }
    // Stopping wakes it through the control thread, and it joins that thread.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(srv.stop().map(|s| s.stats()));
    });
    let stats = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the stop signal reaches a futex-sleeping server")
        .unwrap();
    assert_eq!((stats.welcomed, stats.clients), (4, 0), "{stats:?}");
    assert!(stats.sleeps > 0, "it slept: {stats:?}");

    let mut config = ServerConfig::new(ECHO_PROTOCOL);
    config.sleep = ServerSleep::Futex;
    config.max_clients = 200;
    let err = Server::new(config, echo::handler_factory()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Config(ConfigError::FutexClients {
                max_clients: 200,
                max: 127
            })
        ),
        "{err}"
    );
}

/// A client that does not trust its server takes only wake-ups the server cannot make block:
/// it asks for a futex doorbell, which a server sleeping in epoll (the default) gives it by
/// waiting on its word through io_uring, and one sleeping on futexes gives every client; it
/// refuses eventfd mode for itself. (Without the option, the same client takes the epoll
/// server's eventfd doorbell; before the io_uring waits, the epoll server's doorbell made the
/// untrusting client refuse it.)
#[test]
fn a_client_that_does_not_trust_its_server_takes_only_futex_kicks() {
    let distrust = options(NotifyMode::Futex).untrusted_server();
    let trusting = options(NotifyMode::Futex);
    let (epoll_server, path) = server("untrusted-epoll", |_| {});
    let client = Client::<EchoReq, EchoResp>::connect(&path, &trusting).unwrap();
    assert_eq!(client.kick_mode(), NotifyMode::EventFd);
    drop(client);
    let err = Client::<EchoReq, EchoResp>::connect(
        &path,
        &options(NotifyMode::EventFd).untrusted_server(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    let served = |path: &std::path::Path| {
        for mode in [NotifyMode::Futex, NotifyMode::Adaptive, NotifyMode::Spin] {
            let Some(mut client) = connect_untrusting(path, &distrust.clone().mode(mode)) else {
                return;
            };
            assert_ne!(client.kick_mode(), NotifyMode::EventFd);
            echo_many(&mut client, 8, 2, 32);
        }
    };
    served(&path);
    epoll_server.stop().unwrap();
    let (futex_server, path) = server("untrusted-futex", |c| c.sleep = ServerSleep::Futex);
    served(&path);
    futex_server.stop().unwrap();
}

/// A server sleeping in epoll is woken by a futex doorbell: a client that asks for one
/// (`untrusted_server`) and pauses before every request, long enough for the server to fall
/// asleep, has each answered, the server's sleeps ended by its io_uring waits on the client's
/// word. Beside it, an eventfd-doorbell client is
/// served as before.
#[test]
fn a_server_sleeping_in_epoll_is_woken_by_a_futex_doorbell() {
    let (server, path) = server("futex-doorbell", |c| c.idle_poll = Duration::ZERO);
    let mut eventfd = Client::<EchoReq, EchoResp>::connect(&path, &options(NotifyMode::EventFd))
        .expect("an eventfd-doorbell client");
    let Some(mut futex) = connect_untrusting(&path, &options(NotifyMode::Futex)) else {
        return;
    };
    assert_eq!(futex.kick_mode(), NotifyMode::Futex);
    let rounds = 20;
    for round in 0..rounds {
        // Long enough for the server to fall asleep, most times on a loaded machine.
        std::thread::sleep(Duration::from_millis(5));
        // One answer each, in turn: a lost wake-up would leave the request waiting until the
        // echo's timeout fails the test.
        echo_many(&mut futex, 1, 1, 32);
        if round % 4 == 0 {
            echo_many(&mut eventfd, 1, 1, 32);
        }
    }
    drop((futex, eventfd));
    let stats = server.stop().unwrap().stats();
    assert!(stats.sleeps >= rounds / 2, "{stats:?}");
    assert!(
        stats.futex_doorbell_waits >= rounds / 2,
        "the server did not wait on the futex doorbell before most requests: {stats:?}"
    );
}

const NO_IO_URING_ENV: &str = "SUBRING_NO_IO_URING_SERVER";

/// Makes `io_uring_setup` fail with `EPERM` for this thread and the threads it starts, as a
/// container's seccomp profile may (Docker's default does).
fn deny_io_uring_setup() {
    use libc::{sock_filter, sock_fprog};
    let stmt = |code: u32, k: u32| sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let filter = [
        // The system call's number: `seccomp_data.nr`, at offset 0.
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integers and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "no_new_privs: {}", std::io::Error::last_os_error());
    // SAFETY: `prog` points at `filter`, both alive for the call; the kernel copies the filter.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const sock_fprog,
        )
    };
    assert_eq!(rc, 0, "seccomp: {}", std::io::Error::last_os_error());
}

/// An echo server in a process where io_uring is off (a seccomp filter): run by
/// `a_server_without_io_uring_refuses_a_futex_doorbell_by_name`.
#[test]
#[ignore = "run as a child process"]
fn child_server_without_io_uring() {
    let Ok(path) = std::env::var(NO_IO_URING_ENV) else {
        return;
    };
    deny_io_uring_setup();
    let config = ServerConfig::new(ECHO_PROTOCOL);
    let mut server = Server::bind(&path, config, echo::handler_factory()).unwrap();
    server.run_for(Duration::from_secs(60)).unwrap();
}

/// Where io_uring is off (a container's seccomp profile, a sysctl), a server sleeping in epoll
/// cannot wait on a futex doorbell: it refuses the client that asks for one, saying what it
/// would need, and serves everyone else as before.
#[test]
fn a_server_without_io_uring_refuses_a_futex_doorbell_by_name() {
    let path = socket_path("no-io-uring");
    let _server = spawn_child(
        "child_server_without_io_uring",
        &[(NO_IO_URING_ENV, path.display().to_string())],
    );
    let mut plain = connect_retry(&path, &options(NotifyMode::Futex), WAIT);
    echo_many(&mut plain, 4, 2, 32);
    let err =
        Client::<EchoReq, EchoResp>::connect(&path, &options(NotifyMode::Futex).untrusted_server())
            .unwrap_err();
    match &err {
        Error::Refused(Refusal::Unsupported { what, needs }) => {
            eprintln!("refused: {err}");
            assert!(what.contains("futex doorbell"), "{err}");
            assert!(needs.contains("FUTEX_WAIT"), "{err}");
            // The filter's error, not a kernel without the operation.
            let eperm = std::io::Error::from_raw_os_error(libc::EPERM).to_string();
            assert!(needs.contains(&eperm), "{err}");
        }
        _ => panic!("expected a refusal naming io_uring's FUTEX_WAIT, got: {err}"),
    }
    echo_many(&mut plain, 4, 2, 32);
}
