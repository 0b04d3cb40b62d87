//! The interrupt plane: events back to a waiting side, with suppression so that a busy side
//! costs no system calls.
//!
//! # The sleep/wake protocol
//! A [`WakeWord`] sits in memory both sides see (in a ring's header, for rings). The waiting
//! side announces that it is about to sleep *before* it blocks, re-checks its condition, and only
//! then blocks; the notifying side, *after* publishing its data, looks at the word and makes the
//! wake-up system call only if the waiter announced sleep. This is io_uring's
//! `IORING_SQ_NEED_WAKEUP` and virtio's event suppression.
//!
//! It is the store→load (Dekker) pattern, so both sides need a SeqCst fence between their store
//! and their load:
//! ```text
//! waiter:    word = SLEEPING;  fence(SeqCst);  if ready() { return }  block()
//! notifier:  publish(data);    fence(SeqCst);  if word == SLEEPING { word = AWAKE; wake() }
//! ```
//! Whichever fence comes second in the single total order of SeqCst fences, that side sees the
//! other's store: either the waiter sees the data and does not block, or the notifier sees
//! `SLEEPING` and wakes it. Without the fences both loads may read stale values (store
//! buffering) and the wake-up is lost; the loom model `lost_wakeup_without_recheck` and friends
//! in `planes/tests/loom.rs` check this protocol and show the broken variants fail.
//!
//! A notification is a hint: it may be spurious or coalesced, and only means "look again".
//!
//! # Notifiers
//! - [`EventFdNotifier`]: blocks on an eventfd (in an edge-triggered `epoll_wait`, one system
//!   call per sleep); implements `AsFd` so the waiter can sit in epoll, mio or tokio's
//!   `AsyncFd` instead. The same wait can watch a socket for hang-up
//!   ([`EventFdSignal::watch_hangup`]): a peer's death then ends it with
//!   [`WaitError::PeerHungUp`], so it needs no timeout to notice one.
//! - [`FutexNotifier`]: blocks in `futex(2)` on the wake word itself; works across processes
//!   with no fd at all.
//! - [`SpinNotifier`]: never sleeps, never makes a system call.
//! - [`WaitAny`]: the sleeping side over many words at once (`futex_waitv`), for a service that
//!   sleeps on all its clients' rings without an fd per client; [`SleepSet`] adds an
//!   [`Alarm`] with which another thread of the service wakes it.
//! - Adaptive: a [`SleepNotifier`] with [`SpinPolicy::adaptive`], which spins for a budget that
//!   grows when spinning pays off and shrinks when it does not, then announces sleep and blocks.

mod signal;
mod sleep_set;
mod wait_any;

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::io;
use std::ops::Deref;
use std::os::fd::{AsFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(loom)]
pub use signal::LoomSignal;
pub use signal::{EventFdSignal, FutexSignal, Signal, Woke};
pub use sleep_set::{Alarm, SleepSet};
pub use wait_any::{WaitAny, WAIT_ANY_MAX};

use crate::data::Region;
use crate::sync::{fence, spin_loop, AtomicU32, Ordering::*};

const AWAKE: u32 = 0;
const SLEEPING: u32 = 1;

/// The shared word of the sleep/wake protocol: the waiter sets it before sleeping, the notifier
/// clears it when it decides to wake.
///
/// It is `repr(C)` and lives in shared memory (a ring header), so any value may be found in it;
/// a value that is not "sleeping" only ever means "no syscall needed", which can delay a peer
/// that wrote it, never this process.
#[repr(C)]
#[derive(Debug)]
pub struct WakeWord {
    state: AtomicU32,
}

impl Default for WakeWord {
    fn default() -> Self {
        Self::new()
    }
}

impl WakeWord {
    /// A word saying nobody sleeps.
    pub fn new() -> Self {
        WakeWord {
            state: AtomicU32::new(AWAKE),
        }
    }

