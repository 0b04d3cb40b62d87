//! Where a ring sits in its region, and creating or attaching to one there.

use super::*;

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
    /// The layout of a ring of `capacity` entries of `T`, published the `P` way.
    pub fn of<T: Pod, P: Publication>(capacity: u32) -> Result<Self, RingError> {
        if capacity == 0 || capacity > MAX_CAPACITY || !capacity.is_power_of_two() {
            return Err(RingError::InvalidCapacity(capacity.into()));
        }
        if size_of::<T>() == 0
            || u32::try_from(size_of::<T>()).is_err()
            || u32::try_from(RingPtrs::<T, P>::STRIDE).is_err()
        {
            return Err(RingError::InvalidEntry {
                size: size_of::<T>(),
            });
        }
        let slot_align = RingPtrs::<T, P>::SLOT_ALIGN;
        let align = align_of::<RingHeader>().max(slot_align);
        let slots_offset = size_of::<RingHeader>().next_multiple_of(slot_align);
        let size = RingPtrs::<T, P>::STRIDE
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

/// A ring's two halves, as [`Ring::split`] and [`Ring::with_capacity`] return them.
pub type Halves<T, P = Indexed> = (Producer<T, P>, Consumer<T, P>);

/// A ring laid out in a region, before it is split into its [`Producer`] and [`Consumer`].
///
/// `P` says how the consumer learns what is published: [`Indexed`] (the default: packed
/// entries, for queues and streams) or [`Stamped`] (one cache-line transfer per entry, for
/// round trips); see [`Publication`].
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
/// A stamped ring, for a request/response exchange:
/// ```
/// use subring_planes::data::{Ring, Stamped};
/// let (mut tx, mut rx) = Ring::<u64, Stamped>::with_capacity(8)?;
/// tx.push(7).unwrap();
/// assert_eq!(rx.pop()?, Some(7));
/// # Ok::<(), subring_planes::data::RingError>(())
/// ```
pub struct Ring<T, P: Publication = Indexed> {
    ptrs: RingPtrs<T, P>,
    head: u32,
    tail: u32,
    _entry: PhantomData<T>,
}

impl<T, P: Publication> fmt::Debug for Ring<T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("publication", &std::any::type_name::<P>())
            .field("capacity", &self.ptrs.mask.wrapping_add(1))
            .field("head", &self.head)
            .field("tail", &self.tail)
            .finish()
    }
}

impl<T: Pod, P: Publication> Ring<T, P> {
    /// A ring of `capacity` entries in a fresh anonymous region, split into its halves: the
    /// quick way to get a ring between two threads.
    pub fn with_capacity(capacity: u32) -> Result<Halves<T, P>, RingError> {
        let layout = RingLayout::of::<T, P>(capacity)?;
        let region = Arc::new(Region::anonymous(layout.size, RegionOptions::new())?);
        Self::create(region, 0, capacity)?.split()
    }

