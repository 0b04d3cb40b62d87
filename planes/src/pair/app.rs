//! The application side of a queue pair.

use super::*;

/// The application side of a queue pair: submits `S`, reaps `C`.
pub struct AppSide<S, C> {
    sq: Producer<S, Stamped>,
    cq: Consumer<C, Stamped>,
    doorbell: NotifierDoorbell<ModeNotifier>,
    interrupt: ModeNotifier,
    /// Waits for room in a full submission ring (on its producer word, in the call mode).
    room: ModeNotifier,
    /// Wakes the service when it sleeps on a full completion ring that reaping made room in.
    cq_bell: RoomBell,
    call_fd: Option<EventFdSignal>,
    call_mode: NotifyMode,
    /// Event-idx suppression is on for this pair ([`PairConfig::event_idx`]).
    event_idx: bool,
    /// The submission ring's index at the last doorbell: the next one covers the entries
    /// published since.
    sq_notified: u32,
    state: StateRef,
    /// Set by [`ServiceGone::declare`] beside the service's closed word, which the service
    /// could clear again: this one only this process writes.
    declared: Arc<AtomicU32>,
    _header: Claim,
}

/// The service's closed word and this process's own word of its declared death.
fn closed_words<'a>(state: &'a StateRef, declared: &'a AtomicU32) -> PeerClosed<'a> {
    PeerClosed {
        shared: &state.get().service_closed,
        declared: Some(declared),
    }
}

impl<S, C> fmt::Debug for AppSide<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSide")
            .field("sq", &self.sq)
            .field("cq", &self.cq)
            .field("doorbell", &self.doorbell)
            .finish_non_exhaustive()
    }
}

impl<S: Pod, C: Pod> AppSide<S, C> {
    /// Attaches the app side to a queue pair laid out ([`create`]) at `offset` in `region` with
    /// the same `config`, checking its headers.
    pub fn attach(
        region: Arc<Region>,
        offset: usize,
        config: &PairConfig,
        signals: PairSignals,
    ) -> Result<Self, QueueError> {
        let Located {
            state,
            layout,
            header,
            event_idx,
        } = locate_pair::<S, C>(&region, offset, config)?;
        let sq = Ring::<S, Stamped>::attach(region.clone(), offset + layout.sq, config.sq_capacity)
            .and_then(Ring::into_producer)?;
        let cq = Ring::<C, Stamped>::attach(region.clone(), offset + layout.cq, config.cq_capacity)
            .and_then(Ring::into_consumer)?;
        if config.call_mode.uses_eventfd() {
            // The app waits on its completion eventfd: open what the wait needs now.
            if let Some(call) = &signals.call {
                call.prepare_wait()?;
            }
        }
        Ok(AppSide {
            room: config
                .call_mode
                .notifier(sq.producer_wake(), signals.call.clone())?,
            cq_bell: RoomBell::new(&cq, config.kick_mode, signals.kick.clone())?,
            doorbell: NotifierDoorbell::new(
                config
                    .kick_mode
                    .notifier(sq.consumer_wake(), signals.kick)?,
            ),
            interrupt: config
                .call_mode
                .notifier(cq.consumer_wake(), signals.call.clone())?,
            call_fd: signals.call,
            call_mode: config.call_mode,
            event_idx,
            sq_notified: sq.published(),
            sq,
            cq,
            state,
            declared: Arc::new(AtomicU32::new(0)),
            _header: header,
        })
    }

    /// A handle with which another thread can declare the service gone ([`ServiceGone`]).
    pub fn gone_handle(&self) -> ServiceGone {
        ServiceGone {
            state: self.state.clone(),
            call_word: self.cq.consumer_wake(),
            room_word: self.sq.producer_wake(),
            call_fd: self.call_fd.clone(),
            call_mode: self.call_mode,
            declared: self.declared.clone(),
        }
    }

    fn service_closed(&self) -> bool {
        closed_words(&self.state, &self.declared).closed()
    }

    /// Whether completions are ready to reap.
    pub fn completions_ready(&mut self) -> Result<bool, QueueError> {
        Ok(self.cq.has_entries()?)
    }

    /// Entries the completion ring holds.
    pub fn completion_capacity(&self) -> usize {
        self.cq.capacity() as usize
    }

    /// How many completions are ready to reap now.
    pub fn completions_available(&mut self) -> Result<usize, QueueError> {
        Ok(self.cq.available()? as usize)
    }

    /// The completion ring's wake word, which this side announces its sleeps on (in futex
    /// mode, the word a `FUTEX_WAIT` made elsewhere, through io_uring say, waits on).
    pub fn completion_wake(&self) -> WakeRef {
        self.cq.consumer_wake()
    }

    /// Whether the service side has closed (its completions may still be waiting to be reaped).
    pub fn peer_closed(&self) -> bool {
        self.service_closed()
    }

