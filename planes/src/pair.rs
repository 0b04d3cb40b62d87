//! A queue pair built from the planes: a submission ring and a completion ring in one region,
//! a doorbell in each direction's wake word, and a per-direction notify mode.
//!
//! This is the shape of a user-space subsystem: the application side ([`AppSide`]) implements
//! [`Submitter`] and [`Completer`]; the subsystem side ([`ServiceSide`]) takes requests and posts
//! completions. Both sides can live in one process ([`in_process`], two threads over an anonymous
//! region) or in two: [`create`] lays the pair out in a memfd region, and each process attaches
//! its side ([`AppSide::attach`], [`ServiceSide::attach`]).
//!
//! # Layout
//! ```text
//! 0       pair header: magic, version, app-closed, service-closed     (one cache line)
//! sq      submission ring (app → service), see `data::Ring`
//! cq      completion ring (service → app)
//! ```
//! Closing either side (dropping it) sets its closed word and notifies the other, which then
//! sees [`QueueError::PeerGone`] once it has drained what was already published. A process that
//! dies cannot set its word: transports detect that out of band (a socket hang-up).

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::Pod;

use crate::control::{Doorbell, DoorbellStats, NotifierDoorbell};
use crate::data::{
    Claim, ClaimKind, Consumer, CorruptIndex, Producer, PushError, ReadChunk, Region, RegionError,
    RegionOptions, Ring, RingError, RingLayout,
};
use crate::interrupt::{
    EventFdSignal, FutexSignal, ModeNotifier, Notifier, NotifyMode, NotifyStats, Signal, WakeRef,
};
use crate::queue::{Completer, QueueError, Rejected, Submitter};
use crate::sync::{AtomicU32, CacheLine, Ordering::*};

/// Identifies a queue-pair header ("sbqp", little-endian).
pub const PAIR_MAGIC: u32 = u32::from_le_bytes(*b"sbqp");
/// Version of the queue pair's shared-memory layout.
pub const PAIR_LAYOUT_VERSION: u32 = 1;

#[repr(C)]
#[derive(Debug)]
struct PairState {
    magic: AtomicU32,
    version: AtomicU32,
    app_closed: AtomicU32,
    service_closed: AtomicU32,
    kick_mode: AtomicU32,
    call_mode: AtomicU32,
}

/// How a notify mode is recorded in the pair header, so both sides must agree on it (a side
/// that spins never wakes one that sleeps).
fn mode_code(mode: NotifyMode) -> u32 {
    match mode {
        NotifyMode::Spin => 1,
        NotifyMode::Adaptive => 2,
        NotifyMode::EventFd => 3,
        NotifyMode::Futex => 4,
    }
}

type PairHeader = CacheLine<PairState>;

/// Ring sizes and notify modes of a queue pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairConfig {
    /// Submission ring entries (a power of two).
    pub sq_capacity: u32,
    /// Completion ring entries (a power of two).
    pub cq_capacity: u32,
    /// How the service waits for submissions (and so how the app's doorbell wakes it).
    pub kick_mode: NotifyMode,
    /// How the app waits for completions (and so how the service wakes it).
    pub call_mode: NotifyMode,
}

impl Default for PairConfig {
    fn default() -> Self {
        PairConfig {
            sq_capacity: 256,
            cq_capacity: 256,
            kick_mode: NotifyMode::Adaptive,
            call_mode: NotifyMode::Adaptive,
        }
    }
}

impl PairConfig {
    /// Both directions in `mode`.
    pub fn with_mode(mut self, mode: NotifyMode) -> Self {
        self.kick_mode = mode;
        self.call_mode = mode;
        self
    }

    /// Both rings with `capacity` entries.
    pub fn with_capacity(mut self, capacity: u32) -> Self {
        self.sq_capacity = capacity;
        self.cq_capacity = capacity;
        self
    }
}

/// Where the parts of a queue pair lie, relative to its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairLayout {
    /// Offset of the submission ring.
    pub sq: usize,
    /// Offset of the completion ring.
    pub cq: usize,
    /// Total bytes.
    pub size: usize,
    /// Alignment the pair's start needs.
    pub align: usize,
}

