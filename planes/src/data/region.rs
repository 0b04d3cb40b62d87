//! Regions: mapped memory that rings and buffer pools are laid out in, shareable between
//! processes.

use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use memmap2::{MmapOptions, MmapRaw};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

use super::volatile::{copy_from_shared, copy_to_shared, SharedBytes};
use super::BufHandle;

/// Size of the huge pages subring asks for (the x86-64 and aarch64 default, 2 MiB).
pub const HUGE_PAGE_SIZE: usize = 2 << 20;

/// The largest region subring maps (1 TiB): a bound that keeps every offset arithmetic in range
/// and turns an absurd size from a peer into an error rather than an attempt.
pub const MAX_REGION_LEN: usize = 1 << 40;

/// Why a region could not be created, mapped or accessed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegionError {
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Os {
        /// The operation that failed, e.g. `memfd_create`.
        op: &'static str,
        /// The error the kernel returned.
        #[source]
        source: std::io::Error,
    },
    /// The requested or received length is zero or larger than [`MAX_REGION_LEN`].
    #[error("region length {len} is invalid: must be between 1 and {MAX_REGION_LEN} bytes")]
    InvalidLength {
        /// The length asked for.
        len: u64,
    },
    /// Huge pages were asked for but the kernel has none to give.
    #[error(
        "no huge pages available for a {len}-byte region \
         (reserve some with `sysctl vm.nr_hugepages=N`): {source}"
    )]
    HugePagesUnavailable {
        /// The length asked for.
        len: usize,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
    /// A received memory fd is not sealed against shrinking: the peer could truncate it and make
    /// every access from this process fault with SIGBUS.
    #[error(
        "received fd is not sealed against shrinking (seals {seals:#x}); \
         refusing to map it, a peer could truncate it and crash this process"
    )]
    NotSealed {
        /// The seals found on the fd (`F_GET_SEALS`).
        seals: i32,
    },
    /// A received memory fd does not have the size the handshake announced.
    #[error("received fd is {actual} bytes long, expected {expected}")]
    SizeMismatch {
        /// The size announced.
        expected: usize,
        /// The size found with `fstat`.
        actual: u64,
    },
    /// An access falls outside the region.
    #[error("range at offset {offset} of {len} bytes is outside the {region_len}-byte region")]
    OutOfBounds {
        /// Start of the access.
        offset: u64,
        /// Length of the access.
        len: u64,
        /// Length of the region.
        region_len: usize,
    },
    /// An access is not aligned for the type it reads.
    #[error("offset {offset} is not aligned to {align} bytes")]
    Misaligned {
        /// Start of the access.
        offset: usize,
        /// Alignment required.
        align: usize,
    },
    /// The range is already in use in this process by a structure it would alias (a second
    /// producer or consumer of one ring, or a pool overlapping a ring or another pool).
    #[error("bytes {start}..{end} of the region are already in use here as {existing}; cannot use them as {wanted}")]
    InUse {
        /// Start of the requested range.
        start: usize,
        /// End of the requested range.
        end: usize,
        /// What holds the range.
        existing: ClaimKind,
        /// What was asked for.
        wanted: ClaimKind,
    },
    /// A buffer handle names another region.
    #[error("buffer handle names region {found}, this is region {expected}")]
    WrongRegion {
        /// This region's id.
        expected: u32,
        /// The id in the handle.
        found: u32,
    },
}

fn os(op: &'static str) -> impl FnOnce(Errno) -> RegionError {
    move |e| RegionError::Os {
        op,
        source: e.into(),
    }
}

/// What a range of a region is used for in this process, so that two structures cannot alias
/// the same non-atomic memory through safe code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimKind {
    /// The slots of a ring, as their single producer.
    RingProducer,
    /// The slots of a ring, as their single consumer.
    RingConsumer,
    /// Memory used by one owner only (a buffer pool).
    Exclusive,
    /// A header of atomic words that several structures of this process use, and only through
    /// atomics (a queue pair's header, used by both of its sides): it may overlap other shared
    /// claims, nothing else.
    Shared,
}

impl fmt::Display for ClaimKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClaimKind::RingProducer => "a ring's producer",
            ClaimKind::RingConsumer => "a ring's consumer",
            ClaimKind::Exclusive => "a buffer pool",
            ClaimKind::Shared => "a shared header",
        })
    }
}

