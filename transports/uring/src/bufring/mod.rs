//! Provided-buffer rings (`IORING_REGISTER_PBUF_RING`): buffers the application lends the
//! kernel ahead of time, from which it picks one per receive.
//!
//! A buffer ring is a data-plane ring in the other direction: the application produces free
//! buffers (their address, length and id), the kernel consumes them as data arrives, and the
//! completion names the buffer it filled (`IORING_CQE_F_BUFFER` and the id in the flags). Here
//! the buffers come from a planes [`BufferPool`] (so a group can live in a region another
//! process maps), each posted buffer is [lent](subring_planes::data::Buf::lend) to the kernel, and a completion's id
//! is taken back with [`BufferPool::reclaim`]. The ring keeps its own record of which buffers
//! are posted: an id that is out of range, or names a buffer that is not posted now (reported
//! twice, in the caller's hands, lent onward to another process), and a length past the
//! buffer's end, are refused with a typed error and counted, never turned into a second owner of
//! a buffer. A picked buffer is an owned [`Buf`](subring_planes::data::Buf) the caller holds;
//! dropping it frees it in the pool, and the ring posts it again at the next push, reap or wait.
//!
//! Send rings ([`Uring::register_send_ring`](crate::Uring::register_send_ring), `send.rs`)
//! run the other way: the application posts buffers full of data and a send bundle sends them.
//!
//! Two ways for one completion to cover other than one buffer, both probed:
//! - a **bundle** ([`Op::RecvMultiBundle`](crate::Op::RecvMultiBundle), Linux 6.10) fills as
//!   many buffers as the data needs, in ring order from the one its completion names; the
//!   ring's record of which buffer it posted at which position names the rest, and each must
//!   still be posted there;
//! - **incremental consumption** ([`BufRingOptions::incremental`], Linux 6.12) lets many
//!   receives share one buffer, each after the bytes of the one before; each completion is a
//!   [`BufChunk`], and the buffer returns to the ring once the kernel is done with it and its
//!   chunks are dropped. The ring counts how far each buffer is filled, and a report past its
//!   end is refused. The count assumes a buffer's completions are reaped in the order the
//!   kernel filled it, which holds for one receive at a time per group; two receives sharing
//!   a group can have one's completion deferred (a full completion queue) behind the other's,
//!   and their chunks would then name each other's bytes (never memory outside the buffer).
//!
//! What the checks cannot cover: the ring's entries are memory of this process only (never
//! shared), and the kernel trusts them, address and length included. Whoever could write them
//! could point the kernel anywhere; so nothing safe hands them out, and an id that was forged
//! there to name *another posted* buffer passes the checks (the bytes landed in the entry's
//! buffer, the completion names the other). The checks are the defence against a kernel bug
//! and forged completions, not against a writer of the ring.

mod chunk;
mod group;
mod send;
mod tail;

use std::sync::Arc;

use subring_planes::data::{BufferPool, PoolError, Region, RegionError};

pub use chunk::BufChunk;
pub(crate) use group::Group;
pub(crate) use send::SendGroup;
pub use send::SendRejected;

/// The most entries a buffer ring can have (`io_uring_register_buf_ring(3)`).
pub const MAX_BUF_RING_ENTRIES: usize = 1 << 15;

/// How to build a provided-buffer ring ([`Uring::register_buf_ring`](crate::Uring::register_buf_ring)).
#[derive(Debug, Clone)]
pub struct BufRingOptions {
    group: u16,
    buf_size: usize,
    count: usize,
    region: Option<(Arc<Region>, usize)>,
    incremental: bool,
}

impl BufRingOptions {
    /// `count` buffers (1..=32768) of `buf_size` bytes, posted under buffer group id `group`,
    /// in anonymous memory of their own.
    pub fn new(group: u16, buf_size: usize, count: usize) -> Self {
        BufRingOptions {
            group,
            buf_size,
            count,
            region: None,
            incremental: false,
        }
    }

    /// Carves the buffers from `region` at `offset` instead (a memfd region that another
    /// process maps, say); the range is claimed for the ring's pool.
    pub fn region(mut self, region: Arc<Region>, offset: usize) -> Self {
        self.region = Some((region, offset));
        self
    }

