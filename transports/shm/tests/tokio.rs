//! The async client under tokio: round trips, a dropped wait that loses and leaks nothing, a
//! server's death waking an async wait, and the mode it needs.
#![cfg(feature = "tokio")]
// The tests' own bookkeeping (a lock that keeps the descriptor count to one test at a time) is
// not a protocol under test: std types.
#![allow(clippy::disallowed_types)]

mod support;

use std::time::{Duration, Instant};

use subring_shm::echo::{self, op, status, EchoReq, EchoResp, ECHO_PROTOCOL};
use subring_shm::queue::QueueError;
use subring_shm::tokio::AsyncClient;
use subring_shm::{ClientOptions, Error, NotifyMode, Server, ServerConfig};
use support::*;

type Async = AsyncClient<EchoReq, EchoResp>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn eventfd_options() -> ClientOptions {
    options(NotifyMode::EventFd)
}

/// The tests of this file run one at a time: one counts the process's descriptors.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn async_round_trips_in_a_tokio_runtime() {
    let _serial = serial();
    let (server, path) = echo_server("tokio-round-trips");
    runtime().block_on(async {
        let mut client = Async::connect(&path, &eventfd_options()).unwrap();
        for seq in 0..2000 {
            let mut buf = client.client().alloc().unwrap();
            buf.fill_from(b"async payload");
            let answer = client
                .call(EchoReq {
                    seq,
                    op: op::UPPER,
                    reserved: 0,
                    buf: buf.lend(),
                })
                .await
                .unwrap();
            assert_eq!((answer.seq, answer.status), (seq, status::OK));
            assert_eq!(answer.sum, echo::checksum(b"async payload"));
            let back = client.client().reclaim(answer.buf).unwrap();
            assert_eq!(back.to_vec(), b"ASYNC PAYLOAD");
        }
    });
    server.stop().unwrap();
}

/// A wait future dropped unfinished (a timeout, a `select!` that took another branch) ends
/// its announcement: the completion that comes later is reaped, no buffer is lost and no
/// descriptor is left behind.
#[test]
fn a_dropped_wait_loses_nothing_and_leaks_nothing() {
    let _serial = serial();
    let (server, path) = echo_server("tokio-dropped-wait");
    runtime().block_on(async {
        let mut client = Async::connect(&path, &eventfd_options()).unwrap();
        let free = client.client().pool().free_count();
        let fds = open_fds();
        for round in 0..200u64 {
            // Nothing in flight: the wait arms, sleeps, and is dropped by the timeout.
            let waited = tokio::time::timeout(Duration::from_micros(200), client.ready()).await;
            assert!(waited.is_err(), "round {round}: nothing was in flight");
            // Now a request, and a wait dropped as soon as it has polled once.
            let mut buf = client.client().alloc().unwrap();
            buf.fill_from(&round.to_le_bytes());
            client
                .send(EchoReq {
                    seq: round,
                    op: op::SUM,
                    reserved: 0,
                    buf: buf.lend(),
                })
                .map_err(|r| r.error)
                .unwrap();
            tokio::select! {
                biased;
                _ = std::future::ready(()) => {}
                _ = client.ready() => {}
            }
            // The answer is not lost.
            let answer = client.next().await.unwrap();
            assert_eq!(answer.seq, round);
            assert_eq!(answer.sum, echo::checksum(&round.to_le_bytes()));
            drop(client.client().reclaim(answer.buf).unwrap());
        }
        assert_eq!(client.client().pool().free_count(), free, "buffers lost");
        assert_eq!(open_fds(), fds, "descriptors leaked");
    });
    server.stop().unwrap();
}

/// A server that stops while a task awaits its completions wakes the task with `PeerGone`.
#[test]
fn the_server_stopping_wakes_an_async_wait() {
    let _serial = serial();
    let path = socket_path("tokio-server-stops");
    let server = Server::bind(
        &path,
        ServerConfig::new(ECHO_PROTOCOL),
        echo::handler_factory(),
    )
    .unwrap()
    .spawn()
    .unwrap();
    let stopper = server.stopper();
    runtime().block_on(async {
        let mut client = Async::connect(&path, &eventfd_options()).unwrap();
        let stop = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            stopper.stop()
        });
        let start = Instant::now();
        let waited = tokio::time::timeout(Duration::from_secs(20), client.ready())
            .await
            .expect("the wait ended");
        assert!(matches!(waited, Err(QueueError::PeerGone)), "{waited:?}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        stop.join().unwrap().unwrap();
    });
    drop(server);
}

#[test]
fn only_eventfd_mode_can_be_awaited() {
    let _serial = serial();
    let (server, path) = echo_server("tokio-modes");
    let err = runtime()
        .block_on(async { Async::connect(&path, &options(NotifyMode::Futex)).unwrap_err() });
    assert!(matches!(err, Error::Config(_)), "{err}");
    server.stop().unwrap();
}
