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
//! +512        producer wake word (reserved for a producer waiting for space; unused so far)
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
#[cfg(loom)]
use crate::sync::Ordering;
use crate::sync::{AtomicU32, CacheLine, Ordering::*, Slot};

/// Identifies a ring header ("sbrg", little-endian).
pub const RING_MAGIC: u32 = u32::from_le_bytes(*b"sbrg");
/// Version of the ring's shared-memory layout; bumped on any change to it.
pub const RING_LAYOUT_VERSION: u32 = 2;
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

/// Which shared index a [`CorruptIndex`] refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexField {
    /// The producer's published tail, as read by the consumer.
    Tail,
    /// The consumer's released head, as read by the producer.
    Head,
    /// A slot's stamp, as read by the consumer.
    Stamp,
}

impl fmt::Display for IndexField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IndexField::Tail => "tail",
            IndexField::Head => "head",
            IndexField::Stamp => "stamp",
        })
    }
}

/// A peer-written ring index or stamp that no correct peer could have written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorruptIndex {
    /// What was read.
    pub field: IndexField,
    /// The value found in shared memory.
    pub found: u32,
    /// For `head` and `tail`, the lowest value a correct peer could have written (wrapping).
    /// For a stamp, the value a correct producer leaves until it publishes the slot's entry
    /// (the stamp of the slot's previous lap).
    pub low: u32,
    /// For `head` and `tail`, the highest value a correct peer could have written (wrapping).
    /// For a stamp, the value a correct producer writes when it publishes the entry (the
    /// entry's index plus one).
    pub high: u32,
    /// The ring's capacity.
    pub capacity: u32,
}

impl fmt::Display for CorruptIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let CorruptIndex {
            field,
            found,
            low,
            high,
            capacity,
        } = *self;
        match field {
            IndexField::Stamp => write!(
                f,
                "corrupt ring: peer-written stamp of entry {} is {found}, but a correct producer \
                 leaves {low} there until it publishes the entry, then writes {high} \
                 (capacity {capacity})",
                high.wrapping_sub(1)
            ),
            _ => write!(
                f,
                "corrupt ring: peer-written {field} is {found}, which is not within \
                 [{low}, {high}] (capacity {capacity})"
            ),
        }
    }
}

impl std::error::Error for CorruptIndex {}

/// Why a ring could not be created or attached, or an operation on it failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// The capacity is zero, not a power of two, or larger than [`MAX_CAPACITY`].
    #[error("ring capacity {0} is invalid: it must be a power of two between 1 and 2^31")]
    InvalidCapacity(u64),
    /// The entry type is zero-sized or larger than 4 GiB.
    #[error("ring entry type of {size} bytes is not supported")]
    InvalidEntry {
        /// `size_of::<T>()`.
        size: usize,
    },
    /// The ring does not fit in the region, or is misplaced.
    #[error("ring does not fit the region: {0}")]
    Region(#[from] RegionError),
    /// An existing ring header does not describe the ring the caller expects.
    #[error("ring header at offset {offset}: {field} is {found}, expected {expected}")]
    HeaderMismatch {
        /// Offset of the ring in its region.
        offset: usize,
        /// Name of the header field.
        field: &'static str,
        /// Value found.
        found: u64,
        /// Value expected.
        expected: u64,
    },
    /// A peer-written index is out of range.
    #[error(transparent)]
    Corrupt(#[from] CorruptIndex),
}

/// A rejected push: the entry comes back to the caller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PushError<T> {
    /// The ring is full: back-pressure. Retry after the consumer has released entries.
    #[error("ring is full")]
    Full(T),
    /// The consumer's head index in shared memory is corrupt.
    #[error("{0}")]
    Corrupt(CorruptIndex, T),
}

impl<T> PushError<T> {
    /// The entry that was not pushed.
    pub fn into_inner(self) -> T {
        match self {
            PushError::Full(t) | PushError::Corrupt(_, t) => t,
        }
    }
}

