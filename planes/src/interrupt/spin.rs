//! How long a waiter spins before it sleeps, and the spin loops themselves.

use super::*;

/// How long a [`SleepNotifier`] spins before it announces sleep.
#[derive(Debug, Clone)]
pub struct SpinPolicy {
    /// Spins, or nanoseconds for a timed policy.
    pub(super) budget: Cell<u32>,
    pub(super) max: u32,
    pub(super) adaptive: bool,
    pub(super) timed: bool,
    pub(super) waits_since_probe: Cell<u32>,
}

/// Spins an adaptive policy uses to re-probe after its budget fell to zero.
const PROBE_SPINS: u32 = 64;
/// Every how many waits an exhausted adaptive policy probes again.
const PROBE_EVERY: u32 = 32;
/// Nanoseconds a timed adaptive policy spins to re-probe.
const PROBE_NANOS: u32 = 2_000;

impl SpinPolicy {
    /// Never spin: announce sleep at once.
    pub fn none() -> Self {
        Self::fixed(0)
    }

    /// Always spin `spins` times (each a `spin_loop` hint and a check) before sleeping.
    pub fn fixed(spins: u32) -> Self {
        SpinPolicy {
            budget: Cell::new(spins),
            max: spins,
            adaptive: false,
            timed: false,
            waits_since_probe: Cell::new(0),
        }
    }

    /// Spin up to `max` times, doubling the budget when a spin succeeds and halving it when
    /// one fails, so that a waiter whose peer answers quickly keeps spinning and one whose peer
    /// is slow (or shares its CPU, where spinning only delays the peer) soon blocks at once. An
    /// exhausted budget re-probes with a few spins every few waits.
    pub fn adaptive(max: u32) -> Self {
        SpinPolicy {
            budget: Cell::new(max),
            max,
            adaptive: true,
            timed: false,
            waits_since_probe: Cell::new(0),
        }
    }

    /// Like [`adaptive`](Self::adaptive), but the budget is time: spin for up to `max` (at most
    /// about 4 s), starting from `max`. What a spin costs in time differs widely between CPUs
    /// (a `pause` takes from a few to over a hundred cycles) and what a spin must outlast is a
    /// time (a peer's reaction, a wake-up), so cross-process waits budget in time.
    pub fn adaptive_for(max: Duration) -> Self {
        let max = max.as_nanos().min(u128::from(u32::MAX)) as u32;
        SpinPolicy {
            budget: Cell::new(max),
            max,
            adaptive: true,
            timed: true,
            waits_since_probe: Cell::new(0),
        }
    }

    pub(super) fn probe(&self) -> u32 {
        if self.timed {
            PROBE_NANOS.min(self.max)
        } else {
            PROBE_SPINS.min(self.max)
        }
    }

    /// The spin budget for the next wait (spins, or nanoseconds for [`adaptive_for`](Self::adaptive_for)).
    pub fn current_budget(&self) -> u32 {
        self.budget.get()
    }

    pub(super) fn budget_for_wait(&self) -> u32 {
        let budget = self.budget.get();
        if self.adaptive && budget == 0 {
            let n = self.waits_since_probe.get() + 1;
            if n >= PROBE_EVERY {
                self.waits_since_probe.set(0);
                return self.probe();
            }
            self.waits_since_probe.set(n);
        }
        budget
    }

    pub(super) fn record(&self, spin_succeeded: bool) {
        if !self.adaptive {
            return;
        }
        let b = self.budget.get();
        let next = if spin_succeeded {
            (b.saturating_mul(2)).clamp(self.probe(), self.max)
        } else {
            b / 2
        };
        self.budget.set(next);
    }
}

/// The instant `timeout` from now; `None` (no limit) for no timeout or one too large to
/// represent.
pub(crate) fn deadline_after(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| Instant::now().checked_add(t))
}

/// Spins up to `spins` times waiting for `ready`, checking the deadline now and then.
pub(super) fn spin_until(
    ready: &mut dyn FnMut() -> bool,
    spins: u32,
    deadline: Option<Instant>,
) -> bool {
    for i in 0..spins {
        if ready() {
            return true;
        }
        spin_loop();
        if i % 256 == 255 && deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
    }
    ready()
}

/// Spins a timed spin phase makes before it first reads the clock: about half a microsecond
/// (longer than a cross-core round trip, short enough to fit any budget worth spinning).
pub(super) const SPIN_BURST: u32 = 16;
/// Spins [`SpinNotifier`] makes before it first reads the clock.
pub(super) const SPIN_ONLY_BURST: u32 = 256;

/// Spins for up to `nanos` waiting for `ready`, reading the clock every 64 spins (and not
/// before the first [`SPIN_BURST`] spins; `nanos` counts from the first read).
pub(super) fn spin_for(
    ready: &mut dyn FnMut() -> bool,
    nanos: u32,
    deadline: Option<Instant>,
) -> bool {
    if spin_until(ready, SPIN_BURST, None) {
        return true;
    }
    let mut end = Instant::now() + Duration::from_nanos(u64::from(nanos));
    if let Some(d) = deadline {
        end = end.min(d);
    }
    loop {
        for _ in 0..64 {
            if ready() {
                return true;
            }
            spin_loop();
        }
        if Instant::now() >= end {
            return ready();
        }
    }
}
