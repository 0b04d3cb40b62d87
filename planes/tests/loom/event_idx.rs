//! Event-idx suppression: a waiter that sleeps until a given entry is published, and a
//! notifier that wakes it only for the publish that includes that entry.

use super::*;

/// Three entries published one at a time through a ring of 4 whose indices start at `start`;
/// the waiter waits for the first two at once (sleeping until entry `start + 1`), then for the
/// third. Each publish is notified with the range it covered. A lost wake-up is a deadlock
/// (the eventfd model; over the futex model, an endless wait); a wake-up for an entry the
/// waiter did not wait for is counted, and there must be none: at most one wake-up per wait.
fn batch_waits<S: Signal + Clone + 'static, B: Breakage, P: Publication>(
    signal: fn() -> S,
    start: u32,
) {
    model_bounded(EVENT_IDX_PREEMPTIONS, move || {
        let layout = RingLayout::of::<u32, P>(4).unwrap();
        let region = Arc::new(Region::anonymous(layout.size, RegionOptions::new()).unwrap());
        let (mut tx, mut rx) = Ring::<u32, P>::create_at_index(region, 0, 4, start)
            .unwrap()
            .split()
            .unwrap();
        let signal = signal();
        let notifier = SleepNotifier::<S, B>::with_breakage(
            tx.consumer_wake(),
            signal.clone(),
            SpinPolicy::none(),
        );
        let waiter = SleepNotifier::new(rx.consumer_wake(), signal, SpinPolicy::none());
        let producer = thread::spawn(move || {
            for v in [1, 2, 3] {
                let old = tx.published();
                tx.push(v).unwrap();
                notifier.notify_published(old, tx.published()).unwrap();
            }
            notifier.stats().sent
        });
        for (n, expected) in [(2, &[1, 2][..]), (1, &[3][..])] {
            let event = rx.event_for(n);
            waiter
                .wait_until_entry(event, &mut || rx.available_up_to(n).unwrap() >= n, None)
                .unwrap();
            for &v in expected {
                assert_eq!(rx.pop().unwrap(), Some(v));
            }
        }
        let sent = producer.join().unwrap();
        assert!(
            sent <= 2,
            "woken for an entry nobody waited for ({sent} wake-ups, 2 waits)"
        );
    });
}

/// Preemption bound of the event-idx models (a waiter and a producer of three entries):
/// about 10 s each, where CI's bound of 10 takes three minutes.
const EVENT_IDX_PREEMPTIONS: usize = 6;

fn eventfd() -> EventFdSignal {
    EventFdSignal::new().unwrap()
}

#[test]
fn batch_waits_lose_no_wakeup_and_take_one_per_batch() {
    batch_waits::<_, Sound, Stamped>(eventfd, 0);
}

/// The same over the modelled futex, whose wait blocks while the word holds the waiter's
/// announcement ("sleeping until entry N" here, not plain "sleeping").
/// The same over an indexed ring, whose consumer goes by `tail` (the queue pair's rings, which
/// the other models use, are stamped).
#[test]
fn batch_waits_on_an_indexed_ring_lose_no_wakeup() {
    batch_waits::<_, Sound, Indexed>(eventfd, 0);
}

#[test]
fn batch_waits_over_the_futex_lose_no_wakeup() {
    batch_waits::<_, Sound, Stamped>(FutexSignal::new, 0);
}

/// The same across the indices' wrap: entries `u32::MAX - 1`, `u32::MAX` and 0.
#[test]
fn batch_waits_across_the_index_wrap() {
    batch_waits::<_, Sound, Stamped>(eventfd, u32::MAX - 1);
}

/// Negative control: event-idx's test off by one (a publish of `old..new` taken to cover
/// `old + 1..=new`): the publish of the entry the waiter sleeps until does not wake it.
#[test]
#[should_panic(expected = "deadlock")]
fn negative_control_event_idx_off_by_one_is_caught() {
    batch_waits::<_, breakage::EventIdxOffByOne, Stamped>(eventfd, 0);
}
