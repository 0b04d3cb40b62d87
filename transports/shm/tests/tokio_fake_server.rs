//! The async byte stream against a server faked in this process (a queue pair the test serves
//! by hand), polled by hand with wakers that count: what one poll does when the server makes
//! up a completion, and which task a poll wakes when it reaps what another task waits for.
#![cfg(feature = "tokio")]
// A waker that counts its wake-ups is the test's own bookkeeping, not a protocol under test.
#![allow(clippy::disallowed_types)]

mod support;

use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use subring_shm::stream::{completion, StreamReq, StreamResp, STREAM_PROTOCOL};
use subring_shm::tokio::AsyncStream;
use subring_shm::{ClientOptions, NotifyMode};
use support::*;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where the fake server's pool lies in its region.
const FAKE_POOL: u64 = 1 << 16;

/// An eventfd-mode [`AsyncStream`] on a fake server with rings of `capacity` entries and
/// `buffers` buffers of 256 bytes (in the current runtime); the server's end of the socket is
/// returned so that the server stays connected while it lives.
fn stream_on_fake_server(
    capacity: u32,
    buffers: u32,
) -> (FakePair<StreamReq, StreamResp>, OwnedFd, AsyncStream) {
    let mut pair = fake_pair_of(
        NotifyMode::Futex,
        NotifyMode::EventFd,
        buffers,
        FAKE_POOL,
        capacity,
    );
    let (ours, theirs) = subring_shm::socket_pair().unwrap();
    send_raw(&ours, &welcome_frame(&pair.welcome), &raw_fds(&pair.fds));
    pair.fds.clear();
    let options = ClientOptions::new(STREAM_PROTOCOL)
        .buffers(256, buffers)
        .capacity(capacity)
        .mode(NotifyMode::EventFd);
    let stream = AsyncStream::from_socket(theirs, &options).unwrap();
    (pair, ours, stream)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A waker that counts how often it was woken.
#[derive(Default)]
struct Count(Mutex<u32>);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        *self.0.lock().unwrap() += 1;
    }
}

impl Count {
    fn get(&self) -> u32 {
        *self.0.lock().unwrap()
    }
}

fn write(stream: &mut AsyncStream, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<usize> {
    Pin::new(stream).poll_write(cx, bytes).map(Result::unwrap)
}

/// Every buffer comes back and the submission ring stays full (the server took none of its
/// entries out), so a read has nothing lent and no room to lend: then the server posts a
/// completion for a buffer nothing lent. The read is an error in that poll. It used to say
/// `WouldBlock` without reaping, so the arm found the completion ready, the poll ran the read
/// again, and so on without end: one poll held its thread for good (no timeout could fire, a
/// current-thread runtime froze).
#[test]
fn a_made_up_completion_with_nothing_lent_ends_a_read_in_its_poll() {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = runtime();
        let _runtime = rt.enter();
        let (mut pair, _server_end, mut stream) = stream_on_fake_server(4, 8);
        let mut cx = Context::from_waker(Waker::noop());
        // Four buffers of data fill the 4-entry submission ring.
        for _ in 0..4 {
            assert_eq!(write(&mut stream, &mut cx, &[7; 256]), Poll::Ready(256));
        }
        assert!(matches!(
            Pin::new(&mut stream).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(pair.service.requests_available().unwrap(), 4);
        let mut lent = Vec::new();
        for k in 0..4 {
            let req = pair.service.ready_request(k).unwrap();
            lent.push(req.buf);
            let sent = StreamResp {
                kind: completion::SENT,
                status: 0,
                buf: req.buf,
            };
            pair.service.complete(sent).unwrap();
        }
        pair.service.flush().unwrap();
        let mut out = [0u8; 16];
        let first = Pin::new(&mut stream).poll_read(&mut cx, &mut ReadBuf::new(&mut out));
        assert!(first.is_pending(), "{first:?}");
        let made_up = StreamResp {
            kind: completion::FILLED,
            status: 0,
            buf: lent[0],
        };
        pair.service.complete(made_up).unwrap();
        pair.service.flush().unwrap();
        let second = Pin::new(&mut stream).poll_read(&mut cx, &mut ReadBuf::new(&mut out));
        let _ = done.send(second.map(|r| r.map_err(|e| e.kind())));
    });
    let second = result
        .recv_timeout(Duration::from_secs(5))
        .expect("the read's poll did not return in 5 s");
    assert_eq!(
        second,
        Poll::Ready(Err(std::io::ErrorKind::InvalidData)),
        "a completion for a buffer nothing lent"
    );
}

/// A write half waits for a buffer back (all are lent as data); the server sends them back;
/// the read half's poll reaps those completions and finds nothing to read. The write half is
/// woken by that poll: the completions' own wake-up may have gone to no one (the client is
/// disarmed while a poll runs) or, as here, not been seen yet, and the writer's waker was
/// replaced in the descriptor's registration by the reader's. It used to stay asleep.
#[test]
fn a_poll_that_reaps_what_the_other_half_waits_for_wakes_it() {
    let rt = runtime();
    let _runtime = rt.enter();
    let (mut pair, _server_end, mut stream) = stream_on_fake_server(16, 4);
    let (writer, reader) = (Arc::new(Count::default()), Arc::new(Count::default()));
    let writer_waker = Waker::from(writer.clone());
    let mut wcx = Context::from_waker(&writer_waker);
    for _ in 0..4 {
        assert_eq!(write(&mut stream, &mut wcx, &[1; 256]), Poll::Ready(256));
    }
    assert_eq!(
        write(&mut stream, &mut wcx, &[1; 256]),
        Poll::Pending,
        "every buffer is lent"
    );
    let n = pair.service.requests_available().unwrap();
    assert_eq!(n, 4, "the writes' data");
    for k in 0..n {
        let req = pair.service.ready_request(k).unwrap();
        let sent = StreamResp {
            kind: completion::SENT,
            status: 0,
            buf: req.buf,
        };
        pair.service.complete(sent).unwrap();
    }
    pair.service.release_requests(n);
    pair.service.flush().unwrap();
    let reader_waker = Waker::from(reader.clone());
    let mut rcx = Context::from_waker(&reader_waker);
    let mut out = [0u8; 16];
    let read = Pin::new(&mut stream).poll_read(&mut rcx, &mut ReadBuf::new(&mut out));
    assert!(read.is_pending(), "nothing to read: {read:?}");
    assert!(
        writer.get() > 0,
        "the reader's poll reaped the writer's buffers and left the writer asleep"
    );
    assert_eq!(write(&mut stream, &mut wcx, &[1; 256]), Poll::Ready(256));
}
