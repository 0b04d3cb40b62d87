//! Send rings: a provided-buffer ring the application fills with data, which a send bundle
//! (`IORING_RECVSEND_BUNDLE` on `IORING_OP_SEND`, Linux 6.10) sends from in one operation.
//!
//! Where a receive ring holds free buffers for the kernel to fill, a send ring is a queue of
//! outgoing buffers: [`Uring::post_send`](crate::Uring::post_send) appends one (the ring owns
//! it from then on, so its bytes stay put while the kernel may read them), and
//! [`Op::SendBundle`](crate::Op::SendBundle) sends the buffers posted, in order, in rounds.
//! A round's completion names the first buffer it took and the bytes sent; the ring hands
//! back, in [`Output::Bundle`](crate::Output::Bundle), the buffers those bytes covered, walking
//! its own queue with the lengths it posted (and any the kernel took in an earlier round cut
//! short). The last completion can end a round early after the kernel took all of its
//! buffers: there the kernel's head says which come back, so the record catches up with the
//! kernel at every bundle's end; a head it cannot read, or past what was posted, puts the
//! ring out of step (no more send bundles on it). One
//! send bundle per ring at a time (the kernel takes from the head when the operation runs;
//! two would share it), and a ring per socket, so that the order of its bytes is the order
//! of its posts.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::cqueue;
use subring_planes::data::{Buf, Region, RegionOptions};

use super::group::{RingMem, ENTRY};
use super::tail::Producer;
use super::{BufGroup, BufRingError, BufRingStats, MAX_BUF_RING_ENTRIES};

/// A buffer [`Uring::post_send`](crate::Uring::post_send) could not post, handed back with the
/// reason.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct SendRejected {
    /// The buffer, unchanged.
    pub buf: Buf,
    /// Why.
    #[source]
    pub error: BufRingError,
}

/// One registered send ring.
#[derive(Debug)]
pub(crate) struct SendGroup {
    pub(crate) id: u16,
    ring: Region,
    producer: Producer,
    /// The buffers posted and not yet sent, in ring order.
    queue: VecDeque<Buf>,
    /// The ring position of `queue`'s front.
    head: u16,
    /// The io_uring instance's descriptor, for reading the kernel's head.
    ring_fd: RawFd,
    /// The ring's record and the kernel's disagreed: no more send bundles on it.
    out_of_step: bool,
    stats: BufRingStats,
}

impl SendGroup {
    /// Maps a ring of `entries` (a power of two, at most 32768) for group `group`.
    pub(crate) fn new(
        group: u16,
        entries: usize,
        ring_fd: RawFd,
    ) -> Result<SendGroup, BufRingError> {
        if !entries.is_power_of_two() || entries > MAX_BUF_RING_ENTRIES {
            return Err(BufRingError::Count { count: entries });
        }
        let ring = Region::anonymous(entries * ENTRY, RegionOptions::new())
            .map_err(|source| BufRingError::Region { group, source })?;
        Ok(SendGroup {
            id: group,
            ring,
            producer: Producer::new(entries as u16),
            queue: VecDeque::with_capacity(entries),
            head: 0,
            ring_fd,
            out_of_step: false,
            stats: BufRingStats::default(),
        })
    }

    pub(crate) fn ring_addr(&self) -> u64 {
        self.ring.as_ptr() as u64
    }

    pub(crate) fn entries(&self) -> usize {
        usize::from(self.producer.mask) + 1
    }

    pub(crate) fn stats(&self) -> BufRingStats {
        BufRingStats {
            in_kernel: self.queue.len() as u64,
            ..self.stats
        }
    }

    /// Appends `buf` to the queue: written to the next entry and published.
    pub(crate) fn post(&mut self, buf: Buf) -> Result<(), SendRejected> {
        let error = if buf.is_empty() {
            Some(BufRingError::EmptyBuffer { group: self.id })
        } else if self.queue.len() == self.entries() {
            Some(BufRingError::Full {
                group: self.id,
                entries: self.entries(),
            })
        } else {
            None
        };
        if let Some(error) = error {
            return Err(SendRejected { buf, error });
        }
        let bid = self.producer.tail & self.producer.mask;
        let entry = (buf.as_ptr() as u64, buf.len() as u32, bid);
        self.producer
            .post::<_, false>(&RingMem(&self.ring), std::iter::once(entry));
        self.queue.push_back(buf);
        self.stats.posted += 1;
        Ok(())
    }

    /// Whether a send bundle may run on the ring: not once its record and the kernel's head
    /// disagreed.
    pub(crate) fn in_step(&self) -> bool {
        !self.out_of_step
    }

