//! The client as a mio event source: a pipelined loop that sleeps only in `Poll::poll`, a
//! server's death waking it, and the mode it needs.
#![cfg(feature = "mio")]

mod support;

use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use subring_shm::echo::{EchoOp, EchoReq, EchoResp, EchoStatus};
use subring_shm::queue::{Completer, QueueError, Submitter};
use subring_shm::{Client, ConfigError, NotifyMode};
use support::*;

const CLIENT: Token = Token(3);
const LIMIT: Duration = Duration::from_secs(10);

fn ping(seq: u64) -> EchoReq {
    EchoReq {
        seq,
        op: EchoOp::PING,
        ..EchoReq::default()
    }
}

#[test]
fn a_mio_loop_pipelines_and_sleeps_only_in_poll() {
    let (server, path) = echo_server("mio-loop");
    let mut client =
        Client::<EchoReq, EchoResp>::connect(&path, &options(NotifyMode::EventFd)).unwrap();
    let mut poll = Poll::new().unwrap();
    poll.registry()
        .register(&mut client, CLIENT, Interest::READABLE)
        .unwrap();
    let mut events = Events::with_capacity(8);
    let total = 5000u64;
    let (mut sent, mut done, mut polls) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    while done < total {
        assert!(start.elapsed() < 6 * LIMIT, "{done} of {total} answered");
        while sent < total && sent - done < 32 {
            client.push(ping(sent)).unwrap();
            sent += 1;
        }
        client.submit().unwrap();
        while let Some(c) = client.reap().unwrap() {
            assert_eq!((c.seq, c.status), (done, EchoStatus::OK), "in order");
            done += 1;
        }
        if done < sent && !client.arm().unwrap() {
            poll.poll(&mut events, Some(LIMIT)).unwrap();
            assert!(!events.is_empty(), "an event within {LIMIT:?}");
            assert!(events.iter().all(|e| e.token() == CLIENT));
            polls += 1;
        }
        client.disarm_edge();
    }
    assert!(polls <= total, "{polls} polls for {total} answers");
    poll.registry().deregister(&mut client).unwrap();
    drop(client);
    server.stop().unwrap();
}

#[test]
fn a_dying_server_wakes_the_mio_loop() {
    let (server, path) = echo_server("mio-death");
    let mut client =
        Client::<EchoReq, EchoResp>::connect(&path, &options(NotifyMode::EventFd)).unwrap();
    let mut poll = Poll::new().unwrap();
    poll.registry()
        .register(&mut client, CLIENT, Interest::READABLE)
        .unwrap();
    assert!(!client.arm().unwrap(), "nothing to reap yet");
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        server.stop().unwrap();
    });
    let mut events = Events::with_capacity(8);
    let start = Instant::now();
    poll.poll(&mut events, Some(LIMIT)).unwrap();
    assert!(
        !events.is_empty() && start.elapsed() < LIMIT,
        "the server's exit is an event, not a timeout"
    );
    client.disarm_edge();
    // The server is gone: a wait says so at once instead of timing out.
    let r = client.wait_reap(LIMIT);
    assert!(matches!(r, Err(QueueError::PeerGone)), "{r:?}");
    assert!(start.elapsed() < LIMIT);
    stopper.join().unwrap();
}

#[test]
fn only_an_eventfd_client_can_be_registered() {
    let (server, path) = echo_server("mio-mode");
    let mut client =
        Client::<EchoReq, EchoResp>::connect(&path, &options(NotifyMode::Futex)).unwrap();
    let poll = Poll::new().unwrap();
    let err = poll
        .registry()
        .register(&mut client, CLIENT, Interest::READABLE)
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<ConfigError>());
    assert!(
        matches!(
            inner,
            Some(ConfigError::Mode {
                needs: NotifyMode::EventFd,
                given: NotifyMode::Futex,
                ..
            })
        ),
        "{err}"
    );
    drop(client);
    server.stop().unwrap();
}
