//! `Server::poll`: a server driven one turn at a time from the caller's own loop (it never
//! sleeps), serving clients in every notify mode.

use std::time::{Duration, Instant};

use subring_shm::echo::{self, EchoOp, EchoReq, EchoResp, EchoStatus, ECHO_PROTOCOL};
use subring_shm::queue::{Completer, Submitter};
use subring_shm::{socket_pair, Client, ClientOptions, NotifyMode, Server, ServerConfig};

const LIMIT: Duration = Duration::from_secs(10);
const TRIPS: u64 = 200;

/// A client in `mode` makes `TRIPS` round trips on a thread of its own (waiting with a timeout)
/// while this thread only calls `poll`; returns how many polls did work.
fn served_by_polling(mode: NotifyMode) -> u64 {
    let (server_end, client_end) = socket_pair().unwrap();
    let mut server =
        Server::new(ServerConfig::new(ECHO_PROTOCOL), echo::handler_factory()).unwrap();
    server.add_connection(server_end).unwrap();
    let client = std::thread::spawn(move || -> Result<(), String> {
        let options = ClientOptions::new(ECHO_PROTOCOL).mode(mode);
        let mut client: Client<EchoReq, EchoResp> =
            Client::from_socket(client_end, &options).map_err(|e| e.to_string())?;
        for seq in 1..=TRIPS {
            let req = EchoReq {
                seq,
                op: EchoOp::PING,
                ..EchoReq::default()
            };
            client.push(req).map_err(|r| r.error.to_string())?;
            client.submit().map_err(|e| e.to_string())?;
            let deadline = Instant::now() + LIMIT;
            let answer = loop {
                if let Some(r) = client.reap().map_err(|e| e.to_string())? {
                    break r;
                }
                if Instant::now() > deadline {
                    return Err(format!("no answer to {seq} within {LIMIT:?}"));
                }
                client
                    .wait(Some(Duration::from_millis(100)))
                    .map_err(|e| e.to_string())?;
            };
            if answer.seq != seq || answer.status != EchoStatus::OK {
                return Err(format!("bad answer {answer:?} to {seq}"));
            }
        }
        Ok(())
    });
    let deadline = Instant::now() + LIMIT;
    let mut worked = 0;
    while !client.is_finished() {
        assert!(
            Instant::now() < deadline,
            "{mode}: not done within {LIMIT:?}"
        );
        if server.poll().unwrap() {
            worked += 1;
        }
    }
    client.join().unwrap().unwrap();
    let stats = server.stats();
    assert_eq!(stats.requests, TRIPS, "{mode}: {stats:?}");
    assert_eq!(stats.sleeps, 0, "{mode}: poll never sleeps: {stats:?}");
    worked
}

#[test]
fn poll_serves_clients_in_every_mode() {
    for mode in [
        NotifyMode::Spin,
        NotifyMode::Adaptive,
        NotifyMode::EventFd,
        NotifyMode::Futex,
    ] {
        let worked = served_by_polling(mode);
        assert!(
            worked >= TRIPS,
            "{mode}: {worked} polls did work for {TRIPS} requests"
        );
    }
}

#[test]
fn poll_with_nothing_to_do_says_so() {
    let mut server =
        Server::new(ServerConfig::new(ECHO_PROTOCOL), echo::handler_factory()).unwrap();
    for _ in 0..5000 {
        assert!(!server.poll().unwrap());
    }
    assert_eq!(server.stats().sleeps, 0);
}

#[test]
fn a_stop_is_seen_by_a_polling_loop() {
    let mut server =
        Server::new(ServerConfig::new(ECHO_PROTOCOL), echo::handler_factory()).unwrap();
    let stopper = server.stopper();
    assert!(!server.stopping());
    stopper.stop().unwrap();
    // The sockets (and the stop eventfd) are looked at every few thousand polls.
    let mut polls = 0;
    while !server.stopping() {
        assert!(polls < 100_000, "the stop was not seen in {polls} polls");
        server.poll().unwrap();
        polls += 1;
    }
    // A stopped server's run returns at once.
    server.run().unwrap();
}
