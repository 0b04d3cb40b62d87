//! The queue-pair model that every transport implements: a submitting side that queues entries
//! and rings the subsystem's doorbell, and a completing side that reaps completions and waits
//! for them.
//!
//! The shape is io_uring's: entries are *pushed* (staged where the subsystem cannot see them
//! yet), then *submitted* together (published with one index store, and at most one doorbell).
//! Completions carry whatever the transport uses to match them to submissions (io_uring's
//! `user_data`, a token field in a user-defined entry). Generic code — the conformance suite,
//! benchmarks, user code — is written against [`Submitter`] and [`Completer`] and runs over any
//! transport.

use std::io;
use std::time::{Duration, Instant};

use crate::control::DoorbellStats;
use crate::data::{CorruptIndex, RegionError, RingError};
use crate::interrupt::{MissingEventFd, NotifyMode, NotifyStats, WaitError};

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The submission ring is full: back-pressure. Reap completions (or wait) and retry.
    #[error("submission ring is full")]
    Full,
    /// A wait timed out.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The other side is gone (closed its end, or its process died).
    #[error("peer is gone")]
    PeerGone,
    /// The peer wrote an impossible ring index into shared memory.
    #[error(transparent)]
    Corrupt(#[from] CorruptIndex),
    /// A system call failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The queue could not be laid out or attached (boxed: this error travels in every
    /// rejected push, and stays small).
    #[error(transparent)]
    Setup(Box<SetupError>),
}

impl From<SetupError> for QueueError {
    #[cold]
    fn from(e: SetupError) -> Self {
        QueueError::Setup(Box::new(e))
    }
}

/// Why a queue pair could not be laid out in its region or attached to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// A ring could not be laid out (its capacity or entry type), or an existing ring header
    /// is not the one expected.
    #[error(transparent)]
    Ring(RingError),
    /// The pair does not fit its region there, or overlaps something live in it.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// No queue pair header at that offset (or one of another layout version).
    #[error(
        "no queue pair at offset {offset}: magic {magic:#x} version {version}, expected \
         {:#x} version {}",
        crate::pair::PAIR_MAGIC,
        crate::pair::PAIR_LAYOUT_VERSION
    )]
    NoPair {
        /// Where the pair was looked for.
        offset: usize,
        /// The magic word found there.
        magic: u32,
        /// The layout version found there.
        version: u32,
    },
    /// The pair was created with another notify mode in one direction than this side asks
    /// for (a side that spins never wakes one that sleeps).
    #[error(
        "queue pair at offset {offset} was created with {direction} mode code {found}, this \
         side asks for {asked}: both sides must use the same mode"
    )]
    ModeMismatch {
        /// Where the pair is.
        offset: usize,
        /// `"kick"` (requests) or `"call"` (completions).
        direction: &'static str,
        /// The mode code recorded in the pair header.
        found: u32,
        /// The mode this side asked for.
        asked: NotifyMode,
    },
    /// Eventfd mode without the eventfd.
    #[error(transparent)]
    MissingEventFd(#[from] MissingEventFd),
}

impl From<RingError> for SetupError {
    fn from(e: RingError) -> Self {
        match e {
            RingError::Region(r) => SetupError::Region(r),
            other => SetupError::Ring(other),
        }
    }
}

impl From<MissingEventFd> for QueueError {
    fn from(e: MissingEventFd) -> Self {
        SetupError::from(e).into()
    }
}

impl From<RegionError> for QueueError {
    fn from(e: RegionError) -> Self {
        SetupError::from(e).into()
    }
}

impl From<RingError> for QueueError {
    /// A corrupt index stays [`QueueError::Corrupt`]; the rest is a [`SetupError`].
    fn from(e: RingError) -> Self {
        match e {
            RingError::Corrupt(c) => QueueError::Corrupt(c),
            other => SetupError::from(other).into(),
        }
    }
}

impl From<WaitError> for QueueError {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::Timeout(t) => QueueError::Timeout(t),
            WaitError::PeerHungUp => QueueError::PeerGone,
            WaitError::Io(e) => QueueError::Io(e),
        }
    }
}

/// An entry the queue did not take, handed back with the reason.
#[derive(Debug, thiserror::Error)]
#[error("entry rejected: {error}")]
pub struct Rejected<E> {
    /// The entry, unchanged.
    pub entry: E,
    /// Why it was rejected.
    #[source]
    pub error: QueueError,
}

impl<E> Rejected<E> {
    /// Pairs an entry with the reason it was rejected.
    pub fn new(entry: E, error: QueueError) -> Self {
        Rejected { entry, error }
    }
}

/// `?` on a push in a function that returns [`QueueError`]: the reason goes up, the entry is
/// dropped (match the [`Rejected`] instead to retry with it, or to take back a buffer it
/// lent).
impl<E> From<Rejected<E>> for QueueError {
    fn from(r: Rejected<E>) -> Self {
        r.error
    }
}

