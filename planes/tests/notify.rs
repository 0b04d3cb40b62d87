//! The interrupt plane: suppression accounting, wake-ups and timeouts in every notify mode,
//! waits on many words and sleep sets.
#![cfg(not(loom))]
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use subring_planes::interrupt::{
    EventFdSignal, FutexSignal, MissingEventFd, Notified, Notifier, NotifyMode, Signal,
    SleepNotifier, SpinPolicy, WaitError, WakeRef, Woke, WordCount,
};
use subring_planes::queue::QueueError;
use subring_planes::sync::{AtomicU32, Ordering};

const LONG: Option<Duration> = Some(Duration::from_secs(30));

#[test]
fn notify_is_suppressed_unless_someone_sleeps() {
    let word = WakeRef::local();
    let n = SleepNotifier::new(
        word.clone(),
        EventFdSignal::new().unwrap(),
        SpinPolicy::none(),
    );
    assert_eq!(n.notify().unwrap(), Notified::Suppressed);
    word.announce_sleep();
    assert_eq!(n.notify().unwrap(), Notified::Sent);
    // The wake claimed the sleeper: a second notification before it sleeps again is free.
    assert_eq!(n.notify().unwrap(), Notified::Suppressed);
    let s = n.stats();
    assert_eq!((s.sent, s.suppressed), (1, 2));
    assert_eq!(n.signal().drain().unwrap(), 1, "exactly one eventfd write");
}

#[test]
fn eventfd_wait_needs_no_drain() {
    // `block` waits edge-triggered and never reads the counter: each wake-up must be seen once,
    // even one sent before the wait began, and a seen one must not be seen again.
    let word = WakeRef::local();
    let efd = EventFdSignal::new().unwrap();
    let n = SleepNotifier::new(word.clone(), efd.clone(), SpinPolicy::none());
    for round in 1..=3u64 {
        word.announce_sleep();
        assert_eq!(n.notify().unwrap(), Notified::Sent);
        let start = Instant::now();
        efd.block(&word, Some(Duration::from_secs(20))).unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "round {round}: a wake-up sent before the wait was lost"
        );
        let start = Instant::now();
        efd.block(&word, Some(Duration::from_millis(30))).unwrap();
        assert!(
            start.elapsed() >= Duration::from_millis(25),
            "round {round}: a consumed wake-up woke the waiter again"
        );
    }
    // Nothing was drained: the counter holds every write.
    assert_eq!(efd.drain().unwrap(), 3);
}

/// Runs `f` on a thread and returns its result, or panics if it takes longer than 10 s (the
/// thread is left behind: the test has failed anyway).
fn within_10s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{what}: no result within 10 s ({e})"))
}

#[test]
fn a_watched_hang_up_ends_a_wait_that_has_no_timeout() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let word = WakeRef::local();
    let efd = EventFdSignal::new().unwrap();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    efd.watch_hangup(ours.as_fd()).unwrap();
    let n = SleepNotifier::new(word.clone(), efd.clone(), SpinPolicy::none());

    // Data on the watched socket is not a hang-up, and does not end a wait.
    theirs.write_all(b"hello").unwrap();
    let start = Instant::now();
    assert_eq!(
        efd.block(&word, Some(Duration::from_millis(30))).unwrap(),
        Woke::Recheck
    );
    assert!(start.elapsed() >= Duration::from_millis(25), "data woke it");

    // A wait with no timeout, blocked when the peer goes away, ends with the hang-up.
    let waiter = {
        let (efd, word) = (efd.clone(), word.clone());
        std::thread::spawn(move || efd.block(&word, None).unwrap())
    };
    std::thread::sleep(Duration::from_millis(20));
    drop(theirs);
    let start = Instant::now();
    while !waiter.is_finished() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the hang-up did not end the wait"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(waiter.join().unwrap(), Woke::HangUp);

    // It stays hung up (level-triggered), but a wake-up still comes first.
    assert_eq!(efd.block(&word, None).unwrap(), Woke::HangUp);
    word.announce_sleep();
    assert_eq!(n.notify().unwrap(), Notified::Sent);
    assert_eq!(efd.block(&word, None).unwrap(), Woke::Recheck);

    // Through the notifier: a condition that holds is still reported; one that never will
    // ends the wait with `PeerHungUp`, which the queue model reads as the peer being gone.
    n.wait_until(&mut || true, None).unwrap();
    let err = within_10s("wait_until after a hang-up", move || {
        n.wait_until(&mut || false, None).unwrap_err()
    });
    assert!(matches!(err, WaitError::PeerHungUp), "{err}");
    assert!(matches!(QueueError::from(err), QueueError::PeerGone));
    drop(ours);
}