/// Where a ring sits and how big it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    /// Bytes from the ring's start to its first slot.
    pub slots_offset: usize,
    /// Total bytes the ring occupies.
    pub size: usize,
    /// Alignment the ring's start offset needs.
    pub align: usize,
    /// Number of entries.
    pub capacity: u32,
}

impl RingLayout {
    /// The layout of a ring of `capacity` entries of `T`.
    pub fn of<T: Pod>(capacity: u32) -> Result<Self, RingError> {
        if capacity == 0 || capacity > MAX_CAPACITY || !capacity.is_power_of_two() {
            return Err(RingError::InvalidCapacity(capacity.into()));
        }
        if size_of::<T>() == 0
            || u32::try_from(size_of::<T>()).is_err()
            || u32::try_from(RingPtrs::<T>::STRIDE).is_err()
        {
            return Err(RingError::InvalidEntry {
                size: size_of::<T>(),
            });
        }
        let align = align_of::<RingHeader>().max(align_of::<Stamped<T>>());
        let slots_offset = size_of::<RingHeader>().next_multiple_of(align_of::<Stamped<T>>());
        let size = RingPtrs::<T>::STRIDE
            .checked_mul(capacity as usize)
            .and_then(|s| s.checked_add(slots_offset))
            .ok_or(RingError::InvalidCapacity(capacity.into()))?;
        Ok(RingLayout {
            slots_offset,
            size,
            align,
            capacity,
        })
    }
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

/// A ring laid out in a region, before it is split into its [`Producer`] and [`Consumer`].
///
/// # Examples
/// Between two threads:
/// ```
/// use subring_planes::data::Ring;
/// let (mut tx, mut rx) = Ring::<u64>::with_capacity(8)?;
/// tx.push(7).unwrap();
/// assert_eq!(rx.pop()?, Some(7));
/// assert_eq!(rx.pop()?, None);
/// # Ok::<(), subring_planes::data::RingError>(())
/// ```
pub struct Ring<T> {
    ptrs: RingPtrs<T>,
    head: u32,
    tail: u32,
    _entry: PhantomData<T>,
}

impl<T> fmt::Debug for Ring<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.ptrs.mask.wrapping_add(1))
            .field("head", &self.head)
            .field("tail", &self.tail)
            .finish()
    }
}

impl<T: Pod> Ring<T> {
    /// A ring of `capacity` entries in a fresh anonymous region, split into its halves: the
    /// quick way to get a ring between two threads.
    pub fn with_capacity(capacity: u32) -> Result<(Producer<T>, Consumer<T>), RingError> {
        let layout = RingLayout::of::<T>(capacity)?;
        let region = Arc::new(Region::anonymous(layout.size, RegionOptions::new())?);
        Self::create(region, 0, capacity)?.split()
    }

    fn locate(
        region: &Arc<Region>,
        offset: usize,
        capacity: u32,
    ) -> Result<RingPtrs<T>, RingError> {
        let layout = RingLayout::of::<T>(capacity)?;
        if offset % layout.align != 0 {
            return Err(RegionError::Misaligned {
                offset,
                align: layout.align,
            }
            .into());
        }
        let header = region.ptr_at::<RingHeader>(offset, layout.size)?;
        let slots = region
            .ptr_at::<Stamped<T>>(
                offset + layout.slots_offset,
                layout.size - layout.slots_offset,
            )?
            .cast::<u8>();
        Ok(RingPtrs {
            region: region.clone(),
            header,
            slots,
            _slots: PhantomData,
            mask: capacity - 1,
            // The whole ring, header included: its producer and consumer claim it, so that no
            // other structure of this process (a buffer pool a peer placed there) can alias
            // the header's atomic words or the slots.
            slot_range: offset..offset + layout.size,
        })
    }

