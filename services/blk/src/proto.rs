//! The block protocol: what a client's requests and the service's completions carry. Both are
//! plain-old-data ring entries; the data itself never travels in them, only [`BufHandle`]s to
//! the client's buffers.

use bytemuck::{Pod, Zeroable};
use subring_shm::BufHandle;

/// The application protocol name in the shm handshake.
pub const BLK_PROTOCOL: &str = "subring-blk/1";

/// What a request asks for ([`BlkRequest::op`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum BlkOp {
    /// Reads `len` bytes at `offset` into the buffer `buf` names.
    Read = 1,
    /// Writes `len` bytes from the buffer `buf` names at `offset`.
    Write = 2,
    /// Completes once every write this client had completed or in flight when it sent the
    /// flush is durable (an `fdatasync` issued after those writes complete).
    Flush = 3,
    /// Discards `len` bytes at `offset` (they read back as zeroes): a hole punched in a file,
    /// a discard on a block device.
    Discard = 4,
    /// Asks for the device's size (the completion's `value`) and whether it is served with
    /// direct I/O (`flags` bit [`FLAG_DIRECT`]).
    Info = 5,
}

impl BlkOp {
    /// The op a request's `op` field names, if any.
    pub fn from_wire(op: u32) -> Option<Self> {
        Some(match op {
            1 => BlkOp::Read,
            2 => BlkOp::Write,
            3 => BlkOp::Flush,
            4 => BlkOp::Discard,
            5 => BlkOp::Info,
            _ => return None,
        })
    }
}

/// A request from a client (40 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BlkRequest {
    /// The client's own number for the request, echoed in its completion.
    pub tag: u64,
    /// Byte offset on the device.
    pub offset: u64,
    /// The client's buffer (reads and writes): a pool buffer or a range of a region it
    /// registered with the server.
    pub buf: BufHandle,
    /// Bytes to transfer (at most `buf.len`), or to discard.
    pub len: u32,
    /// A [`BlkOp`].
    pub op: u32,
}

/// The service's answer (24 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BlkCompletion {
    /// The request's tag.
    pub tag: u64,
    /// Bytes transferred (reads, writes), or the device size (info).
    pub value: u64,
    /// 0 on success; a negative errno from the kernel; or a positive [`Status`] code for a
    /// request the service refused.
    pub status: i32,
    /// Flags ([`FLAG_DIRECT`] and [`FLAG_READ_ONLY`] for info).
    pub flags: u32,
}

/// In an info completion: the device is served with `O_DIRECT` (reads go disk → client memory
/// by DMA; otherwise through the page cache, still with no copy in the service).
pub const FLAG_DIRECT: u32 = 1;

/// In an info completion: the device is served read-only (writes and discards are refused with
/// [`Status::ReadOnly`]).
pub const FLAG_READ_ONLY: u32 = 2;

/// Why the service refused a request (positive `status` codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    /// The `op` field names no operation.
    BadOp = 1,
    /// The buffer handle does not name the client's memory.
    BadHandle = 2,
    /// `offset + len` runs past the end of the device (or overflows).
    BadRange = 3,
    /// `len` is 0 or longer than the buffer.
    BadLength = 4,
    /// With direct I/O: offset, length or buffer address not aligned to what the device needs.
    BadAlignment = 5,
    /// The buffer is in a region the service will not register: the client's registered
    /// memory would pass [`BlkConfig::max_registered`](crate::BlkConfig::max_registered), all
    /// clients' would pass `max_registered_total`, or the ring refused the registration.
    NoMemory = 6,
    /// A write or discard to a device served read-only
    /// ([`BlkConfig::read_only`](crate::BlkConfig::read_only)).
    ReadOnly = 7,
}

impl Status {
    /// The status a positive code names.
    pub fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            1 => Status::BadOp,
            2 => Status::BadHandle,
            3 => Status::BadRange,
            4 => Status::BadLength,
            5 => Status::BadAlignment,
            6 => Status::NoMemory,
            7 => Status::ReadOnly,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_sizes_are_fixed() {
        assert_eq!(std::mem::size_of::<BlkRequest>(), 40);
        assert_eq!(std::mem::size_of::<BlkCompletion>(), 24);
    }
}
