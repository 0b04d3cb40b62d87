//! The kernel's ring protocols as the kernel and subring run them, modelled: io_uring's SQ under
//! SQPOLL with `IORING_SQ_NEED_WAKEUP`, and its CQ with overflow. These are not subring's code
//! (the kernel side is C, and subring's side goes through the `io-uring` crate, whose atomics
//! loom cannot replace): each side is rewritten here operation for operation, orderings and
//! barriers included, with a pointer to the code it follows. A lost wake-up leaves a side
//! blocked in a modelled wait queue or eventfd, which loom reports as a deadlock.

use super::*;
use loom::sync::atomic::{fence, AtomicU32};
use loom::sync::{Condvar, Mutex};
use std::collections::VecDeque;

/// A kernel wait queue (`prepare_to_wait` / `schedule` / `wake_up`), or an eventfd that a
/// blocking `read` drains: a wake-up after [`prepare`](Self::prepare) is never lost, because
/// the waiter is queued before it checks its condition.
pub(crate) struct WaitQueue {
    wakes: Mutex<u32>,
    changed: Condvar,
}

impl WaitQueue {
    pub(crate) fn new() -> Self {
        WaitQueue {
            wakes: Mutex::new(0),
            changed: Condvar::new(),
        }
    }

    /// `prepare_to_wait`: from here on a `wake_up` ends the next `schedule`.
    pub(crate) fn prepare(&self) -> u32 {
        *self.wakes.lock().unwrap()
    }

    /// `schedule()` after `prepare`: returns once a `wake_up` came after it.
    pub(crate) fn schedule(&self, prepared: u32) {
        let mut wakes = self.wakes.lock().unwrap();
        while *wakes == prepared {
            wakes = self.changed.wait(wakes).unwrap();
        }
    }

    /// `wake_up` (or an eventfd write).
    pub(crate) fn wake_up(&self) {
        *self.wakes.lock().unwrap() += 1;
        self.changed.notify_all();
    }
}

/// Reads the entry at `index` of a two-entry ring.
fn read_slot(slots: &[UnsafeCell<u32>; 2], index: u32) -> u32 {
    // SAFETY: a plain read of an initialised u32 in a loom cell; whether it is ordered after
    // its write is what loom checks (a race is reported as a causality violation).
    slots[(index & 1) as usize].with(|p| unsafe { *p })
}

/// Writes the entry at `index` of a two-entry ring.
fn write_slot(slots: &[UnsafeCell<u32>; 2], index: u32, value: u32) {
    // SAFETY: as in `read_slot`: loom checks the write against every other access.
    slots[(index & 1) as usize].with_mut(|p| unsafe { *p = value });
}

const IORING_SQ_NEED_WAKEUP: u32 = 1;
const IORING_SQ_CQ_OVERFLOW: u32 = 2;

/// The shared part of an io_uring: the SQ's and CQ's indices, the SQ flags word, two entries
/// each (the SQ's slots stand for the SQ array and SQEs; the CQ's for the CQEs).
struct Rings {
    sq_tail: AtomicU32,
    sq_head: AtomicU32,
    sq_flags: AtomicU32,
    sqes: [UnsafeCell<u32>; 2],
    cq_tail: AtomicU32,
    cq_head: AtomicU32,
    cqes: [UnsafeCell<u32>; 2],
}

impl Rings {
    fn new() -> Self {
        Rings {
            sq_tail: AtomicU32::new(0),
            sq_head: AtomicU32::new(0),
            sq_flags: AtomicU32::new(0),
            sqes: [UnsafeCell::new(0), UnsafeCell::new(0)],
            cq_tail: AtomicU32::new(0),
            cq_head: AtomicU32::new(0),
            cqes: [UnsafeCell::new(0), UnsafeCell::new(0)],
        }
    }
}

/// What a negative control removes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SqpollBreakage {
    /// The SQPOLL thread's `smp_mb__after_atomic()` between setting `IORING_SQ_NEED_WAKEUP`
    /// and re-reading the SQ tail (the kernel bug fixed by "io_uring: fix race condition when
    /// sq threads goes sleeping").
    KernelBarrier,
    /// The application's full barrier between publishing the SQ tail and reading the flags
    /// (liburing's `io_uring_smp_mb()` in `sq_ring_needs_enter`, the `io-uring` crate's
    /// `SeqCst` fence in `need_wakeup`, tokio-rs/io-uring#197).
    UserFence,
}

