//! The kernel transport inside a tokio runtime (feature `tokio`): completions awaited on the
//! eventfd registered with the ring ([`WaitMode::EventFd`]) through tokio's `AsyncFd`, so a
//! task sleeps in the runtime's epoll while its operations are in the kernel.
//!
//! The kernel signals the eventfd on every completion, so there is nothing to arm: a wait
//! looks at the completion queue, submits what is queued, and awaits the eventfd (draining
//! it). A wait future dropped unfinished loses nothing: completions stay in the queue for the
//! next reap, and every operation keeps owning its memory until then.
//!
//! ```
//! use subring_uring::tokio::AsyncUring;
//! use subring_uring::{Op, Submission, Target, Uring, WaitMode};
//!
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! runtime.block_on(async {
//!     let ring = Uring::builder().wait_mode(WaitMode::EventFd).build()?;
//!     let mut ring = AsyncUring::new(ring)?;
//!     let file = std::sync::Arc::new(std::fs::File::open("/proc/self/stat")?);
//!     let op = Op::Read { fd: Target::fd(&file), buf: vec![0; 64], offset: 0 };
//!     let done = ring.call(Submission::new(1, op)).await?;
//!     assert!(done.result? > 0);
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;
use std::os::fd::OwnedFd;

use subring_planes::queue::{Completer, QueueError, Rejected, Submitter};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::{Completion, Submission, Uring, WaitMode};

/// A [`Uring`] whose waits are `async`. It needs [`WaitMode::EventFd`].
#[derive(Debug)]
pub struct AsyncUring {
    ring: Uring,
    eventfd: AsyncFd<OwnedFd>,
}

/// A ring built with another wait mode than [`WaitMode::EventFd`], given to
/// [`AsyncUring::new`]: the `InvalidInput` [`io::Error`] carries it (find it with `get_ref`
/// and `downcast_ref`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an async ring waits on its eventfd: build it with WaitMode::EventFd, not {given:?}")]
pub struct NotAwaitable {
    /// The ring's wait mode.
    pub given: WaitMode,
}

impl AsyncUring {
    /// Registers `ring`'s completion eventfd (a duplicate, owned here) with the current
    /// runtime. A ring built without [`WaitMode::EventFd`] is refused (`InvalidInput`).
    pub fn new(ring: Uring) -> io::Result<Self> {
        let fd = match (ring.wait, ring.completion_fd()) {
            (WaitMode::EventFd, Some(fd)) => fd.try_clone_to_owned()?,
            (given, _) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    NotAwaitable { given },
                ))
            }
        };
        // SAFETY: an `OwnedFd` is open, refers to one file description for its whole life and
        // always answers the same number; the `AsyncFd` owns it until it drops.
        let eventfd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(AsyncUring { ring, eventfd })
    }

    /// The ring underneath: push, submit, reap, registration and the rest, none of which
    /// block.
    pub fn ring(&mut self) -> &mut Uring {
        &mut self.ring
    }

    /// Waits until a completion can be reaped, submitting what is queued first.
    /// Cancel-safe: dropped unfinished, it loses nothing.
    pub async fn ready(&mut self) -> Result<(), QueueError> {
        loop {
            if self.ring.cq_len() > 0 || (self.ring.flush_if_needed()? && self.ring.cq_len() > 0) {
                return Ok(());
            }
            self.ring.submit()?;
            if self.ring.cq_len() > 0 {
                return Ok(());
            }
            let mut guard = self.eventfd.readable().await.map_err(QueueError::Io)?;
            // Drained before the completion queue is looked at again: a completion after the
            // drain signals anew.
            if let Some(efd) = &self.ring.eventfd {
                efd.drain()?;
            }
            guard.clear_ready();
            self.ring.notify.sleeps += 1;
        }
    }

    /// Reaps the next completion, waiting for one if there is none.
    pub async fn next(&mut self) -> Result<Completion, QueueError> {
        loop {
            if let Some(c) = self.ring.reap()? {
                return Ok(c);
            }
            self.ready().await?;
        }
    }

    /// Pushes `sub` (the queue full is back-pressure, handed back with it).
    pub fn push(&mut self, sub: Submission) -> Result<(), Rejected<Submission>> {
        self.ring.push(sub)
    }

    /// Pushes `sub` and waits for the next completion: its own when nothing else is in flight.
    pub async fn call(&mut self, sub: Submission) -> Result<Completion, QueueError> {
        self.ring.push(sub).map_err(|r| r.error)?;
        self.next().await
    }
}
