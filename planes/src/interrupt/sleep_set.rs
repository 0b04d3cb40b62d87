//! A service's sleep on many wake words, with an alarm that another thread raises to wake it.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use super::signal::futex_wake_every_waiter;
use super::{WaitAny, WakeRef, WAIT_ANY_MAX};
use crate::sync::{fence, AtomicU32, Mutex, Ordering::*};

struct Shared {
    raised: AtomicU32,
    /// 1 while the sleeper is inside [`SleepSet::sleep`]: [`Alarm::wake_all`] has no one to
    /// wake otherwise (the sleeper sees the alarm before it sleeps again).
    sleeping: AtomicU32,
    /// The words the sleeper sleeps on, as the alarm sees them.
    words: Mutex<Vec<WakeRef>>,
    /// The sleeper's own word, slept on when it has no other.
    own: WakeRef,
}

/// The sleeping side of a service with many peers: it sleeps on every peer's wake word at once
/// (each peer's doorbell is a futex wake of its word), and another thread of the service (one
/// that watches sockets, say) can wake it with an [`Alarm`] without a word of its own in the
/// wait. With one peer the wait is on one word, a plain `FUTEX_WAIT`: the cheapest wake-up the
/// kernel offers.
///
/// The protocol is the sleep/wake one ([`WakeWord`](super::WakeWord)), twice over:
/// - peers: the service announces sleep on every word of the set, re-checks what each guards,
///   then calls [`sleep`](Self::sleep); a peer publishes, then claims the word and wakes it;
/// - the alarm: [`Alarm::raise`] sets a flag, then (after a fence) claims every word of the set
///   that says "sleeping" and wakes it; `sleep` fences after the announcements and returns at
///   once if the flag is set. Either the sleeper sees the flag or the alarm sees it sleeping.
///
/// The set is changed only by the sleeper ([`set_words`](Self::set_words)), between sleeps; the
/// alarm reads it under a lock, so it sees the new set, or the sleeper sees the flag.
///
/// The peers' words are also theirs to write, and a peer can undo what `raise` relies on: it
/// can set its word back to "awake" while the sleeper sleeps on it (or die between claiming it
/// and waking it), leaving `raise` nothing to claim; or set it to "sleeping" again between
/// `raise`'s wake and the sleeper's entering the wait. Either way the sleeper sleeps on with
/// the alarm raised, for as long as its peers leave it. A caller that must not depend on its
/// peers (a server whose alarm stands for new connections and hang-ups) calls
/// [`Alarm::wake_all`] while the alarm stays raised past a bound: by then the sleeper is in
/// the kernel's wait, and a wake of every waiter on every word reaches it, whatever the words
/// say. With no peer in the set, the sleeper sleeps on a word of its own, and `raise` alone
/// suffices.
pub struct SleepSet {
    shared: Arc<Shared>,
    words: Vec<WakeRef>,
    wait: WaitAny,
}

impl fmt::Debug for SleepSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SleepSet")
            .field("words", &self.words.len())
            .field("raised", &self.is_raised())
            .finish_non_exhaustive()
    }
}

impl Default for SleepSet {
    fn default() -> Self {
        Self::new()
    }
}

impl SleepSet {
    /// An empty set: [`sleep`](Self::sleep) waits for the alarm (or its timeout) alone.
    pub fn new() -> Self {
        SleepSet {
            shared: Arc::new(Shared {
                raised: AtomicU32::new(0),
                sleeping: AtomicU32::new(0),
                words: Mutex::new(Vec::new()),
                own: WakeRef::local(),
            }),
            words: Vec::new(),
            wait: WaitAny::new(),
        }
    }

    /// The alarm that wakes this set's sleeper from another thread.
    pub fn alarm(&self) -> Alarm {
        Alarm {
            shared: self.shared.clone(),
        }
    }

    /// Replaces the words to sleep on (at most [`WAIT_ANY_MAX`]) and returns the words it
    /// held, for the caller to drop where it likes (the last handle to a departed peer's word
    /// unmaps its ring's region). Call it between sleeps.
    pub fn set_words(&mut self, words: Vec<WakeRef>) -> io::Result<Vec<WakeRef>> {
        if words.len() > WAIT_ANY_MAX {
            return Err(super::wait_any::too_many(words.len()));
        }
        let mut shared = self
            .shared
            .words
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        shared.clone_from(&words);
        drop(shared);
        Ok(std::mem::replace(&mut self.words, words))
    }

    /// How many words the set holds.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether the set holds no words.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Whether the alarm is raised (it stays raised until [`lower`](Self::lower)).
    pub fn is_raised(&self) -> bool {
        self.shared.raised.load(Acquire) != 0
    }

    /// Lowers the alarm, once the sleeper has done what it was raised for.
    pub fn lower(&self) {
        // SYNC POINT (alarm): Release pairs with `Alarm::is_raised`'s Acquire load: a raiser
        // that sees the alarm lowered sees what the sleeper did before lowering it.
        self.shared.raised.store(0, Release);
    }

