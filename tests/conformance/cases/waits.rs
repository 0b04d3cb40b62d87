//! Wake-ups and timeouts in every notify mode.

use super::super::*;

/// In every mode, a waiter blocked in `wait(Some(..))` wakes when a held-back completion
/// arrives.
pub(crate) fn wake_ups<T: Transport>() {
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
pub(crate) fn timeouts<T: Transport>() {
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
        // `wait_reap` keeps the same bound and says the same.
        let start = Instant::now();
        let r = q.wait_reap(SHORT);
        let took = start.elapsed();
        assert!(
            matches!(r, Err(QueueError::Timeout(_))),
            "{what}: an idle wait_reap returned {r:?} instead of timing out"
        );
        assert!(
            took + Duration::from_millis(1) >= SHORT && took < PROMPT,
            "{what}: a {SHORT:?} wait_reap took {took:?}"
        );

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
        // `wait_reap` waits out the rest of the hold and hands over the completion.
        let c = q
            .wait_reap(WAIT)
            .unwrap_or_else(|e| panic!("{what}: wait_reap of the held request: {e}"));
        let token = fx
            .check(&mut q, c)
            .unwrap_or_else(|e| panic!("{what}: bad completion: {e}"));
        assert_eq!(token, 1, "{what}");
        ledger.complete(token);

        // And the queue still works.
        let entry = fx.request(&mut q, 2);
        push_ok::<T>(&mut q, entry, &what);
        ledger.accept(2);
        assert_eq!(q.submit().unwrap(), 1);
        drain(&mut fx, &mut q, &mut ledger, &what);
        assert_quiet::<T>(&mut q, &what);
    }
}