    pub(crate) fn reset(&self) {
        self.state.swap(AWAKE, Relaxed);
    }

    /// Waiter side: announce that we are about to sleep. The caller must re-check its condition
    /// after this and before blocking.
    pub fn announce_sleep(&self) {
        self.announce_sleep_with(true);
    }

    fn announce_sleep_with(&self, fenced: bool) {
        // Every write to the word is a read-modify-write, so that its modification order is one
        // reads-from chain (each write reads the one before). The protocol only needs the fences
        // below, but this keeps it independent of how stores from two threads are ordered, which
        // loom models only partially (its modification order is a partial order, so a plain
        // store here lets it report a lost wake-up that C11 forbids). It costs nothing that
        // matters: this path is followed by a fence and a blocking system call.
        self.state.swap(SLEEPING, Relaxed);
        if fenced {
            // SYNC POINT (sleep-dekker): SeqCst fence pairs with the one in `take_sleeper`: either
            // the notifier's load sees SLEEPING, or our re-check after this fence sees its data.
            fence(SeqCst);
        }
    }

    /// Waiter side: we are not going to sleep (or have woken).
    pub fn cancel_sleep(&self) {
        // Only this side ever writes SLEEPING, so a word that reads AWAKE stays AWAKE until we
        // write it: nothing to do. That is the usual case after a wake-up (the notifier's
        // `take_sleeper` cleared it), and skipping the swap matters: the word's line was just
        // written by the other core, and a swap (a locked instruction, a full barrier on x86)
        // would wait for it before the caller's next look at the ring could start, where a load
        // lets the two cache misses overlap.
        if self.state.load(Relaxed) != AWAKE {
            // A read-modify-write for the reason given in `announce_sleep_with`.
            self.state.swap(AWAKE, Relaxed);
        }
    }

    /// Notifier side, after publishing: is a waiter asleep? If so, claims the wake-up (clears
    /// the word) so that later notifications before the waiter sleeps again are suppressed.
    pub fn take_sleeper(&self) -> bool {
        self.take_sleeper_with(true)
    }

    fn take_sleeper_with(&self, fenced: bool) -> bool {
        if fenced {
            // SYNC POINT (sleep-dekker): pairs with the fence in `announce_sleep`; orders the
            // caller's publish before the load of the word.
            fence(SeqCst);
        }
        self.state.load(Relaxed) == SLEEPING && self.state.swap(AWAKE, AcqRel) == SLEEPING
    }

    /// Whether the word currently says a waiter sleeps (a racy snapshot, for diagnostics).
    pub fn is_sleeping(&self) -> bool {
        self.state.load(Relaxed) == SLEEPING
    }

    fn futex_word(&self) -> &AtomicU32 {
        &self.state
    }
}

/// A handle to a [`WakeWord`] that keeps the memory holding it alive: a ring's region, or a
/// process-local allocation ([`WakeRef::local`]).
pub struct WakeRef {
    _owner: Arc<dyn Any + Send + Sync>,
    word: NonNull<WakeWord>,
}

impl fmt::Debug for WakeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WakeRef")
            .field("word", &self.word)
            .field("sleeping", &self.is_sleeping())
            .finish()
    }
}

impl Clone for WakeRef {
    fn clone(&self) -> Self {
        WakeRef {
            _owner: self._owner.clone(),
            word: self.word,
        }
    }
}

// SAFETY: the word is an atomic, safe to share between threads; the owner keeps it alive.
unsafe impl Send for WakeRef {}
// SAFETY: as above.
unsafe impl Sync for WakeRef {}

impl WakeRef {
    /// A fresh word in process-local memory, for notifiers between threads.
    pub fn local() -> Self {
        let owner = Arc::new(WakeWord::new());
        let word = NonNull::from(&*owner);
        WakeRef {
            _owner: owner,
            word,
        }
    }