impl PairLayout {
    /// The layout of a pair with submission entries `S` and completions `C`.
    pub fn of<S: Pod, C: Pod>(config: &PairConfig) -> Result<Self, RingError> {
        let sq = RingLayout::of::<S>(config.sq_capacity)?;
        let cq = RingLayout::of::<C>(config.cq_capacity)?;
        let sq_off = std::mem::size_of::<PairHeader>().next_multiple_of(sq.align);
        let cq_off = (sq_off + sq.size).next_multiple_of(cq.align);
        Ok(PairLayout {
            sq: sq_off,
            cq: cq_off,
            size: cq_off + cq.size,
            align: std::mem::align_of::<PairHeader>()
                .max(sq.align)
                .max(cq.align),
        })
    }
}

/// The eventfds of a pair in [`NotifyMode::EventFd`]: one per direction, shared by both sides
/// (passed to the other process with `SCM_RIGHTS`).
#[derive(Debug, Clone, Default)]
pub struct PairSignals {
    /// Wakes the service (app → service doorbell).
    pub kick: Option<EventFdSignal>,
    /// Wakes the app (service → app interrupt).
    pub call: Option<EventFdSignal>,
}

impl PairSignals {
    /// Fresh eventfds for the directions of `config` that use them.
    pub fn for_config(config: &PairConfig) -> io::Result<Self> {
        let make = |mode: NotifyMode| -> io::Result<Option<EventFdSignal>> {
            mode.uses_eventfd().then(EventFdSignal::new).transpose()
        };
        Ok(PairSignals {
            kick: make(config.kick_mode)?,
            call: make(config.call_mode)?,
        })
    }
}

/// The pair header in the region, kept alive by the region.
struct StateRef {
    _region: Arc<Region>,
    ptr: NonNull<PairHeader>,
}

// SAFETY: the header is atomics only, kept mapped by the `Arc<Region>`.
unsafe impl Send for StateRef {}

impl Clone for StateRef {
    fn clone(&self) -> Self {
        StateRef {
            _region: self._region.clone(),
            ptr: self.ptr,
        }
    }
}

impl StateRef {
    fn get(&self) -> &PairState {
        // SAFETY: bounds- and alignment-checked at construction; atomics only; region alive.
        unsafe { &self.ptr.as_ref().0 }
    }

    fn locate(region: &Arc<Region>, offset: usize) -> Result<Self, RegionError> {
        let ptr = region.ptr_at::<PairHeader>(offset, std::mem::size_of::<PairHeader>())?;
        Ok(StateRef {
            _region: region.clone(),
            ptr,
        })
    }
}

fn closed(word: &AtomicU32) -> bool {
    // SYNC POINT (pair-close): Acquire pairs with the Release store in `close`, so everything the
    // closing side published before closing is visible once we see it closed.
    word.load(Acquire) != 0
}

fn close(word: &AtomicU32, peer: &dyn Notifier) {
    // SYNC POINT (pair-close): Release pairs with the Acquire load in `closed`.
    word.store(1, Release);
    // Wake the peer if it sleeps; its wait condition includes our closed word. Best effort: if
    // the wake fails the peer still sees the word at its next timeout or check.
    let _ = peer.notify();
}

/// Declares the service side of a queue pair gone, on evidence from outside the rings (its
/// process died: the socket it was reached by hung up), for a thread other than the app's: a
/// watcher that sleeps on sockets while the app sleeps on its wake word.
/// [`declare`](ServiceGone::declare) does what the service's own close would have: it marks the
/// pair closed by the service and wakes the app if it announced sleep, so the app's wait ends with
/// [`QueueError::PeerGone`] (once it has reaped what was published) instead of lasting until a
/// timeout. Made by [`AppSide::gone_handle`]; it keeps the shared memory mapped.
pub struct ServiceGone {
    state: StateRef,
    call_word: WakeRef,
    call_fd: Option<EventFdSignal>,
    call_mode: NotifyMode,
}

impl fmt::Debug for ServiceGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceGone")
            .field("call_mode", &self.call_mode)
            .finish_non_exhaustive()
    }
}