/// Two submissions, one at a time, to an SQPOLL thread that goes to sleep whenever it finds the
/// SQ empty (its idle time is zero here: the case with the most interleavings).
///
/// The kernel side follows `io_sq_thread` (io_uring/sqpoll.c): `prepare_to_wait`, then for the
/// ring `atomic_or(IORING_SQ_NEED_WAKEUP, &sq_flags)`, `smp_mb__after_atomic()`, and
/// `io_sqring_entries` (an acquire load of the SQ tail); `schedule()` only if that found
/// nothing; afterwards `atomic_andnot` of the flag. It consumes entries as `io_submit_sqes`
/// and `io_commit_sqring` do (acquire tail, read the SQEs, release head).
///
/// The application side follows subring-uring's doorbell (`Doorbell for Uring`,
/// transports/uring/src/submit.rs) through the `io-uring` crate: write the SQE, release-store
/// the SQ tail (`SubmissionQueue::sync`), then `need_wakeup()` (a `SeqCst` fence and a relaxed
/// load of the flags), and `io_uring_enter(IORING_ENTER_SQ_WAKEUP)` (the kernel's
/// `wake_up(&sqd->wait)`) only if the flag is set.
fn sqpoll(broken: Option<SqpollBreakage>) {
    model(move || {
        let rings = Arc::new(Rings::new());
        let sqd_wait = Arc::new(WaitQueue::new());
        let kernel = {
            let (rings, sqd_wait) = (rings.clone(), sqd_wait.clone());
            thread::spawn(move || {
                let mut head = 0u32;
                let mut submitted = Vec::new();
                while submitted.len() < 2 {
                    let tail = rings.sq_tail.load(Ordering::Acquire);
                    if tail != head {
                        while head != tail {
                            submitted.push(read_slot(&rings.sqes, head));
                            head = head.wrapping_add(1);
                        }
                        rings.sq_head.store(head, Ordering::Release);
                        continue;
                    }
                    let prepared = sqd_wait.prepare();
                    rings
                        .sq_flags
                        .fetch_or(IORING_SQ_NEED_WAKEUP, Ordering::Relaxed);
                    if broken != Some(SqpollBreakage::KernelBarrier) {
                        fence(Ordering::SeqCst);
                    }
                    if rings.sq_tail.load(Ordering::Acquire) == head {
                        sqd_wait.schedule(prepared);
                    }
                    rings
                        .sq_flags
                        .fetch_and(!IORING_SQ_NEED_WAKEUP, Ordering::Relaxed);
                }
                submitted
            })
        };
        for (tail, value) in [(0u32, 7u32), (1, 8)] {
            write_slot(&rings.sqes, tail, value);
            rings.sq_tail.store(tail + 1, Ordering::Release);
            if broken != Some(SqpollBreakage::UserFence) {
                fence(Ordering::SeqCst);
            }
            if rings.sq_flags.load(Ordering::Relaxed) & IORING_SQ_NEED_WAKEUP != 0 {
                sqd_wait.wake_up();
            }
        }
        assert_eq!(kernel.join().unwrap(), [7, 8]);
    });
}

#[test]
fn io_uring_sqpoll_sleeps_and_need_wakeup_loses_no_submission() {
    sqpoll(None);
}

/// Negative control, the historical kernel bug: without the barrier after setting the flag,
/// the thread can read a stale tail while the application reads the flag still clear (store
/// buffering): the thread sleeps on a submission nobody will wake it for.
#[test]
#[should_panic(expected = "deadlock")]
fn negative_control_sqpoll_without_the_kernel_barrier_is_caught() {
    sqpoll(Some(SqpollBreakage::KernelBarrier));
}

/// Negative control, the application's half of the same race: without the fence between
/// publishing the tail and reading the flag.
#[test]
#[should_panic(expected = "deadlock")]
fn negative_control_sqpoll_without_the_user_fence_is_caught() {
    sqpoll(Some(SqpollBreakage::UserFence));
}

/// The kernel's side of the CQ, under its completion lock: the cached tail and the overflow
/// list (kernel memory the application cannot see).
struct KernelCq {
    cached_tail: u32,
    overflow: VecDeque<u32>,
}