    /// A word at `word` inside `region`.
    ///
    /// # Safety
    /// `word` must point to an aligned `WakeWord` inside `region`'s mapping.
    pub unsafe fn from_raw(region: Arc<Region>, word: NonNull<WakeWord>) -> Self {
        WakeRef {
            _owner: region,
            word,
        }
    }
}

impl Deref for WakeRef {
    type Target = WakeWord;
    fn deref(&self) -> &WakeWord {
        // SAFETY: `_owner` keeps the memory mapped; the word is only accessed atomically.
        unsafe { self.word.as_ref() }
    }
}

/// What [`Notifier::notify`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notified {
    /// The waiter had announced sleep: a wake-up was sent.
    Sent,
    /// Nobody sleeps: no system call was made.
    Suppressed,
}

/// Why a wait ended without its condition becoming true.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The timeout passed.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The peer hung up (a descriptor watched with [`EventFdSignal::watch_hangup`] did), and
    /// the condition is still false: it will not become true.
    #[error("the peer hung up")]
    PeerHungUp,
    /// Blocking failed.
    #[error("waiting failed: {0}")]
    Io(#[from] io::Error),
}

/// Counters kept by a notifier handle, for reporting syscalls per message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotifyStats {
    /// Notifications that made a wake-up system call.
    pub sent: u64,
    /// Notifications skipped because nobody slept.
    pub suppressed: u64,
    /// Calls to `wait_until`.
    pub waits: u64,
    /// Waits satisfied without announcing sleep (immediately or while spinning).
    pub without_sleep: u64,
    /// Times the waiter blocked in the kernel.
    pub sleeps: u64,
    /// Waits that timed out.
    pub timeouts: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sent: Cell<u64>,
    suppressed: Cell<u64>,
    waits: Cell<u64>,
    without_sleep: Cell<u64>,
    sleeps: Cell<u64>,
    timeouts: Cell<u64>,
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

impl Counters {
    fn snapshot(&self) -> NotifyStats {
        NotifyStats {
            sent: self.sent.get(),
            suppressed: self.suppressed.get(),
            waits: self.waits.get(),
            without_sleep: self.without_sleep.get(),
            sleeps: self.sleeps.get(),
            timeouts: self.timeouts.get(),
        }
    }
}

/// One side's handle on a notification channel: the notifying side calls
/// [`notify`](Notifier::notify) after publishing, the waiting side calls
/// [`wait_until`](Notifier::wait_until). Each process (or thread) holds its own handle over the
/// same shared word and OS object; handles count what they did in [`NotifyStats`].
pub trait Notifier: fmt::Debug + Send {
    /// Wakes the waiter if it announced sleep; otherwise does nothing (and makes no system
    /// call). Call it after publishing what the waiter waits for.
    fn notify(&self) -> io::Result<Notified>;

    /// Returns once `ready()` is true, or fails with [`WaitError::Timeout`] after `timeout`
    /// (`None`: no limit). `ready` is called again after every wake-up, which may be spurious.
    fn wait_until(
        &self,
        ready: &mut dyn FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<(), WaitError>;

    /// What this handle has done so far.
    fn stats(&self) -> NotifyStats;
}

/// How long a [`SleepNotifier`] spins before it announces sleep.
#[derive(Debug, Clone)]
pub struct SpinPolicy {
    /// Spins, or nanoseconds for a timed policy.
    budget: Cell<u32>,
    max: u32,
    adaptive: bool,
    timed: bool,
    waits_since_probe: Cell<u32>,
}

/// Spins an adaptive policy uses to re-probe after its budget fell to zero.
const PROBE_SPINS: u32 = 64;
/// Every how many waits an exhausted adaptive policy probes again.
const PROBE_EVERY: u32 = 32;
/// Nanoseconds a timed adaptive policy spins to re-probe.
const PROBE_NANOS: u32 = 2_000;

impl SpinPolicy {
    /// Never spin: announce sleep at once.
    pub fn none() -> Self {
        Self::fixed(0)
    }

