//! Registered resources: planes regions as fixed buffers, named by [`RegionKey`], and files.
//!
//! Fixed buffers live in a sparse table in the kernel (`IORING_REGISTER_BUFFERS2` with
//! `IORING_RSRC_REGISTER_SPARSE`, Linux 5.19), so that one region can be registered and
//! unregistered while operations on others are in flight: a service registers each client's
//! memory when it first needs it and unregisters it when the client leaves. A region stays
//! registered (and mapped: the table holds an `Arc` of it) while any operation pushed on it has
//! not completed; [`Uring::unregister_region`] refuses until then. On a kernel without sparse
//! tables the whole table is registered again on every change, which needs no fixed operation
//! in flight at all.

use super::*;

/// Slots of the sparse fixed-buffer table (one per GiB of each registration): the most the
/// kernel indexes (`IORING_MAX_REG_BUFFERS`), so that a service registering its clients'
/// memory a window at a time ([`Uring::register_range`]) has room for many windows. The kernel
/// keeps a pointer per slot (128 KiB for the table).
const SPARSE_SLOTS: u32 = 1 << 14;
/// A slot's `region` when it holds no fixed operation.
pub(crate) const NO_REGION: u32 = u32::MAX;

/// Names a region registered with one ring ([`Uring::register_region`]). A key is never
/// reused: after [`Uring::unregister_region`] it names nothing, even when its slot holds
/// another region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegionKey {
    index: u32,
    generation: u32,
}

impl RegionKey {
    /// The key's slot (small and dense, usable as an index; reused by later registrations).
    pub fn index(self) -> u32 {
        self.index
    }
}

impl fmt::Display for RegionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.index, self.generation)
    }
}

#[derive(Debug)]
struct Registered {
    region: Arc<Region>,
    /// The bytes of the region registered (all of it, or a window).
    range: std::ops::Range<usize>,
    generation: u32,
    /// Index of the region's first fixed buffer (one per [`FIXED_CHUNK`]).
    first_index: u16,
    chunks: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TableMode {
    /// Nothing registered yet.
    Unset,
    /// A sparse table of [`SPARSE_SLOTS`], updated slot by slot.
    Sparse,
    /// The kernel has no sparse tables: the whole table is registered again on every change.
    Whole,
}

/// The ring's registered regions, by key.
#[derive(Debug)]
pub(crate) struct FixedTable {
    regions: Vec<Option<Registered>>,
    mode: TableMode,
    /// Sparse-table slots in use.
    used: Vec<bool>,
    /// The generation of the next key.
    generation: u32,
}

impl FixedTable {
    pub(crate) fn new(sparse: bool) -> Self {
        FixedTable {
            regions: Vec::new(),
            mode: if sparse {
                TableMode::Unset
            } else {
                TableMode::Whole
            },
            used: Vec::new(),
            generation: 0,
        }
    }
}

impl FixedTable {
    fn live(&self) -> impl Iterator<Item = (u32, &Registered)> {
        self.regions
            .iter()
            .enumerate()
            .filter_map(|(k, r)| Some((k as u32, r.as_ref()?)))
    }

    /// The registrations by key (`None` for a free key), for registering them again.
    fn by_key(&self) -> Vec<Option<Window>> {
        self.regions
            .iter()
            .map(|r| r.as_ref().map(|r| (r.region.clone(), r.range.clone())))
            .collect()
    }

    /// A run of `n` free sparse slots.
    fn find_slots(&self, n: usize) -> Option<usize> {
        let mut run = 0;
        for (i, used) in self.used.iter().enumerate() {
            run = if *used { 0 } else { run + 1 };
            if run == n {
                return Some(i + 1 - n);
            }
        }
        None
    }

    /// The registration `key` names, if it is still registered.
    fn get(&self, key: RegionKey) -> Option<&Registered> {
        self.regions
            .get(key.index as usize)?
            .as_ref()
            .filter(|r| r.generation == key.generation)
    }

    fn free_key(&self) -> u32 {
        self.regions
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.regions.len()) as u32
    }
}

/// A region and the bytes of it registered.
type Window = (Arc<Region>, std::ops::Range<usize>);

