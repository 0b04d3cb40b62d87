//! Event-idx suppression across the shm transport: negotiated in the handshake (the client
//! asks, the server grants), and a client waiting for a batch of completions that the server
//! posts one at a time is woken once with it, and at every completion without it.

// The tests' own bookkeeping (a lock) is not a protocol under test: std types.
#![allow(clippy::disallowed_types)]

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use subring_shm::queue::{Completer, Submitter};
use subring_shm::{
    socket_pair, Client, ClientInfo, ClientOptions, Completions, Ctx, NotifyMode, Pending, Server,
    ServerConfig, ServerSleep, Service,
};

const LIMIT: Duration = Duration::from_secs(10);

/// Defers every request (`x`) and answers `x + 1` for as many of them, oldest first, as its
/// gate eventfd has been written times.
struct Trickle {
    gate: Arc<EventFd>,
    held: std::collections::VecDeque<(Pending, u64)>,
}

impl Service<u64, u64> for Trickle {
    type Client = ();

    fn connect(&mut self, _client: &ClientInfo) {}

    fn request(&mut self, _client: &mut (), ctx: &mut Ctx<'_, u64>, x: u64) {
        self.held.push_back((ctx.defer(), x));
    }

    fn poll(&mut self, done: &mut Completions<'_, u64>) -> u32 {
        let Ok(opened) = self.gate.read() else {
            return 0;
        };
        let mut n = 0;
        for _ in 0..opened {
            let Some((pending, x)) = self.held.pop_front() else {
                break;
            };
            done.complete(pending, x + 1);
            n += 1;
        }
        n
    }

    fn disconnect(&mut self, _client: (), _info: &ClientInfo) {}
}

/// A server with the trickle service on its own thread, and a client connected to it.
fn setup(
    sleep: ServerSleep,
    grant: bool,
    options: ClientOptions,
) -> (
    subring_shm::ServerThread<u64, u64, Trickle>,
    Arc<EventFd>,
    Client<u64, u64>,
) {
    let gate =
        Arc::new(EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).unwrap());
    let mut config = ServerConfig::new("trickle");
    config.sleep = sleep;
    config.event_idx = grant;
    let service = Trickle {
        gate: gate.clone(),
        held: Default::default(),
    };
    let mut server = Server::with_service(config, service).unwrap();
    server.watch(gate.as_fd()).unwrap();
    let (server_end, client_end) = socket_pair().unwrap();
    server.add_connection(server_end).unwrap();
    let h = std::thread::spawn(move || Client::<u64, u64>::from_socket(client_end, &options));
    let start = Instant::now();
    while !h.is_finished() {
        assert!(start.elapsed() < LIMIT, "handshake did not finish");
        server.run_for(Duration::from_millis(2)).unwrap();
    }
    let client = h.join().unwrap().unwrap();
    (server.spawn().unwrap(), gate, client)
}

fn options(mode: NotifyMode) -> ClientOptions {
    ClientOptions::new("trickle").mode(mode).capacity(64)
}

#[test]
fn event_idx_is_used_only_if_the_client_asks_and_the_server_grants() {
    for (asked, granted, used) in [
        (true, true, true),
        (true, false, false),
        (false, true, false),
        (false, false, false),
    ] {
        let mut opts = options(NotifyMode::Futex);
        opts.event_idx = asked;
        let (server, _gate, client) = setup(ServerSleep::Epoll, granted, opts);
        assert_eq!(client.event_idx(), used, "asked {asked}, granted {granted}");
        drop(client);
        server.stop().map(drop).unwrap();
    }
}

/// Eight requests, answered one at a time 3 ms apart; the client waits for all eight at once.
/// Returns how many times the client announced sleep (each wake-up claims one announcement).
fn trickled_batch(sleep: ServerSleep, mode: NotifyMode, event_idx: bool) -> u64 {
    let (server, gate, mut client) = setup(sleep, event_idx, options(mode));
    assert_eq!(client.event_idx(), event_idx);
    for x in 0..8 {
        client.push(x).unwrap();
    }
    client.submit().unwrap();
    let opener = std::thread::spawn(move || {
        for _ in 0..8 {
            std::thread::sleep(Duration::from_millis(3));
            gate.write(1).unwrap();
        }
    });
    let before = client.notify_stats();
    let mut got = Vec::new();
    while got.len() < 8 {
        let ready = client.wait_completions(8 - got.len(), Some(LIMIT)).unwrap();
        assert!(ready >= 1);
        client.reap_into(&mut got, 8).unwrap();
    }
    let after = client.notify_stats();
    opener.join().unwrap();
    assert_eq!(got, (1..=8).collect::<Vec<u64>>());
    drop(client);
    server.stop().map(drop).unwrap();
    after.announced - before.announced
}

#[test]
fn a_trickled_batch_wakes_the_client_once_with_event_idx() {
    for sleep in [ServerSleep::Epoll, ServerSleep::Futex] {
        for mode in [NotifyMode::Futex, NotifyMode::EventFd, NotifyMode::Adaptive] {
            let with = trickled_batch(sleep, mode, true);
            let without = trickled_batch(sleep, mode, false);
            eprintln!("{sleep:?}, {mode}: {with} sleeps with event-idx, {without} without");
            assert_eq!(with, 1, "{sleep:?}, {mode}: one sleep for the whole batch");
            assert!(
                without >= 2,
                "{sleep:?}, {mode}: {without} sleeps without event-idx"
            );
        }
    }
}