    /// Always spin `spins` times (each a `spin_loop` hint and a check) before sleeping.
    pub fn fixed(spins: u32) -> Self {
        SpinPolicy {
            budget: Cell::new(spins),
            max: spins,
            adaptive: false,
            timed: false,
            waits_since_probe: Cell::new(0),
        }
    }

    /// Spin up to `max` times, doubling the budget when a spin succeeds and halving it when
    /// one fails, so that a waiter whose peer answers quickly keeps spinning and one whose peer
    /// is slow (or shares its CPU, where spinning only delays the peer) soon blocks at once. An
    /// exhausted budget re-probes with a few spins every few waits.
    pub fn adaptive(max: u32) -> Self {
        SpinPolicy {
            budget: Cell::new(max),
            max,
            adaptive: true,
            timed: false,
            waits_since_probe: Cell::new(0),
        }
    }

    /// Like [`adaptive`](Self::adaptive), but the budget is time: spin for up to `max` (at most
    /// about 4 s), starting from `max`. What a spin costs in time differs widely between CPUs
    /// (a `pause` takes from a few to over a hundred cycles) and what a spin must outlast is a
    /// time (a peer's reaction, a wake-up), so cross-process waits budget in time.
    pub fn adaptive_for(max: Duration) -> Self {
        let max = max.as_nanos().min(u128::from(u32::MAX)) as u32;
        SpinPolicy {
            budget: Cell::new(max),
            max,
            adaptive: true,
            timed: true,
            waits_since_probe: Cell::new(0),
        }
    }

    fn probe(&self) -> u32 {
        if self.timed {
            PROBE_NANOS.min(self.max)
        } else {
            PROBE_SPINS.min(self.max)
        }
    }

    /// The spin budget for the next wait (spins, or nanoseconds for [`adaptive_for`](Self::adaptive_for)).
    pub fn current_budget(&self) -> u32 {
        self.budget.get()
    }

    fn budget_for_wait(&self) -> u32 {
        let budget = self.budget.get();
        if self.adaptive && budget == 0 {
            let n = self.waits_since_probe.get() + 1;
            if n >= PROBE_EVERY {
                self.waits_since_probe.set(0);
                return self.probe();
            }
            self.waits_since_probe.set(n);
        }
        budget
    }

    fn record(&self, spin_succeeded: bool) {
        if !self.adaptive {
            return;
        }
        let b = self.budget.get();
        let next = if spin_succeeded {
            (b.saturating_mul(2)).clamp(self.probe(), self.max)
        } else {
            b / 2
        };
        self.budget.set(next);
    }
}

/// The instant `timeout` from now; `None` (no limit) for no timeout or one too large to
/// represent.
pub(crate) fn deadline_after(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| Instant::now().checked_add(t))
}

/// Spins up to `spins` times waiting for `ready`, checking the deadline now and then.
fn spin_until(ready: &mut dyn FnMut() -> bool, spins: u32, deadline: Option<Instant>) -> bool {
    for i in 0..spins {
        if ready() {
            return true;
        }
        spin_loop();
        if i % 256 == 255 && deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
    }
    ready()
}

/// Spins a timed spin phase makes before it first reads the clock: about half a microsecond
/// (longer than a cross-core round trip, short enough to fit any budget worth spinning).
const SPIN_BURST: u32 = 16;
/// Spins [`SpinNotifier`] makes before it first reads the clock.
const SPIN_ONLY_BURST: u32 = 256;

/// Spins for up to `nanos` waiting for `ready`, reading the clock every 64 spins (and not
/// before the first [`SPIN_BURST`] spins; `nanos` counts from the first read).
fn spin_for(ready: &mut dyn FnMut() -> bool, nanos: u32, deadline: Option<Instant>) -> bool {
    if spin_until(ready, SPIN_BURST, None) {
        return true;
    }
    let mut end = Instant::now() + Duration::from_nanos(u64::from(nanos));
    if let Some(d) = deadline {
        end = end.min(d);
    }
    loop {
        for _ in 0..64 {
            if ready() {
                return true;
            }
            spin_loop();
        }
        if Instant::now() >= end {
            return ready();
        }
    }
}

