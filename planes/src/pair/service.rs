//! The subsystem side of a queue pair.

use super::*;

/// The subsystem side of a queue pair: takes `S` requests, posts `C` completions.
pub struct ServiceSide<S, C> {
    sq: Consumer<S, Stamped>,
    cq: Producer<C, Stamped>,
    kick: ModeNotifier,
    call: ModeNotifier,
    /// Waits for room in a full completion ring (on its producer word, in the kick mode).
    room: ModeNotifier,
    /// Wakes the app when it sleeps on a full submission ring that taking requests made room in.
    sq_bell: RoomBell,
    kick_fd: Option<EventFdSignal>,
    /// Event-idx suppression is on for this pair ([`PairConfig::event_idx`]).
    event_idx: bool,
    /// The completion ring's index at the last notification of the app.
    cq_notified: u32,
    /// Completions were published since the last [`wake_app_to_reap`] look.
    ///
    /// [`wake_app_to_reap`]: Self::wake_app_to_reap
    published_unlooked: bool,
    state: StateRef,
    _header: Claim,
}

impl<S, C> fmt::Debug for ServiceSide<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceSide")
            .field("sq", &self.sq)
            .field("cq", &self.cq)
            .finish_non_exhaustive()
    }
}

impl<S: Pod, C: Pod> ServiceSide<S, C> {
    /// Lays out a fresh queue pair ([`create`]) and attaches its service side.
    pub fn create(
        region: Arc<Region>,
        offset: usize,
        config: &PairConfig,
        signals: PairSignals,
    ) -> Result<Self, QueueError> {
        create::<S, C>(&region, offset, config)?;
        Self::attach(region, offset, config, signals)
    }

