//! Buffer pools: fixed-size buffers carved from a [`Region`] and named by [`BufHandle`]s, so
//! payloads cross between processes without copying.
//!
//! The pool's bookkeeping (which buffers are free, which are lent to the peer) lives in this
//! process's private memory, never in the shared region: a peer can scribble on buffer contents
//! but cannot forge an allocation. A handle coming back from the peer is accepted only if it names
//! a whole buffer of this pool that is currently lent out ([`BufferPool::reclaim`]); anything else
//! is a [`PoolError`].
//!
//! A [`Lender`] is the pool's fast path for one thread that lends buffers and takes them back:
//! it keeps free buffers in a private cache, so that a buffer's trip to the peer and back costs
//! no read-modify-write of the shared bitmap and no reference count.
//!
//! # Memory ordering
//! Free buffers are bits in a bitmap. SYNC POINT (pool-free): freeing is a Release `fetch_or`
//! that pairs with the Acquire compare-exchange that allocates the buffer again (or the one with
//! which a [`Lender`] takes some of a word's free buffers), so everything the previous owner did
//! with the buffer happens-before the next owner touches it.
//!
//! Each buffer has a lent flag. SYNC POINT (pool-lent): lending is a Release store of the flag
//! that pairs with the AcqRel `swap` that takes it back: the lender's writes to the buffer
//! happen-before the taker uses it, and of two takers of one handle exactly one sees the flag.
//! A store suffices: while a buffer is not lent, the only other writers of its flag are takers
//! holding a stale or forged handle, whose `swap(0)` writes 0 over 0 and so cannot undo the
//! owner's store; and the owner never stores over a 1 (its flag was cleared, by the `swap` that
//! gave it the buffer or before the buffer was freed, in an order it is synchronised with).

use std::fmt;
use std::sync::Arc;

use super::region::{Claim, ClaimKind, Region, RegionError};
use super::volatile::SharedBytes;
use super::BufHandle;
use crate::sync::{AtomicU32, AtomicU64, AtomicU8, Ordering::*};

mod buf;
mod lender;

pub use buf::Buf;
pub use lender::Lender;

/// Why a pool could not be built or a handle was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolError {
    /// The buffer size is 0, or 4 GiB or more (a length is a `u32`).
    #[error("buffer size {buf_size} must be 1 byte to 4 GiB - 1")]
    BufSize {
        /// The size asked for.
        buf_size: usize,
    },
    /// The buffer count is 0 or over 2^32 - 1.
    #[error("buffer count {count} must be 1..=2^32-1")]
    Count {
        /// The count asked for.
        count: usize,
    },
    /// The buffers would run past the end of the address space (an offset from a peer, say).
    #[error("{count} buffers of {buf_size} bytes at offset {offset} run past the end of the address space")]
    Overflow {
        /// Where the pool would start.
        offset: usize,
        /// Bytes per buffer.
        buf_size: u32,
        /// Buffers.
        count: u32,
    },
    /// The buffers would run past the end of the region.
    #[error("buffer pool at {start}..{end} does not fit the {region_len}-byte region")]
    OutOfRegion {
        /// Where the pool would start.
        start: u64,
        /// Where it would end.
        end: u64,
        /// The region's length.
        region_len: usize,
    },
    /// The buffers would overlap a structure this process already placed in the region (a
    /// ring, a header, another pool).
    #[error("buffer pool at {start}..{end} overlaps {existing} there")]
    Overlaps {
        /// Where the pool would start.
        start: usize,
        /// Where it would end.
        end: usize,
        /// What is there.
        existing: ClaimKind,
    },
    /// The handle names another region.
    #[error("buffer handle names region {found}, the pool is in region {expected}")]
    WrongRegion {
        /// The pool's region id.
        expected: u32,
        /// The handle's region id.
        found: u32,
    },
    /// The handle does not start at a buffer of this pool.
    #[error("buffer handle offset {offset} is not the start of a buffer in this pool")]
    NotABuffer {
        /// The offset in the handle.
        offset: u64,
    },
    /// The handle's length exceeds the buffer size.
    #[error("buffer handle length {len} exceeds the pool's buffer size {buf_size}")]
    TooLong {
        /// The length in the handle.
        len: u32,
        /// The pool's buffer size.
        buf_size: u32,
    },
    /// The handle names a buffer that is not lent out (never lent, or already returned).
    #[error("buffer {index} is not lent out (returned twice, or never lent)")]
    NotLent {
        /// Index of the buffer.
        index: u32,
    },
}

