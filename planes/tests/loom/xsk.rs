//! AF_XDP's fill ring with `XDP_RING_NEED_WAKEUP`, as subring-xdp produces it: the application
//! side is `transports/xdp/src/ring/protocol.rs` itself (compiled here over loom's atomics
//! through the planes' sync shim); the kernel side follows a driver's fill-ring refill with
//! need-wakeup (`xsk_set_rx_need_wakeup` when the ring is empty, a barrier, a second look at
//! the ring, then sleeping until the application's `recvfrom`/`poll` wakes it). A lost wake-up
//! leaves the kernel asleep with a frame in the ring, which loom reports as a deadlock.

use super::*;
use crate::kernel::WaitQueue;
use loom::sync::atomic::{fence, AtomicU32};
use xsk_protocol as proto;

/// The fill ring's words and one entry.
struct Fill {
    producer: subring_planes::sync::AtomicU32,
    consumer: subring_planes::sync::AtomicU32,
    flags: AtomicU32,
    entry: UnsafeCell<u64>,
    /// The socket's wait queue (what `recvfrom`/`poll` on the socket wakes).
    wake: WaitQueue,
}

/// The application posts one frame to an empty fill ring and rings the doorbell only if the
/// kernel asks; the kernel, finding the ring empty, asks and sleeps. The frame must be picked
/// up. `NO_FENCE` (the negative control) drops the fence between publishing and reading the flag.
fn xsk_fill_need_wakeup<const NO_FENCE: bool>() {
    model(|| {
        let ring = Arc::new(Fill {
            producer: subring_planes::sync::AtomicU32::new(0),
            consumer: subring_planes::sync::AtomicU32::new(0),
            flags: AtomicU32::new(0),
            entry: UnsafeCell::new(0),
            wake: WaitQueue::new(),
        });
        let kernel = {
            let ring = ring.clone();
            thread::spawn(move || {
                let mut cons = 0u32;
                loop {
                    let prepared = ring.wake.prepare();
                    if proto::ready(&ring.producer, cons, 1).unwrap() > 0 {
                        break;
                    }
                    // Empty: ask to be woken, then look again behind a full barrier
                    // (`xsk_set_rx_need_wakeup`, then `smp_mb()` before the refill retries).
                    ring.flags.fetch_or(proto::NEED_WAKEUP, Ordering::Relaxed);
                    fence(Ordering::SeqCst);
                    if proto::ready(&ring.producer, cons, 1).unwrap() > 0 {
                        break;
                    }
                    ring.wake.schedule(prepared);
                }
                // SAFETY: loom checks that this read is ordered after the entry's write.
                let frame = ring.entry.with(|e| unsafe { *e });
                assert_eq!(frame, 0x1000, "the frame the application posted");
                ring.flags.fetch_and(!proto::NEED_WAKEUP, Ordering::Relaxed);
                cons += 1;
                proto::release(&ring.consumer, cons);
            })
        };
        // The application: write the entry, publish, and ring only if asked.
        // SAFETY: loom checks the access; the kernel reads it only after the publish.
        ring.entry.with_mut(|e| unsafe { *e = 0x1000 });
        proto::publish(&ring.producer, 1);
        if proto::needs_wakeup::<NO_FENCE>(&ring.flags) {
            ring.wake.wake_up();
        }
        kernel.join().unwrap();
        assert_eq!(
            proto::free(&ring.consumer, 1, 1),
            Ok(1),
            "the entry came back"
        );
    });
}

#[test]
fn xsk_fill_ring_with_need_wakeup_loses_no_frame() {
    xsk_fill_need_wakeup::<false>();
}

/// Negative control: without the fence, the application can read the flag before its publish
/// is visible while the kernel reads the ring before the flag is: both miss, the kernel sleeps.
#[test]
#[should_panic(expected = "deadlock")]
fn negative_control_xsk_without_the_fence_is_caught() {
    xsk_fill_need_wakeup::<true>();
}