/// A notifier that blocks in the kernel through a [`Signal`] (eventfd or futex), after an
/// optional spin phase, using the sleep/wake protocol on a shared [`WakeWord`].
#[derive(Debug)]
pub struct SleepNotifier<S: Signal> {
    word: WakeRef,
    signal: S,
    spin: SpinPolicy,
    counters: Counters,
    #[cfg(loom)]
    broken: Option<LoomBreakage>,
}

/// Loom negative controls only: a deliberately broken variant of the sleep/wake protocol.
#[cfg(loom)]
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoomBreakage {
    /// Block without re-checking the condition after announcing sleep.
    SkipRecheck,
    /// Leave out the SeqCst fences of the store→load handshake.
    NoFences,
}

/// Blocks on an eventfd; implements `AsFd` for event loops.
pub type EventFdNotifier = SleepNotifier<EventFdSignal>;
/// Blocks on a futex on the wake word itself.
pub type FutexNotifier = SleepNotifier<FutexSignal>;

impl<S: Signal> SleepNotifier<S> {
    /// A handle over the shared `word` that blocks through `signal` after spinning as `spin`
    /// says.
    pub fn new(word: WakeRef, signal: S, spin: SpinPolicy) -> Self {
        SleepNotifier {
            word,
            signal,
            spin,
            counters: Counters::default(),
            #[cfg(loom)]
            broken: None,
        }
    }

    /// The shared wake word.
    pub fn word(&self) -> &WakeRef {
        &self.word
    }

    /// The blocking primitive.
    pub fn signal(&self) -> &S {
        &self.signal
    }

    /// The spin policy (its current budget, for adaptive policies).
    pub fn spin_policy(&self) -> &SpinPolicy {
        &self.spin
    }

    /// Loom negative controls only: break the protocol on purpose.
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn break_for_loom(&mut self, how: LoomBreakage) {
        self.broken = Some(how);
    }

    #[cfg(not(loom))]
    fn is_broken(&self, _how: u8) -> bool {
        false
    }

    #[cfg(loom)]
    fn is_broken(&self, how: u8) -> bool {
        self.broken.is_some_and(|b| b as u8 == how)
    }

    fn fenced(&self) -> bool {
        !self.is_broken(1)
    }

    fn recheck(&self, ready: &mut dyn FnMut() -> bool) -> bool {
        !self.is_broken(0) && ready()
    }
}

impl<S: Signal> Notifier for SleepNotifier<S> {
    #[inline(always)]
    fn notify(&self) -> io::Result<Notified> {
        if self.word.take_sleeper_with(self.fenced()) {
            if let Err(e) = self.signal.wake(&self.word) {
                // The wake-up did not happen: say "still asleep" again, so the next
                // notification retries instead of being suppressed.
                self.word.announce_sleep();
                return Err(e);
            }
            bump(&self.counters.sent);
            Ok(Notified::Sent)
        } else {
            bump(&self.counters.suppressed);
            Ok(Notified::Suppressed)
        }
    }

