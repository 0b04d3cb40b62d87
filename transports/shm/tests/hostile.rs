//! Hostile peers from outside (issue: hostile peers, part 2): what a malicious client or server
//! can send that once leaked descriptors, blocked a thread or starved the other clients. Each
//! test failed before its fix.

// The tests' own bookkeeping (a lock that serialises the descriptor counts) is not a protocol
// under test: std types.
#![allow(clippy::disallowed_types)]

mod support;

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use subring_shm::echo::{self, EchoReq, EchoResp, ECHO_PROTOCOL};
use subring_shm::proto::{self, ClientMsg, ServerMsg, Welcome, WireMode};
use subring_shm::{Client, ClientOptions, Error, NotifyMode, Server, ServerConfig};
use support::*;

/// Tests that count this process's descriptors run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn eventfds(n: usize) -> Vec<OwnedFd> {
    (0..n)
        .map(|_| EventFd::from_flags(EfdFlags::EFD_CLOEXEC).unwrap().into())
        .collect()
}

fn hello_bytes() -> Vec<u8> {
    let body = postcard::to_stdvec(&ClientMsg::Hello(hello())).unwrap();
    frame(proto::PROTOCOL_VERSION, proto::KIND_MESSAGE, &body)
}

/// A hello carrying 5 or more descriptors (more than a control message may) is refused, and
/// every descriptor that came with it is closed: none accumulates in the server.
#[test]
fn descriptors_beyond_the_limit_are_closed_by_the_server() {
    let _serial = serial();
    let (srv, path) = echo_server("many-fds-server");
    let before = open_fds();
    for round in 0..40 {
        let sock = raw_connect(&path);
        let fds = eventfds(5 + round % 4);
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        send_raw(&sock, &hello_bytes(), &raw);
        drop(fds);
        // Refused, then hung up.
        let answer = recv_raw(&sock);
        assert!(
            matches!(decode(&answer), ServerMsg::Refused(_)),
            "round {round}: {:?}",
            decode(&answer)
        );
        assert!(recv_raw(&sock).is_empty(), "round {round}: not hung up");
    }
    fds_back_to(before, "after 40 hellos with 5-8 descriptors each");
    still_serves(&path);
    drop(srv);
}

/// A client whose "server" sends a welcome with 6 descriptors refuses it and closes them all.
#[test]
fn descriptors_beyond_the_limit_are_closed_by_the_client() {
    let _serial = serial();
    let before = open_fds();
    for _ in 0..20 {
        let (ours, theirs) = subring_shm::socket_pair().unwrap();
        let fake = std::thread::spawn(move || {
            let _hello = recv_raw(&ours);
            let fds = eventfds(6);
            let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
            send_raw(&ours, &welcome_bytes(), &raw);
            drop(fds);
            ours
        });
        let options = ClientOptions::new(ECHO_PROTOCOL)
            .buffers(256, 8)
            .capacity(64)
            .mode(NotifyMode::Futex);
        let e = Client::<EchoReq, EchoResp>::from_socket(theirs, &options).unwrap_err();
        assert!(matches!(e, Error::BadFds(_)), "{e}");
        drop(fake.join().unwrap());
    }
    fds_back_to(before, "after 20 welcomes with 6 descriptors each");
}

fn welcome_bytes() -> Vec<u8> {
    let w = Welcome {
        client_id: 1,
        server_pid: 1,
        region_len: 1 << 20,
        pair_offset: 0,
        pool_offset: 1 << 16,
        buf_size: 256,
        buf_count: 8,
        sq_capacity: 64,
        cq_capacity: 64,
        kick_mode: WireMode::EventFd,
        call_mode: WireMode::Futex,
        kick_fd: true,
        call_fd: false,
        event_idx: true,
    };
    let body = postcard::to_stdvec(&ServerMsg::Welcome(w)).unwrap();
    frame(proto::PROTOCOL_VERSION, proto::KIND_MESSAGE, &body)
}

/// A TCP socket on loopback whose close blocks: `SO_LINGER` of `linger` seconds and a send
/// queue the peer never drains. Returns it and the listener that must outlive it (closing the
/// listener would reset the connection and end the linger).
fn lingering_socket(linger: i32) -> (OwnedFd, std::net::TcpListener) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    stream.set_nonblocking(true).unwrap();
    let chunk = vec![0u8; 1 << 16];
    loop {
        match stream.write(&chunk) {
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the send queue: {e}"),
        }
    }
    stream.set_nonblocking(false).unwrap();
    let fd: OwnedFd = stream.into();
    nix::sys::socket::setsockopt(
        &fd,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: linger,
        },
    )
    .unwrap();
    (fd, listener)
}

