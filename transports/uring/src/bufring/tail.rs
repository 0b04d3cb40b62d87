//! The producer's side of a provided-buffer ring: the one protocol the application runs on it.
//!
//! The ring is an array of `io_uring_buf { addr: u64, len: u32, bid: u16, resv: u16 }` entries
//! that the application produces and the kernel consumes. The kernel keeps its head to itself;
//! the application's tail is a `u16` that overlays the `resv` field of entry 0. So:
//! - an entry is written field by field, never as a whole 16-byte value: writing entry 0 whole
//!   would store a stale tail over the one the kernel reads;
//! - the tail is stored with Release after the entries it publishes, pairing with the kernel's
//!   `smp_load_acquire` of it in `io_ring_buffer_select`; a Relaxed store lets the kernel read
//!   an entry before its fields (the loom model in `planes/tests/loom/bufring.rs` shows it).
//!
//! This file uses nothing but `core`, so that the loom model compiles this very code over loom's
//! memory (`#[path]`); the real memory is behind [`EntryMem`].

use core::sync::atomic::Ordering;

/// The memory of a provided-buffer ring, as the producer needs it.
pub(crate) trait EntryMem {
    /// Writes the `addr`, `len` and `bid` fields of entry `index` (leaving `resv` alone).
    fn write_entry(&self, index: u16, addr: u64, len: u32, bid: u16);
    /// Stores the tail.
    fn store_tail(&self, tail: u16, order: Ordering);
}

/// The producer's state: the next tail, and the mask of the entry index.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Producer {
    pub(crate) tail: u16,
    pub(crate) mask: u16,
}

impl Producer {
    /// A producer of a ring of `entries` (a power of two, at most 32768) entries.
    pub(crate) fn new(entries: u16) -> Self {
        debug_assert!(entries.is_power_of_two());
        Producer {
            tail: 0,
            mask: entries - 1,
        }
    }

    /// Writes one entry per buffer from `bufs` (`(addr, len, bid)`) and publishes them all with
    /// one tail store; returns how many. The caller guarantees there is room: no more buffers
    /// posted and not yet picked than the ring has entries.
    /// `RELAXED` is a loom negative control's breakage: the tail stored Relaxed.
    #[inline]
    pub(crate) fn post<M: EntryMem, const RELAXED: bool>(
        &mut self,
        mem: &M,
        bufs: impl Iterator<Item = (u64, u32, u16)>,
    ) -> usize {
        let mut tail = self.tail;
        let mut n = 0;
        for (addr, len, bid) in bufs {
            mem.write_entry(tail & self.mask, addr, len, bid);
            tail = tail.wrapping_add(1);
            n += 1;
        }
        if n > 0 {
            // SYNC POINT (pbuf-tail): Release pairs with the kernel's acquire of the tail: the
            // entries above are written before it can see them.
            let order = if RELAXED {
                Ordering::Relaxed
            } else {
                Ordering::Release
            };
            mem.store_tail(tail, order);
            self.tail = tail;
        }
        n
    }
}
