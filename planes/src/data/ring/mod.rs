//! Single-producer/single-consumer rings of plain-old-data entries, laid out inside a
//! [`Region`] so that the same ring works between threads and between processes.
//!
//! # Layout
//! ```text
//! offset 0    config line   magic, layout version, capacity, entry size and alignment, slot
//!                           stride (written once)
//! +128        tail line     free-running index of the next entry the producer publishes
//! +256        head line     free-running index of the next entry the consumer releases
//! +384        consumer wake word (the consumer announces here that it is about to sleep)
//! +512        producer wake word (the producer announces here that it sleeps on a full ring)
//! +640        capacity x stride   slots: a 4-byte stamp, then the entry (index & (capacity - 1))
//! ```
//! Each slot carries a **stamp**: the producer writes `index + 1` into it when it publishes the
//! entry at `index`, and the slot's next use (`index + capacity`) has not been published while
//! it still reads `index + 1`. The consumer learns what is published from the stamps, not from
//! `tail`: the line it polls is the line it then reads, so an entry crosses from one core to the
//! other in one cache-line transfer instead of two (the tail's line, then the slot's). The slot
//! stride keeps the stamp and the entry on one line: slots of up to 64 bytes take the next power
//! of two, larger ones whole lines. `tail` is still published (after the stamps, so it may lag
//! behind them) for a producer that attaches later and for observers; the consumer reads it only
//! when it attaches.
//!
//! Each side owns one index and keeps its authoritative copy in private memory: it only
//! *publishes* it to the shared header and never reads it back. What the other side wrote is
//! validated before use: a stamp must be either the one a correct producer writes or the one it
//! left a lap earlier, and the consumer's `head` may never move backwards nor past what was
//! published. A corrupt or hostile value is a [`CorruptIndex`] error, never an out-of-bounds
//! access.
//!
//! Each side also caches what it learnt about the other: the producer re-reads `head` only when
//! its cached copy says the ring is full, and the consumer reads the next stamp only when it has
//! consumed everything it already saw.
//!
//! # Memory ordering
//! Two Release/Acquire pairs, labelled `SYNC POINT` where they occur:
//! - **ring-publish**: the producer's Release store of a slot's stamp pairs with the consumer's
//!   Acquire load of it, so the entry write happens-before the consumer reads it.
//! - **ring-release**: the consumer's Release store of `head` pairs with the producer's Acquire
//!   load of `head`, so the consumer's reads of released slots happen-before the producer
//!   overwrites them.

use std::fmt;
use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::ptr::NonNull;
use std::sync::Arc;

use bytemuck::Pod;

use super::region::{Claim, ClaimKind, Region, RegionError, RegionOptions};
use crate::interrupt::{WakeRef, WakeWord};
use crate::sync::{AtomicU32, CacheLine, Ordering::*, Slot};

mod consumer;
mod error;
mod layout;
mod producer;

pub use consumer::{Consumer, ReadChunk};
pub use error::{CorruptIndex, IndexField, PushError, RingError};
pub use layout::{Ring, RingLayout};
pub use producer::{Producer, WriteChunk};

/// Identifies a ring header ("sbrg", little-endian).
pub const RING_MAGIC: u32 = u32::from_le_bytes(*b"sbrg");
/// Version of the ring's shared-memory layout; bumped on any change to it. (Version 3: a wake
/// word may say "sleeping until entry N", which a notifier of version 2 would not wake.)
pub const RING_LAYOUT_VERSION: u32 = 3;
/// The largest capacity a ring may have.
pub const MAX_CAPACITY: u32 = 1 << 31;

#[repr(C)]
#[derive(Debug)]
struct RingConfig {
    magic: AtomicU32,
    version: AtomicU32,
    capacity: AtomicU32,
    entry_size: AtomicU32,
    entry_align: AtomicU32,
    slot_stride: AtomicU32,
}

/// One slot: the stamp that says which index it holds, then the entry.
#[repr(C)]
struct Stamped<T> {
    stamp: AtomicU32,
    value: Slot<T>,
}

