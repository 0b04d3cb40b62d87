//! The asynchronous service API: requests deferred and answered later, from an event source the
//! server watches; the bound on deferred requests; tokens dropped unanswered; clients that
//! leave with requests still deferred; who a client is (its credentials, from the kernel).

// The tests' own bookkeeping (a lock, a stop flag) is not a protocol under test: std types.
#![allow(clippy::disallowed_types)]

use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use subring_shm::queue::{Completer, QueueError, Submitter};
use subring_shm::{
    socket_pair, Client, ClientInfo, ClientOptions, Completions, Ctx, NotifyMode, Pending, Server,
    ServerConfig, ServerSleep, Service,
};

const LIMIT: Duration = Duration::from_secs(10);

/// What the test sees of the gate service.
#[derive(Debug, Default)]
struct Seen {
    polls: u64,
    held: usize,
    connects: Vec<ClientInfo>,
    disconnects: Vec<u64>,
}

/// Defers every request (`x`) and answers `2x` when its gate eventfd has been written; in
/// `drop_mode`, drops the tokens instead.
struct Gate {
    gate: Arc<EventFd>,
    held: Vec<(Pending, u64)>,
    seen: Arc<Mutex<Seen>>,
    drop_mode: bool,
}

impl Gate {
    fn new() -> (Self, Arc<EventFd>, Arc<Mutex<Seen>>) {
        let gate =
            Arc::new(EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).unwrap());
        let seen = Arc::new(Mutex::new(Seen::default()));
        (
            Gate {
                gate: gate.clone(),
                held: Vec::new(),
                seen: seen.clone(),
                drop_mode: false,
            },
            gate,
            seen,
        )
    }
}

impl Service<u64, u64> for Gate {
    type Client = ();

    fn connect(&mut self, client: &ClientInfo) {
        self.seen.lock().unwrap().connects.push(client.clone());
    }

    fn request(&mut self, _client: &mut (), ctx: &mut Ctx<'_, u64>, x: u64) {
        let pending = ctx.defer();
        self.held.push((pending, x));
        self.seen.lock().unwrap().held = self.held.len();
    }

    fn poll(&mut self, done: &mut Completions<'_, u64>) -> u32 {
        let mut seen = self.seen.lock().unwrap();
        seen.polls += 1;
        // The gate is edge-triggered for the server: read it (non-blocking) to take the edge.
        if self.gate.read().is_err() {
            return 0;
        }
        let n = self.held.len() as u32;
        for (pending, x) in self.held.drain(..) {
            if self.drop_mode {
                drop(pending);
            } else {
                done.complete(pending, 2 * x);
            }
        }
        seen.held = 0;
        n
    }

    fn disconnect(&mut self, _client: (), info: &ClientInfo) {
        self.seen.lock().unwrap().disconnects.push(info.id);
    }
}

fn options(mode: NotifyMode) -> ClientOptions {
    ClientOptions::new("gate").mode(mode).capacity(64)
}

/// Connects a client to a server the caller drives: the handshake runs on a helper thread
/// while this one turns the server.
fn connect(server: &mut Server<u64, u64, Gate>, mode: NotifyMode) -> Client<u64, u64> {
    let (server_end, client_end) = socket_pair().unwrap();
    server.add_connection(server_end).unwrap();
    let opts = options(mode);
    let h = std::thread::spawn(move || Client::<u64, u64>::from_socket(client_end, &opts));
    let start = Instant::now();
    while !h.is_finished() {
        assert!(start.elapsed() < LIMIT, "handshake did not finish");
        server.run_for(Duration::from_millis(2)).unwrap();
    }
    h.join().unwrap().unwrap()
}

