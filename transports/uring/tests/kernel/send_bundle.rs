//! Send rings and send bundles: buffers posted to a ring the application fills, sent in order
//! by one operation, and handed back by its completion.

use std::io::Read;

use subring_uring::{BufGroup, BufRingError, SendRejected};

use super::*;

/// A pool of `count` buffers of `size` bytes in memory of its own.
fn pool(size: usize, count: usize) -> Arc<BufferPool> {
    let region = Arc::new(Region::anonymous(size * count, RegionOptions::new()).unwrap());
    BufferPool::new(region, 0, size, count).unwrap()
}

fn send_bundle(ring: &mut Uring, token: u64, fd: &impl AsFd, group: BufGroup) {
    push(
        ring,
        token,
        Op::SendBundle {
            fd: target(fd),
            group,
            flags: libc::MSG_NOSIGNAL,
        },
    );
}

/// Three rounds of five buffers of different lengths through an eight-entry ring (its
/// positions wrap): each send bundle sends every buffer posted, in order, and hands back
/// exactly those buffers; the peer reads every byte in order.
#[test]
fn a_send_bundle_sends_every_posted_buffer_in_order() {
    if !kernel_at_least(6, 10) {
        return;
    }
    let (mut peer, sock) = tcp_pair();
    let mut ring = Uring::builder().build().unwrap();
    let group = ring.register_send_ring(20, 8).unwrap();
    let bufs = pool(512, 16);
    let data = pattern(3 * 5 * 200);
    let mut at = 0;
    for round in 0..3 {
        let mut indices = Vec::new();
        let start = at;
        for i in 0..5 {
            let len = 100 + 40 * i + round;
            let mut b = bufs.alloc().unwrap();
            b.fill_from(&data[at..at + len]);
            at += len;
            indices.push(b.index());
            ring.post_send(group, b).unwrap();
        }
        assert_eq!(ring.buf_ring_stats(group).unwrap().in_kernel, 5);
        send_bundle(&mut ring, 9, &sock, group);
        let c = next(&mut ring);
        assert_eq!(
            *c.result.as_ref().unwrap() as usize,
            at - start,
            "every byte posted"
        );
        let back = match c.output {
            Output::Bundle(b) => b,
            o => panic!("the sent buffers back, not {o:?}"),
        };
        assert_eq!(
            back.iter().map(|b| b.index()).collect::<Vec<_>>(),
            indices,
            "the buffers posted, in order"
        );
        let mut got = vec![0u8; at - start];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got, data[start..at], "round {round}: every byte, in order");
    }
    let stats = ring.buf_ring_stats(group).unwrap();
    assert_eq!(
        (stats.posted, stats.picked, stats.in_kernel, stats.refused),
        (15, 15, 0, 0)
    );
    assert_eq!(bufs.free_count(), 16, "every buffer back in its pool");
}

/// What a send ring cannot take comes back with the reason; a send bundle with nothing posted
/// fails with `ENOBUFS` and takes nothing; one send bundle at a time per ring; unregistering
/// returns the queued buffers to their pool.
#[test]
fn send_rings_refuse_what_they_cannot_take() {
    if !kernel_at_least(6, 10) {
        return;
    }
    let (_peer, sock) = tcp_pair();
    let mut ring = Uring::builder().build().unwrap();
    let group = ring.register_send_ring(21, 4).unwrap();
    assert!(matches!(
        ring.register_send_ring(21, 4),
        Err(BufRingError::GroupTaken { group: 21 })
    ));
    assert!(matches!(
        ring.register_send_ring(22, 3),
        Err(BufRingError::Count { count: 3 })
    ));
    let bufs = pool(64, 8);
    send_bundle(&mut ring, 1, &sock, group);
    let c = next(&mut ring);
    assert_eq!(errno(c.result.as_ref().unwrap_err()), Some(libc::ENOBUFS));
    assert!(matches!(c.output, Output::Bundle(ref b) if b.is_empty()));
    let empty = bufs.alloc().unwrap();
    let index = empty.index();
    match ring.post_send(group, empty) {
        Err(SendRejected {
            buf,
            error: BufRingError::EmptyBuffer { group: 21 },
        }) => assert_eq!(buf.index(), index, "handed back"),
        other => panic!("an empty buffer refused, not {other:?}"),
    }
    for _ in 0..4 {
        let mut b = bufs.alloc().unwrap();
        b.fill_from(b"queued");
        ring.post_send(group, b).unwrap();
    }
    let mut fifth = bufs.alloc().unwrap();
    fifth.fill_from(b"one too many");
    let e = ring.post_send(group, fifth).unwrap_err();
    assert!(
        matches!(
            e.error,
            BufRingError::Full {
                group: 21,
                entries: 4
            }
        ),
        "{e}"
    );
    assert_eq!(e.buf.to_vec(), b"one too many");
    let unknown = {
        let mut other = Uring::builder().build().unwrap();
        other.register_send_ring(23, 4).unwrap()
    };
    let e = ring.post_send(unknown, e.buf).unwrap_err();
    assert!(
        matches!(e.error, BufRingError::NoGroup { group: 23 }),
        "{e}"
    );
    drop(e);
    // MSG_ZEROCOPY would have the kernel read the buffers after they come back.
    let e = ring
        .push(sub(
            5,
            Op::SendBundle {
                fd: target(&sock),
                group,
                flags: libc::MSG_ZEROCOPY,
            },
        ))
        .unwrap_err()
        .error;
    assert!(
        matches!(refusal(&e), SubmitError::ZeroCopyFlag { op: "send_bundle" }),
        "{e}"
    );
    // One send bundle in flight on the ring: a second is refused at push.
    ring.push(sub(
        2,
        Op::SendBundle {
            fd: target(&sock),
            group,
            flags: libc::MSG_NOSIGNAL,
        },
    ))
    .map_err(|r| r.error)
    .unwrap();
    let e = ring
        .push(sub(
            3,
            Op::SendBundle {
                fd: target(&sock),
                group,
                flags: 0,
            },
        ))
        .unwrap_err()
        .error;
    assert!(
        matches!(refusal(&e), SubmitError::BundleInFlight { group: 21 }),
        "{e}"
    );
    ring.submit().unwrap();
    let c = next(&mut ring);
    assert_eq!(*c.result.as_ref().unwrap(), 4 * 6);
    // Queued buffers go back to their pool when the ring is unregistered.
    let mut b = bufs.alloc().unwrap();
    b.fill_from(b"left queued");
    ring.post_send(group, b).unwrap();
    drop(c);
    assert_eq!(bufs.free_count(), 7);
    ring.unregister_buf_ring(group).unwrap();
    assert_eq!(bufs.free_count(), 8);
}

