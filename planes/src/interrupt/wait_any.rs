//! Sleeping on many wake words at once, with `futex_waitv(2)` (Linux 5.16).
//!
//! The sleeping side of the sleep/wake protocol over many rings: a server with many clients
//! announces sleep on every client's ring word, re-checks every ring, then sleeps until any one
//! of them is woken. It is what `epoll` over one eventfd per client does, without the eventfds:
//! each client's doorbell is a plain futex wake of its ring's word
//! ([`FutexSignal`](super::FutexSignal)), and the sleeping side needs one system call per sleep
//! and none per wake-up to drain anything.

use std::fmt;
use std::io;
use std::time::Duration;

#[cfg(not(loom))]
use super::signal::{futex_wait, futex_wait_result};
use super::WakeWord;
use super::SLEEPING;
#[cfg(not(loom))]
use rustix::thread::futex;

/// The most words one wait can watch (the kernel's `FUTEX_WAITV_MAX`).
pub const WAIT_ANY_MAX: usize = 128;

/// Sleeps until any of several [`WakeWord`]s is woken.
///
/// A wait allocates nothing: the array the kernel reads lives on the stack.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use subring_planes::interrupt::{WaitAny, WakeRef};
///
/// let (a, b) = (WakeRef::local(), WakeRef::local());
/// a.announce_sleep();
/// b.announce_sleep();
/// // ... re-check what each word guards; nothing is ready, so sleep (here: at most 1 ms).
/// WaitAny::new().wait([&*a, &*b], Some(Duration::from_millis(1)))?;
/// a.cancel_sleep();
/// b.cancel_sleep();
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Default)]
pub struct WaitAny {
    _private: (),
}

impl fmt::Debug for WaitAny {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitAny").finish_non_exhaustive()
    }
}

/// A wait (or a sleep set) given no words, or more than [`WAIT_ANY_MAX`]: the error inside the
/// `InvalidInput` [`io::Error`] that refuses it (find it with `get_ref` and `downcast_ref`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a wait on many wake words takes 1 to {max} words, not {given}")]
pub struct WordCount {
    /// The words given.
    pub given: usize,
    /// The most a wait takes ([`WAIT_ANY_MAX`]).
    pub max: usize,
}

pub(super) fn too_many(given: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        WordCount {
            given,
            max: WAIT_ANY_MAX,
        },
    )
}

impl WaitAny {
    /// An empty wait set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the running kernel has `futex_waitv` (Linux 5.16 and later).
    pub fn supported() -> bool {
        let (a, b) = (WakeWord::new(), WakeWord::new());
        // Two words (one takes the FUTEX_WAIT path), both "awake": a supporting kernel returns
        // at once (EAGAIN).
        match WaitAny::new().wait([&a, &b], None) {
            Ok(()) => true,
            Err(e) => e.raw_os_error() != Some(libc::ENOSYS),
        }
    }

    /// Sleeps until one of `words` is woken, the timeout passes, or spuriously; the caller then
    /// re-checks what the words guard. Returns at once if any word no longer says "sleeping"
    /// (its waker already claimed the wake-up).
    ///
    /// The caller must have announced sleep on every word
    /// ([`announce_sleep`](WakeWord::announce_sleep)) and then re-checked its condition, and
    /// cancels the announcements after waking, as with a single word. Fails with
    /// `InvalidInput` for no words or more than [`WAIT_ANY_MAX`], and with the system call's
    /// error otherwise (`ENOSYS` on a kernel before 5.16).
    #[cfg(not(loom))]
    #[inline(always)]
    pub fn wait<'w>(
        &mut self,
        words: impl IntoIterator<Item = &'w WakeWord>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        let mut words = words.into_iter();
        let (Some(first), second) = (words.next(), words.next()) else {
            return Err(too_many(0));
        };
        match second {
            // One word: a plain FUTEX_WAIT, inlined into the caller (no frame to return through
            // after the system call). Its wake-up path is also shorter than futex_waitv's
            // (which must dequeue the waiter from every word's hash bucket), and a ping-pong
            // between two processes measurably prefers it.
            None => futex_wait(first, timeout),
            Some(second) => Self::wait_many([first, second].into_iter().chain(words), timeout),
        }
    }

    /// [`WaitAny::wait`] on two words or more: `futex_waitv`.
    #[cfg(not(loom))]
    #[inline(never)]
    fn wait_many<'w>(
        words: impl Iterator<Item = &'w WakeWord>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        // Not FUTEX2_PRIVATE: the words live in memory shared with other processes, and the
        // wakers use the shared FUTEX_WAKE.
        let mut waiters = [futex::Wait::new(); WAIT_ANY_MAX];
        let mut n = 0;
        for w in words {
            if let Some(slot) = waiters.get_mut(n) {
                slot.val = u64::from(SLEEPING);
                slot.uaddr = futex::WaitPtr::new(w.futex_word().as_ptr().cast());
                slot.flags = futex::WaitFlags::SIZE_U32;
            }
            n += 1;
        }
        if n > WAIT_ANY_MAX {
            return Err(too_many(n));
        }
        // futex_waitv takes an absolute CLOCK_MONOTONIC deadline.
        let deadline = timeout.map(|t| {
            let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
            let nanos = now.tv_nsec as u64 + u64::from(t.subsec_nanos());
            let secs = (now.tv_sec as u64)
                .saturating_add(t.as_secs())
                .saturating_add(nanos / 1_000_000_000)
                .min(i64::MAX as u64);
            futex::Timespec {
                tv_sec: secs as i64,
                tv_nsec: (nanos % 1_000_000_000) as i64,
            }
        });
        // The borrow of `words` keeps every word alive for the call; the kernel compares each
        // with SLEEPING atomically with queueing, so a wake-up that cleared a word first is not
        // lost.
        let r = futex::waitv(
            &waiters[..n],
            futex::WaitvFlags::empty(),
            deadline.as_ref(),
            futex::ClockId::Monotonic,
        );
        futex_wait_result(r)
    }

    /// Under loom, `futex_waitv` is modelled as the kernel runs it: it returns at once if any
    /// word no longer says "sleeping", and otherwise only once one of the words is woken
    /// (`FUTEX_WAKE` on it after the wait began), never spuriously. Timeouts are not modelled.
    #[cfg(loom)]
    pub fn wait<'w>(
        &mut self,
        words: impl IntoIterator<Item = &'w WakeWord>,
        _timeout: Option<Duration>,
    ) -> io::Result<()> {
        let words: Vec<&WakeWord> = words.into_iter().collect();
        if words.is_empty() || words.len() > WAIT_ANY_MAX {
            return Err(too_many(words.len()));
        }
        let mut seen = Vec::with_capacity(words.len());
        for w in &words {
            // futex_waitv expects SLEEPING on every word (a set's words are announced plainly).
            let (wakes, value) = w.loom_futex_enter();
            if value != SLEEPING {
                return Ok(());
            }
            seen.push(wakes);
        }
        while !words.iter().zip(&seen).any(|(w, s)| w.loom_woken_since(*s)) {
            crate::sync::thread::yield_now();
        }
        Ok(())
    }
}
