//! [`Lender`]: a pool's fast path for one thread that lends buffers to the peer and takes them
//! back.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use super::{BufHandle, BufferPool, PoolError, SharedBytes};
use crate::sync::Ordering::*;

/// Free buffers one refill takes from a word of the pool's bitmap (one read-modify-write).
const REFILL: u32 = 16;
/// The most free buffers a lender keeps; a buffer taken back beyond them goes to the pool.
const CACHE_MAX: usize = 64;

/// A [`BufferPool`]'s fast path for one thread that lends buffers to the peer and takes them
/// back: a stream of payloads, each written into a buffer, sent as a handle in a ring entry and
/// returned in the answer.
///
/// A [`Buf`](super::Buf) is an owned value that may be dropped on any thread, so each one
/// costs read-modify-writes of shared words: the pool's free bitmap when it is allocated and
/// freed, its lent flag when it is taken back, and the pool's reference count when it is made
/// and dropped (seven locked instructions per round trip on x86-64, each of which waits for
/// the payload's stores to drain). A lender instead keeps free buffers in a private cache: it
/// takes them from the pool 16 at a time (one read-modify-write), lends them with
/// [`lend_with`](Self::lend_with) or [`lend_copy`](Self::lend_copy) (a store of the lent flag),
/// and [`take_back`](Self::take_back) returns one to its cache (one read-modify-write of the
/// lent flag, which a handle returned twice must not pass twice). No `Buf` is made. It lends
/// its buffers in the order they came back, as a ring reuses its slots.
///
/// Its cached buffers are free but reserved to it: [`BufferPool::alloc`] and other lenders do
/// not see them, nor [`BufferPool::free_count`]. It keeps at most 64 (more taken back go to the
/// pool) and returns them all when dropped or asked to ([`give_back`](Self::give_back)). Handles it lent are reclaimed by any of the pool's
/// means ([`take_back`](Self::take_back), or [`BufferPool::reclaim`] to read what the peer
/// wrote into one).
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use subring_planes::data::{BufferPool, Region, RegionOptions};
/// let region = Arc::new(Region::memfd("pool", 64 * 1024, RegionOptions::new())?);
/// let pool = BufferPool::new(region.clone(), 0, 4096, 16)?;
/// let mut lender = pool.lender();
/// let handle = lender.lend_copy(b"hello").expect("a free buffer"); // send it in a ring entry
/// let mut seen = [0u8; 5];
/// region.read_into(handle, &mut seen)?; // what the peer would see
/// assert_eq!(&seen, b"hello");
/// lender.take_back(handle)?; // the peer returned it: free again, in the lender's cache
/// assert!(lender.take_back(handle).is_err()); // not lent any more
/// drop(lender);
/// assert_eq!(pool.free_count(), 16); // a dropped lender gives its cache back
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Lender {
    pool: Arc<BufferPool>,
    /// Free buffers reserved to this lender, lent in the order they came back (first in, first
    /// out; a refill's, taken from the pool, in the pool's order), the way a ring reuses its
    /// slots: the buffer lent next is the one the peer finished with longest ago, whose lines
    /// have had the most time to leave the peer's nearest cache, so the writes that fill it do
    /// not snoop lines the peer is reading now, and a stream walks its buffers in one order.
    /// Measured against the last-in, first-out order it had before: the zero-copy stream about
    /// 1.4x as fast on an Intel host (docs/performance-history.md, "buffers lent in the order
    /// they came back").
    cache: VecDeque<u32>,
    /// The bitmap word the next refill looks at first.
    next_word: usize,
}

impl fmt::Debug for Lender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lender")
            .field("layout", &self.pool.layout)
            .field("cached", &self.cache.len())
            .finish()
    }
}

impl BufferPool {
    /// A [`Lender`] over this pool: the fast path for one thread that lends buffers to the
    /// peer and takes them back.
    pub fn lender(self: &Arc<Self>) -> Lender {
        Lender {
            pool: self.clone(),
            cache: VecDeque::with_capacity(CACHE_MAX),
            next_word: 0,
        }
    }
}

/// Puts a buffer back in the cache if the fill that was writing it panics.
struct Filling<'a> {
    cache: &'a mut VecDeque<u32>,
    index: Option<u32>,
}

impl Drop for Filling<'_> {
    fn drop(&mut self) {
        if let Some(index) = self.index {
            self.cache.push_front(index);
        }
    }
}

impl Lender {
    /// The pool it lends from.
    pub fn pool(&self) -> &Arc<BufferPool> {
        &self.pool
    }

