//! The event loop: one turn serves every client a bounded batch, polls the service, and
//! sleeps (in epoll or on the clients' futex words) when nobody has work.

use super::*;

impl<S: Pod, C: Pod, V: Service<S, C>> Server<S, C, V> {
    #[inline(always)]
    pub(super) fn turn(&mut self) -> Result<(), Error> {
        self.turn_bounded(None).map(drop)
    }

    /// One turn: serve what is ready; when nothing was, keep polling (spin clients, or within
    /// the adaptive window) or arm every ring and sleep in epoll. Returns whether it slept.
    #[inline(always)]
    pub(super) fn turn_bounded(&mut self, until: Option<Instant>) -> Result<bool, Error> {
        let mut work = self.serve_all();
        work += self.poll_service();
        if !self.departing.is_empty() {
            self.retire_departed();
        }
        if work > 0 {
            if self.idle_since.take().is_some() {
                self.window.hit();
            }
            self.idle_turns = 0;
            // Sockets are looked at every few thousand turns (a look is a system call, and a
            // turn of cheap requests is short), and after every long turn (one where a client
            // spent its byte budget): new clients and control messages must not wait behind
            // thousands of expensive turns.
            if self.events_due(work) {
                self.poll_events(Some(Duration::ZERO))?;
            }
            self.take_control_events()?;
            return Ok(false);
        }
        self.idle_turns += 1;
        if self.keep_polling() {
            std::hint::spin_loop();
            if self.events_due(0) {
                self.poll_events(Some(Duration::ZERO))?;
            }
            self.take_control_events()?;
            return Ok(false);
        }
        if self.idle_since.take().is_some() {
            self.window.miss();
        }
        // The last client may have left during this turn: a server that exits when empty must
        // not go to sleep with nothing left to wake it.
        if self.config.exit_when_empty && self.is_empty_after_use() {
            return Ok(false);
        }
        if self.arm_all() || self.service.before_sleep() {
            self.disarm_all();
            // Not asleep, so the sockets are looked at as in a polling turn: a ring that reads
            // ready turn after turn with nothing served must not keep them from being looked at.
            if self.events_due(0) {
                self.poll_events(Some(Duration::ZERO))?;
            }
            self.take_control_events()?;
            return Ok(false);
        }
        let mut timeout = self.sleep_limit();
        if let Some(until) = until {
            let left = until.saturating_duration_since(Instant::now());
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        self.stats.sleeps += 1;
        let slept = self.sleep(timeout);
        self.disarm_all();
        self.idle_turns = 0;
        // The sleep looked at the sockets.
        self.since_events = 0;
        slept.map(|()| true)
    }

    /// Counts a polling turn that did `work` (requests taken, answers staged, the service's own
    /// units) toward the next look at the sockets: true once turns and units of work since the
    /// last look reach [`EVENT_CHECK_EVERY`] (busy and idle turns counted together, and each
    /// unit as a turn of its own, so that long turns of many cheap requests bring the look
    /// sooner: an echo request counts 2), or after a heavy turn (one where a client
    /// spent its byte budget). Counted apart, a client with a request every few hundred turns
    /// kept the idle count from reaching it and left the look to the rare busy turn whose
    /// number fell on a multiple of it: a hang-up or a new client waited up to a second or
    /// more behind a client pinging every 200 us.
    pub(super) fn events_due(&mut self, work: u32) -> bool {
        self.since_events += 1 + u64::from(work);
        let heavy = std::mem::take(&mut self.heavy_turn);
        if self.since_events >= EVENT_CHECK_EVERY || heavy {
            self.since_events = 0;
            return true;
        }
        false
    }

    /// Sleeps (every ring armed) in epoll, or with [`ServerSleep::Futex`] on the clients' kick
    /// words, until a kick, an event or `timeout`.
    #[inline(always)]
    pub(super) fn sleep(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        let Some(futex) = &mut self.futex else {
            if self.arm_kick_waits().is_err() {
                // The kernel could not take a wait now (out of memory, say): the clients with
                // a futex doorbell are looked at again within a millisecond rather than
                // missed, and the server does not stop for it.
                let capped = timeout.map_or(KICK_WAIT_RETRY, |t| t.min(KICK_WAIT_RETRY));
                return self.poll_events(Some(capped));
            }
            return self.poll_events(timeout);
        };
        let io = |source| Error::Io {
            op: "sleeping on the clients' kick words",
            source,
        };
        if std::mem::take(&mut self.kick_words_changed) {
            let words = self
                .conns
                .iter_mut()
                .filter_map(|c| match &mut c.state {
                    State::Active(a) => {
                        a.in_set = a.armed;
                        match a.armed {
                            Armed::Requests => a.kick_word.clone(),
                            Armed::Room => a.room_word.clone(),
                            Armed::Nothing => None,
                        }
                    }
                    State::Handshake { .. } => None,
                })
                .collect();
            futex.set_words(words, self.words_departed).map_err(io)?;
            self.words_departed = false;
        }
        if futex.sleep(timeout).map_err(io)? {
            self.take_control_events()
        } else {
            self.expire_handshakes();
            Ok(())
        }
    }

    /// Sleeping in epoll: arms a futex wait (through io_uring) on the word of every client with
    /// a futex doorbell that can wake the server, as [`arm_all`](Self::arm_all) left it, unless
    /// one is pending there already. Completed waits are reaped first: a wake-up may have
    /// ended an earlier sleep without the ring's readiness being seen (an interrupted
    /// `epoll_wait`), and its client's word needs a wait again.
    fn arm_kick_waits(&mut self) -> std::io::Result<()> {
        let Some(waits) = &mut self.kick_waits else {
            return Ok(());
        };
        waits.retry_cancels();
        waits.reap()?;
        for c in &self.conns {
            let State::Active(a) = &c.state else {
                continue;
            };
            let word = match a.armed {
                Armed::Requests => a.kick_word.as_ref().map(|w| (Word::Requests, w)),
                Armed::Room => a.room_word.as_ref().map(|w| (Word::Room, w)),
                Armed::Nothing => None,
            };
            if let Some((which, word)) = word {
                if waits.arm(kick_waits::key(c.id, which), word)? {
                    self.stats.futex_doorbell_waits += 1;
                }
            }
        }
        waits.submit()
    }

    /// With [`ServerSleep::Futex`]: if the control thread says the epoll set has events, takes
    /// them (a non-blocking `epoll_wait`) and lets it poll again.
    pub(super) fn take_control_events(&mut self) -> Result<(), Error> {
        if !self.futex.as_ref().is_some_and(FutexSleep::pending) {
            return Ok(());
        }
        self.poll_events(Some(Duration::ZERO))?;
        if let Some(futex) = &self.futex {
            futex.take().map_err(|source| Error::Io {
                op: "the server's control thread",
                source,
            })?;
        }
        Ok(())
    }

    pub(super) fn keep_polling(&mut self) -> bool {
        if self.spin_clients > 0 {
            return true;
        }
        if self.adaptive_clients == 0 {
            return false;
        }
        // The window is time, but the clock is read only every few idle turns.
        if self.idle_since.is_some() && self.idle_turns % CLOCK_EVERY as u64 != 0 {
            return true;
        }
        let now = Instant::now();
        let since = match self.idle_since {
            Some(since) => since,
            None => {
                // A new idle period (however the last one ended: in a sleep, with work, or
                // with a ring found ready just before sleeping).
                self.idle_since = Some(now);
                self.window.begin();
                now
            }
        };
        (now.duration_since(since).as_nanos() as u64) < self.window.in_use()
    }

    /// How long the server may sleep: until the nearest handshake deadline (a client whose
    /// completion ring is full wakes it when it reaps: no limit for that).
    pub(super) fn sleep_limit(&self) -> Option<Duration> {
        // The clock is read only if a handshake is pending: a served client's round trip
        // should not pay for a clock read (tens of ns in a VM) on its way to the sleep.
        let mut now = None;
        let mut limit: Option<Duration> = None;
        let mut tighten = |d: Duration| limit = Some(limit.map_or(d, |l| l.min(d)));
        for c in &self.conns {
            match &c.state {
                State::Handshake { deadline } => tighten(
                    deadline.saturating_duration_since(*now.get_or_insert_with(Instant::now)),
                ),
                State::Active(_) => {}
            }
        }
        limit
    }

    pub(super) fn serve_all(&mut self) -> u32 {
        if self.config.share_by_user && std::mem::take(&mut self.shares_stale) {
            self.count_shares();
        }
        let mut work = 0;
        let mut requests = 0u64;
        let mut i = 0;
        while i < self.conns.len() {
            let outcome = match &mut self.conns[i].state {
                State::Active(a) => {
                    let limits = a.limits;
                    a.serve(&mut self.service, limits)
                }
                State::Handshake { .. } => Ok(Outcome::Served {
                    taken: 0,
                    deferred: 0,
                    staged: 0,
                }),
            };
            match outcome {
                Ok(Outcome::Served {
                    taken,
                    deferred,
                    staged,
                }) => {
                    let mut left = false;
                    if let State::Active(a) = &self.conns[i].state {
                        // A client whose batch was cut short by its byte budget made this a
                        // long turn: look at the sockets after it (see `turn_bounded`).
                        self.heavy_turn |= a.cut_short;
                        left = a.leaving && taken == 0;
                    }
                    work += taken + staged;
                    requests += u64::from(taken);
                    self.stats.deferred += u64::from(deferred);
                    if left {
                        // Served what it published before it left (or all it could be:
                        // nothing more is taken at its deferred limit or with its completion
                        // ring full).
                        self.release(i, None);
                    } else {
                        i += 1;
                    }
                }
                Ok(Outcome::Finished) => self.release(i, None),
                Err(e) => self.release(i, Some(format!("queue pair failed: {e}"))),
            }
        }
        self.stats.requests += requests;
        work
    }

    /// A client's budget per turn, unshared: the configured one.
    pub(super) fn turn_limits(&self) -> Limits {
        Limits {
            batch: self.config.batch,
            max_deferred: self.config.max_deferred,
            turn_bytes: self.config.turn_bytes,
        }
    }

    /// With [`ServerConfig::share_by_user`]: gives each client its part of its user's budget
    /// ([`Active::limits`]), split between the clients its user has (connections without
    /// credentials count as one user, as for `max_clients_per_user`). Run when a client came
    /// or went.
    fn count_shares(&mut self) {
        let mut users: Vec<(Option<u32>, u32)> = Vec::new();
        for c in &self.conns {
            if let State::Active(_) = c.state {
                let uid = c.uid();
                match users.iter_mut().find(|(u, _)| *u == uid) {
                    Some((_, n)) => *n += 1,
                    None => users.push((uid, 1)),
                }
            }
        }
        let base = self.turn_limits();
        for c in &mut self.conns {
            let uid = c.uid();
            if let State::Active(a) = &mut c.state {
                let share = users.iter().find(|(u, _)| *u == uid).map_or(1, |&(_, n)| n);
                a.limits = base.shared(share);
            }
        }
    }

    /// Announces sleep on every ring that can wake us; `true` if one already has work.
    ///
    /// What is armed depends on the client: its requests (its submission ring), or, while its
    /// completion ring is full, room there (the client's reaping wakes the server, through
    /// its kick eventfd or a futex wake of the ring's producer word), or nothing while it is
    /// at its deferred limit.
    pub(super) fn arm_all(&mut self) -> bool {
        let mut ready = false;
        let mut i = 0;
        while i < self.conns.len() {
            if let State::Active(a) = &mut self.conns[i].state {
                // A client at its deferred limit is not served until the service answers (and
                // the service's own sources wake the server for that): its waiting requests
                // must not keep the server awake.
                a.armed = if a.at_deferred_limit(self.config.max_deferred) {
                    Armed::Nothing
                } else if a.blocked {
                    Armed::Room
                } else {
                    Armed::Requests
                };
                if a.armed != a.in_set && a.kick_word.is_some() {
                    self.kick_words_changed = true;
                }
                let armed = match a.armed {
                    Armed::Requests => a.service.arm(),
                    Armed::Room => a.service.arm_room(),
                    Armed::Nothing => Ok(false),
                };
                match armed {
                    Ok(true) => ready = true,
                    Ok(false) => {}
                    Err(e) => {
                        self.release(i, Some(format!("queue pair failed: {e}")));
                        continue;
                    }
                }
            }
            i += 1;
        }
        ready
    }

    pub(super) fn disarm_all(&mut self) {
        for c in &mut self.conns {
            if let State::Active(a) = &mut c.state {
                // The kick eventfds are registered edge-triggered: no drain (a `read` per
                // wake-up) is needed for the next kick to report them again.
                match a.armed {
                    Armed::Requests => a.service.disarm_edge_triggered(),
                    Armed::Room => a.service.disarm_room(),
                    Armed::Nothing => {}
                }
            }
        }
    }

    pub(super) fn poll_events(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        let n = match self.epoll.wait(&mut self.events, millis(timeout)) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(os("epoll_wait")(e)),
        };
        for k in 0..n {
            let ev = self.events[k];
            match ev.data() {
                LISTENER => self.accept_all()?,
                STOP => {
                    let _ = self.stop.read();
                    self.stopping = true;
                }
                SOURCE => {} // a service's source: `Service::poll` runs on every turn.
                // Reaped before the next sleep's arming (`arm_kick_waits`).
                KICK_WAITS => {}
                token if token % 2 == 0 => self.on_socket(token / 2, ev.events()),
                _ => {} // a kick eventfd: `disarm_all` drains it, the next turn serves.
            }
        }
        self.expire_handshakes();
        Ok(())
    }

