//! The adaptive polling window ([`ServerConfig::idle_poll`](crate::ServerConfig::idle_poll)).

use std::time::Duration;

/// The adaptive polling window (see [`ServerConfig::idle_poll`]): how long the server keeps
/// polling, once idle, before it sleeps.
///
/// It doubles when work arrives within it (a hit) and halves when it runs out (a miss), to
/// nothing below [`WINDOW_MIN_NS`]: a client that shares the server's CPU cannot submit while
/// the server polls, and soon finds it asleep. A window at nothing probes again, for
/// [`WINDOW_PROBE_NS`], every [`WINDOW_PROBE_EVERY`] idle periods; a hit keeps at least the
/// window that found the work. The probe outlasts a doorbell: a client streaming requests to
/// a server that sleeps between them pauses for a wake-up system call at each submit (several
/// microseconds in a VM), and a probe shorter than that pause never sees the stream and never
/// lets the server out of sleeping between every two submits. After an adaptive client
/// arrives ([`arrival`](Self::arrival)), which may stream at once into a collapsed window, the
/// probes come sooner: at the first idle period at nothing, then twice as many periods after
/// each probe that finds nothing, up to every [`WINDOW_PROBE_EVERY`]. (Not after any hit: on a
/// shared CPU a probe can hit when the scheduler runs the client during it, and each of those
/// would restart the quick probes that delay it. A client that connects again and again
/// restarts them each time, at the cost of a handshake each.)
#[derive(Debug)]
pub(crate) struct Window {
    now_ns: u64,
    max_ns: u64,
    /// The window of the current idle period (the probe's length while probing).
    in_use: u64,
    /// The current idle period is a probe.
    probing: bool,
    /// Idle periods at nothing since the last probe, and how many there are between probes.
    since_probe: u32,
    probe_every: u32,
}

/// The shortest window kept: below it, the window is nothing.
const WINDOW_MIN_NS: u64 = 2_000;
/// How long a window at nothing polls when it probes (at most the configured window).
const WINDOW_PROBE_NS: u64 = 20_000;
/// The most idle periods between two probes of a window at nothing.
const WINDOW_PROBE_EVERY: u32 = 256;

impl Window {
    pub(crate) fn new(max: Duration) -> Self {
        let max_ns = max.as_nanos().min(u64::MAX as u128) as u64;
        Window {
            now_ns: max_ns,
            max_ns,
            in_use: max_ns,
            probing: false,
            since_probe: 0,
            probe_every: WINDOW_PROBE_EVERY,
        }
    }

    /// Starts an idle period: its window, which [`in_use`](Self::in_use) then returns.
    pub(crate) fn begin(&mut self) -> u64 {
        self.in_use = self.now_ns;
        self.probing = false;
        if self.now_ns == 0 && self.max_ns > 0 {
            self.since_probe += 1;
            if self.since_probe >= self.probe_every {
                self.since_probe = 0;
                self.probing = true;
                self.in_use = WINDOW_PROBE_NS.min(self.max_ns);
            }
        }
        self.in_use
    }

    /// The window of the current idle period.
    pub(crate) fn in_use(&self) -> u64 {
        self.in_use
    }

    /// An adaptive client arrived: probe soon if the window is at nothing.
    pub(crate) fn arrival(&mut self) {
        self.probe_every = 1;
        self.since_probe = 0;
    }

    /// Work arrived while polling: poll longer next time (at least as long as this time).
    pub(crate) fn hit(&mut self) {
        self.now_ns = self
            .now_ns
            .saturating_mul(2)
            .max(self.in_use)
            .clamp(WINDOW_MIN_NS.min(self.max_ns), self.max_ns);
    }

    /// The window ran out: poll less next time (and after a probe, probe later).
    pub(crate) fn miss(&mut self) {
        if self.probing {
            self.probe_every = (self.probe_every * 2).min(WINDOW_PROBE_EVERY);
        }
        self.now_ns /= 2;
        if self.now_ns < WINDOW_MIN_NS {
            self.now_ns = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn collapsed() -> Window {
        let mut w = Window::new(Duration::from_micros(50));
        while w.now_ns > 0 {
            w.begin();
            w.miss();
        }
        w
    }

    #[test]
    fn misses_halve_the_window_to_nothing_and_hits_double_it() {
        let mut w = Window::new(Duration::from_micros(50));
        assert_eq!(w.begin(), 50_000);
        w.miss();
        assert_eq!(w.begin(), 25_000);
        w.hit();
        assert_eq!(w.begin(), 50_000);
        let w = collapsed();
        assert_eq!(w.now_ns, 0);
    }

    /// Misses until the next probe; returns how many idle periods at nothing came before it.
    fn to_probe(w: &mut Window) -> u32 {
        let mut n = 0;
        while w.begin() == 0 {
            w.miss();
            n += 1;
        }
        n
    }

    /// A window at nothing probes every `WINDOW_PROBE_EVERY` idle periods, and after a
    /// client's arrival at once, then twice as many idle periods after each probe that finds
    /// nothing (up to `WINDOW_PROBE_EVERY`), for the probe's length; a probe that finds work
    /// keeps that length (a hit from nothing used to give only `WINDOW_MIN_NS`, shorter than
    /// the pause of a stream whose every submit rings); a hit does not bring the quick probes
    /// back.
    #[test]
    fn a_probe_that_finds_work_keeps_its_length() {
        let mut w = collapsed();
        assert_eq!(to_probe(&mut w), WINDOW_PROBE_EVERY - 1);
        w.miss();
        w.arrival();
        let mut gaps = Vec::new();
        for _ in 0..12 {
            gaps.push(to_probe(&mut w));
            assert_eq!(w.in_use(), WINDOW_PROBE_NS);
            w.miss();
        }
        assert_eq!(gaps, [0, 1, 3, 7, 15, 31, 63, 127, 255, 255, 255, 255]);
        w.arrival();
        // Four probes that find nothing (the next comes 15 idle periods later), then one that
        // finds work.
        for _ in 0..4 {
            to_probe(&mut w);
            w.miss();
        }
        assert_eq!(to_probe(&mut w), 15);
        w.hit();
        assert_eq!(w.begin(), WINDOW_PROBE_NS);
        w.hit();
        assert_eq!(w.begin(), 2 * WINDOW_PROBE_NS);
        while w.now_ns > 0 {
            w.miss();
            w.begin();
        }
        w.miss();
        // The collapse took one idle period at nothing; the next probe comes 16 after the last.
        // (Had the hit brought the quick probes back, that period would have been a probe, and
        // the next would come one period later.)
        assert_eq!(to_probe(&mut w), 14, "the probes went on where they were");
    }

    #[test]
    fn the_probe_is_at_most_the_configured_window() {
        let mut w = Window::new(Duration::from_micros(5));
        while w.now_ns > 0 {
            w.begin();
            w.miss();
        }
        to_probe(&mut w);
        assert_eq!(w.in_use(), 5_000);
        // No window configured: never polls.
        let mut w = Window::new(Duration::ZERO);
        for _ in 0..2 * WINDOW_PROBE_EVERY {
            assert_eq!(w.begin(), 0);
            w.miss();
        }
    }
}
