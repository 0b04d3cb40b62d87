//! Fixed buffers: a memfd region registered with the ring, and regions registered and unregistered by key.

use super::*;

#[test]
fn fixed_buffers_in_a_memfd_region() {
    let dir = TempDir::new("fixed");
    let file = open(&dir.file("data"));
    let fd = target(&file);
    let region = Arc::new(Region::memfd("fixed", 1 << 20, RegionOptions::new().id(5)).unwrap());
    let pool = BufferPool::new(region.clone(), 0, 4096, 64).unwrap();
    let mut ring = Uring::builder().build().unwrap();
    ring.register_region(region.clone()).unwrap();

    // Write from a pool buffer.
    let mut out = pool.alloc().unwrap();
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    out.fill_from(&data);
    let done = run(
        &mut ring,
        vec![sub(
            1,
            Op::WriteFixed {
                fd: fd.clone(),
                buf: FixedBuf::Buf(out),
                offset: 0,
            },
        )],
    );
    assert_eq!(*done[0].result.as_ref().unwrap(), 4096);

    // Read into another pool buffer: its length becomes the bytes read.
    let into = pool.alloc().unwrap();
    let done = run(
        &mut ring,
        vec![sub(
            2,
            Op::ReadFixed {
                fd: fd.clone(),
                buf: FixedBuf::Buf(into),
                offset: 0,
            },
        )],
    );
    match &done[0].output {
        Output::Fixed(FixedBuf::Buf(b)) => assert_eq!(b.to_vec(), data),
        other => panic!("{other:?}"),
    }

    // Read by handle into memory that a second mapping of the memfd (another "process") sees.
    let other = Region::from_fd(
        region.fd().unwrap().try_clone_to_owned().unwrap(),
        Some(1 << 20),
        RegionOptions::new().id(5),
    )
    .unwrap();
    let handle = BufHandle {
        offset: 512 * 1024,
        len: 1000,
        region: 5,
    };
    let done = run(
        &mut ring,
        vec![sub(
            3,
            Op::ReadFixed {
                fd: fd.clone(),
                buf: FixedBuf::Handle(handle),
                offset: 100,
            },
        )],
    );
    assert_eq!(*done[0].result.as_ref().unwrap(), 1000);
    let mut seen = vec![0u8; 1000];
    assert_eq!(other.read_into(handle, &mut seen).unwrap(), 1000);
    assert_eq!(seen, &data[100..1100]);

    // Handles outside the region, or naming an unregistered region, are refused at push.
    for bad in [
        BufHandle {
            offset: (1 << 20) - 10,
            len: 100,
            region: 5,
        },
        BufHandle {
            offset: 0,
            len: 10,
            region: 6,
        },
    ] {
        let r = ring
            .push(sub(
                4,
                Op::ReadFixed {
                    fd: fd.clone(),
                    buf: FixedBuf::Handle(bad),
                    offset: 0,
                },
            ))
            .unwrap_err();
        assert_eq!(r.entry.token, 4, "the submission comes back");
        assert!(
            matches!(
                SubmitError::of(&r.error),
                Some(SubmitError::BadHandle(_) | SubmitError::NoRegionId { id: 6 })
            ),
            "{}",
            r.error
        );
    }
    // A pool buffer from an unregistered region is refused too.
    let stray = Arc::new(Region::memfd("stray", 8192, RegionOptions::new().id(5)).unwrap());
    let stray_pool = BufferPool::new(stray, 0, 4096, 2).unwrap();
    let r = ring
        .push(sub(
            5,
            Op::WriteFixed {
                fd: fd.clone(),
                buf: FixedBuf::Buf(stray_pool.alloc().unwrap()),
                offset: 0,
            },
        ))
        .unwrap_err();
    assert!(
        r.error
            .to_string()
            .contains("not inside the registered region"),
        "{}",
        r.error
    );
}

/// Two regions with the same id (two clients' pools, say), each named by its key; one
/// unregistered while an operation on the other is in flight; neither while its own is.
#[test]
fn regions_registered_and_unregistered_by_key() {
    regions_by_key(true);
}

/// The same with the whole table registered again on every change: a region can then go
/// only while no fixed operation is in flight on any region.
#[test]
fn regions_by_key_without_a_sparse_table() {
    regions_by_key(false);
}

