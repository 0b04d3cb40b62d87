//! The conformance suite: one set of tests, written only against the planes' queue-pair traits
//! ([`Submitter`] and [`Completer`]), that every transport must pass.
//!
//! # What it checks
//! - **ordering** — a stream of requests, pushed in bursts of varying size and submitted per
//!   burst, comes back with every token exactly once and a correct result; transports that
//!   promise in-order completion ([`Transport::IN_ORDER`]) must return them in submission order.
//! - **back-pressure** — staging past the ring's capacity hands the entry back unchanged in
//!   `Rejected { error: Full, entry }`; with the subsystem backed up (nothing reaped), a
//!   submitter meets `Full` within the bound the transport declares
//!   ([`Transport::outstanding_limit`]); after reaping, the rejected entry is accepted, and every
//!   accepted entry completes exactly once (nothing lost, nothing doubled).
//! - **batch submit and reap** — staged entries use ring space but are invisible to the
//!   subsystem; one `submit()` publishes the batch and returns its size, with exactly one
//!   doorbell decision (rung or skipped) for the batch and none for an empty submit; `reap_into`
//!   honours its `max` and gathers the batch.
//! - **wake-ups** — in every notify/wait mode of the transport, a waiter blocked in
//!   `wait(Some(timeout))` wakes when a completion the subsystem held back arrives, and its
//!   interrupt-plane counters say whether it slept in the kernel as the mode promises.
//! - **timeouts** — `wait(Some(short))` with nothing in flight, and with a request in flight
//!   that is held back, returns `QueueError::Timeout` no sooner than asked and within a generous
//!   bound (never a speed); the held-back completion still arrives afterwards, exactly once.
//! - **clean shutdown** — dropping the submitting side with requests completed, in flight,
//!   held back and staged-but-unsubmitted returns promptly, and the subsystem side notices and
//!   ends cleanly, having served everything that was pushed where it can count that.
//! - **push_slice** (transports whose entries are `Clone`) — `push_slice` stages as many as
//!   fit and says how many.
//!
//! # The pairings
//! - `in_process`: a [`pair`](subring::pair) between this thread and a service thread running
//!   `ServiceSide::run` ([`pair::InProcess`]).
//! - `kernel`: the io_uring transport with nop, read, write and timer operations on a file in a
//!   temporary directory ([`uring::Kernel`]).
//! - `shm_echo`: the shm transport's client talking to the echo subsystem served by a
//!   [`Server`](subring::shm::Server) on a thread of this process ([`shm::ShmEcho`]), with
//!   zero-copy payload buffers.
//! - `shm_blk`: the shm client of the block service ([`subring::blk`]) served on a thread of
//!   this process: reads deferred by the service and completed when the kernel completes them
//!   in the client's buffers ([`blk::Blk`]).
//!
//! # Adding a transport
//! Implement [`Transport`] for a fixture type in a new module `tests/conformance/<name>.rs`
//! (the subsystem side and whatever the checks need: how to build a request for a token, how
//! to hold one back, how to check its completion, what the transport's modes and limits are),
//! declare the module below (`#[path = "conformance/<name>.rs"] mod <name>;`), and add one
//! line to the bottom of this file: `conformance_suite!(<name>_suite: crate::<name>::Fixture);`
//! (append `push_slice_partial` if its entries are `Clone`). Every test then runs over it.
//! Tests that only make sense for one transport live in its module, beside its fixture.
//!
//! # Rules the suite keeps
//! Every wait has a timeout, every loop a deadline or a count, every thread is joined on the
//! passing path. Bounds on time are generous upper bounds (or lower bounds that are
//! correctness, such as "a timeout does not fire early"), never speeds: the suite runs in
//! parallel on small machines, in spin modes too.

#[path = "conformance/blk.rs"]
mod blk;
#[path = "conformance/cases/mod.rs"]
mod cases;
#[path = "conformance/pair.rs"]
mod pair;
#[path = "conformance/shm.rs"]
mod shm;
#[path = "conformance/uring.rs"]
mod uring;

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, Instant};

use subring::queue::{Completer, QueueError, Rejected, Submitter};

/// The longest any single wait may take before the suite calls it a hang.
const WAIT: Duration = Duration::from_secs(10);
/// The longest a whole test scenario may take.
const SCENARIO_LIMIT: Duration = Duration::from_secs(60);
/// Ring capacity the suite opens queues with (a power of two).
const CAP: u32 = 16;
/// How long a held-back request is held back in the wake-up tests.
const DELAY: Duration = Duration::from_millis(100);
/// A short wait that must time out.
const SHORT: Duration = Duration::from_millis(50);
/// Generous upper bound for a short wait to time out, or for a drop to return.
const PROMPT: Duration = Duration::from_secs(2);
/// How long to listen for completions that must not exist.
const QUIET: Duration = Duration::from_millis(100);

