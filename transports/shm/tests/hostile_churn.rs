//! Connections that cost the server more than the client, or that cost it long on its event
//! loop: hellos asking for the largest rings, their connection closed at once, one after
//! another; clients leaving a gigabyte of memory for the server to unmap and free. Beside each,
//! an honest client whose round trips must not notice. Each test failed before its fix.

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
use subring_shm::{NotifyMode, ServerSleep};
use support::*;

/// The tests here measure an honest client's round trips beside a hostile one: two at once
/// would measure each other. Each takes this lock.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long an honest round trip may take before the test gives up on it (it fails then).
const GIVE_UP: Duration = Duration::from_secs(2);

/// An honest client's round trips over `span` on the server at `path`: how many, and the
/// worst. One that takes over [`GIVE_UP`] ends the count there.
fn round_trips(path: &std::path::Path, mode: NotifyMode, span: Duration) -> (u64, Duration) {
    let mut client = connect_retry(path, &options(mode), WAIT);
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
    let _serial = one_at_a_time();
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
    let (count, worst) = round_trips(&path, NotifyMode::EventFd, Duration::from_millis(1500));
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

/// Clients with a pool of 1 GiB, every page of it written, leave one after another: the
/// server drops its mappings of each and, the last to hold the memfd, frees the memory, on its
/// dropper thread. An honest client's round trips stay under 50 ms, with the server sleeping
/// in epoll and eventfd-mode clients, and sleeping on futexes with futex-mode clients (whose
/// kick words, held by the server's sleep set, hold the memory too). Before, the release did
/// it on the event loop: 63-119 ms round trips (4-30 ms now, the cores shared with the leaving
/// clients' page faults and the frees).
#[test]
fn clients_leaving_a_gigabyte_do_not_stall_the_others() {
    let _serial = one_at_a_time();
    for (sleep, mode) in [
        (ServerSleep::Epoll, NotifyMode::EventFd),
        (ServerSleep::Futex, NotifyMode::Futex),
    ] {
        let (srv, path) = echo_server_with("big-leaver", |c| {
            c.max_buf_size = 1 << 20;
            c.sleep = sleep;
        });
        let stop = Arc::new(AtomicBool::new(false));
        let leaver = std::thread::spawn({
            let (stop, path) = (stop.clone(), path.clone());
            move || {
                let mut left = 0;
                while !stop.load(Relaxed) {
                    let options = options(mode).buffers(1 << 20, 1000);
                    let client = connect_retry(&path, &options, WAIT);
                    let page = [1u8; 1];
                    let mut bufs = Vec::new();
                    while let Some(b) = client.pool().alloc() {
                        let spare = b.spare();
                        for at in (0..spare.len()).step_by(4096) {
                            spare.get(at..at + 1).unwrap().copy_from(&page);
                        }
                        bufs.push(b);
                    }
                    drop(bufs);
                    drop(client);
                    left += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                left
            }
        });
        let (count, worst) = round_trips(&path, mode, Duration::from_millis(3000));
        stop.store(true, Relaxed);
        let left = leaver.join().unwrap();
        drop(srv);
        eprintln!(
            "{sleep:?} server, {mode} clients: beside {left} clients of 1 GiB leaving, {count} \
             round trips, worst {worst:?}"
        );
        assert!(left >= 2, "too few clients left ({left})");
        assert!(
            worst < Duration::from_millis(50),
            "{sleep:?} server, {mode} clients: an honest round trip took {worst:?} beside {left} \
             clients of 1 GiB leaving"
        );
    }
}
