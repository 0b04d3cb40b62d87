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

/// A stream of requests in bursts of 1..=7, submitted per burst, never more in flight than the
/// ring holds: every token comes back exactly once with the right result, and in order where
/// the transport promises it.
fn ordering<T: Transport>() {
    const N: u64 = 200;
    let cap = CAP as usize;
    for mode in T::modes() {
        let what = format!("ordering in {mode:?}");
        let (mut fx, mut q) = T::open(mode, CAP);
        let mut ledger = Ledger::default();
        let deadline = Instant::now() + SCENARIO_LIMIT;
        let (mut next, mut burst) = (0u64, 0u64);
        while next < N || ledger.in_flight() > 0 {
            assert!(
                Instant::now() < deadline,
                "{what}: took over {SCENARIO_LIMIT:?}"
            );
            burst = burst % 7 + 1;
            let mut pushed = 0;
            while next < N && pushed < burst && ledger.in_flight() < cap {
                let entry = fx.request(&mut q, next);
                push_ok::<T>(&mut q, entry, &what);
                ledger.accept(next);
                next += 1;
                pushed += 1;
            }
            if pushed > 0 {
                let n = q.submit().unwrap_or_else(|e| panic!("{what}: submit: {e}"));
                assert_eq!(n as u64, pushed, "{what}: submit publishes the burst");
            }
            if ledger.in_flight() > 0 {
                wait_ok::<T>(&mut q, &what);
                reap_ready(&mut fx, &mut q, &mut ledger, &what);
            }
        }
        assert_eq!(ledger.order.len() as u64, N, "{what}: every token once");
        if T::IN_ORDER {
            assert_eq!(
                ledger.order,
                (0..N).collect::<Vec<_>>(),
                "{what}: completions in submission order"
            );
        }
        assert_quiet::<T>(&mut q, &what);
    }
}

/// A full ring hands entries back; nothing is lost; pushing works again after reaping.
fn back_pressure<T: Transport>() {
    let cap = CAP as usize;
    let what = "back-pressure";
    let (mut fx, mut q) = T::open(T::default_mode(), CAP);
    let mut ledger = Ledger::default();
    let deadline = Instant::now() + SCENARIO_LIMIT;

    // Part 1: staged entries fill the ring; the subsystem has seen none of them.
    assert_eq!(
        q.space().unwrap(),
        cap,
        "{what}: a fresh queue has its whole capacity free"
    );
    for token in 0..cap as u64 {
        let entry = fx.request(&mut q, token);
        push_ok::<T>(&mut q, entry, what);
        ledger.accept(token);
    }
    assert_eq!(q.space().unwrap(), 0, "{what}: staged entries use the ring");
    let extra = cap as u64;
    let entry = fx.request(&mut q, extra);
    let mut held = Some(push_full::<T>(&mut q, entry, what));
    assert_eq!(
        q.submit().unwrap(),
        cap,
        "{what}: submit publishes the full ring"
    );
    // After reaping, the rejected entry goes in.
    while let Some(entry) = held.take() {
        assert!(Instant::now() < deadline, "{what}: the ring never drained");
        match q.push(entry) {
            Ok(()) => ledger.accept(extra),
            Err(Rejected {
                error: QueueError::Full,
                entry,
            }) => {
                held = Some(entry);
                wait_ok::<T>(&mut q, what);
                reap_ready(&mut fx, &mut q, &mut ledger, what);
            }
            Err(r) => panic!("{what}: re-push failed: {}", r.error),
        }
    }
    assert_eq!(
        q.submit().unwrap(),
        1,
        "{what}: the re-pushed entry is submitted"
    );
    drain(&mut fx, &mut q, &mut ledger, what);

    // Part 2: submit after every push and reap nothing: the subsystem backs up (its completion
    // ring fills, it stops taking requests, the submission ring fills) within the transport's
    // declared bound, or takes everything if it declares none.
    let base = 1_000u64;
    let attempts = 4 * cap;
    let mut accepted = 0;
    let mut held = None;
    while accepted < attempts {
        let token = base + accepted as u64;
        let entry = fx.request(&mut q, token);
        let before = format!("{entry:?}");
        match q.push(entry) {
            Ok(()) => {
                ledger.accept(token);
                accepted += 1;
                assert_eq!(q.submit().unwrap(), 1, "{what}: submit after each push");
            }
            Err(Rejected {
                error: QueueError::Full,
                entry,
            }) => {
                assert_eq!(
                    format!("{entry:?}"),
                    before,
                    "{what}: handed back unchanged"
                );
                held = Some((token, entry));
                break;
            }
            Err(r) => panic!("{what}: push failed with {} after {accepted}", r.error),
        }
    }
    match (T::outstanding_limit(cap), &held) {
        (Some(max), Some(_)) => assert!(
            (cap..=max).contains(&accepted),
            "{what}: the ring filled after {accepted} unreaped entries, expected {cap}..={max}"
        ),
        (Some(max), None) => {
            panic!("{what}: {accepted} entries accepted without reaping and no Full (bound {max})")
        }
        (None, Some(_)) => panic!(
            "{what}: Full after {accepted} submitted entries, from a transport that declares \
             that its subsystem takes every submitted entry"
        ),
        (None, None) => {}
    }
    // Reap, and the held entry goes in.
    let repushed = usize::from(held.is_some());
    if let Some((token, entry)) = held {
        let mut held = Some(entry);
        while let Some(entry) = held.take() {
            assert!(Instant::now() < deadline, "{what}: the ring never drained");
            match q.push(entry) {
                Ok(()) => {
                    ledger.accept(token);
                    assert_eq!(q.submit().unwrap(), 1);
                }
                Err(Rejected {
                    error: QueueError::Full,
                    entry,
                }) => {
                    held = Some(entry);
                    wait_ok::<T>(&mut q, what);
                    reap_ready(&mut fx, &mut q, &mut ledger, what);
                }
                Err(r) => panic!("{what}: re-push failed: {}", r.error),
            }
        }
    }
    drain(&mut fx, &mut q, &mut ledger, what);
    let completed = ledger.order.len();
    let expected = cap + 1 + accepted + repushed;
    assert_eq!(
        completed, expected,
        "{what}: every accepted entry completed once"
    );
    assert_quiet::<T>(&mut q, what);
}