/// A client sleeping in `wait` is woken by a completion the service posts when another
/// thread opens its gate; the server sleeps (no polling, no timer) until then.
fn answered_from_another_event_source(sleep: ServerSleep, mode: NotifyMode) {
    let (gate_service, gate, seen) = Gate::new();
    let mut config = ServerConfig::new("gate");
    config.sleep = sleep;
    let mut server = Server::with_service(config, gate_service).unwrap();
    server.watch(gate.as_fd()).unwrap();
    let mut client = connect(&mut server, mode);
    let server = server.spawn().unwrap();

    for x in 1..=3 {
        client.push(x).unwrap();
    }
    client.submit().unwrap();
    // Deferred: nothing comes back while the gate is shut.
    let start = Instant::now();
    while seen.lock().unwrap().held < 3 {
        assert!(
            start.elapsed() < LIMIT,
            "the service never saw the requests"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let polls_before = seen.lock().unwrap().polls;
    match client.wait(Some(Duration::from_millis(300))) {
        Err(QueueError::Timeout(_)) => {}
        other => panic!("expected a timeout while the gate is shut, got {other:?}"),
    }
    let idle_polls = seen.lock().unwrap().polls - polls_before;
    // (A spinning client is polled by the server on purpose: it never rings.)
    assert!(
        mode == NotifyMode::Spin || idle_polls <= 4,
        "the server kept turning while idle ({idle_polls} polls in 300 ms)"
    );

    // Another thread opens the gate while the client sleeps.
    let opener = {
        let gate = gate.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            gate.write(1).unwrap();
        })
    };
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < 3 {
        assert!(start.elapsed() < LIMIT, "completions never came: {got:?}");
        client.wait(Some(LIMIT)).unwrap();
        while let Some(c) = client.reap().unwrap() {
            got.push(c);
        }
    }
    opener.join().unwrap();
    got.sort();
    assert_eq!(got, [2, 4, 6]);
    drop(client);
    let server = server.stop().unwrap();
    let stats = server.stats();
    assert_eq!(stats.deferred, 3);
    assert_eq!(stats.abandoned, 0);
    assert_eq!(stats.discarded, 0);
}

#[test]
fn answered_from_another_event_source_epoll_sleep() {
    answered_from_another_event_source(ServerSleep::Epoll, NotifyMode::EventFd);
}

#[test]
fn answered_from_another_event_source_futex_sleep() {
    answered_from_another_event_source(ServerSleep::Futex, NotifyMode::Futex);
}

#[test]
fn answered_from_another_event_source_to_a_spinning_client() {
    answered_from_another_event_source(ServerSleep::Epoll, NotifyMode::Spin);
}

/// At most `max_deferred` requests of a client are taken while unanswered; the rest wait in
/// its ring and are served as answers free room. Nothing is lost.
fn deferred_requests_are_bounded_per_client(sleep: ServerSleep, mode: NotifyMode) {
    let (gate_service, gate, seen) = Gate::new();
    let mut config = ServerConfig::new("gate");
    config.max_deferred = 4;
    config.sleep = sleep;
    let mut server = Server::with_service(config, gate_service).unwrap();
    server.watch(gate.as_fd()).unwrap();
    let mut client = connect(&mut server, mode);
    for x in 0..10 {
        client.push(x).unwrap();
    }
    client.submit().unwrap();
    server.run_for(Duration::from_millis(50)).unwrap();
    assert_eq!(seen.lock().unwrap().held, 4, "only max_deferred taken");
    assert_eq!(server.stats().deferred, 4);
    // The server slept: the waiting requests of a client at its limit do not keep it awake.
    let sleeps = server.stats().sleeps;
    server.run_for(Duration::from_millis(100)).unwrap();
    assert!(
        server.stats().sleeps - sleeps <= 2,
        "{sleep:?}: the server spun on a client at its deferred limit ({} sleeps in 100 ms)",
        server.stats().sleeps - sleeps
    );
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < 10 {
        assert!(
            start.elapsed() < LIMIT,
            "not everything was answered: {got:?}"
        );
        gate.write(1).unwrap();
        server.run_for(Duration::from_millis(5)).unwrap();
        while let Some(c) = client.reap().unwrap() {
            got.push(c);
        }
    }
    got.sort();
    assert_eq!(got, (0..10).map(|x| 2 * x).collect::<Vec<_>>());
    assert_eq!(server.stats().deferred, 10);
}

#[test]
fn deferred_requests_are_bounded_per_client_epoll_sleep() {
    deferred_requests_are_bounded_per_client(ServerSleep::Epoll, NotifyMode::EventFd);
}

#[test]
fn deferred_requests_are_bounded_per_client_futex_sleep() {
    deferred_requests_are_bounded_per_client(ServerSleep::Futex, NotifyMode::Futex);
}