/// Where a pool's buffers lie in their region: what a peer needs to check handles against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLayout {
    /// The region's id.
    pub region: u32,
    /// Offset of buffer 0 in the region.
    pub base: u64,
    /// Bytes per buffer.
    pub buf_size: u32,
    /// Number of buffers.
    pub count: u32,
}

impl PoolLayout {
    /// Total bytes the buffers span.
    pub fn span(&self) -> u64 {
        u64::from(self.buf_size) * u64::from(self.count)
    }

    /// Checks that `handle` names (a prefix of) one whole buffer of this pool; returns its index.
    pub fn check(&self, handle: BufHandle) -> Result<u32, PoolError> {
        if handle.region != self.region {
            return Err(PoolError::WrongRegion {
                expected: self.region,
                found: handle.region,
            });
        }
        let rel = handle
            .offset
            .checked_sub(self.base)
            .filter(|rel| *rel < self.span() && rel % u64::from(self.buf_size) == 0)
            .ok_or(PoolError::NotABuffer {
                offset: handle.offset,
            })?;
        if handle.len > self.buf_size {
            return Err(PoolError::TooLong {
                len: handle.len,
                buf_size: self.buf_size,
            });
        }
        Ok((rel / u64::from(self.buf_size)) as u32)
    }
}

/// Fixed-size buffers in a region, handed out as owned [`Buf`]s that return to the pool on drop.
///
/// The pool is `Sync`: any thread may allocate, and a `Buf` may be dropped anywhere.
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use subring_planes::data::{BufferPool, Region, RegionOptions};
/// let region = Arc::new(Region::memfd("pool", 64 * 1024, RegionOptions::new())?);
/// let pool = BufferPool::new(region.clone(), 0, 4096, 16)?;
/// let mut buf = pool.alloc().expect("a free buffer");
/// buf.fill_from(b"hello");
/// let handle = buf.lend(); // now the peer's: send `handle` in a ring entry
/// let mut seen = [0u8; 5];
/// region.read_into(handle, &mut seen)?; // what the peer would see
/// assert_eq!(&seen, b"hello");
/// let back = pool.reclaim(handle)?; // the peer gave it back
/// assert_eq!(back.to_vec(), b"hello"); // a copy: the peer maps these bytes
/// assert!(pool.reclaim(handle).is_err()); // not lent any more
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BufferPool {
    region: Arc<Region>,
    layout: PoolLayout,
    /// Bit set: buffer is free.
    free: Box<[AtomicU64]>,
    /// One per buffer, 1 while it is lent to the peer (a flag, not a bit: its owner sets it
    /// with a plain store, while reclaims of other buffers may clear their own flags).
    lent: Box<[AtomicU8]>,
    /// Word to start the next search at (a hint; any value is correct).
    hint: AtomicU32,
    _claim: Claim,
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("layout", &self.layout)
            .field("free", &self.free_count())
            .finish()
    }
}

/// A free bitmap with all `count` buffers free.
fn all_free(count: u32) -> Box<[AtomicU64]> {
    let words = count.div_ceil(64) as usize;
    (0..words)
        .map(|w| {
            let in_word = (count as usize - w * 64).min(64);
            let mask = if in_word == 64 {
                u64::MAX
            } else {
                (1u64 << in_word) - 1
            };
            AtomicU64::new(mask)
        })
        .collect()
}

impl BufferPool {
    /// Carves `count` buffers of `buf_size` bytes from `region`, starting at `offset`.
    pub fn new(
        region: Arc<Region>,
        offset: usize,
        buf_size: usize,
        count: usize,
    ) -> Result<Arc<Self>, PoolError> {
        let buf_size = u32::try_from(buf_size)
            .ok()
            .filter(|s| *s > 0)
            .ok_or(PoolError::BufSize { buf_size })?;
        let count = u32::try_from(count)
            .ok()
            .filter(|c| *c > 0)
            .ok_or(PoolError::Count { count })?;
        let layout = PoolLayout {
            region: region.id(),
            base: offset as u64,
            buf_size,
            count,
        };
        // Checked: the offset may come from a peer (a server's welcome).
        let end = usize::try_from(layout.span())
            .ok()
            .and_then(|span| offset.checked_add(span))
            .ok_or(PoolError::Overflow {
                offset,
                buf_size,
                count,
            })?;
        let claim = region
            .claim(offset..end, ClaimKind::Exclusive)
            .map_err(|e| match e {
                RegionError::InUse { existing, .. } => PoolError::Overlaps {
                    start: offset,
                    end,
                    existing,
                },
                // `claim` fails otherwise only on its bounds check.
                _ => PoolError::OutOfRegion {
                    start: offset as u64,
                    end: end as u64,
                    region_len: region.len(),
                },
            })?;
        Ok(Arc::new(BufferPool {
            _claim: claim,
            region,
            layout,
            free: all_free(count),
            lent: (0..count).map(|_| AtomicU8::new(0)).collect(),
            hint: AtomicU32::new(0),
        }))
    }