    /// Inlined into the caller, system call included (see [`ModeNotifier`] for why).
    #[inline(always)]
    fn wait_until(
        &self,
        ready: &mut dyn FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<(), WaitError> {
        bump(&self.counters.waits);
        if ready() {
            bump(&self.counters.without_sleep);
            return Ok(());
        }
        let deadline = deadline_after(timeout);
        let spins = self.spin.budget_for_wait();
        if spins > 0 {
            let spun = if self.spin.timed {
                spin_for(ready, spins, deadline)
            } else {
                spin_until(ready, spins, deadline)
            };
            self.spin.record(spun);
            if spun {
                bump(&self.counters.without_sleep);
                return Ok(());
            }
        }
        loop {
            self.word.announce_sleep_with(self.fenced());
            if self.recheck(ready) {
                self.word.cancel_sleep();
                return Ok(());
            }
            let remaining = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(r) if !r.is_zero() => Some(r),
                    _ => {
                        self.word.cancel_sleep();
                        bump(&self.counters.timeouts);
                        return Err(WaitError::Timeout(timeout.unwrap_or_default()));
                    }
                },
            };
            bump(&self.counters.sleeps);
            let blocked = self.signal.block(&self.word, remaining);
            self.word.cancel_sleep();
            let woke = blocked?;
            if ready() {
                return Ok(());
            }
            if woke == Woke::HangUp {
                return Err(WaitError::PeerHungUp);
            }
        }
    }

    fn stats(&self) -> NotifyStats {
        self.counters.snapshot()
    }
}

impl AsFd for SleepNotifier<EventFdSignal> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.signal.as_fd()
    }
}

impl<N: Notifier + ?Sized> Notifier for Box<N> {
    fn notify(&self) -> io::Result<Notified> {
        (**self).notify()
    }
    fn wait_until(
        &self,
        ready: &mut dyn FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<(), WaitError> {
        (**self).wait_until(ready, timeout)
    }
    fn stats(&self) -> NotifyStats {
        (**self).stats()
    }
}

/// A notifier that never sleeps: the waiter polls its condition with a spin hint until it holds
/// or the timeout passes, and notifications cost nothing. Right when both sides have a core to
/// themselves; ruinous when they share one.
#[derive(Debug, Default)]
pub struct SpinNotifier {
    counters: Counters,
}

impl SpinNotifier {
    /// A spinning handle.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Notifier for SpinNotifier {
    fn notify(&self) -> io::Result<Notified> {
        bump(&self.counters.suppressed);
        Ok(Notified::Suppressed)
    }

    /// Inlined into the caller, system call included (see [`ModeNotifier`] for why).
    #[inline(always)]
    fn wait_until(
        &self,
        ready: &mut dyn FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<(), WaitError> {
        bump(&self.counters.waits);
        // The first burst of spins runs before the clock is read (a clock read costs as much as
        // a cross-core round trip in a VM): a peer that answers quickly is seen at once.
        if spin_until(ready, SPIN_ONLY_BURST, None) {
            bump(&self.counters.without_sleep);
            return Ok(());
        }
        let deadline = deadline_after(timeout);
        loop {
            if spin_until(ready, 1 << 12, deadline) {
                bump(&self.counters.without_sleep);
                return Ok(());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                bump(&self.counters.timeouts);
                return Err(WaitError::Timeout(timeout.unwrap_or_default()));
            }
            if crate::sync::LOOM {
                crate::sync::thread::yield_now();
            }
        }
    }

    fn stats(&self) -> NotifyStats {
        self.counters.snapshot()
    }
}

/// How a waiting side waits: chosen per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NotifyMode {
    /// Poll without ever sleeping ([`SpinNotifier`]).
    Spin,
    /// Spin for an adaptive budget, then sleep on a futex.
    #[default]
    Adaptive,
    /// Sleep on an eventfd ([`EventFdNotifier`]), which event loops can watch.
    EventFd,
    /// Sleep on a futex on the wake word ([`FutexNotifier`]).
    Futex,
}

/// How long adaptive mode spins at most before it sleeps: longer than a peer that polls takes
/// to answer, and than a sleeping peer takes to wake (tens of microseconds in a VM).
pub const ADAPTIVE_MAX_SPIN: Duration = Duration::from_micros(100);

impl NotifyMode {
    /// Every mode, for tests and benchmarks that cover them all.
    pub const ALL: [NotifyMode; 4] = [
        NotifyMode::Spin,
        NotifyMode::Adaptive,
        NotifyMode::EventFd,
        NotifyMode::Futex,
    ];

