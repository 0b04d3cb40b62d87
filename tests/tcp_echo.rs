//! The TCP echo example (`examples/tcp_echo`) as a test: its server and load generator, over
//! loopback, with a buffer ring too small for the load, and across a veth pair between two
//! network namespaces the test creates.

#[path = "support/netns.rs"]
mod netns;

#[path = "../examples/tcp_echo/load.rs"]
#[allow(dead_code)]
mod load;
#[path = "../examples/tcp_echo/server/mod.rs"]
#[allow(dead_code)]
mod server;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::thread::JoinHandle;
use std::time::Duration;

use netns::Topology;
use nix::sys::eventfd::{EfdFlags, EventFd};
use server::{Res, ServerConfig, ServerStats};

/// A server on its own thread, stopped (and joined) by `stop`.
struct Running {
    addr: SocketAddr,
    stop: EventFd,
    thread: JoinHandle<Res<ServerStats>>,
}

fn start(listener: TcpListener, cfg: ServerConfig) -> Running {
    let addr = listener.local_addr().unwrap();
    let stop = EventFd::from_flags(EfdFlags::EFD_CLOEXEC).unwrap();
    let fd = stop.as_fd().try_clone_to_owned().unwrap();
    let thread = std::thread::spawn(move || server::serve(&listener, fd.as_fd(), cfg));
    Running { addr, stop, thread }
}

impl Running {
    fn stop(self) -> ServerStats {
        self.stop.write(1).unwrap();
        self.thread.join().expect("server thread").expect("server")
    }
}

/// Runs `conns` connections of `size`-byte messages for `secs`, and checks what the server
/// counted against what the load generator checked.
fn exercise(addr: SocketAddr, conns: usize, size: usize, secs: f64) -> load::LoadReport {
    let r = load::load(addr, conns, size, Duration::from_secs_f64(secs)).expect("load");
    assert!(r.requests >= conns as u64, "every connection echoed: {r:?}");
    r
}

#[test]
fn echo_over_loopback() {
    let run = start(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        ServerConfig::default(),
    );
    let small = exercise(run.addr, 4, 64, 0.3);
    let large = exercise(run.addr, 16, 4096, 0.3);
    let stats = run.stop();
    assert_eq!(stats.connections, 20);
    assert_eq!(
        stats.bytes,
        small.requests * 64 + large.requests * 4096,
        "every byte the clients checked, and nothing else"
    );
}

/// Zero-copy sends for every echo, from registered memory.
#[test]
fn echo_with_zero_copy_sends() {
    let cfg = ServerConfig {
        zero_copy_from: 1,
        ..ServerConfig::default()
    };
    let run = start(TcpListener::bind("127.0.0.1:0").unwrap(), cfg);
    let r = exercise(run.addr, 8, 4096, 0.3);
    assert_eq!(run.stop().bytes, r.requests * 4096);
}

/// Four 64-byte buffers for sixteen connections of 4 KiB messages: receives run out of buffers
/// (`ENOBUFS`), are re-armed as sends give buffers back, and no byte is lost or reordered.
#[test]
fn echo_with_too_few_buffers() {
    let cfg = ServerConfig {
        buf_size: 64,
        bufs: 4,
        zero_copy_from: usize::MAX,
        ..ServerConfig::default()
    };
    let run = start(TcpListener::bind("127.0.0.1:0").unwrap(), cfg);
    let r = exercise(run.addr, 16, 4096, 0.3);
    let stats = run.stop();
    assert_eq!(stats.bytes, r.requests * 4096);
    assert!(stats.enobufs > 0, "the ring ran dry: {stats:?}");
}