    /// Writes a fresh, empty ring of `capacity` entries at `offset` in `region`.
    ///
    /// The range must not overlap anything else live in the region (another ring, a buffer
    /// pool); [`RingLayout::of`] gives its size and alignment.
    pub fn create(region: Arc<Region>, offset: usize, capacity: u32) -> Result<Self, RingError> {
        Self::create_at_index(region, offset, capacity, 0)
    }

    /// [`create`](Self::create), with both indices starting at `start` instead of 0: for tests
    /// of index wrap-around.
    #[doc(hidden)]
    pub fn create_at_index(
        region: Arc<Region>,
        offset: usize,
        capacity: u32,
        start: u32,
    ) -> Result<Self, RingError> {
        let ptrs = Self::locate(&region, offset, capacity)?;
        // The stamp each slot holds before its first use: that of the lap before `start`.
        let first_stamps = (0..capacity).map(|k| {
            let index = start.wrapping_add(k);
            (index, stamp_of(index.wrapping_sub(capacity)))
        });
        #[cfg(loom)]
        // SAFETY: loom's atomics and cells must be constructed, not reinterpreted from zeroed
        // memory; the range was bounds-checked, and in a loom model nothing else uses it yet.
        unsafe {
            ptrs.header.as_ptr().write(RingHeader {
                config: CacheLine(RingConfig {
                    magic: AtomicU32::new(0),
                    version: AtomicU32::new(0),
                    capacity: AtomicU32::new(0),
                    entry_size: AtomicU32::new(0),
                    entry_align: AtomicU32::new(0),
                    slot_stride: AtomicU32::new(0),
                }),
                tail: CacheLine(AtomicU32::new(0)),
                head: CacheLine(AtomicU32::new(0)),
                consumer_wake: CacheLine(WakeWord::new()),
                producer_wake: CacheLine(WakeWord::new()),
            });
            for (index, stamp) in first_stamps.clone() {
                let slot = ptrs.slot(index).cast_mut();
                (&raw mut (*slot).stamp).write(AtomicU32::new(stamp));
                Slot::init(&raw mut (*slot).value, T::zeroed());
            }
        }
        // Under std the header is reached as atomics in mapped memory (any bit pattern is a valid
        // atomic integer), so creation is a sequence of atomic stores: even a buggy second
        // `create` over a live ring is a protocol error, not a data race.
        let h = ptrs.header();
        h.config.magic.store(0, Relaxed);
        h.tail.store(start, Relaxed);
        h.head.store(start, Relaxed);
        #[cfg(not(loom))]
        for (index, stamp) in first_stamps {
            ptrs.stamp(index).store(stamp, Relaxed);
        }
        h.consumer_wake.reset();
        h.producer_wake.reset();
        h.config.version.store(RING_LAYOUT_VERSION, Relaxed);
        h.config.capacity.store(capacity, Relaxed);
        h.config.entry_size.store(size_of::<T>() as u32, Relaxed);
        h.config.entry_align.store(align_of::<T>() as u32, Relaxed);
        h.config
            .slot_stride
            .store(RingPtrs::<T>::STRIDE as u32, Relaxed);
        // SYNC POINT (ring-init): Release pairs with the Acquire load of `magic` in `attach`, so a
        // thread that attaches sees the whole header initialised.
        h.config.magic.store(RING_MAGIC, Release);
        Ok(Ring {
            ptrs,
            head: start,
            tail: start,
            _entry: PhantomData,
        })
    }