    fn locate(
        region: &Arc<Region>,
        offset: usize,
        capacity: u32,
    ) -> Result<RingPtrs<T, P>, RingError> {
        let layout = RingLayout::of::<T, P>(capacity)?;
        if offset % layout.align != 0 {
            return Err(RegionError::Misaligned {
                offset,
                align: layout.align,
            }
            .into());
        }
        let header = region.ptr_at::<RingHeader>(offset, layout.size)?;
        let slots = region
            .ptr_at::<P::SlotOf<T>>(
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
        #[cfg(loom)]
        // SAFETY: the range was bounds-checked by `locate`, and in a loom model nothing else
        // uses it yet (a model of creation racing an attach constructs first, on its own).
        unsafe {
            Self::construct(&ptrs, capacity, start);
        }
        // A fresh memfd's slots are holes, which read as zero: the stamps they hold before the
        // first lap (see `stamp_of`). Only slots in pages that hold data (the header's, say)
        // are stamped, and no other page is touched (a server creating a client's rings would
        // otherwise fault in every page of both, megabytes per hello, on its event loop).
        let layout = RingLayout::of::<T, P>(capacity)?;
        let slots_at = offset + layout.slots_offset;
        let data = match start {
            0 if P::STAMPED => region
                .data_extents(slots_at, layout.size - layout.slots_offset)
                .map(|extents| {
                    extents
                        .into_iter()
                        .map(|e| e.start - slots_at..e.end - slots_at)
                        .collect::<Vec<_>>()
                }),
            _ => None,
        };
        Ok(Self::init(ptrs, capacity, start, Release, data.as_deref()))
    }

    /// Loom builds only: constructs the loom objects of a ring of `capacity` entries at
    /// `offset` (its header's atomics, its slots' stamps and cells), all zero, as mapped memory
    /// is before [`create`](Self::create): loom's atomics and cells must be constructed, not
    /// reinterpreted from zeroed memory. A model in which creation races an attach calls this
    /// first, then [`create_constructed_for_loom`](Self::create_constructed_for_loom) on one
    /// thread while another attaches.
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn construct_for_loom(
        region: &Arc<Region>,
        offset: usize,
        capacity: u32,
    ) -> Result<(), RingError> {
        let ptrs = Self::locate(region, offset, capacity)?;
        // SAFETY: bounds-checked by `locate`; the model calls this before any thread uses the
        // range.
        unsafe { Self::construct(&ptrs, capacity, 0) };
        Ok(())
    }

    /// Loom builds only: [`create`](Self::create) over memory that
    /// [`construct_for_loom`](Self::construct_for_loom) prepared, storing the magic with
    /// `publish` (`Release` is what `create` does; a negative control weakens it).
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn create_constructed_for_loom(
        region: Arc<Region>,
        offset: usize,
        capacity: u32,
        publish: crate::sync::Ordering,
    ) -> Result<Self, RingError> {
        let ptrs = Self::locate(&region, offset, capacity)?;
        Ok(Self::init(ptrs, capacity, 0, publish, None))
    }

    /// # Safety
    /// The ring's range must be in bounds and not in use by any thread.
    #[cfg(loom)]
    unsafe fn construct(ptrs: &RingPtrs<T, P>, capacity: u32, start: u32) {
        // SAFETY: the caller's contract.
        unsafe {
            ptrs.header.as_ptr().write(RingHeader {
                config: CacheLine(RingConfig {
                    magic: AtomicU32::new(0),
                    version: AtomicU32::new(0),
                    capacity: AtomicU32::new(0),
                    entry_size: AtomicU32::new(0),
                    entry_align: AtomicU32::new(0),
                    slot_stride: AtomicU32::new(0),
                    publication: AtomicU32::new(0),
                }),
                tail: CacheLine(AtomicU32::new(0)),
                head: CacheLine(AtomicU32::new(0)),
                consumer_wake: CacheLine(WakeWord::new()),
                producer_wake: CacheLine(WakeWord::new()),
            });
            for k in 0..capacity {
                let slot = ptrs.slot(start.wrapping_add(k));
                if P::STAMPED {
                    let slot = slot.cast_mut().cast::<StampedSlot<T>>();
                    (&raw mut (*slot).stamp).write(AtomicU32::new(0));
                }
                Slot::init(RingPtrs::<T, P>::value_at(slot).cast_mut(), T::zeroed());
            }
        }
    }

    /// Writes a fresh ring's header and stamps with atomic stores, the magic last (with
    /// `publish`). Under std the header is reached as atomics in mapped memory (any bit pattern
    /// is a valid atomic integer), so creation is a sequence of atomic stores: even a buggy
    /// second `create` over a live ring is a protocol error, not a data race.
    fn init(
        ptrs: RingPtrs<T, P>,
        capacity: u32,
        start: u32,
        publish: crate::sync::Ordering,
        data: Option<&[std::ops::Range<usize>]>,
    ) -> Self {
        let h = ptrs.header();
        h.config.magic.store(0, Relaxed);
        h.tail.store(start, Relaxed);
        h.head.store(start, Relaxed);
        // The stamp each slot holds before its first use: that of the lap before `start` (0
        // for a ring starting at 0, which slots that read as zero already hold). `data`: the
        // byte ranges of the slots (from the first) that may not read as zero, if known.
        if P::STAMPED {
            let stamp = |k: u32| {
                let index = start.wrapping_add(k);
                ptrs.stamp(index)
                    .store(stamp_of(index.wrapping_sub(capacity), ptrs.mask), Relaxed);
            };
            let stride = RingPtrs::<T, P>::STRIDE;
            match data {
                None => (0..capacity).for_each(stamp),
                Some(extents) => {
                    for e in extents {
                        let first = (e.start / stride) as u32;
                        let last = (e.end.div_ceil(stride) as u32).min(capacity);
                        (first..last).for_each(stamp);
                    }
                }
            }
        }
        h.consumer_wake.reset();
        h.producer_wake.reset();
        h.config.version.store(RING_LAYOUT_VERSION, Relaxed);
        h.config.capacity.store(capacity, Relaxed);
        h.config.entry_size.store(size_of::<T>() as u32, Relaxed);
        h.config.entry_align.store(align_of::<T>() as u32, Relaxed);
        h.config
            .slot_stride
            .store(RingPtrs::<T, P>::STRIDE as u32, Relaxed);
        h.config.publication.store(P::CODE, Relaxed);
        // SYNC POINT (ring-init): Release pairs with the Acquire load of `magic` in `attach`, so a
        // thread that attaches sees the whole header initialised.
        h.config.magic.store(RING_MAGIC, publish);
        Ring {
            ptrs,
            head: start,
            tail: start,
            _entry: PhantomData,
        }
    }

    /// Attaches to a ring that another thread or process created at `offset` in `region`,
    /// checking that its header describes a ring of `capacity` entries of `T`, published the `P`
    /// way, in this layout version, and that its indices are consistent.
    ///
    /// The producer half continues from the published `tail`, the consumer half from `head`
    /// (it finds what is published by `tail`, or by the stamps). Attach a new producer to a
    /// stamped ring only if its previous producer finished its last publish: one that died
    /// between stamping slots and storing `tail` leaves stamps past `tail`, and then either the
    /// attach fails (the consumer released entries past `tail`) or the new producer overwrites
    /// entries the consumer has already seen as published.
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
                RingPtrs::<T, P>::STRIDE as u32,
            ),
            ("publication", &h.config.publication, P::CODE),
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
    pub fn split(self) -> Result<Halves<T, P>, RingError> {
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
    pub fn into_producer(self) -> Result<Producer<T, P>, RingError> {
        Producer::new(self.ptrs, self.head, self.tail)
    }

    /// The consuming half only (the producer lives in another process). Fails with
    /// [`RegionError::InUse`] if this process already has a consumer of this ring.
    pub fn into_consumer(self) -> Result<Consumer<T, P>, RingError> {
        Consumer::new(self.ptrs, self.head)
    }
}