fn timeout_in(notifier: &dyn Notifier) {
    let start = Instant::now();
    let err = notifier
        .wait_until(&mut || false, Some(Duration::from_millis(30)))
        .unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, WaitError::Timeout(_)), "{err}");
    assert!(
        took >= Duration::from_millis(30),
        "returned early after {took:?}"
    );
    assert!(took < Duration::from_secs(10), "overslept: {took:?}");
    assert_eq!(notifier.stats().timeouts, 1);
}

#[test]
fn waits_time_out_in_every_mode() {
    for mode in NotifyMode::ALL {
        let efd = mode.uses_eventfd().then(|| EventFdSignal::new().unwrap());
        let n = mode.notifier(WakeRef::local(), efd).unwrap();
        timeout_in(&n);
        // A timed-out waiter leaves the word saying nobody sleeps.
        assert_eq!(n.notify().unwrap(), Notified::Suppressed, "{mode}");
    }
}

#[test]
fn eventfd_mode_needs_its_eventfd() {
    let err = NotifyMode::EventFd
        .notifier(WakeRef::local(), None)
        .unwrap_err();
    assert_eq!(err, MissingEventFd);
}

#[test]
fn sleeping_waiter_is_woken_across_threads() {
    for signal in ["eventfd", "futex"] {
        let word = WakeRef::local();
        let flag = std::sync::Arc::new(AtomicU32::new(0));
        let (waiter, notifier): (Box<dyn Notifier>, Box<dyn Notifier>) = if signal == "eventfd" {
            let efd = EventFdSignal::new().unwrap();
            (
                Box::new(SleepNotifier::new(
                    word.clone(),
                    efd.clone(),
                    SpinPolicy::none(),
                )),
                Box::new(SleepNotifier::new(word.clone(), efd, SpinPolicy::none())),
            )
        } else {
            (
                Box::new(SleepNotifier::new(
                    word.clone(),
                    FutexSignal::new(),
                    SpinPolicy::none(),
                )),
                Box::new(SleepNotifier::new(
                    word.clone(),
                    FutexSignal::new(),
                    SpinPolicy::none(),
                )),
            )
        };
        let f = flag.clone();
        let t = std::thread::spawn(move || {
            // Wait until the waiter has announced sleep, so the wake must go through the kernel.
            let start = Instant::now();
            while !word.is_sleeping() {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "waiter never slept"
                );
                std::thread::yield_now();
            }
            f.store(1, Ordering::Release);
            notifier.notify().unwrap()
        });
        waiter
            .wait_until(&mut || flag.load(Ordering::Acquire) == 1, LONG)
            .unwrap();
        assert_eq!(t.join().unwrap(), Notified::Sent, "{signal}");
        assert!(waiter.stats().sleeps >= 1, "{signal}");
    }
}

#[test]
fn adaptive_budget_shrinks_when_spinning_fails() {
    let policy = SpinPolicy::adaptive(1024);
    let n = SleepNotifier::new(WakeRef::local(), FutexSignal::new(), policy);
    let before = n.spin_policy().current_budget();
    for _ in 0..4 {
        let _ = n.wait_until(&mut || false, Some(Duration::from_millis(1)));
    }
    assert!(n.spin_policy().current_budget() < before);
    // Spinning that succeeds grows it back.
    let shrunk = n.spin_policy().current_budget();
    let mut calls = 0;
    n.wait_until(
        &mut || {
            calls += 1;
            calls > 3
        },
        LONG,
    )
    .unwrap();
    assert!(n.spin_policy().current_budget() > shrunk);
    assert_eq!(n.stats().without_sleep, 1);
}