/// A range of a region claimed by one structure of this process; released on drop.
pub struct Claim {
    region: std::sync::Arc<Region>,
    id: u64,
}

impl fmt::Debug for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claim").field("id", &self.id).finish()
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.region.claims().1.retain(|c| c.id != self.id);
    }
}

#[derive(Debug)]
struct ClaimEntry {
    id: u64,
    range: Range<usize>,
    kind: ClaimKind,
}

/// Claims are process-local bookkeeping (the peer process has its own), not a shared-memory
/// protocol, so a plain std mutex is right here and there is nothing for loom to model.
#[allow(clippy::disallowed_types)]
type ClaimTable = std::sync::Mutex<(u64, Vec<ClaimEntry>)>;

/// How a [`Region`] is backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Anonymous private memory: shared between the threads of one process only.
    Anonymous,
    /// A sealed memfd created here: its fd can be passed to another process.
    Memfd,
    /// A memory fd received from another process and mapped after checking its seals and size.
    Received,
}

/// Options for creating a [`Region`].
#[derive(Debug, Clone, Default)]
pub struct RegionOptions {
    huge_pages: bool,
    populate: bool,
    id: u32,
}

impl RegionOptions {
    /// Default options: normal pages, id 0, pages faulted in on first touch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Back the region with 2 MiB huge pages (the length is rounded up to a multiple of
    /// [`HUGE_PAGE_SIZE`]). Fails with [`RegionError::HugePagesUnavailable`] when none are
    /// reserved.
    pub fn huge_pages(mut self, yes: bool) -> Self {
        self.huge_pages = yes;
        self
    }

    /// Fault every page in when mapping (`MAP_POPULATE`), so the first access does not fault.
    pub fn populate(mut self, yes: bool) -> Self {
        self.populate = yes;
        self
    }

    /// The region's id, carried in every [`BufHandle`] that points into it, so that a process
    /// sharing several regions with a peer can tell them apart.
    pub fn id(mut self, id: u32) -> Self {
        self.id = id;
        self
    }
}

/// A mapped memory area that rings and buffer pools live in.
///
/// A region is either anonymous (one process), or backed by a memfd that is sealed against
/// shrinking and growing so that it can be handed to another process
/// ([`Region::fd`]), or mapped from such a received fd ([`Region::from_fd`]).
///
/// The region never hands out references to its memory by itself: rings and pools reach it
/// through pointers they bounds-check with [`Region::check`], and claim the ranges they use
/// ([`Region::claim`]) so that two of them cannot alias the same memory in this process. The
/// contents of a shared region are untrusted: the peer may change any byte at any time (and, on
/// a regular memfd, may punch holes that read back as zeroes; on a huge-page memfd, refaulting a
/// punched page can fail if the pool of huge pages is exhausted).
///
/// # Examples
/// ```
/// use subring_planes::data::{Region, RegionOptions};
/// let region = Region::memfd("example", 1 << 16, RegionOptions::new())?;
/// assert_eq!(region.len(), 1 << 16);
/// assert!(region.check(4096, 100).is_ok());
/// assert!(region.check(1 << 16, 1).is_err());
/// # Ok::<(), subring_planes::data::RegionError>(())
/// ```
pub struct Region {
    map: MmapRaw,
    fd: Option<OwnedFd>,
    backing: Backing,
    id: u32,
    claims: ClaimTable,
}

/// Bytes of a mapping unmapped per step when a large region is dropped ([`Region`]'s `Drop`).
const UNMAP_STEP: usize = 64 << 20;

impl Drop for Region {
    /// Takes a large mapping's pages out a step at a time before the mapping goes: `munmap`
    /// holds the process's memory-map lock for writing while it clears the page tables of the
    /// whole range (tens of milliseconds for a gigabyte in use), and every other thread of the
    /// process that maps, unmaps or changes a mapping meanwhile waits (a server in the same
    /// process as a client dropping 2 GiB it had written answered 36-45 ms late).
    /// `MADV_DONTNEED` clears them under the lock for reading, a step at a time; what is left
    /// for the `munmap` is quick. (The memory itself stays the memfd's: a shared mapping's
    /// pages are not freed by it; the pages pinned by the kernel stay pinned.)
    fn drop(&mut self) {
        let len = self.map.len();
        if len <= UNMAP_STEP {
            return;
        }
        let base = self.map.as_mut_ptr();
        for at in (0..len).step_by(UNMAP_STEP) {
            let step = UNMAP_STEP.min(len - at);
            // SAFETY: the range is inside this mapping, which nothing else uses any more (the
            // region is being dropped: no `Buf`, view or ring holds it); its pages may go.
            let _ = unsafe {
                nix::sys::mman::madvise(
                    NonNull::new_unchecked(base.add(at).cast()),
                    step,
                    nix::sys::mman::MmapAdvise::MADV_DONTNEED,
                )
            };
        }
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("ptr", &self.map.as_ptr())
            .field("len", &self.map.len())
            .field("backing", &self.backing)
            .field("id", &self.id)
            .finish()
    }
}