    /// Lets the service advance its own work and complete deferred requests; publishes what it
    /// completed.
    #[inline(always)]
    pub(super) fn poll_service(&mut self) -> u32 {
        let mut table = Table {
            conns: &mut self.conns,
            hint: 0,
        };
        let mut completions = Completions {
            route: &mut table,
            delivered: 0,
            discarded: 0,
        };
        let work = self.service.poll(&mut completions);
        let (delivered, discarded) = (completions.delivered, completions.discarded);
        self.stats.discarded += discarded;
        if delivered > 0 {
            self.flush_completed();
        }
        work
    }

    /// Publishes the completions a service's poll staged (one publish and at most one wake-up
    /// per client, however many it completed).
    pub(super) fn flush_completed(&mut self) {
        let mut i = 0;
        while i < self.conns.len() {
            if let State::Active(a) = &mut self.conns[i].state {
                if std::mem::take(&mut a.unflushed) {
                    if let Err(e) = a.service.flush() {
                        self.release(i, Some(format!("queue pair failed: {e}")));
                        continue;
                    }
                }
            }
            i += 1;
        }
    }

    /// Forgets departed clients whose deferred requests have all been answered or dropped,
    /// counting the dropped ones.
    pub(crate) fn retire_departed(&mut self) {
        let mut i = 0;
        while i < self.departing.len() {
            if Ledger::unanswered(&self.departing[i]) == 0 {
                // Pairs with the Release in `Pending::drop`: the count read below is final.
                fence(Acquire);
                self.stats.abandoned += self.departing.swap_remove(i).abandoned();
            } else {
                i += 1;
            }
        }
    }
}
