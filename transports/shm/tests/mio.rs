//! The client as a mio event source, in each way it can wait (eventfd mode; futex mode through
//! an io_uring of its own, trusting its server or not): a pipelined loop that sleeps only in
//! `Poll::poll`, a server's death waking it, and the modes it refuses.
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

/// `Poll::poll`, again while it says `Interrupted` (as a mio loop must: a futex-mode client's
/// io_uring wait interrupts the thread that armed it when it completes), until `limit`.
fn poll_until(poll: &mut Poll, events: &mut Events, limit: Duration) {
    let start = Instant::now();
    loop {
        match poll.poll(events, Some(limit.saturating_sub(start.elapsed()))) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r.unwrap(),
        }
    }
}

/// The first futex-mode way of [`event_loop_options`], where the kernel has io_uring futex
/// waits.
fn futex_way() -> Option<(&'static str, subring_shm::ClientOptions)> {
    event_loop_options(subring_shm::echo::ECHO_PROTOCOL)
        .into_iter()
        .find(|(_, o)| o.mode == NotifyMode::Futex)
}

fn ping(seq: u64) -> EchoReq {
    EchoReq {
        seq,
        op: EchoOp::PING,
        ..EchoReq::default()
    }
}

/// A pipelined loop: every poll must end with an event well before its limit (a lost wake-up
/// would leave the loop asleep until it), and about every hundred answers the loop lets the
/// server fall asleep first, so that its doorbell is rung too.
#[test]
fn a_mio_loop_pipelines_and_sleeps_only_in_poll() {
    let (server, path) = echo_server("mio-loop");
    for (way, options) in event_loop_options(subring_shm::echo::ECHO_PROTOCOL) {
        pipelined_loop(&path, &options, way);
    }
    server.stop().unwrap();
}

fn pipelined_loop(path: &std::path::Path, options: &subring_shm::ClientOptions, way: &str) {
    let mut client = Client::<EchoReq, EchoResp>::connect(path, options).unwrap();
    let mut poll = Poll::new().unwrap();
    poll.registry()
        .register(&mut client, CLIENT, Interest::READABLE)
        .unwrap();
    let mut events = Events::with_capacity(8);
    let total = 5000u64;
    let (mut sent, mut done, mut polls) = (0u64, 0u64, 0u64);
    let mut next_nap = 100;
    let start = Instant::now();
    while done < total {
        assert!(
            start.elapsed() < 6 * LIMIT,
            "{way}: {done} of {total} answered"
        );
        if done >= next_nap && done == sent {
            // Long enough for the server's polling window to end in a sleep.
            std::thread::sleep(Duration::from_millis(20));
            next_nap = done + 100;
        }
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
            let slept = Instant::now();
            poll_until(&mut poll, &mut events, LIMIT);
            assert!(!events.is_empty(), "{way}: an event within {LIMIT:?}");
            assert!(slept.elapsed() < LIMIT / 2, "{way}: {:?}", slept.elapsed());
            assert!(events.iter().all(|e| e.token() == CLIENT));
            polls += 1;
        }
        client.disarm_edge();
    }
    assert!(polls <= total, "{way}: {polls} polls for {total} answers");
    poll.registry().deregister(&mut client).unwrap();
}

#[test]
fn a_dying_server_wakes_the_mio_loop() {
    for (way, options) in event_loop_options(subring_shm::echo::ECHO_PROTOCOL) {
        dying_server(&options, way);
    }
}

fn dying_server(options: &subring_shm::ClientOptions, way: &str) {
    let (server, path) = echo_server(&format!("mio-death-{}", way.replace([',', ' '], "")));
    let mut client = Client::<EchoReq, EchoResp>::connect(&path, options).unwrap();
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
    poll_until(&mut poll, &mut events, LIMIT);
    assert!(
        !events.is_empty() && start.elapsed() < LIMIT,
        "{way}: the server's exit is an event, not a timeout"
    );
    client.disarm_edge();
    // The server is gone: a wait says so at once instead of timing out.
    let r = client.wait_reap(LIMIT);
    assert!(matches!(r, Err(QueueError::PeerGone)), "{way}: {r:?}");
    assert!(start.elapsed() < LIMIT);
    stopper.join().unwrap();
}

