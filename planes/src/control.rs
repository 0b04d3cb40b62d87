//! The control plane: the doorbell that tells a subsystem work is queued, skipped when the
//! subsystem is already polling.
//!
//! A doorbell is rung *after* entries are published. What ringing costs depends on the
//! subsystem: an `io_uring_enter` for the kernel, an eventfd write or futex wake for another
//! process, an MMIO write for a device. What they share is the elision: the subsystem announces
//! when it is about to stop polling (io_uring's `IORING_SQ_NEED_WAKEUP`, virtio's event
//! suppression, a [`WakeWord`](crate::interrupt::WakeWord) here), and the producer rings only
//! then. [`DoorbellStats`] counts both outcomes so that benchmarks can report syscalls per message.

use std::fmt;
use std::io;

use crate::interrupt::{Notified, Notifier};

/// What [`Doorbell::ring`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rung {
    /// The subsystem needed a wake-up and got one (a system call or equivalent was made).
    Rang,
    /// The subsystem was polling: nothing needed doing.
    Skipped,
}

/// Doorbells rung and skipped by one producer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DoorbellStats {
    /// Rings that woke the subsystem.
    pub rung: u64,
    /// Rings skipped because the subsystem was polling.
    pub skipped: u64,
}

impl DoorbellStats {
    /// Counts one ring.
    pub fn record(&mut self, rung: Rung) {
        match rung {
            Rung::Rang => self.rung += 1,
            Rung::Skipped => self.skipped += 1,
        }
    }
}

/// Tells a subsystem that entries were published. Implemented per transport.
pub trait Doorbell: fmt::Debug + Send {
    /// Rings if the subsystem needs it. Call after publishing entries; ringing when nothing was
    /// published is harmless.
    fn ring(&mut self) -> io::Result<Rung>;

    /// What this doorbell has done so far.
    fn stats(&self) -> DoorbellStats;
}

/// A doorbell that wakes its subsystem through a [`Notifier`] on the subsystem's wake word: the
/// doorbell of two processes (or threads) sharing a ring.
#[derive(Debug)]
pub struct NotifierDoorbell<N: Notifier = Box<dyn Notifier>> {
    notifier: N,
    stats: DoorbellStats,
}

impl<N: Notifier> NotifierDoorbell<N> {
    /// A doorbell that rings through `notifier` (the subsystem's wake word).
    pub fn new(notifier: N) -> Self {
        NotifierDoorbell {
            notifier,
            stats: DoorbellStats::default(),
        }
    }

    /// The notifier behind the doorbell.
    pub fn notifier(&self) -> &N {
        &self.notifier
    }
}

impl<N: Notifier> NotifierDoorbell<N> {
    /// [`ring`](Doorbell::ring) after publishing the ring entries from index `old` up to
    /// `new` ([`Notifier::notify_published`]): with event-idx suppression, a subsystem asleep
    /// until a later entry is not woken.
    #[inline(always)]
    pub fn ring_published(&mut self, old: u32, new: u32) -> io::Result<Rung> {
        let notified = self.notifier.notify_published(old, new)?;
        Ok(self.record(notified))
    }

    #[inline(always)]
    fn record(&mut self, notified: Notified) -> Rung {
        let rung = match notified {
            Notified::Sent => Rung::Rang,
            Notified::Suppressed => Rung::Skipped,
        };
        self.stats.record(rung);
        rung
    }
}

impl<N: Notifier> Doorbell for NotifierDoorbell<N> {
    #[inline(always)]
    fn ring(&mut self) -> io::Result<Rung> {
        let notified = self.notifier.notify()?;
        Ok(self.record(notified))
    }

    fn stats(&self) -> DoorbellStats {
        self.stats
    }
}