/// Collects the completions of one send bundle (token `token`) until its last: the bytes sent
/// and the buffers handed back, with how many completions it took.
fn until_last(ring: &mut Uring, token: u64) -> (std::io::Result<usize>, Vec<Buf>, usize) {
    let (mut sent, mut back, mut n) = (0usize, Vec::new(), 0);
    loop {
        let c = next(ring);
        assert_eq!(c.token, token);
        n += 1;
        let more = c.more;
        if let Output::Bundle(b) = c.output {
            back.extend(b);
        }
        match c.result {
            Ok(bytes) => sent += bytes as usize,
            Err(e) => {
                assert!(!more, "an error ends the bundle");
                return (Err(e), back, n);
            }
        }
        if !more {
            return (Ok(sent), back, n);
        }
    }
}

use subring_planes::data::Buf;

/// More buffers than the kernel takes in one round (it maps at most 256 at a time): the
/// bundle goes on in rounds, each a completion with `more` set handing back that round's
/// buffers, and every buffer and byte arrives in order.
#[test]
fn a_send_bundle_of_many_buffers_goes_in_rounds() {
    if !kernel_at_least(6, 10) {
        return;
    }
    let (mut peer, sock) = tcp_pair();
    let mut ring = Uring::builder().build().unwrap();
    let group = ring.register_send_ring(30, 512).unwrap();
    let bufs = pool(64, 300);
    let data = pattern(300 * 20);
    let mut indices = Vec::new();
    for i in 0..300 {
        let mut b = bufs.alloc().unwrap();
        b.fill_from(&data[i * 20..(i + 1) * 20]);
        indices.push(b.index());
        ring.post_send(group, b).unwrap();
    }
    send_bundle(&mut ring, 4, &sock, group);
    let (sent, back, completions) = until_last(&mut ring, 4);
    assert_eq!(sent.unwrap(), data.len());
    assert_eq!(
        back.iter().map(|b| b.index()).collect::<Vec<_>>(),
        indices,
        "every buffer back, in order"
    );
    assert!(
        completions >= 2,
        "{completions} completions: the bundle went in rounds"
    );
    let mut got = vec![0u8; data.len()];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(got, data);
    let stats = ring.buf_ring_stats(group).unwrap();
    assert_eq!((stats.picked, stats.refused, stats.in_kernel), (300, 0, 0));
}

/// Send bundles to a peer that went away fail (`EPIPE` or `ECONNRESET`) with the buffers the
/// kernel took handed back: the ring stays in step (no refused report, the next bundle is
/// accepted), and every buffer returns to its pool.
#[test]
fn failed_send_bundles_keep_the_ring_in_step() {
    if !kernel_at_least(6, 10) {
        return;
    }
    let (peer, sock) = tcp_pair();
    drop(peer);
    let mut ring = Uring::builder().build().unwrap();
    let group = ring.register_send_ring(31, 16).unwrap();
    let bufs = pool(64, 16);
    let mut failures = 0;
    for round in 0..200u64 {
        for _ in 0..4 {
            let mut b = bufs.alloc().unwrap();
            b.fill_from(&[round as u8; 40]);
            ring.post_send(group, b).unwrap();
        }
        send_bundle(&mut ring, 100 + round, &sock, group);
        let (result, back, _) = until_last(&mut ring, 100 + round);
        drop(back);
        if let Err(e) = result {
            assert!(
                matches!(errno(&e), Some(libc::EPIPE) | Some(libc::ECONNRESET)),
                "{e}"
            );
            failures += 1;
            if failures == 3 {
                break;
            }
        }
        let stats = ring.buf_ring_stats(group).unwrap();
        assert_eq!(stats.refused, 0, "{stats:?}");
        assert_eq!(
            stats.in_kernel as usize + bufs.free_count(),
            16,
            "{stats:?}"
        );
    }
    assert_eq!(failures, 3, "sends to a closed peer fail");
    let stats = ring.buf_ring_stats(group).unwrap();
    assert_eq!(stats.refused, 0, "{stats:?}");
    ring.unregister_buf_ring(group).unwrap();
    assert_eq!(bufs.free_count(), 16, "every buffer back");
}
