//! One registered buffer ring: its entries, its pool, and the record of what is posted where,
//! against which every buffer id and length a completion reports is checked.

use std::io;
use std::sync::Arc;

use io_uring::cqueue;
use subring_planes::data::{Buf, BufHandle, BufferPool, PoolError, Region, RegionOptions};

use super::tail::{EntryMem, Producer};
use super::{BufChunk, BufRingError, BufRingOptions, BufRingStats, MAX_BUF_RING_ENTRIES};
use crate::Output;

/// Bytes of one ring entry (`struct io_uring_buf`).
pub(super) const ENTRY: usize = 16;

/// One registered buffer ring: its entries' memory (shared with the kernel only), its pool, and
/// the producer's tail.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) id: u16,
    pool: Arc<BufferPool>,
    /// The entries, in memory of their own (page-aligned, as the kernel requires).
    pub(super) ring: Region,
    producer: Producer,
    /// Buffers posted to the kernel and not picked, by id: the only ids a completion may name.
    posted: Vec<u64>,
    /// The id posted at each ring position (indexed by the position's masked value): the
    /// buffers a bundle spans are the ones posted after its first.
    at_position: Vec<u16>,
    /// The position each buffer was last posted at, by id.
    position_of: Vec<u16>,
    /// With incremental consumption, per buffer id: the bytes the kernel has filled so far, and
    /// the buffer itself while the kernel still fills it.
    partial: Option<Vec<Partial>>,
    stats: BufRingStats,
}

/// A buffer of an incrementally consumed ring that the kernel has started to fill.
#[derive(Debug, Default)]
struct Partial {
    filled: u32,
    /// Shared with the chunks handed out; the ring's reference goes when the kernel is done.
    buf: Option<Arc<Buf>>,
}

/// The ring's entries, as the producer writes them.
pub(super) struct RingMem<'a>(pub(super) &'a Region);

impl RingMem<'_> {
    /// The length field of entry `index` (masked below the entry count), as it is now: the
    /// kernel moves the head entry's on with incremental consumption, and some kernels shorten
    /// an entry's when they map a bundle.
    pub(super) fn read_len(&self, index: u16) -> u32 {
        let at = usize::from(index) * ENTRY + 8;
        assert!(at + 4 <= self.0.len(), "entry {index} lies in the ring");
        // SAFETY: inside the mapping (checked above), 4-aligned (the mapping is page-aligned
        // and entries are 16 bytes); a volatile read makes no reference, and the value is
        // checked by the caller before use.
        unsafe { self.0.as_ptr().add(at).cast::<u32>().read_volatile() }
    }
}

impl EntryMem for RingMem<'_> {
    #[inline(always)]
    fn write_entry(&self, index: u16, addr: u64, len: u32, bid: u16) {
        let at = usize::from(index) * ENTRY;
        debug_assert!(at + ENTRY <= self.0.len());
        // SAFETY: `index` is masked below the ring's entry count, so the entry lies inside the
        // mapping (sized for every entry when the group was made). Only this process's ring
        // writes it at the tail (the kernel reads entries between its head and the tail, and
        // may rewrite the address and length of those it is consuming: with incremental
        // consumption, and on some kernels when it maps a bundle; never one past the tail), and
        // the fields are written one by one, volatile, leaving the `resv` field (entry 0's is
        // the tail) alone.
        unsafe {
            let e = self.0.as_ptr().add(at);
            e.cast::<u64>().write_volatile(addr);
            e.add(8).cast::<u32>().write_volatile(len);
            e.add(12).cast::<u16>().write_volatile(bid);
        }
    }

    #[inline(always)]
    fn store_tail(&self, tail: u16, order: std::sync::atomic::Ordering) {
        // SAFETY: offset 14 of entry 0 is the tail, inside the mapping, 2-aligned (the mapping
        // is page-aligned); the kernel reads it with an acquire load, the ring stores it. The
        // loom model of this store is the one in `planes/tests/loom/bufring.rs` (over `post`).
        let tail_word =
            unsafe { std::sync::atomic::AtomicU16::from_ptr(self.0.as_ptr().add(14).cast()) };
        tail_word.store(tail, order);
    }
}