    /// Whether this mode needs an eventfd.
    pub fn uses_eventfd(self) -> bool {
        self == NotifyMode::EventFd
    }

    /// A notifier handle of this mode over `word`; `eventfd` is required for
    /// [`NotifyMode::EventFd`] and ignored otherwise.
    pub fn notifier(
        self,
        word: WakeRef,
        eventfd: Option<EventFdSignal>,
    ) -> io::Result<ModeNotifier> {
        Ok(match self {
            NotifyMode::Spin => ModeNotifier::Spin(SpinNotifier::new()),
            NotifyMode::Adaptive => ModeNotifier::Futex(SleepNotifier::new(
                word,
                FutexSignal::new(),
                SpinPolicy::adaptive_for(ADAPTIVE_MAX_SPIN),
            )),
            NotifyMode::Futex => ModeNotifier::Futex(SleepNotifier::new(
                word,
                FutexSignal::new(),
                SpinPolicy::none(),
            )),
            NotifyMode::EventFd => {
                let efd = eventfd.ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "eventfd notify mode needs the eventfd both sides share",
                    )
                })?;
                ModeNotifier::EventFd(SleepNotifier::new(word, efd, SpinPolicy::none()))
            }
        })
    }
}

/// The notifier of a [`NotifyMode`] ([`NotifyMode::notifier`]): one type for every mode,
/// dispatched by a `match` the compiler inlines.
///
/// Why not a `Box<dyn Notifier>`: a wait that sleeps returns from its system call into the
/// waiter, and on this kind of machine (AMD, with the kernel's "Safe RET" mitigation) the first
/// `ret` after a system call mispredicts at about 90 ns. A virtual call cannot be inlined, so a
/// wait through one always returned through at least one frame; through this enum the whole
/// wait, system call included, can be inlined into the caller's loop.
#[derive(Debug)]
pub enum ModeNotifier {
    /// [`NotifyMode::Spin`].
    Spin(SpinNotifier),
    /// [`NotifyMode::Adaptive`] and [`NotifyMode::Futex`] (they differ in their spin policy).
    Futex(SleepNotifier<FutexSignal>),
    /// [`NotifyMode::EventFd`].
    EventFd(SleepNotifier<EventFdSignal>),
}

impl Notifier for ModeNotifier {
    #[inline(always)]
    fn notify(&self) -> io::Result<Notified> {
        match self {
            ModeNotifier::Spin(n) => n.notify(),
            ModeNotifier::Futex(n) => n.notify(),
            ModeNotifier::EventFd(n) => n.notify(),
        }
    }

    #[inline(always)]
    fn wait_until(
        &self,
        ready: &mut dyn FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<(), WaitError> {
        match self {
            ModeNotifier::Spin(n) => n.wait_until(ready, timeout),
            ModeNotifier::Futex(n) => n.wait_until(ready, timeout),
            ModeNotifier::EventFd(n) => n.wait_until(ready, timeout),
        }
    }

    fn stats(&self) -> NotifyStats {
        match self {
            ModeNotifier::Spin(n) => n.stats(),
            ModeNotifier::Futex(n) => n.stats(),
            ModeNotifier::EventFd(n) => n.stats(),
        }
    }
}

impl fmt::Display for NotifyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotifyMode::Spin => "spin",
            NotifyMode::Adaptive => "adaptive",
            NotifyMode::EventFd => "eventfd",
            NotifyMode::Futex => "futex",
        })
    }
}

impl std::str::FromStr for NotifyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "spin" => NotifyMode::Spin,
            "adaptive" => NotifyMode::Adaptive,
            "eventfd" => NotifyMode::EventFd,
            "futex" => NotifyMode::Futex,
            other => {
                return Err(format!(
                    "unknown notify mode {other:?}: expected spin, adaptive, eventfd or futex"
                ))
            }
        })
    }
}
