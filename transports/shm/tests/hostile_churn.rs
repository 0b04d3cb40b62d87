//! Connections that cost the server more than the client, or that cost it long on its event
//! loop: hellos asking for the largest rings, their connection closed at once, one after
//! another; clients leaving gigabytes of memory for the server to unmap and free. Beside each,
//! an honest client whose round trips must not notice. Each test failed before its fix.

// The tests' own bookkeeping (a stop flag) is not a protocol under test: std types.
#![allow(clippy::disallowed_types)]

mod support;

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{send, MsgFlags};
use subring_shm::proto::{self, ClientMsg};
use subring_shm::{NotifyMode, ServerSleep};
use support::*;

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
    let mut honest = connect_retry(&path, &options(NotifyMode::EventFd), WAIT);
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
    let (count, worst) = honest_round_trips(&mut honest, Duration::from_millis(1500));
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

/// Environment of [`child_big_leaver`]: the socket path, the client's notify mode
/// (`eventfd` or `futex`), and whether it rings a futex doorbell (`1`).
const LEAVER_PATH: &str = "SUBRING_LEAVER_PATH";
const LEAVER_MODE: &str = "SUBRING_LEAVER_MODE";
const LEAVER_DOORBELL: &str = "SUBRING_LEAVER_DOORBELL";

/// A leaving client, in a process of its own (as a server's clients are): connects with a pool
/// of 1 GiB, writes every page of it and exits, without dropping anything: the kernel closes
/// its descriptors and unmaps its memory, and the server, holding the memfd last, frees it.
#[test]
#[ignore = "run by clients_leaving_a_gigabyte_do_not_stall_the_others as a child process"]
fn child_big_leaver() {
    let path = std::path::PathBuf::from(std::env::var(LEAVER_PATH).unwrap());
    let mode = match std::env::var(LEAVER_MODE).unwrap().as_str() {
        "futex" => NotifyMode::Futex,
        _ => NotifyMode::EventFd,
    };
    let mut options = options(mode).buffers(1 << 20, 1000);
    if std::env::var(LEAVER_DOORBELL).is_ok_and(|d| d == "1") {
        options = options.untrusted_server();
    }
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
    std::process::exit(0);
}

/// Clients with a pool of 1 GiB, every page of it written, exit one after another (each a
/// process of its own): the server, the last to hold each memfd, frees the memory, and drops
/// its mapping of it, on its dropper thread. An honest client's round trips stay under
/// 30 ms (4-5 ms here), with the server sleeping in epoll and eventfd-mode clients, on futexes with
/// futex-mode clients (whose kick words, held by the server's sleep set, hold the memory too),
/// and in epoll with clients that ring a futex doorbell (whose words its io_uring waits hold).
/// Before, the release freed it on the event loop: 66-69 ms (and a futex-sleeping server still
/// did, through its sleep set's words, in the first version of the fix: 47-58 ms).
#[test]
fn clients_leaving_a_gigabyte_do_not_stall_the_others() {
    let _serial = one_at_a_time();
    for (sleep, mode, doorbell) in [
        (ServerSleep::Epoll, NotifyMode::EventFd, false),
        (ServerSleep::Futex, NotifyMode::Futex, false),
        (ServerSleep::Epoll, NotifyMode::Futex, true),
    ] {
        if doorbell && !io_uring_futex_waits() {
            eprintln!("skipped the futex doorbell: no io_uring futex waits here");
            continue;
        }
        let (srv, path) = echo_server_with("big-leaver", |c| {
            c.max_buf_size = 1 << 20;
            c.sleep = sleep;
        });
        let mut client = connect_retry(&path, &options(mode), WAIT);
        let honest = std::thread::spawn(move || {
            honest_round_trips(&mut client, Duration::from_millis(3000))
        });
        let env = [
            (LEAVER_PATH, path.display().to_string()),
            (
                LEAVER_MODE,
                if mode == NotifyMode::Futex {
                    "futex"
                } else {
                    "eventfd"
                }
                .into(),
            ),
            (LEAVER_DOORBELL, if doorbell { "1" } else { "0" }.into()),
        ];
        while !honest.is_finished() {
            let status = spawn_child("child_big_leaver", &env).wait(WAIT);
            assert!(status.success(), "a leaving client failed: {status}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let (count, worst) = honest.join().unwrap();
        let stats = srv.stop().unwrap().stats();
        // (The honest client's release among them.)
        let left = stats.released.saturating_sub(1);
        eprintln!(
            "{sleep:?} server, {mode} clients (futex doorbell: {doorbell}): beside {left} \
             clients of 1 GiB leaving, {count} round trips, worst {worst:?}"
        );
        assert!(left >= 2, "too few clients left ({left})");
        assert!(
            worst < Duration::from_millis(30),
            "{sleep:?} server, {mode} clients: an honest round trip took {worst:?} beside {left} \
             clients of 1 GiB leaving"
        );
    }
}
