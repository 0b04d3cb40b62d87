//! Multishot operations: one submission, many completions, the slot kept until the last.

use std::io::Write;
use std::net::{TcpListener, TcpStream};

use subring_uring::{BufGroup, BufRingOptions, Completion};

use super::*;

/// Waits for and reaps the next completion (20 s at most).
fn next(ring: &mut Uring) -> Completion {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(c) = ring.reap().unwrap() {
            return c;
        }
        assert!(Instant::now() < deadline, "no completion within 20 s");
        ring.wait(Some(Duration::from_millis(100)))
            .or_else(|e| match e {
                QueueError::Timeout(_) => Ok(()),
                e => Err(e),
            })
            .unwrap();
    }
}

fn push(ring: &mut Uring, token: u64, op: Op) {
    ring.push(sub(token, op)).map_err(|r| r.error).unwrap();
    ring.submit().unwrap();
}

/// A connected pair of TCP sockets on loopback: (the one the test writes, the one the ring reads).
fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

/// The errno inside a failed operation's `OpError`.
fn errno(e: &std::io::Error) -> Option<i32> {
    e.get_ref()
        .and_then(|e| e.downcast_ref::<OpError>())
        .and_then(|o| o.source.raw_os_error())
}

fn cancelled(c: &Completion) -> bool {
    c.result
        .as_ref()
        .is_err_and(|e| errno(e) == Some(libc::ECANCELED))
}

#[test]
fn a_multishot_accept_delivers_a_descriptor_per_connection_until_cancelled() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut ring = Uring::builder().build().unwrap();
    push(
        &mut ring,
        9,
        Op::AcceptMulti {
            fd: target(&listener),
        },
    );
    let clients: Vec<_> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut accepted = Vec::new();
    for _ in 0..3 {
        let c = next(&mut ring);
        assert_eq!(c.token, 9);
        assert!(c.more, "the accept stays armed: {c:?}");
        let Output::Fd(fd) = c.output else {
            panic!("each completion carries its descriptor: {c:?}")
        };
        assert_eq!(*c.result.as_ref().unwrap() as RawFd, fd.as_raw_fd());
        accepted.push(fd);
    }
    // Every accepted descriptor is a distinct, connected socket.
    for (client, fd) in clients.iter().zip(&accepted) {
        let peer = nix::sys::socket::getpeername::<nix::sys::socket::SockaddrIn>(fd.as_raw_fd());
        assert_eq!(
            peer.unwrap().port(),
            client.local_addr().unwrap().port(),
            "accepted in order"
        );
    }
    assert_eq!(
        ring.in_flight(),
        1,
        "one operation, however many completions"
    );
    assert_eq!(ring.stats().continued, 3);
    // The end is visible: cancelled, `more` clear, the slot gone.
    push(&mut ring, 10, Op::Cancel { token: 9 });
    let mut ends = [next(&mut ring), next(&mut ring)];
    ends.sort_by_key(|c| c.token);
    assert_eq!(*ends[1].result.as_ref().unwrap(), 0, "the cancel found it");
    assert!(cancelled(&ends[0]), "{:?}", ends[0]);
    assert!(!ends[0].more);
    assert_eq!(ring.in_flight(), 0);
    // Re-arming is one push.
    push(
        &mut ring,
        11,
        Op::AcceptMulti {
            fd: target(&listener),
        },
    );
    let _late = TcpStream::connect(addr).unwrap();
    let c = next(&mut ring);
    assert!(c.more && matches!(c.output, Output::Fd(_)), "{c:?}");
}

#[test]
fn a_multishot_poll_fires_each_time_and_ends_on_cancel() {
    let (mut tx, rx) = tcp_pair();
    let mut ring = Uring::builder().build().unwrap();
    push(
        &mut ring,
        1,
        Op::PollMulti {
            fd: target(&rx),
            events: libc::POLLIN as u32,
        },
    );
    tx.write_all(b"x").unwrap();
    let c = next(&mut ring);
    assert!(c.more, "{c:?}");
    assert_ne!(c.result.unwrap() & libc::POLLIN as u32, 0);
    tx.write_all(b"y").unwrap();
    let c = next(&mut ring);
    assert!(
        c.more && c.token == 1,
        "fires again without a new push: {c:?}"
    );
    push(&mut ring, 2, Op::CancelAll);
    let mut ends = [next(&mut ring), next(&mut ring)];
    ends.sort_by_key(|c| c.token);
    assert!(cancelled(&ends[0]) && !ends[0].more, "{:?}", ends[0]);
    assert_eq!(
        *ends[1].result.as_ref().unwrap(),
        1,
        "one operation cancelled"
    );
    assert_eq!(ring.in_flight(), 0);
}

/// The bytes `n` of a test stream.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn selected(c: Completion) -> subring_planes::data::Buf {
    match c.output {
        Output::Selected(b) => b,
        o => panic!("a picked buffer, not {o:?} (result {:?})", c.result),
    }
}