/// A token dropped unanswered is counted; a client that leaves with requests deferred is
/// reported to the service, counted as departing until its tokens are resolved, and answers
/// for it are discarded (counted), not posted.
#[test]
fn dropped_tokens_and_departed_clients_are_counted() {
    let (gate_service, gate, seen) = Gate::new();
    let mut server = Server::with_service(ServerConfig::new("gate"), gate_service).unwrap();
    server.watch(gate.as_fd()).unwrap();

    // Dropped unanswered.
    let mut client = connect(&mut server, NotifyMode::EventFd);
    client.push(1).unwrap();
    client.push(2).unwrap();
    client.submit().unwrap();
    server.run_for(Duration::from_millis(20)).unwrap();
    assert_eq!(seen.lock().unwrap().held, 2);
    server.service_mut().drop_mode = true;
    gate.write(1).unwrap();
    server.run_for(Duration::from_millis(20)).unwrap();
    assert_eq!(client.reap().unwrap(), None);
    drop(client);
    server.run_for(Duration::from_millis(20)).unwrap();
    let stats = server.stats();
    assert_eq!(stats.abandoned, 2);
    assert_eq!(stats.departing, 0);
    assert_eq!(stats.clients, 0);

    // Gone with requests deferred.
    server.service_mut().drop_mode = false;
    let mut client = connect(&mut server, NotifyMode::Futex);
    let id = client.id();
    client.push(5).unwrap();
    client.push(6).unwrap();
    client.submit().unwrap();
    server.run_for(Duration::from_millis(20)).unwrap();
    assert_eq!(seen.lock().unwrap().held, 2);
    drop(client);
    server.run_for(Duration::from_millis(20)).unwrap();
    assert_eq!(seen.lock().unwrap().disconnects, [1, id]);
    let stats = server.stats();
    assert_eq!(stats.clients, 0);
    assert_eq!(stats.departing, 1, "the service still owes it two answers");
    gate.write(1).unwrap();
    server.run_for(Duration::from_millis(20)).unwrap();
    let stats = server.stats();
    assert_eq!(stats.discarded, 2);
    assert_eq!(stats.departing, 0);
    assert_eq!(stats.abandoned, 2, "unchanged");
}

/// The synchronous closure handlers still work as before, beside the new API.
#[test]
fn closure_handlers_are_unchanged() {
    let (server_end, client_end) = socket_pair().unwrap();
    let mut server = Server::<u64, u64, _>::new(ServerConfig::new("doubler"), |_info| {
        |ctx: &mut Ctx<'_, u64>, x: u64| ctx.complete(x * 2)
    })
    .unwrap();
    server.add_connection(server_end).unwrap();
    let server = server.spawn().unwrap();
    let mut client =
        Client::<u64, u64>::from_socket(client_end, &ClientOptions::new("doubler")).unwrap();
    client.push(21).unwrap();
    client.submit().unwrap();
    client.wait(Some(LIMIT)).unwrap();
    assert_eq!(client.reap().unwrap(), Some(42));
    drop(client);
    let stats = server.stop().unwrap().stats();
    assert_eq!(stats.requests, 1);
    assert_eq!(stats.deferred, 0);
}

/// A service that defers every request answers nothing, so no completion is flushed: a client
/// asleep on its full submission ring must still be woken when the server takes its requests,
/// even by a server that never sleeps (driven by `poll`, which never arms a ring).
fn deferring_frees_room_for_a_sleeping_client(mode: NotifyMode) {
    let (gate_service, _gate, seen) = Gate::new();
    let mut server = Server::with_service(ServerConfig::new("gate"), gate_service).unwrap();
    let mut client = connect(&mut server, mode);
    let filler = std::thread::spawn(move || -> Result<Duration, String> {
        let mut x = 0u64;
        // Fill the submission ring without the server looking (it is not polled yet).
        loop {
            x += 1;
            match client.push(x) {
                Ok(()) => {}
                Err(r) if matches!(r.error, QueueError::Full) => break,
                Err(r) => return Err(format!("push {x}: {}", r.error)),
            }
        }
        client.submit().map_err(|e| e.to_string())?;
        let start = Instant::now();
        client
            .wait_space(Some(LIMIT))
            .map_err(|e| format!("wait_space: {e}"))?;
        Ok(start.elapsed())
    });
    // Let the client fill its ring and go to sleep on it, then serve by polling only.
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    while !filler.is_finished() {
        assert!(
            start.elapsed() < LIMIT,
            "{mode}: the client was never woken"
        );
        server.poll().unwrap();
    }
    let waited = filler.join().unwrap().unwrap();
    assert!(
        seen.lock().unwrap().held > 0,
        "{mode}: nothing was deferred"
    );
    assert!(
        waited < Duration::from_secs(2),
        "{mode}: the client slept {waited:?} on room the server had made"
    );
}