/// Turns `server` for 300 ms, each turn (10 ms of serving) checked to end within a second: a
/// close that waited for a lingering socket would take five.
fn turns_stay_short<V: subring_shm::Service<EchoReq, EchoResp>>(
    server: &mut Server<EchoReq, EchoResp, V>,
    why: &str,
) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(300) {
        let turn = Instant::now();
        server.run_for(Duration::from_millis(10)).unwrap();
        assert!(
            turn.elapsed() < Duration::from_secs(1),
            "a server turn took {:?}: {why}",
            turn.elapsed()
        );
    }
}

/// A hello carrying a socket whose close would block for the linger time does not stall the
/// server. (The server runs on this thread here, so that this side's copy of the socket is
/// closed before the server reads the message: the server's close is then the last one, the
/// one that would wait.)
#[test]
fn a_lingering_socket_in_a_hello_does_not_stall_the_server() {
    let path = socket_path("linger-server");
    let mut server = Server::bind(
        &path,
        ServerConfig::new(ECHO_PROTOCOL),
        echo::handler_factory(),
    )
    .unwrap();
    let (tcp, _listener) = lingering_socket(5);
    let sock = raw_connect(&path);
    send_raw(&sock, &hello_bytes(), &[tcp.as_raw_fd()]);
    drop(tcp); // the message in flight holds the socket: this close does not wait
    turns_stay_short(&mut server, "it closed the lingering socket itself");
    let answer = recv_raw(&sock);
    assert!(matches!(decode(&answer), ServerMsg::Refused(_)));
    assert_eq!(server.stats().refused, 1);
}

/// Nor does a lingering socket queued behind a message that gets the connection refused: the
/// server never reads it, and closing the connection drops it (the kernel empties the socket's
/// queue at its last close). That close runs on the closer thread; on the server's thread it
/// waited the linger time.
#[test]
fn a_lingering_socket_queued_behind_a_bad_message_does_not_stall_the_server() {
    let path = socket_path("linger-queued");
    let mut server = Server::bind(
        &path,
        ServerConfig::new(ECHO_PROTOCOL),
        echo::handler_factory(),
    )
    .unwrap();
    let (tcp, _listener) = lingering_socket(5);
    let sock = raw_connect(&path);
    send_raw(&sock, b"not a control message", &[]);
    send_raw(&sock, &hello_bytes(), &[tcp.as_raw_fd()]);
    drop(tcp); // the message in flight holds the socket: this close does not wait
    turns_stay_short(
        &mut server,
        "it closed the connection, and the socket queued on it, itself",
    );
    // (The client's read would say ECONNRESET: the server closed with a message unread.)
    assert_eq!(server.stats().refused, 1);
    drop(sock);
}

/// The same from the client's side: a "server" that sends a lingering socket as the memfd.
/// (Its welcome is queued before the client even says hello, and this side's copy closed, so
/// that the client's close is the last one.)
#[test]
fn a_lingering_socket_in_a_welcome_does_not_stall_the_client() {
    let (tcp, _listener) = lingering_socket(5);
    let (ours, theirs) = subring_shm::socket_pair().unwrap();
    let fds = eventfds(1);
    send_raw(
        &ours,
        &welcome_bytes(),
        &[tcp.as_raw_fd(), fds[0].as_raw_fd()],
    );
    drop(tcp);
    let mut options = ClientOptions::new(ECHO_PROTOCOL)
        .buffers(256, 8)
        .capacity(64)
        .mode(NotifyMode::Futex);
    options.control_timeout = Duration::from_secs(1);
    let start = Instant::now();
    let e = Client::<EchoReq, EchoResp>::from_socket(theirs, &options).unwrap_err();
    assert!(matches!(e, Error::BadFds(_)), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "refusing the welcome took {:?}",
        start.elapsed()
    );
    drop(ours);
}