fn regions_by_key(sparse: bool) {
    let dir = TempDir::new(&format!("keys-{sparse}"));
    let file = open(&dir.file("data"));
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.file("data"), &data).unwrap();
    let fd = target(&file);
    let a = Arc::new(Region::memfd("a", 1 << 16, RegionOptions::new().id(0)).unwrap());
    let b = Arc::new(Region::memfd("b", 1 << 16, RegionOptions::new().id(0)).unwrap());
    let mut ring = Uring::builder().sparse_buffers(sparse).build().unwrap();
    let ka = ring.register_region(a.clone()).unwrap();
    let kb = ring.register_region(b.clone()).unwrap();
    assert_ne!(ka, kb);
    assert_eq!(ring.registered_regions(), 2);
    let h = |offset: u64, len: u32| BufHandle {
        offset,
        len,
        region: 0,
    };

    // The same handle lands in each region by key.
    let done = run(
        &mut ring,
        vec![
            sub(
                1,
                Op::ReadFixed {
                    fd: fd.clone(),
                    buf: FixedBuf::In(ka, h(4096, 4096)),
                    offset: 0,
                },
            ),
            sub(
                2,
                Op::ReadFixed {
                    fd: fd.clone(),
                    buf: FixedBuf::In(kb, h(4096, 4096)),
                    offset: 4096,
                },
            ),
        ],
    );
    assert_eq!(*done[0].result.as_ref().unwrap(), 4096);
    assert_eq!(*done[1].result.as_ref().unwrap(), 4096);
    let mut seen = vec![0u8; 4096];
    a.read_into(h(4096, 4096), &mut seen).unwrap();
    assert_eq!(seen, data[..4096]);
    b.read_into(h(4096, 4096), &mut seen).unwrap();
    assert_eq!(seen, data[4096..]);

    // By id alone the handle is ambiguous: refused at push.
    let r = ring
        .push(sub(
            3,
            Op::ReadFixed {
                fd: fd.clone(),
                buf: FixedBuf::Handle(h(0, 16)),
                offset: 0,
            },
        ))
        .unwrap_err();
    assert!(
        matches!(refusal(&r.error), SubmitError::AmbiguousRegionId { .. }),
        "{}",
        r.error
    );
    // Out of the key's region: refused.
    let r = ring
        .push(sub(
            3,
            Op::ReadFixed {
                fd: fd.clone(),
                buf: FixedBuf::In(ka, h(1 << 16, 1)),
                offset: 0,
            },
        ))
        .unwrap_err();
    assert!(
        matches!(refusal(&r.error), SubmitError::BadHandle(_)),
        "{}",
        r.error
    );

    // A read from an empty pipe stays in flight on `a`.
    let (rx, tx) = pipe();
    ring.push(sub(
        4,
        Op::ReadFixed {
            fd: target(&rx),
            buf: FixedBuf::In(ka, h(0, 64)),
            offset: u64::MAX,
        },
    ))
    .unwrap();
    ring.submit().unwrap();
    assert_eq!(ring.region_in_flight(ka), 1);
    let e = ring.unregister_region(ka).unwrap_err();
    assert!(
        matches!(e, RegisterError::InFlight { key, in_flight: 1 } if key == ka),
        "{e}"
    );
    if !sparse {
        // The whole table cannot change while anything fixed is in flight.
        let e = ring.unregister_region(kb).unwrap_err();
        assert!(
            matches!(e, RegisterError::TableInUse { in_flight: 1 }),
            "{e}"
        );
        nix::unistd::write(&tx, b"x").unwrap();
        ring.wait(LIMIT).unwrap();
        assert_eq!(ring.reap().unwrap().unwrap().token, 4);
        ring.push(sub(
            4,
            Op::ReadFixed {
                fd: target(&rx),
                buf: FixedBuf::In(ka, h(0, 64)),
                offset: u64::MAX,
            },
        ))
        .unwrap();
        ring.submit().unwrap();
        let e = ring.unregister_region(kb).unwrap_err();
        assert!(
            matches!(e, RegisterError::TableInUse { in_flight: 1 }),
            "{e}"
        );
        nix::unistd::write(&tx, b"hello").unwrap();
        ring.wait(LIMIT).unwrap();
        assert_eq!(ring.reap().unwrap().unwrap().token, 4);
        let back = ring.unregister_region(ka).unwrap();
        drop(back);
        assert_eq!(Arc::strong_count(&a), 1);
        let back = ring.unregister_region(kb).unwrap();
        drop(back);
        assert_eq!(Arc::strong_count(&b), 1);
        assert_eq!(ring.registered_regions(), 0);
        return;
    }
    // `b` has nothing in flight: it goes, and its slot is reused by a new region.
    let back = ring.unregister_region(kb).unwrap();
    assert!(Arc::ptr_eq(&back, &b));
    drop(back);
    assert_eq!(Arc::strong_count(&b), 1, "the ring let go of the region");
    let c = Arc::new(Region::memfd("c", 1 << 16, RegionOptions::new().id(7)).unwrap());
    let kc = ring.register_region(c.clone()).unwrap();
    let done = run(
        &mut ring,
        vec![sub(
            5,
            Op::ReadFixed {
                fd: fd.clone(),
                buf: FixedBuf::In(
                    kc,
                    BufHandle {
                        offset: 0,
                        len: 100,
                        region: 7,
                    },
                ),
                offset: 0,
            },
        )],
    );
    assert_eq!(*done[0].result.as_ref().unwrap(), 100);
    let r = ring
        .push(sub(
            6,
            Op::ReadFixed {
                fd: fd.clone(),
                buf: FixedBuf::In(kb, h(0, 16)),
                offset: 0,
            },
        ))
        .unwrap_err();
    assert!(
        r.error
            .to_string()
            .contains("no region is registered under key")
            || ring.region(kb).is_some(),
        "{}",
        r.error
    );

    // Feed the pipe: the read on `a` completes, and then `a` can go.
    nix::unistd::write(&tx, b"hello").unwrap();
    ring.wait(LIMIT).unwrap();
    let done = ring.reap().unwrap().unwrap();
    assert_eq!(done.token, 4);
    assert_eq!(*done.result.as_ref().unwrap(), 5);
    assert_eq!(ring.region_in_flight(ka), 0);
    let back = ring.unregister_region(ka).unwrap();
    drop(back);
    assert_eq!(Arc::strong_count(&a), 1);
    assert!(ring.unregister_region(ka).is_err(), "unregistered twice");
}

