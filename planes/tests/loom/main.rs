//! loom models of every atomic protocol in the planes, and negative controls that show the
//! models catch a broken variant.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p subring-planes --release --test loom`.
//!
//! What loom cannot see: it models SeqCst accesses as AcqRel (SeqCst *fences* are modelled), it
//! does not explore load buffering, and timeouts are not modelled (every wait here is
//! unbounded, so a lost wake-up shows up as a deadlock). Shared memory between processes is
//! modelled as shared memory between loom threads: the protocol is the same.
#![cfg(loom)]

mod bufring;
mod creation;
mod event_idx;
mod eventfd;
mod guide;
mod kernel;
mod polling;
mod pool;
mod queue_pair;
mod ring;
mod sets;
mod sleep;
mod virtio;
mod xsk;

/// subring-uring's provided-buffer ring producer, the very file, over loom's memory.
#[path = "../../../transports/uring/src/bufring/tail.rs"]
#[allow(dead_code)]
mod pbuf_tail;

/// subring-xdp's side of the XSK ring protocol, the very file, over loom's atomics.
#[path = "../../../transports/xdp/src/ring/protocol.rs"]
#[allow(dead_code)]
mod xsk_protocol;

use std::sync::Arc;

use loom::cell::UnsafeCell;
use loom::sync::atomic::Ordering;
use loom::thread;
use subring_planes::data::{
    BufferPool, Indexed, PoolError, Publication, Region, RegionOptions, Ring, RingError,
    RingLayout, Stamped,
};
use subring_planes::interrupt::{
    breakage, Breakage, EventFdSignal, FutexSignal, Notifier, NotifyMode, Signal, SleepNotifier,
    SleepSet, Sound, SpinPolicy, WaitAny, WakeRef, WakeWord, Woke,
};
use subring_planes::pair::{
    self, in_process, AppSide, PairConfig, PairLayout, PairSignals, ServiceSide,
};
use subring_planes::queue::{Completer, QueueError, SetupError, Submitter};

fn model(f: impl Fn() + Send + Sync + 'static) {
    model_bounded(usize::MAX, f);
}

/// A model too large to explore at CI's bound (three threads whose waits spin, or a queue
/// pair's two sides taking many steps each): explored with at most `max` preemptions (and no
/// more than `LOOM_MAX_PREEMPTIONS`), which keeps it to about a minute. `SUBRING_LOOM_DEEP=1`
/// lifts the cap (`LOOM_MAX_PREEMPTIONS` alone bounds it then): the opt-in deep check.
fn model_bounded(max: usize, f: impl Fn() + Send + Sync + 'static) {
    let mut builder = loom::model::Builder::new();
    let max = match std::env::var_os("SUBRING_LOOM_DEEP") {
        Some(_) => usize::MAX,
        None => max,
    };
    builder.preemption_bound = Some(builder.preemption_bound.unwrap_or(3).min(max));
    builder.check(f);
}

/// Pushes `values` in order, yielding while the ring is full.
fn push_all<P: Publication>(
    tx: &mut subring_planes::data::Producer<u32, P>,
    values: impl IntoIterator<Item = u32>,
) {
    for v in values {
        let mut v = v;
        loop {
            match tx.push(v) {
                Ok(()) => break,
                Err(e) => {
                    v = e.into_inner();
                    thread::yield_now();
                }
            }
        }
    }
}