/// Push N, one submit returns N with one doorbell decision, `reap_into` gathers them.
fn batch_submit_and_reap<T: Transport>() {
    let cap = CAP as usize;
    for mode in T::modes() {
        let what = format!("batch in {mode:?}");
        let (mut fx, mut q) = T::open(mode, CAP);
        let mut ledger = Ledger::default();
        let mut token = 0u64;
        for round in 0..3 {
            let n = cap / 2 + round * 3;
            assert_eq!(
                q.space().unwrap(),
                cap,
                "{what}: the ring is empty between rounds"
            );
            let db0 = q.doorbell_stats();
            let served0 = fx.served();
            for _ in 0..n {
                let entry = fx.request(&mut q, token);
                push_ok::<T>(&mut q, entry, &what);
                ledger.accept(token);
                token += 1;
            }
            assert_eq!(
                q.space().unwrap(),
                cap - n,
                "{what}: staged entries use space"
            );
            assert_eq!(q.doorbell_stats(), db0, "{what}: pushing rings no doorbell");
            // Staged entries are invisible to the subsystem until submitted.
            std::thread::sleep(Duration::from_millis(20));
            assert!(
                matches!(q.reap(), Ok(None)),
                "{what}: nothing completes before submit"
            );
            assert_eq!(
                fx.served(),
                served0,
                "{what}: the subsystem saw nothing staged"
            );

            assert_eq!(
                q.submit().unwrap(),
                n,
                "{what}: one submit publishes the batch"
            );
            let db1 = q.doorbell_stats();
            assert_eq!(
                (db1.rung + db1.skipped) - (db0.rung + db0.skipped),
                1,
                "{what}: one doorbell decision (rung or skipped) for the whole batch \
                 ({db0:?} -> {db1:?})"
            );
            if T::doorbell_always_skipped(mode) {
                assert_eq!(db1.rung, db0.rung, "{what}: this mode never rings");
            }
            assert_eq!(
                q.submit().unwrap(),
                0,
                "{what}: an empty submit publishes nothing"
            );
            assert_eq!(
                q.doorbell_stats(),
                db1,
                "{what}: an empty submit rings nothing"
            );

            // reap_into honours max, then gathers the rest.
            wait_ok::<T>(&mut q, &what);
            let mut out = Vec::new();
            assert_eq!(
                q.reap_into(&mut out, 1).unwrap(),
                1,
                "{what}: after a successful wait, reap_into(max 1) takes exactly one"
            );
            assert_eq!(out.len(), 1);
            let deadline = Instant::now() + SCENARIO_LIMIT;
            while out.len() < n {
                assert!(Instant::now() < deadline, "{what}: batch never completed");
                let want = n - out.len();
                if q.reap_into(&mut out, want).unwrap() == 0 {
                    wait_ok::<T>(&mut q, &what);
                }
            }
            assert_eq!(out.len(), n, "{what}: reap_into never exceeds max");
            for c in out {
                let t = fx
                    .check(&mut q, c)
                    .unwrap_or_else(|e| panic!("{what}: bad completion: {e}"));
                ledger.complete(t);
            }
            assert_eq!(ledger.in_flight(), 0, "{what}: the whole batch came back");
        }
        assert_quiet::<T>(&mut q, &what);
    }
}