    /// Attaches to a ring that another thread or process created at `offset` in `region`,
    /// checking that its header describes a ring of `capacity` entries of `T` in this layout
    /// version, and that its indices are consistent.
    ///
    /// The producer half continues from the published `tail`, the consumer half from `head`
    /// (it finds what is published by the stamps). Attach a new producer only to a ring whose
    /// previous producer finished its last publish: one that died between stamping slots and
    /// storing `tail` leaves stamps past `tail`, and then either the attach fails (the consumer
    /// released entries past `tail`) or the new producer overwrites entries the consumer has
    /// already seen as published.
    pub fn attach(region: Arc<Region>, offset: usize, capacity: u32) -> Result<Self, RingError> {
        let ptrs = Self::locate(&region, offset, capacity)?;
        let h = ptrs.header();
        let mismatch = |field, found: u32, expected: u32| RingError::HeaderMismatch {
            offset,
            field,
            found: found.into(),
            expected: expected.into(),
        };
        // SYNC POINT (ring-init): Acquire pairs with the Release store of `magic` in `create`.
        let magic = h.config.magic.load(Acquire);
        if magic != RING_MAGIC {
            return Err(mismatch("magic", magic, RING_MAGIC));
        }
        let checks = [
            ("layout version", &h.config.version, RING_LAYOUT_VERSION),
            ("capacity", &h.config.capacity, capacity),
            ("entry size", &h.config.entry_size, size_of::<T>() as u32),
            (
                "entry alignment",
                &h.config.entry_align,
                align_of::<T>() as u32,
            ),
            (
                "slot stride",
                &h.config.slot_stride,
                RingPtrs::<T>::STRIDE as u32,
            ),
        ];
        for (field, word, expected) in checks {
            let found = word.load(Relaxed);
            if found != expected {
                return Err(mismatch(field, found, expected));
            }
        }
        let head = h.head.load(Acquire);
        let tail = h.tail.load(Acquire);
        if tail.wrapping_sub(head) > capacity {
            return Err(CorruptIndex {
                field: IndexField::Tail,
                found: tail,
                low: head,
                high: head.wrapping_add(capacity),
                capacity,
            }
            .into());
        }
        Ok(Ring {
            ptrs,
            head,
            tail,
            _entry: PhantomData,
        })
    }

    /// Number of entries the ring holds.
    pub fn capacity(&self) -> u32 {
        self.ptrs.capacity()
    }

    /// Both halves, for use in this process (typically on two threads).
    ///
    /// Fails with [`RegionError::InUse`] if this process already has a producer or consumer
    /// of this ring (each side is single: a second one would race on the slots).
    pub fn split(self) -> Result<(Producer<T>, Consumer<T>), RingError> {
        let other = RingPtrs {
            region: self.ptrs.region.clone(),
            header: self.ptrs.header,
            slots: self.ptrs.slots,
            _slots: PhantomData,
            mask: self.ptrs.mask,
            slot_range: self.ptrs.slot_range.clone(),
        };
        let (head, tail) = (self.head, self.tail);
        let producer = Producer::new(self.ptrs, head, tail)?;
        let consumer = Consumer::new(other, head)?;
        Ok((producer, consumer))
    }

    /// The producing half only (the consumer lives in another process). Fails with
    /// [`RegionError::InUse`] if this process already has a producer of this ring.
    pub fn into_producer(self) -> Result<Producer<T>, RingError> {
        Producer::new(self.ptrs, self.head, self.tail)
    }

    /// The consuming half only (the producer lives in another process). Fails with
    /// [`RegionError::InUse`] if this process already has a consumer of this ring.
    pub fn into_consumer(self) -> Result<Consumer<T>, RingError> {
        Consumer::new(self.ptrs, self.head)
    }
}

/// The producing half of a ring.
///
/// Entries are *staged* (written into free slots) and then *published* (made visible to the
/// consumer by stamping their slots, all at once). [`Producer::push`] does both; [`Producer::stage`] with
/// [`Producer::publish`], or a [`WriteChunk`], publishes a batch at once.
pub struct Producer<T> {
    ring: RingPtrs<T>,
    /// Published tail: private, authoritative.
    tail: u32,
    /// Entries written after `tail` but not yet published.
    staged: u32,
    /// Last head read from the consumer (validated).
    cached_head: u32,
    #[cfg(loom)]
    publish_order: Ordering,
    _claim: Claim,
}

