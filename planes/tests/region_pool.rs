//! Regions (memfd seals, received fds, bounds) and buffer pools (ownership, lending, hostile
//! handles).
#![cfg(not(loom))]

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use subring_planes::data::{
    Backing, BufHandle, BufferPool, ClaimKind, PoolError, Region, RegionError, RegionOptions,
    RingError, HUGE_PAGE_SIZE,
};

fn dup(fd: std::os::fd::BorrowedFd<'_>) -> OwnedFd {
    fd.try_clone_to_owned().unwrap()
}

#[test]
fn memfd_is_sealed_and_shared() {
    let region = Region::memfd("seal-test", 8192, RegionOptions::new()).unwrap();
    assert_eq!(region.backing(), Backing::Memfd);
    let fd = region.fd().unwrap();
    let seals = SealFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GET_SEALS).unwrap());
    assert!(seals.contains(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL));
    assert!(
        nix::unistd::ftruncate(fd, 0).is_err(),
        "a sealed memfd must not shrink"
    );

    // A second mapping of the same fd sees the same bytes.
    let other = Region::from_fd(dup(fd), Some(8192), RegionOptions::new()).unwrap();
    assert_eq!(other.backing(), Backing::Received);
    // SAFETY: offset 100 is inside both 8192-byte mappings.
    unsafe { region.as_ptr().add(100).write_volatile(42) };
    // SAFETY: as above.
    assert_eq!(unsafe { other.as_ptr().add(100).read_volatile() }, 42);
}

#[test]
fn received_fd_must_be_sealed_and_sized() {
    let unsealed = memfd_create("unsealed", MFdFlags::MFD_CLOEXEC).unwrap();
    nix::unistd::ftruncate(&unsealed, 4096).unwrap();
    let err = Region::from_fd(unsealed, Some(4096), RegionOptions::new()).unwrap_err();
    assert!(matches!(err, RegionError::NotSealed { .. }), "{err}");

    let region = Region::memfd("sized", 4096, RegionOptions::new()).unwrap();
    let err =
        Region::from_fd(dup(region.fd().unwrap()), Some(8192), RegionOptions::new()).unwrap_err();
    assert!(
        matches!(
            err,
            RegionError::SizeMismatch {
                expected: 8192,
                actual: 4096
            }
        ),
        "{err}"
    );
    // Without an expected size, the whole file is mapped.
    let whole = Region::from_fd(dup(region.fd().unwrap()), None, RegionOptions::new()).unwrap();
    assert_eq!(whole.len(), 4096);
}

#[test]
fn bad_lengths_are_errors() {
    for len in [0, usize::MAX] {
        assert!(matches!(
            Region::memfd("zero", len, RegionOptions::new()),
            Err(RegionError::InvalidLength { .. })
        ));
        assert!(matches!(
            Region::anonymous(len, RegionOptions::new()),
            Err(RegionError::InvalidLength { .. })
        ));
    }
}

#[test]
fn huge_pages_map_or_say_why_not() {
    match Region::anonymous(4096, RegionOptions::new().huge_pages(true)) {
        Ok(region) => assert_eq!(region.len(), HUGE_PAGE_SIZE),
        Err(e) => {
            assert!(matches!(e, RegionError::HugePagesUnavailable { .. }), "{e}");
        }
    }
    match Region::memfd("huge", 4096, RegionOptions::new().huge_pages(true)) {
        Ok(region) => assert_eq!(region.len(), HUGE_PAGE_SIZE),
        Err(e) => assert!(matches!(e, RegionError::HugePagesUnavailable { .. }), "{e}"),
    }
}