impl ServiceGone {
    /// Marks the pair closed by the service and wakes the app if it sleeps. Idempotent.
    pub fn declare(&self) -> io::Result<()> {
        // SYNC POINT (pair-close): Release pairs with the Acquire load in `closed`, as in `close`.
        self.state.get().service_closed.store(1, Release);
        // `take_sleeper` fences (sleep-dekker): either the app's re-check after announcing
        // sleep sees the closed word, or it sleeps and is woken here. The wake is sent whether
        // or not the word still says the app sleeps: the service may have died after claiming
        // the sleeper (clearing the word) and before its own wake-up, and then nobody else
        // would wake the app. A spurious wake costs one system call, once per death.
        let _ = self.call_word.take_sleeper();
        match self.call_mode {
            NotifyMode::Spin => Ok(()),
            NotifyMode::EventFd => match &self.call_fd {
                Some(efd) => efd.wake(&self.call_word),
                None => Ok(()),
            },
            NotifyMode::Adaptive | NotifyMode::Futex => FutexSignal::new().wake(&self.call_word),
        }
    }
}

/// Waits on `notifier` until `ring` has an entry or the peer has closed; `PeerGone` once it
/// has closed and everything it published has been taken.
#[inline(always)]
fn wait_ring<T: Pod>(
    notifier: &ModeNotifier,
    ring: &mut Consumer<T>,
    peer_closed: &AtomicU32,
    timeout: Option<Duration>,
) -> Result<(), QueueError> {
    let mut corrupt: Option<CorruptIndex> = None;
    let mut ready = || match ring.has_entries() {
        Ok(true) => true,
        Ok(false) => closed(peer_closed),
        Err(e) => {
            corrupt = Some(e);
            true
        }
    };
    notifier.wait_until(&mut ready, timeout)?;
    if let Some(e) = corrupt {
        return Err(e.into());
    }
    if !ring.has_entries()? {
        return Err(QueueError::PeerGone);
    }
    Ok(())
}

/// Announces that this side is about to sleep on `ring` in an external event loop; `true` if it
/// should not (entries, or the peer's close, are already there).
fn arm_ring<T: Pod>(ring: &mut Consumer<T>, peer_closed: &AtomicU32) -> Result<bool, QueueError> {
    let word = ring.consumer_wake();
    word.announce_sleep();
    if ring.has_entries()? || closed(peer_closed) {
        word.cancel_sleep();
        return Ok(true);
    }
    Ok(false)
}

/// Ends an external wait begun with [`arm_ring`]: clears the announcement, drains the eventfd.
fn disarm_ring<T: Pod>(ring: &Consumer<T>, fd: Option<&EventFdSignal>) -> Result<(), QueueError> {
    ring.consumer_wake().cancel_sleep();
    if let Some(fd) = fd {
        fd.drain()?;
    }
    Ok(())
}

/// The application side of a queue pair: submits `S`, reaps `C`.
pub struct AppSide<S, C> {
    sq: Producer<S>,
    cq: Consumer<C>,
    doorbell: NotifierDoorbell<ModeNotifier>,
    interrupt: ModeNotifier,
    call_fd: Option<EventFdSignal>,
    call_mode: NotifyMode,
    state: StateRef,
    _header: Claim,
}

impl<S, C> fmt::Debug for AppSide<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSide")
            .field("sq", &self.sq)
            .field("cq", &self.cq)
            .field("doorbell", &self.doorbell)
            .finish_non_exhaustive()
    }
}

/// The subsystem side of a queue pair: takes `S` requests, posts `C` completions.
pub struct ServiceSide<S, C> {
    sq: Consumer<S>,
    cq: Producer<C>,
    kick: ModeNotifier,
    call: ModeNotifier,
    kick_fd: Option<EventFdSignal>,
    state: StateRef,
    _header: Claim,
}

impl<S, C> fmt::Debug for ServiceSide<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceSide")
            .field("sq", &self.sq)
            .field("cq", &self.cq)
            .finish_non_exhaustive()
    }
}