fn checked_len(len: usize, huge: bool) -> Result<usize, RegionError> {
    if len == 0 || len > MAX_REGION_LEN {
        return Err(RegionError::InvalidLength { len: len as u64 });
    }
    Ok(if huge {
        len.next_multiple_of(HUGE_PAGE_SIZE)
    } else {
        len
    })
}

fn map_error(op: &'static str, len: usize, huge: bool, e: std::io::Error) -> RegionError {
    if huge && matches!(e.raw_os_error(), Some(libc::ENOMEM) | Some(libc::EINVAL)) {
        RegionError::HugePagesUnavailable { len, source: e }
    } else {
        RegionError::Os { op, source: e }
    }
}

impl Region {
    /// Maps `len` bytes of anonymous private memory, for rings shared between threads.
    pub fn anonymous(len: usize, options: RegionOptions) -> Result<Self, RegionError> {
        let len = checked_len(len, options.huge_pages)?;
        let mut opts = MmapOptions::new();
        opts.len(len);
        if options.huge_pages {
            opts.huge(None);
        }
        if options.populate {
            opts.populate();
        }
        let map = opts
            .map_anon()
            .map_err(|e| map_error("mmap", len, options.huge_pages, e))?;
        Ok(Region {
            map: MmapRaw::from(map),
            fd: None,
            backing: Backing::Anonymous,
            id: options.id,
            claims: ClaimTable::default(),
        })
    }