    /// The descriptor the app sleeps on for completions in eventfd mode (the eventfd, or the
    /// epoll instance watching the service's, [`EventFdSignal::from_peer_waiter`]), for an
    /// event loop (epoll, mio, tokio's `AsyncFd`). Call [`arm`](Self::arm) before waiting on
    /// it: readable then means "reap". [`wait`](Completer::wait) does not drain it (it waits
    /// edge-triggered), so after mixing it with a level-triggered loop the fd may read
    /// readable once spuriously; [`disarm`](Self::disarm) clears that.
    pub fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
        self.call_fd.as_ref().map(|e| e.as_fd())
    }

    /// Prepares to wait for completions in an external event loop on
    /// [`completion_fd`](Self::completion_fd) (like RDMA's `ibv_req_notify_cq`): announces
    /// that this side is about to sleep, so the service will signal the eventfd, then re-checks.
    /// Returns `true` if completions (or the service's close) are already there — then do not
    /// wait, reap. After the fd fires, call [`disarm`](Self::disarm) and reap.
    pub fn arm(&mut self) -> Result<bool, QueueError> {
        let armed = arm_ring(&mut self.cq, closed_words(&self.state, &self.declared))?;
        // The announcement fenced: the look at a service asleep on a full completion ring
        // (before this side sleeps, and may not ring for a while) needs no fence of its own.
        self.cq_bell.after_fence(self.cq.released())?;
        Ok(armed)
    }

    /// Ends an external wait begun with [`arm`](Self::arm): clears the sleep announcement and
    /// drains the eventfd so it is not readable again until the next armed wake-up.
    pub fn disarm(&mut self) -> Result<(), QueueError> {
        disarm_ring(&self.cq, self.call_fd.as_ref())
    }

    /// Waits until `n` completions are ready to reap (`n` is taken between 1 and the
    /// completion ring's capacity), the service has closed, or `timeout` passes with at least
    /// one there; returns how many are ready. This is interrupt coalescing: with event-idx
    /// suppression ([`PairConfig::event_idx`]) the service wakes this side once, when it
    /// publishes the `n`-th; without it every completion wakes it. Ask for no more than are in
    /// flight, or the wait lasts until the timeout. [`QueueError::Timeout`] if none came,
    /// [`QueueError::PeerGone`] once the service is gone and nothing is left to reap.
    pub fn wait_completions(
        &mut self,
        n: usize,
        timeout: Option<Duration>,
    ) -> Result<usize, QueueError> {
        self.cq_bell.before_wait(self.cq.released())?;
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        wait_ring_for(
            &self.interrupt,
            &mut self.cq,
            closed_words(&self.state, &self.declared),
            n,
            self.event_idx,
            timeout,
        )
        .map(|k| k as usize)
    }

    /// Whether event-idx suppression is on for this pair (both its creator and this side
    /// asked for it).
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Counters of the room protocol: this side's waits for room in a full submission ring
    /// ([`wait_space`](Submitter::wait_space)), and its wake-ups of a service asleep on a full
    /// completion ring (`sent` and `suppressed`).
    pub fn room_stats(&self) -> (NotifyStats, NotifyStats) {
        (self.room.stats(), self.cq_bell.stats())
    }

    /// [`disarm`](Self::disarm) for an edge-triggered event loop (epoll with `EPOLLET`,
    /// tokio, mio): clears the sleep announcement without draining the eventfd. Every signal
    /// is a new edge there, so a count left in the eventfd does no harm, and the read that
    /// would drain it is saved.
    pub fn disarm_edge(&mut self) {
        self.cq.consumer_wake().cancel_sleep();
    }
}

impl<S: Pod, C: Pod> Submitter for AppSide<S, C> {
    type Entry = S;

    fn push(&mut self, entry: S) -> Result<(), Rejected<S>> {
        if self.service_closed() {
            return Err(Rejected::new(entry, QueueError::PeerGone));
        }
        self.sq.stage(entry).map_err(push_error)
    }

    fn push_slice(&mut self, entries: &[S]) -> Result<usize, QueueError> {
        if self.service_closed() {
            return Err(QueueError::PeerGone);
        }
        Ok(self.sq.stage_slice(entries)?)
    }

    fn space(&mut self) -> Result<usize, QueueError> {
        Ok(self.sq.free_slots()? as usize)
    }

    #[inline(always)]
    fn submit(&mut self) -> Result<usize, QueueError> {
        if self.service_closed() {
            return Err(QueueError::PeerGone);
        }
        let n = self.sq.publish();
        // Whenever the published index moved since the last doorbell (not only when this call
        // published: a doorbell that failed is retried here), so that every entry is covered
        // by a notification.
        let published = self.sq.published();
        if published != self.sq_notified {
            self.doorbell.ring_published(self.sq_notified, published)?;
            self.sq_notified = published;
            // The doorbell fenced (in the kick mode, the mode the bell is in): a service asleep
            // on a full completion ring that this side reaped from is seen now.
            self.cq_bell.after_fence(self.cq.released())?;
        }
        Ok(n as usize)
    }

    fn wait_space(&mut self, timeout: Option<Duration>) -> Result<(), QueueError> {
        self.submit()?;
        self.cq_bell.before_wait(self.cq.released())?;
        // A full completion ring: the service takes nothing more until this side reaps.
        let cq = &mut self.cq;
        wait_room(
            &self.room,
            &mut self.sq,
            closed_words(&self.state, &self.declared),
            || Ok(cq.available()? == cq.capacity()),
            timeout,
        )
    }

