//! What a service sees of one client while it handles a request: the client's memory, checked
//! handle by handle, and its completion queue.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use bytemuck::Pod;
use subring_planes::data::{BufHandle, PoolError, PoolLayout, Region, RegionError, SharedBytes};
use subring_planes::pair::CompletionStager;

use super::config::ClientInfo;
use super::service::{Ledger, Pending};

/// A handle from a client that does not name its memory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandleError {
    /// It does not name a buffer of the client's pool.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// It falls outside the registered region it names.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// It names a region the client never registered.
    #[error("buffer handle names region {0}, which this client has not registered")]
    UnknownRegion(u32),
}

/// A client's memory as the server maps it: its pool (in the region the server made for it,
/// id 0) and the regions it registered since. Every handle is checked against it before any
/// access. Cheap to clone (reference counts); a clone keeps the mappings alive, so a service
/// may hold one while the kernel or another thread works on the client's buffers.
#[derive(Clone)]
pub struct ClientMemory {
    pub(crate) region: Arc<Region>,
    pub(crate) pool: PoolLayout,
    pub(crate) extra: Arc<[Arc<Region>]>,
}

impl fmt::Debug for ClientMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientMemory")
            .field("pool", &self.pool)
            .field(
                "extra",
                &self.extra.iter().map(|r| r.id()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ClientMemory {
    /// The region `handle` lies in, after checking it: a whole buffer (or a prefix of one) of
    /// the client's pool, or a range inside a region the client registered.
    pub fn resolve(&self, handle: BufHandle) -> Result<&Arc<Region>, HandleError> {
        if handle.region == self.pool.region {
            self.pool.check(handle)?;
            return Ok(&self.region);
        }
        let region = self
            .extra
            .iter()
            .find(|r| r.id() == handle.region)
            .ok_or(HandleError::UnknownRegion(handle.region))?;
        region.check_handle(handle)?;
        Ok(region)
    }

    /// Where the client's pool buffers lie (in [`regions`](Self::regions)' first).
    pub fn pool(&self) -> PoolLayout {
        self.pool
    }

    /// Every region of the client: the one holding its rings and pool first, then those it
    /// registered.
    pub fn regions(&self) -> impl Iterator<Item = &Arc<Region>> {
        std::iter::once(&self.region).chain(self.extra.iter())
    }

    /// Copies the bytes `handle` names into `dst` (as many as fit) and returns how many. Sound
    /// whatever the client writes meanwhile (volatile accesses, no reference into its memory).
    pub fn read(&self, handle: BufHandle, dst: &mut [u8]) -> Result<usize, HandleError> {
        Ok(self.resolve(handle)?.read_into(handle, dst)?)
    }

    /// Copies `src` into the buffer `handle` names (as much as fits) and returns how many
    /// bytes. Sound whatever the client does meanwhile.
    pub fn write(&self, handle: BufHandle, src: &[u8]) -> Result<usize, HandleError> {
        Ok(self.resolve(handle)?.write_from(handle, src)?)
    }

    /// A view of the bytes `handle` names (checked), read and written by copies only.
    pub fn shared(&self, handle: BufHandle) -> Result<SharedBytes<'_>, HandleError> {
        Ok(self.resolve(handle)?.shared(handle)?)
    }
}

/// Where a handler's completions go: the client's completion ring, or, when that is full, a
/// queue in the server's memory.
pub(crate) struct Outbox<'a, C> {
    pub(crate) stager: CompletionStager<'a, C>,
    pub(crate) pending: &'a mut VecDeque<C>,
    pub(crate) staged: u32,
}

impl<C: Pod> Outbox<'_, C> {
    /// Inlined into the handler: staging one completion is a few instructions, fewer than a
    /// call's.
    #[inline(always)]
    pub(crate) fn complete(&mut self, completion: C) {
        if self.pending.is_empty() {
            match self.stager.stage(completion) {
                Ok(()) => self.staged += 1,
                // Full, or a corrupt index that the next turn reports: keep it either way.
                Err(r) => self.keep(r.entry),
            }
        } else {
            self.keep(completion);
        }
    }

    /// Keeps a completion in the server's memory, behind those already waiting.
    #[cold]
    #[inline(never)]
    fn keep(&mut self, completion: C) {
        self.pending.push_back(completion);
    }
}