/// A multishot recv drains its buffer ring, ends with `ENOBUFS`, is re-armed once the buffers
/// are dropped, and the stream arrives whole and in order.
#[test]
fn a_multishot_recv_drains_the_ring_gets_enobufs_is_rearmed_and_loses_no_byte() {
    let (mut tx, rx) = tcp_pair();
    let mut ring = Uring::builder().build().unwrap();
    let group = ring
        .register_buf_ring(BufRingOptions::new(3, 64, 4))
        .unwrap();
    let pool = ring.buf_ring_pool(group).unwrap().clone();
    assert_eq!(pool.free_count(), 0, "every buffer is posted");
    let data = pattern(1000);
    tx.write_all(&data).unwrap();
    let recv = || Op::RecvMulti {
        fd: target(&rx),
        group,
        flags: 0,
    };
    push(&mut ring, 5, recv());
    let mut got = Vec::new();
    let mut held = Vec::new();
    let (mut rearms, mut enobufs) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < data.len() {
        assert!(Instant::now() < deadline, "stalled at {} bytes", got.len());
        let c = next(&mut ring);
        assert_eq!(c.token, 5);
        match &c.result {
            Ok(n) => {
                let (n, more) = (*n as usize, c.more);
                let b = selected(c);
                assert_eq!(b.len(), n);
                got.extend_from_slice(&b.to_vec());
                // Held: the ring runs dry.
                held.push(b);
                if !more {
                    // Ended with data (the kernel may stop a multishot on its own).
                    held.clear();
                    push(&mut ring, 5, recv());
                    rearms += 1;
                }
            }
            Err(e) => {
                assert_eq!(errno(e), Some(libc::ENOBUFS), "{e}");
                assert!(!c.more);
                assert_eq!(held.len(), 4, "ENOBUFS once all four buffers are held");
                assert_eq!(ring.in_flight(), 0);
                held.clear();
                push(&mut ring, 5, recv());
                rearms += 1;
                enobufs += 1;
            }
        }
    }
    assert!(enobufs >= 1, "the ring ran dry at least once");
    assert_eq!(got, data, "every byte, in order");
    assert!(
        rearms >= 3,
        "1000 bytes in 64-byte buffers, four at a time: {rearms} re-arms"
    );
    let stats = ring.buf_ring_stats(group).unwrap();
    assert_eq!(stats.picked, 1000u64.div_ceil(64));
    assert_eq!(stats.refused, 0);
}

#[test]
fn a_multishot_read_of_a_pipe_picks_a_buffer_per_write() {
    let (rx, tx) = nix::unistd::pipe().unwrap();
    let mut ring = Uring::builder().build().unwrap();
    let group = ring
        .register_buf_ring(BufRingOptions::new(1, 256, 8))
        .unwrap();
    push(
        &mut ring,
        1,
        Op::ReadMulti {
            fd: target(&rx),
            group,
        },
    );
    for word in [&b"first"[..], b"second"] {
        nix::unistd::write(&tx, word).unwrap();
        let c = next(&mut ring);
        assert!(c.more, "{c:?}");
        assert_eq!(selected(c).to_vec(), word);
    }
    drop(tx);
    let c = next(&mut ring);
    assert_eq!(*c.result.as_ref().unwrap(), 0, "end of file: {c:?}");
    assert!(!c.more);
}

#[test]
fn buffer_groups_are_checked_at_push_and_unregister() {
    let (_tx, rx) = tcp_pair();
    let mut ring = Uring::builder().build().unwrap();
    let unknown = {
        let mut other = Uring::builder().build().unwrap();
        other
            .register_buf_ring(BufRingOptions::new(42, 64, 2))
            .unwrap()
    };
    let e = ring
        .push(sub(
            1,
            Op::RecvMulti {
                fd: target(&rx),
                group: unknown,
                flags: 0,
            },
        ))
        .unwrap_err()
        .error;
    assert!(
        matches!(refusal(&e), SubmitError::NoBufGroup { group: 42 }),
        "{e}"
    );
    let group = ring
        .register_buf_ring(BufRingOptions::new(42, 64, 2))
        .unwrap();
    assert!(matches!(
        ring.register_buf_ring(BufRingOptions::new(42, 64, 2)),
        Err(subring_uring::BufRingError::GroupTaken { group: 42 })
    ));
    assert!(matches!(
        ring.register_buf_ring(BufRingOptions::new(43, 64, 0)),
        Err(subring_uring::BufRingError::Count { count: 0 })
    ));
    assert!(matches!(
        ring.register_buf_ring(BufRingOptions::new(43, 64, 40_000)),
        Err(subring_uring::BufRingError::Count { count: 40_000 })
    ));
    push(
        &mut ring,
        1,
        Op::RecvMulti {
            fd: target(&rx),
            group,
            flags: 0,
        },
    );
    assert!(matches!(
        ring.unregister_buf_ring(group),
        Err(subring_uring::BufRingError::InFlight { group: 42, ops: 1 })
    ));
    push(&mut ring, 2, Op::Cancel { token: 1 });
    let _ = (next(&mut ring), next(&mut ring));
    let pool = ring.buf_ring_pool(group).unwrap().clone();
    ring.unregister_buf_ring(group).unwrap();
    assert_eq!(pool.free_count(), 2, "every posted buffer came back");
    assert!(ring.buf_ring_stats(group).is_none());
}