    fn doorbell_stats(&self) -> DoorbellStats {
        self.doorbell.stats()
    }
}

impl<S: Pod, C: Pod> Completer for AppSide<S, C> {
    type Completion = C;

    #[inline(always)]
    fn reap(&mut self) -> Result<Option<C>, QueueError> {
        self.reap_looking::<true>()
    }

    fn reap_into(&mut self, out: &mut Vec<C>, max: usize) -> Result<usize, QueueError> {
        self.reap_into_looking::<true>(out, max)
    }

    /// Inlined into the caller, system call included (see
    /// [`ModeNotifier`] for why).
    #[inline(always)]
    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), QueueError> {
        self.wait_looking::<true>(timeout)
    }

    fn notify_stats(&self) -> NotifyStats {
        self.interrupt.stats()
    }
}

impl<S: Pod, C: Pod> AppSide<S, C> {
    /// [`reap`](Completer::reap); `DRY_LOOK` false is a loom negative control's breakage (no
    /// fenced look when the ring runs dry).
    #[inline(always)]
    fn reap_looking<const DRY_LOOK: bool>(&mut self) -> Result<Option<C>, QueueError> {
        let c = self.cq.pop()?;
        if c.is_some() {
            self.cq_bell.after_release(self.cq.released())?;
        } else if DRY_LOOK {
            // Dry, with slots released since the last fenced look: the fenced look now. The
            // relaxed look after each release can miss a service that has just announced its
            // sleep on a full completion ring (store buffering on both sides), and an app that
            // only polls (no wait, no arm, no submit that publishes) would otherwise never
            // make the look that wakes it. Nothing when nothing was released since.
            self.cq_bell.before_wait(self.cq.released())?;
        }
        Ok(c)
    }

    /// [`reap_into`](Completer::reap_into); `DRY_LOOK` as in `reap_looking`.
    #[inline(always)]
    fn reap_into_looking<const DRY_LOOK: bool>(
        &mut self,
        out: &mut Vec<C>,
        max: usize,
    ) -> Result<usize, QueueError> {
        let chunk = self.cq.read_chunk(max.min(u32::MAX as usize) as u32)?;
        let n = chunk.len();
        out.extend(chunk.iter());
        chunk.release_all();
        if n > 0 {
            self.cq_bell.after_release(self.cq.released())?;
        } else if DRY_LOOK {
            // Dry: as in `reap`.
            self.cq_bell.before_wait(self.cq.released())?;
        }
        Ok(n)
    }

    /// Loom negative control only: [`reap_into`](Completer::reap_into) without the fenced look
    /// when the ring runs dry.
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn reap_into_without_dry_look_for_loom(
        &mut self,
        out: &mut Vec<C>,
        max: usize,
    ) -> Result<usize, QueueError> {
        self.reap_into_looking::<false>(out, max)
    }

    /// Loom negative control only: [`reap`](Completer::reap) without the fenced look when the
    /// ring runs dry (the same code, instantiated without it).
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn reap_without_dry_look_for_loom(&mut self) -> Result<Option<C>, QueueError> {
        self.reap_looking::<false>()
    }

    /// [`wait`](Completer::wait); `LOOK` false is a loom negative control's breakage (no fenced
    /// look at a service asleep on a full completion ring before sleeping).
    #[inline(always)]
    fn wait_looking<const LOOK: bool>(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<(), QueueError> {
        self.cq_bell
            .before_wait_looking::<LOOK>(self.cq.released())?;
        wait_ring(
            &self.interrupt,
            &mut self.cq,
            closed_words(&self.state, &self.declared),
            timeout,
        )
    }
}

impl<S: Pod, C: Pod> AppSide<S, C> {
    /// Loom negative control only: closes now as dropping does, but with the closed word
    /// stored Relaxed (the drop that follows closes again, soundly, too late).
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn close_relaxed_for_loom(&mut self) {
        self.close_side::<true>();
    }

    /// Loom negative control only: [`wait`](Completer::wait) without the fenced look at a
    /// service asleep on a full completion ring (the same code, instantiated without it).
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn wait_without_room_look_for_loom(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<(), QueueError> {
        self.wait_looking::<false>(timeout)
    }
}

impl<S, C> Drop for AppSide<S, C> {
    /// Publishes staged submissions (nothing pushed is dropped), then closes; one wake-up
    /// covers both.
    fn drop(&mut self) {
        self.close_side::<false>();
    }
}

impl<S, C> AppSide<S, C> {
    /// Publishes what is staged, then sets the closed word and wakes the service (and a
    /// service asleep on a full completion ring). `RELAXED` is a loom negative control's
    /// breakage: the closed word stored Relaxed.
    #[inline(always)]
    fn close_side<const RELAXED: bool>(&mut self) {
        self.sq.publish_staged();
        close::<RELAXED>(&self.state.get().app_closed, self.doorbell.notifier());
        // A service asleep on a full completion ring wakes to see the close.
        self.cq_bell.wake_for_close();
    }
}