    /// Attaches the service side to a queue pair laid out at `offset` in `region` with the same
    /// `config`, checking its headers.
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
            .and_then(Ring::into_consumer)?;
        let cq = Ring::<C, Stamped>::attach(region.clone(), offset + layout.cq, config.cq_capacity)
            .and_then(Ring::into_producer)?;
        Ok(ServiceSide {
            room: config
                .kick_mode
                .notifier(cq.producer_wake(), signals.kick.clone())?,
            sq_bell: RoomBell::new(&sq, config.call_mode, signals.call.clone())?,
            kick: config
                .kick_mode
                .notifier(sq.consumer_wake(), signals.kick.clone())?,
            call: config
                .call_mode
                .notifier(cq.consumer_wake(), signals.call)?,
            kick_fd: signals.kick,
            event_idx,
            cq_notified: cq.published(),
            published_unlooked: false,
            sq,
            cq,
            state,
            _header: header,
        })
    }

    /// Waits until a request is ready. Fails with [`QueueError::PeerGone`] once the app has
    /// closed and every request it published has been taken, or [`QueueError::Timeout`].
    pub fn wait_requests(&mut self, timeout: Option<Duration>) -> Result<(), QueueError> {
        self.sq_bell.before_wait(self.sq.released())?;
        wait_ring(
            &self.kick,
            &mut self.sq,
            PeerClosed::shared(&self.state.get().app_closed),
            timeout,
        )
    }

    /// Takes the next request, if any.
    pub fn pop_request(&mut self) -> Result<Option<S>, QueueError> {
        self.pop_request_looking::<true>()
    }

    /// Loom negative control only: [`pop_request`](Self::pop_request) without the fenced
    /// look when the ring is dry (the same code, instantiated without it).
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn pop_request_without_dry_look_for_loom(&mut self) -> Result<Option<S>, QueueError> {
        self.pop_request_looking::<false>()
    }

    /// [`pop_request`](Self::pop_request); `DRY_LOOK` false is a loom negative control's
    /// breakage.
    #[inline(always)]
    fn pop_request_looking<const DRY_LOOK: bool>(&mut self) -> Result<Option<S>, QueueError> {
        let r = self.sq.pop()?;
        if r.is_some() {
            self.sq_bell.after_release(self.sq.released())?;
        } else if DRY_LOOK {
            // Dry, with requests released since the last fenced look: the fenced look now (as
            // the app's reap does), for a service that polls without flushing or waiting.
            self.sq_bell.before_wait(self.sq.released())?;
        }
        Ok(r)
    }

    /// Up to `max` ready requests, to read in place and release together. An app asleep on a
    /// full submission ring is woken by the next [`flush`](Self::flush) or wait after the
    /// release.
    pub fn requests(&mut self, max: u32) -> Result<ReadChunk<'_, S, Stamped>, QueueError> {
        Ok(self.sq.read_chunk(max)?)
    }

    /// A copy of the ready request `k` places after the next one, not released: `None` unless
    /// at least `k + 1` are known to be ready (counted by the last look at the ring:
    /// [`requests_available`](Self::requests_available),
    /// [`requests_available_up_to`](Self::requests_available_up_to),
    /// [`requests_ready`](Self::requests_ready), a wait, or taking requests). For a service that
    /// handles requests one at a time (staging completions between them) and releases them
    /// together with [`release_requests`](Self::release_requests).
    #[inline]
    pub fn ready_request(&self, k: u32) -> Option<S> {
        self.sq.peek_ready(k)
    }

    /// Releases the next `n` ready requests with one store. An app asleep on a full submission
    /// ring is woken by the next [`flush`](Self::flush) or wait after the release.
    ///
    /// # Panics
    /// If fewer than `n` requests are known to be ready (see
    /// [`ready_request`](Self::ready_request)).
    #[inline]
    pub fn release_requests(&mut self, n: u32) {
        self.sq.release_ready(n);
    }

    /// The completion ring's staging end alone, as a value that borrows this side: a caller
    /// can hand it (say, inside a context object) to code that should stage completions and
    /// nothing else, beside other borrows of its own state.
    #[inline]
    pub fn stager(&mut self) -> CompletionStager<'_, C> {
        CompletionStager { cq: &mut self.cq }
    }

    /// After taking requests and completing none of them (a service that defers them): wakes
    /// an app asleep on a full submission ring that the release made room in, with a fenced
    /// look at its wake word. [`flush`](Self::flush), [`arm`](Self::arm) and the waits do
    /// this on their own; a service that keeps polling without any of them calls this.
    pub fn wake_app_for_room(&mut self) -> Result<(), QueueError> {
        self.sq_bell.before_wait(self.sq.released())?;
        Ok(())
    }

    /// Stages a completion; the app sees it after [`flush`](Self::flush). A full completion ring
    /// hands it back.
    pub fn complete(&mut self, completion: C) -> Result<(), Rejected<C>> {
        self.cq.stage(completion).map_err(push_error)
    }

    /// Free completion slots now.
    pub fn completion_space(&mut self) -> Result<u32, QueueError> {
        Ok(self.cq.free_slots()?)
    }

    /// Free completion slots, re-reading the app's head only if fewer than `wanted` are known
    /// to be free (see [`Producer::free_for`]).
    pub fn completion_space_for(&mut self, wanted: u32) -> Result<u32, QueueError> {
        Ok(self.cq.free_for(wanted)?)
    }

    /// Requests ready to take now (reads the stamps of every slot the app published since the
    /// last look).
    pub fn requests_available(&mut self) -> Result<u32, QueueError> {
        Ok(self.sq.available()?)
    }

    /// Requests ready to take, looking for new ones only while fewer than `wanted` are known
    /// (see [`Consumer::available_up_to`]): for a service that takes at most `wanted` at a time.
    pub fn requests_available_up_to(&mut self, wanted: u32) -> Result<u32, QueueError> {
        Ok(self.sq.available_up_to(wanted)?)
    }

    /// Tells the app about the completions published since the last time: wakes it if it
    /// sleeps, and (with event-idx suppression) only if it sleeps until one of them.
    #[inline(always)]
    fn notify_app(&mut self) -> Result<(), QueueError> {
        self.published_unlooked = true;
        let published = self.cq.published();
        self.call.notify_published(self.cq_notified, published)?;
        self.cq_notified = published;
        Ok(())
    }

    /// Waits until `n` requests are ready (`n` is taken between 1 and the submission ring's
    /// capacity), the app has closed, or `timeout` passes with at least one there; returns how
    /// many are ready: [`AppSide::wait_completions`] from this side, for a service that
    /// handles requests in batches. [`QueueError::Timeout`] if none came,
    /// [`QueueError::PeerGone`] once the app has closed and every request it published has
    /// been taken.
    pub fn wait_requests_for(
        &mut self,
        n: u32,
        timeout: Option<Duration>,
    ) -> Result<u32, QueueError> {
        self.sq_bell.before_wait(self.sq.released())?;
        wait_ring_for(
            &self.kick,
            &mut self.sq,
            PeerClosed::shared(&self.state.get().app_closed),
            n,
            self.event_idx,
            timeout,
        )
    }

    /// Whether event-idx suppression is on for this pair.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Publishes staged completions and wakes the app if it sleeps; returns how many.
    pub fn flush(&mut self) -> Result<u32, QueueError> {
        self.flush_looking::<true>()
    }

    /// Loom negative control only: [`flush`](Self::flush) whose look at an app asleep on a full
    /// submission ring, when nothing was published, is the relaxed one (the same code,
    /// instantiated without the fence).
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn flush_relaxed_for_loom(&mut self) -> Result<u32, QueueError> {
        self.flush_looking::<false>()
    }

    /// [`flush`](Self::flush); `LOOK` false is a loom negative control's breakage.
    #[inline(always)]
    fn flush_looking<const LOOK: bool>(&mut self) -> Result<u32, QueueError> {
        let n = self.cq.publish();
        // Whenever the published index moved since the last notification, not only when this
        // call published: completions a batch commit published (`serve_ready` with nothing to
        // serve), or whose notification failed, are covered here.
        if self.cq.published() != self.cq_notified {
            self.notify_app()?;
            // The notification fenced (in the call mode, the bell's): an app asleep on a full
            // submission ring that this side took requests from is seen now.
            self.sq_bell.after_fence(self.sq.released())?;
        } else if LOOK {
            // Nothing to notify, so no fence came: the look is fenced itself (if requests were
            // released since the last fenced look), as the requests' and release's docs promise
            // an app asleep on a full submission ring ("woken by the next flush").
            self.sq_bell.before_wait(self.sq.released())?;
        } else {
            self.sq_bell.after_release(self.sq.released())?;
        }
        Ok(n)
    }

    /// Handles the requests that are ready, as many as the completion ring has room for, with
    /// one release and one flush; returns how many were handled.
    pub fn serve_ready(&mut self, handler: &mut impl FnMut(S) -> C) -> Result<u32, QueueError> {
        // Completion room is re-read only when the cached head says there is too little: the
        // head's line moves every time the app reaps.
        let ready = self.sq.available()?;
        let room = self.cq.free_for(ready)?;
        let chunk = self.sq.read_chunk(ready.min(room))?;
        let n = chunk.len();
        let mut out = self.cq.write_chunk(n as u32)?;
        debug_assert_eq!(out.len(), n, "completion room was reserved above");
        for i in 0..n {
            out.set(i, handler(chunk.get(i)));
        }
        chunk.release_all();
        // The commit also publishes completions staged before (`complete`): notify whenever
        // the published index moved.
        out.commit(n);
        if self.cq.published() != self.cq_notified {
            self.notify_app()?;
            self.sq_bell.after_fence(self.sq.released())?;
        }
        Ok(n as u32)
    }

    /// Serves requests with `handler` until the app closes (returns `Ok(())`) or `idle` passes
    /// without a request ([`QueueError::Timeout`]; `None`: no limit). When the completion ring
    /// is full it stops taking requests (back-pressure reaches the app as a full submission ring)
    /// and sleeps until the app reaps ([`wait_room`](Self::wait_room)).
    pub fn run(
        &mut self,
        mut handler: impl FnMut(S) -> C,
        idle: Option<Duration>,
    ) -> Result<(), QueueError> {
        loop {
            match self.wait_requests(idle) {
                Ok(()) => {}
                Err(QueueError::PeerGone) => return Ok(()),
                Err(e) => return Err(e),
            }
            if self.serve_ready(&mut handler)? == 0 {
                match self.wait_room(idle) {
                    Ok(()) => {}
                    // The app closed without reaping what it was owed: a clean end for us.
                    Err(QueueError::PeerGone) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Blocks until the completion ring has a free slot: the app reaped, or closed
    /// ([`QueueError::PeerGone`] if it left the ring full), or `timeout` passed. Publishes
    /// staged completions first. The wait sleeps as the service's requests wait (the kick
    /// mode), and the app's reaping wakes it.
    ///
    /// An app asleep on a full submission ring is woken first whether or not this side took
    /// requests since: with both rings full, only its reaping can make progress, and its wait
    /// for space ends with [`QueueError::Full`] (see [`Submitter::wait_space`]).
    pub fn wait_room(&mut self, timeout: Option<Duration>) -> Result<(), QueueError> {
        self.wait_room_looking::<true>(timeout)
    }

    /// [`wait_room`](Self::wait_room); `STUCK` false is a loom negative control's breakage
    /// (the app is woken only if this side took requests since its last look).
    #[inline(always)]
    fn wait_room_looking<const STUCK: bool>(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<(), QueueError> {
        self.flush()?;
        if STUCK {
            self.sq_bell.before_wait_stuck(self.sq.released())?;
        } else {
            self.sq_bell.before_wait(self.sq.released())?;
        }
        wait_room(
            &self.room,
            &mut self.cq,
            PeerClosed::shared(&self.state.get().app_closed),
            || Ok(false),
            timeout,
        )
    }

    /// After finding the completion ring too full to take the requests that wait (a service
    /// that polls and does not sleep in [`wait_room`](Self::wait_room) or arm with
    /// [`arm_room`](Self::arm_room), which look every time): wakes an app asleep on a full
    /// submission ring, with a fenced look at its wake word, so that its wait for space ends
    /// with [`QueueError::Full`] and it reaps. Publish (flush) before calling this.
    ///
    /// Call it at every such turn: it looks only if completions were published since its last
    /// look. An app that announced sleep before that look is woken by it; one that announces
    /// sleep after it sees the ring as the look left it, full (its wait ends with `Full`), or,
    /// if it reaped some, with room that only a publication can fill again, and a publication
    /// makes the next call look. So an app that keeps announcing sleep without reaping costs
    /// at most one wake-up per publication, not one per turn.
    pub fn wake_app_to_reap(&mut self) -> Result<(), QueueError> {
        if std::mem::take(&mut self.published_unlooked) {
            self.sq_bell.before_wait_stuck(self.sq.released())?;
        }
        Ok(())
    }

    /// Prepares to wait for room in the completion ring in an external event loop (on
    /// [`kick_fd`](Self::kick_fd) in eventfd mode, on [`room_word`](Self::room_word) in the
    /// futex modes): announces that the service sleeps on a full completion ring, so the app's
    /// next reap wakes it, then re-checks. Returns `true` if there is room (or the app closed)
    /// already: then do not wait. After waking, call [`disarm_room`](Self::disarm_room).
    ///
    /// Publishes staged completions first, as [`wait_room`](Self::wait_room) does (the app
    /// cannot reap what it cannot see, and its reaping is what ends this wait), and wakes an
    /// app asleep on a full submission ring, as `wait_room` does.
    pub fn arm_room(&mut self) -> Result<bool, QueueError> {
        self.flush()?;
        if arm_room(
            &mut self.cq,
            PeerClosed::shared(&self.state.get().app_closed),
        )? {
            return Ok(true);
        }
        // The announcement fenced.
        self.sq_bell.after_fence_stuck(self.sq.released())?;
        Ok(false)
    }

    /// Ends an external wait begun with [`arm_room`](Self::arm_room) (it leaves the eventfd's
    /// counter alone, as [`disarm_edge_triggered`](Self::disarm_edge_triggered) does).
    pub fn disarm_room(&mut self) {
        self.cq.producer_wake().cancel_sleep();
    }

    /// The completion ring's producer word: what [`arm_room`](Self::arm_room) announces sleep
    /// on, and what the app's reaping wakes in the futex modes (a futex wake of this word).
    pub fn room_word(&self) -> WakeRef {
        self.cq.producer_wake()
    }

    /// Whether requests are ready to take.
    pub fn requests_ready(&mut self) -> Result<bool, QueueError> {
        Ok(self.sq.has_entries()?)
    }

    /// Whether the app side has closed.
    pub fn app_closed(&self) -> bool {
        closed(&self.state.get().app_closed)
    }

    /// Interrupt-plane counters: `kick` (waiting for requests) and `call` (notifying the app).
    pub fn stats(&self) -> (NotifyStats, NotifyStats) {
        (self.kick.stats(), self.call.stats())
    }

    /// Counters of the room protocol: this side's waits for room in a full completion ring
    /// ([`wait_room`](Self::wait_room)), and its wake-ups of an app asleep on a full
    /// submission ring (`sent` and `suppressed`).
    pub fn room_stats(&self) -> (NotifyStats, NotifyStats) {
        (self.room.stats(), self.sq_bell.stats())
    }

    /// The eventfd the service sleeps on in eventfd mode, for an event loop. Call
    /// [`arm`](Self::arm) before waiting on it.
    pub fn kick_fd(&self) -> Option<BorrowedFd<'_>> {
        self.kick_fd.as_ref().map(|e| e.as_fd())
    }

    /// The wake word of the submission ring: what [`arm`](Self::arm) announces sleep on and the
    /// app's doorbell wakes. With the kick mode [`NotifyMode::Futex`], the doorbell is a futex
    /// wake of this word, so a service can sleep on many pairs at once in one
    /// [`WaitAny`](crate::interrupt::WaitAny) (arm each, then wait on their words).
    pub fn kick_word(&self) -> WakeRef {
        self.sq.consumer_wake()
    }

    /// Prepares to wait for requests in an external event loop on [`kick_fd`](Self::kick_fd):
    /// announces that the service is about to sleep, so the app's doorbell will signal the
    /// eventfd, then re-checks. Returns `true` if requests (or the app's close) are already
    /// there — then do not wait. After the fd fires, call [`disarm`](Self::disarm).
    pub fn arm(&mut self) -> Result<bool, QueueError> {
        let armed = arm_ring(
            &mut self.sq,
            PeerClosed::shared(&self.state.get().app_closed),
        )?;
        // The announcement fenced: an app asleep on a full submission ring is seen now.
        self.sq_bell.after_fence(self.sq.released())?;
        Ok(armed)
    }

    /// Ends an external wait begun with [`arm`](Self::arm): clears the announcement and drains
    /// the eventfd.
    pub fn disarm(&mut self) -> Result<(), QueueError> {
        disarm_ring(&self.sq, self.kick_fd.as_ref())
    }

    /// Like [`disarm`](Self::disarm), for an event loop that watches
    /// [`kick_fd`](Self::kick_fd) edge-triggered (`EPOLLET`): clears the announcement but
    /// leaves the eventfd's counter alone, which saves a `read` per wake-up. Each later kick
    /// still reports the fd again, because every eventfd write is a new edge.
    pub fn disarm_edge_triggered(&mut self) {
        self.sq.consumer_wake().cancel_sleep();
    }

    /// Loom negative control only: [`wait_room`](Self::wait_room) that wakes an app asleep on
    /// a full submission ring only if this side took requests since its last look (the same
    /// code, instantiated without the look for an app that must reap first).
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn wait_room_without_stuck_look_for_loom(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<(), QueueError> {
        self.wait_room_looking::<false>(timeout)
    }
}

impl<S, C> Drop for ServiceSide<S, C> {
    /// Publishes staged completions (nothing the service completed is dropped), then closes.
    fn drop(&mut self) {
        self.cq.publish_staged();
        close::<false>(&self.state.get().service_closed, &self.call);
        // An app asleep on a full submission ring wakes to see the close.
        self.sq_bell.wake_for_close();
    }
}

/// Stages completions on a [`ServiceSide`]'s completion ring ([`ServiceSide::stager`]); the
/// app sees them after the side's next [`flush`](ServiceSide::flush).
pub struct CompletionStager<'a, C> {
    cq: &'a mut Producer<C, Stamped>,
}

impl<C> fmt::Debug for CompletionStager<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionStager")
            .field("cq", &self.cq)
            .finish()
    }
}

impl<C: Pod> CompletionStager<'_, C> {
    /// [`ServiceSide::complete`]: a full completion ring hands the completion back.
    #[inline]
    pub fn stage(&mut self, completion: C) -> Result<(), Rejected<C>> {
        self.cq.stage(completion).map_err(push_error)
    }
}
