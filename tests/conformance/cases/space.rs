//! Waiting for space: a full submission ring is waited on, not polled.

use super::super::*;

/// `wait_space` after a push came back `Full`: with the ring full of staged entries it
/// publishes them and returns once the subsystem has taken one; with the subsystem backed up
/// (its completions unreaped) it ends with `Full` (reap first) or times out, and after
/// reaping it returns (the subsystem, asleep on its full completion ring, is woken by the
/// reap, takes requests, and wakes the waiter); answers owed from before may fill the ring
/// again in between, and then it says `Full` again until they are reaped. In every mode;
/// nothing is lost.
pub(crate) fn wait_space<T: Transport>() {
    let cap = CAP as usize;
    for mode in T::modes() {
        let what = format!("wait_space in {mode:?}");
        let (mut fx, mut q) = T::open(mode, CAP);
        let mut ledger = Ledger::default();

        // Part 1: staged entries fill the ring; waiting publishes them.
        for token in 0..cap as u64 {
            let entry = fx.request(&mut q, token);
            push_ok::<T>(&mut q, entry, &what);
            ledger.accept(token);
        }
        let entry = fx.request(&mut q, cap as u64);
        let entry = push_full::<T>(&mut q, entry, &what);
        q.wait_space(Some(WAIT))
            .unwrap_or_else(|e| panic!("{what}: waiting for space in a staged ring: {e}"));
        assert!(q.space().unwrap() > 0, "{what}: space after wait_space");
        push_ok::<T>(&mut q, entry, &what);
        ledger.accept(cap as u64);
        q.submit().unwrap();
        drain(&mut fx, &mut q, &mut ledger, &what);

        // Part 2: the subsystem backs up (a transport that declares a bound on what it takes
        // unreaped): the wait times out, and one reap ends it.
        if T::outstanding_limit(cap).is_some() {
            let base = 1_000u64;
            let mut token = base;
            let (held_token, held) = loop {
                match push_and_submit(&mut fx, &mut q, &mut ledger, token, &what) {
                    Ok(()) => token += 1,
                    Err(entry) => {
                        token += 1;
                        break (token - 1, entry);
                    }
                }
                assert!(
                    token < base + 8 * cap as u64,
                    "{what}: the ring never filled"
                );
            };
            // The subsystem's completion ring may still be filling: it is backed up once a
            // wait for space times out or says only reaping can help.
            let deadline = Instant::now() + SCENARIO_LIMIT;
            loop {
                match q.wait_space(Some(SHORT)) {
                    Ok(()) => {}
                    Err(QueueError::Timeout(_) | QueueError::Full) => break,
                    Err(e) => panic!("{what}: waiting for space to back up: {e}"),
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: the subsystem never backed up"
                );
                if push_and_submit(&mut fx, &mut q, &mut ledger, token, &what).is_err() {
                    panic!("{what}: a push after wait_space was refused as full");
                }
                token += 1;
            }
            let start = Instant::now();
            assert!(
                reap_ready(&mut fx, &mut q, &mut ledger, &what) > 0,
                "{what}: a backed-up subsystem has completions to reap"
            );
            loop {
                match q.wait_space(Some(WAIT)) {
                    Ok(()) => break,
                    // Owed answers filled the ring again.
                    Err(QueueError::Full) => {
                        reap_ready(&mut fx, &mut q, &mut ledger, &what);
                    }
                    Err(e) => panic!("{what}: waiting for space after a reap: {e}"),
                }
                assert!(
                    start.elapsed() < PROMPT,
                    "{what}: no space {:?} after the first reap",
                    start.elapsed()
                );
            }
            let waited = start.elapsed();
            assert!(
                waited < PROMPT,
                "{what}: space came {waited:?} after the reap"
            );
            push_ok::<T>(&mut q, held, &what);
            ledger.accept(held_token);
            q.submit().unwrap();
            drain(&mut fx, &mut q, &mut ledger, &what);
        }
        assert_quiet::<T>(&mut q, &what);
    }
}

/// Pushes the request for `token` and submits it; hands the entry back if the ring is full.
fn push_and_submit<T: Transport>(
    fx: &mut T,
    q: &mut T::Q,
    ledger: &mut Ledger,
    token: u64,
    what: &str,
) -> Result<(), Entry<T>> {
    let entry = fx.request(q, token);
    match q.push(entry) {
        Ok(()) => {
            ledger.accept(token);
            q.submit().unwrap();
            Ok(())
        }
        Err(Rejected {
            error: QueueError::Full,
            entry,
        }) => Err(entry),
        Err(r) => panic!("{what}: push failed: {}", r.error),
    }
}
