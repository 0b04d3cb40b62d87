//! One of an XSK socket's four rings, mapped from the kernel: a producer word, a consumer
//! word, a flags word and the descriptors, at the offsets `XDP_MMAP_OFFSETS` gives.
//!
//! The kernel is the peer here, and its words are read like any peer's: the index the other
//! side publishes is checked against what this side has seen (it may never run more than the
//! ring's size ahead or behind); a bad value is a [`XdpError::CorruptIndex`], never a read
//! outside the ring.

use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

use subring_planes::sync::{AtomicU32, Ordering};

use crate::XdpError;

mod protocol;

const _: () = assert!(protocol::NEED_WAKEUP == libc::XDP_RING_NEED_WAKEUP);

/// Which ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingKind {
    /// Frames the application lends the kernel for receiving (application produces).
    Fill,
    /// Frames the kernel has sent (kernel produces).
    Completion,
    /// Received frames (kernel produces).
    Rx,
    /// Frames to send (application produces).
    Tx,
}

impl std::fmt::Display for RingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RingKind::Fill => "fill",
            RingKind::Completion => "completion",
            RingKind::Rx => "rx",
            RingKind::Tx => "tx",
        })
    }
}

/// A mapped ring.
pub(crate) struct Mapped {
    kind: RingKind,
    base: NonNull<u8>,
    len: usize,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    descs: NonNull<u8>,
    entries: u32,
}

// SAFETY: the mapping is owned by this value and only reached through `&self`/`&mut self`;
// the words in it are atomics, the descriptors are copied in and out with volatile accesses.
unsafe impl Send for Mapped {}

impl std::fmt::Debug for Mapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapped")
            .field("kind", &self.kind)
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

