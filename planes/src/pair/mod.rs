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
use std::time::Duration;

use bytemuck::Pod;

use crate::control::{Doorbell, DoorbellStats, NotifierDoorbell};
use crate::data::{
    Claim, ClaimKind, Consumer, CorruptIndex, Producer, PushError, ReadChunk, Region, RegionError,
    RegionOptions, Ring, RingError, RingLayout, Stamped,
};
use crate::interrupt::{
    EventFdSignal, FutexSignal, ModeNotifier, Notifier, NotifyMode, NotifyStats, Signal, WaitError,
    WakeRef,
};
use crate::queue::{Completer, QueueError, Rejected, SetupError, Submitter};
use crate::sync::{AtomicU32, CacheLine, Ordering::*};

mod app;
mod gone;
mod room;
mod service;

use room::{arm_room, wait_room, RoomBell};

pub use app::AppSide;
pub use gone::ServiceGone;
pub use service::{CompletionStager, ServiceSide};

/// Identifies a queue-pair header ("sbqp", little-endian).
pub const PAIR_MAGIC: u32 = u32::from_le_bytes(*b"sbqp");
/// Version of the queue pair's shared-memory layout.
///
/// Version 2: the producer wake word of each ring is used (a side sleeps on a full ring there
/// and its peer wakes it after reaping), so a side of version 1, which never wakes it, must
/// not attach. Version 3: a wake word may say "sleeping until entry N" (event-idx
/// suppression), which a side of version 2 would not take for sleeping; and the header
/// records the pair's features.
pub const PAIR_LAYOUT_VERSION: u32 = 3;

/// The pair's feature bit for event-idx suppression ([`PairConfig::event_idx`]).
const FEATURE_EVENT_IDX: u32 = 1;

#[repr(C)]
#[derive(Debug)]
struct PairState {
    magic: AtomicU32,
    version: AtomicU32,
    app_closed: AtomicU32,
    service_closed: AtomicU32,
    kick_mode: AtomicU32,
    call_mode: AtomicU32,
    /// Feature bits the creator enabled (`FEATURE_*`); a side uses those it also asks for.
    features: AtomicU32,
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
    /// Event-idx suppression (virtio's `VIRTIO_F_EVENT_IDX`, NVMe's EventIdx): a side that
    /// waits for several entries at once ([`AppSide::wait_completions`],
    /// [`ServiceSide::wait_requests_for`]) sleeps until the last of them is published and is
    /// not woken by the ones before. Without it such a wait is woken by every publish and
    /// sleeps again (the sleeping flag alone). Used only if both the pair's creator and the
    /// attaching side ask for it; on by default.
    pub event_idx: bool,
}

