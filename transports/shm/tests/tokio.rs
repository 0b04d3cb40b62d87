//! The async client under tokio, in each way it can wait (eventfd mode; futex mode through an
//! io_uring of its own, trusting its server or not): round trips, a dropped wait that loses
//! and leaks nothing, a server's death waking an async wait, and the modes it refuses.
#![cfg(feature = "tokio")]
// The tests' own bookkeeping (a lock that keeps the descriptor count to one test at a time) is
// not a protocol under test: std types.
#![allow(clippy::disallowed_types)]

mod support;

use std::time::{Duration, Instant};

use subring_shm::echo::{self, EchoOp, EchoReq, EchoResp, EchoStatus, ECHO_PROTOCOL};
use subring_shm::queue::QueueError;
use subring_shm::tokio::AsyncClient;
use subring_shm::{ClientOptions, ConfigError, Error, NotifyMode, Server, ServerConfig};
use support::*;

type Async = AsyncClient<EchoReq, EchoResp>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A runtime of two workers: a task may move between them, and a futex-mode wait's
/// completion interrupts the worker that armed it, which need not be the one in `epoll_wait`.
fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// How long one awaited answer may take before the test fails: a lost wake-up. The wait is
/// bounded by a longer timeout, whose expiry polls the wait once more, and that poll finds the
/// answer that was there all along: a timeout alone would not see the loss.
const ANSWER: Duration = Duration::from_secs(5);

