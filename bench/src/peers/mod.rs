//! Peer measurements for the cross-process IPC section of the suite: what the same job costs over the
//! transports a user would otherwise pick, measured the same way as subring.
//!
//! Each measurement sets everything up (pipes, socketpairs, eventfds, `MAP_SHARED` memory), forks
//! one child, pins parent and child as [`Placement`] says, and measures in the parent:
//!
//! * round trips ([`pipe_rt`], [`unix_socket_rt`], [`eventfd_rt`], [`spin_floor_rt`]): the
//!   parent sends an 8-byte message (or publishes a counter in shared memory) and the child
//!   echoes it; one sample per round trip, after `n / 10` untimed warm-up round trips;
//! * throughput ([`unix_socket_throughput`], [`shm_ring_throughput`]): bytes per second from the
//!   first byte written until the consumer acknowledges that it has read (copied out, summed)
//!   all of it; the acknowledgement carries a checksum that the parent verifies.
//!
//! [`probe`] and [`label`] tell which vCPU placement the host gave us ("near" or "far").
//!
//! Nothing here can hang, though the round trips block as their users would (plain blocking
//! reads, no timeouts): the parent's side of a measurement is interrupted by a SIGALRM after a
//! minute (`ParentAlarm`), spins check a deadline, socket throughput has socket timeouts, a
//! child lives two minutes at most (SIGALRM, default action), children are SIGKILLed if the
//! parent dies (`PR_SET_PDEATHSIG`), and are always reaped, killed if they do not exit in time. Failures come back as `Err(String)` saying what
//! failed. Call these while the process is single-threaded: the child of `fork()` only runs a
//! loop of raw syscalls and atomics, then `_exit`s.

// The words below live in `MAP_SHARED` memory shared by two processes, which the loom shim
// (`subring_planes::sync`) cannot model: use the std atomics directly.
#![allow(clippy::disallowed_types)]

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::mem::size_of;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::ptr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the parent waits for any one reply (or for progress in a spin) before failing.
const WAIT: Duration = Duration::from_secs(5);
/// How long a spinning child waits for the parent's next message before giving up.
pub(crate) const CHILD_WAIT: Duration = Duration::from_secs(30);
/// How long a child gets to exit once told to stop, before it is killed.
const REAP_WITHIN: Duration = Duration::from_secs(2);
/// Time budgets after which a measurement stops early and reports what it has: spinning in
/// [`Placement::Shared`] takes a scheduler tick per handoff, so the spinners get less.
pub(crate) const RT_BUDGET: Duration = Duration::from_secs(20);
const SOCKET_BUDGET: Duration = Duration::from_secs(10);
const SPIN_BUDGET: Duration = Duration::from_secs(3);
/// Child exit codes.
const EXIT_PIN: i32 = 3;
const EXIT_IO: i32 = 4;
const EXIT_ORPHAN: i32 = 5;
const EXIT_PANIC: i32 = 101;
/// Distance between words written by different processes (two lines: adjacent-line prefetch).
const LINE: usize = 128;
/// Value of a shared word that tells the child to exit.
pub(crate) const QUIT: u64 = u64::MAX;

/// Where the parent and the child run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Parent on CPU 0, child on CPU 1: every handoff crosses cores.
    Split,
    /// Both on CPU 0: every handoff needs the scheduler to switch processes.
    Shared,
}

impl Placement {
    /// The `(parent, child)` CPUs of this placement.
    pub fn cpus(self) -> (usize, usize) {
        match self {
            Placement::Split => (0, 1),
            Placement::Shared => (0, 0),
        }
    }
}

/// Round-trip latencies of one measurement.
#[derive(Clone, Debug, Default)]
pub struct Latency {
    /// One sample per round trip, in ns. Fewer than the `n` asked for (but at least one) when
    /// the measurement ran out of its time budget, as spinning in [`Placement::Shared`] does.
    pub samples_ns: Vec<u64>,
}

impl Latency {
    /// Median round trip in ns (NaN without samples).
    pub fn p50(&self) -> f64 {
        self.percentile(0.50)
    }

    /// 99th-percentile round trip in ns (NaN without samples).
    pub fn p99(&self) -> f64 {
        self.percentile(0.99)
    }

    /// Mean round trip in ns (NaN without samples).
    pub fn mean(&self) -> f64 {
        let total: f64 = self.samples_ns.iter().map(|&ns| ns as f64).sum();
        total / self.samples_ns.len() as f64
    }

    /// `points` evenly spaced quantiles from 0 to 1 (the last one the maximum), as
    /// `(quantile, ns)`: the distribution, for a chart.
    pub fn cdf(&self, points: usize) -> Vec<(f64, f64)> {
        let mut sorted = self.samples_ns.clone();
        if sorted.is_empty() || points < 2 {
            return Vec::new();
        }
        sorted.sort_unstable();
        (0..points)
            .map(|i| {
                let q = i as f64 / (points - 1) as f64;
                let at = ((q * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1);
                (q, sorted[at] as f64)
            })
            .collect()
    }

    /// Nearest-rank percentile `q` (0..=1) of a sorted copy.
    fn percentile(&self, q: f64) -> f64 {
        let mut sorted = self.samples_ns.clone();
        if sorted.is_empty() {
            return f64::NAN;
        }
        sorted.sort_unstable();
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1] as f64
    }
}

mod fds;
mod probe;
mod process;
mod rt;
mod throughput;

use fds::*;
pub use probe::{label, probe};
use process::*;
pub use process::{fork_pinned, pin, AffinityGuard, Child};
pub(crate) use process::{run, sample};
pub use rt::{eventfd_epoll_rt, eventfd_rt, futex_rt, pipe_rt, spin_floor_rt, unix_socket_rt};
pub use throughput::{shm_ring_throughput, unix_socket_throughput};