/// Both sides of a queue pair.
pub type Sides<S, C> = (AppSide<S, C>, ServiceSide<S, C>);

/// A queue pair between two threads of this process, over an anonymous region.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use subring_planes::pair::{in_process, PairConfig};
/// use subring_planes::queue::{Completer, Submitter};
///
/// let (mut app, mut service) = in_process::<u64, u64>(&PairConfig::default())?;
/// let server = std::thread::spawn(move || service.run(|x| x * 2, None));
/// app.push(21).unwrap();
/// app.submit()?;
/// app.wait(Some(Duration::from_secs(10)))?;
/// assert_eq!(app.reap()?, Some(42));
/// drop(app); // the service sees the app gone and `run` returns
/// server.join().unwrap()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn in_process<S: Pod, C: Pod>(config: &PairConfig) -> Result<Sides<S, C>, QueueError> {
    let layout = PairLayout::of::<S, C>(config).map_err(ring_error)?;
    let region = Region::anonymous(layout.size, RegionOptions::new()).map_err(region_error)?;
    let region = Arc::new(region);
    let signals = PairSignals::for_config(config)?;
    let service = ServiceSide::create(region.clone(), 0, config, signals.clone())?;
    let app = AppSide::attach(region, 0, config, signals)?;
    Ok((app, service))
}

fn ring_error(e: RingError) -> QueueError {
    match e {
        RingError::Corrupt(c) => QueueError::Corrupt(c),
        other => QueueError::Io(io::Error::new(io::ErrorKind::InvalidInput, other)),
    }
}

fn region_error(e: RegionError) -> QueueError {
    QueueError::Io(io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn push_error<T>(e: PushError<T>) -> Rejected<T> {
    match e {
        PushError::Full(t) => Rejected::new(t, QueueError::Full),
        PushError::Corrupt(c, t) => Rejected::new(t, QueueError::Corrupt(c)),
    }
}

/// Lays out a fresh queue pair at `offset` in `region` (which must hold [`PairLayout::size`]
/// bytes there): the pair header and both rings, empty. Each side then attaches with
/// [`AppSide::attach`] / [`ServiceSide::attach`], in this process or one that maps the same
/// memory. The range must not overlap anything else live in the region.
pub fn create<S: Pod, C: Pod>(
    region: &Arc<Region>,
    offset: usize,
    config: &PairConfig,
) -> Result<(), QueueError> {
    let layout = PairLayout::of::<S, C>(config).map_err(ring_error)?;
    region
        .check(offset as u64, layout.size as u64)
        .map_err(region_error)?;
    let state = StateRef::locate(region, offset).map_err(region_error)?;
    #[cfg(loom)]
    // SAFETY: loom atomics must be constructed; bounds-checked above and not yet shared.
    unsafe {
        state.ptr.as_ptr().write(CacheLine(PairState {
            magic: AtomicU32::new(0),
            version: AtomicU32::new(0),
            app_closed: AtomicU32::new(0),
            service_closed: AtomicU32::new(0),
            kick_mode: AtomicU32::new(0),
            call_mode: AtomicU32::new(0),
        }));
    }
    let s = state.get();
    s.magic.store(0, Relaxed);
    s.kick_mode.store(mode_code(config.kick_mode), Relaxed);
    s.call_mode.store(mode_code(config.call_mode), Relaxed);
    s.app_closed.store(0, Relaxed);
    s.service_closed.store(0, Relaxed);
    s.version.store(PAIR_LAYOUT_VERSION, Relaxed);
    Ring::<S>::create(region.clone(), offset + layout.sq, config.sq_capacity)
        .map_err(ring_error)?;
    Ring::<C>::create(region.clone(), offset + layout.cq, config.cq_capacity)
        .map_err(ring_error)?;
    // SYNC POINT (pair-init): Release pairs with the Acquire load of `magic` in `locate_pair`.
    s.magic.store(PAIR_MAGIC, Release);
    Ok(())
}

/// Finds the pair header at `offset` and checks it; returns it with the pair's layout.
fn locate_pair<S: Pod, C: Pod>(
    region: &Arc<Region>,
    offset: usize,
    config: &PairConfig,
) -> Result<(StateRef, PairLayout, Claim), QueueError> {
    let layout = PairLayout::of::<S, C>(config).map_err(ring_error)?;
    region
        .check(offset as u64, layout.size as u64)
        .map_err(region_error)?;
    // The header's words are used through atomics by both sides: claimed as shared, so that
    // no exclusive structure of this process (a buffer pool a peer placed there) overlaps it.
    let header = region
        .claim(
            offset..offset + std::mem::size_of::<PairHeader>(),
            ClaimKind::Shared,
        )
        .map_err(region_error)?;
    let state = StateRef::locate(region, offset).map_err(region_error)?;
    let s = state.get();
    // SYNC POINT (pair-init): Acquire pairs with the Release store in `create`.
    let magic = s.magic.load(Acquire);
    let version = s.version.load(Relaxed);
    if magic != PAIR_MAGIC || version != PAIR_LAYOUT_VERSION {
        return Err(QueueError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "no queue pair at offset {offset}: magic {magic:#x} version {version}, \
                 expected {PAIR_MAGIC:#x} version {PAIR_LAYOUT_VERSION}"
            ),
        )));
    }
    for (what, word, mode) in [
        ("kick", &s.kick_mode, config.kick_mode),
        ("call", &s.call_mode, config.call_mode),
    ] {
        let found = word.load(Relaxed);
        if found != mode_code(mode) {
            return Err(QueueError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "queue pair at offset {offset} was created with {what} mode code {found}, \
                     this side asks for {mode} (code {}): both sides must use the same mode",
                    mode_code(mode)
                ),
            )));
        }
    }
    Ok((state, layout, header))
}