    /// The buffers a send bundle's completion covered, taken off the queue in order. A
    /// completion that leaves the bundle running (`more`) reports one round of the kernel's:
    /// `res` bytes from the buffer its flags name (the kernel sends a round with
    /// `MSG_WAITALL`; see `take_round` for one cut short). The last completion
    /// can end a round early (an error, a cut-short send) while the kernel has taken every
    /// buffer of the round off the ring: the kernel's head (`IORING_REGISTER_PBUF_STATUS`)
    /// says which, and those buffers come back, whatever the bytes.
    pub(crate) fn take(&mut self, flags: u32, res: i32, more: bool) -> io::Result<Vec<Buf>> {
        if more {
            return self.take_round(flags, res);
        }
        let kernel_head = match self.kernel_head() {
            Ok(h) => h,
            Err(e) => {
                self.out_of_step = true;
                self.stats.refused += 1;
                let hint = match e.raw_os_error() {
                    Some(libc::EEXIST) => " (a single-issuer ring reaped off its thread)",
                    _ => "",
                };
                return Err(self.refused(format!(
                    "the kernel's head could not be read ({e}{hint}); the ring takes no more \
                     sends"
                )));
            }
        };
        let n = usize::from(kernel_head.wrapping_sub(self.head));
        if n > self.queue.len() {
            self.out_of_step = true;
            self.stats.refused += 1;
            return Err(self.refused(format!(
                "the kernel's head is {n} buffers on, past the {} posted; the ring takes no \
                 more sends",
                self.queue.len()
            )));
        }
        self.head = kernel_head;
        self.stats.picked += n as u64;
        Ok(self.queue.drain(..n).collect())
    }

    /// One round's buffers: `res` bytes from the buffer the flags name. A round is normally
    /// sent whole; one cut short and then continued (a partial send that failed midway, on
    /// some kernels) leaves buffers the kernel took but did not send before the next round's
    /// first: those come back with the next round, ahead of its own.
    fn take_round(&mut self, flags: u32, res: i32) -> io::Result<Vec<Buf>> {
        let Ok(total @ 1..) = usize::try_from(res) else {
            return Ok(Vec::new());
        };
        let mask = self.producer.mask;
        // Where the round starts in the queue: the named buffer's distance from the head
        // (positions of queued buffers differ by less than the ring's entries).
        let skipped = cqueue::buffer_select(flags)
            .map(|first| usize::from(first.wrapping_sub(self.head) & mask))
            .filter(|&j| j < self.queue.len());
        let Some(skipped) = skipped else {
            self.stats.refused += 1;
            return Err(self.refused(format!(
                "{total} bytes sent from buffer {:?}, which is not queued (the queue starts at \
                 buffer {})",
                cqueue::buffer_select(flags),
                self.head & mask
            )));
        };
        let (mut left, mut k) = (total, skipped);
        while left > 0 {
            let Some(buf) = self.queue.get(k) else {
                self.stats.refused += 1;
                return Err(self.refused(format!(
                    "{total} bytes sent, more than the {} buffers posted hold",
                    self.queue.len()
                )));
            };
            let position = self.head.wrapping_add(k as u16);
            let len = RingMem(&self.ring).read_len(position & mask) as usize;
            if len == 0 || len > buf.len() {
                self.stats.refused += 1;
                return Err(self.refused(format!(
                    "entry {} says {len} bytes for a {}-byte buffer",
                    position & mask,
                    buf.len()
                )));
            }
            left -= len.min(left);
            k += 1;
        }
        self.head = self.head.wrapping_add(k as u16);
        self.stats.picked += k as u64;
        Ok(self.queue.drain(..k).collect())
    }

    /// The kernel's head of this ring (`IORING_REGISTER_PBUF_STATUS`, Linux 6.8: every kernel
    /// with send bundles).
    fn kernel_head(&self) -> io::Result<u16> {
        #[repr(C)]
        struct BufStatus {
            buf_group: u32,
            head: u32,
            resv: [u32; 8],
        }
        const IORING_REGISTER_PBUF_STATUS: libc::c_long = 26;
        let mut status = BufStatus {
            buf_group: u32::from(self.id),
            head: 0,
            resv: [0; 8],
        };
        // SAFETY: `io_uring_register(2)` with `IORING_REGISTER_PBUF_STATUS` reads and writes
        // one `struct io_uring_buf_status` (40 bytes, this layout) at the pointer, which points
        // at `status`, alive and exclusively borrowed for the call; the descriptor is the
        // io_uring instance this group belongs to (the `Uring` owning both outlives the call).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                self.ring_fd,
                IORING_REGISTER_PBUF_STATUS,
                &mut status as *mut BufStatus,
                1,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // The kernel's head is a `u16` like the tail.
        Ok(status.head as u16)
    }

    #[cold]
    fn refused(&self, why: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("send bundle completion on group {} refused: {why}", self.id),
        )
    }
}