/// Two connection slots for three clients: the third is accepted but waits for a slot until
/// one of the first two closes (no connection is reset for want of a slot).
#[test]
fn a_connection_waits_while_every_slot_is_taken() {
    let cfg = ServerConfig {
        max_conns: 2,
        ..ServerConfig::default()
    };
    let run = start(TcpListener::bind("127.0.0.1:0").unwrap(), cfg);
    let echo = |s: &mut TcpStream, msg: &[u8]| -> std::io::Result<Vec<u8>> {
        s.write_all(msg)?;
        let mut got = vec![0; msg.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    };
    let timeout = Some(Duration::from_secs(5));
    let mut first = TcpStream::connect(run.addr).unwrap();
    let mut second = TcpStream::connect(run.addr).unwrap();
    for s in [&mut first, &mut second] {
        s.set_read_timeout(timeout).unwrap();
        assert_eq!(echo(s, b"hello").unwrap(), b"hello");
    }
    let mut third = TcpStream::connect(run.addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    third.write_all(b"waiting").unwrap();
    let mut got = [0; 7];
    let err = third.read_exact(&mut got).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "no echo while both slots are taken: {err:?}"
    );
    drop(first);
    third.set_read_timeout(timeout).unwrap();
    third
        .read_exact(&mut got)
        .expect("the echo once a slot is free");
    assert_eq!(&got, b"waiting");
    assert_eq!(echo(&mut third, b"again").unwrap(), b"again");
    assert_eq!(echo(&mut second, b"still").unwrap(), b"still");
    let stats = run.stop();
    assert_eq!(stats.connections, 3);
    assert_eq!(stats.waited, 1, "{stats:?}");
}

/// A client that sends without ever reading cannot keep the shared ring's buffers: once it
/// holds `per_conn` of them, the server copies what it holds, gives them back and receives
/// from it into memory of its own; another client's echo goes on.
#[test]
fn a_client_that_never_reads_does_not_starve_the_others() {
    let cfg = ServerConfig {
        bufs: 16,
        per_conn: 4,
        ..ServerConfig::default()
    };
    let run = start(TcpListener::bind("127.0.0.1:0").unwrap(), cfg);
    let hog = TcpStream::connect(run.addr).unwrap();
    hog.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut writer = hog.try_clone().unwrap();
    // Writes until the server stops taking bytes (its echoes fill the socket this client
    // never reads), at most 64 MiB.
    let flood = std::thread::spawn(move || {
        let chunk = vec![7u8; 64 * 1024];
        let mut total = 0usize;
        while total < 64 << 20 {
            match writer.write(&chunk) {
                Ok(n) => total += n,
                Err(_) => break,
            }
        }
        total
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut other = TcpStream::connect(run.addr).unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for i in 0..20u8 {
        let msg = [i; 100];
        other.write_all(&msg).unwrap();
        let mut got = [0; 100];
        other
            .read_exact(&mut got)
            .expect("an echo while the other client hogs");
        assert_eq!(got, msg);
    }
    let flooded = flood.join().unwrap();
    assert!(
        flooded < 64 << 20,
        "the server kept taking bytes: {flooded}"
    );
    drop(hog);
    let stats = run.stop();
    assert!(stats.demoted >= 1, "{stats:?}");
}

#[test]
fn echo_across_a_veth_pair_between_namespaces() {
    let Some(net) = Topology::create_or_skip("sre", &["a", "b"], &[("a", "x", "b", "y")]) else {
        return;
    };
    let (a, b) = (net.end("a", "x"), net.end("b", "y"));
    a.add_addr("10.77.0.1/24").unwrap();
    b.add_addr("10.77.0.2/24").unwrap();
    // The server's thread lives in namespace a, the load generator's in b.
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        a.enter().unwrap();
        let listener = TcpListener::bind("10.77.0.1:0").unwrap();
        let run = start(listener, ServerConfig::default());
        tx.send(run.addr).unwrap();
        run
    });
    let addr = rx.recv_timeout(Duration::from_secs(20)).expect("server up");
    let run = server.join().unwrap();
    let client = std::thread::spawn(move || {
        b.enter().unwrap();
        exercise(addr, 8, 1500, 0.3)
    });
    let r = client.join().expect("load across the veth pair");
    assert_eq!(run.stop().bytes, r.requests * 1500);
}

/// A client that writes 64 KiB pieces for as long as the server takes them (each write
/// bounded by 300 ms, at most 64 MiB in all) and never reads; returns its socket, still open,
/// and the error that stopped its writes (`None` if it wrote all 64 MiB).
fn hog(addr: SocketAddr) -> (TcpStream, Option<std::io::Error>) {
    hog_from(TcpStream::connect(addr).unwrap())
}

/// [`hog`] on `s`, connected.
fn hog_from(s: TcpStream) -> (TcpStream, Option<std::io::Error>) {
    s.set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let mut total = 0usize;
    while total < 64 << 20 {
        match (&s).write(&chunk) {
            Ok(n) => total += n,
            Err(e) => return (s, Some(e)),
        }
    }
    (s, None)
}

/// An echo of `msg` on a new connection, within 5 s.
fn echo_once(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(msg)?;
    let mut got = vec![0; msg.len()];
    s.read_exact(&mut got)?;
    Ok(got)
}

/// A client that never reads, with the ring's one buffer in the send of its echo when that
/// stalls: it holds fewer than `per_conn` buffers, so it is not demoted, and its receive
/// finds the ring empty from then on, so it never will be. It used to hold the buffer for
/// good, and every other connection's receive found the ring empty. A send from a ring buffer
/// that stalls is now cancelled, the connection demoted, and the bytes go on from a copy:
/// another client's echo comes.
///
/// For the stall to catch a send at its start (a send that finds some room completes short,
/// and the rest goes on from a copy), the buffers are of 64 bytes, which a send either finds
/// room for or none, and the server's sockets get the smallest send buffer (set on the
/// listener, which they inherit) and the client the smallest receive buffer, so that it comes
/// soon.
#[test]
fn a_client_that_never_reads_keeps_no_ring_buffer() {
    use nix::sys::socket::{connect, setsockopt, socket, sockopt};
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn};
    let cfg = ServerConfig {
        buf_size: 64,
        bufs: 1,
        per_conn: 2,
        zero_copy_from: usize::MAX,
        send_stall: Duration::from_millis(50),
        max_held: usize::MAX,
        ..ServerConfig::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    setsockopt(&listener, sockopt::SndBuf, &1).unwrap();
    let run = start(listener, cfg);
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    setsockopt(&fd, sockopt::RcvBuf, &1).unwrap();
    let SocketAddr::V4(v4) = run.addr else {
        unreachable!("bound to 127.0.0.1")
    };
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(v4)).unwrap();
    let hog = hog_from(TcpStream::from(fd));
    let got = echo_once(run.addr, &[9; 100])
        .expect("an echo while a client that never reads stays connected");
    assert_eq!(got, [9; 100]);
    drop(hog);
    let stats = run.stop();
    assert!(stats.stalled_sends >= 1, "{stats:?}");
}

