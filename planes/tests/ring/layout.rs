//! Where a ring sits and what its header says: pinned offsets and strides, capacities,
//! placement, and the checks an attach makes.

use subring_planes::data::{
    CorruptIndex, IndexField, Indexed, RegionError, Ring, RingError, RingLayout, Stamped,
};

use super::{poke, region_for, HEAD, SLOTS, TAIL, U64_STRIDE};

#[test]
fn header_layout_is_pinned() {
    let layout = RingLayout::of::<u64, Stamped>(8).unwrap();
    assert_eq!(layout.slots_offset, SLOTS);
    assert_eq!(layout.size, SLOTS + 8 * U64_STRIDE);
    assert_eq!(layout.align, 128);
    let layout = RingLayout::of::<u64, Indexed>(8).unwrap();
    assert_eq!(layout.slots_offset, SLOTS);
    assert_eq!(layout.size, SLOTS + 8 * 8);
    assert_eq!(layout.align, 128);
}

#[test]
fn slot_strides_are_pinned() {
    fn stride<T: bytemuck::Pod, P: subring_planes::data::Publication>() -> usize {
        let layout = RingLayout::of::<T, P>(4).unwrap();
        (layout.size - layout.slots_offset) / 4
    }
    // A stamped slot keeps the stamp and the entry on one cache line: a power of two up to 64
    // bytes; a larger slot spans lines anyway and is packed.
    assert_eq!(stride::<u8, Stamped>(), 8);
    assert_eq!(stride::<[u8; 3], Stamped>(), 8);
    assert_eq!(stride::<u32, Stamped>(), 8);
    assert_eq!(stride::<u64, Stamped>(), U64_STRIDE);
    assert_eq!(stride::<[u32; 3], Stamped>(), 16);
    assert_eq!(stride::<u128, Stamped>(), 32);
    assert_eq!(stride::<[u64; 7], Stamped>(), 64);
    assert_eq!(stride::<[u64; 8], Stamped>(), 72);
    assert_eq!(stride::<[u64; 25], Stamped>(), 208);
    assert_eq!(stride::<[u32; 17], Stamped>(), 72);
    // An indexed slot is its entry.
    assert_eq!(stride::<u8, Indexed>(), 1);
    assert_eq!(stride::<[u8; 3], Indexed>(), 3);
    assert_eq!(stride::<u64, Indexed>(), 8);
    assert_eq!(stride::<[u64; 8], Indexed>(), 64);
    assert_eq!(stride::<[u32; 17], Indexed>(), 68);
}

#[test]
fn attach_checks_the_publication() {
    let region = region_for::<[u64; 8], Stamped>(8);
    drop(Ring::<u64, Indexed>::create(region.clone(), 0, 8).unwrap());
    // A stamped view of an indexed ring differs in its stride first...
    assert!(matches!(
        Ring::<u64, Stamped>::attach(region.clone(), 0, 8),
        Err(RingError::HeaderMismatch {
            field: "slot stride",
            ..
        })
    ));
    // ...and where the stride happens to agree, in the publication word.
    drop(Ring::<[u64; 8], Indexed>::create(region.clone(), 0, 8).unwrap());
    assert!(Ring::<[u64; 8], Indexed>::attach(region.clone(), 0, 8).is_ok());
    poke(&region, 24, 2);
    assert!(matches!(
        Ring::<[u64; 8], Indexed>::attach(region, 0, 8),
        Err(RingError::HeaderMismatch {
            field: "publication",
            found: 2,
            expected: 1,
            ..
        })
    ));
}

#[test]
fn invalid_capacities_are_errors() {
    for cap in [0, 3, 12, (1 << 31) + 1, u32::MAX] {
        assert!(
            matches!(
                Ring::<u64>::with_capacity(cap),
                Err(RingError::InvalidCapacity(_))
            ),
            "capacity {cap} accepted"
        );
    }
}