/// Windows of one region (`register_range`): a fixed read lands inside its key's window, is
/// refused outside it, and by handle alone finds the window that holds it (windows of one
/// region are not ambiguous); a window past the region's end is refused; unregistering one
/// window leaves the other serving.
/// Without a sparse table, a region registered into a key freed earlier (A, B, C; B
/// unregistered; D takes B's key): reads into C, after the reused key, land in C. (Before,
/// C's first index was computed without D's slots, so its reads named D's: the kernel
/// failed them with `EFAULT`.)
#[test]
fn a_key_reused_without_a_sparse_table_keeps_the_later_regions_indices() {
    let dir = TempDir::new("reused-key");
    let file = open(&dir.file("data"));
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 239) as u8).collect();
    std::fs::write(dir.file("data"), &data).unwrap();
    let fd = target(&file);
    let region = |name| Arc::new(Region::memfd(name, 1 << 16, RegionOptions::new().id(0)).unwrap());
    let (a, b, c, d) = (region("a"), region("b"), region("c"), region("d"));
    let mut ring = Uring::builder().sparse_buffers(false).build().unwrap();
    let _ka = ring.register_region(a).unwrap();
    let kb = ring.register_region(b).unwrap();
    let kc = ring.register_region(c.clone()).unwrap();
    ring.unregister_region(kb).unwrap();
    let kd = ring.register_region(d.clone()).unwrap();
    let h = BufHandle {
        offset: 4096,
        len: 4096,
        region: 0,
    };
    let done = run(
        &mut ring,
        vec![
            sub(
                1,
                Op::ReadFixed {
                    fd: fd.clone(),
                    buf: FixedBuf::In(kc, h),
                    offset: 0,
                },
            ),
            sub(
                2,
                Op::ReadFixed {
                    fd: fd.clone(),
                    buf: FixedBuf::In(kd, h),
                    offset: 4096,
                },
            ),
        ],
    );
    assert_eq!(*done[0].result.as_ref().unwrap(), 4096, "{done:?}");
    assert_eq!(*done[1].result.as_ref().unwrap(), 4096, "{done:?}");
    let mut seen = vec![0u8; 4096];
    c.read_into(h, &mut seen).unwrap();
    assert_eq!(seen, data[..4096], "C's read landed in C");
    d.read_into(h, &mut seen).unwrap();
    assert_eq!(seen, data[4096..], "D's read landed in D");
}

