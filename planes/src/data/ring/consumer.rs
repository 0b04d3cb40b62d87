//! The consuming half: reading published entries and releasing their slots.

use super::*;

/// The consuming half of a ring.
pub struct Consumer<T, P: Publication = Indexed> {
    ring: RingPtrs<T, P>,
    /// Released head: private, authoritative.
    head: u32,
    /// End of the published entries seen so far (by `tail`, or by the stamps).
    end: u32,
    _claim: Claim,
}

impl<T, P: Publication> fmt::Debug for Consumer<T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.ring.mask.wrapping_add(1))
            .field("head", &self.head)
            .field("end", &self.end)
            .finish()
    }
}

impl<T: Pod, P: Publication> Consumer<T, P> {
    pub(super) fn new(ring: RingPtrs<T, P>, head: u32) -> Result<Self, RingError> {
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
        let avail = self.available_cached();
        if avail >= limit {
            return Ok(avail);
        }
        let capacity = self.capacity();
        if !P::STAMPED {
            return self.read_tail();
        }
        let mask = self.ring.mask;
        let mut corrupt = None;
        let mut check = |index: u32, slot: SlotPtr| {
            // SYNC POINT (ring-publish): Acquire pairs with the producer's Release store of the
            // stamp in `Producer::publish`; its write of the entry happens-before our read.
            // SAFETY: `walk` hands out this ring's slots.
            let stamp = unsafe { self.ring.stamp_at(slot) }.load(Acquire);
            let published = stamp_of(index, mask);
            if stamp == published {
                return true;
            }
            let unpublished = published.wrapping_sub(capacity);
            if stamp != unpublished {
                corrupt = Some(CorruptIndex {
                    field: IndexField::Stamp,
                    found: stamp,
                    low: unpublished,
                    high: published,
                    capacity,
                });
            }
            false
        };
        let seen = if limit - avail == 1 {
            // One entry (a `pop` on an empty cache): no walk to set up.
            u32::from(check(self.end, self.ring.slot(self.end)))
        } else {
            self.ring.walk(self.end, limit - avail, check)
        };
        self.end = self.end.wrapping_add(seen);
        match corrupt {
            Some(e) => Err(e),
            None => Ok(avail + seen),
        }
    }

    /// An indexed ring's consumer learns what is published from the producer's `tail`, which
    /// may neither move backwards nor run more than a ring ahead of `head`.
    #[inline]
    fn read_tail(&mut self) -> Result<u32, CorruptIndex> {
        // SYNC POINT (ring-publish, indexed): Acquire pairs with the producer's Release store of
        // `tail` in `Producer::publish`; its writes of the entries happen-before our reads.
        let tail = self.ring.header().tail.load(Acquire);
        let ready = tail.wrapping_sub(self.head);
        if ready > self.capacity() || ready < self.available_cached() {
            return Err(CorruptIndex {
                field: IndexField::Tail,
                found: tail,
                low: self.end,
                high: self.head.wrapping_add(self.capacity()),
                capacity: self.capacity(),
            });
        }
        self.end = tail;
        Ok(ready)
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

    /// Entries ready to read now (reads `tail`, or the stamps of every slot published since the
    /// last look). The answer may be stale as soon as it is returned, but only on the safe side:
    /// the producer can only add more.
    pub fn available(&mut self) -> Result<u32, CorruptIndex> {
        self.scan(u32::MAX)
    }

    /// Entries ready to read, looking for new ones only while fewer than `wanted` are known:
    /// cheaper than [`available`](Self::available) when a batch of at most `wanted` is all the
    /// caller takes. A stamped ring looks no further than `wanted`; an indexed one learns
    /// everything published from one read of `tail`, so the answer may exceed `wanted`.
    pub fn available_up_to(&mut self, wanted: u32) -> Result<u32, CorruptIndex> {
        self.available_at_least(wanted)
    }

    /// True if an entry is ready, reading `tail` (or the next slot's stamp) only when every
    /// entry already seen has been consumed.
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
        if self.available_at_least(1)? == 0 {
            return Ok(None);
        }
        // SAFETY: the slot at `head` is published (its stamp was validated) and not yet released.
        let value = unsafe { Slot::read(self.ring.value(self.head)) };
        self.release(1);
        Ok(Some(value))
    }

