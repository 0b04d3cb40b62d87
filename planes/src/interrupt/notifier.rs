//! The notifiers: sleeping through a signal (eventfd or futex) after an optional spin, and
//! spinning only.

use super::*;

/// A notifier that blocks in the kernel through a [`Signal`] (eventfd or futex), after an
/// optional spin phase, using the sleep/wake protocol on a shared [`WakeWord`].
///
/// `B` is [`Sound`], the protocol, in every build; the loom negative controls instantiate a
/// deliberately broken variant ([`Breakage`]). Every check of it is a constant, so the sound
/// notifier runs the same code under loom as in a normal build.
#[derive(Debug)]
pub struct SleepNotifier<S: Signal, B: Breakage = Sound> {
    word: WakeRef,
    signal: S,
    spin: SpinPolicy,
    counters: Counters,
    _breakage: PhantomData<B>,
}

/// How a [`SleepNotifier`] deviates from the sleep/wake protocol, chosen at compile time:
/// [`Sound`] does not, and is the only implementation in a normal build. The loom negative
/// controls use the others (module `breakage`, loom builds only), each of which changes one
/// constant.
pub trait Breakage: fmt::Debug + Send + Sync + 'static {
    /// The SeqCst fences of the store→load handshake are issued.
    const FENCES: bool = true;
    /// The waiter re-checks its condition after announcing sleep.
    const RECHECK: bool = true;
    /// A notifier that claims a sleeper wakes it.
    const WAKE: bool = true;
    /// A wake-up that failed is rolled back (the word says "sleeping" again).
    const ROLLBACK: bool = true;
    /// Event-idx's test covers exactly the entries published.
    const EVENT_IDX_EXACT: bool = true;
}

/// The sleep/wake protocol as designed: no breakage.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sound;

impl Breakage for Sound {}

/// Loom negative controls only: deliberately broken variants of the sleep/wake protocol.
#[cfg(loom)]
#[doc(hidden)]
pub mod breakage {
    use super::Breakage;

    /// Block without re-checking the condition after announcing sleep.
    #[derive(Debug)]
    pub struct SkipRecheck;
    impl Breakage for SkipRecheck {
        const RECHECK: bool = false;
    }

    /// Leave out the SeqCst fences of the store→load handshake.
    #[derive(Debug)]
    pub struct NoFences;
    impl Breakage for NoFences {
        const FENCES: bool = false;
    }

    /// Claim the sleeper (clear its word) but never wake it.
    #[derive(Debug)]
    pub struct SkipWake;
    impl Breakage for SkipWake {
        const WAKE: bool = false;
    }

    /// After a wake-up that failed, leave the word cleared (no rollback to "sleeping"), so
    /// that the caller's retry is suppressed.
    #[derive(Debug)]
    pub struct SkipRollback;
    impl Breakage for SkipRollback {
        const ROLLBACK: bool = false;
    }

    /// Event-idx's test off by one: a publish of the entries `old..new` is taken to cover
    /// `old + 1..=new` (the classic slip in `vring_need_event`'s bounds).
    #[derive(Debug)]
    pub struct EventIdxOffByOne;
    impl Breakage for EventIdxOffByOne {
        const EVENT_IDX_EXACT: bool = false;
    }
}

/// Blocks on an eventfd; implements `AsFd` for event loops.
pub type EventFdNotifier = SleepNotifier<EventFdSignal>;
/// Blocks on a futex on the wake word itself.
pub type FutexNotifier = SleepNotifier<FutexSignal>;

impl<S: Signal> SleepNotifier<S> {
    /// A handle over the shared `word` that blocks through `signal` after spinning as `spin`
    /// says.
    pub fn new(word: WakeRef, signal: S, spin: SpinPolicy) -> Self {
        Self::with_breakage(word, signal, spin)
    }
}