impl<S: Pod, C: Pod> ServiceSide<S, C> {
    /// Lays out a fresh queue pair ([`create`]) and attaches its service side.
    pub fn create(
        region: Arc<Region>,
        offset: usize,
        config: &PairConfig,
        signals: PairSignals,
    ) -> Result<Self, QueueError> {
        create::<S, C>(&region, offset, config)?;
        Self::attach(region, offset, config, signals)
    }

    /// Attaches the service side to a queue pair laid out at `offset` in `region` with the same
    /// `config`, checking its headers.
    pub fn attach(
        region: Arc<Region>,
        offset: usize,
        config: &PairConfig,
        signals: PairSignals,
    ) -> Result<Self, QueueError> {
        let (state, layout, header) = locate_pair::<S, C>(&region, offset, config)?;
        let sq = Ring::<S>::attach(region.clone(), offset + layout.sq, config.sq_capacity)
            .and_then(Ring::into_consumer)
            .map_err(ring_error)?;
        let cq = Ring::<C>::attach(region.clone(), offset + layout.cq, config.cq_capacity)
            .and_then(Ring::into_producer)
            .map_err(ring_error)?;
        Ok(ServiceSide {
            kick: config
                .kick_mode
                .notifier(sq.consumer_wake(), signals.kick.clone())?,
            call: config
                .call_mode
                .notifier(cq.consumer_wake(), signals.call)?,
            kick_fd: signals.kick,
            sq,
            cq,
            state,
            _header: header,
        })
    }

    /// Waits until a request is ready. Fails with [`QueueError::PeerGone`] once the app has
    /// closed and every request it published has been taken, or [`QueueError::Timeout`].
    pub fn wait_requests(&mut self, timeout: Option<Duration>) -> Result<(), QueueError> {
        wait_ring(
            &self.kick,
            &mut self.sq,
            &self.state.get().app_closed,
            timeout,
        )
    }

    /// Takes the next request, if any.
    pub fn pop_request(&mut self) -> Result<Option<S>, QueueError> {
        Ok(self.sq.pop()?)
    }