impl Mapped {
    /// Maps ring `kind` of socket `fd`: `entries` descriptors of `desc_size` bytes at page
    /// offset `pgoff`, its words at `off`.
    pub(crate) fn map(
        fd: BorrowedFd<'_>,
        kind: RingKind,
        off: &libc::xdp_ring_offset,
        entries: u32,
        desc_size: usize,
        pgoff: u64,
    ) -> Result<Self, XdpError> {
        let bad = |what: &str| XdpError::Layout {
            ring: kind,
            what: what.to_string(),
        };
        let len = usize::try_from(off.desc)
            .ok()
            .and_then(|d| d.checked_add(entries as usize * desc_size))
            .ok_or_else(|| bad("descriptors past the address space"))?;
        for (name, at) in [
            ("producer", off.producer),
            ("consumer", off.consumer),
            ("flags", off.flags),
        ] {
            // Each word before the descriptors (where the kernel puts them) and apart from the
            // others: atomic and volatile accesses never share bytes.
            if at % 4 != 0 || at.saturating_add(4) > off.desc {
                return Err(bad(&format!("{name} word at {at}")));
            }
        }
        let words = [off.producer, off.consumer, off.flags];
        for (i, a) in words.iter().enumerate() {
            if words[i + 1..].iter().any(|b| a.abs_diff(*b) < 4) {
                return Err(bad("index and flags words overlap"));
            }
        }
        if off.desc % 8 != 0 {
            return Err(bad(&format!("descriptors at {}", off.desc)));
        }
        // The fill and completion rings' offsets need 64 bits (`XDP_UMEM_PGOFF_FILL_RING` is
        // 2^32): a narrower `off_t` would map another ring.
        let pgoff = libc::off_t::try_from(pgoff).map_err(|_| {
            bad(&format!(
                "page offset {pgoff:#x} past this platform's off_t"
            ))
        })?;
        // SAFETY: a shared mapping of the socket's ring at the kernel's page offset; the kernel
        // checks the length against the ring it made. Nothing else aliases it in this process.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                pgoff,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(XdpError::Os {
                what: "mmap of an XSK ring",
                source: std::io::Error::last_os_error(),
            });
        }
        let base = NonNull::new(base.cast::<u8>()).ok_or_else(|| bad("mapped at 0"))?;
        // SAFETY: every offset was checked to lie inside the `len` bytes just mapped, 4-aligned
        // (the mapping is page-aligned); `AtomicU32` has the layout of a `u32`.
        let at = |o: u64| unsafe { NonNull::new_unchecked(base.as_ptr().add(o as usize)) };
        Ok(Mapped {
            kind,
            base,
            len,
            producer: at(off.producer).cast(),
            consumer: at(off.consumer).cast(),
            flags: at(off.flags).cast(),
            descs: at(off.desc),
            entries,
        })
    }

    fn word(&self, w: NonNull<AtomicU32>) -> &AtomicU32 {
        // SAFETY: inside the mapping, aligned (checked at `map`), alive while `self` is; the
        // kernel accesses it atomically too.
        unsafe { w.as_ref() }
    }

    /// The descriptor slot for index `i` (masked).
    fn slot(&self, i: u32, size: usize) -> *mut u8 {
        let at = (i & (self.entries - 1)) as usize * size;
        // SAFETY: masked below `entries`, so `at + size` lies inside the descriptors (mapped).
        unsafe { self.descs.as_ptr().add(at) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once; nothing points into it any more.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// The application's side of a ring it produces (fill, TX).
#[derive(Debug)]
pub(crate) struct Producer {
    ring: Mapped,
    /// The next index this side publishes.
    prod: u32,
}

impl Producer {
    pub(crate) fn new(ring: Mapped) -> Self {
        // A fresh ring starts at 0 (the kernel zeroes it).
        Producer { ring, prod: 0 }
    }

    /// Free entries, from the kernel's consumer index; a consumer index that would leave more
    /// entries in use than the ring holds (or fewer than none) is refused.
    pub(crate) fn free(&mut self) -> Result<u32, XdpError> {
        let consumer = self.ring.word(self.ring.consumer);
        protocol::free(consumer, self.prod, self.ring.entries).map_err(|cons| {
            XdpError::CorruptIndex {
                ring: self.ring.kind,
                word: "consumer",
                value: cons,
                seen: self.prod,
            }
        })
    }

    /// Writes the `k`th entry after those published (the caller checked there is room).
    pub(crate) fn write_u64(&mut self, k: u32, value: u64) {
        let p = self.ring.slot(self.prod.wrapping_add(k), 8).cast::<u64>();
        // SAFETY: an entry inside the ring (masked), 8-aligned, not published yet: the kernel
        // does not read it until the producer index below covers it.
        unsafe { p.write_volatile(value) };
    }

    /// Writes the `k`th `xdp_desc` after those published.
    pub(crate) fn write_desc(&mut self, k: u32, addr: u64, len: u32) {
        let p = self.ring.slot(self.prod.wrapping_add(k), 16);
        // SAFETY: as in `write_u64`, for a 16-byte descriptor.
        unsafe {
            p.cast::<u64>().write_volatile(addr);
            p.add(8).cast::<u32>().write_volatile(len);
            p.add(12).cast::<u32>().write_volatile(0);
        }
    }

    /// Publishes `n` written entries.
    pub(crate) fn publish(&mut self, n: u32) {
        self.prod = self.prod.wrapping_add(n);
        protocol::publish(self.ring.word(self.ring.producer), self.prod);
    }

    /// Whether the kernel asks to be woken (`XDP_RING_NEED_WAKEUP`), read after a full fence
    /// that orders it after the producer store ([`protocol::needs_wakeup`]).
    pub(crate) fn needs_wakeup(&self) -> bool {
        protocol::needs_wakeup::<false>(self.ring.word(self.ring.flags))
    }
}

/// The application's side of a ring the kernel produces (RX, completion).
#[derive(Debug)]
pub(crate) struct Consumer {
    ring: Mapped,
    /// The next index this side consumes.
    cons: u32,
}

impl Consumer {
    pub(crate) fn new(ring: Mapped) -> Self {
        Consumer { ring, cons: 0 }
    }

    /// Entries ready, from the kernel's producer index; more than the ring holds is refused.
    pub(crate) fn ready(&mut self) -> Result<u32, XdpError> {
        let producer = self.ring.word(self.ring.producer);
        protocol::ready(producer, self.cons, self.ring.entries).map_err(|prod| {
            XdpError::CorruptIndex {
                ring: self.ring.kind,
                word: "producer",
                value: prod,
                seen: self.cons,
            }
        })
    }

    /// The `k`th ready `u64` entry.
    pub(crate) fn read_u64(&self, k: u32) -> u64 {
        let p = self.ring.slot(self.cons.wrapping_add(k), 8).cast::<u64>();
        // SAFETY: inside the ring (masked), 8-aligned, published by the kernel (`ready`).
        unsafe { p.read_volatile() }
    }

    /// The `k`th ready `xdp_desc`: `(addr, len, options)`.
    pub(crate) fn read_desc(&self, k: u32) -> (u64, u32, u32) {
        let p = self.ring.slot(self.cons.wrapping_add(k), 16);
        // SAFETY: as in `read_u64`, for a 16-byte descriptor.
        unsafe {
            (
                p.cast::<u64>().read_volatile(),
                p.add(8).cast::<u32>().read_volatile(),
                p.add(12).cast::<u32>().read_volatile(),
            )
        }
    }

    /// Gives `n` consumed entries back to the kernel.
    pub(crate) fn release(&mut self, n: u32) {
        self.cons = self.cons.wrapping_add(n);
        protocol::release(self.ring.word(self.ring.consumer), self.cons);
    }

    /// The mapped ring (for tests that play a hostile kernel).
    pub(crate) fn mapped(&self) -> &Mapped {
        &self.ring
    }
}

impl Mapped {
    /// Overwrites the producer word, as a hostile kernel could. Only for tests.
    ///
    /// # Safety
    /// The kernel owns this word: after this, the ring is broken for it as well; use it only to
    /// show that this side refuses the value, then drop the socket.
    pub(crate) unsafe fn forge_producer(&self, value: u32) {
        self.word(self.producer).store(value, Ordering::Release);
    }
}
