//! Single-producer/single-consumer rings of plain-old-data entries, laid out inside a
//! [`Region`] so that the same ring works between threads and between processes.
//!
//! # Two ways to publish
//! A ring is created with one of two [`Publication`]s, a type parameter of [`Ring`],
//! [`Producer`] and [`Consumer`] that the ring's header also records:
//! - [`Indexed`] (the default): the slots hold the entries and nothing else, and the consumer
//!   learns what is published from the producer's `tail`, as io_uring's and rtrb's consumers do.
//!   Entries are packed, so a stream moves the fewest cache lines, and a batch is copied in
//!   and out with wide copies. The ring for queues and streams.
//! - [`Stamped`]: each slot carries a **stamp** next to its entry, and the consumer learns what
//!   is published from the stamps, not from `tail`: the line it polls is the line it then reads,
//!   so an entry crosses from one core to the other in one cache-line transfer instead of two
//!   (the tail's line, then the slot's). The ring for round trips, where that transfer is the
//!   latency: [`crate::pair`]'s submission and completion rings are stamped. A stamp costs
//!   four bytes per slot and rounds small slots up to a power of two (8-byte entries take
//!   16-byte slots, which halves a batched stream's throughput against an indexed ring). One
//!   entry at a time, with a consumer that keeps up, the one transfer per entry wins instead:
//!   8-byte entries streamed one at a time have run faster stamped than indexed in every full
//!   run of `subring bench` (docs/architecture.md, "Rings").
//!
//! # Layout
//! ```text
//! offset 0    config line   magic, layout version, capacity, entry size and alignment, slot
//!                           stride, publication (written once)
//! +128        tail line     free-running index of the next entry the producer publishes
//! +256        head line     free-running index of the next entry the consumer releases
//! +384        consumer wake word (the consumer announces here that it is about to sleep)
//! +512        producer wake word (the producer announces here that it sleeps on a full ring)
//! +640        capacity x stride   slots (index & (capacity - 1)): the entry alone (indexed),
//!                                 or a 4-byte stamp, then the entry (stamped)
//! ```
//! A stamped slot's stamp is `capacity * (lap + 1)` (wrapping) once the producer has published
//! the entry at `index` (in lap `index / capacity`), and the slot's next use (`index +
//! capacity`) has not been published while it still reads so. Before its first use a slot
//! reads 0: a ring created in fresh zeroed memory (a memfd's holes) has no stamps to write, and
//! costs no page of its slots until an entry is written there. The slot stride keeps the stamp
//! and the entry on one line: stamped slots of up to 64 bytes take the next power of two,
//! larger ones whole lines. A stamped ring still
//! publishes `tail` (after the stamps, so it may lag behind them) for a producer that attaches
//! later and for observers; its consumer reads it only when it attaches.
//!
//! Each side owns one index and keeps its authoritative copy in private memory: it only
//! *publishes* it to the shared header and never reads it back. What the other side wrote is
//! validated before use: `tail` may never move backwards nor more than a ring ahead of `head`;
//! a stamp must be either the one a correct producer writes or the one it left a lap earlier;
//! and the consumer's `head` may never move backwards nor past what was published. A corrupt or
//! hostile value is a [`CorruptIndex`] error, never an out-of-bounds access.
//!
//! Each side also caches what it learnt about the other: the producer re-reads `head` only when
//! its cached copy says the ring is full, and the consumer reads `tail` (or the next stamp) only
//! when it has consumed everything it already saw.
//!
//! # Memory ordering
//! Two Release/Acquire pairs, labelled `SYNC POINT` where they occur:
//! - **ring-publish**: the producer's Release store of `tail` (indexed) or of a slot's stamp
//!   (stamped) pairs with the consumer's Acquire load of it, so the entry write happens-before
//!   the consumer reads it.
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
pub use layout::{Halves, Ring, RingLayout};
pub use producer::{Producer, WriteChunk};

/// Identifies a ring header ("sbrg", little-endian).
pub const RING_MAGIC: u32 = u32::from_le_bytes(*b"sbrg");
/// Version of the ring's shared-memory layout; bumped on any change to it. (Version 5: a stamp
/// names its entry's lap, not its index, so that zeroed memory is a fresh stamped ring.
/// Version 4: the header records the ring's [`Publication`], and a ring may be indexed,
/// without stamps.
/// Version 3: a wake word may say "sleeping until entry N", which a notifier of version 2
/// would not wake.)
pub const RING_LAYOUT_VERSION: u32 = 5;
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
    publication: AtomicU32,
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Indexed {}
    impl Sealed for super::Stamped {}
}

