//! The wake word both sides see, handles on it, and what a notifier reports.

use super::*;

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
    /// With event-idx suppression ([`WakeWord::announce_sleep_until`]): the index of the entry
    /// whose publication should wake the waiter. Written by the waiter, read by the notifier;
    /// meaningful only while `state` says `SLEEPING_AT`.
    event: AtomicU32,
    /// Under loom, the futex's wake-ups on this word, counted (the kernel keeps them in its
    /// wait queue): a modelled `FUTEX_WAIT` returns only after a `FUTEX_WAKE` that came after
    /// it checked the word, as the kernel's does, so a waker that clears the word but never
    /// wakes is caught.
    #[cfg(loom)]
    wakes: AtomicU32,
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
            event: AtomicU32::new(0),
            #[cfg(loom)]
            wakes: AtomicU32::new(0),
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

    /// Waiter side, with event-idx suppression (virtio's `used_event`, NVMe's EventIdx):
    /// announce that we are about to sleep until the entry at ring index `event` is
    /// published. A notifier that knows which entries its publish covered
    /// ([`Notifier::notify_published`]) wakes us only when they include `event`; one that does
    /// not ([`Notifier::notify`]) wakes us at once, as for [`announce_sleep`](Self::announce_sleep).
    /// The caller must re-check its condition after this and before blocking.
    pub fn announce_sleep_until(&self, event: u32) {
        self.announce_with(Some(event), true);
    }

    pub(super) fn announce_sleep_with(&self, fenced: bool) {
        self.announce_with(None, fenced);
    }

    pub(super) fn announce_with(&self, event: Option<u32>, fenced: bool) {
        let state = match event {
            None => SLEEPING,
            Some(event) => {
                // Ordered before the state by the Release below: a notifier that reads
                // SLEEPING_AT (Acquire) reads this event or a later one.
                self.event.store(event, Relaxed);
                SLEEPING_AT
            }
        };

        // Every write to the word is a read-modify-write, so that its modification order is one
        // reads-from chain (each write reads the one before). The protocol only needs the fences
        // below, but this keeps it independent of how stores from two threads are ordered, which
        // loom models only partially (its modification order is a partial order, so a plain
        // store here lets it report a lost wake-up that C11 forbids). It costs nothing that
        // matters: this path is followed by a fence and a blocking system call.
        self.state.swap(state, Release);
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

    pub(super) fn take_sleeper_with(&self, fenced: bool) -> bool {
        if fenced {
            // SYNC POINT (sleep-dekker): pairs with the fence in `announce_sleep`; orders the
            // caller's publish before the load of the word.
            fence(SeqCst);
        }
        is_asleep(self.state.load(Relaxed)) && self.claim()
    }

    /// Notifier side, after publishing the ring entries from index `old` up to (not including)
    /// `new`: is a waiter asleep that these entries concern? A waiter that announced
    /// [`announce_sleep_until`](Self::announce_sleep_until) an entry outside `old..new` is left
    /// asleep (its entry comes later, or it will see an earlier one when it re-checks); any
    /// other sleeping waiter is claimed as by [`take_sleeper`](Self::take_sleeper).
    pub fn take_sleeper_published(&self, old: u32, new: u32) -> bool {
        self.take_sleeper_published_with(old, new, true)
    }

    pub(super) fn take_sleeper_published_with(&self, old: u32, new: u32, fenced: bool) -> bool {
        if fenced {
            // SYNC POINT (sleep-dekker): as in `take_sleeper_with`.
            fence(SeqCst);
        }
        // SYNC POINT (event-idx): Acquire pairs with the Release of the announcement, so the
        // event read below is the announced one or a later one.
        match self.state.load(Acquire) {
            SLEEPING => {}
            SLEEPING_AT => {
                if !need_event(self.event.load(Relaxed), new, old) {
                    return false;
                }
            }
            _ => return false,
        }
        self.claim()
    }

    /// Clears the word; true if it said a waiter sleeps (this call claimed the wake-up).
    fn claim(&self) -> bool {
        is_asleep(self.state.swap(AWAKE, AcqRel))
    }

    /// Whether the word currently says a waiter sleeps (a racy snapshot, for diagnostics).
    pub fn is_sleeping(&self) -> bool {
        is_asleep(self.state.load(Relaxed))
    }

    /// The state word's value now, for a `FUTEX_WAIT` on it: the wait blocks only while the
    /// word still holds the announcement it was given.
    #[cfg(not(loom))]
    pub(super) fn announced(&self) -> Option<u32> {
        let v = self.state.load(Relaxed);
        is_asleep(v).then_some(v)
    }

    #[cfg(not(loom))]
    pub(super) fn futex_word(&self) -> &AtomicU32 {
        &self.state
    }

    /// For a `FUTEX_WAIT` made outside this crate (through io_uring, say): the word's address
    /// and the value a plain announcement ([`announce_sleep`](Self::announce_sleep)) writes,
    /// which the wait must be given so that it blocks only while the announcement stands
    /// (after [`announce_sleep_until`](Self::announce_sleep_until) the word holds another
    /// value, and such a wait ends at once). The word is a 32-bit futex shared with the peer's
    /// process (a shared futex, not `FUTEX_PRIVATE`), and the address is valid while the
    /// word's memory is (a [`WakeRef`] keeps it).
    #[cfg(not(loom))]
    pub fn futex_wait_target(&self) -> (*const u32, u32) {
        (self.state.as_ptr().cast_const(), SLEEPING)
    }

    /// The modelled `FUTEX_WAKE`: one more wake-up on this word.
    #[cfg(loom)]
    pub(super) fn loom_futex_wake(&self) {
        self.wakes.fetch_add(1, AcqRel);
    }

    /// The modelled `FUTEX_WAIT(word, expected)`'s entry: the wake-ups so far, and the word's
    /// value (if it is not `expected`, the kernel returns at once). The count is read first: a
    /// waker clears the word before it wakes, so a waiter that still sees its announcement
    /// read a count from before that wake-up (or an older one, which only makes its wait end
    /// early: a spurious wake-up, which the real futex has too).
    #[cfg(loom)]
    pub(super) fn loom_futex_enter(&self) -> (u32, u32) {
        let seen = self.wakes.load(Acquire);
        let value = self.state.load(Acquire);
        (seen, value)
    }

    /// Whether a wake-up came after the modelled wait's entry saw `seen`.
    #[cfg(loom)]
    pub(super) fn loom_woken_since(&self, seen: u32) -> bool {
        self.wakes.load(Acquire) != seen
    }

    /// Loom only: a `FUTEX_WAIT(word, SLEEPING)` armed now that completes later, as io_uring's
    /// `FUTEX_WAIT` does (a server sleeping in epoll keeps one armed across its sleeps:
    /// subring-shm's kick waits), modelled as the kernel runs it: `None` if the word does not
    /// say "sleeping" (the wait completes at once), else the armed wait, which
    /// [`loom_armed_wait_done`](Self::loom_armed_wait_done) reports done after any
    /// `FUTEX_WAKE` of the word that came after it was armed.
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn loom_arm_wait(&self) -> Option<u32> {
        let (seen, value) = self.loom_futex_enter();
        (value == SLEEPING).then_some(seen)
    }

    /// Loom only: whether the wait [`loom_arm_wait`](Self::loom_arm_wait) armed has completed.
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn loom_armed_wait_done(&self, armed: u32) -> bool {
        self.loom_woken_since(armed)
    }
}