impl<T> fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.ring.mask.wrapping_add(1))
            .field("tail", &self.tail)
            .field("staged", &self.staged)
            .field("cached_head", &self.cached_head)
            .finish()
    }
}

impl<T: Pod> Producer<T> {
    fn new(ring: RingPtrs<T>, head: u32, tail: u32) -> Result<Self, RingError> {
        Ok(Producer {
            _claim: ring.claim(ClaimKind::RingProducer)?,
            ring,
            tail,
            staged: 0,
            cached_head: head,
            #[cfg(loom)]
            publish_order: Release,
        })
    }

    /// Number of entries the ring holds.
    pub fn capacity(&self) -> u32 {
        self.ring.capacity()
    }

    /// Entries staged but not yet published.
    pub fn staged(&self) -> u32 {
        self.staged
    }

    fn write_pos(&self) -> u32 {
        self.tail.wrapping_add(self.staged)
    }

    fn free_cached(&self) -> u32 {
        self.capacity() - self.write_pos().wrapping_sub(self.cached_head)
    }

    /// Re-reads the consumer's head and validates it.
    fn refresh_head(&mut self) -> Result<u32, CorruptIndex> {
        // SYNC POINT (ring-release): Acquire pairs with the consumer's Release store of `head`
        // in `Consumer::release`; its reads of the released slots happen-before we reuse them.
        let head = self.ring.header().head.load(Acquire);
        // The head only moves forward, and never past what we published.
        if head.wrapping_sub(self.cached_head) > self.tail.wrapping_sub(self.cached_head) {
            return Err(CorruptIndex {
                field: IndexField::Head,
                found: head,
                low: self.cached_head,
                high: self.tail,
                capacity: self.capacity(),
            });
        }
        self.cached_head = head;
        Ok(self.free_cached())
    }

    /// Free slots, re-reading the consumer's head only if the cached one says fewer than
    /// `wanted` are free.
    fn free(&mut self, wanted: u32) -> Result<u32, CorruptIndex> {
        let free = self.free_cached();
        if free >= wanted {
            Ok(free)
        } else {
            self.refresh_head()
        }
    }

    /// Free slots now (re-reads the consumer's head). The answer may be stale as soon as it is
    /// returned, but only on the safe side: the consumer can only free more.
    pub fn free_slots(&mut self) -> Result<u32, CorruptIndex> {
        self.refresh_head()
    }

    /// Free slots, re-reading the consumer's head only if the cached one says fewer than
    /// `wanted` are free. Cheaper than [`free_slots`](Self::free_slots) on a hot path: the
    /// head's cache line is written by the consumer, so reading it costs a cache-line transfer
    /// whenever the consumer has moved.
    pub fn free_for(&mut self, wanted: u32) -> Result<u32, CorruptIndex> {
        self.free(wanted)
    }

    /// Writes `value` into the next free slot without publishing it.
    pub fn stage(&mut self, value: T) -> Result<(), PushError<T>> {
        match self.free(1) {
            Ok(0) => return Err(PushError::Full(value)),
            Ok(_) => {}
            Err(e) => return Err(PushError::Corrupt(e, value)),
        }
        // SAFETY: the slot at `write_pos` is free (validated head), so the consumer does not read
        // it until we publish; it lies inside the ring.
        unsafe { Slot::write(self.ring.value(self.write_pos()), value) };
        self.staged += 1;
        Ok(())
    }

    /// Publishes every staged entry (stamps each slot, then stores `tail` once) and returns
    /// how many there were.
    pub fn publish(&mut self) -> u32 {
        self.publish_staged()
    }

    /// Stages and publishes one entry. A full ring hands the entry back
    /// ([`PushError::Full`]): nothing is dropped.
    pub fn push(&mut self, value: T) -> Result<(), PushError<T>> {
        self.stage(value)?;
        self.publish();
        Ok(())
    }