    /// Loom negative control only: [`alloc`](Self::alloc) with a Relaxed compare-exchange
    /// on the free bitmap (the same code, instantiated with the other ordering).
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn alloc_relaxed_for_loom(self: &Arc<Self>) -> Option<Buf> {
        self.alloc_ordered::<true>()
    }

    /// Loom negative control only: frees `buf` with a Relaxed `fetch_or` on the free bitmap.
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn free_relaxed_for_loom(buf: Buf) {
        let buf = std::mem::ManuallyDrop::new(buf);
        buf.pool.release_ordered::<true>(buf.index);
        // SAFETY: `buf` is never used again and its destructor never runs, so the `Arc` is
        // moved out exactly once.
        drop(unsafe { std::ptr::read(&buf.pool) });
    }

    /// Loom negative control only: [`reclaim`](Self::reclaim) that tests the lent flag with a
    /// load and clears it with a store instead of one read-modify-write (two reclaims of one
    /// handle can both win).
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn reclaim_split_for_loom(self: &Arc<Self>, handle: BufHandle) -> Result<Buf, PoolError> {
        self.reclaim_with::<true>(handle)
    }

    /// Where the buffers lie, to tell a peer.
    pub fn layout(&self) -> PoolLayout {
        self.layout
    }

    /// The region the buffers live in.
    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// Bytes per buffer.
    pub fn buf_size(&self) -> usize {
        self.layout.buf_size as usize
    }

    /// Number of buffers.
    pub fn count(&self) -> usize {
        self.layout.count as usize
    }

    /// Free buffers now (a snapshot).
    pub fn free_count(&self) -> usize {
        self.free
            .iter()
            .map(|w| w.load(Relaxed).count_ones() as usize)
            .sum()
    }

    /// Takes a free buffer (length 0, capacity [`buf_size`](Self::buf_size)), or `None` if all
    /// are in use.
    pub fn alloc(self: &Arc<Self>) -> Option<Buf> {
        self.alloc_ordered::<false>()
    }

    /// [`alloc`](Self::alloc), its compare-exchange Relaxed if `RELAXED` (a loom negative
    /// control's breakage; the constant folds away).
    #[inline(always)]
    fn alloc_ordered<const RELAXED: bool>(self: &Arc<Self>) -> Option<Buf> {
        let acquire = if RELAXED { Relaxed } else { Acquire };
        let words = self.free.len();
        let start = self.hint.load(Relaxed) as usize % words;
        for k in 0..words {
            let w = (start + k) % words;
            let word = &self.free[w];
            let mut cur = word.load(Relaxed);
            while cur != 0 {
                let bit = cur.trailing_zeros();
                // SYNC POINT (pool-free): Acquire pairs with the Release `fetch_or` in `release`.
                match word.compare_exchange_weak(cur, cur & !(1 << bit), acquire, Relaxed) {
                    Ok(_) => {
                        self.hint.store(w as u32, Relaxed);
                        return Some(Buf {
                            pool: self.clone(),
                            index: w as u32 * 64 + bit,
                            len: 0,
                        });
                    }
                    Err(now) => cur = now,
                }
            }
        }
        None
    }

    fn release(&self, index: u32) {
        self.release_ordered::<false>(index);
    }

    /// [`release`](Self::release), Relaxed if `RELAXED` (a loom negative control's breakage).
    #[inline(always)]
    fn release_ordered<const RELAXED: bool>(&self, index: u32) {
        let release = if RELAXED { Relaxed } else { Release };
        // SYNC POINT (pool-free): Release pairs with the Acquire compare-exchange in `alloc`.
        let was = self.free[(index / 64) as usize].fetch_or(1 << (index % 64), release);
        debug_assert!(was & (1 << (index % 64)) == 0, "buffer {index} freed twice");
    }