/// In every mode, a waiter blocked in `wait(Some(..))` wakes when a held-back completion
/// arrives.
fn wake_ups<T: Transport>() {
    for mode in T::modes() {
        let what = format!("wake-up in {mode:?}");
        let (mut fx, mut q) = T::open(mode, CAP);
        let mut ledger = Ledger::default();
        for token in 0..2u64 {
            let s0 = q.notify_stats();
            let entry = fx.delayed(&mut q, token, DELAY);
            push_ok::<T>(&mut q, entry, &what);
            ledger.accept(token);
            assert_eq!(q.submit().unwrap(), 1);
            let start = Instant::now();
            if let Err(e) = q.wait(Some(WAIT)) {
                panic!("{what}: the waiter was not woken by the completion: {e}");
            }
            let waited = start.elapsed();
            assert!(
                waited >= DELAY / 2,
                "{what}: wait returned after {waited:?}, before the completion could exist"
            );
            let c = q
                .reap()
                .unwrap()
                .unwrap_or_else(|| panic!("{what}: wait returned Ok but nothing is ready"));
            let t = fx
                .check(&mut q, c)
                .unwrap_or_else(|e| panic!("{what}: bad completion: {e}"));
            ledger.complete(t);
            let s1 = q.notify_stats();
            assert!(s1.waits > s0.waits, "{what}: the wait was counted");
            if T::waiter_sleeps(mode) {
                assert!(
                    s1.sleeps > s0.sleeps,
                    "{what}: a {waited:?} wait should block in the kernel ({s0:?} -> {s1:?})"
                );
            } else {
                assert_eq!(s1.sleeps, s0.sleeps, "{what}: this mode never sleeps");
            }
        }
        assert_quiet::<T>(&mut q, &what);
    }
}

/// In every mode, short waits time out no sooner than asked and well within a bound, with
/// nothing in flight and with a held-back request in flight; the queue works afterwards.
fn timeouts<T: Transport>() {
    for mode in T::modes() {
        let what = format!("timeouts in {mode:?}");
        let (mut fx, mut q) = T::open(mode, CAP);
        let mut ledger = Ledger::default();

        let s0 = q.notify_stats();
        let start = Instant::now();
        let r = q.wait(Some(SHORT));
        let took = start.elapsed();
        assert!(
            matches!(r, Err(QueueError::Timeout(_))),
            "{what}: an idle wait returned {r:?} instead of timing out"
        );
        assert!(
            took + Duration::from_millis(1) >= SHORT,
            "{what}: timed out after {took:?}, sooner than {SHORT:?}"
        );
        assert!(took < PROMPT, "{what}: a {SHORT:?} wait took {took:?}");
        let s1 = q.notify_stats();
        assert!(s1.timeouts > s0.timeouts, "{what}: the timeout was counted");

        // In flight but held back: the wait times out, the completion still comes.
        let entry = fx.delayed(&mut q, 1, 4 * DELAY);
        push_ok::<T>(&mut q, entry, &what);
        ledger.accept(1);
        assert_eq!(q.submit().unwrap(), 1);
        let start = Instant::now();
        let r = q.wait(Some(Duration::from_millis(20)));
        let took = start.elapsed();
        assert!(
            matches!(r, Err(QueueError::Timeout(_))),
            "{what}: a wait shorter than the hold returned {r:?}"
        );
        assert!(took < PROMPT, "{what}: a 20 ms wait took {took:?}");
        drain(&mut fx, &mut q, &mut ledger, &what);

        // And the queue still works.
        let entry = fx.request(&mut q, 2);
        push_ok::<T>(&mut q, entry, &what);
        ledger.accept(2);
        assert_eq!(q.submit().unwrap(), 1);
        drain(&mut fx, &mut q, &mut ledger, &what);
        assert_quiet::<T>(&mut q, &what);
    }
}

