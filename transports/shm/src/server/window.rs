//! The adaptive polling window ([`ServerConfig::idle_poll`](crate::ServerConfig::idle_poll)).

use std::time::Duration;

/// The adaptive polling window (see [`ServerConfig::idle_poll`]).
#[derive(Debug)]
pub(crate) struct Window {
    pub(crate) now_ns: u64,
    pub(crate) max_ns: u64,
    sleeps_since_probe: u32,
}

pub(crate) const WINDOW_MIN_NS: u64 = 2_000;
pub(crate) const WINDOW_PROBE_EVERY: u32 = 32;

impl Window {
    pub(crate) fn new(max: Duration) -> Self {
        let max_ns = max.as_nanos().min(u64::MAX as u128) as u64;
        Window {
            now_ns: max_ns,
            max_ns,
            sleeps_since_probe: 0,
        }
    }

    /// The window for this idle period.
    pub(crate) fn current(&mut self) -> u64 {
        if self.now_ns == 0 && self.max_ns > 0 {
            self.sleeps_since_probe += 1;
            if self.sleeps_since_probe >= WINDOW_PROBE_EVERY {
                self.sleeps_since_probe = 0;
                return WINDOW_MIN_NS.min(self.max_ns);
            }
        }
        self.now_ns
    }

    /// Work arrived while polling: poll longer next time.
    pub(crate) fn hit(&mut self) {
        self.now_ns =
            (self.now_ns.saturating_mul(2)).clamp(WINDOW_MIN_NS.min(self.max_ns), self.max_ns);
    }

    /// The window ran out: poll less next time.
    pub(crate) fn miss(&mut self) {
        self.now_ns /= 2;
        if self.now_ns < WINDOW_MIN_NS {
            self.now_ns = 0;
        }
    }
}