#[test]
fn handles_from_a_peer_are_bounds_checked() {
    let region = Region::memfd("handles", 4096, RegionOptions::new().id(7)).unwrap();
    let ok = BufHandle {
        offset: 4000,
        len: 96,
        region: 7,
    };
    region.check_handle(ok).unwrap();
    for bad in [
        BufHandle {
            offset: 4000,
            len: 97,
            region: 7,
        },
        BufHandle {
            offset: 4096,
            len: 1,
            region: 7,
        },
        BufHandle {
            offset: u64::MAX,
            len: 2,
            region: 7,
        },
        BufHandle {
            offset: u64::MAX - 1,
            len: u32::MAX,
            region: 7,
        },
    ] {
        assert!(
            matches!(
                region.check_handle(bad),
                Err(RegionError::OutOfBounds { .. })
            ),
            "{bad:?} accepted"
        );
        assert!(region.read_into(bad, &mut [0u8; 8]).is_err());
    }
    assert!(matches!(
        region.check_handle(BufHandle { region: 8, ..ok }),
        Err(RegionError::WrongRegion {
            expected: 7,
            found: 8
        })
    ));
    let mut dst = [0u8; 200];
    assert_eq!(region.read_into(ok, &mut dst).unwrap(), 96);
    assert_eq!(
        region.read_into(ok, &mut dst[..10]).unwrap(),
        10,
        "a short destination gets a prefix"
    );
}

fn pool(count: usize) -> (Arc<Region>, Arc<BufferPool>) {
    let region = Arc::new(Region::memfd("pool", 64 * 1024, RegionOptions::new().id(3)).unwrap());
    let pool = BufferPool::new(region.clone(), 4096, 1024, count).unwrap();
    (region, pool)
}

#[test]
fn pool_hands_out_each_buffer_once() {
    let (_region, pool) = pool(40);
    let bufs: Vec<_> = std::iter::from_fn(|| pool.alloc()).collect();
    assert_eq!(bufs.len(), 40);
    let mut offsets: Vec<u64> = bufs.iter().map(|b| b.handle().offset).collect();
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len(), 40);
    assert!(offsets
        .iter()
        .all(|o| (o - 4096) % 1024 == 0 && *o < 4096 + 40 * 1024));
    assert_eq!(pool.free_count(), 0);
    drop(bufs);
    assert_eq!(pool.free_count(), 40);
}

#[test]
fn pool_layout_is_checked() {
    let region = Arc::new(Region::memfd("small", 8192, RegionOptions::new()).unwrap());
    let cases = [
        (
            0,
            4096,
            3,
            PoolError::OutOfRegion {
                start: 0,
                end: 12288,
                region_len: 8192,
            },
        ),
        (
            4096,
            8192,
            1,
            PoolError::OutOfRegion {
                start: 4096,
                end: 12288,
                region_len: 8192,
            },
        ),
        (0, 0, 4, PoolError::BufSize { buf_size: 0 }),
        (0, 64, 0, PoolError::Count { count: 0 }),
    ];
    for (offset, size, count, want) in cases {
        let err = BufferPool::new(region.clone(), offset, size, count).unwrap_err();
        assert_eq!(err, want, "({offset},{size},{count}): {err}");
    }
}

#[test]
fn lend_and_reclaim() {
    let (region, pool) = pool(4);
    let mut buf = pool.alloc().unwrap();
    assert_eq!(buf.fill_from(b"zero-copy"), 9);
    let handle = buf.lend();
    assert_eq!(pool.free_count(), 3, "a lent buffer stays allocated");
    let mut seen = [0u8; 9];
    region.read_into(handle, &mut seen).unwrap();
    assert_eq!(&seen, b"zero-copy");

    // The peer returns a shorter length: fine. Twice: refused.
    let back = pool.reclaim(BufHandle { len: 4, ..handle }).unwrap();
    assert_eq!(back.to_vec(), b"zero");
    assert_eq!(
        pool.reclaim(handle).unwrap_err(),
        PoolError::NotLent {
            index: back.index()
        }
    );
    drop(back);
    assert_eq!(pool.free_count(), 4);
}

