//! subring's comparison suite, behind `subring bench`: subring against what a user would
//! otherwise pick, every peer measured beside subring inside each repetition, so that ratios stay
//! fair on a shared, noisy machine (its vCPU placement drifts between "near" and "far"; every
//! repetition is labelled with a cache-line ping-pong [`peers::probe`]).
//!
//! Sections:
//! - [`spsc`]: subring's ring against rtrb and crossbeam's `ArrayQueue`, two threads;
//! - [`ipc`]: cross-process round trips and 4 KiB payloads, subring-shm against pipes, Unix
//!   sockets, eventfds and raw shared memory;
//! - [`kernel`]: the kernel transport against the raw `io-uring` crate and `pread`;
//! - [`coalesce`]: interrupt coalescing under a bursty load, event-idx suppression against
//!   the sleeping flag alone;
//! - [`storage`]: the block service (client → shm service → io_uring into the client's memory)
//!   against local io_uring reads, a classic Unix-socket server and a copying service;
//! - [`net`]: a TCP echo service on the kernel transport against an epoll loop, tokio and (with
//!   `runtimes`) tokio-uring and compio;
//! - [`xdp`]: receiving on a veth pair, subring-xdp against `AF_PACKET` v3 and `recvmmsg`;
//! - `iceoryx` (feature `iceoryx2`): iceoryx2's publish-subscribe round trip.
//!
//! Results land in a [`report::Report`]: a table for people, JSON (serde) and an SVG chart
//! ([`plot`]).
#![warn(missing_docs, missing_debug_implementations)]

pub mod asyncrt;
pub mod coalesce;
pub mod ipc;
pub mod kernel;
pub mod net;
pub mod peers;
pub mod plot;
pub mod report;
pub mod spsc;
pub mod storage;
pub mod xdp;

#[cfg(feature = "iceoryx2")]
pub mod iceoryx;

use std::fmt::Display;

/// Progress of a run, for a progress bar.
pub trait Progress {
    /// A section starts that will take `steps` calls to [`step`](Progress::step).
    fn begin(&mut self, section: &str, steps: u64);
    /// One step starts, measuring `what`.
    fn step(&mut self, what: &str);
}

/// A [`Progress`] that shows nothing.
#[derive(Debug, Default)]
pub struct Quiet;

impl Progress for Quiet {
    fn begin(&mut self, _: &str, _: u64) {}
    fn step(&mut self, _: &str) {}
}

/// Turns an error into a `String` that says what failed.
pub trait Context<T> {
    /// `what: error`.
    fn ctx(self, what: &str) -> Result<T, String>;
}

impl<T, E: Display> Context<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}
