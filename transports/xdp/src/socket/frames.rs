//! The frames an application holds: received, or to send.

use subring_planes::data::{Buf, SharedBytes};

/// A received frame: the UMEM frame it lies in (yours now), and where in it the packet is.
#[derive(Debug)]
pub struct RxFrame {
    pub(super) buf: Buf,
    pub(super) offset: u32,
    pub(super) len: u32,
}

impl RxFrame {
    /// The packet's length.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the packet is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The packet's bytes, read by copies only (the UMEM may be mapped by another process).
    pub fn bytes(&self) -> SharedBytes<'_> {
        self.buf
            .spare()
            .get(self.offset as usize..(self.offset + self.len) as usize)
            .expect("checked against the frame when received")
    }

    /// The frame, to fill and send ([`TxFrame`]) or to drop (which frees it).
    pub fn into_buf(self) -> Buf {
        self.buf
    }

    /// The same bytes, to send as they are (netmap's buffer swap: no copy).
    pub fn into_tx(self) -> TxFrame {
        TxFrame {
            buf: self.buf,
            offset: self.offset,
            len: self.len,
        }
    }
}

/// A frame to send: `len` bytes at `offset` in a UMEM frame.
#[derive(Debug)]
pub struct TxFrame {
    pub(super) buf: Buf,
    pub(super) offset: u32,
    pub(super) len: u32,
}

impl TxFrame {
    /// Sends the bytes in use of `buf` (a frame from [`XskSocket::alloc`](crate::XskSocket::alloc), filled).
    pub fn new(buf: Buf) -> Self {
        let len = buf.len() as u32;
        TxFrame {
            buf,
            offset: 0,
            len,
        }
    }
}
