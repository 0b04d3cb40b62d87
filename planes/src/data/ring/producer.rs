//! The producing half: staging, publishing, and batches written in place.

use super::*;

/// The producing half of a ring.
///
/// Entries are *staged* (written into free slots) and then *published* (made visible to the
/// consumer by stamping their slots, all at once). [`Producer::push`] does both; [`Producer::stage`] with
/// [`Producer::publish`], or a [`WriteChunk`], publishes a batch at once.
pub struct Producer<T, P: Publication = Indexed> {
    ring: RingPtrs<T, P>,
    /// Published tail: private, authoritative.
    tail: u32,
    /// Entries written after `tail` but not yet published.
    staged: u32,
    /// Last head read from the consumer (validated).
    cached_head: u32,
    _claim: Claim,
}

impl<T, P: Publication> fmt::Debug for Producer<T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.ring.mask.wrapping_add(1))
            .field("tail", &self.tail)
            .field("staged", &self.staged)
            .field("cached_head", &self.cached_head)
            .finish()
    }
}

impl<T: Pod, P: Publication> Producer<T, P> {
    pub(super) fn new(ring: RingPtrs<T, P>, head: u32, tail: u32) -> Result<Self, RingError> {
        Ok(Producer {
            _claim: ring.claim(ClaimKind::RingProducer)?,
            ring,
            tail,
            staged: 0,
            cached_head: head,
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

    /// The index one past the last published entry (wrapping): what a notification of the
    /// entries published since the last one covers ([`Notifier::notify_published`]).
    ///
    /// [`Notifier::notify_published`]: crate::interrupt::Notifier::notify_published
    pub fn published(&self) -> u32 {
        self.tail
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
        self.push_ordered::<false>(value)
    }

    /// [`push`](Self::push), its stamp stored Relaxed if `RELAXED` (a loom negative control's
    /// breakage; the constant folds away).
    #[inline(always)]
    fn push_ordered<const RELAXED: bool>(&mut self, value: T) -> Result<(), PushError<T>> {
        if self.staged > 0 {
            self.stage(value)?;
            self.publish_staged_ordered::<RELAXED>();
            return Ok(());
        }
        match self.free(1) {
            Ok(0) => return Err(PushError::Full(value)),
            Ok(_) => {}
            Err(e) => return Err(PushError::Corrupt(e, value)),
        }
        // Nothing staged: write (and stamp) one slot, its address computed once.
        let order = if RELAXED { Relaxed } else { Release };
        let slot = self.ring.slot(self.tail);
        // SAFETY: the slot at `tail` is free (validated head) and one of this ring's; the
        // consumer does not read it before its stamp, or `tail`, says so.
        unsafe {
            Slot::write(RingPtrs::<T, P>::value_at(slot), value);
            if P::STAMPED {
                // SYNC POINT (ring-publish): as in `publish_staged_ordered`.
                self.ring
                    .stamp_at(slot)
                    .store(stamp_of(self.tail, self.ring.mask), order);
            }
        }
        self.tail = self.tail.wrapping_add(1);
        // SYNC POINT (ring-publish, indexed): as in `publish_staged_ordered`.
        let tail_order = if P::STAMPED { Release } else { order };
        self.ring.header().tail.store(self.tail, tail_order);
        Ok(())
    }

    /// Reserves up to `max` free slots (fewer if the ring has fewer; possibly none) to fill and
    /// publish at once with [`WriteChunk::commit`].
    pub fn write_chunk(&mut self, max: u32) -> Result<WriteChunk<'_, T, P>, CorruptIndex> {
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
        let n = chunk.copy_from(values);
        chunk.stage(n);
        Ok(n)
    }

    /// The word the consumer sets before it sleeps waiting for entries: a doorbell checks it
    /// after publishing.
    pub fn consumer_wake(&self) -> WakeRef {
        self.ring.wake(|h| &h.consumer_wake)
    }

    /// The word this producer sets before it sleeps waiting for room in a full ring: the
    /// consumer checks it after releasing slots.
    pub fn producer_wake(&self) -> WakeRef {
        self.ring.wake(|h| &h.producer_wake)
    }

    /// Loom negative control only: [`push`](Self::push) with the slot's stamp stored Relaxed
    /// instead of Release (the same publishing code, instantiated with the other ordering).
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn push_relaxed_for_loom(&mut self, value: T) -> Result<(), PushError<T>> {
        self.push_ordered::<true>(value)
    }
}

impl<T, P: Publication> Producer<T, P> {
    /// Publishes anything still staged and returns how many entries that was (also for drops,
    /// where `T: Pod` is not in scope: stamps and the header do not depend on `T`).
    pub(crate) fn publish_staged(&mut self) -> u32 {
        self.publish_staged_ordered::<false>()
    }

    /// [`publish_staged`](Self::publish_staged), its stamps stored Relaxed if `RELAXED` (a loom
    /// negative control's breakage; the constant folds away).
    #[inline(always)]
    fn publish_staged_ordered<const RELAXED: bool>(&mut self) -> u32 {
        let n = self.staged;
        if n == 0 {
            return 0;
        }
        let order = if RELAXED { Relaxed } else { Release };
        if !P::STAMPED {
            self.tail = self.tail.wrapping_add(n);
            self.staged = 0;
            // SYNC POINT (ring-publish, indexed): Release pairs with the consumer's Acquire load
            // of `tail` in `Consumer::scan`; the entries' writes happen-before their reads.
            self.ring.header().tail.store(self.tail, order);
            return n;
        }
        // Last entry first: the consumer reads stamps in index order, so once it sees the first
        // entry's stamp, the Release/Acquire pair on it makes every later stamp of the batch
        // visible too. A batch becomes visible at once, as if published with one store.
        let ring = &self.ring;
        let stamp = |index, slot| {
            // SYNC POINT (ring-publish): Release pairs with the consumer's Acquire load of the
            // stamp in `Consumer::scan`; the entry's write happens-before its read.
            // SAFETY: `slot` and `walk_back` hand out this ring's slots.
            unsafe { ring.stamp_at(slot) }.store(stamp_of(index, ring.mask), order);
        };
        if n == 1 {
            stamp(self.tail, ring.slot(self.tail));
        } else {
            ring.walk_back(self.tail, n, stamp);
        }
        self.tail = self.tail.wrapping_add(n);
        self.staged = 0;
        // For a producer that attaches later and for observers; the consumer goes by the stamps.
        self.ring.header().tail.store(self.tail, Release);
        n
    }
}

impl<T, P: Publication> Drop for Producer<T, P> {
    /// Publishes anything still staged: entries the caller pushed are not silently dropped.
    fn drop(&mut self) {
        self.publish_staged();
    }
}

/// Free slots reserved by [`Producer::write_chunk`], filled in place and published together.
///
/// Dropping a chunk without committing publishes nothing (a panic while filling leaves the
/// ring as it was).
pub struct WriteChunk<'a, T, P: Publication = Indexed> {
    producer: &'a mut Producer<T, P>,
    start: u32,
    len: u32,
}

impl<T, P: Publication> fmt::Debug for WriteChunk<'_, T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteChunk")
            .field("start", &self.start)
            .field("len", &self.len)
            .finish()
    }
}