    /// Reserves up to `max` free slots (fewer if the ring has fewer; possibly none) to fill and
    /// publish at once with [`WriteChunk::commit`].
    pub fn write_chunk(&mut self, max: u32) -> Result<WriteChunk<'_, T>, CorruptIndex> {
        let len = self.free(max)?.min(max);
        Ok(WriteChunk {
            start: self.write_pos(),
            len,
            producer: self,
        })
    }

    /// Pushes as many entries from `values` as fit, publishing them at once, and returns
    /// how many were pushed.
    pub fn push_slice(&mut self, values: &[T]) -> Result<usize, CorruptIndex> {
        let n = self.stage_slice(values)?;
        self.publish();
        Ok(n)
    }

    /// Stages as many entries from `values` as fit, without publishing; returns how many.
    pub fn stage_slice(&mut self, values: &[T]) -> Result<usize, CorruptIndex> {
        let mut chunk = self.write_chunk(values.len().min(u32::MAX as usize) as u32)?;
        let n = chunk.fill_from(values.iter().copied());
        chunk.stage(n);
        Ok(n)
    }

    /// The word the consumer sets before it sleeps waiting for entries: a doorbell checks it
    /// after publishing.
    pub fn consumer_wake(&self) -> WakeRef {
        self.ring.wake(|h| &h.consumer_wake)
    }

    /// Loom negative control only: stamp slots with another ordering.
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn set_publish_ordering_for_loom(&mut self, order: Ordering) {
        self.publish_order = order;
    }
}

impl<T> Producer<T> {
    /// Publishes anything still staged and returns how many entries that was (also for drops,
    /// where `T: Pod` is not in scope: stamps and the header do not depend on `T`).
    pub(crate) fn publish_staged(&mut self) -> u32 {
        let n = self.staged;
        if n == 0 {
            return 0;
        }
        #[cfg(not(loom))]
        let order = Release;
        #[cfg(loom)]
        let order = self.publish_order;
        // Last entry first: the consumer reads stamps in index order, so once it sees the first
        // entry's stamp, the Release/Acquire pair on it makes every later stamp of the batch
        // visible too. A batch becomes visible at once, as if published with one store.
        for k in (0..n).rev() {
            let index = self.tail.wrapping_add(k);
            // SYNC POINT (ring-publish): Release pairs with the consumer's Acquire load of the
            // stamp in `Consumer::scan`; the entry's write happens-before its read.
            self.ring.stamp(index).store(stamp_of(index), order);
        }
        self.tail = self.tail.wrapping_add(n);
        self.staged = 0;
        // For a producer that attaches later and for observers; the consumer goes by the stamps.
        self.ring.header().tail.store(self.tail, Release);
        n
    }
}

impl<T> Drop for Producer<T> {
    /// Publishes anything still staged: entries the caller pushed are not silently dropped.
    fn drop(&mut self) {
        self.publish_staged();
    }
}

/// Free slots reserved by [`Producer::write_chunk`], filled in place and published together.
///
/// Dropping a chunk without committing publishes nothing (a panic while filling leaves the
/// ring as it was).
pub struct WriteChunk<'a, T> {
    producer: &'a mut Producer<T>,
    start: u32,
    len: u32,
}

impl<T> fmt::Debug for WriteChunk<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteChunk")
            .field("start", &self.start)
            .field("len", &self.len)
            .finish()
    }
}