#[test]
fn placement_is_checked() {
    let region = region_for::<u64, Indexed>(8);
    assert!(matches!(
        Ring::<u64>::create(region.clone(), 64, 8),
        Err(RingError::Region(RegionError::Misaligned { .. }))
    ));
    assert!(matches!(
        Ring::<u64>::create(region.clone(), 0, 16),
        Err(RingError::Region(RegionError::OutOfBounds { .. }))
    ));
    assert!(matches!(
        Ring::<u64>::create(region, 1 << 40, 8),
        Err(RingError::Region(RegionError::OutOfBounds { .. }))
    ));
}

#[test]
fn attach_checks_the_header() {
    let region = region_for::<u64, Indexed>(8);
    // Nothing created yet: no magic.
    assert!(matches!(
        Ring::<u64>::attach(region.clone(), 0, 8),
        Err(RingError::HeaderMismatch { field: "magic", .. })
    ));
    drop(Ring::<u64>::create(region.clone(), 0, 8).unwrap());
    assert!(matches!(
        Ring::<u64>::attach(region.clone(), 0, 4),
        Err(RingError::HeaderMismatch {
            field: "capacity",
            found: 8,
            expected: 4,
            ..
        })
    ));
    assert!(matches!(
        Ring::<[u32; 2]>::attach(region.clone(), 0, 8),
        Err(RingError::HeaderMismatch {
            field: "entry alignment",
            ..
        })
    ));
    assert!(matches!(
        Ring::<u32>::attach(region.clone(), 0, 8),
        Err(RingError::HeaderMismatch {
            field: "entry size",
            found: 8,
            expected: 4,
            ..
        })
    ));
    // Indices that no correct pair could have written.
    poke(&region, TAIL, 100);
    poke(&region, HEAD, 50);
    let err = Ring::<u64>::attach(region, 0, 8).unwrap_err();
    assert!(
        matches!(
            err,
            RingError::Corrupt(CorruptIndex {
                field: IndexField::Tail,
                found: 100,
                ..
            })
        ),
        "{err}"
    );
}

/// A stamped ring created in a fresh memfd writes nothing to its slots (their zeros are the
/// stamps before the first lap): its slot pages past the header's stay holes until entries are
/// written there.
/// A server creating a client's rings faulted in every page of both at each hello.
#[test]
fn a_stamped_ring_in_fresh_memory_touches_no_slot() {
    let capacity = 1 << 18;
    let layout = RingLayout::of::<u64, Stamped>(capacity).unwrap();
    let region = region_for::<u64, Stamped>(capacity);
    // The header's page holds the first slots too, and with transparent huge pages on for
    // shmem its write brings in a 2 MiB folio: from the next 2 MiB on (of 4 MiB of slots).
    let first_page = layout.slots_offset.next_multiple_of(2 << 20);
    let slots = (first_page, layout.size - first_page);
    assert!(
        region.reads_as_zero(slots.0, slots.1),
        "fresh slots are holes"
    );
    let (mut tx, mut rx) = Ring::<u64, Stamped>::create(region.clone(), 0, capacity)
        .unwrap()
        .split()
        .unwrap();
    assert!(
        region.reads_as_zero(slots.0, slots.1),
        "creating the ring wrote to its slots"
    );
    for lap in 0..2u64 {
        for i in 0..u64::from(capacity) {
            tx.push(lap << 32 | i).unwrap();
            assert_eq!(rx.pop().unwrap(), Some(lap << 32 | i));
        }
    }
}

/// Over memory that is not fresh (slots holding old bytes, here every byte 0xff), a stamped
/// ring writes each slot's stamp: it starts empty and works.
#[test]
fn a_stamped_ring_over_used_memory_starts_empty() {
    let capacity = 64;
    let layout = RingLayout::of::<u64, Stamped>(capacity).unwrap();
    let region = region_for::<u64, Stamped>(capacity);
    for offset in (layout.slots_offset..layout.size).step_by(4) {
        poke(&region, offset, u32::MAX);
    }
    assert!(!region.reads_as_zero(layout.slots_offset, 4));
    let (mut tx, mut rx) = Ring::<u64, Stamped>::create(region.clone(), 0, capacity)
        .unwrap()
        .split()
        .unwrap();
    assert_eq!(rx.available().unwrap(), 0);
    for i in 0..200u64 {
        tx.push(i).unwrap();
        assert_eq!(rx.pop().unwrap(), Some(i));
    }
}