/// Dropping the submitting side with work completed, in flight, held back and staged returns
/// promptly, and the subsystem side ends cleanly having served what was pushed.
fn clean_shutdown<T: Transport>() {
    let cap = CAP as usize;
    let what = "shutdown";
    let (mut fx, mut q) = T::open(T::default_mode(), CAP);
    let mut ledger = Ledger::default();
    // Some completed round trips first.
    for token in 0..4 {
        let entry = fx.request(&mut q, token);
        push_ok::<T>(&mut q, entry, what);
        ledger.accept(token);
    }
    q.submit().unwrap();
    drain(&mut fx, &mut q, &mut ledger, what);
    // Then, at the drop: submitted requests, one held back, and staged ones never submitted.
    let mut pushed = 4u64;
    for token in 10..10 + cap as u64 / 2 {
        let entry = fx.request(&mut q, token);
        push_ok::<T>(&mut q, entry, what);
        pushed += 1;
    }
    let entry = fx.delayed(&mut q, 100, DELAY);
    push_ok::<T>(&mut q, entry, what);
    pushed += 1;
    q.submit().unwrap();
    for token in 200..203 {
        let entry = fx.request(&mut q, token);
        push_ok::<T>(&mut q, entry, what);
        pushed += 1;
    }
    drop_within(q, PROMPT + DELAY, what);
    fx.finish(WAIT)
        .unwrap_or_else(|e| panic!("{what}: the subsystem did not end cleanly: {e}"));
    if let Some(served) = fx.served() {
        assert_eq!(
            served, pushed,
            "{what}: the subsystem served everything pushed before the drop (staged included)"
        );
    }
}

/// `push_slice` stages as many entries as fit and says how many (transports with `Clone`
/// entries only: the trait requires it).
fn push_slice_partial<T: Transport>()
where
    Entry<T>: Clone,
{
    let cap = CAP as usize;
    let what = "push_slice";
    let (mut fx, mut q) = T::open(T::default_mode(), CAP);
    let mut ledger = Ledger::default();
    let entries: Vec<_> = (0..2 * cap as u64).map(|t| fx.request(&mut q, t)).collect();
    let n = q.push_slice(&entries).unwrap();
    assert_eq!(n, cap, "{what}: an empty ring takes exactly its capacity");
    assert_eq!(
        q.push_slice(&entries[n..]).unwrap(),
        0,
        "{what}: a full ring takes none"
    );
    (0..n as u64).for_each(|t| ledger.accept(t));
    assert_eq!(q.submit().unwrap(), n);
    let mut done = n;
    let deadline = Instant::now() + SCENARIO_LIMIT;
    while done < entries.len() {
        assert!(Instant::now() < deadline, "{what}: the ring never drained");
        wait_ok::<T>(&mut q, what);
        reap_ready(&mut fx, &mut q, &mut ledger, what);
        let took = q.push_slice(&entries[done..]).unwrap();
        (done as u64..(done + took) as u64).for_each(|t| ledger.accept(t));
        done += took;
        assert_eq!(q.submit().unwrap(), took);
    }
    drain(&mut fx, &mut q, &mut ledger, what);
    assert_eq!(
        ledger.order.len(),
        entries.len(),
        "{what}: each entry completed once"
    );
    assert_quiet::<T>(&mut q, what);
}

/// Instantiates the suite for a transport: `conformance_suite!(module: Fixture, extra...)`,
/// where each extra names one of the generic tests with extra bounds (`push_slice_partial`).
macro_rules! conformance_suite {
    ($module:ident: $transport:ty $(, $extra:ident)* $(,)?) => {
        mod $module {
            #[test]
            fn ordering() {
                crate::ordering::<$transport>();
            }
            #[test]
            fn back_pressure() {
                crate::back_pressure::<$transport>();
            }
            #[test]
            fn batch_submit_and_reap() {
                crate::batch_submit_and_reap::<$transport>();
            }
            #[test]
            fn wake_ups() {
                crate::wake_ups::<$transport>();
            }
            #[test]
            fn timeouts() {
                crate::timeouts::<$transport>();
            }
            #[test]
            fn clean_shutdown() {
                crate::clean_shutdown::<$transport>();
            }
            $(
                #[test]
                fn $extra() {
                    crate::$extra::<$transport>();
                }
            )*
        }
    };
}

conformance_suite!(in_process: crate::pair::InProcess, push_slice_partial);
conformance_suite!(kernel: crate::uring::Kernel);
conformance_suite!(shm_echo: crate::shm::ShmEcho, push_slice_partial);
conformance_suite!(shm_blk: crate::blk::Blk, push_slice_partial);