/// Whether a wake word's value says a waiter sleeps (any other value, a peer's scribble
/// included, means "no system call needed").
pub(super) fn is_asleep(state: u32) -> bool {
    state == SLEEPING || state == SLEEPING_AT
}

/// Event-idx suppression's test (virtio's `vring_need_event`, in 32-bit indices): does a
/// publish that moved the producer's index from `old` to `new` include the entry at index
/// `event`, i.e. is `event` in `old..new`, wrapping? Exact while `new - old` (wrapping) is
/// below 2^31, which a ring's capacity guarantees.
///
/// ```
/// use subring_planes::interrupt::need_event;
/// assert!(need_event(5, 6, 5)); // the publish of entry 5
/// assert!(!need_event(6, 6, 5)); // entry 6 is not published yet
/// assert!(!need_event(4, 6, 5)); // entry 4 was published before
/// assert!(need_event(u32::MAX, 2, u32::MAX - 1)); // across the wrap
/// ```
#[inline(always)]
pub fn need_event(event: u32, new: u32, old: u32) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
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
    /// Times the waiter announced sleep on its word (once per wait that did not end while
    /// spinning, and again after every wake-up that found its condition still false): each
    /// wake-up a notifier sends claims one announcement.
    pub announced: u64,
    /// Times the waiter blocked in the kernel.
    pub sleeps: u64,
    /// Waits that timed out.
    pub timeouts: u64,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) sent: Cell<u64>,
    pub(super) suppressed: Cell<u64>,
    pub(super) waits: Cell<u64>,
    pub(super) without_sleep: Cell<u64>,
    pub(super) announced: Cell<u64>,
    pub(super) sleeps: Cell<u64>,
    pub(super) timeouts: Cell<u64>,
}

pub(super) fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

impl Counters {
    pub(super) fn snapshot(&self) -> NotifyStats {
        NotifyStats {
            sent: self.sent.get(),
            suppressed: self.suppressed.get(),
            waits: self.waits.get(),
            without_sleep: self.without_sleep.get(),
            announced: self.announced.get(),
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

    /// [`notify`](Notifier::notify) after publishing the ring entries from index `old` up to
    /// (not including) `new`: with event-idx suppression, a waiter that sleeps until a later
    /// entry ([`wait_until_entry`](Notifier::wait_until_entry)) is not woken. Every published
    /// entry must be covered by a call made after it was published (pass the previous call's
    /// `new` as `old`; covering an entry twice is harmless, leaving one out loses a wake-up).
    /// Notifiers without a wake word (spinning) just notify.
    fn notify_published(&self, old: u32, new: u32) -> io::Result<Notified> {
        let _ = (old, new);
        self.notify()
    }

    /// [`wait_until`](Notifier::wait_until) for a condition that the publication of the ring
    /// entry at index `event` makes true (or at least that the waiter wants to sleep until
    /// then): with event-idx suppression, the notifier skips the wake-ups of publishes before
    /// it. `ready` decides, as always; `event` only spares wake-ups. Notifiers without a wake
    /// word (spinning) just wait.
    fn wait_until_entry(
        &self,
        event: u32,
        ready: &mut dyn FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<(), WaitError> {
        let _ = event;
        self.wait_until(ready, timeout)
    }
}