/// Awaits `f`, failing the test if it takes longer than [`ANSWER`] (bounded at four times
/// that).
async fn answered<F: std::future::Future>(what: impl std::fmt::Display, f: F) -> F::Output {
    let start = Instant::now();
    let out = tokio::time::timeout(4 * ANSWER, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {:?}", 4 * ANSWER));
    let took = start.elapsed();
    assert!(took < ANSWER, "{what}: took {took:?} (a lost wake-up)");
    out
}

/// Connects an async client with `options` to the echo server at `path`.
fn connect(path: &std::path::Path, options: &ClientOptions) -> Async {
    Async::connect(path, options).unwrap_or_else(|e| panic!("{:?}: {e}", options.mode))
}

/// The tests of this file run one at a time: one counts the process's descriptors.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Round trips, each awaited with a timeout; between two of them the server falls asleep
/// (every hundredth round waits for that first), so the task's wait must be woken by the
/// server's wake-up of the descriptor it awaits.
#[test]
fn async_round_trips_in_a_tokio_runtime() {
    let _serial = serial();
    let (server, path) = echo_server("tokio-round-trips");
    for (way, options) in event_loop_options(ECHO_PROTOCOL) {
        runtime().block_on(async {
            let mut client = connect(&path, &options);
            round_trips(&mut client, way).await;
        });
        // On a multi-thread runtime, in a spawned task (which the runtime may move), while
        // another task keeps the other worker busy now and then.
        let rt = multi_thread_runtime();
        let path = path.clone();
        rt.block_on(async move {
            let busy = tokio::spawn(async {
                for _ in 0..200 {
                    let until = Instant::now() + Duration::from_micros(200);
                    while Instant::now() < until {
                        std::hint::spin_loop();
                    }
                    tokio::task::yield_now().await;
                }
            });
            let trips = tokio::spawn(async move {
                let mut client = connect(&path, &options);
                round_trips(&mut client, way).await;
            });
            trips.await.unwrap();
            busy.await.unwrap();
        });
    }
    server.stop().unwrap();
}

async fn round_trips(client: &mut Async, way: &str) {
    for seq in 0..2000 {
        if seq % 100 == 99 {
            // Long enough for the server's polling window to end in a sleep.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut buf = client.client().alloc().unwrap();
        buf.fill_from(b"async payload");
        let call = client.call(EchoReq {
            seq,
            op: EchoOp::UPPER,
            reserved: 0,
            buf: buf.lend(),
        });
        let answer = answered(format!("{way}, call {seq}"), call).await.unwrap();
        assert_eq!((answer.seq, answer.status), (seq, EchoStatus::OK), "{way}");
        assert_eq!(answer.sum, echo::checksum(b"async payload"));
        let back = client.client().reclaim(answer.buf).unwrap();
        assert_eq!(back.to_vec(), b"ASYNC PAYLOAD");
    }
}

/// A wait future dropped unfinished (a timeout, a `select!` that took another branch) ends
/// its announcement: the completion that comes later is reaped, no buffer is lost and no
/// descriptor is left behind.
#[test]
fn a_dropped_wait_loses_nothing_and_leaks_nothing() {
    let _serial = serial();
    let (server, path) = echo_server("tokio-dropped-wait");
    for (way, options) in event_loop_options(ECHO_PROTOCOL) {
        runtime().block_on(dropped_waits(&path, &options, way));
    }
    server.stop().unwrap();
}

async fn dropped_waits(path: &std::path::Path, options: &ClientOptions, way: &str) {
    {
        let mut client = connect(path, options);
        let free = client.client().pool().free_count();
        let fds = open_fds();
        for round in 0..200u64 {
            // Nothing in flight: the wait arms, sleeps, and is dropped by the timeout.
            let waited = tokio::time::timeout(Duration::from_micros(200), client.ready()).await;
            assert!(
                waited.is_err(),
                "{way}, round {round}: nothing was in flight"
            );
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
                .unwrap();
            tokio::select! {
                biased;
                _ = std::future::ready(()) => {}
                _ = client.ready() => {}
            }
            // The answer is not lost.
            let answer = answered(format!("{way}, round {round}"), client.next())
                .await
                .unwrap();
            assert_eq!(answer.seq, round);
            assert_eq!(answer.sum, echo::checksum(&round.to_le_bytes()));
            drop(client.client().reclaim(answer.buf).unwrap());
        }
        assert_eq!(
            client.client().pool().free_count(),
            free,
            "{way}: buffers lost"
        );
        // No more than before (fewer: an earlier test's descriptor closed late).
        assert!(open_fds() <= fds, "{way}: descriptors leaked");
    }
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
    let ways = event_loop_options(ECHO_PROTOCOL);
    runtime().block_on(async {
        let mut clients: Vec<(&str, Async)> = ways
            .iter()
            .map(|(way, options)| (*way, connect(&path, options)))
            .collect();
        let stop = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            stopper.stop()
        });
        let start = Instant::now();
        // Every client waits at once; the server's stop must wake each.
        let waits = clients.iter_mut().map(|(way, client)| async move {
            let waited = tokio::time::timeout(Duration::from_secs(20), client.ready())
                .await
                .unwrap_or_else(|_| panic!("{way}: the wait did not end"));
            assert!(
                matches!(waited, Err(QueueError::PeerGone)),
                "{way}: {waited:?}"
            );
        });
        futures_join_all(waits).await;
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        stop.join().unwrap().unwrap();
    });
    drop(server);
}