/// The submitting side of a queue pair.
pub trait Submitter {
    /// What is submitted.
    type Entry;

    /// Stages one entry; the subsystem sees it after [`submit`](Submitter::submit). A full ring
    /// hands the entry back in [`Rejected`] with [`QueueError::Full`]: nothing is dropped.
    fn push(&mut self, entry: Self::Entry) -> Result<(), Rejected<Self::Entry>>;

    /// Stages as many of `entries` as fit and returns how many that was (fewer than
    /// `entries.len()` means the ring filled up).
    fn push_slice(&mut self, entries: &[Self::Entry]) -> Result<usize, QueueError>
    where
        Self::Entry: Clone,
    {
        for (i, entry) in entries.iter().enumerate() {
            match self.push(entry.clone()) {
                Ok(()) => {}
                Err(Rejected {
                    error: QueueError::Full,
                    ..
                }) => return Ok(i),
                Err(r) => return Err(r.error),
            }
        }
        Ok(entries.len())
    }

    /// Free submission slots now (staged entries count as used).
    fn space(&mut self) -> Result<usize, QueueError>;

    /// Publishes every staged entry and rings the doorbell if the subsystem needs it; returns
    /// how many entries were published.
    fn submit(&mut self) -> Result<usize, QueueError>;

    /// Blocks until the submission ring has a free slot: what to do after a push came back
    /// [`QueueError::Full`]. Publishes what is staged first (the subsystem cannot make room
    /// from entries it has not seen). Fails with [`QueueError::Timeout`] after `timeout`
    /// (`None`: no limit) and with [`QueueError::PeerGone`] if the subsystem went away with
    /// the ring still full.
    ///
    /// A subsystem that answers every request stops taking requests while its completions
    /// have nowhere to go. So this fails with [`QueueError::Full`] when the subsystem cannot
    /// take a request until completions are reaped (its completion ring is full, or the kernel
    /// holds completions it could not post): reap, then wait again. Answers to earlier
    /// requests can fill the completion ring again after a reap, so a loop that waits for
    /// space reaps whenever this says `Full`:
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use subring_planes::queue::{Completer, QueueError, Submitter};
    /// fn push_waiting<Q: Submitter + Completer>(
    ///     q: &mut Q,
    ///     mut entry: Q::Entry,
    ///     done: &mut Vec<Q::Completion>,
    /// ) -> Result<(), QueueError> {
    ///     loop {
    ///         match q.push(entry) {
    ///             Ok(()) => return Ok(()),
    ///             Err(r) if matches!(r.error, QueueError::Full) => entry = r.entry,
    ///             Err(r) => return Err(r.error),
    ///         }
    ///         match q.wait_space(Some(Duration::from_secs(1))) {
    ///             Ok(()) => {}
    ///             Err(QueueError::Full) => while let Some(c) = q.reap()? {
    ///                 done.push(c);
    ///             },
    ///             Err(e) => return Err(e),
    ///         }
    ///     }
    /// }
    /// ```
    fn wait_space(&mut self, timeout: Option<Duration>) -> Result<(), QueueError>;

    /// Doorbells rung and skipped so far.
    fn doorbell_stats(&self) -> DoorbellStats;
}

/// The completing side of a queue pair.
pub trait Completer {
    /// What comes back.
    type Completion;

    /// The next completion, if one is ready.
    fn reap(&mut self) -> Result<Option<Self::Completion>, QueueError>;

    /// Appends up to `max` ready completions to `out`; returns how many.
    fn reap_into(
        &mut self,
        out: &mut Vec<Self::Completion>,
        max: usize,
    ) -> Result<usize, QueueError> {
        let mut n = 0;
        while n < max {
            match self.reap()? {
                Some(c) => {
                    out.push(c);
                    n += 1;
                }
                None => break,
            }
        }
        Ok(n)
    }

    /// Blocks until at least one completion is ready, the peer is gone
    /// ([`QueueError::PeerGone`], once no completion is left), or `timeout` passes
    /// ([`QueueError::Timeout`]; `None` waits without limit).
    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), QueueError>;

    /// The next completion, waiting up to `timeout` for it: the reap-then-wait loop every
    /// caller would write. Fails with [`QueueError::Timeout`] if none arrived in time, and with
    /// [`QueueError::PeerGone`] once the peer is gone and nothing is left to reap.
    fn wait_reap(&mut self, timeout: Duration) -> Result<Self::Completion, QueueError> {
        if let Some(c) = self.reap()? {
            return Ok(c);
        }
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match self.wait(left) {
                Ok(()) | Err(QueueError::Timeout(_)) => {}
                Err(e) => return Err(e),
            }
            if let Some(c) = self.reap()? {
                return Ok(c);
            }
            if left.is_some_and(|l| l.is_zero()) {
                return Err(QueueError::Timeout(timeout));
            }
        }
    }

    /// Interrupt-plane counters of the waiting side.
    fn notify_stats(&self) -> NotifyStats;
}