    /// Sleeps until a word of the set is woken, the alarm is raised, or `timeout` passes (or
    /// spuriously); returns whether the alarm is raised.
    ///
    /// The caller must have announced sleep on every word of the set and re-checked what each
    /// guards (and cancels the announcements after waking), as for one word. With no words,
    /// the set sleeps on a word of its own that only the alarm wakes.
    #[inline(always)]
    pub fn sleep(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        self.sleep_checking::<true>(timeout)
    }

    /// [`sleep`](Self::sleep); `LOOK_AT_ALARM` false is a loom negative control's breakage
    /// (the constant folds away).
    #[inline(always)]
    fn sleep_checking<const LOOK_AT_ALARM: bool>(
        &mut self,
        timeout: Option<Duration>,
    ) -> io::Result<bool> {
        let own = &self.shared.own;
        let empty = self.words.is_empty();
        // Ordered before the alarm's look below by the fence that follows (in `announce_sleep`
        // or explicit): `wake_all` fences, then reads it, so it sees this or we see the alarm.
        self.shared.sleeping.store(1, Relaxed);
        if empty {
            own.announce_sleep();
        } else {
            // SYNC POINT (sleep-dekker): pairs with the fence in the alarm's `take_sleeper`:
            // either we see the alarm raised below, or it sees our announcements (made before
            // this fence) and wakes us.
            fence(SeqCst);
        }
        if LOOK_AT_ALARM && self.shared.raised.load(Acquire) != 0 {
            if empty {
                own.cancel_sleep();
            }
            self.shared.sleeping.store(0, Relaxed);
            return Ok(true);
        }
        let slept = if empty {
            let slept = self.wait.wait([&**own], timeout);
            own.cancel_sleep();
            slept
        } else {
            self.wait.wait(self.words.iter().map(|w| &**w), timeout)
        };
        self.shared.sleeping.store(0, Relaxed);
        slept?;
        Ok(self.shared.raised.load(Acquire) != 0)
    }

    /// Loom negative control only: [`sleep`](Self::sleep) without looking at the alarm first
    /// (the same code, instantiated without the look).
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn sleep_ignoring_alarm_for_loom(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        self.sleep_checking::<false>(timeout)
    }
}

/// Wakes a [`SleepSet`]'s sleeper from another thread ([`SleepSet::alarm`]).
#[derive(Clone)]
pub struct Alarm {
    shared: Arc<Shared>,
}

impl fmt::Debug for Alarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Alarm")
            .field("raised", &self.is_raised())
            .finish_non_exhaustive()
    }
}

impl Alarm {
    /// Raises the alarm and wakes the sleeper if it sleeps: it claims every word of the set
    /// that says "sleeping" and wakes it (a futex wake), as the word's own peer would. The
    /// sleeper then sees the alarm raised; the peers whose words were claimed find them
    /// "awake" and skip their next doorbell, which is right: the sleeper is awake and will
    /// look at their rings.
    pub fn raise(&self) -> io::Result<()> {
        // SYNC POINT (alarm): Release pairs with the Acquire loads in `SleepSet::sleep`.
        self.shared.raised.store(1, Release);
        self.wake_words(false)
    }

    /// Wakes every word of the set (and the sleeper's own), whether or not it says "sleeping",
    /// claiming those that do: for an alarm the sleeper has not taken within a bound, because
    /// a peer set its word back to "awake" or "sleeping" around [`raise`](Self::raise) (see
    /// [`SleepSet`]). It wakes every thread waiting on each word (a peer can queue threads of
    /// its own on its word, ahead of the sleeper). Nothing when the sleeper is not in
    /// [`SleepSet::sleep`] (it sees the alarm before it sleeps again); otherwise one system
    /// call per word. Call it after [`raise`](Self::raise), while the alarm stays raised.
    pub fn wake_all(&self) -> io::Result<()> {
        // SYNC POINT (sleep-dekker): pairs with the fence after `sleep`'s store of `sleeping`:
        // either we see it, or the sleeper sees the alarm `raise` stored before this fence.
        fence(SeqCst);
        if self.shared.sleeping.load(Relaxed) == 0 {
            return Ok(());
        }
        self.wake_words(true)
    }

    /// Claims every word of the set (and the sleeper's own) that says "sleeping" and wakes
    /// every waiter on it (a peer can queue threads of its own on its word, ahead of the
    /// sleeper, and a wake of one would wake one of them); with `always`, wakes every word
    /// whether or not the claim succeeded: the claim makes a wait not yet entered return at
    /// once, the wake reaches one already entered, whatever the word says now.
    fn wake_words(&self, always: bool) -> io::Result<()> {
        let words = self
            .shared
            .words
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut result = Ok(());
        for word in words.iter().chain(std::iter::once(&self.shared.own)) {
            // `take_sleeper` fences (sleep-dekker) before it looks at the word.
            let claimed = word.take_sleeper();
            if claimed || always {
                if let Err(e) = futex_wake_every_waiter(word) {
                    result = Err(e);
                }
            }
        }
        result
    }

    /// Whether the alarm is still raised (the sleeper has not lowered it yet).
    pub fn is_raised(&self) -> bool {
        // SYNC POINT (alarm): Acquire pairs with `SleepSet::lower`'s Release store.
        self.shared.raised.load(Acquire) != 0
    }
}