/// `WaitAny` sleeps on several words and wakes when any one of them is woken by a plain futex
/// doorbell; a word already woken (or never announced) returns at once; it times out; it
/// refuses an empty or oversized set by name.
#[test]
fn wait_any_wakes_on_any_word() {
    use subring_planes::interrupt::{WaitAny, WAIT_ANY_MAX};
    assert!(WaitAny::supported(), "Linux 6.18 has futex_waitv");
    let words: Vec<WakeRef> = (0..3).map(|_| WakeRef::local()).collect();
    for w in &words {
        w.announce_sleep();
    }
    // The last word's doorbell rings after the waiter has (very likely) gone to sleep.
    let doorbell = SleepNotifier::new(words[2].clone(), FutexSignal::new(), SpinPolicy::none());
    let waiter_words = words.clone();
    let started = Instant::now();
    let waiter = std::thread::spawn(move || {
        let mut set = WaitAny::new();
        // A generous bound: only the doorbell ends this wait in time.
        set.wait(
            waiter_words.iter().map(|w| &**w),
            Some(Duration::from_secs(20)),
        )
        .unwrap();
        started.elapsed()
    });
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(doorbell.notify().unwrap(), Notified::Sent);
    let waited = within_10s("joining the waiter", move || waiter.join().unwrap());
    assert!(
        waited < Duration::from_secs(10),
        "woken by the doorbell, not the 20 s timeout ({waited:?})"
    );
    assert!(!words[2].is_sleeping(), "the doorbell claimed its word");
    assert!(words[0].is_sleeping() && words[1].is_sleeping());

    // A word no longer sleeping: no sleep at all.
    let mut set = WaitAny::new();
    let t = Instant::now();
    set.wait(words.iter().map(|w| &**w), Some(Duration::from_secs(20)))
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(10));

    // All asleep and nobody rings: the timeout ends it.
    words[2].announce_sleep();
    let t = Instant::now();
    set.wait(words.iter().map(|w| &**w), Some(Duration::from_millis(30)))
        .unwrap();
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(30) && waited < Duration::from_secs(10),
        "{waited:?}"
    );

    let err = set.wait([], None).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let many: Vec<WakeRef> = (0..=WAIT_ANY_MAX).map(|_| WakeRef::local()).collect();
    let err = set.wait(many.iter().map(|w| &**w), None).unwrap_err();
    assert_eq!(
        word_count(&err),
        WordCount {
            given: 129,
            max: 128
        },
        "{err}"
    );
}

/// A `SleepSet` sleeps on its words (none, one: a plain futex wait, two: futex_waitv) and its
/// alarm wakes it from another thread in each case; a peer's doorbell on a word wakes it too.
#[test]
fn a_sleep_set_wakes_on_its_alarm_and_its_words() {
    use subring_planes::interrupt::SleepSet;
    for n in [0usize, 1, 2] {
        let words: Vec<WakeRef> = (0..n).map(|_| WakeRef::local()).collect();
        let mut set = SleepSet::new();
        set.set_words(words.clone()).unwrap();
        let alarm = set.alarm();
        let sleeper = std::thread::spawn(move || {
            for w in &words {
                w.announce_sleep();
            }
            let t = Instant::now();
            let raised = set.sleep(Some(Duration::from_secs(20))).unwrap();
            for w in &words {
                w.cancel_sleep();
            }
            (raised, t.elapsed(), set)
        });
        std::thread::sleep(Duration::from_millis(20));
        alarm.raise().unwrap();
        let (raised, waited, set) =
            within_10s("the alarmed sleeper", move || sleeper.join().unwrap());
        assert!(raised, "{n} words: woken by the alarm");
        assert!(waited < Duration::from_secs(10), "{n} words: {waited:?}");
        assert!(alarm.is_raised());
        set.lower();
        assert!(!alarm.is_raised());
    }

    // A peer's futex doorbell on the second of two words.
    let words: Vec<WakeRef> = (0..2).map(|_| WakeRef::local()).collect();
    let mut set = SleepSet::new();
    set.set_words(words.clone()).unwrap();
    let doorbell = SleepNotifier::new(words[1].clone(), FutexSignal::new(), SpinPolicy::none());
    // Announced before the sleeper starts, so the doorbell finds it "sleeping" whenever it
    // rings (before or after the sleeper blocks).
    for w in &words {
        w.announce_sleep();
    }
    let sleeper = std::thread::spawn(move || {
        let raised = set.sleep(Some(Duration::from_secs(20))).unwrap();
        (raised, words[1].is_sleeping())
    });
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(doorbell.notify().unwrap(), Notified::Sent);
    let (raised, still) = within_10s("the rung sleeper", move || sleeper.join().unwrap());
    assert!(!raised && !still, "woken by the doorbell, not the alarm");

    let too_many = (0..129).map(|_| WakeRef::local()).collect();
    let err = SleepSet::new().set_words(too_many).unwrap_err();
    assert_eq!(
        word_count(&err),
        WordCount {
            given: 129,
            max: 128
        },
        "{err}"
    );
}