/// A client that spins cannot be registered: `InvalidInput`, the mode named inside.
#[test]
fn a_spinning_client_cannot_be_registered() {
    let (server, path) = echo_server("mio-mode");
    for mode in [NotifyMode::Spin, NotifyMode::Adaptive] {
        let mut client = Client::<EchoReq, EchoResp>::connect(&path, &options(mode)).unwrap();
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
                    needs: NotifyMode::Futex,
                    given,
                    ..
                }) if *given == mode
            ),
            "{err}"
        );
    }
    server.stop().unwrap();
}

/// A futex-mode client that leaves an io_uring wait armed in its event loop (a poll that ended
/// without its event) and then blocks in a wait of its own, on another thread: the server's
/// wake-up, which wakes one waiter on the word, must reach that wait, not the one left armed.
#[test]
fn a_wait_left_armed_in_the_loop_does_not_take_a_blocking_waits_wake_up() {
    let Some((way, options)) = futex_way() else {
        return;
    };
    let (server, path) = echo_server("mio-left-armed");
    let mut client = Client::<EchoReq, EchoResp>::connect(&path, &options).unwrap();
    let mut poll = Poll::new().unwrap();
    poll.registry()
        .register(&mut client, CLIENT, Interest::READABLE)
        .unwrap();
    let mut events = Events::with_capacity(8);
    assert!(!client.arm().unwrap(), "nothing to reap yet");
    poll_until(&mut poll, &mut events, Duration::from_millis(20));
    client.disarm_edge();
    poll.registry().deregister(&mut client).unwrap();
    let waiter = std::thread::spawn(move || {
        let mut waited = Vec::new();
        for seq in 0..5 {
            // Long enough for the server to fall asleep: its answer then wakes this client.
            std::thread::sleep(Duration::from_millis(20));
            client.push(ping(seq)).unwrap();
            client.submit().unwrap();
            let start = Instant::now();
            let answer = client.wait_reap(LIMIT);
            waited.push((start.elapsed(), answer.map(|a| a.seq)));
        }
        waited
    });
    for (seq, (took, answer)) in waiter.join().unwrap().into_iter().enumerate() {
        assert_eq!(answer.ok(), Some(seq as u64), "{way}");
        assert!(took < LIMIT / 4, "{way}: answer {seq} came after {took:?}");
    }
    server.stop().unwrap();
}

/// A futex-mode client armed before it is registered (before its io_uring exists) still gets
/// its event: the ring's wait is armed when the ring is made.
#[test]
fn a_client_armed_before_it_is_registered_gets_its_event() {
    let Some((way, options)) = futex_way() else {
        return;
    };
    let (server, path) = echo_server("mio-armed-first");
    let mut client = Client::<EchoReq, EchoResp>::connect(&path, &options).unwrap();
    client.push(ping(1)).unwrap();
    // Long enough for the server to fall asleep: the doorbell then wakes it.
    std::thread::sleep(Duration::from_millis(20));
    let mut poll = Poll::new().unwrap();
    assert!(!client.arm().unwrap(), "nothing to reap yet");
    poll.registry()
        .register(&mut client, CLIENT, Interest::READABLE)
        .unwrap();
    client.submit().unwrap();
    let mut events = Events::with_capacity(8);
    let start = Instant::now();
    poll_until(&mut poll, &mut events, LIMIT);
    assert!(!events.is_empty(), "{way}: no event within {LIMIT:?}");
    assert!(start.elapsed() < LIMIT / 4, "{way}: {:?}", start.elapsed());
    client.disarm_edge();
    let answer = client.wait_reap(LIMIT).unwrap();
    assert_eq!(answer.seq, 1, "{way}");
    poll.registry().deregister(&mut client).unwrap();
    drop(client);
    server.stop().unwrap();
}