    /// Lets the kernel consume each buffer incrementally (`IOU_PBUF_RING_INC`, Linux 6.12):
    /// a receive takes only the bytes it needs from the buffer at the ring's head, and the next
    /// one goes on after them, so large buffers serve many small receives. Completions then
    /// carry [`Output::Chunk`](crate::Output::Chunk)s rather than whole buffers, in the order
    /// the kernel filled them. Bundles ([`Op::RecvMultiBundle`](crate::Op::RecvMultiBundle))
    /// are refused on such a ring.
    pub fn incremental(mut self) -> Self {
        self.incremental = true;
        self
    }
}

/// A buffer group registered with a ring, named by operations that pick their buffer from it
/// ([`Op::RecvMulti`](crate::Op::RecvMulti), [`Op::ReadMulti`](crate::Op::ReadMulti)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BufGroup(pub(crate) u16);

impl BufGroup {
    /// The buffer group id the kernel knows it by.
    pub fn id(self) -> u16 {
        self.0
    }
}

/// Counters of one buffer ring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BufRingStats {
    /// Buffers posted to the kernel.
    pub posted: u64,
    /// Buffers the kernel filled and the ring handed over (an incrementally consumed buffer
    /// counts once the kernel is done with it).
    pub picked: u64,
    /// Completions whose buffers were refused: an id out of range or not posted now, a length
    /// past a buffer's end, a bundle that runs past the buffers posted after its first or meets
    /// an entry longer than a buffer.
    pub refused: u64,
    /// Posted buffers the kernel has not picked (as far as completions tell).
    pub in_kernel: u64,
    /// Buffers free in the pool, not posted yet (they are posted at the next push, reap or
    /// wait).
    pub free: u64,
}

/// Why a buffer ring could not be registered or unregistered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BufRingError {
    /// The buffer count is 0 or more than a ring holds.
    #[error("a buffer ring holds 1..={max} buffers, not {count}", max = MAX_BUF_RING_ENTRIES)]
    Count {
        /// The count asked for.
        count: usize,
    },
    /// A group id already registered on this ring.
    #[error("buffer group {group} is already registered on this ring")]
    GroupTaken {
        /// The group id.
        group: u16,
    },
    /// No buffer ring is registered under the group.
    #[error("no buffer ring is registered as group {group}")]
    NoGroup {
        /// The group id.
        group: u16,
    },
    /// Operations that pick buffers from the group have not completed: cancel them and reap
    /// first.
    #[error("{ops} operations using buffer group {group} have not completed")]
    InFlight {
        /// The group id.
        group: u16,
        /// Its operations in flight.
        ops: usize,
    },
    /// The buffers could not be carved (size, count, or their place in the region).
    #[error("buffer ring {group}'s buffers: {source}")]
    Pool {
        /// The group id.
        group: u16,
        /// Why.
        #[source]
        source: PoolError,
    },
    /// The memory for the ring or its buffers could not be mapped.
    #[error("buffer ring {group}'s memory: {source}")]
    Region {
        /// The group id.
        group: u16,
        /// Why.
        #[source]
        source: RegionError,
    },
    /// A send ring already holds as many buffers as it has entries: send some first.
    #[error("send ring {group} is full ({entries} buffers posted)")]
    Full {
        /// The group id.
        group: u16,
        /// Its entries.
        entries: usize,
    },
    /// An empty buffer posted to a send ring (the kernel would take it for the ring's end).
    #[error("an empty buffer cannot be posted to send ring {group}")]
    EmptyBuffer {
        /// The group id.
        group: u16,
    },
    /// The running kernel lacks a feature the options ask for.
    #[error("buffer ring {group}: this kernel does not support {feature}")]
    Unsupported {
        /// The group id.
        group: u16,
        /// The feature, and the kernel that brought it.
        feature: &'static str,
    },
    /// The kernel refused the registration (`EINVAL` on kernels before 5.19, which lack
    /// buffer rings).
    #[error("registering buffer ring {group} ({entries} entries) failed: {source}")]
    Os {
        /// The group id.
        group: u16,
        /// Ring entries.
        entries: usize,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
}

