//! [`Buf`]: one owned buffer of a pool.

use std::fmt;
use std::sync::Arc;

use super::{BufHandle, BufferPool, SharedBytes};

/// An owned buffer from a [`BufferPool`]; it goes back to the pool when dropped, unless it is
/// [lent](Buf::lend) to the peer.
///
/// Its bytes live in the shared region, where a peer that breaks the protocol could write them
/// at any moment, so they are reached through [`bytes`](Buf::bytes) and
/// [`spare`](Buf::spare), views that only copy ([`SharedBytes`]), or through the `unsafe`
/// [`as_slice`](Buf::as_slice) for a trusted peer. Treat what you read back as untrusted input.
///
/// A `Buf` is not a slice, so safe code cannot hold a reference to bytes a peer may write:
/// ```compile_fail
/// # use std::sync::Arc;
/// # use subring_planes::data::{BufferPool, Region, RegionOptions};
/// # let region = Arc::new(Region::memfd("pool", 4096, RegionOptions::new()).unwrap());
/// # let pool = BufferPool::new(region, 0, 4096, 1).unwrap();
/// let buf = pool.alloc().unwrap();
/// let bytes: &[u8] = &buf[..]; // does not compile: the peer maps these bytes
/// ```
pub struct Buf {
    pub(super) pool: Arc<BufferPool>,
    pub(super) index: u32,
    pub(super) len: u32,
}

impl fmt::Debug for Buf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buf")
            .field("index", &self.index)
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl Buf {
    /// The buffer's index in its pool.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Bytes in use.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True when no bytes are in use.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Size of the buffer.
    pub fn capacity(&self) -> usize {
        self.pool.buf_size()
    }

    /// Sets the bytes in use.
    ///
    /// # Panics
    /// If `len` exceeds the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity(),
            "length {len} exceeds buffer capacity {}",
            self.capacity()
        );
        self.len = len as u32;
    }

    /// Copies as much of `data` as fits to the start of the buffer and sets the length to it;
    /// returns the number of bytes copied.
    pub fn fill_from(&mut self, data: &[u8]) -> usize {
        let n = self.spare().copy_from(data);
        self.set_len(n);
        n
    }

    /// The bytes in use (the first [`len`](Self::len)), as a view that reads and writes only
    /// by copies: the buffer lives in memory the peer maps, and a peer that breaks the
    /// protocol could write it at any moment, so no safe reference to it is ever made.
    pub fn bytes(&self) -> SharedBytes<'_> {
        self.view(self.len as usize)
    }

    /// The whole buffer, whatever its length, as a view (for filling in place; then
    /// [`set_len`](Self::set_len)).
    pub fn spare(&self) -> SharedBytes<'_> {
        self.view(self.capacity())
    }

    /// A copy of the bytes in use.
    pub fn to_vec(&self) -> Vec<u8> {
        self.bytes().to_vec()
    }

    /// The bytes in use as a slice, in place, without a copy.
    ///
    /// # Safety
    /// Nothing may write the buffer while the slice lives. Through the `Buf` this process
    /// cannot (it is borrowed), but the caller vouches for the rest:
    /// - in this process, nothing writes the buffer's bytes by other names: the region's own
    ///   accessors by handle (`Region::write_from`, `Region::shared`, a service of this
    ///   process serving the buffer's handle), and raw pointers;
    /// - every other process that maps the region must be trusted to keep the protocol (never
    ///   to write a buffer it was not lent), or there must be none (a region this process
    ///   never shared). A hostile peer breaks this at will.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr()` is the start of this buffer and `len <= capacity` bytes lie inside
        // the region (checked when the pool was built); the caller vouches that nothing writes
        // them meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len as usize) }
    }

    /// The whole buffer as a mutable slice, in place (for a reader that fills a `&mut [u8]`).
    ///
    /// # Safety
    /// As for [`as_slice`](Self::as_slice), and reads too: nothing else, in this process (the
    /// region's accessors, raw pointers) or another, may read or write the buffer while the
    /// slice lives.
    pub unsafe fn spare_mut(&mut self) -> &mut [u8] {
        let cap = self.capacity();
        // SAFETY: `cap` bytes from `ptr()` lie inside the region; owning the `Buf` means the
        // pool hands them to nobody else in this process, and the caller vouches for every
        // other name of them (the region's accessors, other processes).
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), cap) }
    }

    /// Where the buffer starts in this process (for handing it to the kernel; reading or
    /// writing through it is the caller's `unsafe` business).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr()
    }

    fn view(&self, len: usize) -> SharedBytes<'_> {
        self.pool.view_of(self.index, len)
    }

    fn ptr(&self) -> *mut u8 {
        self.pool.ptr_of(self.index)
    }

    /// The handle naming this buffer's bytes, valid in every process that maps the region.
    pub fn handle(&self) -> BufHandle {
        self.pool.handle_of(self.index, self.len)
    }

    /// Hands the buffer to the peer: it stays allocated (not returned on drop) until
    /// [`BufferPool::reclaim`] (or a [`Lender`](super::Lender)'s `take_back`) takes it back from the
    /// returned handle.
    pub fn lend(self) -> BufHandle {
        let handle = self.handle();
        self.pool.mark_lent(self.index);
        // Skip `Drop` (which would free the buffer) but still release our reference to the pool.
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used again and its destructor never runs, so the `Arc` is
        // moved out exactly once.
        drop(unsafe { std::ptr::read(&this.pool) });
        handle
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        self.pool.release(self.index);
    }
}
