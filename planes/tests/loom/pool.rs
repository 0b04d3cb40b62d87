//! The buffer pool's free and lent bitmaps.

use super::*;

/// The buffer pool's free bitmap: two threads allocate, use and free buffers from a pool of one
/// buffer. Each use writes a loom cell owned by that buffer, so two owners at once, or a second
/// owner not ordered after the first one's free, is reported.
/// `RELAXED` (the negative control) allocates and frees with Relaxed orderings on the bitmap.
fn pool_exclusive<const RELAXED: bool>() {
    model(move || {
        let region = Arc::new(Region::anonymous(4096, RegionOptions::new()).unwrap());
        let pool = BufferPool::new(region, 0, 64, 1).unwrap();
        let owner = Arc::new(UnsafeCell::new(0u32));
        let threads: Vec<_> = (1..=2u32)
            .map(|id| {
                let (pool, owner) = (pool.clone(), owner.clone());
                thread::spawn(move || loop {
                    let buf = if RELAXED {
                        pool.alloc_relaxed_for_loom()
                    } else {
                        pool.alloc()
                    };
                    if let Some(buf) = buf {
                        assert_eq!(buf.index(), 0);
                        // SAFETY: the cell is the buffer's, and we own the buffer: loom reports
                        // any access that this ownership does not order after the last one.
                        owner.with_mut(|o| unsafe { *o = id });
                        if RELAXED {
                            BufferPool::free_relaxed_for_loom(buf);
                        } else {
                            drop(buf);
                        }
                        break;
                    }
                    thread::yield_now();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(pool.free_count(), 1);
    });
}

#[test]
fn pool_alloc_free_exclusive() {
    pool_exclusive::<false>();
}

/// Negative control: Relaxed orderings on the pool's free bitmap let the next owner touch the
/// buffer without being ordered after the previous owner's use.
#[test]
#[should_panic(expected = "Causality violation")]
fn negative_control_relaxed_pool_is_caught() {
    pool_exclusive::<true>();
}

/// The pool's lent bitmap: a buffer is lent (its handle goes to the peer), and the peer returns
/// the handle twice (a buggy or hostile peer), the two copies taken by two threads of the
/// lender, each calling `reclaim`. Exactly one gets the buffer back; the other is told it is
/// not lent. The winner writes a loom cell the buffer owns (after the lender's write before
/// lending), so two winners at once, or a winner not ordered after the lender, is reported.
/// `SPLIT` (the negative control) reclaims with a load and a store instead of one
/// read-modify-write.
fn pool_reclaim_exclusive<const SPLIT: bool>() {
    model(move || {
        let region = Arc::new(Region::anonymous(4096, RegionOptions::new()).unwrap());
        let pool = BufferPool::new(region, 0, 64, 1).unwrap();
        let owner = Arc::new(UnsafeCell::new(0u32));
        let buf = pool.alloc().unwrap();
        // SAFETY: the cell is the buffer's, and this thread owns the buffer.
        owner.with_mut(|o| unsafe { *o = 9 });
        let handle = buf.lend();
        let won = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (1..=2u32)
            .map(|id| {
                let (pool, owner, won) = (pool.clone(), owner.clone(), won.clone());
                let reclaimed = move || {
                    if SPLIT {
                        pool.reclaim_split_for_loom(handle)
                    } else {
                        pool.reclaim(handle)
                    }
                };
                thread::spawn(move || match reclaimed() {
                    Ok(buf) => {
                        won.fetch_add(1, Ordering::Relaxed);
                        // SAFETY: the cell is the buffer's, and we own the buffer.
                        owner.with_mut(|o| unsafe { *o = id });
                        drop(buf);
                    }
                    Err(PoolError::NotLent { index: 0 }) => {}
                    Err(e) => panic!("reclaim: {e}"),
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            won.load(Ordering::Relaxed),
            1,
            "one handle returned twice was reclaimed twice"
        );
        assert_eq!(pool.free_count(), 1);
    });
}

#[test]
fn pool_reclaims_a_lent_buffer_once() {
    pool_reclaim_exclusive::<false>();
}

/// Negative control: `reclaim` that tests the lent bit with a load and clears it with a store
/// lets both threads win the same buffer; their writes to its cell race.
#[test]
#[should_panic(expected = "Causality violation")]
fn negative_control_split_reclaim_is_caught() {
    pool_reclaim_exclusive::<true>();
}
