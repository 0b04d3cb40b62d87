//! The consuming half: reading published entries and releasing their slots.

use super::*;

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
    pub(super) fn new(ring: RingPtrs<T>, head: u32) -> Result<Self, RingError> {
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
