//! The data plane: shared memory, the rings in it, and the buffers whose handles the rings
//! carry.
//!
//! - [`Region`]: a mapping that can be shared with another process (a sealed memfd).
//! - [`Ring`]: a single-producer/single-consumer ring of plain-old-data entries inside a region.
//! - [`BufferPool`]: fixed-size buffers in a region, named across processes by [`BufHandle`].

mod pool;
mod region;
mod ring;
mod volatile;

pub use volatile::SharedBytes;

pub use pool::{Buf, BufferPool, Lender, PoolError, PoolLayout};
pub use region::{
    Backing, Claim, ClaimKind, Region, RegionError, RegionOptions, HUGE_PAGE_SIZE, MAX_REGION_LEN,
};
pub use ring::{
    Consumer, CorruptIndex, Halves, IndexField, Indexed, Producer, Publication, PushError,
    ReadChunk, Ring, RingError, RingLayout, Stamped, WriteChunk, MAX_CAPACITY, RING_LAYOUT_VERSION,
    RING_MAGIC,
};

/// Names bytes in a shared region: meaningful in every process that maps it, so it can travel
/// inside ring entries while the payload stays where it is (netmap's buffer index, an RDMA
/// address within a registered memory region, an io_uring fixed-buffer address).
///
/// A handle from a peer is untrusted: check it with [`Region::check_handle`] or
/// [`PoolLayout::check`] before use (the accessors that take handles do).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BufHandle {
    /// Byte offset from the start of the region.
    pub offset: u64,
    /// Number of bytes.
    pub len: u32,
    /// Which region ([`Region::id`]).
    pub region: u32,
}
