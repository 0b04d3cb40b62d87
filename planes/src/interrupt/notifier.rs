//! The notifiers: sleeping through a signal (eventfd or futex) after an optional spin, and
//! spinning only.

use super::*;

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
    /// Claim the sleeper (clear its word) but never wake it.
    SkipWake,
    /// After a wake-up that failed, leave the word cleared (no rollback to "sleeping"), so
    /// that the caller's retry is suppressed.
    SkipRollback,
    /// Event-idx's test off by one: a publish of the entries `old..new` is taken to cover
    /// `old + 1..=new` (the classic slip in `vring_need_event`'s bounds).
    EventIdxOffByOne,
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

    /// Whether the store→load handshake is fenced: always, but in a loom negative control
    /// that asked for `LoomBreakage::NoFences`.
    #[inline(always)]
    fn fenced(&self) -> bool {
        #[cfg(loom)]
        if self.broken == Some(LoomBreakage::NoFences) {
            return false;
        }
        true
    }

    /// The rollback after a failed wake-up: always made, but in a loom negative control that
    /// asked for `LoomBreakage::SkipRollback`.
    #[inline(always)]
    fn rolls_back(&self) -> bool {
        #[cfg(loom)]
        if self.broken == Some(LoomBreakage::SkipRollback) {
            return false;
        }
        true
    }

    /// The range a notification covers: as given, but in a loom negative control that asked
    /// for `LoomBreakage::EventIdxOffByOne`.
    #[inline(always)]
    fn published_range(&self, old: u32, new: u32) -> (u32, u32) {
        #[cfg(loom)]
        if self.broken == Some(LoomBreakage::EventIdxOffByOne) {
            return (old.wrapping_add(1), new.wrapping_add(1));
        }
        (old, new)
    }

    /// The re-check after announcing sleep: always made, but in a loom negative control that
    /// asked for `LoomBreakage::SkipRecheck`.
    #[inline(always)]
    fn recheck(&self, ready: &mut dyn FnMut() -> bool) -> bool {
        #[cfg(loom)]
        if self.broken == Some(LoomBreakage::SkipRecheck) {
            return false;
        }
        ready()
    }
}

impl<S: Signal> SleepNotifier<S> {
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
        let fenced = fence && self.fenced();
        let claimed = match published {
            None => self.word.take_sleeper_with(fenced),
            Some((old, new)) => {
                let (old, new) = self.published_range(old, new);
                self.word.take_sleeper_published_with(old, new, fenced)
            }
        };
        if claimed {
            #[cfg(loom)]
            if self.broken == Some(LoomBreakage::SkipWake) {
                bump(&self.counters.sent);
                return Ok(Notified::Sent);
            }
            if let Err(e) = self.signal.wake(&self.word) {
                // The wake-up did not happen: say "still asleep" again, so the next
                // notification retries instead of being suppressed.
                if self.rolls_back() {
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

impl<S: Signal> Notifier for SleepNotifier<S> {
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

impl<S: Signal> SleepNotifier<S> {
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
            bump(&self.counters.announced);
            self.word.announce_with(event, self.fenced());
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
