//! Connections that cost the server more than the client: hellos asking for the largest rings,
//! their connection closed at once, one after another, beside an honest client whose round
//! trips must not notice. The test failed before its fix.

// The tests' own bookkeeping (a stop flag) is not a protocol under test: std types.
#![allow(clippy::disallowed_types)]

mod support;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{send, MsgFlags};
use subring_shm::echo::{self, EchoReq};
use subring_shm::proto::{self, ClientMsg};
use subring_shm::queue::{Completer, QueueError, Submitter};
use subring_shm::NotifyMode;
use support::*;

/// How long an honest round trip may take before the test gives up on it (it fails then).
const GIVE_UP: Duration = Duration::from_secs(2);

/// An honest client's round trips over `span` on the server at `path`: how many, and the
/// worst. One that takes over [`GIVE_UP`] ends the count there.
fn round_trips(path: &std::path::Path, span: Duration) -> (u64, Duration) {
    let mut client = connect_retry(path, &options(NotifyMode::EventFd), WAIT);
    let mut worst = Duration::ZERO;
    let start = Instant::now();
    let mut seq = 0;
    while start.elapsed() < span {
        let t = Instant::now();
        let req = EchoReq {
            seq,
            op: echo::EchoOp::PING,
            ..EchoReq::default()
        };
        client.push(req).map_err(|r| r.error).unwrap();
        client.submit().unwrap();
        let answer = loop {
            if let Some(r) = client.reap().unwrap() {
                break Some(r);
            }
            let left = GIVE_UP.saturating_sub(t.elapsed());
            if left.is_zero() {
                break None;
            }
            match client.wait(Some(left)) {
                Ok(()) | Err(QueueError::Timeout(_)) => {}
                Err(e) => panic!("an honest wait failed: {e}"),
            }
        };
        worst = worst.max(t.elapsed());
        let Some(answer) = answer else {
            return (seq, worst);
        };
        assert_eq!(answer.seq, seq);
        seq += 1;
    }
    (seq, worst)
}

/// A raw connection to `path`, or `None` if none could be made now.
fn try_connect(path: &std::path::Path) -> Option<OwnedFd> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let s = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .ok()?;
    connect(s.as_raw_fd(), &UnixAddr::new(path).ok()?).ok()?;
    Some(s)
}

/// Hellos asking for rings of 65,536 entries (the most the server allows), each connection
/// closed as soon as its hello is sent, one after another as fast as one thread can: an honest
/// client's round trips stay under 100 ms. Before, the server wrote every slot's stamp of both
/// rings at each hello, faulting in 6 MiB of fresh memory page by page on its event loop (and
/// freeing it at the release): 190-320 ms round trips, a few dozen to 26,000 of them in 1.5 s.
/// A fresh memfd's zeros are a ring's stamps now, and creating its rings touches only the
/// header's page: under 10 ms.
#[test]
fn hellos_for_the_largest_rings_do_not_stall_the_others() {
    let (srv, path) = echo_server("churn");
    let stop = Arc::new(AtomicBool::new(false));
    let churn = std::thread::spawn({
        let (stop, path) = (stop.clone(), path.clone());
        move || {
            let mut hello = hello();
            hello.sq_capacity = 1 << 16;
            hello.cq_capacity = 1 << 16;
            let body = postcard::to_stdvec(&ClientMsg::Hello(hello)).unwrap();
            let msg = frame(proto::PROTOCOL_VERSION, proto::KIND_MESSAGE, &body);
            let mut sent = 0u64;
            while !stop.load(Relaxed) {
                let Some(s) = try_connect(&path) else {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                if send(s.as_raw_fd(), &msg, MsgFlags::MSG_DONTWAIT).is_ok() {
                    sent += 1;
                }
            }
            sent
        }
    });
    let (count, worst) = round_trips(&path, Duration::from_millis(1500));
    stop.store(true, Relaxed);
    let sent = churn.join().unwrap();
    drop(srv);
    eprintln!("beside {sent} hellos for 65536-entry rings: {count} round trips, worst {worst:?}");
    assert!(sent > 100, "the hellos never got going ({sent})");
    assert!(
        worst < Duration::from_millis(100),
        "an honest round trip took {worst:?} beside {sent} hellos for 65536-entry rings"
    );
}