impl<'a, T: Pod, P: Publication> WriteChunk<'a, T, P> {
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
        let mut values = values.into_iter();
        self.producer.ring.walk(self.start, self.len, |_, slot| {
            let Some(value) = values.next() else {
                return false;
            };
            // SAFETY: the slot is reserved (free and unpublished), and one of this ring's.
            unsafe { Slot::write(RingPtrs::<T, P>::value_at(slot), value) };
            true
        }) as usize
    }

    /// Copies entries from `values` into the reserved slots, in order, until either runs out;
    /// returns how many were written. An indexed ring's slots are contiguous, so each run of
    /// them (two at most) is one wide copy.
    pub fn copy_from(&mut self, values: &[T]) -> usize {
        let n = self.len().min(values.len());
        #[cfg(not(loom))]
        if !P::STAMPED {
            let () = RingPtrs::<T, P>::PACKED;
            let mut rest = &values[..n];
            self.producer.ring.runs(self.start, n as u32, |slot, run| {
                let (now, later) = rest.split_at(run as usize);
                // SAFETY: the run's slots are reserved (free and unpublished), contiguous and
                // inside the ring (`runs`), and no reference of this process points into them.
                unsafe {
                    super::super::volatile::copy_to_shared(
                        bytemuck::cast_slice(now),
                        slot.cast_mut(),
                    )
                };
                rest = later;
            });
            return n;
        }
        self.fill_from(values[..n].iter().copied())
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
    pub fn stage(self, n: usize) -> &'a mut Producer<T, P> {
        assert!(
            n <= self.len(),
            "cannot stage {n} of {} reserved slots",
            self.len
        );
        self.producer.staged += n as u32;
        self.producer
    }
}