    /// Marks buffer `index` lent. Only its owner calls this (the buffer is allocated and not
    /// lent), so a store suffices: a taker with a stale handle may `swap` the flag meanwhile,
    /// but only writes 0 over 0 (see the module's memory-ordering notes).
    #[inline(always)]
    fn mark_lent(&self, index: u32) {
        self.mark_lent_ordered::<false>(index);
    }

    /// [`mark_lent`](Self::mark_lent), Relaxed if `RELAXED` (a loom negative control's
    /// breakage).
    #[inline(always)]
    fn mark_lent_ordered<const RELAXED: bool>(&self, index: u32) {
        let order = if RELAXED { Relaxed } else { Release };
        // SYNC POINT (pool-lent): Release pairs with the AcqRel `swap` in `take_lent`: the
        // lender's writes to the buffer happen-before the taker's use of it.
        self.lent[index as usize].store(1, order);
    }

    /// Clears buffer `index`'s lent flag; returns whether it was set. One read-modify-write, so
    /// of two reclaims of the same handle (a peer that returned it twice, taken by two threads)
    /// exactly one sees it set.
    /// `SPLIT` is a loom negative control's breakage: a load and a store instead.
    #[inline(always)]
    fn take_lent<const SPLIT: bool>(&self, index: u32) -> bool {
        let flag = &self.lent[index as usize];
        if SPLIT {
            let was = flag.load(Acquire);
            flag.store(0, Release);
            return was != 0;
        }
        // SYNC POINT (pool-lent): AcqRel pairs with `mark_lent`'s Release store: the reclaimer
        // that wins is ordered after the lender's last use of the buffer.
        flag.swap(0, AcqRel) != 0
    }

    /// Takes back the buffer a returned handle names: the handle must name a whole buffer of
    /// this pool ([`PoolLayout::check`]) whose lent flag is set, which this clears; returns its
    /// index. What [`reclaim`](Self::reclaim) and [`Lender::take_back`] share.
    #[inline(always)]
    fn take_loan<const SPLIT: bool>(&self, handle: BufHandle) -> Result<u32, PoolError> {
        let index = self.layout.check(handle)?;
        if !self.take_lent::<SPLIT>(index) {
            return Err(PoolError::NotLent { index });
        }
        Ok(index)
    }

    fn offset_of(&self, index: u32) -> u64 {
        self.layout.base + u64::from(index) * u64::from(self.layout.buf_size)
    }

    /// Where buffer `index` (one of this pool's) starts in this process.
    fn ptr_of(&self, index: u32) -> *mut u8 {
        debug_assert!(index < self.layout.count);
        // SAFETY: the buffer's offset is inside the region (checked when the pool was built).
        unsafe { self.region.as_ptr().add(self.offset_of(index) as usize) }
    }

    /// The first `len` bytes (at most the buffer size) of buffer `index`, as a view that only
    /// copies. The caller owns the buffer (this process hands it to nobody else meanwhile).
    fn view_of(&self, index: u32, len: usize) -> SharedBytes<'_> {
        debug_assert!(len <= self.buf_size());
        let ptr =
            std::ptr::NonNull::new(self.ptr_of(index)).expect("a mapping is never at address 0");
        // SAFETY: `len <= buf_size` bytes from the buffer's start lie inside the region, which
        // `self` keeps mapped while the view borrows it; this module makes no reference to them.
        unsafe { SharedBytes::new(ptr, len) }
    }

    /// The handle naming the first `len` bytes of buffer `index`.
    fn handle_of(&self, index: u32, len: u32) -> BufHandle {
        BufHandle {
            offset: self.offset_of(index),
            len,
            region: self.layout.region,
        }
    }

    /// Takes back a buffer that was [lent](Buf::lend) to the peer, from the handle the peer
    /// returned. The handle must name a buffer of this pool that is lent out now; its length
    /// (at most the buffer size) becomes the buffer's length.
    pub fn reclaim(self: &Arc<Self>, handle: BufHandle) -> Result<Buf, PoolError> {
        self.reclaim_with::<false>(handle)
    }

    #[inline(always)]
    fn reclaim_with<const SPLIT: bool>(
        self: &Arc<Self>,
        handle: BufHandle,
    ) -> Result<Buf, PoolError> {
        let index = self.take_loan::<SPLIT>(handle)?;
        Ok(Buf {
            pool: self.clone(),
            index,
            len: handle.len,
        })
    }
}