#[test]
fn windows_of_a_region() {
    windows_of_a_region_in(true);
}

/// The same with the whole table registered again on every change.
#[test]
fn windows_of_a_region_without_a_sparse_table() {
    windows_of_a_region_in(false);
}

fn windows_of_a_region_in(sparse: bool) {
    let dir = TempDir::new(&format!("windows-{sparse}"));
    let file = open(&dir.file("data"));
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(dir.file("data"), &data).unwrap();
    let fd = target(&file);
    let region = Arc::new(Region::memfd("w", 1 << 20, RegionOptions::new().id(3)).unwrap());
    let mut ring = Uring::builder().sparse_buffers(sparse).build().unwrap();
    let r = ring.register_range(region.clone(), (1 << 19)..(1 << 20) + 1);
    assert!(matches!(r, Err(RegisterError::Range { .. })), "{r:?}");
    let r = ring.register_range(region.clone(), 4096..4096);
    assert!(matches!(r, Err(RegisterError::Empty)), "{r:?}");
    let low = ring.register_range(region.clone(), 0..(1 << 18)).unwrap();
    let high = ring
        .register_range(region.clone(), (1 << 19)..(1 << 20))
        .unwrap();
    let h = |offset: u64, len: u32| BufHandle {
        offset,
        len,
        region: 3,
    };
    let read = |ring: &mut Uring, buf: FixedBuf, from: u64| -> Result<u32, QueueError> {
        let op = Op::ReadFixed {
            fd: fd.clone(),
            buf,
            offset: from,
        };
        ring.push(sub(1, op)).map_err(|r| r.error)?;
        ring.submit().unwrap();
        let mut done = Vec::new();
        while done.is_empty() {
            ring.wait(LIMIT).unwrap();
            ring.reap_into(&mut done, 1).unwrap();
        }
        Ok(*done[0].result.as_ref().unwrap())
    };
    // Inside each window, by key, and by handle alone (the window that holds it).
    assert_eq!(
        read(&mut ring, FixedBuf::In(low, h(4096, 4096)), 0).unwrap(),
        4096
    );
    assert_eq!(
        read(&mut ring, FixedBuf::In(high, h(1 << 19, 4096)), 4096).unwrap(),
        4096
    );
    assert_eq!(
        read(&mut ring, FixedBuf::Handle(h(900 << 10, 100)), 0).unwrap(),
        100
    );
    let mut seen = vec![0u8; 4096];
    region.read_into(h(4096, 4096), &mut seen).unwrap();
    assert_eq!(seen, data[..4096]);
    region.read_into(h(1 << 19, 4096), &mut seen).unwrap();
    assert_eq!(seen, data[4096..]);
    region
        .read_into(h(900 << 10, 100), &mut seen[..100])
        .unwrap();
    assert_eq!(seen[..100], data[..100]);
    // Outside the key's window (inside the region), and between the windows by handle.
    for buf in [
        FixedBuf::In(low, h(1 << 18, 4096)),
        FixedBuf::In(high, h((1 << 19) - 1, 2)),
        FixedBuf::Handle(h(300 << 10, 4096)),
    ] {
        let e = read(&mut ring, buf, 0).unwrap_err();
        assert!(
            matches!(refusal(&e), SubmitError::OutsideWindow { .. }),
            "{e}"
        );
    }
    // One window goes; the other still serves.
    ring.unregister_region(low).unwrap();
    assert_eq!(ring.registered_regions(), 1);
    assert_eq!(
        read(&mut ring, FixedBuf::In(high, h(1 << 19, 4096)), 0).unwrap(),
        4096
    );
    assert!(read(&mut ring, FixedBuf::In(low, h(0, 4096)), 0).is_err());
}