/// How a ring's consumer learns that an entry is published: [`Indexed`] or [`Stamped`], a type
/// parameter of [`Ring`], [`Producer`] and [`Consumer`] that the ring's header also records (an
/// attach with the other one fails). Sealed: the two are the only ones.
///
/// - [`Indexed`] (the default): the slots hold the entries and nothing else, and the consumer
///   learns what is published from the producer's `tail`, as io_uring's and rtrb's consumers
///   do. Entries are packed, so a stream moves the fewest cache lines, and a batch is copied in
///   and out with wide copies. The ring for queues and streams.
/// - [`Stamped`]: each slot carries a stamp next to its entry, and the consumer learns what is
///   published from the stamps: the line it polls is the line it then reads, so an entry
///   crosses from one core to the other in one cache-line transfer instead of two (the tail's
///   line, then the slot's). The ring for round trips, where that transfer is the latency: the
///   [queue pair](crate::pair)'s rings are stamped, and small entries streamed one at a time
///   run faster stamped (docs/architecture.md, "Rings"). A stamp costs four bytes per slot and
///   rounds small slots up to a power of two (8-byte entries take 16-byte slots, twice the
///   lines to stream in batches).
pub trait Publication: sealed::Sealed + fmt::Debug + Send + Sync + 'static {
    /// True if each slot carries a stamp.
    const STAMPED: bool;
    /// The code the ring header records.
    const CODE: u32;
    /// What a slot holds: the entry alone, or a stamp and the entry.
    #[doc(hidden)]
    type SlotOf<T>;
}

/// Slots hold entries alone; the consumer goes by the producer's `tail`. Packed entries and
/// wide batch copies: the ring for queues and streams, and the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Indexed;

/// Each slot carries a stamp next to its entry; the consumer goes by the stamps, so an entry
/// crosses between cores in one cache-line transfer: the ring for round trips.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamped;

impl Publication for Indexed {
    const STAMPED: bool = false;
    const CODE: u32 = 1;
    type SlotOf<T> = Slot<T>;
}

impl Publication for Stamped {
    const STAMPED: bool = true;
    const CODE: u32 = 2;
    type SlotOf<T> = StampedSlot<T>;
}

/// One stamped slot: the stamp that says which index it holds, then the entry.
#[doc(hidden)]
#[repr(C)]
pub struct StampedSlot<T> {
    stamp: AtomicU32,
    value: Slot<T>,
}