/// The entry type of a transport's queue.
type Entry<T> = <<T as Transport>::Q as Submitter>::Entry;
/// The completion type of a transport's queue.
type Completion<T> = <<T as Transport>::Q as Completer>::Completion;

/// What a transport provides to run the suite: its queue (the submitting and completing side,
/// one object in every transport so far), its modes, and a fixture that stands for the
/// subsystem side and knows how to build and check requests.
///
/// The fixture is `Self`; [`open`](Transport::open) returns it beside the queue. Tests bind
/// them as `let (mut fx, mut q) = T::open(..)` so that the queue is dropped first.
trait Transport: Sized {
    /// The queue under test.
    type Q: Submitter<Entry: fmt::Debug> + Completer<Completion: fmt::Debug> + Send + 'static;
    /// How the waiting side waits (and, for userspace subsystems, how the doorbell wakes).
    type Mode: Copy + fmt::Debug;
    /// Whether completions of one stream of requests come back in submission order.
    const IN_ORDER: bool;

    /// Every mode the transport supports: the wake-up, timeout, ordering and batch tests run in
    /// each.
    fn modes() -> Vec<Self::Mode>;
    /// The mode the other tests use.
    fn default_mode() -> Self::Mode;
    /// A fresh subsystem and a queue to it, in `mode`, whose submission ring holds `capacity`
    /// entries (a power of two).
    fn open(mode: Self::Mode, capacity: u32) -> (Self, Self::Q);
    /// A request carrying `token`; its completion must come back with it.
    fn request(&mut self, q: &mut Self::Q, token: u64) -> Entry<Self>;
    /// A request carrying `token` whose completion the subsystem holds back for at least
    /// `delay` from this call.
    fn delayed(&mut self, q: &mut Self::Q, token: u64, delay: Duration) -> Entry<Self>;
    /// Checks a completion against the request that was built for its token (result, returned
    /// payload) and returns the token; takes back whatever the completion returns (buffers).
    fn check(&mut self, q: &mut Self::Q, c: Completion<Self>) -> Result<u64, String>;
    /// The most entries a submitter that submits after every push can have accepted, without
    /// reaping anything, before a push meets `Full` (`None`: it never does, the subsystem takes
    /// every submitted entry).
    fn outstanding_limit(capacity: usize) -> Option<usize>;
    /// Whether the doorbell in `mode` never needs a wake-up (it is always skipped).
    fn doorbell_always_skipped(mode: Self::Mode) -> bool;
    /// Whether a waiter in `mode` that waits longer than any spin phase blocks in the kernel
    /// (counted in `NotifyStats::sleeps`); `false`: it never does.
    fn waiter_sleeps(mode: Self::Mode) -> bool;
    /// Requests the subsystem has handled so far, if it can tell.
    fn served(&self) -> Option<u64>;
    /// After the queue was dropped: waits (up to `limit`) for the subsystem side to see it go
    /// and end cleanly.
    fn finish(&mut self, limit: Duration) -> Result<(), String>;
}

/// Which tokens are in flight and in what order they completed; panics on a completion for a
/// token that is not in flight (a duplicate, or one never accepted).
#[derive(Debug, Default)]
struct Ledger {
    open: BTreeSet<u64>,
    order: Vec<u64>,
}

impl Ledger {
    fn accept(&mut self, token: u64) {
        assert!(self.open.insert(token), "token {token} accepted twice");
    }

    fn complete(&mut self, token: u64) {
        assert!(
            self.open.remove(&token),
            "a completion for token {token}, which is not in flight (a duplicate, or never \
             accepted); in flight: {:?}",
            self.open
        );
        self.order.push(token);
    }

    fn in_flight(&self) -> usize {
        self.open.len()
    }
}

/// Reaps what is ready, checks each completion and records it.
fn reap_ready<T: Transport>(fx: &mut T, q: &mut T::Q, ledger: &mut Ledger, what: &str) -> usize {
    let mut out = Vec::new();
    let n = q
        .reap_into(&mut out, 1024)
        .unwrap_or_else(|e| panic!("{what}: reap_into failed: {e}"));
    assert_eq!(
        n,
        out.len(),
        "{what}: reap_into's count matches what it appended"
    );
    for c in out {
        let token = fx
            .check(q, c)
            .unwrap_or_else(|e| panic!("{what}: bad completion: {e}"));
        ledger.complete(token);
    }
    n
}