impl Group {
    /// Maps the ring and carves the pool for `opts` (not registered yet); returns the ring's
    /// entry count with it.
    pub(crate) fn new(opts: &BufRingOptions) -> Result<(Group, usize), BufRingError> {
        let group = opts.group;
        if opts.count == 0 || opts.count > MAX_BUF_RING_ENTRIES {
            return Err(BufRingError::Count { count: opts.count });
        }
        let entries = opts.count.next_power_of_two();
        let pool = match &opts.region {
            Some((region, offset)) => {
                BufferPool::new(region.clone(), *offset, opts.buf_size, opts.count)
            }
            None => {
                let len = opts
                    .buf_size
                    .checked_mul(opts.count)
                    .ok_or(BufRingError::Pool {
                        group,
                        source: PoolError::BufSize {
                            buf_size: opts.buf_size,
                        },
                    })?;
                let region = Region::anonymous(len.max(1), RegionOptions::new())
                    .map_err(|source| BufRingError::Region { group, source })?;
                BufferPool::new(Arc::new(region), 0, opts.buf_size, opts.count)
            }
        }
        .map_err(|source| BufRingError::Pool { group, source })?;
        let ring = Region::anonymous(entries * ENTRY, RegionOptions::new())
            .map_err(|source| BufRingError::Region { group, source })?;
        Ok((
            Group {
                id: group,
                pool,
                ring,
                producer: Producer::new(entries as u16),
                posted: vec![0; opts.count.div_ceil(64)],
                at_position: vec![0; entries],
                position_of: vec![0; opts.count],
                partial: opts
                    .incremental
                    .then(|| (0..opts.count).map(|_| Partial::default()).collect()),
                stats: BufRingStats::default(),
            },
            entries,
        ))
    }

    /// The address of the entries, for the registration.
    pub(crate) fn ring_addr(&self) -> u64 {
        self.ring.as_ptr() as u64
    }

    /// The pool the buffers come from, read-only: with its `Arc`, safe code could reclaim a
    /// posted buffer.
    pub(crate) fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// Whether the kernel consumes the buffers incrementally (`IOU_PBUF_RING_INC`).
    pub(crate) fn incremental(&self) -> bool {
        self.partial.is_some()
    }

    pub(crate) fn stats(&self) -> BufRingStats {
        BufRingStats {
            free: self.pool.free_count() as u64,
            ..self.stats
        }
    }

    fn is_posted(&self, bid: u16) -> bool {
        let (word, bit) = (usize::from(bid) / 64, 1u64 << (bid % 64));
        self.posted.get(word).is_some_and(|w| w & bit != 0)
    }

    /// Whether buffer `bid` is posted; marks it so (`to`).
    fn mark(&mut self, bid: u16, to: bool) -> bool {
        let (word, bit) = (usize::from(bid) / 64, 1u64 << (bid % 64));
        let Some(w) = self.posted.get_mut(word) else {
            return false;
        };
        let was = *w & bit != 0;
        if to {
            *w |= bit;
        } else {
            *w &= !bit;
        }
        was
    }

    /// Posts every free buffer of the pool to the kernel; returns how many.
    pub(crate) fn replenish(&mut self) -> usize {
        let pool = &self.pool;
        let posted = &mut self.posted;
        let (at_position, position_of) = (&mut self.at_position, &mut self.position_of);
        let (mut position, mask) = (self.producer.tail, self.producer.mask);
        let bufs = std::iter::from_fn(|| pool.alloc()).map(|buf| {
            let addr = buf.as_ptr() as u64;
            let len = buf.capacity() as u32;
            // The pool has at most 32768 buffers (checked when the group was made).
            let bid = buf.index() as u16;
            posted[usize::from(bid) / 64] |= 1 << (bid % 64);
            at_position[usize::from(position & mask)] = bid;
            position_of[usize::from(bid)] = position;
            position = position.wrapping_add(1);
            // Lent before the tail store publishes its entry: the kernel owns it from then on.
            let _ = buf.lend();
            (addr, len, bid)
        });
        let n = self.producer.post::<_, false>(&RingMem(&self.ring), bufs);
        self.stats.posted += n as u64;
        self.stats.in_kernel += n as u64;
        n
    }