impl<T> fmt::Debug for StampedSlot<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StampedSlot")
    }
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
/// The stamp a correct producer leaves in the slot of `index` once it has published it, in a
/// ring whose index mask is `mask` (capacity - 1): the first index of the next lap,
/// `capacity * (lap + 1)`, wrapping. One lap earlier it was `capacity` less, and before the
/// first lap (index `k - capacity` for slot `k`) 0, so fresh zeroed memory needs no stamps
/// written ([`Ring::create`] writes none over a memfd's holes).
#[inline(always)]
fn stamp_of(index: u32, mask: u32) -> u32 {
    (index | mask).wrapping_add(1)
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
struct RingPtrs<T, P: Publication> {
    region: Arc<Region>,
    header: NonNull<RingHeader>,
    /// The first slot; slot `i` is `STRIDE * i` bytes further.
    slots: NonNull<u8>,
    _slots: PhantomData<(NonNull<P::SlotOf<T>>, P)>,
    mask: u32,
    /// The ring's extent in its region (header and slots), which its two sides claim.
    slot_range: std::ops::Range<usize>,
}

// SAFETY: the pointers target the region, which the `Arc` keeps mapped; the memory is only reached
// through atomics (header, stamps) and whole-value copies of `Pod` slots, so moving a half to
// another thread is sound.
unsafe impl<T: Send, P: Publication> Send for RingPtrs<T, P> {}

/// A slot's address (`walk` and `slot` hand them out): a stamped slot's stamp sits at its
/// start, its entry after; an indexed slot is its entry.
type SlotPtr = *const u8;

impl<T, P: Publication> RingPtrs<T, P> {
    /// Bytes from one slot to the next.
    const STRIDE: usize = if P::STAMPED {
        slot_stride(size_of::<StampedSlot<T>>())
    } else {
        size_of::<Slot<T>>()
    };

    /// The alignment a slot needs.
    const SLOT_ALIGN: usize = align_of::<P::SlotOf<T>>();

    /// Evaluated (at compile time) where a run of an indexed ring's slots is copied as one run
    /// of entries: each slot must be exactly its entry (`Slot<T>` is `repr(transparent)`).
    #[cfg(not(loom))]
    const PACKED: () = assert!(
        P::STAMPED || Self::STRIDE == size_of::<T>(),
        "an indexed slot is its entry"
    );

    fn header(&self) -> &RingHeader {
        // SAFETY: the header was bounds- and alignment-checked at construction and consists only
        // of atomics, which tolerate concurrent access from the peer; the region outlives `self`.
        unsafe { self.header.as_ref() }
    }

    fn capacity(&self) -> u32 {
        self.mask.wrapping_add(1)
    }

    /// The slot an index maps to.
    #[inline(always)]
    fn slot(&self, index: u32) -> SlotPtr {
        let offset = (index & self.mask) as usize * Self::STRIDE;
        // SAFETY: `index & mask < capacity`, and `capacity * STRIDE` bytes of slots were bounds-
        // and alignment-checked at construction (`STRIDE` is a multiple of the slot alignment).
        unsafe { self.slots.as_ptr().add(offset) }
    }

    /// The stamp of the slot an index maps to (stamped rings only).
    fn stamp(&self, index: u32) -> &AtomicU32 {
        // SAFETY: `slot` returns an in-bounds slot.
        unsafe { self.stamp_at(self.slot(index)) }
    }

    /// The entry of the slot an index maps to.
    fn value(&self, index: u32) -> *const Slot<T> {
        // SAFETY: `slot` returns an in-bounds slot.
        unsafe { Self::value_at(self.slot(index)) }
    }

    /// The stamp of a slot of a stamped ring.
    ///
    /// # Safety
    /// `slot` must be one of this ring's slots (from [`slot`](Self::slot) or
    /// [`walk`](Self::walk)), and the ring stamped.
    #[inline(always)]
    unsafe fn stamp_at(&self, slot: SlotPtr) -> &AtomicU32 {
        debug_assert!(P::STAMPED);
        // SAFETY: the slot is a stamped one in bounds (caller) and stays mapped while `self`
        // lives; a stamp is an atomic, which tolerates concurrent access by the peer.
        unsafe { &(*slot.cast::<StampedSlot<T>>()).stamp }
    }

    /// The entry of a slot.
    ///
    /// # Safety
    /// `slot` must be one of this ring's slots.
    #[inline(always)]
    unsafe fn value_at(slot: SlotPtr) -> *const Slot<T> {
        if P::STAMPED {
            // SAFETY: in bounds (caller); no reference is made, only a field address.
            unsafe { &raw const (*slot.cast::<StampedSlot<T>>()).value }
        } else {
            slot.cast()
        }
    }

    /// Calls `f` with each index of `start..start + n` (wrapping) and its slot, in order, until
    /// it returns false; returns how many calls returned true. A batch walks a pointer through
    /// each contiguous run of slots (two at most: before and after the end of the ring) instead
    /// of computing every slot's address from its index.
    #[inline(always)]
    fn walk(&self, start: u32, n: u32, mut f: impl FnMut(u32, SlotPtr) -> bool) -> u32 {
        let mut done = 0;
        while done < n {
            let index = start.wrapping_add(done);
            let run = (self.capacity() - (index & self.mask)).min(n - done);
            let mut slot = self.slot(index);
            for k in 0..run {
                if !f(index.wrapping_add(k), slot) {
                    return done + k;
                }
                // After the run's last slot this points one stride past it and is not used.
                slot = slot.wrapping_add(Self::STRIDE);
            }
            done += run;
        }
        done
    }

    #[cfg(not(loom))]
    /// Calls `f` with each contiguous run of the slots of `start..start + n` (wrapping): its
    /// first slot and its length (two runs at most: before and after the end of the ring).
    #[inline(always)]
    fn runs(&self, start: u32, n: u32, mut f: impl FnMut(SlotPtr, u32)) {
        let mut done = 0;
        while done < n {
            let index = start.wrapping_add(done);
            let run = (self.capacity() - (index & self.mask)).min(n - done);
            f(self.slot(index), run);
            done += run;
        }
    }

    /// Calls `f` with each index of `start..start + n` (wrapping) and its slot, last first.
    #[inline(always)]
    fn walk_back(&self, start: u32, n: u32, mut f: impl FnMut(u32, SlotPtr)) {
        let mut left = n;
        while left > 0 {
            let last = start.wrapping_add(left - 1);
            let run = ((last & self.mask) + 1).min(left);
            let mut slot = self.slot(last);
            for k in 0..run {
                f(last.wrapping_sub(k), slot);
                // After the run's first slot this points one stride before it and is not used.
                slot = slot.wrapping_sub(Self::STRIDE);
            }
            left -= run;
        }
    }
}

impl<T: Pod, P: Publication> RingPtrs<T, P> {
    fn claim(&self, kind: ClaimKind) -> Result<Claim, RingError> {
        Ok(self.region.claim(self.slot_range.clone(), kind)?)
    }

    fn wake(&self, word: fn(&RingHeader) -> &WakeWord) -> WakeRef {
        let ptr = NonNull::from(word(self.header()));
        // SAFETY: the word lives in the region, which the cloned `Arc` keeps mapped.
        unsafe { WakeRef::from_raw(self.region.clone(), ptr) }
    }
}
