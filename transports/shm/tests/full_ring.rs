//! A server whose client does not reap sleeps: it waits on the client's full completion ring
//! (the client's reaping wakes it) instead of polling, in both server sleeps; and a client
//! whose submission ring is full waits for the server to take.

use std::time::{Duration, Instant};

use subring_shm::queue::{Completer, Submitter};
use subring_shm::{
    socket_pair, Client, ClientOptions, NotifyMode, Server, ServerConfig, ServerSleep,
};

const LIMIT: Duration = Duration::from_secs(10);

fn served_by_a_sleeping_server(sleep: ServerSleep, mode: NotifyMode) {
    served(sleep, mode, false);
}

/// As [`served_by_a_sleeping_server`], the client not trusting its server if `untrusting` (a
/// futex doorbell, which a server sleeping in epoll waits on through io_uring, the room in a
/// full completion ring included).
fn served(sleep: ServerSleep, mode: NotifyMode, untrusting: bool) {
    let mut config = ServerConfig::new("inc");
    config.sleep = sleep;
    let mut server = Server::from_fn(config, |ctx, x: u64| ctx.complete(x + 1)).unwrap();
    let (server_end, client_end) = socket_pair().unwrap();
    server.add_connection(server_end).unwrap();
    let mut opts = ClientOptions::new("inc").mode(mode);
    opts.sq_capacity = 64;
    opts.cq_capacity = 4;
    if untrusting {
        opts = opts.untrusted_server();
    }
    let h = std::thread::spawn(move || Client::<u64, u64>::from_socket(client_end, &opts));
    let start = Instant::now();
    while !h.is_finished() {
        assert!(start.elapsed() < LIMIT, "handshake did not finish");
        server.run_for(Duration::from_millis(2)).unwrap();
    }
    let mut client = match h.join().unwrap() {
        Ok(client) => client,
        Err(subring_shm::Error::Refused(r @ subring_shm::proto::Refusal::Unsupported { .. })) => {
            assert!(
                std::env::var_os("SUBRING_REQUIRE_FUTEX_WAITS").is_none(),
                "SUBRING_REQUIRE_FUTEX_WAITS is set, but: {r}"
            );
            eprintln!("skipped: {r}");
            return;
        }
        Err(e) => panic!("{sleep:?}/{mode}: {e}"),
    };
    if untrusting {
        assert_eq!(client.kick_mode(), NotifyMode::Futex);
    }

    for x in 0..32 {
        client.push(x).unwrap();
    }
    client.submit().unwrap();
    // The server answers 4 and finds the completion ring full; then it sleeps until the
    // client reaps. Each sleep of `run_for` ends at its limit at the latest: a server that
    // polled the full ring (as it did, every millisecond) would sleep a hundred times here.
    server.run_for(Duration::from_millis(20)).unwrap();
    let sleeps = server.stats().sleeps;
    server.run_for(Duration::from_millis(100)).unwrap();
    let idle_sleeps = server.stats().sleeps - sleeps;
    assert!(
        idle_sleeps <= 2,
        "{sleep:?}/{mode}: the server woke {idle_sleeps} times in 100 ms on a full ring"
    );
    assert_eq!(server.stats().requests, 4, "{sleep:?}/{mode}");

    // The client reaps on another thread while the server turns: every reap that makes room
    // wakes it, and everything is answered. The server's sleeps end at the reaps, not at the
    // end of its 1 s turns: a server that slept through one would keep the reaper waiting
    // that long.
    let reaper = std::thread::spawn(move || {
        let start = Instant::now();
        let mut got = Vec::new();
        while got.len() < 32 {
            got.push(client.wait_reap(LIMIT).unwrap());
        }
        (got, client, start.elapsed())
    });
    let start = Instant::now();
    while !reaper.is_finished() {
        assert!(
            start.elapsed() < LIMIT,
            "{sleep:?}/{mode}: not everything was answered"
        );
        server.run_for(Duration::from_secs(1)).unwrap();
    }
    let (got, client, took) = reaper.join().unwrap();
    assert!(
        took < Duration::from_millis(750),
        "{sleep:?}/{mode}: the server slept through a reap that made room ({took:?})"
    );
    assert_eq!(got, (1..=32).collect::<Vec<u64>>(), "{sleep:?}/{mode}");
    assert_eq!(server.stats().requests, 32);
    drop(client);
}

#[test]
fn a_full_completion_ring_puts_an_epoll_server_to_sleep() {
    for mode in [NotifyMode::EventFd, NotifyMode::Futex, NotifyMode::Adaptive] {
        served_by_a_sleeping_server(ServerSleep::Epoll, mode);
    }
}

#[test]
fn a_full_completion_ring_puts_a_futex_server_to_sleep() {
    for mode in [NotifyMode::Futex, NotifyMode::EventFd, NotifyMode::Adaptive] {
        served_by_a_sleeping_server(ServerSleep::Futex, mode);
    }
}

/// The same with a client that does not trust its server: the epoll server's io_uring wait on
/// the completion ring's producer word ends at the client's reaping.
#[test]
fn a_full_completion_ring_puts_an_epoll_server_to_sleep_under_a_futex_doorbell() {
    for mode in [NotifyMode::Futex, NotifyMode::Adaptive] {
        served(ServerSleep::Epoll, mode, true);
    }
}