    /// What a completion of an operation on this ring carries (the buffer its flags name,
    /// filled with `res` bytes; a bundle's buffers; a chunk of an incrementally consumed
    /// buffer), taken back from the kernel. A refused id or length is an error saying why.
    pub(crate) fn take(&mut self, flags: u32, res: i32, bundle: bool) -> io::Result<Output> {
        let Some(bid) = cqueue::buffer_select(flags) else {
            return Ok(match bundle {
                true => Output::Bundle(Vec::new()),
                false => Output::None,
            });
        };
        if bundle {
            return self.take_bundle(bid, res).map(Output::Bundle);
        }
        if self.partial.is_some() {
            return self.take_chunk(bid, flags, res);
        }
        self.pick(bid, res).map(Output::Pooled)
    }

    /// The buffer `bid`, filled with `res` bytes (a completion that consumed exactly one).
    fn pick(&mut self, bid: u16, res: i32) -> io::Result<Buf> {
        if !self.mark(bid, false) {
            self.stats.refused += 1;
            return Err(refused(self.id, bid, "it is not posted".into()));
        }
        let mut buf = self.reclaim(bid)?;
        self.stats.in_kernel = self.stats.in_kernel.saturating_sub(1);
        let n = usize::try_from(res.max(0)).unwrap_or(0);
        if n > buf.capacity() {
            // The buffer is ours again (it goes back to the pool), but its length is a lie.
            self.stats.refused += 1;
            return Err(refused(
                self.id,
                bid,
                format!("{n} bytes reported in a {}-byte buffer", buf.capacity()),
            ));
        }
        buf.set_len(n);
        self.stats.picked += 1;
        Ok(buf)
    }

    /// Takes posted buffer `bid` back from the pool's lent set (its posted bit already
    /// cleared; `in_kernel` is the caller's to count).
    fn reclaim(&mut self, bid: u16) -> io::Result<Buf> {
        let layout = self.pool.layout();
        let handle = BufHandle {
            offset: layout.base + u64::from(bid) * u64::from(layout.buf_size),
            len: 0,
            region: layout.region,
        };
        match self.pool.reclaim(handle) {
            Ok(buf) => Ok(buf),
            Err(e) => {
                self.stats.refused += 1;
                Err(refused(self.id, bid, e.to_string()))
            }
        }
    }

    /// The buffers of a bundle (`IORING_RECVSEND_BUNDLE`): `res` bytes in the buffers posted
    /// from `first` on, in ring order, the kernel's way: each takes `min(its entry's length,
    /// what is left)` (the length read back from the entry, which some kernels shorten when
    /// they map a bundle). The ring's record of what it posted at each position names them:
    /// `first` must be the buffer posted at its position, and every one after it must still
    /// be posted at the position the run reaches. Nothing is handed out if one is not; the
    /// buffers the kernel consumed then stay out of circulation until the ring is
    /// unregistered (counted in `in_kernel`).
    fn take_bundle(&mut self, first: u16, res: i32) -> io::Result<Vec<Buf>> {
        // No data takes no buffer (the kernel commits none), whatever the flags name.
        let Ok(total @ 1..) = usize::try_from(res) else {
            return Ok(Vec::new());
        };
        let mask = self.producer.mask;
        let start = match self.position_of.get(usize::from(first)) {
            Some(&p)
                if self.is_posted(first) && self.at_position[usize::from(p & mask)] == first =>
            {
                p
            }
            _ => {
                self.stats.refused += 1;
                return Err(refused(self.id, first, "it is not posted".into()));
            }
        };
        let cap = self.pool.buf_size();
        let mut run = Vec::new();
        let mut left = total;
        let mut position = start;
        while left > 0 {
            let bid = self.at_position[usize::from(position & mask)];
            // A length the kernel (or a writer of the entries) changed is checked before use.
            let len = RingMem(&self.ring).read_len(position & mask) as usize;
            let posted_here = self.is_posted(bid) && self.position_of[usize::from(bid)] == position;
            if !posted_here || run.len() >= self.pool.count() || len == 0 || len > cap {
                self.stats.refused += 1;
                let why = match posted_here {
                    false => {
                        format!("a bundle of {total} bytes runs past the buffers posted after it")
                    }
                    true => format!("a bundle of {total} bytes meets an entry of {len} bytes"),
                };
                return Err(refused(self.id, first, why));
            }
            let n = len.min(left);
            run.push((bid, n));
            left -= n;
            position = position.wrapping_add(1);
        }
        let mut bufs = Vec::with_capacity(run.len());
        for (bid, n) in run {
            self.mark(bid, false);
            self.stats.in_kernel = self.stats.in_kernel.saturating_sub(1);
            // Consumed by the kernel: taken back whatever happens to the rest (a failure here
            // is a bug of this ring's record; the buffers taken go back to the pool).
            let mut buf = self.reclaim(bid)?;
            buf.set_len(n);
            self.stats.picked += 1;
            bufs.push(buf);
        }
        Ok(bufs)
    }