/// Waits (at most 5 s) until thread `tid` of this process is blocked in a futex system call.
fn until_in_futex(tid: libc::pid_t, what: &str) {
    let path = format!("/proc/self/task/{tid}/syscall");
    let start = Instant::now();
    loop {
        let line = std::fs::read_to_string(&path).unwrap_or_default();
        let nr: Option<libc::c_long> = line.split_whitespace().next().and_then(|n| n.parse().ok());
        if nr == Some(libc::SYS_futex) || nr == Some(libc::SYS_futex_waitv) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: not in a futex wait after 5 s ({line:?})"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A peer that sets its word back to "awake" while the set sleeps on it (or dies between
/// claiming it and waking it) leaves `raise` nothing to claim, and the sleeper sleeps on with
/// the alarm raised; `wake_all` wakes it whatever its words say, even with threads of the
/// peer's queued on the word ahead of it (a wake of one would wake one of theirs).
#[test]
fn wake_all_wakes_a_sleeper_whose_peer_cleared_its_word() {
    use subring_planes::interrupt::SleepSet;
    const QUEUED_AHEAD: usize = 8;
    for n in [1usize, 2] {
        let words: Vec<WakeRef> = (0..n).map(|_| WakeRef::local()).collect();
        let mut set = SleepSet::new();
        set.set_words(words.clone()).unwrap();
        let alarm = set.alarm();
        // The peer's threads, waiting on its word while it says "awake" (0), queued first.
        let stop = std::sync::Arc::new(AtomicU32::new(0));
        let (word, _) = words[0].futex_wait_target();
        let word = word as usize;
        let ahead: Vec<_> = (0..QUEUED_AHEAD)
            .map(|_| {
                let (stop, (tx, rx)) = (stop.clone(), std::sync::mpsc::channel());
                let t = std::thread::spawn(move || {
                    // SAFETY: gettid has no preconditions.
                    tx.send(unsafe { libc::gettid() }).unwrap();
                    while stop.load(Ordering::Acquire) == 0 {
                        // SAFETY: a FUTEX_WAIT on a live word (the test's `words` outlive the
                        // thread, joined below), with a timeout.
                        unsafe {
                            let ts = libc::timespec {
                                tv_sec: 1,
                                tv_nsec: 0,
                            };
                            libc::syscall(libc::SYS_futex, word, libc::FUTEX_WAIT, 0, &ts);
                        }
                    }
                });
                until_in_futex(rx.recv().unwrap(), "a peer thread");
                t
            })
            .collect();
        for w in &words {
            w.announce_sleep();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() }).unwrap();
            let raised = set.sleep(Some(Duration::from_secs(20))).unwrap();
            (raised, set)
        });
        until_in_futex(rx.recv().unwrap(), "the sleeper");
        for w in &words {
            w.cancel_sleep(); // the peer's store: "awake", and no wake-up
        }
        alarm.raise().unwrap();
        let start = Instant::now();
        let mut retries = 0;
        while !sleeper.is_finished() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{n} words: the sleeper slept on through {retries} wake_all calls"
            );
            std::thread::sleep(Duration::from_millis(10));
            alarm.wake_all().unwrap();
            retries += 1;
        }
        let (raised, set) = sleeper.join().unwrap();
        assert!(raised, "{n} words: woken with the alarm raised");
        // One call reaches it (a second may come before the loop sees it finished); a wake of
        // one waiter per word would have taken one call per thread queued ahead.
        assert!(
            retries <= 2,
            "{n} words: {retries} wake_all calls, with {QUEUED_AHEAD} threads queued ahead"
        );
        set.lower();
        stop.store(1, Ordering::Release);
        // SAFETY: a FUTEX_WAKE of a live word.
        unsafe { libc::syscall(libc::SYS_futex, word, libc::FUTEX_WAKE, i32::MAX) };
        for t in ahead {
            t.join().unwrap();
        }
    }
}

/// The word count a refused many-word wait names.
fn word_count(e: &std::io::Error) -> WordCount {
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    *e.get_ref()
        .and_then(|e| e.downcast_ref::<WordCount>())
        .unwrap_or_else(|| panic!("a WordCount inside {e}"))
}