/// Posts one completion as `io_fill_cqe_req` does: into the CQ if it has room and nothing has
/// overflowed before it, otherwise onto the overflow list (`io_cqring_event_overflow`, which
/// sets `IORING_SQ_CQ_OVERFLOW` when the list was empty); then the completion eventfd
/// (`io_eventfd_signal`, also for an overflowed completion).
fn post_cqe(rings: &Rings, cq: &Mutex<KernelCq>, eventfd: &WaitQueue, value: u32) {
    {
        let mut cq = cq.lock().unwrap();
        let head = rings.cq_head.load(Ordering::Acquire);
        if cq.overflow.is_empty() && cq.cached_tail.wrapping_sub(head) < 2 {
            let at = cq.cached_tail;
            write_slot(&rings.cqes, at, value);
            cq.cached_tail = at.wrapping_add(1);
            // io_commit_cqring: smp_store_release of the tail.
            rings.cq_tail.store(cq.cached_tail, Ordering::Release);
        } else {
            if cq.overflow.is_empty() {
                rings
                    .sq_flags
                    .fetch_or(IORING_SQ_CQ_OVERFLOW, Ordering::Relaxed);
            }
            cq.overflow.push_back(value);
        }
    }
    eventfd.wake_up();
}

/// `io_uring_enter(IORING_ENTER_GETEVENTS)`'s flush (`__io_cqring_overflow_flush`): moves
/// overflowed completions into the CQ while it has room, publishes the tail, and clears the
/// flag once the list is empty.
fn flush_overflow(rings: &Rings, cq: &Mutex<KernelCq>) {
    let mut cq = cq.lock().unwrap();
    let head = rings.cq_head.load(Ordering::Acquire);
    while cq.cached_tail.wrapping_sub(head) < 2 {
        let Some(value) = cq.overflow.pop_front() else {
            break;
        };
        let at = cq.cached_tail;
        write_slot(&rings.cqes, at, value);
        cq.cached_tail = at.wrapping_add(1);
    }
    rings.cq_tail.store(cq.cached_tail, Ordering::Release);
    if cq.overflow.is_empty() {
        rings
            .sq_flags
            .fetch_and(!IORING_SQ_CQ_OVERFLOW, Ordering::Relaxed);
    }
}

/// Three completions posted through a CQ of two entries, so that one may overflow, while the
/// application reaps as subring-uring does in its eventfd wait mode (transports/uring/src:
/// `reap_into`, `flush_if_needed`): drain the CQ (acquire tail, read the CQEs, release head);
/// if it was empty and the SQ flags say `IORING_SQ_CQ_OVERFLOW`, enter the kernel to flush;
/// otherwise block on the completion eventfd. `flushes` false is the negative control.
fn cq_overflow(flushes: bool) {
    model_bounded(CQ_OVERFLOW_PREEMPTIONS, move || {
        let rings = Arc::new(Rings::new());
        let cq = Arc::new(Mutex::new(KernelCq {
            cached_tail: 0,
            overflow: VecDeque::new(),
        }));
        let eventfd = Arc::new(WaitQueue::new());
        let kernel = {
            let (rings, cq, eventfd) = (rings.clone(), cq.clone(), eventfd.clone());
            thread::spawn(move || {
                for value in [1, 2, 3] {
                    post_cqe(&rings, &cq, &eventfd, value);
                }
            })
        };
        let mut head = 0u32;
        let mut reaped = Vec::new();
        let mut prepared = eventfd.prepare();
        while reaped.len() < 3 {
            let tail = rings.cq_tail.load(Ordering::Acquire);
            if tail != head {
                while head != tail {
                    reaped.push(read_slot(&rings.cqes, head));
                    head = head.wrapping_add(1);
                }
                rings.cq_head.store(head, Ordering::Release);
                continue;
            }
            if flushes && rings.sq_flags.load(Ordering::Acquire) & IORING_SQ_CQ_OVERFLOW != 0 {
                flush_overflow(&rings, &cq);
                continue;
            }
            // A blocking read of the eventfd: returns once it has been written since the
            // last read.
            eventfd.schedule(prepared);
            prepared = eventfd.prepare();
        }
        kernel.join().unwrap();
        assert_eq!(reaped, [1, 2, 3]);
    });
}

/// Preemption bound of the CQ overflow models (two threads, a lock and a condition variable
/// on each post): about 15 s, where CI's bound of 10 takes six minutes.
const CQ_OVERFLOW_PREEMPTIONS: usize = 5;

#[test]
fn io_uring_cq_overflow_is_flushed_and_nothing_is_lost() {
    cq_overflow(true);
}

/// Negative control, the `io-uring` crate's historical bug: a reaper that never enters the
/// kernel when `IORING_SQ_CQ_OVERFLOW` is set (its `submit` skipped the system call under
/// SQPOLL): the overflowed completion stays in the kernel's list, and the reaper waits for an
/// eventfd write that already came.
#[test]
#[should_panic(expected = "deadlock")]
fn negative_control_cq_overflow_never_flushed_is_caught() {
    cq_overflow(false);
}