    /// A chunk of buffer `bid` of an incrementally consumed ring: the `res` bytes after those
    /// the kernel filled before. The buffer stays with the kernel while the flags say it will
    /// fill more of it (`IORING_CQE_F_BUF_MORE`).
    fn take_chunk(&mut self, bid: u16, flags: u32, res: i32) -> io::Result<Output> {
        let n = u32::try_from(res.max(0)).unwrap_or(0);
        if !self.is_posted(bid) {
            self.stats.refused += 1;
            return Err(refused(self.id, bid, "it is not posted".into()));
        }
        if n == 0 {
            // No data consumes nothing of an incremental buffer: it stays posted as it is.
            return Ok(Output::None);
        }
        let cap = self.pool.buf_size() as u64;
        let filled = self.partial.as_ref().expect("incremental")[usize::from(bid)].filled;
        if u64::from(filled) + u64::from(n) > cap {
            self.stats.refused += 1;
            return Err(refused(
                self.id,
                bid,
                format!("{n} more bytes reported after {filled} in a {cap}-byte buffer"),
            ));
        }
        let buf = match self.partial.as_ref().expect("incremental")[usize::from(bid)]
            .buf
            .clone()
        {
            Some(buf) => buf,
            None => {
                // The kernel's first write to it: the buffer leaves the pool's lent set, shared
                // between the chunks and the ring (for the kernel's part) from here on.
                let buf = Arc::new(self.reclaim(bid)?);
                self.partial.as_mut().expect("incremental")[usize::from(bid)].buf =
                    Some(buf.clone());
                buf
            }
        };
        let last = !cqueue::buffer_more(flags);
        let part = &mut self.partial.as_mut().expect("incremental")[usize::from(bid)];
        part.filled += n;
        if last {
            *part = Partial::default();
            self.mark(bid, false);
            self.stats.in_kernel = self.stats.in_kernel.saturating_sub(1);
            self.stats.picked += 1;
        }
        Ok(Output::Chunk(BufChunk::new(buf, filled, n, last)))
    }

    /// Takes back every buffer still posted to the kernel: only once nothing in flight can pick
    /// one (the group unregistered, or no operation using it in flight). Buffers the caller
    /// holds, or lent onward, are not the ring's to take.
    pub(crate) fn reclaim_all(&mut self) {
        // Partly filled buffers are out of the pool already: dropping the ring's share returns
        // each once its last chunk goes.
        if let Some(partial) = &mut self.partial {
            let started: Vec<u16> = partial
                .iter_mut()
                .enumerate()
                .filter_map(|(bid, p)| p.buf.take().map(|_| bid as u16))
                .collect();
            for bid in started {
                self.mark(bid, false);
                self.stats.in_kernel = self.stats.in_kernel.saturating_sub(1);
            }
        }
        for index in 0..self.pool.count() {
            if self.mark(index as u16, false) && self.reclaim(index as u16).is_ok() {
                self.stats.in_kernel = self.stats.in_kernel.saturating_sub(1);
            }
        }
    }
}