#[test]
fn deferring_frees_room_for_a_sleeping_futex_client() {
    deferring_frees_room_for_a_sleeping_client(NotifyMode::Futex);
}

#[test]
fn deferring_frees_room_for_a_sleeping_eventfd_client() {
    deferring_frees_room_for_a_sleeping_client(NotifyMode::EventFd);
}

/// A client may defer as many requests as its rings hold. It fills its submission ring with
/// requests the service defers, fills it again, and waits for space; then the service answers
/// the first batch all at once, which fills the completion ring, so the server takes nothing
/// more until the client reaps. The client's wait for space ends with `Full` (reap first),
/// not a timeout, and everything is answered. The server runs on its own thread (it sleeps,
/// arming the ring) or, with `sleep` `None`, is turned by `Server::poll` alone (it never arms:
/// only its turn's look wakes the client).
fn owed_answers_that_fill_the_ring_tell_the_waiter_to_reap(
    sleep: Option<ServerSleep>,
    mode: NotifyMode,
) {
    let (gate_service, gate, _seen) = Gate::new();
    let mut config = ServerConfig::new("gate");
    config.max_deferred = 64;
    if let Some(sleep) = sleep {
        config.sleep = sleep;
    }
    let mut server = Server::with_service(config, gate_service).unwrap();
    server.watch(gate.as_fd()).unwrap();
    let client = connect(&mut server, mode);
    let side = {
        let gate = gate.clone();
        std::thread::spawn(move || owed_answers_client(client, &gate, mode))
    };
    match sleep {
        Some(_) => {
            let server = server.spawn().unwrap();
            side.join().unwrap().unwrap();
            server.stop().unwrap();
        }
        None => {
            let start = Instant::now();
            while !side.is_finished() {
                assert!(
                    start.elapsed() < 2 * LIMIT,
                    "{mode}: the client never finished"
                );
                server.poll().unwrap();
            }
            side.join().unwrap().unwrap();
        }
    }
}

/// The client of `owed_answers_that_fill_the_ring_tell_the_waiter_to_reap`.
fn owed_answers_client(
    mut client: Client<u64, u64>,
    gate: &Arc<EventFd>,
    mode: NotifyMode,
) -> Result<(), String> {
    let mut x = 0u64;
    let mut fill = |client: &mut Client<u64, u64>| loop {
        match client.push(x) {
            Ok(()) => x += 1,
            Err(r) if matches!(r.error, QueueError::Full) => return Ok(r.entry),
            Err(r) => return Err(format!("{mode}: push {x}: {}", r.error)),
        }
    };
    fill(&mut client)?;
    // The first ring's worth is taken (and deferred) once the server sees it.
    let start = Instant::now();
    loop {
        if start.elapsed() > LIMIT {
            return Err(format!("{mode}: the server took nothing"));
        }
        match client.wait_space(Some(LIMIT)) {
            Ok(()) if client.space().unwrap() == 64 => break,
            Ok(()) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => return Err(format!("{mode}: {e}")),
        }
    }
    let mut held = fill(&mut client)?;
    let opener = {
        let gate = gate.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            gate.write(1).unwrap();
        })
    };
    let start = Instant::now();
    match client.wait_space(Some(LIMIT)) {
        Err(QueueError::Full) => {}
        other => {
            return Err(format!(
                "{mode}: waiting for space behind a full completion ring gave {other:?}"
            ))
        }
    }
    let waited = start.elapsed();
    if waited > Duration::from_secs(5) {
        return Err(format!(
            "{mode}: the client learnt after {waited:?} that it must reap"
        ));
    }
    opener.join().unwrap();
    let mut got = Vec::new();
    let total = x + 1;
    let start = Instant::now();
    loop {
        if start.elapsed() > LIMIT {
            return Err(format!("{mode}: stuck at {} answers", got.len()));
        }
        while let Some(c) = client.reap().map_err(|e| e.to_string())? {
            got.push(c);
        }
        match client.push(held) {
            Ok(()) => break,
            Err(r) => held = r.entry,
        }
        match client.wait_space(Some(LIMIT)) {
            Ok(()) | Err(QueueError::Full) => {}
            Err(e) => return Err(format!("{mode}: {e}")),
        }
    }
    client.submit().map_err(|e| e.to_string())?;
    while (got.len() as u64) < total {
        if start.elapsed() > LIMIT {
            return Err(format!("{mode}: stuck at {} answers", got.len()));
        }
        gate.write(1).unwrap();
        match client.wait(Some(Duration::from_millis(20))) {
            Ok(()) | Err(QueueError::Timeout(_)) => {}
            Err(e) => return Err(format!("{mode}: {e}")),
        }
        while let Some(c) = client.reap().map_err(|e| e.to_string())? {
            got.push(c);
        }
    }
    got.sort();
    if got != (0..total).map(|x| 2 * x).collect::<Vec<_>>() {
        return Err(format!("{mode}: answers {got:?}"));
    }
    Ok(())
}