#[test]
fn hostile_handles_are_refused() {
    let (_region, pool) = pool(4);
    let held = pool.alloc().unwrap();
    let lent = pool.alloc().unwrap().lend();
    let cases = [
        (BufHandle { region: 9, ..lent }, "WrongRegion"),
        (
            BufHandle {
                offset: lent.offset + 1,
                ..lent
            },
            "NotABuffer",
        ),
        (BufHandle { offset: 0, ..lent }, "NotABuffer"),
        (
            BufHandle {
                offset: 4096 + 4 * 1024,
                ..lent
            },
            "NotABuffer",
        ),
        (
            BufHandle {
                offset: u64::MAX,
                ..lent
            },
            "NotABuffer",
        ),
        (BufHandle { len: 1025, ..lent }, "TooLong"),
        // A buffer this process holds, never lent: reclaiming it would alias `held`.
        (held.handle(), "NotLent"),
    ];
    for (handle, what) in cases {
        let err = pool.reclaim(handle).unwrap_err();
        assert!(
            format!("{err:?}").starts_with(what),
            "{handle:?}: expected {what}, got {err:?}"
        );
    }
    // The genuine handle still works after all that.
    assert!(pool.reclaim(lent).is_ok());
}

#[test]
fn pool_is_exclusive_across_threads() {
    let (_region, pool) = pool(8);
    let threads: Vec<_> = (1..=2u8)
        .map(|id| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                for _ in 0..50_000 {
                    if let Some(mut buf) = pool.alloc() {
                        buf.set_len(buf.capacity());
                        buf.fill_from(&[id; 1024]);
                        std::hint::spin_loop();
                        assert!(
                            buf.to_vec().iter().all(|b| *b == id),
                            "buffer shared by two owners"
                        );
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(pool.free_count(), 8);
    let _ = pool.region().fd().unwrap().as_fd();
}

#[test]
fn structures_cannot_alias_in_one_process() {
    use subring_planes::data::{Ring, RingError, RingLayout};
    let layout = RingLayout::of::<u64, subring_planes::data::Indexed>(8).unwrap();
    let region = Arc::new(Region::memfd("claims", 1 << 16, RegionOptions::new()).unwrap());
    drop(Ring::<u64>::create(region.clone(), 0, 8).unwrap());
    let producer = Ring::<u64>::attach(region.clone(), 0, 8)
        .unwrap()
        .into_producer()
        .unwrap();
    // A second producer of the same ring would race on the slots: refused.
    let err = Ring::<u64>::attach(region.clone(), 0, 8)
        .unwrap()
        .into_producer()
        .unwrap_err();
    assert!(
        matches!(
            err,
            RingError::Region(RegionError::InUse {
                existing: ClaimKind::RingProducer,
                ..
            })
        ),
        "{err}"
    );
    // One consumer is fine; a second is not.
    let consumer = Ring::<u64>::attach(region.clone(), 0, 8)
        .unwrap()
        .into_consumer()
        .unwrap();
    assert!(Ring::<u64>::attach(region.clone(), 0, 8)
        .unwrap()
        .into_consumer()
        .is_err());
    // A pool over the ring's slots is refused; one after the ring is fine.
    let err = BufferPool::new(region.clone(), 0, 4096, 1).unwrap_err();
    assert!(matches!(err, PoolError::Overlaps { .. }), "{err}");
    let after = layout.size.next_multiple_of(4096);
    let pool = BufferPool::new(region.clone(), after, 4096, 2).unwrap();
    assert!(
        BufferPool::new(region.clone(), after + 4096, 4096, 1).is_err(),
        "pools may not overlap"
    );
    // Claims end with their owners.
    drop((producer, consumer, pool));
    Ring::<u64>::attach(region.clone(), 0, 8)
        .unwrap()
        .split()
        .unwrap();
    BufferPool::new(region, after, 4096, 2).unwrap();
}

#[test]
fn alignment_beyond_a_page_is_checked_on_the_address() {
    #[repr(C, align(8192))]
    #[derive(Debug, Clone, Copy, bytemuck::Zeroable, bytemuck::Pod)]
    struct Big([u8; 4096], [u8; 4096]);
    use subring_planes::data::Ring;
    // Anonymous mappings are only page-aligned: either this one happens to be 8 KiB-aligned and
    // the ring works, or the misalignment is reported; never a misaligned access.
    match Ring::<Big>::with_capacity(1) {
        Ok((mut tx, mut rx)) => {
            tx.push(Big([7; 4096], [9; 4096])).unwrap();
            assert_eq!(rx.pop().unwrap().unwrap().1[4095], 9);
        }
        Err(e) => assert!(
            matches!(e, RingError::Region(RegionError::Misaligned { .. })),
            "{e}"
        ),
    }
}

#[test]
fn lending_a_buffer_keeps_no_reference_to_the_pool() {
    let region = Arc::new(Region::memfd("lend-refs", 16 * 1024, RegionOptions::new()).unwrap());
    let pool = BufferPool::new(region, 0, 4096, 4).unwrap();
    let handle = pool.alloc().unwrap().lend();
    assert_eq!(
        Arc::strong_count(&pool),
        1,
        "a lent buffer must not pin the pool"
    );
    let buf = pool.reclaim(handle).unwrap();
    assert_eq!(Arc::strong_count(&pool), 2);
    drop(buf);
    assert_eq!(Arc::strong_count(&pool), 1);
}

/// Every structure a peer can place is claimed whole, headers included: a small pool over a
/// ring's or a queue pair's header (atomic words another thread writes) is refused, and a
/// pool offset from a peer that overflows is an error, not a panic.
#[test]
fn headers_are_claimed_too() {
    use subring_planes::data::Ring;
    use subring_planes::pair::{self, AppSide, PairConfig, PairLayout, PairSignals};
    let region = Arc::new(Region::memfd("headers", 1 << 16, RegionOptions::new()).unwrap());
    drop(Ring::<u64>::create(region.clone(), 0, 8).unwrap());
    let producer = Ring::<u64>::attach(region.clone(), 0, 8)
        .unwrap()
        .into_producer()
        .unwrap();
    // 64 bytes at offset 0: the ring's header, not its slots.
    let err = BufferPool::new(region.clone(), 0, 64, 1).unwrap_err();
    assert!(
        matches!(
            err,
            PoolError::Overlaps {
                existing: ClaimKind::RingProducer,
                ..
            }
        ),
        "{err}"
    );
    drop(producer);

    let config = PairConfig::default();
    let region = Arc::new(Region::memfd("pair", 1 << 16, RegionOptions::new()).unwrap());
    pair::create::<u64, u64>(&region, 0, &config).unwrap();
    let app =
        AppSide::<u64, u64>::attach(region.clone(), 0, &config, PairSignals::default()).unwrap();
    for offset in [0, 64] {
        let err = BufferPool::new(region.clone(), offset, 64, 1).unwrap_err();
        assert!(
            matches!(
                err,
                PoolError::Overlaps {
                    existing: ClaimKind::Shared,
                    ..
                }
            ),
            "offset {offset}: {err}"
        );
    }
    let after = PairLayout::of::<u64, u64>(&config)
        .unwrap()
        .size
        .next_multiple_of(64);
    BufferPool::new(region.clone(), after, 64, 4).unwrap();

    // Offsets a hostile peer could send: refused with an error in debug builds too.
    let err = BufferPool::new(region.clone(), usize::MAX, 64, 2).unwrap_err();
    assert!(matches!(err, PoolError::Overflow { .. }), "{err}");
    let err = BufferPool::new(region.clone(), usize::MAX - 64, 64, 1).unwrap_err();
    assert!(matches!(err, PoolError::OutOfRegion { .. }), "{err}");
    drop(app);
}