impl Default for PairConfig {
    fn default() -> Self {
        PairConfig {
            sq_capacity: 256,
            cq_capacity: 256,
            kick_mode: NotifyMode::Adaptive,
            call_mode: NotifyMode::Adaptive,
            event_idx: true,
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

    /// Event-idx suppression on or off ([`PairConfig::event_idx`]).
    pub fn with_event_idx(mut self, on: bool) -> Self {
        self.event_idx = on;
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
        let sq = RingLayout::of::<S, Stamped>(config.sq_capacity)?;
        let cq = RingLayout::of::<C, Stamped>(config.cq_capacity)?;
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

/// The eventfds of a pair in [`NotifyMode::EventFd`]: one per direction. In one process both
/// sides share them; across processes the side that wakes keeps the eventfd and the other gets
/// [`EventFdSignal::peer_waiter`] (see [`EventFdSignal`]).
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

/// Where one side learns that its peer has closed: the peer's closed word, in shared memory,
/// and on the app side also a word of this process's own, which [`ServiceGone::declare`] sets.
/// The shared word is the peer's to write: a service declared gone (its socket hung up) that
/// keeps the memory mapped could clear it again, and the app's waits would sleep on. The
/// private word it cannot reach.
#[derive(Clone, Copy)]
struct PeerClosed<'a> {
    shared: &'a AtomicU32,
    declared: Option<&'a AtomicU32>,
}

impl<'a> PeerClosed<'a> {
    /// The peer's shared word only (the service side: nothing declares an app gone).
    fn shared(shared: &'a AtomicU32) -> Self {
        PeerClosed {
            shared,
            declared: None,
        }
    }

    #[inline(always)]
    fn closed(self) -> bool {
        // SYNC POINT (pair-close): `declared` is set with Release in `ServiceGone::declare`
        // after the shared word; Acquire as in `closed`.
        closed(self.shared) || self.declared.is_some_and(|d| d.load(Acquire) != 0)
    }
}

/// Sets this side's closed word and wakes the peer. `RELAXED` is a loom negative control's
/// breakage (the constant folds away).
fn close<const RELAXED: bool>(word: &AtomicU32, peer: &dyn Notifier) {
    // SYNC POINT (pair-close): Release pairs with the Acquire load in `closed`.
    word.store(1, if RELAXED { Relaxed } else { Release });
    // Wake the peer if it sleeps; its wait condition includes our closed word. Best effort: if
    // the wake fails the peer still sees the word at its next timeout or check.
    let _ = peer.notify();
}

/// Waits on `notifier` until `ring` has an entry or the peer has closed; `PeerGone` once it
/// has closed and everything it published has been taken.
#[inline(always)]
fn wait_ring<T: Pod>(
    notifier: &ModeNotifier,
    ring: &mut Consumer<T, Stamped>,
    peer_closed: PeerClosed<'_>,
    timeout: Option<Duration>,
) -> Result<(), QueueError> {
    let mut corrupt: Option<CorruptIndex> = None;
    let mut ready = || match ring.has_entries() {
        Ok(true) => true,
        Ok(false) => peer_closed.closed(),
        Err(e) => {
            corrupt = Some(e);
            true
        }
    };
    notifier.wait_until(&mut ready, timeout)?;
    ring_waited(ring, corrupt, peer_closed)
}

/// Waits on `notifier` until `ring` has `n` entries (at most its capacity), or the peer has
/// closed, or `timeout` passed with at least one entry there; returns how many are ready.
/// With `event_idx`, it sleeps until the `n`-th entry is published; without, every publish
/// wakes it and it sleeps again. `Timeout` if none came, `PeerGone` once the peer has closed
/// and everything it published has been taken.
fn wait_ring_for<T: Pod>(
    notifier: &ModeNotifier,
    ring: &mut Consumer<T, Stamped>,
    peer_closed: PeerClosed<'_>,
    n: u32,
    event_idx: bool,
    timeout: Option<Duration>,
) -> Result<u32, QueueError> {
    let n = n.clamp(1, ring.capacity());
    let event = ring.event_for(n);
    let mut corrupt: Option<CorruptIndex> = None;
    let mut ready = || match ring.available_up_to(n) {
        Ok(k) => k >= n || peer_closed.closed(),
        Err(e) => {
            corrupt = Some(e);
            true
        }
    };
    let waited = if event_idx {
        notifier.wait_until_entry(event, &mut ready, timeout)
    } else {
        notifier.wait_until(&mut ready, timeout)
    };
    match waited {
        Ok(()) => {}
        // A batch that did not fill in time, or whose peer hung up (died) before filling it:
        // what came is the caller's, and the death is news once nothing is left.
        Err(WaitError::Timeout(_) | WaitError::PeerHungUp)
            if corrupt.is_none() && ring.has_entries()? => {}
        Err(e) => return Err(e.into()),
    }
    ring_waited(ring, corrupt, peer_closed)?;
    Ok(ring.available_up_to(n)?)
}

/// What a wait on `ring` that ended without timing out means.
#[inline(always)]
fn ring_waited<T: Pod>(
    ring: &mut Consumer<T, Stamped>,
    corrupt: Option<CorruptIndex>,
    peer_closed: PeerClosed<'_>,
) -> Result<(), QueueError> {
    if let Some(e) = corrupt {
        // A peer that scribbled on the ring and then closed (or died: see `ServiceGone`):
        // what the caller needs to hear is that it is gone. The corruption stays in the ring,
        // and reporting it instead would hide the death at every wait, forever.
        if peer_closed.closed() {
            return Err(QueueError::PeerGone);
        }
        return Err(e.into());
    }
    if !ring.has_entries()? {
        return Err(QueueError::PeerGone);
    }
    Ok(())
}

/// Announces that this side is about to sleep on `ring` in an external event loop; `true` if it
/// should not (entries, or the peer's close, are already there).
fn arm_ring<T: Pod>(
    ring: &mut Consumer<T, Stamped>,
    peer_closed: PeerClosed<'_>,
) -> Result<bool, QueueError> {
    let word = ring.consumer_wake();
    word.announce_sleep();
    if ring.has_entries()? || peer_closed.closed() {
        word.cancel_sleep();
        return Ok(true);
    }
    Ok(false)
}

/// Ends an external wait begun with [`arm_ring`]: clears the announcement, drains the eventfd.
fn disarm_ring<T: Pod>(
    ring: &Consumer<T, Stamped>,
    fd: Option<&EventFdSignal>,
) -> Result<(), QueueError> {
    ring.consumer_wake().cancel_sleep();
    if let Some(fd) = fd {
        fd.drain()?;
    }
    Ok(())
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
    let layout = PairLayout::of::<S, C>(config)?;
    let region = Region::anonymous(layout.size, RegionOptions::new())?;
    let region = Arc::new(region);
    let signals = PairSignals::for_config(config)?;
    let service = ServiceSide::create(region.clone(), 0, config, signals.clone())?;
    let app = AppSide::attach(region, 0, config, signals)?;
    Ok((app, service))
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
    let layout = PairLayout::of::<S, C>(config)?;
    region.check(offset as u64, layout.size as u64)?;
    #[cfg(loom)]
    construct::<S, C>(region, offset, config, &layout)?;
    init::<S, C>(region, offset, config, &layout, Release)
}

/// Loom builds only: constructs the loom objects of a queue pair at `offset` (its header's
/// atomics and both rings', all zero), as mapped memory is before [`create`]. A model in which
/// creation races an attach calls this first, then
/// [`create_constructed_for_loom`] on one thread while another attaches.
#[cfg(loom)]
#[doc(hidden)]
pub fn construct_for_loom<S: Pod, C: Pod>(
    region: &Arc<Region>,
    offset: usize,
    config: &PairConfig,
) -> Result<(), QueueError> {
    let layout = PairLayout::of::<S, C>(config)?;
    region.check(offset as u64, layout.size as u64)?;
    construct::<S, C>(region, offset, config, &layout)
}

/// Loom builds only: [`create`] over memory that [`construct_for_loom`] prepared, storing the
/// pair's magic with `publish` (`Release` is what `create` does; a negative control weakens
/// it).
#[cfg(loom)]
#[doc(hidden)]
pub fn create_constructed_for_loom<S: Pod, C: Pod>(
    region: &Arc<Region>,
    offset: usize,
    config: &PairConfig,
    publish: crate::sync::Ordering,
) -> Result<(), QueueError> {
    let layout = PairLayout::of::<S, C>(config)?;
    region.check(offset as u64, layout.size as u64)?;
    init::<S, C>(region, offset, config, &layout, publish)
}

#[cfg(loom)]
fn construct<S: Pod, C: Pod>(
    region: &Arc<Region>,
    offset: usize,
    config: &PairConfig,
    layout: &PairLayout,
) -> Result<(), QueueError> {
    let state = StateRef::locate(region, offset)?;
    // SAFETY: loom atomics must be constructed; bounds-checked by the caller, and in a loom
    // model nothing else uses the range yet.
    unsafe {
        state.ptr.as_ptr().write(CacheLine(PairState {
            magic: AtomicU32::new(0),
            version: AtomicU32::new(0),
            app_closed: AtomicU32::new(0),
            service_closed: AtomicU32::new(0),
            kick_mode: AtomicU32::new(0),
            call_mode: AtomicU32::new(0),
            features: AtomicU32::new(0),
        }));
    }
    Ring::<S, Stamped>::construct_for_loom(region, offset + layout.sq, config.sq_capacity)?;
    Ring::<C, Stamped>::construct_for_loom(region, offset + layout.cq, config.cq_capacity)?;
    Ok(())
}

/// Writes the pair header and both rings with atomic stores, the pair's magic last (with
/// `publish`).
fn init<S: Pod, C: Pod>(
    region: &Arc<Region>,
    offset: usize,
    config: &PairConfig,
    layout: &PairLayout,
    publish: crate::sync::Ordering,
) -> Result<(), QueueError> {
    let state = StateRef::locate(region, offset)?;
    let s = state.get();
    s.magic.store(0, Relaxed);
    s.kick_mode.store(mode_code(config.kick_mode), Relaxed);
    s.call_mode.store(mode_code(config.call_mode), Relaxed);
    s.features.store(features_of(config), Relaxed);
    s.app_closed.store(0, Relaxed);
    s.service_closed.store(0, Relaxed);
    s.version.store(PAIR_LAYOUT_VERSION, Relaxed);
    #[cfg(not(loom))]
    {
        Ring::<S, Stamped>::create(region.clone(), offset + layout.sq, config.sq_capacity)?;
        Ring::<C, Stamped>::create(region.clone(), offset + layout.cq, config.cq_capacity)?;
    }
    #[cfg(loom)]
    {
        Ring::<S, Stamped>::create_constructed_for_loom(
            region.clone(),
            offset + layout.sq,
            config.sq_capacity,
            Release,
        )?;
        Ring::<C, Stamped>::create_constructed_for_loom(
            region.clone(),
            offset + layout.cq,
            config.cq_capacity,
            Release,
        )?;
    }
    // SYNC POINT (pair-init): Release pairs with the Acquire load of `magic` in `locate_pair`.
    s.magic.store(PAIR_MAGIC, publish);
    Ok(())
}

fn features_of(config: &PairConfig) -> u32 {
    if config.event_idx {
        FEATURE_EVENT_IDX
    } else {
        0
    }
}

/// What a side found in the pair header.
struct Located {
    state: StateRef,
    layout: PairLayout,
    header: Claim,
    /// Event-idx suppression: enabled by the creator and asked for by this side.
    event_idx: bool,
}

/// Finds the pair header at `offset` and checks it; returns it with the pair's layout.
fn locate_pair<S: Pod, C: Pod>(
    region: &Arc<Region>,
    offset: usize,
    config: &PairConfig,
) -> Result<Located, QueueError> {
    let layout = PairLayout::of::<S, C>(config)?;
    region.check(offset as u64, layout.size as u64)?;
    // The header's words are used through atomics by both sides: claimed as shared, so that
    // no exclusive structure of this process (a buffer pool a peer placed there) overlaps it.
    let header = region.claim(
        offset..offset + std::mem::size_of::<PairHeader>(),
        ClaimKind::Shared,
    )?;
    let state = StateRef::locate(region, offset)?;
    let s = state.get();
    // SYNC POINT (pair-init): Acquire pairs with the Release store in `create`.
    let magic = s.magic.load(Acquire);
    let version = s.version.load(Relaxed);
    if magic != PAIR_MAGIC || version != PAIR_LAYOUT_VERSION {
        return Err(SetupError::NoPair {
            offset,
            magic,
            version,
        }
        .into());
    }
    for (direction, word, mode) in [
        ("kick", &s.kick_mode, config.kick_mode),
        ("call", &s.call_mode, config.call_mode),
    ] {
        let found = word.load(Relaxed);
        if found != mode_code(mode) {
            return Err(SetupError::ModeMismatch {
                offset,
                direction,
                found,
                asked: mode,
            }
            .into());
        }
    }
    // Unknown bits (a newer or hostile creator) are ignored: a feature is used only if this
    // side knows it and asked for it.
    let features = s.features.load(Relaxed) & features_of(config);
    Ok(Located {
        state,
        layout,
        header,
        event_idx: features & FEATURE_EVENT_IDX != 0,
    })
}