/// Writes `value` into field `at` (bytes into the entry) of entry `index` of `group`'s ring, as
/// a hostile writer of the ring's memory would.
fn forge(ring: &Uring, group: BufGroup, index: u64, at: u64, value: &[u8]) {
    let mem = ring.buf_ring_memory_for_tests(group).unwrap();
    let h = BufHandle {
        offset: index * 16 + at,
        len: value.len() as u32,
        region: mem.id(),
    };
    mem.write_from(h, value).unwrap();
}

/// A buffer id that the ring never lent (forged in the ring's memory, where the kernel reads
/// it) is refused with a typed error, not handed out as a buffer.
#[test]
fn a_forged_buffer_id_from_the_ring_memory_is_refused() {
    let (mut tx, rx) = tcp_pair();
    let mut ring = Uring::builder().build().unwrap();
    let group = ring
        .register_buf_ring(BufRingOptions::new(0, 64, 4))
        .unwrap();
    // The kernel picks entry 0 first: its id becomes 999, past the pool.
    forge(&ring, group, 0, 12, &999u16.to_le_bytes());
    push(
        &mut ring,
        7,
        Op::RecvMulti {
            fd: target(&rx),
            group,
            flags: 0,
        },
    );
    tx.write_all(b"abc").unwrap();
    let c = next(&mut ring);
    let e = c.result.as_ref().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("buffer 999"), "{e}");
    assert!(matches!(c.output, Output::None));
    assert_eq!(ring.buf_ring_stats(group).unwrap().refused, 1);
    // The operation goes on with honest entries.
    tx.write_all(b"def").unwrap();
    let c = next(&mut ring);
    assert_eq!(selected(c).to_vec(), b"def");
}

/// A length forged larger than the buffer makes the kernel report more bytes than the buffer
/// holds: refused, the buffer taken back into the pool rather than handed out.
#[test]
fn a_length_past_the_buffer_is_refused() {
    let (mut tx, rx) = tcp_pair();
    let mut ring = Uring::builder().build().unwrap();
    // Two buffers of 64 bytes; entry 0 claims 128 (its neighbour is posted, so the kernel's
    // write stays inside memory the ring owns).
    let group = ring
        .register_buf_ring(BufRingOptions::new(0, 64, 2))
        .unwrap();
    forge(&ring, group, 0, 8, &128u32.to_le_bytes());
    push(
        &mut ring,
        7,
        Op::RecvMulti {
            fd: target(&rx),
            group,
            flags: 0,
        },
    );
    tx.write_all(&pattern(100)).unwrap();
    let c = next(&mut ring);
    let e = c.result.as_ref().unwrap_err();
    assert!(
        e.to_string()
            .contains("100 bytes reported in a 64-byte buffer"),
        "{e}"
    );
    assert_eq!(ring.buf_ring_stats(group).unwrap().refused, 1);
}

/// Dropping the ring with multishot operations in flight cancels them and returns every buffer
/// to its pool.
#[test]
fn dropping_the_ring_with_multishots_in_flight_returns_every_buffer() {
    let (mut tx, rx) = tcp_pair();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let region = Arc::new(Region::memfd("bufring", 1 << 16, RegionOptions::new()).unwrap());
    let mut ring = Uring::builder().build().unwrap();
    let group = ring
        .register_buf_ring(BufRingOptions::new(5, 1024, 16).region(region.clone(), 4096))
        .unwrap();
    let pool = ring.buf_ring_pool(group).unwrap().clone();
    push(
        &mut ring,
        1,
        Op::RecvMulti {
            fd: target(&rx),
            group,
            flags: 0,
        },
    );
    push(
        &mut ring,
        2,
        Op::AcceptMulti {
            fd: target(&listener),
        },
    );
    tx.write_all(b"kept by the caller").unwrap();
    let held = selected(next(&mut ring));
    assert_eq!(ring.in_flight(), 2);
    assert_eq!(pool.free_count(), 0);
    drop(ring);
    assert_eq!(pool.free_count(), 15, "all but the held buffer are back");
    assert_eq!(held.to_vec(), b"kept by the caller");
    drop(held);
    assert_eq!(pool.free_count(), 16);
    drop(pool);
    // The pool's claim on the region is gone with it.
    BufferPool::new(region, 4096, 1024, 16).expect("the range is free again");
}
