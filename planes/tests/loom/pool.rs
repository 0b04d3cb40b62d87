//! The buffer pool's free bitmap, lent flags and lenders.

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

/// The pool's lent flags: a buffer is lent (its handle goes to the peer), and the peer returns
/// the handle twice (a buggy or hostile peer), the two copies taken by two threads of the
/// lender, each calling `reclaim`. Exactly one gets the buffer back; the other is told it is
/// not lent. The winner writes a loom cell the buffer owns (after the lender's write before
/// lending), so two winners at once, or a winner not ordered after the lender, is reported.
/// `SPLIT` (the negative control) reclaims with a load and a store of the flag instead of one
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

/// Negative control: `reclaim` that tests the lent flag with a load and clears it with a store
/// lets both threads win the same buffer; their writes to its cell race.
#[test]
#[should_panic(expected = "Causality violation")]
fn negative_control_split_reclaim_is_caught() {
    pool_reclaim_exclusive::<true>();
}

/// A lender's loan: one thread writes a buffer and lends it ([`Lender::lend_with`]: the lent
/// flag is a plain Release store, not a read-modify-write), another takes it back
/// ([`Lender::take_back`], a `swap`) once a Relaxed word says it was sent, and writes the buffer.
/// The word stands for the ring without its ordering (the taker knows the handle), so only the
/// flag orders the two: a taker not ordered after the lender's write is reported. `RELAXED`
/// (the negative control) stores the flag Relaxed.
///
/// Not modelled: a taker with a stale handle whose `swap` races the lender's store (it writes
/// 0 over 0, so the store stands). loom mis-models a plain store racing a read-modify-write of
/// the same word (tokio-rs/loom#254: it lets every `swap` around a store of 1, even one after
/// joining the storing thread, read 0), so that case is argued in the pool's memory-ordering
/// notes instead.
fn lender_loan<const RELAXED: bool>() {
    model(move || {
        let region = Arc::new(Region::anonymous(4096, RegionOptions::new()).unwrap());
        let pool = BufferPool::new(region.clone(), 0, 64, 1).unwrap();
        let owner = Arc::new(UnsafeCell::new(0u32));
        let sent = Arc::new(loom::sync::atomic::AtomicU32::new(0));
        let lending = {
            let (pool, owner, sent) = (pool.clone(), owner.clone(), sent.clone());
            thread::spawn(move || {
                let mut lender = pool.lender();
                let fill = |_: subring_planes::data::SharedBytes<'_>| {
                    // SAFETY: the cell is the buffer's, and this thread owns the buffer.
                    owner.with_mut(|o| unsafe { *o = 1 });
                    0
                };
                let lent = if RELAXED {
                    lender.lend_relaxed_for_loom(fill)
                } else {
                    lender.lend_with(fill)
                };
                assert!(lent.is_some(), "the pool's one buffer");
                sent.store(1, Ordering::Relaxed);
            })
        };
        let taking = {
            let (pool, owner, sent) = (pool.clone(), owner.clone(), sent.clone());
            thread::spawn(move || {
                let mut lender = pool.lender();
                let handle = subring_planes::data::BufHandle {
                    offset: 0,
                    len: 0,
                    region: region.id(),
                };
                while sent.load(Ordering::Relaxed) == 0 {
                    thread::yield_now();
                }
                // loom lets this read-modify-write see the flag's store once it has seen the
                // word's (a real machine may not without a Release/Acquire pair on the word,
                // which a ring provides).
                lender.take_back(handle).expect("sent, so lent");
                // SAFETY: the cell is the buffer's, and we own the buffer (taken back).
                owner.with_mut(|o| unsafe { *o = 2 });
            })
        };
        lending.join().unwrap();
        taking.join().unwrap();
        assert_eq!(
            pool.free_count(),
            1,
            "the taker's dropped lender gave it back"
        );
    });
}

#[test]
fn lender_loan_orders_the_taker_after_the_lender() {
    lender_loan::<false>();
}

/// Negative control: a lent flag stored Relaxed lets the taker write the buffer without being
/// ordered after the lender's write.
#[test]
#[should_panic(expected = "Causality violation")]
fn negative_control_relaxed_lent_flag_is_caught() {
    lender_loan::<true>();
}

/// A lender and `alloc` share the pool's one buffer: a lender takes it from the free bitmap
/// (its refill's compare-exchange), lends it, takes it back into its cache and, dropped, gives
/// it back to the bitmap; another thread allocates it with `alloc` and drops it. Each owner
/// writes the buffer's cell, so two owners at once, or one not ordered after the other's
/// release, is reported.
#[test]
fn lender_and_alloc_share_a_buffer_exclusively() {
    model(|| {
        let region = Arc::new(Region::anonymous(4096, RegionOptions::new()).unwrap());
        let pool = BufferPool::new(region, 0, 64, 1).unwrap();
        let owner = Arc::new(UnsafeCell::new(0u32));
        let lending = {
            let (pool, owner) = (pool.clone(), owner.clone());
            thread::spawn(move || {
                let mut lender = pool.lender();
                let handle = loop {
                    let fill = |_: subring_planes::data::SharedBytes<'_>| {
                        // SAFETY: the cell is the buffer's, and this thread owns the buffer.
                        owner.with_mut(|o| unsafe { *o = 1 });
                        0
                    };
                    match lender.lend_with(fill) {
                        Some(h) => break h,
                        None => thread::yield_now(),
                    }
                };
                lender.take_back(handle).unwrap();
                assert_eq!(lender.cached(), 1);
            })
        };
        let allocating = {
            let (pool, owner) = (pool.clone(), owner.clone());
            thread::spawn(move || loop {
                if let Some(buf) = pool.alloc() {
                    // SAFETY: the cell is the buffer's, and we own the buffer.
                    owner.with_mut(|o| unsafe { *o = 2 });
                    drop(buf);
                    break;
                }
                thread::yield_now();
            })
        };
        lending.join().unwrap();
        allocating.join().unwrap();
        assert_eq!(pool.free_count(), 1);
    });
}
