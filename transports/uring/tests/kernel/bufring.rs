//! Provided-buffer rings: multishot receives into buffers the kernel picks, every id and length
//! it reports checked.

use std::io::Write;
use std::net::TcpListener;

use subring_uring::{BufGroup, BufRingOptions};

use super::*;

/// A multishot recv drains its buffer ring, ends with `ENOBUFS`, is re-armed once the buffers
/// are dropped, and the stream arrives whole and in order.
#[test]
fn a_multishot_recv_drains_the_ring_gets_enobufs_is_rearmed_and_loses_no_byte() {
    if !kernel_at_least(6, 0) {
        return;
    }
    let (mut tx, rx) = tcp_pair();
    let mut ring = Uring::builder().build().unwrap();
    let group = ring
        .register_buf_ring(BufRingOptions::new(3, 64, 4))
        .unwrap();
    let stats = ring.buf_ring_stats(group).unwrap();
    assert_eq!(
        (stats.free, stats.in_kernel),
        (0, 4),
        "every buffer is posted"
    );
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
fn buffer_groups_are_checked_at_push_and_unregister() {
    if !kernel_at_least(6, 0) {
        return;
    }
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
    arm(&mut ring, 1, &rx, group);
    assert!(matches!(
        ring.unregister_buf_ring(group),
        Err(subring_uring::BufRingError::InFlight { group: 42, ops: 1 })
    ));
    push(&mut ring, 2, Op::Cancel { token: 1 });
    let _ = (next(&mut ring), next(&mut ring));
    ring.unregister_buf_ring(group).unwrap();
    assert!(ring.buf_ring_stats(group).is_none());
}

/// Writes `value` into field `at` (bytes into the entry) of entry `index` of `group`'s ring, as
/// a hostile writer of the ring's memory would.
/// Only ids, and lengths that keep the buffer inside the pool's memory.
pub(super) fn forge(ring: &Uring, group: BufGroup, index: u64, at: u64, value: &[u8]) {
    assert!(at == 12 || at == 8, "only the id or the length");
    // SAFETY: only an id or a length is written; every caller keeps a forged length inside the
    // buffer's pool (the next buffer of the same pool).
    let mem = unsafe { ring.buf_ring_memory_for_tests(group) }.unwrap();
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
    if !kernel_at_least(6, 0) {
        return;
    }
    let (mut tx, rx) = tcp_pair();
    let mut ring = Uring::builder().build().unwrap();
    let group = ring
        .register_buf_ring(BufRingOptions::new(0, 64, 4))
        .unwrap();
    // The kernel picks entry 0 first: its id becomes 999, past the pool.
    forge(&ring, group, 0, 12, &999u16.to_le_bytes());
    arm(&mut ring, 7, &rx, group);
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
    if !kernel_at_least(6, 0) {
        return;
    }
    let (mut tx, rx) = tcp_pair();
    let mut ring = Uring::builder().build().unwrap();
    // Two buffers of 64 bytes; entry 0 claims 128 (its neighbour is posted, so the kernel's
    // write stays inside memory the ring owns).
    let group = ring
        .register_buf_ring(BufRingOptions::new(0, 64, 2))
        .unwrap();
    forge(&ring, group, 0, 8, &128u32.to_le_bytes());
    arm(&mut ring, 7, &rx, group);
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
    if !kernel_at_least(6, 0) {
        return;
    }
    let (mut tx, rx) = tcp_pair();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let region = Arc::new(Region::memfd("bufring", 1 << 16, RegionOptions::new()).unwrap());
    let mut ring = Uring::builder().build().unwrap();
    let group = ring
        .register_buf_ring(BufRingOptions::new(5, 1024, 16).region(region.clone(), 4096))
        .unwrap();
    arm(&mut ring, 1, &rx, group);
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
    drop(ring);
    // The held buffer is still the caller's, bytes and all, and keeps its pool alive.
    assert_eq!(held.to_vec(), b"kept by the caller");
    assert!(BufferPool::new(region.clone(), 4096, 1024, 16).is_err());
    drop(held);
    // Nothing was leaked: with the last buffer the pool is gone, and its claim on the range.
    BufferPool::new(region, 4096, 1024, 16).expect("the range is free again");
}

/// A forged id naming a buffer that is not posted now (one the caller lent onward to another
/// process, so the pool's lent bit is set) is refused: the ring's record of posted buffers, not
/// the pool's lent bit, decides.
#[test]
fn a_forged_id_naming_a_buffer_lent_onward_is_refused() {
    if !kernel_at_least(6, 0) {
        return;
    }
    let (mut tx, rx) = tcp_pair();
    let mut ring = Uring::builder().build().unwrap();
    let group = ring
        .register_buf_ring(BufRingOptions::new(0, 64, 4))
        .unwrap();
    arm(&mut ring, 7, &rx, group);
    tx.write_all(b"first").unwrap();
    let held = selected(next(&mut ring));
    assert_eq!(held.index(), 0, "entry 0 came first");
    // Lent onward (to a peer that maps the pool's region, say).
    let lent = held.lend();
    // The kernel reads entry 1 next: make it name the buffer lent onward.
    forge(&ring, group, 1, 12, &0u16.to_le_bytes());
    tx.write_all(b"second").unwrap();
    let c = next(&mut ring);
    let e = c.result.as_ref().unwrap_err();
    assert!(e.to_string().contains("not posted"), "{e}");
    assert!(c.more, "the receive goes on: {c:?}");
    assert_eq!(ring.in_flight(), 1);
    let mut peer_sees = [0u8; 5];
    let pool_region = ring.buf_ring_pool(group).unwrap().region().clone();
    pool_region.read_into(lent, &mut peer_sees).unwrap();
    assert_eq!(&peer_sees, b"first", "the lent buffer is untouched");
    assert_eq!(ring.buf_ring_stats(group).unwrap().refused, 1);
}

/// Arms a multishot receive on `rx` picking from `group`.
pub(super) fn arm(ring: &mut Uring, token: u64, rx: &impl AsFd, group: BufGroup) {
    push(
        ring,
        token,
        Op::RecvMulti {
            fd: target(rx),
            group,
            flags: 0,
        },
    );
}

/// A ring with one buffer ring registered as `opts` says.
pub(super) fn ring_with(opts: BufRingOptions) -> (Uring, BufGroup) {
    let mut ring = Uring::builder().build().unwrap();
    let group = ring.register_buf_ring(opts).unwrap();
    (ring, group)
}