/// Waits for at least one completion, failing the test on anything but success.
fn wait_ok<T: Transport>(q: &mut T::Q, what: &str) {
    if let Err(e) = q.wait(Some(WAIT)) {
        panic!("{what}: wait for a completion failed: {e}");
    }
}

/// Waits and reaps until nothing accepted is in flight.
fn drain<T: Transport>(fx: &mut T, q: &mut T::Q, ledger: &mut Ledger, what: &str) {
    let deadline = Instant::now() + SCENARIO_LIMIT;
    while ledger.in_flight() > 0 {
        assert!(
            Instant::now() < deadline,
            "{what}: {} completions missing after {SCENARIO_LIMIT:?}: {:?}",
            ledger.in_flight(),
            ledger.open
        );
        wait_ok::<T>(q, what);
        reap_ready(fx, q, ledger, what);
    }
}

/// Nothing more completes: a wait times out and nothing is ready.
fn assert_quiet<T: Transport>(q: &mut T::Q, what: &str) {
    match q.wait(Some(QUIET)) {
        Err(QueueError::Timeout(_)) => {}
        Ok(()) => panic!(
            "{what}: a completion arrived although none was owed: {:?}",
            q.reap()
        ),
        Err(e) => panic!("{what}: waiting on an idle queue failed: {e}"),
    }
    assert!(
        matches!(q.reap(), Ok(None)),
        "{what}: nothing is ready on an idle queue"
    );
}

/// Pushes an entry that must be accepted.
fn push_ok<T: Transport>(q: &mut T::Q, entry: Entry<T>, what: &str) {
    if let Err(r) = q.push(entry) {
        panic!("{what}: push failed: {} (entry {:?})", r.error, r.entry);
    }
}

/// Pushes an entry that must be rejected as `Full`, and returns it after checking it came back
/// unchanged.
fn push_full<T: Transport>(q: &mut T::Q, entry: Entry<T>, what: &str) -> Entry<T> {
    let before = format!("{entry:?}");
    match q.push(entry) {
        Ok(()) => panic!("{what}: push into a full ring was accepted"),
        Err(Rejected {
            error: QueueError::Full,
            entry,
        }) => {
            assert_eq!(
                format!("{entry:?}"),
                before,
                "{what}: the rejected entry comes back unchanged"
            );
            entry
        }
        Err(r) => panic!("{what}: expected Full, got {}", r.error),
    }
}

/// Drops the queue on another thread and fails if that does not return within `limit`.
fn drop_within<Q: Send + 'static>(q: Q, limit: Duration, what: &str) -> Duration {
    let start = Instant::now();
    let dropper = std::thread::spawn(move || drop(q));
    while !dropper.is_finished() {
        assert!(
            start.elapsed() < limit,
            "{what}: dropping the queue did not return within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    dropper
        .join()
        .unwrap_or_else(|_| panic!("{what}: dropping the queue panicked"));
    start.elapsed()
}

/// Instantiates the suite for a transport: `conformance_suite!(module: Fixture, extra...)`,
/// where each extra names one of the generic tests with extra bounds (`push_slice_partial`).
macro_rules! conformance_suite {
    ($module:ident: $transport:ty $(, $extra:ident)* $(,)?) => {
        mod $module {
            #[test]
            fn ordering() {
                crate::cases::ordering::<$transport>();
            }
            #[test]
            fn back_pressure() {
                crate::cases::back_pressure::<$transport>();
            }
            #[test]
            fn batch_submit_and_reap() {
                crate::cases::batch_submit_and_reap::<$transport>();
            }
            #[test]
            fn wake_ups() {
                crate::cases::wake_ups::<$transport>();
            }
            #[test]
            fn timeouts() {
                crate::cases::timeouts::<$transport>();
            }
            #[test]
            fn wait_space() {
                crate::cases::wait_space::<$transport>();
            }
            #[test]
            fn clean_shutdown() {
                crate::cases::clean_shutdown::<$transport>();
            }
            $(
                #[test]
                fn $extra() {
                    crate::cases::$extra::<$transport>();
                }
            )*
        }
    };
}

conformance_suite!(in_process: crate::pair::InProcess, push_slice_partial);
conformance_suite!(kernel: crate::uring::Kernel);
conformance_suite!(shm_echo: crate::shm::ShmEcho, push_slice_partial);
conformance_suite!(shm_blk: crate::blk::Blk, push_slice_partial);
