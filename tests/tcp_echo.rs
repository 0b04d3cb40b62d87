//! The TCP echo example (`examples/tcp_echo`) as a test: its server and load generator, over
//! loopback, with a buffer ring too small for the load, and across a veth pair between two
//! network namespaces the test creates.

#[path = "support/netns.rs"]
mod netns;

#[path = "../examples/tcp_echo/load.rs"]
#[allow(dead_code)]
mod load;
#[path = "../examples/tcp_echo/server.rs"]
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
