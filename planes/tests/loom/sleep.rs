//! The sleep/wake protocol over the eventfd and the futex, the adaptive spin before it, and the rollback after a failed wake-up.

use super::*;

/// The sleep/wake protocol: the consumer announces sleep and blocks only if, after the fence,
/// the ring is still empty; the producer publishes and wakes only if the consumer announced.
/// A lost wake-up would leave the consumer blocked forever, which loom reports as a deadlock.
/// Two messages, so that the second round also runs against a wake-up left over from the first.
fn sleep_wake<B: Breakage>() {
    two_messages::<_, B>(|| EventFdSignal::new().unwrap(), SpinPolicy::none);
}

/// Two messages over a capacity-2 ring, the waiter sleeping through `signal` after spinning as
/// `spin` says; both sides' notifiers have the breakage `B`.
fn two_messages<S: Signal + Clone + 'static, B: Breakage>(
    signal: fn() -> S,
    spin: fn() -> SpinPolicy,
) {
    model(move || {
        let (mut tx, mut rx) = Ring::<u32>::with_capacity(2).unwrap();
        let signal = signal();
        let notifier = SleepNotifier::<S, B>::with_breakage(
            tx.consumer_wake(),
            signal.clone(),
            SpinPolicy::none(),
        );
        let waiter = SleepNotifier::<S, B>::with_breakage(rx.consumer_wake(), signal, spin());
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
    sleep_wake::<Sound>();
}

/// The same protocol over the futex, as modelled: a `FUTEX_WAIT` returns only after a
/// `FUTEX_WAKE` that came after it checked the word (or at once, if the word no longer says
/// "sleeping"), never because the word changed. One message each way of every interleaving.
fn sleep_wake_futex<B: Breakage>() {
    model(move || {
        let (mut tx, mut rx) = Ring::<u32>::with_capacity(2).unwrap();
        let notifier = SleepNotifier::<_, B>::with_breakage(
            tx.consumer_wake(),
            FutexSignal::new(),
            SpinPolicy::none(),
        );
        let waiter = SleepNotifier::new(rx.consumer_wake(), FutexSignal::new(), SpinPolicy::none());
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
    sleep_wake_futex::<Sound>();
}

/// Negative control: a notifier that claims the sleeper (clears its word) but never calls
/// `FUTEX_WAKE` leaves it asleep. The futex model must catch it (the waiter yields forever);
/// a model that returned as soon as the word changed would not.
#[test]
#[should_panic(expected = "maximum number of branches")]
fn negative_control_claiming_without_waking_is_caught() {
    sleep_wake_futex::<breakage::SkipWake>();
}

/// Negative control: blocking without re-checking the condition after announcing sleep loses
/// the wake-up when the producer published just before the announcement.
#[test]
#[should_panic(expected = "deadlock")]
fn negative_control_lost_wakeup_without_recheck_is_caught() {
    sleep_wake::<breakage::SkipRecheck>();
}

/// Negative control: without the SeqCst fences, the waiter's store of "sleeping" and the
/// notifier's store of `tail` can both be missed by the other side's load (store buffering):
/// the notifier skips the wake and the waiter sleeps on a non-empty ring.
#[test]
#[should_panic(expected = "deadlock")]
fn negative_control_lost_wakeup_without_fences_is_caught() {
    sleep_wake::<breakage::NoFences>();
}

/// The spin-then-sleep path: the waiter spins (an adaptive budget of 2 spins, halved after a
/// spin that failed) before it announces sleep, over the modelled futex; two messages.
///
/// A weak model, and knowingly so: loom's spin hint is a yield, and a yielding thread steps
/// aside until the others block or yield, so the producer nearly always finishes during the
/// spin (about 120 executions, against 60 000 without a spin). With the fences removed it still
/// passes, so it has no negative control of its own: what follows the spin is the same code
/// as in `sleep_wake_no_lost_wakeup` and `futex_sleep_wake_no_lost_wakeup`, whose negative
/// controls cover it.
#[test]
fn adaptive_spin_then_sleep_loses_no_wakeup() {
    two_messages::<_, Sound>(FutexSignal::new, || SpinPolicy::adaptive(2));
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
fn failed_wake_rolls_back<B: Breakage>() {
    model(move || {
        let (mut tx, mut rx) = Ring::<u32>::with_capacity(2).unwrap();
        let signal = FailsFirstWake {
            failed: Arc::new(loom::sync::atomic::AtomicBool::new(false)),
        };
        let notifier = SleepNotifier::<_, B>::with_breakage(
            tx.consumer_wake(),
            signal.clone(),
            SpinPolicy::none(),
        );
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
    failed_wake_rolls_back::<Sound>();
}

/// Negative control: without the rollback the retry finds the word cleared and is suppressed;
/// the waiter sleeps on (the modelled futex waits by yielding: too many branches).
#[test]
#[should_panic(expected = "maximum number of branches")]
fn negative_control_no_rollback_after_a_failed_wake_is_caught() {
    failed_wake_rolls_back::<breakage::SkipRollback>();
}
