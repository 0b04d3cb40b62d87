//! The async client under tokio: round trips, a dropped wait that loses and leaks nothing, a
//! server's death waking an async wait, and the mode it needs.
#![cfg(feature = "tokio")]
// The tests' own bookkeeping (a lock that keeps the descriptor count to one test at a time) is
// not a protocol under test: std types.
#![allow(clippy::disallowed_types)]

mod support;

use std::time::{Duration, Instant};

use subring_shm::echo::{self, EchoOp, EchoReq, EchoResp, EchoStatus, ECHO_PROTOCOL};
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
                    op: EchoOp::UPPER,
                    reserved: 0,
                    buf: buf.lend(),
                })
                .await
                .unwrap();
            assert_eq!((answer.seq, answer.status), (seq, EchoStatus::OK));
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
                    op: EchoOp::SUM,
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
        // No more than before (fewer: an earlier test's descriptor closed late).
        assert!(open_fds() <= fds, "descriptors leaked");
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

mod streams {
    use super::*;
    use subring_shm::stream::{ByteService, StreamHandler, STREAM_PROTOCOL};
    use subring_shm::tokio::AsyncStream;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

    struct Upper;
    impl ByteService for Upper {
        fn data(&mut self, input: &[u8], out: &mut Vec<u8>) {
            out.extend(input.iter().map(u8::to_ascii_uppercase));
        }
    }

    fn stream_server(
        test: &str,
    ) -> (
        subring_shm::ServerThread<
            subring_shm::stream::StreamReq,
            subring_shm::stream::StreamResp,
            subring_shm::PerClient<StreamHandler<Upper>>,
        >,
        std::path::PathBuf,
    ) {
        let path = socket_path(test);
        let server = Server::bind(&path, ServerConfig::new(STREAM_PROTOCOL), |_| {
            StreamHandler::new(Upper)
        })
        .unwrap()
        .spawn()
        .unwrap();
        (server, path)
    }

    fn stream_options() -> ClientOptions {
        ClientOptions::new(STREAM_PROTOCOL).mode(NotifyMode::EventFd)
    }

    /// A megabyte written by one task and read back by another, concurrently, through
    /// `tokio::io::split`: every byte in order, upper-cased.
    #[test]
    fn a_megabyte_through_an_async_stream() {
        let _serial = serial();
        let (server, path) = stream_server("tokio-stream-mib");
        let data: Vec<u8> = (0..1 << 20).map(|i| b'a' + (i % 26) as u8).collect();
        let want = data.to_ascii_uppercase();
        runtime().block_on(async move {
            let stream = AsyncStream::connect(&path, &stream_options()).unwrap();
            let (mut rx, mut tx) = tokio::io::split(stream);
            let writer = tokio::spawn(async move {
                for chunk in data.chunks(10_007) {
                    tx.write_all(chunk).await.unwrap();
                }
                tx.shutdown().await.unwrap();
                tx
            });
            let mut back = Vec::new();
            rx.read_to_end(&mut back).await.unwrap();
            let _tx = writer.await.unwrap();
            assert!(
                back == want,
                "{} bytes back, {} expected",
                back.len(),
                want.len()
            );
        });
        server.stop().unwrap();
    }

    /// A read future dropped while it waits loses nothing: the line comes to the next read,
    /// and no descriptor is left behind.
    #[test]
    fn a_dropped_read_loses_nothing() {
        let _serial = serial();
        let (server, path) = stream_server("tokio-stream-dropped");
        runtime().block_on(async move {
            let mut stream = AsyncStream::connect(&path, &stream_options()).unwrap();
            let fds = open_fds();
            for round in 0..100 {
                // Nothing was sent: the read waits, and is dropped by the timeout.
                let mut byte = [0u8; 1];
                let r = tokio::time::timeout(Duration::from_micros(300), stream.read(&mut byte));
                assert!(r.await.is_err(), "round {round}: nothing to read yet");
                stream
                    .write_all(format!("line {round}\n").as_bytes())
                    .await
                    .unwrap();
                stream.flush().await.unwrap();
                let mut line = String::new();
                tokio::io::BufReader::new(&mut stream)
                    .read_line(&mut line)
                    .await
                    .unwrap();
                assert_eq!(line, format!("LINE {round}\n"));
            }
            // No more than before (fewer: an earlier test's descriptor closed late).
            assert!(open_fds() <= fds, "descriptors leaked");
        });
        server.stop().unwrap();
    }

    /// A stream whose server stops is an error to a waiting read, not a hang.
    #[test]
    fn a_stopping_server_ends_a_waiting_read() {
        let _serial = serial();
        let (server, path) = stream_server("tokio-stream-stop");
        let stopper = server.stopper();
        runtime().block_on(async move {
            let mut stream = AsyncStream::connect(&path, &stream_options()).unwrap();
            let stop = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                stopper.stop()
            });
            let mut byte = [0u8; 1];
            let r = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut byte))
                .await
                .expect("the read ended");
            assert!(r.is_err() || r.unwrap() == 0);
            stop.join().unwrap().unwrap();
        });
        drop(server);
    }
}
