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
use std::time::Duration;

use crate::control::DoorbellStats;
use crate::data::CorruptIndex;
use crate::interrupt::{NotifyStats, WaitError};

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

    /// Interrupt-plane counters of the waiting side.
    fn notify_stats(&self) -> NotifyStats;
}
