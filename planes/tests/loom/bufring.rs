//! io_uring's provided-buffer ring as subring-uring produces it: the producer is
//! `transports/uring/src/bufring/tail.rs` itself (compiled here over loom's memory); the
//! kernel's side follows `io_ring_buffer_select` (`io_uring/kbuf.c`: `smp_load_acquire` of the
//! tail, then the entry's fields), and a buffer comes back to the application through a
//! completion (the CQ tail's release and acquire) before the application posts it again into
//! the same entry.

use super::*;
use loom::sync::atomic::AtomicU32;
use pbuf_tail::{EntryMem, Producer};

/// A two-entry buffer ring in loom's memory: each entry a cell (a read not ordered after the
/// write it sees is reported), the tail an atomic.
struct LoomRing {
    entries: [UnsafeCell<(u64, u32, u16)>; 2],
    tail: AtomicU32,
    /// The completion queue's tail, as far as the returned buffer id goes (id + 1; 0: none).
    completed: AtomicU32,
}

impl EntryMem for LoomRing {
    fn write_entry(&self, index: u16, addr: u64, len: u32, bid: u16) {
        // SAFETY: loom checks the access; the value is plain data.
        self.entries[usize::from(index)].with_mut(|e| unsafe { *e = (addr, len, bid) });
    }

    fn store_tail(&self, tail: u16, order: Ordering) {
        self.tail.store(u32::from(tail), order);
    }
}

fn buffer(bid: u16) -> (u64, u32, u16) {
    (0x1000 * (u64::from(bid) + 1), 64, bid)
}

/// The producer posts buffers 0 and 1 (two tail stores), the kernel picks both, returns buffer
/// 0 through a completion, and the producer posts it again into entry 0, which the kernel then
/// picks as its third. Every entry the kernel reads is the one the producer published.
/// `RELAXED` (the negative control) stores the tail Relaxed.
fn pbuf_ring<const RELAXED: bool>() {
    model(|| {
        let ring = Arc::new(LoomRing {
            entries: [UnsafeCell::new((0, 0, 0)), UnsafeCell::new((0, 0, 0))],
            tail: AtomicU32::new(0),
            completed: AtomicU32::new(0),
        });
        let kernel = {
            let ring = ring.clone();
            thread::spawn(move || {
                let mut head = 0u32;
                let expected = [0u16, 1, 0];
                while head < 3 {
                    // `io_ring_buffer_select`: the tail with acquire, then the entry.
                    let tail = ring.tail.load(Ordering::Acquire) & 0xffff;
                    if tail == head {
                        thread::yield_now();
                        continue;
                    }
                    let entry = ring.entries[(head & 1) as usize].with(|e| {
                        // SAFETY: loom checks the access.
                        unsafe { *e }
                    });
                    assert_eq!(entry, buffer(expected[head as usize]), "entry {head}");
                    head += 1;
                    if head == 1 {
                        // Buffer 0 filled: its completion (the CQ tail's release).
                        ring.completed.store(1, Ordering::Release);
                    }
                }
            })
        };
        let mut producer = Producer::new(2);
        assert_eq!(
            producer.post::<_, RELAXED>(&*ring, [buffer(0)].into_iter()),
            1
        );
        assert_eq!(
            producer.post::<_, RELAXED>(&*ring, [buffer(1)].into_iter()),
            1
        );
        // Reaping the completion (the CQ tail's acquire) gives buffer 0 back; it is posted again,
        // into entry 0, which the kernel has read.
        while ring.completed.load(Ordering::Acquire) == 0 {
            thread::yield_now();
        }
        assert_eq!(
            producer.post::<_, RELAXED>(&*ring, [buffer(0)].into_iter()),
            1
        );
        kernel.join().unwrap();
    });
}

#[test]
fn pbuf_ring_entries_are_published_by_the_tail() {
    pbuf_ring::<false>();
}

/// Negative control: a Relaxed tail store lets the kernel read an entry before the producer's
/// write of it is visible.
#[test]
#[should_panic(expected = "Causality violation")]
fn negative_control_relaxed_pbuf_tail_is_caught() {
    pbuf_ring::<true>();
}