/// What a handler sees of its client: its memory and its completion queue.
pub struct Ctx<'a, C> {
    pub(crate) info: &'a ClientInfo,
    pub(crate) memory: &'a ClientMemory,
    pub(crate) sink: Outbox<'a, C>,
    pub(crate) ledger: &'a Arc<Ledger>,
    pub(crate) deferred: u32,
    /// Bytes of the client's memory this turn's requests touched through this context.
    pub(crate) touched: u64,
}

impl<C> fmt::Debug for Ctx<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx").field("client", self.info).finish()
    }
}

impl<C: Pod> Ctx<'_, C> {
    /// Posts a completion. Never fails: if the completion ring is full it waits in the
    /// server's memory (and the server takes no more requests from this client until it has
    /// been delivered), so nothing is lost.
    #[inline(always)]
    pub fn complete(&mut self, completion: C) {
        self.sink.complete(completion)
    }
}

impl<C> Ctx<'_, C> {
    /// The client.
    pub fn client(&self) -> &ClientInfo {
        self.info
    }

    /// The client's memory, to check handles against, copy through, or (cloned) keep.
    pub fn memory(&self) -> &ClientMemory {
        self.memory
    }

    /// Answers the current request later: the returned token completes it from outside this
    /// call, with [`Completions::complete`](crate::Completions::complete) in the service's
    /// [`poll`](crate::Service::poll), typically when an event source of the service fires
    /// (an io_uring completion, a timer, another process). Each client may have
    /// [`ServerConfig::max_deferred`](crate::ServerConfig::max_deferred) requests deferred at
    /// once; the server takes no more of its requests until some are answered. A token
    /// dropped without completing is counted in
    /// [`ServerStats::abandoned`](crate::ServerStats::abandoned).
    pub fn defer(&mut self) -> Pending {
        self.deferred += 1;
        Pending::new(self.info.id, self.ledger.clone())
    }

    /// Counts `bytes` toward the client's [`turn_bytes`](crate::ServerConfig::turn_bytes), as
    /// the accessors count what they touch, for work this request costs the service in
    /// proportion to the client's memory some other way: pinning a window of it for the
    /// kernel, say. Once the budget is spent, the rest of the client's batch waits for the next
    /// turn, so that such work is bounded per turn like the rest.
    pub fn charge(&mut self, bytes: u64) {
        self.touched = self.touched.saturating_add(bytes);
    }

    /// The bytes `handle` names, in place (zero-copy), after checking that they are one of the
    /// client's buffers or inside a region it registered. Counts toward the client's
    /// [`turn_bytes`](crate::ServerConfig::turn_bytes) (so do the other accessors).
    ///
    /// The bytes are the client's: it can change them at any moment, even while they are
    /// read (a client that breaks the protocol by writing a buffer it lent). So they come as
    /// a [`SharedBytes`] view that copies them in and out (chunk by chunk, each byte seen
    /// once), never as a reference, which would be undefined behaviour the moment the client
    /// writes. [`payload_unchecked`](Self::payload_unchecked) gives a slice for a client this
    /// service trusts.
    pub fn payload(&mut self, handle: BufHandle) -> Result<SharedBytes<'_>, HandleError> {
        let view = self.memory.shared(handle)?;
        self.touched = self.touched.saturating_add(u64::from(handle.len));
        Ok(view)
    }

    /// The bytes `handle` names as a slice, in place, after the same checks as
    /// [`payload`](Self::payload).
    ///
    /// # Safety
    /// Nothing may write these bytes while the slice lives, the client included: only a
    /// trusted client that keeps the protocol (it does not touch a buffer it lent) can promise
    /// that. With an untrusted one use [`payload`](Self::payload).
    pub unsafe fn payload_unchecked(&mut self, handle: BufHandle) -> Result<&[u8], HandleError> {
        let view = self.payload(handle)?;
        // SAFETY: the caller guarantees that nothing writes these bytes while the slice lives;
        // the view's bounds were checked and its mapping outlives `&mut self`.
        Ok(unsafe { view.as_slice() })
    }

    /// Copies the bytes `handle` names into `dst` (as many as fit) and returns how many.
    pub fn read(&mut self, handle: BufHandle, dst: &mut [u8]) -> Result<usize, HandleError> {
        let n = self.memory.read(handle, dst)?;
        self.touched = self.touched.saturating_add(n as u64);
        Ok(n)
    }

    /// Copies `src` into the buffer `handle` names (as much as fits) and returns how many bytes.
    pub fn write(&mut self, handle: BufHandle, src: &[u8]) -> Result<usize, HandleError> {
        let n = self.memory.write(handle, src)?;
        self.touched = self.touched.saturating_add(n as u64);
        Ok(n)
    }
}