/// The client's side of the queued case: a "server" answers the hello with garbage and queues a
/// lingering socket behind it. The client gives up on the garbage; its socket's close, which
/// drops the queued socket, runs on the closer thread (inline it waited the linger time).
#[test]
fn a_lingering_socket_queued_behind_a_bad_welcome_does_not_stall_the_client() {
    let (tcp, _listener) = lingering_socket(5);
    let (ours, theirs) = subring_shm::socket_pair().unwrap();
    send_raw(&ours, b"not a control message", &[]);
    send_raw(&ours, &welcome_bytes(), &[tcp.as_raw_fd()]);
    drop(tcp);
    let mut options = ClientOptions::new(ECHO_PROTOCOL)
        .buffers(256, 8)
        .capacity(64)
        .mode(NotifyMode::Futex);
    options.control_timeout = Duration::from_secs(1);
    let start = Instant::now();
    assert!(Client::<EchoReq, EchoResp>::from_socket(theirs, &options).is_err());
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "giving up on the welcome took {:?}",
        start.elapsed()
    );
    drop(ours);
}

/// Connecting to a server that never accepts (its backlog full) gives up after the control
/// timeout instead of blocking forever.
#[test]
fn connecting_to_a_full_backlog_times_out() {
    use nix::sys::socket::{
        bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
    };
    let path = socket_path("full-backlog");
    let addr = UnixAddr::new(&path).unwrap();
    let listener = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(listener.as_raw_fd(), &addr).unwrap();
    listen(&listener, Backlog::new(0).unwrap()).unwrap();
    // Fill the backlog with connections nobody accepts.
    let mut held = Vec::new();
    loop {
        let s = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .unwrap();
        match connect(s.as_raw_fd(), &addr) {
            Ok(()) => held.push(s),
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => panic!("filling the backlog: {e}"),
        }
        assert!(held.len() < 1000, "the backlog never filled");
    }
    let mut options = ClientOptions::new(ECHO_PROTOCOL);
    options.control_timeout = Duration::from_millis(300);
    let start = Instant::now();
    let e = Client::<EchoReq, EchoResp>::connect(&path, &options).unwrap_err();
    let took = start.elapsed();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(took < Duration::from_secs(3), "gave up after {took:?}");
    drop(held);
    drop(listener);
    let _ = std::fs::remove_file(&path);
}

/// The server half of the descriptor-limit test: lowers its descriptor limit, uses up every
/// descriptor but a few, serves for a while (clients arriving are refused), then frees some
/// and serves on. Prints its CPU time over the starved phase.
#[test]
#[ignore = "the server half of a cross-process test"]
fn fd_limit_server_child() {
    let Ok(path) = std::env::var("SUBRING_FD_LIMIT_SOCKET") else {
        return;
    };
    let mut server = Server::bind(
        &path,
        ServerConfig::new(ECHO_PROTOCOL),
        echo::handler_factory(),
    )
    .unwrap();
    let limit = open_fds() as u64 + 16;
    let rlim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: a valid resource and a pointer to a valid rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) }, 0);
    let mut hog = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hog.push(f);
    }
    // Starved: serve for 1.5 s with no descriptor to spare.
    server.run_for(Duration::from_millis(1500)).unwrap();
    // Free some and serve until told to stop (the parent kills this process).
    hog.truncate(hog.len().saturating_sub(8));
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        server.run_for(Duration::from_millis(100)).unwrap();
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): utime is 14th, stime 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// At the descriptor limit the server refuses new clients at once instead of spinning on its
/// listener (under 5% of a core), and serves the next client once descriptors free.
#[test]
fn at_the_descriptor_limit_the_server_does_not_spin() {
    let path = socket_path("fd-limit");
    let mut child = spawn_child(
        "fd_limit_server_child",
        &[("SUBRING_FD_LIMIT_SOCKET", path.display().to_string())],
    );
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < WAIT, "the server never bound its socket");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    // Clients arriving now find no descriptor: they are refused (a hang-up or an error), not
    // left waiting.
    let mut options = options(NotifyMode::EventFd);
    options.control_timeout = Duration::from_millis(500);
    let ticks0 = cpu_ticks(child.pid());
    let t0 = Instant::now();
    for _ in 0..3 {
        assert!(Client::<EchoReq, EchoResp>::connect(&path, &options).is_err());
    }
    let held: Vec<OwnedFd> = (0..3).map(|_| raw_connect(&path)).collect();
    std::thread::sleep(Duration::from_millis(800));
    let ticks = cpu_ticks(child.pid()) - ticks0;
    let secs = t0.elapsed().as_secs_f64();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let share = ticks as f64 / hz / secs;
    assert!(
        share < 0.05,
        "the server used {:.0}% of a core at the descriptor limit",
        share * 100.0
    );
    drop(held);
    // After the child frees descriptors (1.5 s in), a client is served.
    let mut client = connect_retry(&path, &options, WAIT);
    echo_many(&mut client, 20, 4, 64);
    drop(client);
    child.kill();
    let _ = std::fs::remove_file(&path);
}