    /// Creates a memfd of `len` bytes, seals it against shrinking, growing and further sealing,
    /// and maps it shared. Its fd ([`Region::fd`]) can be passed to another process, which maps
    /// it with [`Region::from_fd`].
    pub fn memfd(name: &str, len: usize, options: RegionOptions) -> Result<Self, RegionError> {
        let len = checked_len(len, options.huge_pages)?;
        let mut flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
        if options.huge_pages {
            flags |= MFdFlags::MFD_HUGETLB;
        }
        let fd = memfd_create(name, flags).map_err(|e| {
            if options.huge_pages {
                map_error("memfd_create", len, true, e.into())
            } else {
                os("memfd_create")(e)
            }
        })?;
        nix::unistd::ftruncate(&fd, len as libc::off_t).map_err(os("ftruncate"))?;
        fcntl(
            &fd,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
            ),
        )
        .map_err(os("fcntl(F_ADD_SEALS)"))?;
        Self::map_fd(fd, len, Backing::Memfd, options)
    }

    /// Maps a memory fd received from a peer, after checking that it is sealed against
    /// shrinking (so the peer cannot make this process SIGBUS) and, if `expected_len` is given,
    /// that it has exactly that size. Without `expected_len` the whole file is mapped.
    pub fn from_fd(
        fd: OwnedFd,
        expected_len: Option<usize>,
        options: RegionOptions,
    ) -> Result<Self, RegionError> {
        let seals = fcntl(&fd, FcntlArg::F_GET_SEALS).map_err(os("fcntl(F_GET_SEALS)"))?;
        if seals & SealFlag::F_SEAL_SHRINK.bits() == 0 {
            return Err(RegionError::NotSealed { seals });
        }
        let actual = nix::sys::stat::fstat(&fd).map_err(os("fstat"))?.st_size as u64;
        let len = match expected_len {
            Some(expected) if expected as u64 != actual => {
                return Err(RegionError::SizeMismatch { expected, actual });
            }
            Some(expected) => expected,
            None => {
                usize::try_from(actual).map_err(|_| RegionError::InvalidLength { len: actual })?
            }
        };
        checked_len(len, false)?;
        Self::map_fd(fd, len, Backing::Received, options)
    }

    fn map_fd(
        fd: OwnedFd,
        len: usize,
        backing: Backing,
        options: RegionOptions,
    ) -> Result<Self, RegionError> {
        let mut opts = MmapOptions::new();
        opts.len(len);
        if options.populate {
            opts.populate();
        }
        let file = File::from(fd);
        let map = opts
            .map_raw(&file)
            .map_err(|e| map_error("mmap", len, options.huge_pages, e))?;
        Ok(Region {
            map,
            fd: Some(file.into()),
            backing,
            id: options.id,
            claims: ClaimTable::default(),
        })
    }

    /// The parts of `len` bytes at `offset` that may hold data, found without reading them
    /// (which would fault their pages in): everything else is a hole of the region's memfd,
    /// never written, and reads as zero. The extents are offsets in the region, whole pages
    /// clipped to the range, in order. `None` when it cannot tell: anonymous memory, a range
    /// out of bounds, a failed `lseek` (`SEEK_DATA`, `SEEK_HOLE`). A file system without holes
    /// (hugetlbfs) reports the whole range; so do pages swapped out.
    pub fn data_extents(&self, offset: usize, len: usize) -> Option<Vec<std::ops::Range<usize>>> {
        use nix::unistd::{lseek, Whence};
        let fd = self.fd.as_ref()?;
        let end = offset.checked_add(len)?;
        if end > self.len() || self.backing == Backing::Anonymous {
            return None;
        }
        let at = |o: usize| libc::off_t::try_from(o).ok();
        let mut extents = Vec::new();
        let mut pos = offset;
        while pos < end {
            let data = match lseek(fd, at(pos)?, Whence::SeekData) {
                Ok(d) => usize::try_from(d).ok()?,
                // No data from `pos` to the end of the file.
                Err(nix::errno::Errno::ENXIO) => break,
                Err(_) => return None,
            };
            if data >= end {
                break;
            }
            let hole = usize::try_from(lseek(fd, at(data)?, Whence::SeekHole).ok()?).ok()?;
            extents.push(data..hole.min(end));
            pos = hole.max(data + 1);
        }
        Some(extents)
    }

    /// Whether `len` bytes at `offset` are certainly zero without reading them: no
    /// [`data_extents`](Self::data_extents) there.
    pub fn reads_as_zero(&self, offset: usize, len: usize) -> bool {
        self.data_extents(offset, len).is_some_and(|e| e.is_empty())
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always false: a region has at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The region's id, as carried in [`BufHandle::region`].
    pub fn id(&self) -> u32 {
        self.id
    }

    /// How the region is backed.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// The memfd behind the region, to pass to a peer (`None` for anonymous regions).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|fd| fd.as_fd())
    }

    /// Start of the mapping. Accesses through it must stay within [`Region::len`].
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Checks that `len` bytes at `offset` lie inside the region.
    pub fn check(&self, offset: u64, len: u64) -> Result<(), RegionError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() as u64 => Ok(()),
            _ => Err(RegionError::OutOfBounds {
                offset,
                len,
                region_len: self.len(),
            }),
        }
    }

    /// A pointer to a `T` at `offset`, after checking that `size` bytes fit in the region and
    /// that the address is aligned for `T`.
    pub fn ptr_at<T>(&self, offset: usize, size: usize) -> Result<NonNull<T>, RegionError> {
        self.check(offset as u64, size as u64)?;
        let align = std::mem::align_of::<T>();
        // SAFETY: `offset + size <= len` was checked, so the pointer stays inside the mapping.
        let ptr = unsafe { self.as_ptr().add(offset) };
        // The address, not just the offset: a type may be aligned beyond the page size.
        if (ptr as usize) % align != 0 {
            return Err(RegionError::Misaligned { offset, align });
        }
        NonNull::new(ptr.cast()).ok_or(RegionError::OutOfBounds {
            offset: offset as u64,
            len: size as u64,
            region_len: self.len(),
        })
    }

    /// Checks a buffer handle received from a peer: it must name this region and lie inside it.
    pub fn check_handle(&self, handle: BufHandle) -> Result<(), RegionError> {
        if handle.region != self.id {
            return Err(RegionError::WrongRegion {
                expected: self.id,
                found: handle.region,
            });
        }
        self.check(handle.offset, u64::from(handle.len))
    }

    /// The bytes a buffer handle names, in place (zero-copy), after checking the handle.
    ///
    /// # Safety
    /// Nothing may write these bytes while the slice lives: not this process (for example
    /// through a [`Buf`](super::Buf) owning them), and not a peer process. That holds when the
    /// protocol has handed the buffer to this side (the peer lent it and will not touch it until
    /// it is returned). If the peer may break that promise, use [`Region::read_into`], which
    /// copies: a slice the peer writes under you can change between two reads of the same byte.
    pub unsafe fn slice(&self, handle: BufHandle) -> Result<&[u8], RegionError> {
        self.check_handle(handle)?;
        // SAFETY: the range was bounds-checked against the live mapping, which lives as long as
        // `self`; the caller guarantees nothing writes it while the slice lives.
        Ok(unsafe {
            std::slice::from_raw_parts(
                self.as_ptr().add(handle.offset as usize),
                handle.len as usize,
            )
        })
    }

    /// Copies the bytes a handle names into the start of `dst` and returns how many were copied:
    /// `handle.len`, or fewer if `dst` is shorter. Safe whatever the peer does meanwhile (the
    /// copy uses volatile reads).
    pub fn read_into(&self, handle: BufHandle, dst: &mut [u8]) -> Result<usize, RegionError> {
        self.check_handle(handle)?;
        let n = (handle.len as usize).min(dst.len());
        // SAFETY: `offset + len` is inside the mapping (checked), which lives as long as `self`;
        // the copy reads it with volatile accesses only.
        unsafe { copy_from_shared(self.as_ptr().add(handle.offset as usize), &mut dst[..n]) };
        Ok(n)
    }

    /// A view of the bytes a handle names, after checking the handle: read and written only by
    /// copies, sound whatever a peer does meanwhile ([`SharedBytes`]).
    pub fn shared(&self, handle: BufHandle) -> Result<SharedBytes<'_>, RegionError> {
        self.check_handle(handle)?;
        // SAFETY: `offset + len` is inside the mapping (checked), which lives as long as
        // `&self`; the view only makes volatile copies, through no reference.
        Ok(unsafe {
            SharedBytes::new(
                NonNull::new_unchecked(self.as_ptr().add(handle.offset as usize)),
                handle.len as usize,
            )
        })
    }

    /// Copies `src` into the bytes a handle names and returns how many were copied:
    /// `src.len()`, or fewer if the handle is shorter. Safe whatever the peer does meanwhile
    /// (the copy uses volatile writes and creates no reference into the region).
    pub fn write_from(&self, handle: BufHandle, src: &[u8]) -> Result<usize, RegionError> {
        self.check_handle(handle)?;
        let n = (handle.len as usize).min(src.len());
        // SAFETY: `offset + len` is inside the mapping (checked); the copy writes it with
        // volatile accesses only, through no reference.
        unsafe { copy_to_shared(&src[..n], self.as_ptr().add(handle.offset as usize)) };
        Ok(n)
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, (u64, Vec<ClaimEntry>)> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims `range` of this region for `kind` in this process, so that no other structure of
    /// this process can alias it: a ring's slots take one producer and one consumer claim over
    /// the same range; anything else may not overlap. Released when the [`Claim`] drops.
    pub fn claim(
        self: &std::sync::Arc<Self>,
        range: Range<usize>,
        kind: ClaimKind,
    ) -> Result<Claim, RegionError> {
        self.check(range.start as u64, range.len() as u64)?;
        let mut table = self.claims();
        for c in &table.1 {
            let overlaps = c.range.start < range.end && range.start < c.range.end;
            let ring_pair = c.range == range
                && matches!(
                    (c.kind, kind),
                    (ClaimKind::RingProducer, ClaimKind::RingConsumer)
                        | (ClaimKind::RingConsumer, ClaimKind::RingProducer)
                );
            let both_shared = c.kind == ClaimKind::Shared && kind == ClaimKind::Shared;
            if overlaps && !ring_pair && !both_shared {
                return Err(RegionError::InUse {
                    start: range.start,
                    end: range.end,
                    existing: c.kind,
                    wanted: kind,
                });
            }
        }
        table.0 += 1;
        let id = table.0;
        table.1.push(ClaimEntry { id, range, kind });
        Ok(Claim {
            region: self.clone(),
            id,
        })
    }
}