    /// Up to `max` ready requests, to read in place and release together.
    pub fn requests(&mut self, max: u32) -> Result<ReadChunk<'_, S>, QueueError> {
        Ok(self.sq.read_chunk(max)?)
    }

    /// Stages a completion; the app sees it after [`flush`](Self::flush). A full completion ring
    /// hands it back.
    pub fn complete(&mut self, completion: C) -> Result<(), Rejected<C>> {
        self.cq.stage(completion).map_err(push_error)
    }

    /// Free completion slots now.
    pub fn completion_space(&mut self) -> Result<u32, QueueError> {
        Ok(self.cq.free_slots()?)
    }

    /// Free completion slots, re-reading the app's head only if fewer than `wanted` are known
    /// to be free (see [`Producer::free_for`]).
    pub fn completion_space_for(&mut self, wanted: u32) -> Result<u32, QueueError> {
        Ok(self.cq.free_for(wanted)?)
    }

    /// Requests ready to take now (reads the stamps of every slot the app published since the
    /// last look).
    pub fn requests_available(&mut self) -> Result<u32, QueueError> {
        Ok(self.sq.available()?)
    }

    /// Requests ready to take, looking for new ones only while fewer than `wanted` are known
    /// (see [`Consumer::available_up_to`]): for a service that takes at most `wanted` at a time.
    pub fn requests_available_up_to(&mut self, wanted: u32) -> Result<u32, QueueError> {
        Ok(self.sq.available_up_to(wanted)?)
    }

    /// Publishes staged completions and wakes the app if it sleeps; returns how many.
    pub fn flush(&mut self) -> Result<u32, QueueError> {
        let n = self.cq.publish();
        if n > 0 {
            self.call.notify()?;
        }
        Ok(n)
    }

    /// Handles the requests that are ready, as many as the completion ring has room for, with
    /// one release and one flush; returns how many were handled.
    pub fn serve_ready(&mut self, handler: &mut impl FnMut(S) -> C) -> Result<u32, QueueError> {
        // Completion room is re-read only when the cached head says there is too little: the
        // head's line moves every time the app reaps.
        let ready = self.sq.available()?;
        let room = self.cq.free_for(ready)?;
        let chunk = self.sq.read_chunk(ready.min(room))?;
        let n = chunk.len();
        let mut out = self.cq.write_chunk(n as u32)?;
        debug_assert_eq!(out.len(), n, "completion room was reserved above");
        for i in 0..n {
            out.set(i, handler(chunk.get(i)));
        }
        chunk.release_all();
        out.commit(n);
        if n > 0 {
            self.call.notify()?;
        }
        Ok(n as u32)
    }

    /// Serves requests with `handler` until the app closes (returns `Ok(())`) or `idle` passes
    /// without a request ([`QueueError::Timeout`]; `None`: no limit). When the completion ring
    /// is full it stops taking requests (back-pressure reaches the app as a full submission ring)
    /// and polls for room with short sleeps.
    pub fn run(
        &mut self,
        mut handler: impl FnMut(S) -> C,
        idle: Option<Duration>,
    ) -> Result<(), QueueError> {
        loop {
            match self.wait_requests(idle) {
                Ok(()) => {}
                Err(QueueError::PeerGone) => return Ok(()),
                Err(e) => return Err(e),
            }
            if self.serve_ready(&mut handler)? == 0 {
                match self.wait_for_room(idle) {
                    Ok(()) => {}
                    // The app closed without reaping what it was owed: a clean end for us.
                    Err(QueueError::PeerGone) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        }
    }

    fn wait_for_room(&mut self, limit: Option<Duration>) -> Result<(), QueueError> {
        let start = Instant::now();
        let mut pause = Duration::from_micros(1);
        while self.cq.free_slots()? == 0 {
            if closed(&self.state.get().app_closed) {
                return Err(QueueError::PeerGone);
            }
            if limit.is_some_and(|l| start.elapsed() >= l) {
                return Err(QueueError::Timeout(limit.unwrap_or_default()));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Whether requests are ready to take.
    pub fn requests_ready(&mut self) -> Result<bool, QueueError> {
        Ok(self.sq.has_entries()?)
    }

    /// Whether the app side has closed.
    pub fn app_closed(&self) -> bool {
        closed(&self.state.get().app_closed)
    }

    /// Interrupt-plane counters: `kick` (waiting for requests) and `call` (notifying the app).
    pub fn stats(&self) -> (NotifyStats, NotifyStats) {
        (self.kick.stats(), self.call.stats())
    }

    /// The eventfd the service sleeps on in eventfd mode, for an event loop. Call
    /// [`arm`](Self::arm) before waiting on it.
    pub fn kick_fd(&self) -> Option<BorrowedFd<'_>> {
        self.kick_fd.as_ref().map(|e| e.as_fd())
    }

    /// The wake word of the submission ring: what [`arm`](Self::arm) announces sleep on and the
    /// app's doorbell wakes. With the kick mode [`NotifyMode::Futex`], the doorbell is a futex
    /// wake of this word, so a service can sleep on many pairs at once in one
    /// [`WaitAny`](crate::interrupt::WaitAny) (arm each, then wait on their words).
    pub fn kick_word(&self) -> WakeRef {
        self.sq.consumer_wake()
    }

    /// Prepares to wait for requests in an external event loop on [`kick_fd`](Self::kick_fd):
    /// announces that the service is about to sleep, so the app's doorbell will signal the
    /// eventfd, then re-checks. Returns `true` if requests (or the app's close) are already
    /// there — then do not wait. After the fd fires, call [`disarm`](Self::disarm).
    pub fn arm(&mut self) -> Result<bool, QueueError> {
        arm_ring(&mut self.sq, &self.state.get().app_closed)
    }

    /// Ends an external wait begun with [`arm`](Self::arm): clears the announcement and drains
    /// the eventfd.
    pub fn disarm(&mut self) -> Result<(), QueueError> {
        disarm_ring(&self.sq, self.kick_fd.as_ref())
    }

    /// Like [`disarm`](Self::disarm), for an event loop that watches
    /// [`kick_fd`](Self::kick_fd) edge-triggered (`EPOLLET`): clears the announcement but
    /// leaves the eventfd's counter alone, which saves a `read` per wake-up. Each later kick
    /// still reports the fd again, because every eventfd write is a new edge.
    pub fn disarm_edge_triggered(&mut self) {
        self.sq.consumer_wake().cancel_sleep();
    }
}

impl<S, C> Drop for ServiceSide<S, C> {
    /// Publishes staged completions (nothing the service completed is dropped), then closes.
    fn drop(&mut self) {
        self.cq.publish_staged();
        close(&self.state.get().service_closed, &self.call);
    }
}

impl<S: Pod, C: Pod> AppSide<S, C> {
    /// Attaches the app side to a queue pair laid out ([`create`]) at `offset` in `region` with
    /// the same `config`, checking its headers.
    pub fn attach(
        region: Arc<Region>,
        offset: usize,
        config: &PairConfig,
        signals: PairSignals,
    ) -> Result<Self, QueueError> {
        let (state, layout, header) = locate_pair::<S, C>(&region, offset, config)?;
        let sq = Ring::<S>::attach(region.clone(), offset + layout.sq, config.sq_capacity)
            .and_then(Ring::into_producer)
            .map_err(ring_error)?;
        let cq = Ring::<C>::attach(region.clone(), offset + layout.cq, config.cq_capacity)
            .and_then(Ring::into_consumer)
            .map_err(ring_error)?;
        if config.call_mode.uses_eventfd() {
            // The app waits on its completion eventfd: open what the wait needs now.
            if let Some(call) = &signals.call {
                call.prepare_wait()?;
            }
        }
        Ok(AppSide {
            doorbell: NotifierDoorbell::new(
                config
                    .kick_mode
                    .notifier(sq.consumer_wake(), signals.kick)?,
            ),
            interrupt: config
                .call_mode
                .notifier(cq.consumer_wake(), signals.call.clone())?,
            call_fd: signals.call,
            call_mode: config.call_mode,
            sq,
            cq,
            state,
            _header: header,
        })
    }

    /// A handle with which another thread can declare the service gone ([`ServiceGone`]).
    pub fn gone_handle(&self) -> ServiceGone {
        ServiceGone {
            state: self.state.clone(),
            call_word: self.cq.consumer_wake(),
            call_fd: self.call_fd.clone(),
            call_mode: self.call_mode,
        }
    }

    fn service_closed(&self) -> bool {
        closed(&self.state.get().service_closed)
    }

    /// Whether completions are ready to reap.
    pub fn completions_ready(&mut self) -> Result<bool, QueueError> {
        Ok(self.cq.has_entries()?)
    }

    /// Whether the service side has closed (its completions may still be waiting to be reaped).
    pub fn peer_closed(&self) -> bool {
        self.service_closed()
    }

    /// The eventfd the app sleeps on for completions in eventfd mode, for an event loop
    /// (epoll, mio, tokio's `AsyncFd`). Call [`arm`](Self::arm) before waiting on it:
    /// readable then means "reap". [`wait`](Completer::wait) does not drain the eventfd (it
    /// waits edge-triggered), so after mixing it with a level-triggered loop the fd may read
    /// readable once spuriously; [`disarm`](Self::disarm) clears that.
    pub fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
        self.call_fd.as_ref().map(|e| e.as_fd())
    }

    /// Prepares to wait for completions in an external event loop on
    /// [`completion_fd`](Self::completion_fd) (like RDMA's `ibv_req_notify_cq`): announces
    /// that this side is about to sleep, so the service will signal the eventfd, then re-checks.
    /// Returns `true` if completions (or the service's close) are already there — then do not
    /// wait, reap. After the fd fires, call [`disarm`](Self::disarm) and reap.
    pub fn arm(&mut self) -> Result<bool, QueueError> {
        arm_ring(&mut self.cq, &self.state.get().service_closed)
    }

    /// Ends an external wait begun with [`arm`](Self::arm): clears the sleep announcement and
    /// drains the eventfd so it is not readable again until the next armed wake-up.
    pub fn disarm(&mut self) -> Result<(), QueueError> {
        disarm_ring(&self.cq, self.call_fd.as_ref())
    }
}

impl<S: Pod, C: Pod> Submitter for AppSide<S, C> {
    type Entry = S;

    fn push(&mut self, entry: S) -> Result<(), Rejected<S>> {
        if self.service_closed() {
            return Err(Rejected::new(entry, QueueError::PeerGone));
        }
        self.sq.stage(entry).map_err(push_error)
    }

    fn push_slice(&mut self, entries: &[S]) -> Result<usize, QueueError> {
        if self.service_closed() {
            return Err(QueueError::PeerGone);
        }
        Ok(self.sq.stage_slice(entries)?)
    }

    fn space(&mut self) -> Result<usize, QueueError> {
        Ok(self.sq.free_slots()? as usize)
    }

    #[inline(always)]
    fn submit(&mut self) -> Result<usize, QueueError> {
        if self.service_closed() {
            return Err(QueueError::PeerGone);
        }
        let n = self.sq.publish();
        if n > 0 {
            self.doorbell.ring()?;
        }
        Ok(n as usize)
    }

    fn doorbell_stats(&self) -> DoorbellStats {
        self.doorbell.stats()
    }
}

impl<S: Pod, C: Pod> Completer for AppSide<S, C> {
    type Completion = C;

    fn reap(&mut self) -> Result<Option<C>, QueueError> {
        Ok(self.cq.pop()?)
    }

    fn reap_into(&mut self, out: &mut Vec<C>, max: usize) -> Result<usize, QueueError> {
        let chunk = self.cq.read_chunk(max.min(u32::MAX as usize) as u32)?;
        let n = chunk.len();
        out.extend(chunk.iter());
        chunk.release_all();
        Ok(n)
    }

    /// Inlined into the caller, system call included (see
    /// [`ModeNotifier`] for why).
    #[inline(always)]
    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), QueueError> {
        wait_ring(
            &self.interrupt,
            &mut self.cq,
            &self.state.get().service_closed,
            timeout,
        )
    }

    fn notify_stats(&self) -> NotifyStats {
        self.interrupt.stats()
    }
}

impl<S, C> Drop for AppSide<S, C> {
    /// Publishes staged submissions (nothing pushed is dropped), then closes; one wake-up
    /// covers both.
    fn drop(&mut self) {
        self.sq.publish_staged();
        close(&self.state.get().app_closed, self.doorbell.notifier());
    }
}
