//! Sleeping on several words at once: two rings, and a sleep set with an alarm.

use super::*;

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
                if broken {
                    set.sleep_ignoring_alarm_for_loom(None).unwrap();
                } else {
                    set.sleep(None).unwrap();
                }
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

/// Four threads, two of them looping (the sleeper and the retrying raiser): at 5 preemptions
/// the model took over six minutes.
const CLEARING_PEER_PREEMPTIONS: usize = 3;

/// A peer that sets its word back to "awake" while the service sleeps on it (a hostile store,
/// or a peer that died between claiming its word and waking it), then to "sleeping" again: the
/// alarm's `raise` may find nothing to claim and wake nobody, or wake the word before the
/// sleeper's wait begins. The raiser calls `wake_all` while the alarm stays raised (the shm
/// server's control thread does, every `ALARM_RETRY`); the sleeper must see the alarm.
/// Without the retry (`retry` false), it sleeps on. (The modelled `FUTEX_WAKE` reaches every
/// waiter: that `wake_all` wakes them all on the real kernel, where a wake of one would reach
/// the first queued, is the planes `notify` test's.)
fn alarm_beside_a_peer_that_clears_its_word(retry: bool) {
    model_bounded(CLEARING_PEER_PREEMPTIONS, move || {
        let word = WakeRef::local();
        let mut set = SleepSet::new();
        set.set_words(vec![word.clone()]).unwrap();
        let alarm = set.alarm();
        let peer = thread::spawn({
            let word = word.clone();
            move || {
                word.cancel_sleep(); // the peer's store of "awake"
                word.announce_sleep(); // and of "sleeping"
            }
        });
        let raiser = thread::spawn(move || {
            alarm.raise().unwrap();
            while retry && alarm.is_raised() {
                alarm.wake_all().unwrap();
                thread::yield_now();
            }
        });
        loop {
            word.announce_sleep();
            let raised = set.sleep(None).unwrap();
            word.cancel_sleep();
            if raised {
                set.lower();
                break;
            }
        }
        peer.join().unwrap();
        raiser.join().unwrap();
    });
}

#[test]
fn an_alarm_retried_with_wake_all_reaches_a_sleeper_whose_peer_cleared_its_word() {
    alarm_beside_a_peer_that_clears_its_word(true);
}

/// Negative control: `raise` alone. The peer clears its word after the sleeper entered its
/// wait and before the alarm looks at it; the alarm claims nothing, and the sleeper waits for
/// ever (the modelled futex waits by yielding).
#[test]
#[should_panic(expected = "maximum number of branches")]
fn negative_control_an_alarm_raised_once_beside_a_peer_that_clears_its_word_is_caught() {
    alarm_beside_a_peer_that_clears_its_word(false);
}

/// The shm server's futex sleep (transports/shm/src/futex_sleep.rs), its two hand-offs
/// rewritten over the same planes primitives. The control thread, each time its epoll set has
/// events (here: twice), raises the sleep set's alarm and waits on the ack word until the main
/// thread has taken them (the epoll set is level-triggered: polling it again before that would
/// report the same events at once). The main thread sleeps in the set and, on the alarm, takes
/// the events (`FutexSleep::take`): it lowers the alarm, then notifies the ack word. `broken`
/// swaps those two steps.
fn futex_server_handoff(ack_before_lowering: bool) {
    model_bounded(SLEEP_SET_PREEMPTIONS, move || {
        let mut set = SleepSet::new();
        let alarm = set.alarm();
        let ack_word = WakeRef::local();
        let ack_wait = SleepNotifier::new(ack_word.clone(), FutexSignal::new(), SpinPolicy::none());
        let ack = SleepNotifier::new(ack_word, FutexSignal::new(), SpinPolicy::none());
        let control = thread::spawn(move || {
            for _ in 0..2 {
                alarm.raise().unwrap();
                ack_wait
                    .wait_until(&mut || !alarm.is_raised(), None)
                    .unwrap();
            }
        });
        for _ in 0..2 {
            while !set.sleep(None).unwrap() {}
            if ack_before_lowering {
                ack.notify().unwrap();
                set.lower();
            } else {
                set.lower();
                ack.notify().unwrap();
            }
        }
        control.join().unwrap();
    });
}

#[test]
fn the_futex_servers_control_and_main_threads_hand_off() {
    futex_server_handoff(false);
}

/// Negative control: acknowledging before lowering the alarm lets the control thread wake,
/// still see the alarm raised, and sleep again; the lowering that follows wakes nobody, and
/// both threads wait for ever (the modelled futex waits by yielding).
#[test]
#[should_panic(expected = "maximum number of branches")]
fn negative_control_acknowledging_before_lowering_is_caught() {
    futex_server_handoff(true);
}

const ARMED_WAIT_PREEMPTIONS: usize = 3;

/// A server sleeping in epoll that waits on a client's futex doorbell through io_uring
/// (subring-shm's kick waits): it arms a `FUTEX_WAIT` on the ring's word and keeps it armed
/// across its sleeps until the wait completes. Here something else (another thread's event)
/// wakes it once while its wait stays armed: it cancels its announcement, takes what the ring
/// holds, announces again, re-checks the ring and, its wait still pending, sleeps on it without
/// arming another. A completed wait is reaped before the next sleep, and a new one armed. A
/// producer pushes two entries, each followed by its doorbell; both must be taken.
fn armed_across_sleeps(recheck: bool) {
    model_bounded(ARMED_WAIT_PREEMPTIONS, move || {
        let (mut tx, mut rx) = Ring::<u32>::with_capacity(4).unwrap();
        let word = rx.consumer_wake();
        let event = Arc::new(loom::sync::atomic::AtomicU32::new(0));
        let poker = thread::spawn({
            let event = event.clone();
            move || event.store(1, Ordering::Release)
        });
        let producer = thread::spawn(move || {
            let doorbell =
                SleepNotifier::new(tx.consumer_wake(), FutexSignal::new(), SpinPolicy::none());
            for v in 0..2 {
                tx.push(v).unwrap();
                doorbell.notify().unwrap();
            }
        });
        let (mut got, mut armed, mut evented) = (0, None, false);
        while got < 2 {
            word.announce_sleep();
            if !(recheck && rx.has_entries().unwrap()) {
                // Reaped: a wait that completed is armed no more.
                if armed.is_some_and(|a| word.loom_armed_wait_done(a)) {
                    armed = None;
                }
                if armed.is_none() {
                    armed = word.loom_arm_wait();
                }
                // `epoll_wait`: until the armed wait completes, or the other event comes (a
                // wait that completed at once, the word no longer "sleeping", is no sleep).
                if let Some(a) = armed {
                    loop {
                        if word.loom_armed_wait_done(a) {
                            armed = None;
                            break;
                        }
                        if !evented && event.load(Ordering::Acquire) != 0 {
                            evented = true;
                            break;
                        }
                        thread::yield_now();
                    }
                }
            }
            word.cancel_sleep();
            while rx.pop().unwrap().is_some() {
                got += 1;
            }
        }
        producer.join().unwrap();
        poker.join().unwrap();
    });
}

#[test]
fn a_wait_armed_across_sleeps_loses_no_wakeup() {
    armed_across_sleeps(true);
}

/// Negative control: a server that does not re-check its ring after announcing sleep sleeps
/// on its armed wait through an entry whose doorbell was suppressed.
#[test]
#[should_panic(expected = "maximum number of branches")]
fn negative_control_a_wait_armed_across_sleeps_without_a_recheck_is_caught() {
    armed_across_sleeps(false);
}