/// The iovecs that register `range` of `region` (inside it: checked by the caller): one per
/// [`FIXED_CHUNK`].
fn chunks_of(region: &Region, range: &std::ops::Range<usize>) -> Vec<libc::iovec> {
    debug_assert!(range.end <= region.len());
    range
        .clone()
        .step_by(FIXED_CHUNK)
        .map(|off| libc::iovec {
            // SAFETY: `off < range.end <= len`, so the pointer stays inside the mapping.
            iov_base: unsafe { region.as_ptr().add(off) }.cast(),
            iov_len: (range.end - off).min(FIXED_CHUNK),
        })
        .collect()
}

/// Why a region could not be registered as fixed buffers, or unregistered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The region has no bytes, or the range to register none.
    #[error("an empty region or range cannot be registered as fixed buffers")]
    Empty,
    /// The range to register runs past the end of the region.
    #[error("bytes {start}..{end} are not inside the region of {len} bytes")]
    Range {
        /// The range's start.
        start: usize,
        /// Its end.
        end: usize,
        /// The region's length.
        len: usize,
    },
    /// The sparse table has no run of free slots long enough (one slot per GiB of region).
    #[error("the fixed-buffer table has no {wanted} free slots of {slots}")]
    TableFull {
        /// Slots the region needs.
        wanted: usize,
        /// Slots in the table.
        slots: usize,
    },
    /// The registered regions need more fixed buffers than the kernel indexes.
    #[error("{chunks} fixed buffers are more than the {max} the kernel indexes")]
    TooMany {
        /// Buffers needed.
        chunks: usize,
        /// The most there can be.
        max: usize,
    },
    /// On a kernel without sparse tables the whole table is registered again on every change,
    /// which needs no fixed operation in flight on any region.
    #[error(
        "this kernel has no sparse fixed-buffer table, so the table can change only while no \
         fixed operation is in flight ({in_flight} are)"
    )]
    TableInUse {
        /// Fixed operations in flight.
        in_flight: u64,
    },
    /// Fixed operations on the region have not completed: cancel them and reap first.
    #[error("{in_flight} fixed operations on the region under key {key} have not completed")]
    InFlight {
        /// The region's key.
        key: RegionKey,
        /// Its operations in flight.
        in_flight: u32,
    },
    /// No region is registered under the key (never, or no longer).
    #[error("no region is registered under key {key}")]
    NoKey {
        /// The key named.
        key: RegionKey,
    },
    /// The kernel refused the registration.
    #[error("registering {len} bytes of fixed buffers failed: {source}")]
    Os {
        /// The region's length.
        len: usize,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

impl From<RegisterError> for io::Error {
    fn from(e: RegisterError) -> Self {
        let kind = match &e {
            RegisterError::Os { source, .. } => source.kind(),
            RegisterError::Empty | RegisterError::Range { .. } => io::ErrorKind::InvalidInput,
            RegisterError::NoKey { .. } => io::ErrorKind::NotFound,
            RegisterError::InFlight { .. } | RegisterError::TableInUse { .. } => {
                io::ErrorKind::ResourceBusy
            }
            _ => io::ErrorKind::OutOfMemory,
        };
        io::Error::new(kind, e)
    }
}

impl Uring {
    /// Registers `region` as fixed buffers, so that fixed reads and writes can name its memory:
    /// by key ([`FixedBuf::In`]), or, if no other registered region has its id, by
    /// [`BufHandle`] or pool [`Buf`]. The ring keeps the region (and so its mapping) until it is
    /// unregistered and nothing in flight uses it, or the ring is dropped.
    ///
    /// The kernel pins all of it, faulting in whatever was never touched, before it returns:
    /// work in proportion to the region's size. To pin a large region as it is used instead,
    /// register windows of it ([`register_range`](Self::register_range)).
    pub fn register_region(&mut self, region: Arc<Region>) -> Result<RegionKey, RegisterError> {
        let len = region.len();
        self.register_range(region, 0..len)
    }

    /// Registers bytes `range` of `region` as fixed buffers (a window of it), as
    /// [`register_region`](Self::register_region) registers all of it: only those bytes are
    /// pinned, and a fixed operation under the key must lie inside them. Windows of one region
    /// may overlap, and each is a registration of its own (its own key, unregistered on its
    /// own). Named by handle or pool buffer rather than by key, a region registered in windows
    /// resolves to a window that holds the buffer.
    pub fn register_range(
        &mut self,
        region: Arc<Region>,
        range: std::ops::Range<usize>,
    ) -> Result<RegionKey, RegisterError> {
        let len = range.len();
        let named = |source: io::Error| RegisterError::Os { len, source };
        if range.end > region.len() {
            return Err(RegisterError::Range {
                start: range.start,
                end: range.end,
                len: region.len(),
            });
        }
        if range.is_empty() {
            return Err(RegisterError::Empty);
        }
        if self.fixed.mode == TableMode::Unset {
            self.fixed.mode = match self.ring.submitter().register_buffers_sparse(SPARSE_SLOTS) {
                Ok(()) => {
                    self.fixed.used = vec![false; SPARSE_SLOTS as usize];
                    TableMode::Sparse
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => TableMode::Whole,
                Err(e) => return Err(named(e)),
            };
        }
        let iovecs = chunks_of(&region, &range);
        let key = self.fixed.free_key();
        let first_index = match self.fixed.mode {
            TableMode::Sparse => {
                let first =
                    self.fixed
                        .find_slots(iovecs.len())
                        .ok_or(RegisterError::TableFull {
                            wanted: iovecs.len(),
                            slots: SPARSE_SLOTS as usize,
                        })?;
                // SAFETY: every iovec covers mapped memory of `region`, which the table keeps
                // alive (below) until its slots are cleared, and clearing waits for every
                // operation pushed on it to complete (`unregister_region`).
                unsafe {
                    self.ring
                        .submitter()
                        .register_buffers_update(first as u32, &iovecs, None)
                }
                .map_err(named)?;
                self.fixed.used[first..first + iovecs.len()].fill(true);
                first
            }
            _ => {
                let mut regions = self.fixed.by_key();
                if key as usize == regions.len() {
                    regions.push(None);
                }
                regions[key as usize] = Some((region.clone(), range.clone()));
                self.register_whole(&regions).map_err(|e| match e {
                    RegisterError::Os { source, .. } => named(source),
                    other => other,
                })?;
                // `register_whole` set every other region's index; this one's is the same sum.
                self.fixed
                    .live()
                    .filter(|(k, _)| *k < key)
                    .map(|(_, r)| usize::from(r.chunks))
                    .sum()
            }
        };
        self.fixed.generation = self.fixed.generation.wrapping_add(1);
        let generation = self.fixed.generation;
        let entry = Registered {
            region,
            range,
            generation,
            first_index: u16::try_from(first_index).map_err(|_| RegisterError::TooMany {
                chunks: first_index + iovecs.len(),
                max: usize::from(u16::MAX),
            })?,
            chunks: iovecs.len() as u16,
        };
        if key as usize == self.fixed.regions.len() {
            self.fixed.regions.push(Some(entry));
        } else {
            self.fixed.regions[key as usize] = Some(entry);
        }
        if self.book.fixed_in_flight.len() < self.fixed.regions.len() {
            self.book
                .fixed_in_flight
                .resize(self.fixed.regions.len(), 0);
        }
        Ok(RegionKey {
            index: key,
            generation,
        })
    }

    /// Registers the whole table again (for a kernel without sparse tables): `regions` by key,
    /// each live one's chunks after those of the keys before it. Needs no fixed operation in
    /// flight: the indices of queued entries would move.
    fn register_whole(&mut self, regions: &[Option<Window>]) -> Result<(), RegisterError> {
        let in_flight: u64 = self
            .book
            .fixed_in_flight
            .iter()
            .map(|n| u64::from(*n))
            .sum();
        if in_flight > 0 {
            return Err(RegisterError::TableInUse { in_flight });
        }
        let len = regions.iter().flatten().map(|(_, range)| range.len()).sum();
        let os = |source| RegisterError::Os { len, source };
        let iovecs: Vec<libc::iovec> = regions
            .iter()
            .flatten()
            .flat_map(|(r, range)| chunks_of(r, range))
            .collect();
        if iovecs.len() > usize::from(u16::MAX) {
            return Err(RegisterError::TooMany {
                chunks: iovecs.len(),
                max: usize::from(u16::MAX),
            });
        }
        if self.fixed.live().next().is_some() {
            match self.ring.submitter().unregister_buffers() {
                // No table: a failed re-registration before, whose restoring failed too.
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {}
                other => other.map_err(os)?,
            }
        }
        if !iovecs.is_empty() {
            // SAFETY: every iovec covers mapped memory of a region the table keeps alive for as
            // long as it stays registered (the caller stores them).
            if let Err(e) = unsafe { self.ring.submitter().register_buffers(&iovecs) } {
                // The old table is gone: put it back, so that the regions registered before
                // stay usable (nothing changed their indices). Should that fail too, their
                // operations fail in the kernel (`EFAULT`) until a registration succeeds.
                let old: Vec<libc::iovec> = self
                    .fixed
                    .by_key()
                    .iter()
                    .flatten()
                    .flat_map(|(r, range)| chunks_of(r, range))
                    .collect();
                if !old.is_empty() {
                    // SAFETY: as above, for the regions the table still keeps.
                    let _ = unsafe { self.ring.submitter().register_buffers(&old) };
                }
                return Err(os(e));
            }
        }
        // Each region's first index is the slots of the table's regions before it, counted
        // from the table just registered: a region registered into a freed key is in it but
        // not in `self.fixed` yet, and the regions after it start past its slots too.
        let mut next = 0u16;
        for (k, entry) in regions.iter().enumerate() {
            let Some((r, range)) = entry else { continue };
            if let Some(Some(live)) = self.fixed.regions.get_mut(k) {
                live.first_index = next;
            }
            let chunks = u16::try_from(chunks_of(r, range).len()).unwrap_or(u16::MAX);
            next = next.saturating_add(chunks);
        }
        Ok(())
    }

    /// Unregisters the region registered under `key` and hands it back. Refused
    /// ([`RegisterError::InFlight`]) while an operation pushed on it has not completed: cancel them
    /// ([`Op::Cancel`]) and reap their completions first. The kernel then holds no reference to
    /// its memory.
    pub fn unregister_region(&mut self, key: RegionKey) -> Result<Arc<Region>, RegisterError> {
        let k = key.index as usize;
        let Some(len) = self.fixed.get(key).map(|r| r.range.len()) else {
            return Err(RegisterError::NoKey { key });
        };
        let in_flight = self.book.fixed_in_flight[k];
        if in_flight > 0 {
            return Err(RegisterError::InFlight { key, in_flight });
        }
        match self.fixed.mode {
            TableMode::Sparse => {
                let r = self.fixed.regions[k].as_ref().expect("checked above");
                let (first, n) = (usize::from(r.first_index), usize::from(r.chunks));
                let empty = vec![
                    libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0,
                    };
                    n
                ];
                // SAFETY: empty iovecs clear the slots; they point to no memory.
                unsafe {
                    self.ring
                        .submitter()
                        .register_buffers_update(first as u32, &empty, None)
                }
                .map_err(|source| RegisterError::Os { len, source })?;
                self.fixed.used[first..first + n].fill(false);
            }
            _ => {
                let mut regions = self.fixed.by_key();
                regions[k] = None;
                self.register_whole(&regions)?;
            }
        }
        let r = self.fixed.regions[k].take().expect("checked above");
        Ok(r.region)
    }

    /// The region registered under `key`.
    pub fn region(&self, key: RegionKey) -> Option<&Arc<Region>> {
        self.fixed.get(key).map(|r| &r.region)
    }

    /// Fixed operations pushed on the region under `key` that have not completed.
    pub fn region_in_flight(&self, key: RegionKey) -> u32 {
        match self.fixed.get(key) {
            Some(_) => self.book.fixed_in_flight[key.index as usize],
            None => 0,
        }
    }

    /// Regions registered now.
    pub fn registered_regions(&self) -> usize {
        self.fixed.live().count()
    }

    /// Unregisters the file table, if there is one.
    fn drop_file_table(&mut self) -> io::Result<()> {
        if self.files > 0 {
            self.ring
                .submitter()
                .unregister_files()
                .map_err(|e| self.enter_error(e))?;
            self.files = 0;
        }
        Ok(())
    }

    /// Registers files, replacing any registered before; [`Target::Fixed`]`(i)` then names
    /// `fds[i]`. The kernel holds its own reference to each file from then on: the caller may
    /// close its descriptors.
    pub fn register_files<F: AsFd>(&mut self, fds: &[F]) -> io::Result<()> {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_fd().as_raw_fd()).collect();
        self.drop_file_table()?;
        self.ring
            .submitter()
            .register_files(&raw)
            .map_err(|e| self.enter_error(e))?;
        self.files = raw.len() as u32;
        Ok(())
    }

    /// Registers a file table of `slots` empty slots, replacing any registered before: room for
    /// direct descriptors ([`DirectSlot`]) and for [`Op::FilesUpdate`]
    /// (Linux 5.19 for the sparse table).
    pub fn register_files_sparse(&mut self, slots: u32) -> io::Result<()> {
        self.drop_file_table()?;
        self.ring
            .submitter()
            .register_files_sparse(slots)
            .map_err(|e| self.enter_error(e))?;
        self.files = slots;
        Ok(())
    }

    /// Resolves a fixed buffer to an address in a registered region.
    pub(crate) fn resolve_fixed(
        &self,
        buf: &FixedBuf,
        for_read: bool,
    ) -> Result<op::FixedAddr, QueueError> {
        let handle: BufHandle = buf.handle(for_read);
        let (key, reg) = match buf {
            FixedBuf::In(key, _) => self
                .fixed
                .get(*key)
                .map(|r| (key.index, r))
                .ok_or(SubmitError::NoRegionKey { key: *key })?,
            _ => {
                let mut found = self
                    .fixed
                    .live()
                    .filter(|(_, r)| r.region.id() == handle.region);
                let first = found
                    .next()
                    .ok_or(SubmitError::NoRegionId { id: handle.region })?;
                // Several registrations with this id: windows of one region (the first that
                // holds the buffer serves), or different regions (ambiguous: name a key).
                let holds = |r: &Registered| {
                    let start = handle.offset as usize;
                    start
                        .checked_add(handle.len as usize)
                        .is_some_and(|end| r.range.start <= start && end <= r.range.end)
                };
                let mut pick = holds(first.1).then_some(first);
                for other in found {
                    if !Arc::ptr_eq(&other.1.region, &first.1.region) {
                        return Err(SubmitError::AmbiguousRegionId { id: handle.region }.into());
                    }
                    if pick.is_none() && holds(other.1) {
                        pick = Some(other);
                    }
                }
                pick.unwrap_or(first)
            }
        };
        reg.region
            .check_handle(handle)
            .map_err(SubmitError::BadHandle)?;
        let base = reg.region.as_ptr();
        if let FixedBuf::Buf(b) = buf {
            // The id matched; make sure the pool buffer really lives in this mapping.
            let p = b.as_ptr() as usize;
            if p < base as usize || p + b.capacity() > base as usize + reg.region.len() {
                return Err(SubmitError::NotInRegion { id: handle.region }.into());
            }
        }
        // `check_handle` bounded `offset + len` by the region's length.
        let offset = handle.offset as usize;
        if offset < reg.range.start || offset + handle.len as usize > reg.range.end {
            return Err(SubmitError::OutsideWindow {
                start: reg.range.start,
                end: reg.range.end,
            }
            .into());
        }
        let within = offset - reg.range.start;
        let chunk = within / FIXED_CHUNK;
        if within % FIXED_CHUNK + handle.len as usize > FIXED_CHUNK {
            return Err(SubmitError::CrossesChunk.into());
        }
        Ok(op::FixedAddr {
            // SAFETY: `check_handle` put `offset + len` inside the mapping.
            ptr: unsafe { base.add(offset) },
            len: handle.len,
            index: reg.first_index + chunk as u16,
            key,
        })
    }
}