fn still_serves(path: &std::path::Path) {
    let mut client = connect_retry(path, &options(NotifyMode::EventFd), WAIT);
    echo_many(&mut client, 50, 4, 64);
}

/// A "server" that lays out a real queue pair and then places the client's pool over the
/// pair's or a ring's header, or at an offset that overflows: the client refuses the welcome
/// (a typed error, in debug builds too: no arithmetic panic).
#[test]
fn a_welcome_placing_the_pool_over_the_rings_is_refused() {
    use subring_planes::pair::{PairConfig, PairLayout, PairSignals, ServiceSide};
    use subring_shm::{Region, RegionOptions};
    let config = PairConfig {
        sq_capacity: 64,
        cq_capacity: 64,
        kick_mode: NotifyMode::Futex,
        call_mode: NotifyMode::Futex,
        event_idx: true,
    };
    let layout = PairLayout::of::<EchoReq, EchoResp>(&config).unwrap();
    for (pool_offset, what) in [
        (0u64, "the pair's header"),
        (layout.sq as u64, "the submission ring's header"),
        (layout.cq as u64, "the completion ring's header"),
        (u64::MAX, "an offset that overflows"),
        (
            u64::MAX - 255,
            "an offset that overflows with the pool's span",
        ),
    ] {
        let region = std::sync::Arc::new(
            Region::memfd("fake-server", 1 << 20, RegionOptions::new().id(0)).unwrap(),
        );
        let _service = ServiceSide::<EchoReq, EchoResp>::create(
            region.clone(),
            0,
            &config,
            PairSignals::default(),
        )
        .unwrap();
        let w = Welcome {
            client_id: 1,
            server_pid: 1,
            region_len: 1 << 20,
            pair_offset: 0,
            pool_offset,
            buf_size: 256,
            buf_count: 8,
            sq_capacity: 64,
            cq_capacity: 64,
            kick_mode: WireMode::Futex,
            call_mode: WireMode::Futex,
            kick_fd: false,
            call_fd: false,
            event_idx: true,
        };
        let body = postcard::to_stdvec(&ServerMsg::Welcome(w)).unwrap();
        let bytes = frame(proto::PROTOCOL_VERSION, proto::KIND_MESSAGE, &body);
        let (ours, theirs) = subring_shm::socket_pair().unwrap();
        send_raw(&ours, &bytes, &[region.fd().unwrap().as_raw_fd()]);
        let options = ClientOptions::new(ECHO_PROTOCOL)
            .buffers(256, 8)
            .capacity(64)
            .mode(NotifyMode::Futex);
        match Client::<EchoReq, EchoResp>::from_socket(theirs, &options) {
            Err(Error::Pool(e)) => eprintln!("{what}: refused: {e}"),
            Err(e) => panic!("{what}: refused for another reason: {e}"),
            Ok(_) => panic!("{what}: the client accepted a pool over its rings"),
        }
        drop(ours);
    }
}

/// A server that corrupts its client's completion ring and then dies is reported gone, in
/// every notify mode: the corrupt ring used to end every wait first (found by the hostile
/// server campaign: after a SIGKILL, an eventfd- or spin-mode client saw `Corrupt` at every
/// wait, forever, and never `PeerGone`).
#[test]
fn a_server_that_corrupts_the_ring_and_dies_is_seen_gone() {
    use subring_shm::queue::{Completer, QueueError, Submitter};
    use subring_shm::BufHandle;
    const POOL: u64 = FAKE_POOL;
    for mode in NotifyMode::ALL {
        let (
            FakePair {
                region, service, ..
            },
            ours,
            mut client,
        ) = connect_to_fake_server(mode);
        // The server writes ones over everything below the pool but the pair header's first
        // line (so the client still attaches), then dies.
        region
            .write_from(
                BufHandle {
                    offset: 64,
                    len: (POOL - 64) as u32,
                    region: 0,
                },
                &vec![0xff; (POOL - 64) as usize],
            )
            .unwrap();
        let corrupt = client.wait(Some(Duration::from_millis(1)));
        assert!(
            matches!(corrupt, Err(QueueError::Corrupt(_))),
            "{mode}: {corrupt:?}"
        );
        // Dies as a SIGKILLed process does: no close of its side, its socket hangs up.
        std::mem::forget(service);
        drop(ours);
        let start = Instant::now();
        let seen = loop {
            match client.wait(Some(Duration::from_millis(10))) {
                Err(QueueError::PeerGone) => break true,
                _ if start.elapsed() > Duration::from_secs(2) => break false,
                _ => {}
            }
        };
        assert!(seen, "{mode}: the dead server was never reported gone");
        let _ = client.push(EchoReq::default());
    }
}