/// Bytes from one slot to the next for a slot type of `size` bytes (a multiple of its
/// alignment): a power of two up to a cache line, so that a slot never straddles two lines and
/// the stamp travels with its entry. A larger slot spans two lines or more wherever it starts,
/// so it is packed: padding it to whole lines would not save a transfer, and would cost
/// streaming throughput (measured: 64-byte entries in 128-byte slots streamed about 20% slower
/// than in 72-byte ones).
const fn slot_stride(size: usize) -> usize {
    if size <= 64 {
        size.next_power_of_two()
    } else {
        size
    }
}

/// The stamp a correct producer leaves in the slot of `index` once it has published it.
fn stamp_of(index: u32) -> u32 {
    index.wrapping_add(1)
}

#[repr(C)]
#[derive(Debug)]
struct RingHeader {
    config: CacheLine<RingConfig>,
    tail: CacheLine<AtomicU32>,
    head: CacheLine<AtomicU32>,
    consumer_wake: CacheLine<WakeWord>,
    producer_wake: CacheLine<WakeWord>,
}

/// Pointers into the region that both halves of a ring share.
struct RingPtrs<T> {
    region: Arc<Region>,
    header: NonNull<RingHeader>,
    /// The first slot; slot `i` is `STRIDE * i` bytes further.
    slots: NonNull<u8>,
    _slots: PhantomData<NonNull<Stamped<T>>>,
    mask: u32,
    /// The ring's extent in its region (header and slots), which its two sides claim.
    slot_range: std::ops::Range<usize>,
}

// SAFETY: the pointers target the region, which the `Arc` keeps mapped; the memory is only reached
// through atomics (header) and whole-value copies of `Pod` slots, so moving a half to another
// thread is sound.
unsafe impl<T: Send> Send for RingPtrs<T> {}

impl<T> RingPtrs<T> {
    /// Bytes from one slot to the next.
    const STRIDE: usize = slot_stride(size_of::<Stamped<T>>());

    fn header(&self) -> &RingHeader {
        // SAFETY: the header was bounds- and alignment-checked at construction and consists only
        // of atomics, which tolerate concurrent access from the peer; the region outlives `self`.
        unsafe { self.header.as_ref() }
    }

    fn capacity(&self) -> u32 {
        self.mask.wrapping_add(1)
    }

    /// The slot an index maps to.
    fn slot(&self, index: u32) -> *const Stamped<T> {
        let offset = (index & self.mask) as usize * Self::STRIDE;
        // SAFETY: `index & mask < capacity`, and `capacity * STRIDE` bytes of slots were bounds-
        // and alignment-checked at construction (`STRIDE` is a multiple of the slot alignment).
        unsafe { self.slots.as_ptr().add(offset).cast() }
    }

    /// The stamp of the slot an index maps to.
    fn stamp(&self, index: u32) -> &AtomicU32 {
        // SAFETY: the slot is in bounds (see `slot`) and stays mapped while `self` lives; a stamp
        // is an atomic, which tolerates concurrent access by the peer.
        unsafe { &(*self.slot(index)).stamp }
    }

    /// The entry of the slot an index maps to.
    fn value(&self, index: u32) -> *const Slot<T> {
        // SAFETY: in bounds (see `slot`); no reference is made, only a field address.
        unsafe { &raw const (*self.slot(index)).value }
    }
}

impl<T: Pod> RingPtrs<T> {
    fn claim(&self, kind: ClaimKind) -> Result<Claim, RingError> {
        Ok(self.region.claim(self.slot_range.clone(), kind)?)
    }

    fn wake(&self, word: fn(&RingHeader) -> &WakeWord) -> WakeRef {
        let ptr = NonNull::from(word(self.header()));
        // SAFETY: the word lives in the region, which the cloned `Arc` keeps mapped.
        unsafe { WakeRef::from_raw(self.region.clone(), ptr) }
    }
}