    /// Free buffers held in its cache now.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Lends a free buffer: `fill` writes the payload into the whole buffer (a view that only
    /// copies: the peer maps these bytes) and returns its length; the buffer is then marked
    /// lent and its handle returned, to send to the peer. `None` if every buffer is in use (or
    /// in other lenders' caches).
    ///
    /// # Panics
    /// If `fill` returns more than the buffer size (the buffer stays free).
    pub fn lend_with(&mut self, fill: impl FnOnce(SharedBytes<'_>) -> usize) -> Option<BufHandle> {
        self.lend_ordered::<false>(fill)
    }

    /// Loom negative control only: [`lend_with`](Self::lend_with) with the lent flag stored
    /// Relaxed (the same code, instantiated with the other ordering).
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn lend_relaxed_for_loom(
        &mut self,
        fill: impl FnOnce(SharedBytes<'_>) -> usize,
    ) -> Option<BufHandle> {
        self.lend_ordered::<true>(fill)
    }

    /// [`lend_with`](Self::lend_with), the lent flag stored Relaxed if `RELAXED`.
    #[inline(always)]
    fn lend_ordered<const RELAXED: bool>(
        &mut self,
        fill: impl FnOnce(SharedBytes<'_>) -> usize,
    ) -> Option<BufHandle> {
        let index = self.take_free()?;
        let cap = self.pool.buf_size();
        let mut filling = Filling {
            cache: &mut self.cache,
            index: Some(index),
        };
        let len = fill(self.pool.view_of(index, cap));
        assert!(
            len <= cap,
            "the fill reported {len} bytes, more than the buffer's {cap}"
        );
        filling.index = None;
        self.pool.mark_lent_ordered::<RELAXED>(index);
        Some(self.pool.handle_of(index, len as u32))
    }

    /// Lends a free buffer holding as much of `data` as fits (see
    /// [`lend_with`](Self::lend_with)); `None` if every buffer is in use.
    pub fn lend_copy(&mut self, data: &[u8]) -> Option<BufHandle> {
        self.lend_with(|spare| spare.copy_from(data))
    }

    /// Takes back a buffer the peer returned, into this lender's cache (to lend again). The
    /// handle must name a buffer of the pool that is lent out now (by this lender or by a
    /// [`Buf::lend`](super::Buf::lend)); anything else is a [`PoolError`], as for
    /// [`BufferPool::reclaim`].
    pub fn take_back(&mut self, handle: BufHandle) -> Result<(), PoolError> {
        let index = self.pool.take_loan::<false>(handle)?;
        if self.cache.len() < CACHE_MAX {
            self.cache.push_back(index);
        } else {
            self.pool.release(index);
        }
        Ok(())
    }

    /// Gives every cached buffer back to the pool, for [`BufferPool::alloc`] and other lenders
    /// to use (a program that also allocates `Buf`s from the pool calls this when its stream
    /// pauses); returns how many went. Lending again refills the cache.
    pub fn give_back(&mut self) -> usize {
        let n = self.cache.len();
        for index in self.cache.drain(..) {
            self.pool.release(index);
        }
        n
    }

    fn take_free(&mut self) -> Option<u32> {
        if let Some(index) = self.cache.pop_front() {
            return Some(index);
        }
        self.refill();
        self.cache.pop_front()
    }

    /// Takes up to `REFILL` free buffers from the first bitmap word that has any, with one
    /// read-modify-write.
    fn refill(&mut self) {
        let free = &self.pool.free;
        for k in 0..free.len() {
            let w = (self.next_word + k) % free.len();
            let word = &free[w];
            let mut cur = word.load(Relaxed);
            while cur != 0 {
                let take = lowest_bits(cur, REFILL);
                // SYNC POINT (pool-free): Acquire pairs with the Release `fetch_or` in
                // `release`: the previous owners' uses happen-before ours.
                match word.compare_exchange_weak(cur, cur & !take, Acquire, Relaxed) {
                    Ok(_) => {
                        self.next_word = w;
                        let mut bits = take;
                        while bits != 0 {
                            self.cache.push_back(w as u32 * 64 + bits.trailing_zeros());
                            bits &= bits - 1;
                        }
                        return;
                    }
                    Err(now) => cur = now,
                }
            }
        }
    }
}

/// The lowest `n` set bits of `x`.
fn lowest_bits(mut x: u64, n: u32) -> u64 {
    let mut take = 0;
    for _ in 0..n {
        if x == 0 {
            break;
        }
        let low = x & x.wrapping_neg();
        take |= low;
        x &= !low;
    }
    take
}

impl Drop for Lender {
    /// Gives every cached buffer back to the pool.
    fn drop(&mut self) {
        self.give_back();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::data::{Region, RegionOptions};

    fn pool(count: usize) -> Arc<BufferPool> {
        let region = Arc::new(Region::anonymous(count * 64, RegionOptions::new()).unwrap());
        BufferPool::new(region, 0, 64, count).unwrap()
    }

    #[test]
    fn lent_buffers_are_distinct_and_every_one_comes_back() {
        let pool = pool(100);
        let mut lender = pool.lender();
        let handles: Vec<_> = (0..100u8)
            .map(|i| lender.lend_copy(&[i; 8]).expect("a free buffer"))
            .collect();
        assert!(lender.lend_copy(b"x").is_none(), "a 101st buffer");
        let mut offsets: Vec<_> = handles.iter().map(|h| h.offset).collect();
        offsets.sort_unstable();
        offsets.dedup();
        assert_eq!(offsets.len(), 100, "a buffer lent twice");
        for (i, h) in handles.iter().enumerate() {
            let mut seen = [0u8; 8];
            pool.region().read_into(*h, &mut seen).unwrap();
            assert_eq!(seen, [i as u8; 8]);
        }
        assert_eq!(pool.free_count(), 0);
        for h in &handles {
            lender.take_back(*h).unwrap();
        }
        // 64 cached, the rest back in the pool.
        assert_eq!(lender.cached(), CACHE_MAX);
        assert_eq!(pool.free_count(), 100 - CACHE_MAX);
        drop(lender);
        assert_eq!(pool.free_count(), 100);
    }

    #[test]
    fn a_handle_is_taken_back_once_and_only_if_lent() {
        let pool = pool(4);
        let mut lender = pool.lender();
        let h = lender.lend_copy(b"abc").unwrap();
        assert_eq!(h.len, 3);
        lender.take_back(h).unwrap();
        assert_eq!(
            lender.take_back(h),
            Err(PoolError::NotLent {
                index: pool.layout().check(h).unwrap()
            })
        );
        // A handle from a hostile peer: not a buffer, too long, another region.
        let mut bad = h;
        bad.offset += 1;
        assert!(matches!(
            lender.take_back(bad),
            Err(PoolError::NotABuffer { .. })
        ));
        let mut bad = h;
        bad.len = 65;
        assert!(matches!(
            lender.take_back(bad),
            Err(PoolError::TooLong { .. })
        ));
        let mut bad = h;
        bad.region ^= 1;
        assert!(matches!(
            lender.take_back(bad),
            Err(PoolError::WrongRegion { .. })
        ));
    }

    #[test]
    fn buffers_are_lent_again_in_the_order_they_came_back() {
        let pool = pool(4);
        let mut lender = pool.lender();
        let lent: Vec<_> = (0..4u8).map(|i| lender.lend_copy(&[i]).unwrap()).collect();
        // A fresh refill lends in the pool's order.
        let offsets: Vec<_> = lent.iter().map(|h| h.offset).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
        let back = [lent[2], lent[0], lent[3], lent[1]];
        for h in back {
            lender.take_back(h).unwrap();
        }
        let again: Vec<_> = (0..4u8)
            .map(|i| lender.lend_copy(&[i]).unwrap().offset)
            .collect();
        let expect: Vec<_> = back.iter().map(|h| h.offset).collect();
        assert_eq!(again, expect, "lent again first in, first out");
    }

    #[test]
    fn a_lender_gives_its_cache_back_for_alloc() {
        let pool = pool(2);
        let mut lender = pool.lender();
        let h = lender.lend_copy(b"one").unwrap();
        lender.take_back(h).unwrap();
        // Both buffers sit in the lender's cache: `alloc` sees none until it gives them back.
        assert_eq!(lender.cached(), 2);
        assert!(pool.alloc().is_none());
        assert_eq!(lender.give_back(), 2);
        assert_eq!(pool.free_count(), 2);
        let buf = pool.alloc().expect("a buffer given back");
        // The lender refills from what is left.
        assert!(lender.lend_copy(b"two").is_some());
        assert!(
            lender.lend_copy(b"three").is_none(),
            "the other is the Buf's"
        );
        drop(buf);
    }

    #[test]
    fn lenders_and_bufs_share_the_lent_flags() {
        let pool = pool(4);
        let mut lender = pool.lender();
        // Lent by a `Buf`, taken back by the lender; lent by the lender, reclaimed as a `Buf`.
        let mut buf = pool.alloc().unwrap();
        buf.fill_from(b"from a buf");
        let h = buf.lend();
        lender.take_back(h).unwrap();
        let h = lender.lend_copy(b"from the lender").unwrap();
        let back = pool.reclaim(h).unwrap();
        assert_eq!(back.to_vec(), b"from the lender");
        assert!(lender.take_back(h).is_err(), "reclaimed already");
        drop(back);
        drop(lender);
        assert_eq!(pool.free_count(), 4);
    }

    #[test]
    fn a_fill_that_panics_or_overruns_leaves_the_buffer_free() {
        let pool = pool(4);
        let mut lender = pool.lender();
        let overrun = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            lender.lend_with(|spare| spare.len() + 1)
        }));
        assert!(overrun.is_err());
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            lender.lend_with(|_| panic!("the fill failed"))
        }));
        assert!(panicked.is_err());
        assert_eq!(lender.cached(), 4);
        // Still free, and first in line again.
        let first = lender.lend_copy(b"still free").expect("a free buffer");
        assert_eq!(first.offset, 0);
    }

    #[test]
    fn lowest_bits_takes_the_lowest() {
        assert_eq!(lowest_bits(0, 16), 0);
        assert_eq!(lowest_bits(0b1011_0100, 2), 0b0001_0100);
        assert_eq!(lowest_bits(u64::MAX, 16), 0xffff);
        assert_eq!(lowest_bits(1 << 63, 16), 1 << 63);
    }
}