impl<'a, T: Pod> WriteChunk<'a, T> {
    /// Number of reserved slots.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True when no slot could be reserved (the ring is full).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes the `i`-th reserved slot.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn set(&mut self, i: usize, value: T) {
        assert!(
            i < self.len(),
            "write chunk index {i} out of range (len {})",
            self.len
        );
        // SAFETY: the slot is reserved (free and unpublished) and inside the ring.
        unsafe {
            Slot::write(
                self.producer.ring.value(self.start.wrapping_add(i as u32)),
                value,
            )
        };
    }

    /// Fills reserved slots in order from `values` until either runs out; returns how many were
    /// written.
    pub fn fill_from(&mut self, values: impl IntoIterator<Item = T>) -> usize {
        let mut n = 0;
        for value in values.into_iter().take(self.len()) {
            self.set(n, value);
            n += 1;
        }
        n
    }

    /// Publishes the first `n` reserved slots (and anything staged before), all at once.
    /// Slots not written since they were reserved publish whatever bytes they held.
    ///
    /// # Panics
    /// If `n > self.len()`.
    pub fn commit(self, n: usize) {
        let producer = self.stage(n);
        producer.publish();
    }

    /// Stages the first `n` reserved slots without publishing them; a later
    /// [`Producer::publish`] (or commit) makes them visible.
    ///
    /// # Panics
    /// If `n > self.len()`.
    pub fn stage(self, n: usize) -> &'a mut Producer<T> {
        assert!(
            n <= self.len(),
            "cannot stage {n} of {} reserved slots",
            self.len
        );
        self.producer.staged += n as u32;
        self.producer
    }
}

/// The consuming half of a ring.
pub struct Consumer<T> {
    ring: RingPtrs<T>,
    /// Released head: private, authoritative.
    head: u32,
    /// End of the published entries seen so far (by their stamps).
    end: u32,
    _claim: Claim,
}

impl<T> fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.ring.mask.wrapping_add(1))
            .field("head", &self.head)
            .field("end", &self.end)
            .finish()
    }
}

impl<T: Pod> Consumer<T> {
    fn new(ring: RingPtrs<T>, head: u32) -> Result<Self, RingError> {
        Ok(Consumer {
            _claim: ring.claim(ClaimKind::RingConsumer)?,
            ring,
            head,
            end: head,
        })
    }

    /// Number of entries the ring holds.
    pub fn capacity(&self) -> u32 {
        self.ring.capacity()
    }

    fn available_cached(&self) -> u32 {
        self.end.wrapping_sub(self.head)
    }

    /// Reads stamps past the published entries already seen, until `wanted` entries (at most
    /// the capacity) are known to be ready or a slot is not yet published; returns how many are.
    #[inline]
    fn scan(&mut self, wanted: u32) -> Result<u32, CorruptIndex> {
        let limit = wanted.min(self.capacity());
        let mut avail = self.available_cached();
        while avail < limit {
            let index = self.end;
            // SYNC POINT (ring-publish): Acquire pairs with the producer's Release store of the
            // stamp in `Producer::publish`; its write of the entry happens-before our read.
            let stamp = self.ring.stamp(index).load(Acquire);
            if stamp != stamp_of(index) {
                let unpublished = stamp_of(index.wrapping_sub(self.capacity()));
                if stamp == unpublished {
                    break;
                }
                return Err(CorruptIndex {
                    field: IndexField::Stamp,
                    found: stamp,
                    low: unpublished,
                    high: stamp_of(index),
                    capacity: self.capacity(),
                });
            }
            self.end = index.wrapping_add(1);
            avail += 1;
        }
        Ok(avail)
    }

    #[inline]
    fn available_at_least(&mut self, wanted: u32) -> Result<u32, CorruptIndex> {
        let avail = self.available_cached();
        if avail >= wanted {
            Ok(avail)
        } else {
            self.scan(wanted)
        }
    }

    /// Entries ready to read now (reads the stamps of every slot published since the last
    /// look). The answer may be stale as soon as it is returned, but only on the safe side: the
    /// producer can only add more.
    pub fn available(&mut self) -> Result<u32, CorruptIndex> {
        self.scan(u32::MAX)
    }

    /// Entries ready to read, looking for new ones only while fewer than `wanted` are known
    /// (and then no further than `wanted`): cheaper than [`available`](Self::available) when a
    /// batch of at most `wanted` is all the caller takes.
    pub fn available_up_to(&mut self, wanted: u32) -> Result<u32, CorruptIndex> {
        self.available_at_least(wanted)
    }