    /// A copy of the entry `k` places after the next one, if at least `k + 1` entries are
    /// known to be ready (counted by the last look at the ring: [`available`](Self::available),
    /// [`available_up_to`](Self::available_up_to), [`has_entries`](Self::has_entries),
    /// [`peek`](Self::peek), [`pop`](Self::pop) or [`read_chunk`](Self::read_chunk));
    /// releases nothing. With [`release_ready`](Self::release_ready), a consumer can read
    /// entries one at a time, doing other work between them, and release them with one store.
    #[inline]
    pub fn peek_ready(&self, k: u32) -> Option<T> {
        if k >= self.available_cached() {
            return None;
        }
        // SAFETY: the slot at `head + k` is published (its stamp was validated, or `tail` read,
        // when it was counted in `end`) and not yet released.
        Some(unsafe { Slot::read(self.ring.value(self.head.wrapping_add(k))) })
    }

    /// Releases the next `n` entries to the producer with one store (at most as many as are
    /// known to be ready; see [`peek_ready`](Self::peek_ready)).
    ///
    /// # Panics
    /// If fewer than `n` entries are known to be ready.
    pub fn release_ready(&mut self, n: u32) {
        assert!(
            n <= self.available_cached(),
            "cannot release {n} of {} ready entries",
            self.available_cached()
        );
        if n > 0 {
            self.release(n);
        }
    }

    /// Up to `max` published entries to read in place, released together with
    /// [`ReadChunk::release`].
    pub fn read_chunk(&mut self, max: u32) -> Result<ReadChunk<'_, T, P>, CorruptIndex> {
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

    /// The word the producer sets before it sleeps waiting for room in a full ring: check it
    /// after releasing slots, and wake the producer if it says "sleeping".
    pub fn producer_wake(&self) -> WakeRef {
        self.ring.wake(|h| &h.producer_wake)
    }

    /// The index of the entry whose publication makes `n` entries ready to read (counting from
    /// the first unreleased one; `n` is taken between 1 and the capacity): what to sleep until
    /// with event-idx suppression ([`Notifier::wait_until_entry`]).
    ///
    /// [`Notifier::wait_until_entry`]: crate::interrupt::Notifier::wait_until_entry
    pub fn event_for(&self, n: u32) -> u32 {
        self.head
            .wrapping_add(n.clamp(1, self.capacity()))
            .wrapping_sub(1)
    }

    /// Slots released so far (wrapping): it changes exactly when this consumer releases, so a
    /// caller can tell whether it made room since it last looked.
    pub fn released(&self) -> u32 {
        self.head
    }
}

/// Published entries, read by copy and released together.
///
/// Dropping the chunk without [`ReadChunk::release`] releases nothing: the entries are read
/// again next time.
pub struct ReadChunk<'a, T, P: Publication = Indexed> {
    consumer: &'a mut Consumer<T, P>,
    start: u32,
    len: u32,
}

impl<T, P: Publication> fmt::Debug for ReadChunk<'_, T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadChunk")
            .field("start", &self.start)
            .field("len", &self.len)
            .finish()
    }
}

impl<T: Pod, P: Publication> ReadChunk<'_, T, P> {
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
        #[cfg(not(loom))]
        if !P::STAMPED {
            // An indexed ring's slots are contiguous: each run of them (two at most) is one
            // wide copy.
            let () = RingPtrs::<T, P>::PACKED;
            let mut rest = &mut out[..n];
            self.consumer.ring.runs(self.start, n as u32, |slot, run| {
                let (now, later) = std::mem::take(&mut rest).split_at_mut(run as usize);
                // SAFETY: the run's slots are published and not released, contiguous and
                // inside the ring (`runs`).
                unsafe {
                    super::super::volatile::copy_from_shared(slot, bytemuck::cast_slice_mut(now))
                };
                rest = later;
            });
            return n;
        }
        let mut dst = out[..n].iter_mut();
        self.consumer.ring.walk(self.start, n as u32, |_, slot| {
            let Some(dst) = dst.next() else { return false };
            // SAFETY: the slot is published and not released, and one of this ring's.
            *dst = unsafe { Slot::read(RingPtrs::<T, P>::value_at(slot)) };
            true
        });
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
