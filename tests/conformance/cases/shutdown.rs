//! Dropping the submitting side mid-flight.

use super::super::*;

/// Dropping the submitting side with work completed, in flight, held back and staged returns
/// promptly, and the subsystem side ends cleanly having served what was pushed.
pub(crate) fn clean_shutdown<T: Transport>() {
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