    /// True if an entry is ready, reading the next slot's stamp only when every entry already
    /// seen has been consumed.
    pub fn has_entries(&mut self) -> Result<bool, CorruptIndex> {
        Ok(self.available_at_least(1)? > 0)
    }

    /// A copy of the next entry, without releasing it.
    pub fn peek(&mut self) -> Result<Option<T>, CorruptIndex> {
        if self.available_at_least(1)? == 0 {
            return Ok(None);
        }
        // SAFETY: the slot at `head` is published (its stamp was validated) and not yet released.
        Ok(Some(unsafe { Slot::read(self.ring.value(self.head)) }))
    }

    /// Takes the next entry, releasing its slot to the producer.
    pub fn pop(&mut self) -> Result<Option<T>, CorruptIndex> {
        let value = self.peek()?;
        if value.is_some() {
            self.release(1);
        }
        Ok(value)
    }

    /// Up to `max` published entries to read in place, released together with
    /// [`ReadChunk::release`].
    pub fn read_chunk(&mut self, max: u32) -> Result<ReadChunk<'_, T>, CorruptIndex> {
        let len = self.available_at_least(max)?.min(max);
        Ok(ReadChunk {
            start: self.head,
            len,
            consumer: self,
        })
    }

    /// Pops up to `out.len()` entries into `out` with one release; returns how many.
    pub fn pop_slice(&mut self, out: &mut [T]) -> Result<usize, CorruptIndex> {
        let chunk = self.read_chunk(out.len().min(u32::MAX as usize) as u32)?;
        let n = chunk.copy_to(out);
        chunk.release(n);
        Ok(n)
    }

    fn release(&mut self, n: u32) {
        self.head = self.head.wrapping_add(n);
        // SYNC POINT (ring-release): Release pairs with the producer's Acquire load of `head` in
        // `Producer::refresh_head`; our slot reads happen-before it reuses the slots.
        self.ring.header().head.store(self.head, Release);
    }

    /// The word this consumer sets before it sleeps waiting for entries.
    pub fn consumer_wake(&self) -> WakeRef {
        self.ring.wake(|h| &h.consumer_wake)
    }
}

/// Published entries, read by copy and released together.
///
/// Dropping the chunk without [`ReadChunk::release`] releases nothing: the entries are read
/// again next time.
pub struct ReadChunk<'a, T> {
    consumer: &'a mut Consumer<T>,
    start: u32,
    len: u32,
}

impl<T> fmt::Debug for ReadChunk<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadChunk")
            .field("start", &self.start)
            .field("len", &self.len)
            .finish()
    }
}

impl<T: Pod> ReadChunk<'_, T> {
    /// Number of entries in the chunk.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True when no entry was ready.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A copy of the `i`-th entry.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn get(&self, i: usize) -> T {
        assert!(
            i < self.len(),
            "read chunk index {i} out of range (len {})",
            self.len
        );
        // SAFETY: the slot is published and not released, and inside the ring.
        unsafe { Slot::read(self.consumer.ring.value(self.start.wrapping_add(i as u32))) }
    }

    /// Copies of the entries, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = T> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Copies as many entries as fit into `out`; returns how many.
    pub fn copy_to(&self, out: &mut [T]) -> usize {
        let n = self.len().min(out.len());
        for (i, slot) in out[..n].iter_mut().enumerate() {
            *slot = self.get(i);
        }
        n
    }

    /// Releases the first `n` entries to the producer with one store.
    ///
    /// # Panics
    /// If `n > self.len()`.
    pub fn release(self, n: usize) {
        assert!(
            n <= self.len(),
            "cannot release {n} of {} entries",
            self.len
        );
        if n > 0 {
            self.consumer.release(n as u32);
        }
    }

    /// Releases every entry in the chunk.
    pub fn release_all(self) {
        let n = self.len();
        self.release(n);
    }
}
