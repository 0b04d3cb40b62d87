//! Ordering, back-pressure and batching: what every queue promises about its entries.

use super::super::*;

/// A stream of requests in bursts of 1..=7, submitted per burst, never more in flight than the
/// ring holds: every token comes back exactly once with the right result, and in order where
/// the transport promises it.
pub(crate) fn ordering<T: Transport>() {
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
pub(crate) fn back_pressure<T: Transport>() {
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
pub(crate) fn batch_submit_and_reap<T: Transport>() {
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

/// `push_slice` stages as many entries as fit and says how many (transports with `Clone`
/// entries only: the trait requires it).
pub(crate) fn push_slice_partial<T: Transport>()
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
