//! A chunk of an incrementally consumed buffer (`IOU_PBUF_RING_INC`).

use std::fmt;
use std::sync::Arc;

use subring_planes::data::{Buf, SharedBytes};

/// The bytes one completion received into a buffer of a ring registered with
/// [`BufRingOptions::incremental`](super::BufRingOptions::incremental): the kernel fills such a
/// buffer piece by piece, each completion reporting the bytes after the previous one's, so one
/// buffer serves many small receives. The chunks of a buffer share it; it goes back to its
/// ring once the kernel is done with it ([`is_last`](Self::is_last) on the chunk that says so)
/// and every chunk of it is dropped.
///
/// The kernel may still be filling the rest of the buffer while a chunk is held; a chunk's own
/// bytes it never writes again. Like every pool buffer's, they are read through copies
/// ([`bytes`](Self::bytes)): the buffer may live in memory another process maps.
pub struct BufChunk {
    buf: Arc<Buf>,
    offset: u32,
    len: u32,
    last: bool,
}

impl BufChunk {
    pub(super) fn new(buf: Arc<Buf>, offset: u32, len: u32, last: bool) -> Self {
        debug_assert!(offset as usize + len as usize <= buf.capacity());
        BufChunk {
            buf,
            offset,
            len,
            last,
        }
    }

    /// Bytes received.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True when no bytes were received.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the chunk starts in its buffer.
    pub fn offset(&self) -> usize {
        self.offset as usize
    }

    /// The index of its buffer in the ring's pool (the kernel's buffer id).
    pub fn index(&self) -> u32 {
        self.buf.index()
    }

    /// Whether the kernel is done with the buffer (the completion did not carry
    /// `IORING_CQE_F_BUF_MORE`): no later chunk of it follows.
    pub fn is_last(&self) -> bool {
        self.last
    }

    /// The bytes received, as a view that reads by copies.
    pub fn bytes(&self) -> SharedBytes<'_> {
        let start = self.offset as usize;
        self.buf
            .spare()
            .get(start..start + self.len as usize)
            .expect("a chunk lies inside its buffer (checked when it was taken)")
    }

    /// A copy of the bytes received.
    pub fn to_vec(&self) -> Vec<u8> {
        self.bytes().to_vec()
    }
}

impl fmt::Debug for BufChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufChunk")
            .field("index", &self.index())
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("last", &self.last)
            .finish()
    }
}
