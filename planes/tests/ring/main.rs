//! Ring behaviour, for both publications: property tests against a `VecDeque` model, index
//! wrap-around at `u32::MAX`, the pinned header layout, and a hostile peer writing impossible
//! values into the shared header and stamps.
#![cfg(not(loom))]

use std::sync::Arc;

use subring_planes::data::{Publication, Region, RegionOptions, RingLayout};

mod fifo;
mod hostile;
mod layout;

/// Byte offsets of the shared header fields and slots: part of the cross-process ABI, so pinned
/// here.
const TAIL: usize = 128;
const HEAD: usize = 256;
const SLOTS: usize = 640;
/// Bytes from one stamped `u64` slot (a 4-byte stamp, padding, the entry) to the next.
const U64_STRIDE: usize = 16;

/// Offset of the stamp of the stamped `u64` slot that `index` maps to in a ring of `capacity`.
fn stamp_at(index: u32, capacity: u32) -> usize {
    SLOTS + (index & (capacity - 1)) as usize * U64_STRIDE
}

fn region_for<T: bytemuck::Pod, P: Publication>(capacity: u32) -> Arc<Region> {
    let layout = RingLayout::of::<T, P>(capacity).unwrap();
    Arc::new(Region::memfd("ring-test", layout.size, RegionOptions::new()).unwrap())
}

/// Writes a header word the way a hostile peer would.
fn poke(region: &Region, offset: usize, value: u32) {
    region.check(offset as u64, 4).unwrap();
    // SAFETY: in bounds and 4-aligned (checked above; the mapping is page-aligned); the header
    // words are atomics, and a volatile store is what a peer process's write looks like to us.
    unsafe {
        region
            .as_ptr()
            .add(offset)
            .cast::<u32>()
            .write_volatile(value)
    }
}