#[cold]
fn refused(group: u16, bid: u16, why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("completion names buffer {bid} of group {group}, which the ring refused: {why}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A completion's flags naming buffer `bid` (`IORING_CQE_F_BUFFER` = 1, the id in the top
    /// half).
    fn naming(bid: u16) -> u32 {
        1 | u32::from(bid) << 16
    }

    /// Bundles across the wrap of the `u16` ring positions, the kernel's side simulated from
    /// the entries as posted (it consumes them in ring order from its head): each bundle's
    /// buffers are the ones posted at its positions, with the entries' lengths; a buffer whose
    /// completion was lost stays posted by the ring's record, and a completion naming it after
    /// its position was reused is refused, not handed the buffer posted there now.
    #[test]
    fn bundles_follow_ring_positions_across_the_u16_wrap() {
        let (mut g, entries) = Group::new(&BufRingOptions::new(0, 64, 8)).unwrap();
        assert_eq!(entries, 8);
        assert_eq!(g.replenish(), 8);
        let mask = g.producer.mask;
        let mut head: u16 = 0;
        // A completion the caller never sees: the kernel consumed the head buffer.
        let lost = g.at_position[usize::from(head & mask)];
        head = head.wrapping_add(1);
        let mut picked = 0u64;
        for round in 0..70_000u32 {
            let k = (round % 3 + 1) as usize;
            let res = (k - 1) * 64 + 1 + (round % 64) as usize;
            let expect: Vec<u16> = (0..k as u16)
                .map(|i| g.at_position[usize::from(head.wrapping_add(i) & mask)])
                .collect();
            let Output::Bundle(bufs) = g.take(naming(expect[0]), res as i32, true).unwrap() else {
                panic!("a bundle")
            };
            let got: Vec<u16> = bufs.iter().map(|b| b.index() as u16).collect();
            assert_eq!(got, expect, "round {round}");
            let lens: Vec<usize> = bufs.iter().map(Buf::len).collect();
            assert_eq!(lens.iter().sum::<usize>(), res);
            assert!(lens[..k - 1].iter().all(|&n| n == 64), "{lens:?}");
            picked += k as u64;
            head = head.wrapping_add(k as u16);
            drop(bufs);
            g.replenish();
        }
        let stats = g.stats();
        assert!(
            stats.posted > 2 * 65_536,
            "the positions wrapped twice: {stats:?}"
        );
        assert_eq!((stats.picked, stats.refused), (picked, 0));
        assert_eq!(stats.in_kernel, 8, "the lost buffer is still counted");
        let e = g.take(naming(lost), 10, true).unwrap_err();
        assert!(e.to_string().contains("not posted"), "{e}");
        // Unregistering takes it back.
        g.reclaim_all();
        assert_eq!(g.stats().in_kernel, 0);
        assert_eq!(g.stats().free, 8);
    }

    /// A bundle takes each buffer's length from its entry, as the kernel does: an entry the
    /// kernel shortened when it mapped the bundle makes that buffer short in the middle of the
    /// run; an entry longer than its buffer is refused.
    #[test]
    fn a_bundle_splits_by_the_entries_lengths() {
        let (mut g, _) = Group::new(&BufRingOptions::new(0, 64, 4)).unwrap();
        g.replenish();
        let len_at = |g: &Group, index: u16, len: u32| {
            let at = usize::from(index) * ENTRY + 8;
            // SAFETY: inside the ring's mapping, which no reference covers; as a kernel that
            // shortens an entry would.
            unsafe { g.ring.as_ptr().add(at).cast::<u32>().write_volatile(len) }
        };
        len_at(&g, 1, 22);
        let first = g.at_position[0];
        let Output::Bundle(bufs) = g.take(naming(first), 64 + 22 + 10, true).unwrap() else {
            panic!("a bundle")
        };
        let lens: Vec<usize> = bufs.iter().map(Buf::len).collect();
        assert_eq!(lens, [64, 22, 10]);
        len_at(&g, 3, 65);
        let e = g.take(naming(g.at_position[3]), 100, true).unwrap_err();
        assert!(e.to_string().contains("an entry of 65 bytes"), "{e}");
        assert_eq!(g.stats().refused, 1);
    }
}