impl crate::Uring {
    /// Registers a send ring of `entries` buffers (a power of two, at most 32768) as group
    /// `group`: a queue of outgoing buffers for one socket, which
    /// [`Op::SendBundle`](crate::Op::SendBundle) sends from. Needs Linux 6.10
    /// (`IORING_FEAT_RECVSEND_BUNDLE`); unregister it with
    /// [`unregister_buf_ring`](Self::unregister_buf_ring).
    pub fn register_send_ring(
        &mut self,
        group: u16,
        entries: usize,
    ) -> Result<BufGroup, BufRingError> {
        if self.book.groups.iter().any(|g| g.id == group)
            || self.book.send_groups.iter().any(|g| g.id == group)
        {
            return Err(BufRingError::GroupTaken { group });
        }
        if !self.ring.params().is_feature_recvsend_bundle() {
            return Err(BufRingError::Unsupported {
                group,
                feature: "send bundles (IORING_RECVSEND_BUNDLE, Linux 6.10)",
            });
        }
        let g = SendGroup::new(group, entries, self.ring.as_raw_fd())?;
        // SAFETY: the entries' memory is `g.ring`, which lives in `self.book.send_groups` until
        // `unregister_buf_ring` unregisters it, or until the ring is dropped (which leaks it if
        // the unregistration fails). `entries` is a power of two of at most 32768, and the
        // memory holds that many entries.
        unsafe {
            self.ring.submitter().register_buf_ring_with_flags(
                g.ring_addr(),
                entries as u16,
                group,
                0,
            )
        }
        .map_err(|e| BufRingError::Os {
            group,
            entries,
            source: self.enter_error(e),
        })?;
        self.book.send_groups.push(g);
        Ok(BufGroup(group))
    }

    /// Appends `buf` (its first [`len`](Buf::len) bytes) to send ring `group`'s queue; the ring
    /// owns it until a send bundle's completion hands it back. A full ring, an empty buffer or
    /// a group that is not a send ring hands it back with the reason.
    pub fn post_send(&mut self, group: BufGroup, buf: Buf) -> Result<(), SendRejected> {
        match self.book.send_groups.iter_mut().find(|g| g.id == group.0) {
            Some(g) => g.post(buf),
            None => Err(SendRejected {
                buf,
                error: BufRingError::NoGroup { group: group.0 },
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use subring_planes::data::BufferPool;

    use super::*;

    /// A completion's flags naming buffer `bid` (`IORING_CQE_F_BUFFER` = 1, the id in the top
    /// half).
    fn naming(bid: u16) -> u32 {
        1 | u32::from(bid) << 16
    }

    /// Simulated completions: a round's report must name a queued buffer and cover no more
    /// than was posted (a refused one takes nothing); buffers before the one it names come
    /// back with it. A last completion whose kernel
    /// head cannot be read (no io_uring here) puts the ring out of step.
    #[test]
    fn a_round_must_name_a_queued_buffer_and_stay_within_the_queue() {
        let region = Arc::new(Region::anonymous(4 * 64, RegionOptions::new()).unwrap());
        let pool = BufferPool::new(region, 0, 64, 4).unwrap();
        let mut g = SendGroup::new(1, 4, -1).unwrap();
        for _ in 0..3 {
            let mut b = pool.alloc().unwrap();
            b.fill_from(&[7; 10]);
            g.post(b).unwrap();
        }
        let e = g.take(naming(3), 10, true).unwrap_err();
        assert!(e.to_string().contains("which is not queued"), "{e}");
        let e = g.take(naming(0), 31, true).unwrap_err();
        assert!(e.to_string().contains("more than the 3 buffers"), "{e}");
        assert!(
            g.take(0, 0, true).unwrap().is_empty(),
            "nothing sent takes nothing"
        );
        // A round that starts at buffer 1: buffer 0, taken by an earlier round cut short,
        // comes back ahead of it.
        let first = g.take(naming(1), 10, true).unwrap();
        assert_eq!(first.iter().map(Buf::index).collect::<Vec<_>>(), [0, 1]);
        let sent = g.take(naming(2), 5, true).unwrap();
        assert_eq!(sent.len(), 1, "a buffer partly sent is taken too");
        let stats = g.stats();
        assert_eq!((stats.refused, stats.picked, stats.in_kernel), (2, 3, 0));
        // A last completion needs the kernel's head; without it the ring takes no more sends.
        assert!(g.in_step());
        let e = g.take(naming(3), 5, false).unwrap_err();
        assert!(e.to_string().contains("could not be read"), "{e}");
        assert!(!g.in_step());
        drop(first);
        drop(sent);
        assert_eq!(pool.free_count(), 4);
    }
}
