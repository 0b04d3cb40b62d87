//! Incremental consumption (`IOU_PBUF_RING_INC`): many receives share a buffer, each after the
//! bytes of the one before.

use std::io::Write;

use subring_uring::{BufChunk, BufRingOptions, Completion};

use super::bufring::{arm, forge, ring_with};
use super::*;

fn chunk(c: Completion) -> BufChunk {
    match c.output {
        Output::Chunk(chunk) => chunk,
        o => panic!("a chunk, not {o:?} (result {:?})", c.result),
    }
}

/// Small receives fill one buffer piece by piece; the buffer goes back to the ring only once
/// the kernel is done with it and its last chunk is dropped, and every chunk keeps its bytes
/// while the kernel fills the rest.
#[test]
fn small_receives_share_a_buffer_and_it_returns_once_its_chunks_are_dropped() {
    if !kernel_at_least(6, 12) {
        return;
    }
    let (mut tx, rx) = tcp_pair();
    let (mut ring, group) = ring_with(BufRingOptions::new(4, 256, 2).incremental());
    arm(&mut ring, 1, &rx, group);
    let mut chunks = Vec::new();
    for piece in [&b"abc"[..], b"defgh", b"ijklmnopq"] {
        tx.write_all(piece).unwrap();
        let c = next(&mut ring);
        assert!(c.more);
        let ch = chunk(c);
        assert_eq!(ch.to_vec(), piece);
        assert_eq!(ch.index(), 0, "the same buffer");
        assert!(!ch.is_last());
        chunks.push(ch);
    }
    assert_eq!(
        chunks.iter().map(BufChunk::offset).collect::<Vec<_>>(),
        [0, 3, 8],
        "each after the one before"
    );
    // 300 bytes: the rest of buffer 0 (239 bytes, its last chunk), then 61 into buffer 1.
    let tail = pattern(300);
    tx.write_all(&tail).unwrap();
    let mut got = Vec::new();
    while got.len() < tail.len() {
        let ch = chunk(next(&mut ring));
        got.extend(ch.to_vec());
        chunks.push(ch);
    }
    assert_eq!(got, tail);
    let last0 = chunks
        .iter()
        .find(|c| c.index() == 0 && c.is_last())
        .unwrap();
    assert_eq!((last0.offset(), last0.len()), (17, 239), "{chunks:?}");
    let first1 = chunks.iter().find(|c| c.index() == 1).unwrap();
    assert_eq!((first1.offset(), first1.is_last()), (0, false));
    assert_eq!(chunks[0].to_vec(), b"abc", "an early chunk keeps its bytes");
    let stats = ring.buf_ring_stats(group).unwrap();
    assert_eq!((stats.picked, stats.in_kernel, stats.free), (1, 1, 0));
    // One chunk of buffer 0 held keeps it out of the ring; the last one dropped frees it.
    let kept = chunks.remove(0);
    chunks.retain(|c| c.index() != 0);
    assert_eq!(ring.buf_ring_stats(group).unwrap().free, 0);
    drop(kept);
    assert_eq!(ring.buf_ring_stats(group).unwrap().free, 1);
    assert_eq!(ring.replenish(), 1);
    assert_eq!(ring.buf_ring_stats(group).unwrap().in_kernel, 2);
}

/// A length forged past the buffer's end makes the kernel report more bytes than the rest of
/// the buffer holds: refused, nothing handed out.
#[test]
fn a_chunk_past_the_buffer_is_refused() {
    if !kernel_at_least(6, 12) {
        return;
    }
    let (mut tx, rx) = tcp_pair();
    // Entry 0 claims 128 bytes of a 64-byte buffer (its neighbour is posted: the kernel's
    // write stays in memory the ring owns).
    let (mut ring, group) = ring_with(BufRingOptions::new(0, 64, 2).incremental());
    forge(&ring, group, 0, 8, &128u32.to_le_bytes());
    arm(&mut ring, 1, &rx, group);
    tx.write_all(&pattern(100)).unwrap();
    let c = next(&mut ring);
    let e = c.result.as_ref().unwrap_err();
    assert!(
        e.to_string()
            .contains("100 more bytes reported after 0 in a 64-byte buffer"),
        "{e}"
    );
    assert!(matches!(c.output, Output::None));
    assert_eq!(ring.buf_ring_stats(group).unwrap().refused, 1);
}

/// Dropping the ring while buffers are partly filled returns them all once their chunks go.
#[test]
fn dropping_the_ring_with_partly_filled_buffers_returns_every_buffer() {
    if !kernel_at_least(6, 12) {
        return;
    }
    let (mut tx, rx) = tcp_pair();
    let region = Arc::new(Region::memfd("incremental", 1 << 16, RegionOptions::new()).unwrap());
    let (mut ring, group) = ring_with(
        BufRingOptions::new(6, 1024, 8)
            .region(region.clone(), 0)
            .incremental(),
    );
    arm(&mut ring, 1, &rx, group);
    tx.write_all(b"partly").unwrap();
    let held = chunk(next(&mut ring));
    assert!(!held.is_last());
    drop(ring);
    assert_eq!(held.to_vec(), b"partly");
    assert!(BufferPool::new(region.clone(), 0, 1024, 8).is_err());
    drop(held);
    BufferPool::new(region, 0, 1024, 8).expect("every buffer is back, the range free");
}
