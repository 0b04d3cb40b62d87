//! The worked example of docs/verification.md: a protocol of your own, written against
//! subring's shim so that the same code runs on std atomics in a normal build and on loom's
//! under `--cfg loom`, modelled with a negative control chosen by a const parameter.
//!
//! The protocol: a one-slot mailbox. The sender writes a value, marks the slot full, and rings
//! the receiver's wake word; the receiver sleeps until the slot is full and reads the value.

use subring_planes::interrupt::{FutexSignal, Notifier, SleepNotifier, SpinPolicy, WakeRef};
use subring_planes::sync::{AtomicU32, AtomicU64, Ordering};

use super::*;

/// The mailbox. `SOUND = false` is the broken variant: the "full" mark is stored Relaxed, so
/// seeing it does not make the value visible.
struct Mailbox<const SOUND: bool> {
    value: AtomicU64,
    full: AtomicU32,
}

impl<const SOUND: bool> Mailbox<SOUND> {
    fn new() -> Self {
        Mailbox {
            value: AtomicU64::new(0),
            full: AtomicU32::new(0),
        }
    }

    /// Sender: write, publish, ring (the ring makes a system call only if the receiver
    /// announced sleep).
    fn send(&self, value: u64, bell: &impl Notifier) {
        self.value.store(value, Ordering::Relaxed);
        let publish = if SOUND {
            Ordering::Release
        } else {
            Ordering::Relaxed
        };
        self.full.store(1, publish);
        bell.notify().unwrap();
    }

    /// Receiver: sleep until full (the notifier announces sleep, re-checks, then blocks), then
    /// read.
    fn recv(&self, waiter: &impl Notifier) -> u64 {
        waiter
            .wait_until(&mut || self.full.load(Ordering::Acquire) == 1, None)
            .unwrap();
        self.value.load(Ordering::Relaxed)
    }
}

/// The model: every interleaving of one send and one receive, the receiver sleeping on the
/// modelled futex. A lost wake-up would be an endless wait; a value read before it was written
/// fails the named assertion.
fn mailbox<const SOUND: bool>() {
    model(|| {
        let mailbox = Arc::new(Mailbox::<SOUND>::new());
        let word = WakeRef::local();
        let bell = SleepNotifier::new(word.clone(), FutexSignal::new(), SpinPolicy::none());
        let waiter = SleepNotifier::new(word, FutexSignal::new(), SpinPolicy::none());
        let sender = {
            let mailbox = mailbox.clone();
            thread::spawn(move || mailbox.send(42, &bell))
        };
        let got = mailbox.recv(&waiter);
        assert_eq!(got, 42, "received a value the sender had not written");
        sender.join().unwrap();
    });
}

#[test]
fn guide_mailbox_delivers_its_value() {
    mailbox::<true>();
}

/// Negative control: the Relaxed publish lets the receiver see "full" before the value.
#[test]
#[should_panic(expected = "received a value the sender had not written")]
fn negative_control_guide_mailbox_relaxed_publish_is_caught() {
    mailbox::<false>();
}
