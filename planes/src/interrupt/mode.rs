//! The notify modes a connection chooses from, and the one notifier type that serves them all.

use super::*;

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
    /// [`NotifyMode::EventFd`] (refused with [`MissingEventFd`] without it) and ignored
    /// otherwise.
    pub fn notifier(
        self,
        word: WakeRef,
        eventfd: Option<EventFdSignal>,
    ) -> Result<ModeNotifier, MissingEventFd> {
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
                let efd = eventfd.ok_or(MissingEventFd)?;
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

impl ModeNotifier {
    /// [`notify`](Notifier::notify) for a caller that has executed a `SeqCst` fence after it
    /// published and before this call ([`SleepNotifier::notify_after_fence`]); in spin mode
    /// there is nothing to do either way.
    #[inline(always)]
    pub fn notify_after_fence(&self) -> io::Result<Notified> {
        match self {
            ModeNotifier::Spin(n) => n.notify(),
            ModeNotifier::Futex(n) => n.notify_after_fence(),
            ModeNotifier::EventFd(n) => n.notify_after_fence(),
        }
    }

    /// [`notify_published`](Notifier::notify_published) for a caller that has executed a
    /// `SeqCst` fence after it published ([`SleepNotifier::notify_published_after_fence`]).
    #[inline(always)]
    pub fn notify_published_after_fence(&self, old: u32, new: u32) -> io::Result<Notified> {
        match self {
            ModeNotifier::Spin(n) => n.notify(),
            ModeNotifier::Futex(n) => n.notify_published_after_fence(old, new),
            ModeNotifier::EventFd(n) => n.notify_published_after_fence(old, new),
        }
    }
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

    #[inline(always)]
    fn notify_published(&self, old: u32, new: u32) -> io::Result<Notified> {
        match self {
            ModeNotifier::Spin(n) => n.notify(),
            ModeNotifier::Futex(n) => n.notify_published(old, new),
            ModeNotifier::EventFd(n) => n.notify_published(old, new),
        }
    }

    #[inline(always)]
    fn wait_until_entry(
        &self,
        event: u32,
        ready: &mut dyn FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<(), WaitError> {
        match self {
            ModeNotifier::Spin(n) => n.wait_until(ready, timeout),
            ModeNotifier::Futex(n) => n.wait_until_entry(event, ready, timeout),
            ModeNotifier::EventFd(n) => n.wait_until_entry(event, ready, timeout),
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
    type Err = UnknownMode;
    fn from_str(s: &str) -> Result<Self, UnknownMode> {
        Ok(match s {
            "spin" => NotifyMode::Spin,
            "adaptive" => NotifyMode::Adaptive,
            "eventfd" => NotifyMode::EventFd,
            "futex" => NotifyMode::Futex,
            other => return Err(UnknownMode(other.to_owned())),
        })
    }
}

/// [`NotifyMode::EventFd`] asked for without the eventfd both sides share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("eventfd notify mode needs the eventfd both sides share")]
pub struct MissingEventFd;

impl From<MissingEventFd> for io::Error {
    fn from(e: MissingEventFd) -> Self {
        io::Error::new(io::ErrorKind::InvalidInput, e)
    }
}

/// A notify mode name that is none of `spin`, `adaptive`, `eventfd` or `futex` (the name
/// given is the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown notify mode {0:?}: expected spin, adaptive, eventfd or futex")]
pub struct UnknownMode(pub String);