/// Where the fake server's pool lies in its region.
const FAKE_POOL: u64 = 1 << 16;

/// A fake server (a queue pair this process serves, see `fake_pair`) and a client in `mode`
/// connected to it; the server's end of the socket is returned so that dropping it hangs up.
fn connect_to_fake_server(mode: NotifyMode) -> (FakePair, OwnedFd, Client<EchoReq, EchoResp>) {
    let mut pair = fake_pair(mode, 32, FAKE_POOL);
    let (ours, theirs) = subring_shm::socket_pair().unwrap();
    send_raw(&ours, &welcome_frame(&pair.welcome), &raw_fds(&pair.fds));
    pair.fds.clear();
    let options = ClientOptions::new(ECHO_PROTOCOL)
        .buffers(256, 32)
        .capacity(64)
        .mode(mode);
    let client = Client::<EchoReq, EchoResp>::from_socket(theirs, &options).unwrap();
    (pair, ours, client)
}

/// A server that posts one completion of a batch the client waits for, then dies (no close of
/// its side, its socket hangs up): the batch wait returns what came, and only the next wait
/// reports the server gone. (In eventfd mode the wait sleeps on the hang-up itself; it used to
/// report `PeerGone` with the completion still unreaped.)
#[test]
fn a_batch_wait_keeps_what_a_dying_server_posted() {
    use subring_shm::queue::{Completer, QueueError};
    for mode in NotifyMode::ALL {
        let (
            FakePair {
                region: _region,
                mut service,
                ..
            },
            ours,
            mut client,
        ) = connect_to_fake_server(mode);
        service.complete(EchoResp::default()).unwrap();
        service.flush().unwrap();
        std::mem::forget(service);
        drop(ours);
        let start = Instant::now();
        let ready = client.wait_completions(4, Some(Duration::from_secs(10)));
        assert!(
            matches!(ready, Ok(1)),
            "{mode}: {ready:?} after {:?}",
            start.elapsed()
        );
        assert!(client.reap().unwrap().is_some(), "{mode}");
        let gone = client.wait_completions(4, Some(Duration::from_secs(10)));
        assert!(
            matches!(gone, Err(QueueError::PeerGone)),
            "{mode}: {gone:?}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{mode}: the death took {:?} to be seen",
            start.elapsed()
        );
    }
}

/// A client cannot make the server's wake-ups block. Had it the server's call eventfd (the
/// open file is shared with `SCM_RIGHTS`, flags included), it could clear `O_NONBLOCK` and
/// write the counter one short of its limit: the server's next wake-up `write` would block its
/// thread for good, and every client with it. It gets an epoll instance watching the eventfd
/// instead, which it can re-flag but not write; then, asleep, it has the server wake it, and
/// another client is served as usual.
#[test]
fn a_client_cannot_block_the_servers_wake_ups() {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use subring_shm::queue::{Completer, Submitter};
    let _serial = serial();
    let (srv, path) = echo_server("saturate");
    let mut hostile = connect_retry(&path, &options(NotifyMode::EventFd), WAIT);
    let fd = hostile
        .completion_fd()
        .expect("eventfd mode")
        .try_clone_to_owned()
        .unwrap();
    let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL).unwrap());
    fcntl(&fd, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK)).unwrap();
    let wrote = nix::unistd::write(&fd, &(u64::MAX - 1).to_ne_bytes());
    assert!(
        wrote.is_err(),
        "the client wrote the server's wake-up counter to its limit"
    );
    // Asleep (announced), with a request: the server's answer comes with a wake-up.
    assert!(!hostile.arm().unwrap());
    hostile.push(EchoReq::default()).unwrap();
    hostile.submit().unwrap();
    let mut honest = connect_retry(&path, &options(NotifyMode::EventFd), WAIT);
    echo_many(&mut honest, 32, 4, 64);
    // And the hostile client was woken and answered.
    hostile.wait(Some(WAIT)).unwrap();
    assert!(hostile.reap().unwrap().is_some());
    drop((hostile, honest));
    drop(srv);
}

