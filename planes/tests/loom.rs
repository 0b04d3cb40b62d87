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

use std::sync::Arc;

use loom::cell::UnsafeCell;
use loom::sync::atomic::Ordering;
use loom::thread;
use subring_planes::data::{
    BufferPool, PoolBreakage, PoolError, Region, RegionOptions, Ring, RingError, RingLayout,
};
use subring_planes::interrupt::{
    EventFdSignal, FutexSignal, LoomBreakage, Notifier, NotifyMode, Signal, SleepNotifier,
    SleepSet, SpinPolicy, WaitAny, WakeWord, Woke,
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
fn push_all(tx: &mut subring_planes::data::Producer<u32>, values: impl IntoIterator<Item = u32>) {
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

/// Single pushes and pops through a capacity-2 ring, wrapping around: every value arrives once,
/// in order, and every slot read is ordered after its write (loom checks the slot cells).
#[test]
fn ring_publish_consume_wraps() {
    model(|| {
        let (mut tx, mut rx) = Ring::<u32>::with_capacity(2).unwrap();
        let producer = thread::spawn(move || push_all(&mut tx, 1..=3));
        let mut expected = 1;
        while expected <= 3 {
            match rx.pop().unwrap() {
                Some(v) => {
                    assert_eq!(v, expected);
                    expected += 1;
                }
                None => thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert_eq!(rx.pop().unwrap(), None);
    });
}

/// Batches: a write chunk committed at once and a wrapping second batch, read back with read
/// chunks released at once.
#[test]
fn ring_batches_wrap() {
    model(|| {
        let (mut tx, mut rx) = Ring::<u32>::with_capacity(4).unwrap();
        let producer = thread::spawn(move || {
            let mut chunk = tx.write_chunk(3).unwrap();
            assert_eq!(chunk.len(), 3, "an empty ring has room for 3");
            for i in 0..3 {
                chunk.set(i, i as u32 + 1);
            }
            chunk.commit(3);
            // The second batch wraps around the end of the ring once the consumer frees slots.
            let mut sent = 0;
            let values = [4, 5, 6];
            while sent < values.len() {
                sent += tx.push_slice(&values[sent..]).unwrap();
                if sent < values.len() {
                    thread::yield_now();
                }
            }
        });
        let mut got = Vec::new();
        while got.len() < 6 {
            let chunk = rx.read_chunk(4).unwrap();
            if chunk.is_empty() {
                drop(chunk);
                thread::yield_now();
                continue;
            }
            got.extend(chunk.iter());
            chunk.release_all();
        }
        producer.join().unwrap();
        assert_eq!(got, [1, 2, 3, 4, 5, 6]);
    });
}

/// Negative control: stamping slots with Relaxed instead of Release lets the consumer read an
/// entry that is not ordered after the producer's write of it. loom must report it.
#[test]
#[should_panic(expected = "Causality violation")]
fn negative_control_relaxed_publish_is_caught() {
    model(|| {
        let (mut tx, mut rx) = Ring::<u32>::with_capacity(2).unwrap();
        tx.set_publish_ordering_for_loom(Ordering::Relaxed);
        let producer = thread::spawn(move || push_all(&mut tx, [7]));
        loop {
            if let Some(v) = rx.pop().unwrap() {
                assert_eq!(v, 7);
                break;
            }
            thread::yield_now();
        }
        producer.join().unwrap();
    });
}

/// The sleep/wake protocol: the consumer announces sleep and blocks only if, after the fence,
/// the ring is still empty; the producer publishes and wakes only if the consumer announced.
/// A lost wake-up would leave the consumer blocked forever, which loom reports as a deadlock.
/// Two messages, so that the second round also runs against a wake-up left over from the first.
fn sleep_wake(broken: Option<LoomBreakage>) {
    two_messages(|| EventFdSignal::new().unwrap(), SpinPolicy::none, broken);
}

/// Two messages over a capacity-2 ring, the waiter sleeping through `signal` after spinning as
/// `spin` says; `broken` breaks both sides' notifiers.
fn two_messages<S: Signal + Clone + 'static>(
    signal: fn() -> S,
    spin: fn() -> SpinPolicy,
    broken: Option<LoomBreakage>,
) {
    model(move || {
        let (mut tx, mut rx) = Ring::<u32>::with_capacity(2).unwrap();
        let signal = signal();
        let mut notifier =
            SleepNotifier::new(tx.consumer_wake(), signal.clone(), SpinPolicy::none());
        let mut waiter = SleepNotifier::new(rx.consumer_wake(), signal, spin());
        if let Some(how) = broken {
            notifier.break_for_loom(how);
            waiter.break_for_loom(how);
        }
        let producer = thread::spawn(move || {
            for v in [1, 2] {
                tx.push(v).unwrap();
                notifier.notify().unwrap();
            }
        });
        for expected in [1, 2] {
            waiter
                .wait_until(&mut || rx.has_entries().unwrap(), None)
                .unwrap();
            assert_eq!(rx.pop().unwrap(), Some(expected));
        }
        producer.join().unwrap();
    });
}

#[test]
fn sleep_wake_no_lost_wakeup() {
    sleep_wake(None);
}

/// The same protocol over the futex, as modelled: a `FUTEX_WAIT` returns only after a
/// `FUTEX_WAKE` that came after it checked the word (or at once, if the word no longer says
/// "sleeping"), never because the word changed. One message each way of every interleaving.
fn sleep_wake_futex(broken: Option<LoomBreakage>) {
    model(move || {
        let (mut tx, mut rx) = Ring::<u32>::with_capacity(2).unwrap();
        let mut notifier =
            SleepNotifier::new(tx.consumer_wake(), FutexSignal::new(), SpinPolicy::none());
        let waiter = SleepNotifier::new(rx.consumer_wake(), FutexSignal::new(), SpinPolicy::none());
        if let Some(how) = broken {
            notifier.break_for_loom(how);
        }
        let producer = thread::spawn(move || {
            tx.push(1).unwrap();
            notifier.notify().unwrap();
        });
        waiter
            .wait_until(&mut || rx.has_entries().unwrap(), None)
            .unwrap();
        assert_eq!(rx.pop().unwrap(), Some(1));
        producer.join().unwrap();
    });
}

#[test]
fn futex_sleep_wake_no_lost_wakeup() {
    sleep_wake_futex(None);
}

/// Negative control: a notifier that claims the sleeper (clears its word) but never calls
/// `FUTEX_WAKE` leaves it asleep. The futex model must catch it (the waiter yields forever);
/// a model that returned as soon as the word changed would not.
#[test]
#[should_panic(expected = "maximum number of branches")]
fn negative_control_claiming_without_waking_is_caught() {
    sleep_wake_futex(Some(LoomBreakage::SkipWake));
}

/// Negative control: blocking without re-checking the condition after announcing sleep loses
/// the wake-up when the producer published just before the announcement.
#[test]
#[should_panic(expected = "deadlock")]
fn negative_control_lost_wakeup_without_recheck_is_caught() {
    sleep_wake(Some(LoomBreakage::SkipRecheck));
}

/// Negative control: without the SeqCst fences, the waiter's store of "sleeping" and the
/// notifier's store of `tail` can both be missed by the other side's load (store buffering):
/// the notifier skips the wake and the waiter sleeps on a non-empty ring.
#[test]
#[should_panic(expected = "deadlock")]
fn negative_control_lost_wakeup_without_fences_is_caught() {
    sleep_wake(Some(LoomBreakage::NoFences));
}

/// The spin-then-sleep path: the waiter spins (an adaptive budget of 2 spins, halved after a
/// spin that failed) before it announces sleep, over the modelled futex; two messages.
#[test]
fn adaptive_spin_then_sleep_loses_no_wakeup() {
    two_messages(FutexSignal::new, || SpinPolicy::adaptive(2), None);
}

/// A futex signal whose first wake-up fails (as `FUTEX_WAKE` or an eventfd write can).
#[derive(Debug, Clone)]
struct FailsFirstWake {
    failed: Arc<loom::sync::atomic::AtomicBool>,
}

impl Signal for FailsFirstWake {
    fn wake(&self, word: &WakeWord) -> std::io::Result<()> {
        if !self.failed.swap(true, Ordering::Relaxed) {
            return Err(std::io::Error::other("injected wake-up failure"));
        }
        FutexSignal::new().wake(word)
    }

    fn block(
        &self,
        word: &WakeWord,
        timeout: Option<std::time::Duration>,
    ) -> std::io::Result<Woke> {
        FutexSignal::new().block(word, timeout)
    }
}

/// A wake-up that fails is rolled back: the notifier sets the word to "sleeping" again, so the
/// caller's retry wakes the waiter instead of being suppressed.
fn failed_wake_rolls_back(broken: bool) {
    model(move || {
        let (mut tx, mut rx) = Ring::<u32>::with_capacity(2).unwrap();
        let signal = FailsFirstWake {
            failed: Arc::new(loom::sync::atomic::AtomicBool::new(false)),
        };
        let mut notifier =
            SleepNotifier::new(tx.consumer_wake(), signal.clone(), SpinPolicy::none());
        if broken {
            notifier.break_for_loom(LoomBreakage::SkipRollback);
        }
        let waiter = SleepNotifier::new(rx.consumer_wake(), signal, SpinPolicy::none());
        let producer = thread::spawn(move || {
            tx.push(1).unwrap();
            if notifier.notify().is_err() {
                // What a caller does with a failed notification: try again.
                notifier.notify().unwrap();
            }
        });
        waiter
            .wait_until(&mut || rx.has_entries().unwrap(), None)
            .unwrap();
        assert_eq!(rx.pop().unwrap(), Some(1));
        producer.join().unwrap();
    });
}

#[test]
fn a_failed_wake_is_rolled_back_and_retried() {
    failed_wake_rolls_back(false);
}

/// Negative control: without the rollback the retry finds the word cleared and is suppressed;
/// the waiter sleeps on (the modelled futex waits by yielding: too many branches).
#[test]
#[should_panic(expected = "maximum number of branches")]
fn negative_control_no_rollback_after_a_failed_wake_is_caught() {
    failed_wake_rolls_back(true);
}

/// Creation racing an attach: one thread creates a ring (over memory whose loom objects were
/// constructed first, as mapped memory exists before anyone writes it) and pushes an entry;
/// another attaches as soon as the magic says the ring is there, and takes the entry. The
/// magic is published last, with Release: whoever sees it sees the whole header.
fn ring_created_while_attached(publish: Ordering) {
    model(move || {
        let layout = RingLayout::of::<u32>(2).unwrap();
        let region = Arc::new(Region::anonymous(layout.size, RegionOptions::new()).unwrap());
        Ring::<u32>::construct_for_loom(&region, 0, 2).unwrap();
        let shared = region.clone();
        let creator = thread::spawn(move || {
            let ring = Ring::<u32>::create_constructed_for_loom(shared, 0, 2, publish).unwrap();
            let mut tx = ring.into_producer().unwrap();
            tx.push(7).unwrap();
        });
        let ring = loop {
            match Ring::<u32>::attach(region.clone(), 0, 2) {
                Ok(ring) => break ring,
                Err(RingError::HeaderMismatch { field: "magic", .. }) => thread::yield_now(),
                Err(e) => panic!("attach raced creation: {e}"),
            }
        };
        let mut rx = ring.into_consumer().unwrap();
        let got = loop {
            match rx.pop().unwrap() {
                Some(v) => break v,
                None => thread::yield_now(),
            }
        };
        assert_eq!(got, 7);
        creator.join().unwrap();
    });
}

#[test]
fn a_ring_attached_while_it_is_created_is_seen_whole() {
    ring_created_while_attached(Ordering::Release);
}

/// Negative control: the magic stored Relaxed lets the attacher see it before the rest of the
/// header (a capacity of 0).
#[test]
#[should_panic(expected = "attach raced creation")]
fn negative_control_relaxed_magic_is_caught() {
    ring_created_while_attached(Ordering::Relaxed);
}

/// A queue pair's creation racing the app's attach: the service's thread lays the pair out
/// (over constructed memory, as for the ring) and attaches its side; the app attaches as soon
/// as the pair's magic is there and makes a round trip. The pair's magic goes last, with
/// Release, after both rings' own. At most 6 preemptions (about 20 s; 10 take five minutes).
fn pair_created_while_attached(publish: Ordering) {
    model_bounded(6, move || {
        let config = PairConfig::default()
            .with_capacity(1)
            .with_mode(NotifyMode::Futex);
        let layout = PairLayout::of::<u32, u32>(&config).unwrap();
        let region = Arc::new(Region::anonymous(layout.size, RegionOptions::new()).unwrap());
        pair::construct_for_loom::<u32, u32>(&region, 0, &config).unwrap();
        let (shared, cfg) = (region.clone(), config.clone());
        let server = thread::spawn(move || {
            pair::create_constructed_for_loom::<u32, u32>(&shared, 0, &cfg, publish).unwrap();
            let mut service =
                ServiceSide::<u32, u32>::attach(shared, 0, &cfg, PairSignals::default()).unwrap();
            service.wait_requests(None).unwrap();
            service.serve_ready(&mut |x: u32| x + 1).unwrap();
            service
        });
        let mut app = loop {
            match AppSide::<u32, u32>::attach(region.clone(), 0, &config, PairSignals::default()) {
                Ok(app) => break app,
                Err(QueueError::Setup(e)) if matches!(*e, SetupError::NoPair { magic: 0, .. }) => {
                    thread::yield_now()
                }
                Err(e) => panic!("attach raced creation: {e}"),
            }
        };
        app.push(41).unwrap();
        app.submit().unwrap();
        app.wait(None).unwrap();
        assert_eq!(app.reap().unwrap(), Some(42));
        drop(server.join().unwrap());
    });
}

#[test]
fn a_pair_attached_while_it_is_created_is_seen_whole() {
    pair_created_while_attached(Ordering::Release);
}

/// Negative control: the pair's magic stored Relaxed lets the app see it before the mode
/// words (or a ring's header) it guards.
#[test]
#[should_panic(expected = "attach raced creation")]
fn negative_control_relaxed_pair_magic_is_caught() {
    pair_created_while_attached(Ordering::Relaxed);
}

/// The buffer pool's free bitmap: two threads allocate, use and free buffers from a pool of one
/// buffer. Each use writes a loom cell owned by that buffer, so two owners at once, or a second
/// owner not ordered after the first one's free, is reported.
fn pool_exclusive(broken: bool) {
    model(move || {
        let region = Arc::new(Region::anonymous(4096, RegionOptions::new()).unwrap());
        let pool = if broken {
            BufferPool::new_broken_for_loom(region, 64, 1, PoolBreakage::RelaxedFreeList)
        } else {
            BufferPool::new(region, 0, 64, 1).unwrap()
        };
        let owner = Arc::new(UnsafeCell::new(0u32));
        let threads: Vec<_> = (1..=2u32)
            .map(|id| {
                let (pool, owner) = (pool.clone(), owner.clone());
                thread::spawn(move || loop {
                    if let Some(buf) = pool.alloc() {
                        assert_eq!(buf.index(), 0);
                        // SAFETY: the cell is the buffer's, and we own the buffer: loom reports
                        // any access that this ownership does not order after the last one.
                        owner.with_mut(|o| unsafe { *o = id });
                        drop(buf);
                        break;
                    }
                    thread::yield_now();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(pool.free_count(), 1);
    });
}

#[test]
fn pool_alloc_free_exclusive() {
    pool_exclusive(false);
}

/// Negative control: Relaxed orderings on the pool's free bitmap let the next owner touch the
/// buffer without being ordered after the previous owner's use.
#[test]
#[should_panic(expected = "Causality violation")]
fn negative_control_relaxed_pool_is_caught() {
    pool_exclusive(true);
}

/// The pool's lent bitmap: a buffer is lent (its handle goes to the peer), and the peer returns
/// the handle twice (a buggy or hostile peer), the two copies taken by two threads of the
/// lender, each calling `reclaim`. Exactly one gets the buffer back; the other is told it is
/// not lent. The winner writes a loom cell the buffer owns (after the lender's write before
/// lending), so two winners at once, or a winner not ordered after the lender, is reported.
fn pool_reclaim_exclusive(broken: bool) {
    model(move || {
        let region = Arc::new(Region::anonymous(4096, RegionOptions::new()).unwrap());
        let pool = if broken {
            BufferPool::new_broken_for_loom(region, 64, 1, PoolBreakage::SplitReclaim)
        } else {
            BufferPool::new(region, 0, 64, 1).unwrap()
        };
        let owner = Arc::new(UnsafeCell::new(0u32));
        let buf = pool.alloc().unwrap();
        // SAFETY: the cell is the buffer's, and this thread owns the buffer.
        owner.with_mut(|o| unsafe { *o = 9 });
        let handle = buf.lend();
        let won = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (1..=2u32)
            .map(|id| {
                let (pool, owner, won) = (pool.clone(), owner.clone(), won.clone());
                thread::spawn(move || match pool.reclaim(handle) {
                    Ok(buf) => {
                        won.fetch_add(1, Ordering::Relaxed);
                        // SAFETY: the cell is the buffer's, and we own the buffer.
                        owner.with_mut(|o| unsafe { *o = id });
                        drop(buf);
                    }
                    Err(PoolError::NotLent { index: 0 }) => {}
                    Err(e) => panic!("reclaim: {e}"),
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            won.load(Ordering::Relaxed),
            1,
            "one handle returned twice was reclaimed twice"
        );
        assert_eq!(pool.free_count(), 1);
    });
}

#[test]
fn pool_reclaims_a_lent_buffer_once() {
    pool_reclaim_exclusive(false);
}

/// Negative control: `reclaim` that tests the lent bit with a load and clears it with a store
/// lets both threads win the same buffer; their writes to its cell race.
#[test]
#[should_panic(expected = "Causality violation")]
fn negative_control_split_reclaim_is_caught() {
    pool_reclaim_exclusive(true);
}

/// A queue pair end to end: one request, its completion, then the app closes and the service
/// sees `PeerGone` rather than waiting forever (the close goes through the same protocol).
#[test]
fn pair_round_trip_and_close() {
    model(|| {
        let config = PairConfig::default()
            .with_capacity(2)
            .with_mode(subring_planes::interrupt::NotifyMode::Futex);
        let (mut app, mut service) = in_process::<u32, u32>(&config).unwrap();
        let server = thread::spawn(move || {
            let mut served = 0;
            loop {
                match service.wait_requests(None) {
                    Ok(()) => {}
                    Err(QueueError::PeerGone) => return served,
                    Err(e) => panic!("service: {e}"),
                }
                served += service.serve_ready(&mut |x: u32| x + 100).unwrap();
            }
        });
        app.push(1).unwrap();
        app.submit().unwrap();
        app.wait(None).unwrap();
        assert_eq!(app.reap().unwrap(), Some(101));
        drop(app);
        assert_eq!(server.join().unwrap(), 1);
    });
}

/// A watcher thread declares the service gone (its process died) while the app waits with no
/// timeout and the service side stays silent: the app must wake and see `PeerGone`, whichever
/// comes first of its announcing sleep and the declaration.
#[test]
fn service_declared_gone_wakes_a_waiting_app() {
    model(|| {
        let config = PairConfig::default()
            .with_capacity(2)
            .with_mode(subring_planes::interrupt::NotifyMode::Futex);
        let (mut app, service) = in_process::<u32, u32>(&config).unwrap();
        let gone = app.gone_handle();
        let watcher = thread::spawn(move || gone.declare().unwrap());
        match app.wait(None) {
            Err(QueueError::PeerGone) => {}
            other => panic!("waiting after the service was declared gone gave {other:?}"),
        }
        watcher.join().unwrap();
        drop(service);
    });
}

/// A full completion ring sleeps: the service posts two completions through a ring of one
/// slot, so the second finds it full and the service sleeps on the ring's producer word
/// ([`ServiceSide::wait_room`]) until the app's reaping wakes it. The app reaps the first,
/// then waits for the second; the look at the producer word that its wait makes first is
/// fenced, and is what wakes the service when the relaxed look right after the reap missed
/// the announcement (store buffering on both sides). Futex mode, so a missed wake-up is a
/// deadlock. Explored with at most 4 preemptions (about 30 s; 5 take five minutes).
fn full_completion_ring_sleeps(skip_backstop: bool) {
    model_bounded(4, move || {
        let config = PairConfig {
            sq_capacity: 2,
            cq_capacity: 1,
            ..PairConfig::default().with_mode(NotifyMode::Futex)
        };
        let (mut app, mut service) = in_process::<u32, u32>(&config).unwrap();
        if skip_backstop {
            app.skip_room_backstop_for_loom();
        }
        let server = thread::spawn(move || {
            for v in [1, 2] {
                let mut v = v;
                loop {
                    match service.complete(v) {
                        Ok(()) => break,
                        Err(r) => {
                            assert!(matches!(r.error, QueueError::Full), "{}", r.error);
                            v = r.entry;
                            service.wait_room(None).unwrap();
                        }
                    }
                }
                service.flush().unwrap();
            }
            service
        });
        for expected in [1, 2] {
            app.wait(None).unwrap();
            assert_eq!(app.reap().unwrap(), Some(expected));
        }
        drop(server.join().unwrap());
    });
}

#[test]
fn a_full_completion_ring_sleeps_and_reaping_wakes_it() {
    full_completion_ring_sleeps(false);
}

/// Negative control: with only the relaxed look after each reap (no fenced look before the
/// app's wait), the app can miss the service's announcement while the service misses the
/// app's reap; both then sleep (in the modelled futex, which waits by yielding: loom reports
/// the endless wait as too many branches).
#[test]
#[should_panic(expected = "maximum number of branches")]
fn negative_control_room_without_the_fenced_look_is_caught() {
    full_completion_ring_sleeps(true);
}

/// A full submission ring sleeps: the app submits two requests through a ring of one slot,
/// waiting for room ([`Submitter::wait_space`]) in between; the service takes requests and
/// answers them, and its flush (whose notification fences) wakes the app. Then the app closes
/// and the service sees it.
#[test]
fn a_full_submission_ring_sleeps_until_the_service_takes() {
    model_bounded(4, || {
        let config = PairConfig {
            sq_capacity: 1,
            cq_capacity: 2,
            ..PairConfig::default().with_mode(NotifyMode::Futex)
        };
        let (mut app, mut service) = in_process::<u32, u32>(&config).unwrap();
        let server = thread::spawn(move || {
            let mut served = 0;
            loop {
                match service.wait_requests(None) {
                    Ok(()) => {}
                    Err(QueueError::PeerGone) => return served,
                    Err(e) => panic!("service: {e}"),
                }
                served += service.serve_ready(&mut |x: u32| x + 100).unwrap();
            }
        });
        app.push(1).unwrap();
        app.submit().unwrap();
        let mut v = 2;
        while let Err(r) = app.push(v) {
            assert!(matches!(r.error, QueueError::Full), "{}", r.error);
            v = r.entry;
            app.wait_space(None).unwrap();
        }
        app.submit().unwrap();
        let mut got = Vec::new();
        while got.len() < 2 {
            app.wait(None).unwrap();
            got.extend(app.reap().unwrap());
        }
        assert_eq!(got, [101, 102]);
        drop(app);
        assert_eq!(server.join().unwrap(), 2);
    });
}

/// The app in a level-triggered event loop (poll, or epoll without `EPOLLET`) on its completion
/// eventfd, over the modelled eventfd: it arms, waits until the fd is readable, disarms
/// (draining the counter) and reaps, until both completions the service posts have arrived.
/// A wake-up can find nothing to reap once (the service claimed an earlier announcement and
/// wrote after the app had already seen the entry), never twice in a row: the drain clears
/// it. Without the drain the counter stays up and every later wait returns at once.
/// Explored with at most 6 preemptions (about 20 s; each one more multiplies that by four).
fn level_triggered_app(drain: bool) {
    model_bounded(6, move || {
        let config = PairConfig::default()
            .with_capacity(2)
            .with_mode(NotifyMode::EventFd);
        let layout = PairLayout::of::<u32, u32>(&config).unwrap();
        let region = Arc::new(Region::anonymous(layout.size, RegionOptions::new()).unwrap());
        let signals = PairSignals::for_config(&config).unwrap();
        let call = signals.call.clone().unwrap();
        let mut service =
            ServiceSide::<u32, u32>::create(region.clone(), 0, &config, signals.clone()).unwrap();
        let mut app = AppSide::<u32, u32>::attach(region, 0, &config, signals).unwrap();
        let server = thread::spawn(move || {
            for v in [1, 2] {
                service.complete(v).unwrap();
                service.flush().unwrap();
            }
            service
        });
        let mut got = Vec::new();
        let mut idle_in_a_row = 0;
        while got.len() < 2 {
            if !app.arm().unwrap() {
                call.wait_readable_for_loom();
            }
            if drain {
                app.disarm().unwrap();
            } else {
                app.disarm_edge();
            }
            let before = got.len();
            while let Some(c) = app.reap().unwrap() {
                got.push(c);
            }
            if got.len() == before {
                idle_in_a_row += 1;
                assert!(
                    idle_in_a_row < 2,
                    "a level-triggered wait woke twice in a row with nothing to reap"
                );
            } else {
                idle_in_a_row = 0;
            }
        }
        assert_eq!(got, [1, 2]);
        drop(server.join().unwrap());
    });
}

#[test]
fn a_level_triggered_app_sees_every_completion_and_no_stale_wakeup() {
    level_triggered_app(true);
}

/// Negative control: disarming without draining (what `disarm_edge` does, right for an
/// edge-triggered loop) leaves the counter up for a level-triggered one.
#[test]
#[should_panic(expected = "woke twice in a row with nothing to reap")]
fn negative_control_level_triggered_without_drain_is_caught() {
    level_triggered_app(false);
}

/// The service in an edge-triggered loop on its kick eventfd (as the shm server's epoll set
/// watches it): it arms, blocks in the modelled `EPOLLET` wait, disarms without draining, and
/// serves, until the app has had both answers; the app submits one request at a time and
/// waits for each answer. Without a drain, each write is still a new edge. At most 6
/// preemptions, as above.
#[test]
fn an_edge_triggered_service_sees_every_kick() {
    model_bounded(6, || {
        let config = PairConfig::default()
            .with_capacity(2)
            .with_mode(NotifyMode::EventFd);
        let layout = PairLayout::of::<u32, u32>(&config).unwrap();
        let region = Arc::new(Region::anonymous(layout.size, RegionOptions::new()).unwrap());
        let signals = PairSignals::for_config(&config).unwrap();
        let kick = signals.kick.clone().unwrap();
        let mut service =
            ServiceSide::<u32, u32>::create(region.clone(), 0, &config, signals.clone()).unwrap();
        let mut app = AppSide::<u32, u32>::attach(region, 0, &config, signals).unwrap();
        let server = thread::spawn(move || {
            let mut served = 0;
            while served < 2 {
                if !service.arm().unwrap() {
                    kick.block(&service.kick_word(), None).unwrap();
                }
                service.disarm_edge_triggered();
                served += service.serve_ready(&mut |x: u32| x + 100).unwrap();
            }
            service
        });
        for v in [1, 2] {
            app.push(v).unwrap();
            app.submit().unwrap();
            app.wait(None).unwrap();
            assert_eq!(app.reap().unwrap(), Some(v + 100));
        }
        drop(server.join().unwrap());
    });
}

/// A service sleeping on two rings at once ([`WaitAny`]): it announces sleep on both rings'
/// words, re-checks both rings, then sleeps until either word is woken. Ring A has an entry
/// from the start; a producer pushes one entry to ring B and rings B's doorbell (a futex wake,
/// suppressed unless the service announced sleep on B). A lost wake-up leaves the service
/// asleep with B's entry waiting.
fn sleep_on_two_rings(recheck_both: bool) {
    model(move || {
        let (mut tx_a, mut rx_a) = Ring::<u32>::with_capacity(2).unwrap();
        let (mut tx_b, mut rx_b) = Ring::<u32>::with_capacity(2).unwrap();
        tx_a.push(1).unwrap();
        let producer = thread::spawn(move || {
            let doorbell =
                SleepNotifier::new(tx_b.consumer_wake(), FutexSignal::new(), SpinPolicy::none());
            tx_b.push(2).unwrap();
            doorbell.notify().unwrap();
        });
        let (word_a, word_b) = (rx_a.consumer_wake(), rx_b.consumer_wake());
        let mut set = WaitAny::new();
        let mut got = 0;
        while got < 2 {
            word_a.announce_sleep();
            word_b.announce_sleep();
            let ready =
                rx_a.has_entries().unwrap() || (recheck_both && rx_b.has_entries().unwrap());
            if !ready {
                set.wait([&*word_a, &*word_b], None).unwrap();
            }
            word_a.cancel_sleep();
            word_b.cancel_sleep();
            got += usize::from(rx_a.pop().unwrap().is_some());
            got += usize::from(rx_b.pop().unwrap().is_some());
        }
        producer.join().unwrap();
        drop(tx_a);
    });
}

#[test]
fn sleeping_on_two_rings_loses_no_wakeup() {
    sleep_on_two_rings(true);
}

/// Negative control: a service that forgets to re-check one ring after announcing sleep sleeps
/// through an entry published just before the announcement (its doorbell was suppressed).
#[test]
#[should_panic(expected = "maximum number of branches")]
fn negative_control_sleeping_on_two_rings_without_rechecking_both_is_caught() {
    sleep_on_two_rings(false);
}

const SLEEP_SET_PREEMPTIONS: usize = 5;

/// A service sleeps on a ring's word in a [`SleepSet`] while a peer publishes to the ring and
/// rings its doorbell, and another thread raises the set's alarm: both claim the same word, in
/// any order. The service must see the entry and the alarm, however they interleave with its
/// announcing sleep.
fn sleep_set_with_alarm(broken: bool) {
    model_bounded(SLEEP_SET_PREEMPTIONS, move || {
        let (mut tx, mut rx) = Ring::<u32>::with_capacity(2).unwrap();
        let word = rx.consumer_wake();
        let mut set = SleepSet::new();
        if broken {
            set.break_for_loom();
        }
        set.set_words(vec![word.clone()]).unwrap();
        let alarm = set.alarm();
        let raiser = thread::spawn(move || alarm.raise().unwrap());
        let producer = thread::spawn(move || {
            let doorbell =
                SleepNotifier::new(tx.consumer_wake(), FutexSignal::new(), SpinPolicy::none());
            tx.push(1).unwrap();
            doorbell.notify().unwrap();
        });
        let (mut got, mut alarmed) = (false, false);
        while !(got && alarmed) {
            word.announce_sleep();
            if !rx.has_entries().unwrap() {
                set.sleep(None).unwrap();
            }
            word.cancel_sleep();
            if set.is_raised() {
                alarmed = true;
                set.lower();
            }
            got |= rx.pop().unwrap().is_some();
        }
        raiser.join().unwrap();
        producer.join().unwrap();
    });
}

#[test]
fn a_sleep_set_sees_its_peer_and_its_alarm() {
    sleep_set_with_alarm(false);
}

/// Negative control: a sleeper that does not look at the alarm after announcing sleep sleeps
/// through an alarm raised just before (the alarm found no word sleeping to wake).
#[test]
#[should_panic(expected = "maximum number of branches")]
fn negative_control_a_sleep_set_that_ignores_its_alarm_is_caught() {
    sleep_set_with_alarm(true);
}
