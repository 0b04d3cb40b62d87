//! The server keeps looking at its sockets (new clients, hang-ups, control messages, its own
//! stop) whatever its clients do: patterns of client behaviour that kept the looks from coming.

use std::time::{Duration, Instant};

use subring_shm::echo::{self, EchoOp, EchoReq, EchoResp, ECHO_PROTOCOL};
use subring_shm::queue::Submitter;
use subring_shm::{Client, ClientOptions, NotifyMode, Server, ServerConfig};

/// A server (not spawned: the test runs its turns) with one client in `mode` whose completion
/// ring (4 entries) is full and four more requests wait in its submission ring.
fn client_with_a_full_completion_ring(
    mode: NotifyMode,
) -> (
    Server<EchoReq, EchoResp, impl subring_shm::Service<EchoReq, EchoResp>>,
    Client<EchoReq, EchoResp>,
) {
    let (server_end, client_end) = subring_shm::socket_pair().unwrap();
    let mut server =
        Server::new(ServerConfig::new(ECHO_PROTOCOL), echo::handler_factory()).unwrap();
    server.add_connection(server_end).unwrap();
    let options = ClientOptions::new(ECHO_PROTOCOL).capacity(4).mode(mode);
    let connecting = std::thread::spawn(move || {
        Client::<EchoReq, EchoResp>::from_socket(client_end, &options).unwrap()
    });
    let start = Instant::now();
    while !connecting.is_finished() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{mode}: no handshake"
        );
        server.run_for(Duration::from_millis(5)).unwrap();
    }
    let mut client = connecting.join().unwrap();
    let ping = |seq| EchoReq {
        seq,
        op: EchoOp::PING,
        ..EchoReq::default()
    };
    // Four answers fill the completion ring; four more requests wait behind them.
    for seq in 0..4 {
        client.push(ping(seq)).unwrap();
    }
    client.submit().unwrap();
    server.run_for(Duration::from_millis(20)).unwrap();
    for seq in 4..8 {
        client.push(ping(seq)).unwrap();
    }
    client.submit().unwrap();
    server.run_for(Duration::from_millis(20)).unwrap();
    assert_eq!(server.stats().clients, 1, "{mode}");
    (server, client)
}

/// Runs `server` for 300 ms and checks that it finished its client and went to sleep.
fn finishes_and_sleeps<V: subring_shm::Service<EchoReq, EchoResp>>(
    server: &mut Server<EchoReq, EchoResp, V>,
    what: &str,
) {
    let sleeps = server.stats().sleeps;
    server.run_for(Duration::from_millis(300)).unwrap();
    let stats = server.stats();
    assert_eq!(
        stats.clients, 0,
        "{what}: the closed client is still served: {stats:?}"
    );
    assert!(
        stats.sleeps > sleeps,
        "{what}: the server never slept: {stats:?}"
    );
}

/// A client that closes with its completion ring full and requests still queued: the server
/// cannot take them (no room for their answers), and the client will reap nothing more. It is
/// finished, as a client that died is, and the server goes to sleep. The server used to find
/// that client's ring ready at every turn without serving it: it never finished the client,
/// never slept, and once its polling window had passed, never looked at its sockets again (it
/// took no new client, and did not see this client's goodbye or its own stop).
#[test]
fn a_client_closed_with_a_full_completion_ring_is_finished() {
    for mode in [NotifyMode::EventFd, NotifyMode::Futex] {
        let (mut server, client) = client_with_a_full_completion_ring(mode);
        drop(client);
        finishes_and_sleeps(&mut server, &format!("{mode}"));
    }
}

/// The same state, but the client only sets its closed word (a hostile one, its socket still
/// open, no goodbye): the server finishes it all the same (it used to serve it, and spin, for
/// as long as the socket stayed open).
#[test]
fn a_client_that_only_says_it_closed_with_a_full_completion_ring_is_finished() {
    for mode in [NotifyMode::EventFd, NotifyMode::Futex] {
        let (mut server, client) = client_with_a_full_completion_ring(mode);
        let region = client.region();
        // SAFETY: a fresh shared mapping of the memfd's first page (the queue pair's header,
        // whose third word is the app's closed word), reached only through that atomic word
        // and unmapped below.
        let map = unsafe {
            nix::sys::mman::mmap(
                None,
                std::num::NonZeroUsize::new(4096).unwrap(),
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED,
                region.fd().unwrap(),
                0,
            )
        }
        .unwrap();
        // SAFETY: offset 8 is inside the mapped page and 4-aligned.
        let closed: &subring_planes::sync::AtomicU32 =
            unsafe { &*map.as_ptr().cast::<u8>().add(8).cast() };
        closed.store(1, subring_planes::sync::Ordering::Release);
        finishes_and_sleeps(&mut server, &format!("{mode}, closed word only"));
        // SAFETY: the mapping made above, no longer used.
        unsafe { nix::sys::mman::munmap(map, 4096) }.unwrap();
        drop(client);
    }
}