/// Awaits every future (concurrently, on this task).
async fn futures_join_all<F: std::future::Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let mut futures: Vec<_> = futures.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        futures.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if futures.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// The spinning modes cannot be awaited: a configuration error that names the mode.
#[test]
fn only_eventfd_and_futex_modes_can_be_awaited() {
    let _serial = serial();
    let (server, path) = echo_server("tokio-modes");
    for mode in [NotifyMode::Spin, NotifyMode::Adaptive] {
        let err = runtime().block_on(async { Async::connect(&path, &options(mode)).unwrap_err() });
        assert!(
            matches!(err, Error::Config(ConfigError::Mode { given, .. }) if given == mode),
            "{err}"
        );
    }
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

    /// The stream client's defaults, in each way it can wait.
    fn stream_ways() -> Vec<(&'static str, ClientOptions)> {
        event_loop_options(STREAM_PROTOCOL)
            .into_iter()
            .map(|(way, o)| {
                let mut options = ClientOptions::new(STREAM_PROTOCOL).mode(o.mode);
                options.untrusted_server = o.untrusted_server;
                (way, options)
            })
            .collect()
    }

    /// A megabyte written by one task and read back by another, concurrently, through
    /// `tokio::io::split`: every byte in order, upper-cased.
    #[test]
    fn a_megabyte_through_an_async_stream() {
        let _serial = serial();
        let (server, path) = stream_server("tokio-stream-mib");
        let data: Vec<u8> = (0..1 << 20).map(|i| b'a' + (i % 26) as u8).collect();
        let want = data.to_ascii_uppercase();
        for (way, options) in stream_ways() {
            let (data, want, path) = (data.clone(), want.clone(), path.clone());
            runtime().block_on(async move {
                let stream = AsyncStream::connect(&path, &options).unwrap();
                let (mut rx, mut tx) = tokio::io::split(stream);
                let writer = tokio::spawn(async move {
                    for chunk in data.chunks(10_007) {
                        tx.write_all(chunk).await.unwrap();
                    }
                    tx.shutdown().await.unwrap();
                    tx
                });
                let mut back = Vec::new();
                let start = Instant::now();
                tokio::time::timeout(Duration::from_secs(60), rx.read_to_end(&mut back))
                    .await
                    .unwrap_or_else(|_| panic!("{way}: {} bytes back in 60 s", back.len()))
                    .unwrap();
                let took = start.elapsed();
                assert!(
                    took < Duration::from_secs(20),
                    "{way}: {took:?} (lost wake-ups)"
                );
                let _tx = writer.await.unwrap();
                assert!(
                    back == want,
                    "{way}: {} bytes back, {} expected",
                    back.len(),
                    want.len()
                );
            });
        }
        server.stop().unwrap();
    }

    /// A read future dropped while it waits loses nothing: the line comes to the next read,
    /// and no descriptor is left behind.
    #[test]
    fn a_dropped_read_loses_nothing() {
        let _serial = serial();
        let (server, path) = stream_server("tokio-stream-dropped");
        for (way, options) in stream_ways() {
            let path = path.clone();
            runtime().block_on(async move {
                let mut stream = AsyncStream::connect(&path, &options).unwrap();
                let fds = open_fds();
                for round in 0..100 {
                    // Nothing was sent: the read waits, and is dropped by the timeout.
                    let mut byte = [0u8; 1];
                    let r =
                        tokio::time::timeout(Duration::from_micros(300), stream.read(&mut byte));
                    assert!(
                        r.await.is_err(),
                        "{way}, round {round}: nothing to read yet"
                    );
                    let mut line = String::new();
                    let line_back = async {
                        let text = format!("line {round}\n");
                        stream.write_all(text.as_bytes()).await?;
                        stream.flush().await?;
                        tokio::io::BufReader::new(&mut stream)
                            .read_line(&mut line)
                            .await
                    };
                    answered(format!("{way}, round {round}"), line_back)
                        .await
                        .unwrap();
                    assert_eq!(line, format!("LINE {round}\n"), "{way}");
                }
                // No more than before (fewer: an earlier test's descriptor closed late).
                assert!(open_fds() <= fds, "{way}: descriptors leaked");
            });
        }
        server.stop().unwrap();
    }

    /// A stream whose server stops is an error to a waiting read, not a hang.
    #[test]
    fn a_stopping_server_ends_a_waiting_read() {
        let _serial = serial();
        let (server, path) = stream_server("tokio-stream-stop");
        let stopper = server.stopper();
        // The last way: futex mode, untrusting, where io_uring has futex waits.
        let (way, options) = stream_ways().pop().unwrap();
        runtime().block_on(async move {
            let mut stream = AsyncStream::connect(&path, &options).unwrap();
            let stop = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                stopper.stop()
            });
            let mut byte = [0u8; 1];
            let r = answered(way, stream.read(&mut byte)).await;
            assert!(r.is_err() || r.unwrap() == 0);
            stop.join().unwrap().unwrap();
        });
        drop(server);
    }
}