impl From<BufRingError> for std::io::Error {
    fn from(e: BufRingError) -> Self {
        let kind = match &e {
            BufRingError::Os { source, .. } => source.kind(),
            BufRingError::NoGroup { .. } => std::io::ErrorKind::NotFound,
            BufRingError::GroupTaken { .. } => std::io::ErrorKind::AlreadyExists,
            BufRingError::InFlight { .. } => std::io::ErrorKind::ResourceBusy,
            BufRingError::Unsupported { .. } => std::io::ErrorKind::Unsupported,
            BufRingError::Full { .. } => std::io::ErrorKind::WouldBlock,
            _ => std::io::ErrorKind::InvalidInput,
        };
        std::io::Error::new(kind, e)
    }
}

impl crate::book::Book {
    /// Posts the freed buffers of `group` to the kernel.
    pub(crate) fn replenish(&mut self, group: BufGroup) {
        if let Some(g) = self.groups.iter_mut().find(|g| g.id == group.0) {
            g.replenish();
        }
    }

    /// Posts the freed buffers of every group to the kernel.
    #[inline]
    pub(crate) fn replenish_all(&mut self) {
        for g in &mut self.groups {
            g.replenish();
        }
    }
}

impl crate::Uring {
    /// Registers a provided-buffer ring: `opts.count` buffers, all posted to the kernel at
    /// once, under group id `opts.group`. Operations that pick buffers name the returned
    /// group; the buffers they fill come back as [`Output::Pooled`](crate::Output::Pooled),
    /// and go back into the ring when dropped.
    ///
    /// # Examples
    /// ```
    /// use subring_uring::{BufRingOptions, Uring};
    ///
    /// let mut ring = Uring::builder().entries(8).build()?;
    /// let group = ring.register_buf_ring(BufRingOptions::new(7, 4096, 64))?;
    /// assert_eq!(ring.buf_ring_stats(group).unwrap().in_kernel, 64);
    /// ring.unregister_buf_ring(group)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn register_buf_ring(&mut self, opts: BufRingOptions) -> Result<BufGroup, BufRingError> {
        if self.book.groups.iter().any(|g| g.id == opts.group)
            || self.book.send_groups.iter().any(|g| g.id == opts.group)
        {
            return Err(BufRingError::GroupTaken { group: opts.group });
        }
        let (mut group, entries) = Group::new(&opts)?;
        let flags = match opts.incremental {
            true => io_uring::types::IOU_PBUF_RING_INC as u16,
            false => 0,
        };
        // SAFETY: the entries' memory is `group.ring`, which lives in `self.book.groups` from
        // here until `unregister_buf_ring` unregisters it, or until the ring is dropped (the
        // drop leaks it if an operation might still pick from it). `entries` is a power of two
        // of at most 32768, and the memory holds that many entries.
        unsafe {
            self.ring.submitter().register_buf_ring_with_flags(
                group.ring_addr(),
                entries as u16,
                opts.group,
                flags,
            )
        }
        .map_err(|e| match e.raw_os_error() {
            // A kernel before 6.12 rejects the unknown flag.
            Some(libc::EINVAL) if opts.incremental => BufRingError::Unsupported {
                group: opts.group,
                feature: "incremental consumption (IOU_PBUF_RING_INC, Linux 6.12)",
            },
            _ => BufRingError::Os {
                group: opts.group,
                entries,
                source: self.enter_error(e),
            },
        })?;
        group.replenish();
        self.book.groups.push(group);
        Ok(BufGroup(opts.group))
    }

    /// Unregisters a buffer ring (or a send ring), once no operation that uses it is in
    /// flight; every buffer still posted goes back to its pool (the buffers the caller holds
    /// stay valid).
    pub fn unregister_buf_ring(&mut self, group: BufGroup) -> Result<(), BufRingError> {
        let receive = self.book.groups.iter().position(|g| g.id == group.0);
        let send = self.book.send_groups.iter().position(|g| g.id == group.0);
        if receive.is_none() && send.is_none() {
            return Err(BufRingError::NoGroup { group: group.0 });
        }
        let ops = self
            .book
            .slots
            .iter()
            .filter(|s| s.op.as_ref().and_then(crate::Op::buf_group) == Some(group))
            .count();
        if ops > 0 {
            return Err(BufRingError::InFlight {
                group: group.0,
                ops,
            });
        }
        self.ring
            .submitter()
            .unregister_buf_ring(group.0)
            .map_err(|e| BufRingError::Os {
                group: group.0,
                entries: 0,
                source: self.enter_error(e),
            })?;
        if let Some(pos) = receive {
            let mut g = self.book.groups.swap_remove(pos);
            g.reclaim_all();
        }
        if let Some(pos) = send {
            // The queued buffers go back to their pools with the group.
            self.book.send_groups.swap_remove(pos);
        }
        Ok(())
    }

    /// The counters of a registered buffer ring (of a send ring: `posted`, `picked` for the
    /// buffers sent, `refused`, and `in_kernel` for those queued).
    pub fn buf_ring_stats(&self, group: BufGroup) -> Option<BufRingStats> {
        let receive = self.book.groups.iter().find(|g| g.id == group.0);
        let send = self.book.send_groups.iter().find(|g| g.id == group.0);
        receive
            .map(Group::stats)
            .or_else(|| send.map(SendGroup::stats))
    }

    /// The pool a registered buffer ring's buffers come from, read-only (to tell another
    /// process where they lie: [`BufferPool::layout`], [`BufferPool::region`]).
    pub fn buf_ring_pool(&self, group: BufGroup) -> Option<&BufferPool> {
        self.book
            .groups
            .iter()
            .find(|g| g.id == group.0)
            .map(Group::pool)
    }

    /// The memory of a registered buffer ring's entries. Only for tests that play a hostile
    /// writer of the ring's ids and lengths.
    ///
    /// # Safety
    /// The kernel trusts these entries: an address or a length written here makes it write
    /// wherever they point at the next receive. The caller may write an entry's id (bytes 12..14)
    /// and its length (8..12, and only to a length that keeps the entry's buffer inside memory
    /// the ring's pool owns), never its address nor the tail.
    #[doc(hidden)]
    pub unsafe fn buf_ring_memory_for_tests(&self, group: BufGroup) -> Option<&Region> {
        self.book
            .groups
            .iter()
            .find(|g| g.id == group.0)
            .map(|g| &g.ring)
    }

    /// Posts the buffers freed since the last time to their rings now; returns how many. Pushes
    /// of operations that pick buffers, reaps and waits do it on their own.
    pub fn replenish(&mut self) -> usize {
        self.book.groups.iter_mut().map(Group::replenish).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::group::{RingMem, ENTRY};
    use super::tail::EntryMem;
    use super::*;
    use subring_planes::data::{BufHandle, RegionOptions};

    /// An entry is written field by field: entry 0's write leaves the tail, which overlays its
    /// last field, alone.
    #[test]
    fn writing_entry_zero_keeps_the_tail() {
        let ring = Region::anonymous(4 * ENTRY, RegionOptions::new()).unwrap();
        let mem = RingMem(&ring);
        mem.store_tail(0xbeef, std::sync::atomic::Ordering::Release);
        mem.write_entry(0, 0x1122_3344_5566_7788, 0x99aa_bbcc, 0xddee);
        let mut bytes = [0u8; ENTRY];
        let h = BufHandle {
            offset: 0,
            len: ENTRY as u32,
            region: ring.id(),
        };
        ring.read_into(h, &mut bytes).unwrap();
        assert_eq!(
            u64::from_le_bytes(bytes[..8].try_into().unwrap()),
            0x1122_3344_5566_7788
        );
        assert_eq!(
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
            0x99aa_bbcc
        );
        assert_eq!(
            u16::from_le_bytes(bytes[12..14].try_into().unwrap()),
            0xddee
        );
        assert_eq!(
            u16::from_le_bytes(bytes[14..].try_into().unwrap()),
            0xbeef,
            "the tail"
        );
    }
}