impl<S: Signal, B: Breakage> SleepNotifier<S, B> {
    /// [`new`](SleepNotifier::new) with the breakage `B` (a loom negative control's: name it
    /// with a turbofish).
    #[doc(hidden)]
    pub fn with_breakage(word: WakeRef, signal: S, spin: SpinPolicy) -> Self {
        SleepNotifier {
            word,
            signal,
            spin,
            counters: Counters::default(),
            _breakage: PhantomData,
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

    /// The range a notification covers: as given, but for a breakage whose event-idx test is
    /// off by one.
    #[inline(always)]
    fn published_range(old: u32, new: u32) -> (u32, u32) {
        if B::EVENT_IDX_EXACT {
            (old, new)
        } else {
            (old.wrapping_add(1), new.wrapping_add(1))
        }
    }

    /// The re-check after announcing sleep (skipped only by a breakage).
    #[inline(always)]
    fn recheck(ready: &mut dyn FnMut() -> bool) -> bool {
        B::RECHECK && ready()
    }
}

impl<S: Signal, B: Breakage> SleepNotifier<S, B> {
    /// [`notify`](Notifier::notify) for a caller that has executed a `SeqCst` fence after it
    /// published and before this call (its own notification of another word, a moment ago,
    /// did): the fence that pairs with the waiter's is already there, and is not repeated.
    #[inline(always)]
    pub fn notify_after_fence(&self) -> io::Result<Notified> {
        self.notify_with(false, None)
    }

    /// [`notify_published`](Notifier::notify_published) for a caller that has executed a
    /// `SeqCst` fence after it published (see [`notify_after_fence`](Self::notify_after_fence)).
    #[inline(always)]
    pub fn notify_published_after_fence(&self, old: u32, new: u32) -> io::Result<Notified> {
        self.notify_with(false, Some((old, new)))
    }

    #[inline(always)]
    fn notify_with(&self, fence: bool, published: Option<(u32, u32)>) -> io::Result<Notified> {
        let fenced = fence && B::FENCES;
        let claimed = match published {
            None => self.word.take_sleeper_with(fenced),
            Some((old, new)) => {
                let (old, new) = Self::published_range(old, new);
                self.word.take_sleeper_published_with(old, new, fenced)
            }
        };
        if claimed {
            if !B::WAKE {
                bump(&self.counters.sent);
                return Ok(Notified::Sent);
            }
            if let Err(e) = self.signal.wake(&self.word) {
                // The wake-up did not happen: say "still asleep" again, so the next
                // notification retries instead of being suppressed.
                if B::ROLLBACK {
                    self.word.announce_sleep();
                }
                // (Back to plain "sleeping", whatever entry the waiter was waiting for: the
                // retry then wakes it whichever entries it covers, and the waiter re-checks.)
                return Err(e);
            }
            bump(&self.counters.sent);
            Ok(Notified::Sent)
        } else {
            bump(&self.counters.suppressed);
            Ok(Notified::Suppressed)
        }
    }
}

impl<S: Signal, B: Breakage> Notifier for SleepNotifier<S, B> {
    #[inline(always)]
    fn notify(&self) -> io::Result<Notified> {
        self.notify_with(true, None)
    }

    #[inline(always)]
    fn notify_published(&self, old: u32, new: u32) -> io::Result<Notified> {
        self.notify_with(true, Some((old, new)))
    }

    /// Inlined into the caller, system call included (see [`ModeNotifier`] for why).
    #[inline(always)]
    fn wait_until(
        &self,
        ready: &mut dyn FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<(), WaitError> {
        self.wait_inner(None, ready, timeout)
    }

    #[inline(always)]
    fn wait_until_entry(
        &self,
        event: u32,
        ready: &mut dyn FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<(), WaitError> {
        self.wait_inner(Some(event), ready, timeout)
    }

    fn stats(&self) -> NotifyStats {
        self.counters.snapshot()
    }
}

impl<S: Signal, B: Breakage> SleepNotifier<S, B> {
    /// The wait: spin as the policy says, then announce sleep (until `event`, with event-idx
    /// suppression), re-check, block; again after every wake-up that finds `ready` false.
    #[inline(always)]
    fn wait_inner(
        &self,
        event: Option<u32>,
        ready: &mut dyn FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<(), WaitError> {
        bump(&self.counters.waits);
        if ready() {
            bump(&self.counters.without_sleep);
            return Ok(());
        }
        let spins = self.spin.budget_for_wait();
        // The clock is read once, when the deadline is first needed: before a spin phase, or
        // before the first block (whose timeout is then the caller's, unchanged). A wait that
        // blocks once reads it once.
        let mut deadline: Option<Option<Instant>> = None;
        if spins > 0 {
            let deadline = *deadline.insert(deadline_after(timeout));
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
            bump(&self.counters.announced);
            self.word.announce_with(event, B::FENCES);
            if Self::recheck(ready) {
                self.word.cancel_sleep();
                return Ok(());
            }
            let remaining = match timeout {
                None => None,
                Some(t) => {
                    let now = Instant::now();
                    match *deadline.get_or_insert_with(|| now.checked_add(t)) {
                        // Too far ahead to represent: no limit.
                        None => None,
                        Some(d) => match d.checked_duration_since(now) {
                            Some(r) if !r.is_zero() => Some(r),
                            _ => {
                                self.word.cancel_sleep();
                                bump(&self.counters.timeouts);
                                return Err(WaitError::Timeout(t));
                            }
                        },
                    }
                }
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
}

impl<B: Breakage> AsFd for SleepNotifier<EventFdSignal, B> {
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
    fn notify_published(&self, old: u32, new: u32) -> io::Result<Notified> {
        (**self).notify_published(old, new)
    }
    fn wait_until_entry(
        &self,
        event: u32,
        ready: &mut dyn FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<(), WaitError> {
        (**self).wait_until_entry(event, ready, timeout)
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
