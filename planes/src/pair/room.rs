//! Room in a full ring: a producer that finds its ring full sleeps on the ring's producer wake
//! word, and the consumer wakes it after releasing slots.
//!
//! The protocol is the sleep/wake one ([`WakeWord`](crate::interrupt::WakeWord)) with the roles
//! turned: the producer announces sleep, re-checks the consumer's head, and sleeps; the
//! consumer releases slots, then (after a `SeqCst` fence) claims the word and wakes it. What
//! keeps it cheap is where the consumer's fence comes from. A side releases slots of the ring
//! it consumes and, soon after, notifies its peer of what it produced (the app rings its
//! doorbell, the service flushes completions): in the modes that sleep that notification
//! fences, and the look at the producer word placed after it needs no fence of its own. The
//! waiter for room in a ring is the peer that this same notification would wake, so the
//! notification and the room bell are always in the same mode. Where no notification follows
//! (a side that only reaps and then waits), the look before its wait fences itself, and a side
//! that only polls makes the fenced look when it finds its ring dry (its `reap` or
//! `pop_request` returns nothing). Between those, every release is followed by a relaxed look
//! at the word (a load of a line that only changes when the producer sleeps), which in practice
//! wakes the producer at once; the fenced looks are what make it certain.

use super::*;

/// The consumer's half: wakes the producer of the ring it consumes when it sleeps on a full
/// ring.
#[derive(Debug)]
pub(super) struct RoomBell {
    bell: ModeNotifier,
    /// The ring's producer wake word, for the relaxed look.
    word: WakeRef,
    /// [`Consumer::released`] at the last look ordered after a fence: releases since then may
    /// not have been seen by a producer that went to sleep.
    checked: u32,
}

impl RoomBell {
    /// A bell on `ring`'s producer word that wakes as `mode` does (through `eventfd` in
    /// eventfd mode): the mode in which the ring's producer waits.
    pub(super) fn new<T: Pod>(
        ring: &Consumer<T, Stamped>,
        mode: NotifyMode,
        eventfd: Option<EventFdSignal>,
    ) -> Result<Self, QueueError> {
        let word = ring.producer_wake();
        Ok(RoomBell {
            bell: mode.notifier(word.clone(), eventfd)?,
            word,
            checked: ring.released(),
        })
    }

    /// After releasing slots: a relaxed look at the producer's word, and a wake-up (fenced) if
    /// it says the producer sleeps.
    #[inline(always)]
    pub(super) fn after_release(&mut self, released: u32) -> io::Result<()> {
        if released != self.checked && self.word.is_sleeping() {
            self.checked = released;
            self.bell.notify()?;
        }
        Ok(())
    }

    /// Just after this side executed a `SeqCst` fence that followed its releases (a
    /// notification in the mode of this bell, or a sleep announcement): the look that needs
    /// no fence of its own.
    #[inline(always)]
    pub(super) fn after_fence(&mut self, released: u32) -> io::Result<()> {
        if released != self.checked {
            self.checked = released;
            self.bell.notify_after_fence()?;
        }
        Ok(())
    }

    /// Before this side waits (it may not publish, and so not fence, for a while): the fenced
    /// look, if it released slots since the last one.
    #[inline(always)]
    pub(super) fn before_wait(&mut self, released: u32) -> io::Result<()> {
        self.before_wait_looking::<true>(released)
    }

    /// [`before_wait`](Self::before_wait); `LOOK` false is a loom negative control's breakage
    /// (the fenced look skipped, leaving the relaxed look after each release, which can miss a
    /// producer that has just announced sleep).
    #[inline(always)]
    pub(super) fn before_wait_looking<const LOOK: bool>(
        &mut self,
        released: u32,
    ) -> io::Result<()> {
        if LOOK && released != self.checked {
            self.checked = released;
            self.bell.notify()?;
        }
        Ok(())
    }

    /// Before this side waits for room in the ring it produces into, which the producer this
    /// bell wakes must consume first: both rings may be full, with the producer asleep waiting
    /// for room this side will not make until then. A fenced look, and a wake-up if the
    /// producer sleeps, whether or not this side released slots: its wait ends, and it sees
    /// that it must consume first ([`wait_room`]'s `stuck`).
    #[inline]
    pub(super) fn before_wait_stuck(&mut self, released: u32) -> io::Result<()> {
        self.checked = released;
        self.bell.notify()?;
        Ok(())
    }

    /// [`before_wait_stuck`](Self::before_wait_stuck) just after this side executed a
    /// `SeqCst` fence (a sleep announcement).
    #[inline]
    pub(super) fn after_fence_stuck(&mut self, released: u32) -> io::Result<()> {
        self.checked = released;
        self.bell.notify_after_fence()?;
        Ok(())
    }

    /// What the bell has done: wake-ups sent and suppressed.
    pub(super) fn stats(&self) -> NotifyStats {
        self.bell.stats()
    }

    /// After this side stored its close: wakes the producer if it sleeps (fenced), so that it
    /// sees the close.
    pub(super) fn wake_for_close(&self) {
        let _ = self.bell.notify();
    }
}

/// Waits on `room` until `ring` has a free slot or the peer has closed; `PeerGone` if it
/// closed with the ring still full. `stuck` says whether this side must act before the peer
/// can make room (the app's completion ring is full: a service that answers what it takes
/// takes nothing more until the app reaps): then the wait ends with [`QueueError::Full`]. The
/// peer wakes the waiter when it stops for that reason ([`RoomBell::before_wait_stuck`]).
#[inline(always)]
pub(super) fn wait_room<T: Pod>(
    room: &ModeNotifier,
    ring: &mut Producer<T, Stamped>,
    peer_closed: PeerClosed<'_>,
    mut stuck: impl FnMut() -> Result<bool, CorruptIndex>,
    timeout: Option<Duration>,
) -> Result<(), QueueError> {
    let mut corrupt: Option<CorruptIndex> = None;
    let mut is_stuck = false;
    let mut ready = || match ring.free_for(1) {
        Ok(0) if !peer_closed.closed() => match stuck() {
            Ok(s) => {
                is_stuck = s;
                s
            }
            Err(e) => {
                corrupt = Some(e);
                true
            }
        },
        Ok(_) => true,
        Err(e) => {
            corrupt = Some(e);
            true
        }
    };
    room.wait_until(&mut ready, timeout)?;
    if let Some(e) = corrupt {
        if peer_closed.closed() {
            return Err(QueueError::PeerGone);
        }
        return Err(e.into());
    }
    if ring.free_for(1)? > 0 {
        return Ok(());
    }
    if is_stuck && !peer_closed.closed() {
        return Err(QueueError::Full);
    }
    // Closed (or a peer that scribbled on its closed word after setting it).
    Err(QueueError::PeerGone)
}

/// Announces that this side is about to sleep until `ring` has room, in an external event
/// loop; `true` if it should not (room, or the peer's close, is already there).
pub(super) fn arm_room<T: Pod>(
    ring: &mut Producer<T, Stamped>,
    peer_closed: PeerClosed<'_>,
) -> Result<bool, QueueError> {
    let word = ring.producer_wake();
    word.announce_sleep();
    if ring.free_for(1)? > 0 || peer_closed.closed() {
        word.cancel_sleep();
        return Ok(true);
    }
    Ok(false)
}