/// A welcome whose descriptors its modes do not use (an epoll instance to wait in beside a
/// futex-mode client, a kick eventfd beside a futex doorbell) is refused before any of them is
/// used: the client would otherwise set up, and could wait in, an epoll instance the server
/// made, and count on a hang-up watch its futex waits never see.
#[test]
fn a_welcome_with_descriptors_its_modes_do_not_use_is_refused() {
    // (That a refused welcome's descriptors are all closed is
    // `descriptors_beyond_the_limit_are_closed_by_the_client`'s to check: counting this
    // process's descriptors here raced the tests that hold lingering sockets for seconds.)
    // Serial all the same, so as not to disturb the tests that count.
    let _serial = serial();
    for (kick_fd, call_fd) in [(false, true), (true, false), (true, true)] {
        let (ours, theirs) = subring_shm::socket_pair().unwrap();
        let fake = std::thread::spawn(move || {
            let _hello = recv_raw(&ours);
            let mut pair = fake_pair(NotifyMode::Futex, 8, FAKE_POOL);
            pair.welcome.kick_fd = kick_fd;
            pair.welcome.call_fd = call_fd;
            let signal = subring_planes::interrupt::EventFdSignal::new().unwrap();
            if kick_fd {
                pair.fds.push(eventfds(1).pop().unwrap());
            }
            if call_fd {
                pair.fds.push(signal.peer_waiter().unwrap());
            }
            send_raw(&ours, &welcome_frame(&pair.welcome), &raw_fds(&pair.fds));
            // Kept until the client is done: the epoll instance watches its eventfd.
            (ours, pair, signal)
        });
        let options = ClientOptions::new(ECHO_PROTOCOL)
            .buffers(256, 8)
            .capacity(64)
            .mode(NotifyMode::Futex);
        let e = Client::<EchoReq, EchoResp>::from_socket(theirs, &options).unwrap_err();
        assert!(
            matches!(
                &e,
                Error::Malformed {
                    what: "welcome",
                    ..
                }
            ),
            "kick fd {kick_fd}, call fd {call_fd}: {e}"
        );
        drop(fake.join().unwrap());
    }
}

/// A server that answers a client asking for a futex doorbell (`untrusted_server`) with an
/// eventfd doorbell anyway, the eventfd its own, is refused before the eventfd is used
/// (`Error::Untrusted`): a server holding the eventfd a client's kicks write can clear its
/// `O_NONBLOCK` and fill its counter, and the client's next kick would block for good. (An
/// honest server gives such a client a futex doorbell or refuses it.) The same welcome is
/// taken by a client that did not ask.
#[test]
fn an_untrusting_client_refuses_an_eventfd_doorbell_it_did_not_ask_for() {
    let _serial = serial();
    for untrusting in [true, false] {
        let (ours, theirs) = subring_shm::socket_pair().unwrap();
        let fake = std::thread::spawn(move || {
            let hello = recv_raw(&ours);
            // The eventfd doorbell an epoll server gives a client that does not ask for a
            // futex one.
            let pair = fake_pair_kicked(NotifyMode::EventFd, NotifyMode::Futex, 8, FAKE_POOL);
            send_raw(&ours, &welcome_frame(&pair.welcome), &raw_fds(&pair.fds));
            // Kept until the client is done.
            (ours, pair, hello)
        });
        let mut options = ClientOptions::new(ECHO_PROTOCOL)
            .buffers(256, 8)
            .capacity(64)
            .mode(NotifyMode::Futex);
        if untrusting {
            options = options.untrusted_server();
        }
        let connected = Client::<EchoReq, EchoResp>::from_socket(theirs, &options);
        let (_, _, hello) = fake.join().unwrap();
        // The hello asked for a futex doorbell exactly when the client does not trust.
        match postcard::from_bytes::<ClientMsg>(&hello[7..]).unwrap() {
            ClientMsg::Hello(h) => assert_eq!(h.futex_doorbell, untrusting),
            other => panic!("expected a hello, got {other:?}"),
        }
        match (untrusting, connected) {
            (true, Err(Error::Untrusted { detail })) => {
                assert!(detail.contains("eventfd"), "{detail}")
            }
            (true, other) => panic!("expected Error::Untrusted, got {:?}", other.map(drop)),
            (false, Ok(client)) => assert_eq!(client.kick_mode(), NotifyMode::EventFd),
            (false, Err(e)) => panic!("a trusting client refused the welcome: {e}"),
        }
    }
}