#[test]
fn owed_answers_that_fill_the_ring_tell_the_waiter_to_reap_epoll_sleep() {
    owed_answers_that_fill_the_ring_tell_the_waiter_to_reap(
        Some(ServerSleep::Epoll),
        NotifyMode::EventFd,
    );
}

#[test]
fn owed_answers_that_fill_the_ring_tell_the_waiter_to_reap_futex_sleep() {
    owed_answers_that_fill_the_ring_tell_the_waiter_to_reap(
        Some(ServerSleep::Futex),
        NotifyMode::Futex,
    );
}

#[test]
fn owed_answers_that_fill_the_ring_tell_the_waiter_to_reap_spinning() {
    owed_answers_that_fill_the_ring_tell_the_waiter_to_reap(
        Some(ServerSleep::Epoll),
        NotifyMode::Spin,
    );
}

/// A server turned by `Server::poll` alone never arms a ring: its turn's own look is what
/// wakes a futex-sleeping client.
#[test]
fn owed_answers_that_fill_the_ring_tell_the_waiter_to_reap_polled() {
    owed_answers_that_fill_the_ring_tell_the_waiter_to_reap(None, NotifyMode::Futex);
}

/// A service is told who connected from the kernel's credentials for the socket
/// (`SO_PEERCRED`): here this process, its user and its group.
#[test]
fn a_service_is_told_the_clients_credentials() {
    let (gate_service, _gate, seen) = Gate::new();
    let mut server = Server::with_service(ServerConfig::new("gate"), gate_service).unwrap();
    let client = connect(&mut server, NotifyMode::EventFd);
    let info = seen.lock().unwrap().connects.clone();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].pid, Some(std::process::id()));
    // SAFETY: `geteuid` and `getegid` only read this process's credentials.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    assert_eq!(info[0].uid, Some(uid));
    assert_eq!(info[0].gid, Some(gid));
    assert_eq!(info[0].mode, NotifyMode::EventFd);
    drop(client);
}

/// Work a service charges to a request (`Ctx::charge`: pinning client memory, say) counts
/// toward the client's `turn_bytes` as the bytes the accessors touch do: a request charged the
/// whole budget ends the client's turn, and the rest of its batch waits for the next one.
#[test]
fn charged_work_ends_a_clients_turn() {
    let mut config = ServerConfig::new("charger");
    config.turn_bytes = 1000;
    let mut server = Server::<u64, u64, _>::new(config, |_info| {
        |ctx: &mut Ctx<'_, u64>, x: u64| {
            ctx.charge(x);
            ctx.complete(x)
        }
    })
    .unwrap();
    let (server_end, client_end) = socket_pair().unwrap();
    server.add_connection(server_end).unwrap();
    let opts = ClientOptions::new("charger").mode(NotifyMode::Futex);
    let h = std::thread::spawn(move || Client::<u64, u64>::from_socket(client_end, &opts));
    let start = Instant::now();
    while !h.is_finished() {
        assert!(start.elapsed() < LIMIT, "handshake did not finish");
        server.run_for(Duration::from_millis(2)).unwrap();
    }
    let mut client = h.join().unwrap().unwrap();
    let before = server.stats().requests;
    for x in [1000, 1000, 1000, 10, 10] {
        client.push(x).unwrap();
    }
    client.submit().unwrap();
    let mut served = Vec::new();
    for _ in 0..4 {
        server.poll().unwrap();
        served.push(server.stats().requests - before);
    }
    assert_eq!(served, [1, 2, 3, 5], "requests served after each turn");
    let mut answers = Vec::new();
    while answers.len() < 5 {
        client.wait(Some(LIMIT)).unwrap();
        while let Some(x) = client.reap().unwrap() {
            answers.push(x);
        }
    }
    assert_eq!(answers, [1000, 1000, 1000, 10, 10]);
}
