//! A virtio split virtqueue with `VIRTIO_F_EVENT_IDX`, the driver→device half: the driver
//! publishes buffers in the available ring and kicks the device only when `vring_need_event`
//! says the device asked for one of them; the device, finding the ring empty, writes the index
//! it waits for into `avail_event` and re-checks before it sleeps on its kick. Like the io_uring
//! models, a rewrite of the two sides operation for operation (the orderings of Linux's
//! `virtio_ring.c` and `vhost.c`), with subring's `need_event`. A lost kick leaves the device
//! blocked in the modelled eventfd: a deadlock.

use super::kernel::WaitQueue;
use super::*;
use loom::sync::atomic::{fence, AtomicU32};
use subring_planes::interrupt::need_event;

/// The shared rings: the available ring's index and two of its entries (written by the
/// driver), and `avail_event` (at the end of the used ring, written by the device).
struct Vring {
    avail_idx: AtomicU32,
    avail: [UnsafeCell<u32>; 2],
    avail_event: AtomicU32,
}

/// What a negative control removes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum VirtioBreakage {
    /// The driver's `virtio_mb()` in `virtqueue_kick_prepare`, between publishing the
    /// available index and reading `avail_event`.
    DriverBarrier,
    /// The device's `smp_mb()` in `vhost_enable_notify`, between writing `avail_event` and
    /// re-reading the available index ("They could have slipped one in as we were doing
    /// that: make sure it's written, then check again").
    DeviceBarrier,
}

/// Two buffers, each published and then kicked-if-needed by the driver; the device takes them
/// and sleeps on its kick (an ioeventfd) whenever the ring is empty.
///
/// Driver (Linux `virtqueue_add_split` + `virtqueue_kick_prepare_split`): write the entry,
/// `virtio_wmb()` and store the available index (a release store), `virtio_mb()`, then
/// `vring_need_event(avail_event, new, old)` decides the kick.
/// Device (`vhost_get_vq_desc` + `vhost_enable_notify`): acquire-load the available index and
/// take what is new; when nothing is, `vhost_update_avail_event(last_avail_idx)`, `smp_mb()`,
/// and re-read the index: sleep only if it still says nothing is new.
fn split_ring(broken: Option<VirtioBreakage>) {
    model(move || {
        let ring = Arc::new(Vring {
            avail_idx: AtomicU32::new(0),
            avail: [UnsafeCell::new(0), UnsafeCell::new(0)],
            avail_event: AtomicU32::new(0),
        });
        let kick = Arc::new(WaitQueue::new());
        let device = {
            let (ring, kick) = (ring.clone(), kick.clone());
            thread::spawn(move || {
                let mut last_avail = 0u32;
                let mut taken = Vec::new();
                // A fresh virtqueue's `avail_event` is 0: it already asks for a kick at entry 0.
                let mut armed = 1u32;
                let mut prepared = kick.prepare();
                while taken.len() < 2 {
                    let idx = ring.avail_idx.load(Ordering::Acquire);
                    if idx != last_avail {
                        while last_avail != idx {
                            // SAFETY: loom checks that this read is ordered after the
                            // driver's write of the entry.
                            let v = ring.avail[(last_avail & 1) as usize].with(|p| unsafe { *p });
                            taken.push(v);
                            last_avail = last_avail.wrapping_add(1);
                        }
                        continue;
                    }
                    ring.avail_event.store(last_avail, Ordering::Relaxed);
                    armed += 1;
                    if broken != Some(VirtioBreakage::DeviceBarrier) {
                        fence(Ordering::SeqCst);
                    }
                    if ring.avail_idx.load(Ordering::Acquire) != last_avail {
                        continue;
                    }
                    kick.schedule(prepared);
                    prepared = kick.prepare();
                }
                (taken, armed)
            })
        };
        let mut kicks = 0;
        for (old, value) in [(0u32, 5u32), (1, 6)] {
            // SAFETY: the slot is the driver's until it publishes the index below (the ring
            // has two slots and the driver publishes two buffers).
            ring.avail[(old & 1) as usize].with_mut(|p| unsafe { *p = value });
            let new = old.wrapping_add(1);
            ring.avail_idx.store(new, Ordering::Release);
            if broken != Some(VirtioBreakage::DriverBarrier) {
                fence(Ordering::SeqCst);
            }
            if need_event(ring.avail_event.load(Ordering::Relaxed), new, old) {
                kick.wake_up();
                kicks += 1;
            }
        }
        let (taken, armed) = device.join().unwrap();
        assert_eq!(taken, [5, 6]);
        // Event-idx's saving: a kick only for an index the device asked for, so no more kicks
        // than the device's requests (the initial one and each write of `avail_event`; a flag
        // would kick at every publish while it is set).
        assert!(
            kicks <= armed,
            "kicked {kicks} times for {armed} requests of a kick"
        );
    });
}

#[test]
fn virtio_split_ring_with_event_idx_loses_no_kick() {
    split_ring(None);
}

/// Negative control: the driver reads `avail_event` without the barrier after publishing the
/// index; it can miss the device's request for a kick while the device misses the index.
#[test]
#[should_panic(expected = "deadlock")]
fn negative_control_virtio_driver_without_its_barrier_is_caught() {
    split_ring(Some(VirtioBreakage::DriverBarrier));
}

/// Negative control: the device re-reads the index without the barrier after writing
/// `avail_event` (the race `vhost_enable_notify`'s comment describes).
#[test]
#[should_panic(expected = "deadlock")]
fn negative_control_virtio_device_without_its_barrier_is_caught() {
    split_ring(Some(VirtioBreakage::DeviceBarrier));
}