/// Two slots, both held by clients that went idle: a third client's connection, waiting for
/// a slot, is served once one of them has been idle for `idle_evict` and is closed. It used
/// to wait for as long as the idle clients stayed.
#[test]
fn an_idle_connection_makes_room_for_one_waiting() {
    let cfg = ServerConfig {
        max_conns: 2,
        idle_evict: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let run = start(TcpListener::bind("127.0.0.1:0").unwrap(), cfg);
    let mut idle: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(run.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"hello").unwrap();
            let mut got = [0; 5];
            s.read_exact(&mut got).unwrap();
            s
        })
        .collect();
    let got = echo_once(run.addr, b"waiting").expect("the echo once an idle client made room");
    assert_eq!(got, b"waiting");
    let closed = idle
        .iter_mut()
        .filter(|s| {
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            matches!((&**s).read(&mut [0; 1]), Ok(0))
        })
        .count();
    assert_eq!(closed, 1, "one idle client made room, the other stayed");
    let stats = run.stop();
    assert_eq!(stats.evicted_idle, 1, "{stats:?}");
}

/// One slot, held by a client that never reads: once its sends have made no progress for
/// `send_timeout`, it is closed, and the client waiting for the slot is served. It used to
/// hold the slot (and what it had sent) for good: a connection that is sending is never idle.
#[test]
fn a_client_whose_echo_never_moves_is_closed() {
    let cfg = ServerConfig {
        max_conns: 1,
        send_stall: Duration::from_millis(50),
        send_timeout: Duration::from_millis(300),
        max_held: usize::MAX,
        ..ServerConfig::default()
    };
    let run = start(TcpListener::bind("127.0.0.1:0").unwrap(), cfg);
    let hog = hog(run.addr);
    let got = echo_once(run.addr, b"next").expect("the echo once the slow client was closed");
    assert_eq!(got, b"next");
    drop(hog);
    let stats = run.stop();
    assert!(stats.closed_slow >= 1, "{stats:?}");
}

/// A client that sends and never reads is closed once the server holds `max_held` of its
/// bytes: its writes end in an error (the connection reset), not in a wait. The server used to
/// keep copying what it received for as long as it came, a burst at a time.
#[test]
fn a_client_that_never_reads_is_closed_past_max_held() {
    let cfg = ServerConfig {
        bufs: 16,
        per_conn: 2,
        max_held: 16 * 1024,
        ..ServerConfig::default()
    };
    let run = start(TcpListener::bind("127.0.0.1:0").unwrap(), cfg);
    let (_hog, stopped) = hog(run.addr);
    let e = stopped.expect("the writes stopped");
    assert!(
        matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
        "the writes ended in {e:?}, not in the connection's close"
    );
    let stats = run.stop();
    assert!(stats.closed_slow >= 1, "{stats:?}");
}
