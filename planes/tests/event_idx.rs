//! Event-idx suppression: a waiter sleeps until a given entry is published, and the publishes
//! before it do not wake it; the wrap-around arithmetic; interrupt coalescing on both sides of
//! a queue pair, against the sleeping flag alone; and what a batch wait returns when the batch
//! does not fill.
#![cfg(not(loom))]
use std::time::{Duration, Instant};

use proptest::prelude::*;
use subring_planes::interrupt::{need_event, NotifyMode, WakeWord};
use subring_planes::pair::{in_process, PairConfig};
use subring_planes::queue::{Completer, QueueError, Submitter};

const LONG: Duration = Duration::from_secs(30);
const SLEEPING_MODES: [NotifyMode; 3] =
    [NotifyMode::Futex, NotifyMode::EventFd, NotifyMode::Adaptive];

/// The reference: is `event` among the `len` indices from `old` on, in 64-bit arithmetic
/// over the 32-bit indices' wrap?
fn in_published(event: u32, old: u32, len: u32) -> bool {
    let distance = (u64::from(event) + (1 << 32) - u64::from(old)) % (1 << 32);
    distance < u64::from(len)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]
    /// `need_event` against the reference, near 0, near the wrap and anywhere, for publishes
    /// of up to a ring's largest capacity.
    #[test]
    fn need_event_is_membership_in_the_published_range(
        old in prop_oneof![0u32..64, (u32::MAX - 64)..=u32::MAX, any::<u32>()],
        len in prop_oneof![0u32..8, 0u32..=(1 << 16)],
        delta in prop_oneof![-80i64..80, -(1i64 << 17)..(1i64 << 17)],
    ) {
        let new = old.wrapping_add(len);
        let event = (i64::from(old) + delta).rem_euclid(1 << 32) as u32;
        prop_assert_eq!(need_event(event, new, old), in_published(event, old, len));
    }
}

#[test]
fn need_event_at_the_edges() {
    for old in [0, 1, u32::MAX - 1, u32::MAX, 1 << 31] {
        let new = old.wrapping_add(3);
        assert!(
            !need_event(old.wrapping_sub(1), new, old),
            "{old}: before the range"
        );
        for k in 0..3 {
            assert!(
                need_event(old.wrapping_add(k), new, old),
                "{old}+{k}: in the range"
            );
        }
        assert!(
            !need_event(new, new, old),
            "{old}: the next entry is not published yet"
        );
        assert!(
            !need_event(old, old, old),
            "{old}: an empty publish covers nothing"
        );
    }
}

/// The word's semantics: a waiter sleeping until entry 5 is left asleep by the publishes of
/// entries 3 and 4, and claimed by the publish that includes 5; a plain notification (one
/// that does not know what it published) wakes it at once; a plain sleeper is woken by any
/// publish.
#[test]
fn a_waiter_sleeping_until_an_entry_is_claimed_by_its_publish() {
    let word = WakeWord::new();
    word.announce_sleep_until(5);
    assert!(word.is_sleeping());
    assert!(!word.take_sleeper_published(3, 4), "entry 3 only");
    assert!(!word.take_sleeper_published(4, 5), "entry 4 only");
    assert!(word.is_sleeping(), "still asleep");
    assert!(word.take_sleeper_published(5, 7), "entries 5 and 6");
    assert!(!word.is_sleeping(), "claimed");
    assert!(
        !word.take_sleeper_published(7, 9),
        "nobody sleeps: suppressed"
    );

    word.announce_sleep_until(5);
    assert!(word.take_sleeper(), "a plain notification wakes it");

    word.announce_sleep();
    assert!(
        word.take_sleeper_published(0, 1),
        "a plain sleeper wakes at any publish"
    );

    // Sleeping until an entry that is already behind the publish: not woken (the waiter's
    // re-check sees that entry).
    word.announce_sleep_until(2);
    assert!(!word.take_sleeper_published(10, 12));
    word.cancel_sleep();
    assert!(!word.is_sleeping());
}

/// The completions of 8 requests come one at a time, 2 ms apart, and the app waits for all 8
/// at once. With event-idx the service wakes the app once (when it posts the 8th); with the
/// sleeping flag alone every completion that finds the app asleep wakes it, and it sleeps
/// again until the batch is complete.
#[test]
fn a_batch_of_completions_wakes_the_app_once_with_event_idx() {
    for mode in SLEEPING_MODES {
        let with = completions_one_by_one(mode, true);
        let without = completions_one_by_one(mode, false);
        eprintln!("{mode}: app woken {with} times with event-idx, {without} without");
        assert_eq!(with, 1, "{mode}: one wake-up for the batch with event-idx");
        assert!(
            without >= 2,
            "{mode}: the flag alone wakes the app per completion ({without} wake-ups)"
        );
    }
}

/// Runs 8 requests whose completions the service posts one at a time, 2 ms apart, while the
/// app waits for all 8 at once; returns how many wake-ups the service sent the app.
fn completions_one_by_one(mode: NotifyMode, event_idx: bool) -> u64 {
    let config = PairConfig::default()
        .with_mode(mode)
        .with_event_idx(event_idx);
    let (mut app, mut service) = in_process::<u64, u64>(&config).unwrap();
    assert_eq!(app.event_idx(), event_idx);
    assert_eq!(service.event_idx(), event_idx);
    for i in 0..8 {
        app.push(i).unwrap();
    }
    app.submit().unwrap();
    let server = std::thread::spawn(move || {
        service.wait_requests(Some(LONG)).unwrap();
        let mut answered = 0;
        while answered < 8 {
            let Some(r) = service.pop_request().unwrap() else {
                service.wait_requests(Some(LONG)).unwrap();
                continue;
            };
            std::thread::sleep(Duration::from_millis(2));
            service.complete(r * 10).unwrap();
            service.flush().unwrap();
            answered += 1;
        }
        service
    });
    assert_eq!(app.wait_completions(8, Some(LONG)).unwrap(), 8);
    for i in 0..8 {
        assert_eq!(app.reap().unwrap(), Some(i * 10));
    }
    let service = server.join().unwrap();
    service.stats().1.sent
}

/// The other direction: the app submits 8 requests one at a time, 2 ms apart, and the
/// service waits for all 8 at once ([`ServiceSide::wait_requests_for`]): with event-idx the
/// app's doorbell rings once.
#[test]
fn a_batch_of_requests_wakes_the_service_once_with_event_idx() {
    for mode in SLEEPING_MODES {
        let config = PairConfig::default().with_mode(mode);
        let (mut app, mut service) = in_process::<u64, u64>(&config).unwrap();
        let server = std::thread::spawn(move || {
            let ready = service.wait_requests_for(8, Some(LONG)).unwrap();
            let chunk = service.requests(8).unwrap();
            let got: Vec<u64> = chunk.iter().collect();
            chunk.release_all();
            (ready, got)
        });
        for i in 0..8 {
            std::thread::sleep(Duration::from_millis(2));
            app.push(i).unwrap();
            app.submit().unwrap();
        }
        let (ready, got) = server.join().unwrap();
        assert_eq!(ready, 8, "{mode}");
        assert_eq!(got, (0..8).collect::<Vec<_>>(), "{mode}");
        let rang = app.doorbell_stats();
        eprintln!("{mode}: doorbell {rang:?}");
        assert_eq!(rang.rung, 1, "{mode}: one wake-up for the batch");
    }
}

/// A batch that does not fill: the wait ends at its timeout with what came (or `Timeout` if
/// nothing did), and a service that closes ends it at once (`PeerGone` once nothing is left).
#[test]
fn a_batch_wait_returns_what_came_by_its_timeout_or_the_close() {
    for mode in SLEEPING_MODES {
        let (mut app, mut service) =
            in_process::<u64, u64>(&PairConfig::default().with_mode(mode)).unwrap();
        let short = Duration::from_millis(50);
        assert!(matches!(
            app.wait_completions(4, Some(short)),
            Err(QueueError::Timeout(_))
        ));
        service.complete(1).unwrap();
        service.complete(2).unwrap();
        service.flush().unwrap();
        let start = Instant::now();
        assert_eq!(app.wait_completions(4, Some(short)).unwrap(), 2, "{mode}");
        assert!(
            start.elapsed() >= short,
            "{mode}: waited for the rest until the timeout"
        );
        // More than the ring holds is taken as the ring's capacity.
        assert_eq!(app.wait_completions(usize::MAX, Some(short)).unwrap(), 2);
        assert_eq!(app.reap().unwrap(), Some(1));
        service.complete(3).unwrap();
        service.flush().unwrap();
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(service);
        });
        assert_eq!(
            app.wait_completions(4, Some(LONG)).unwrap(),
            2,
            "{mode}: the close ends the wait"
        );
        closer.join().unwrap();
        assert_eq!(app.reap().unwrap(), Some(2));
        assert_eq!(app.reap().unwrap(), Some(3));
        assert!(matches!(
            app.wait_completions(4, Some(LONG)),
            Err(QueueError::PeerGone)
        ));
    }
}

/// Event-idx is used only if the pair's creator enabled it and the attaching side asks for it.
#[test]
fn event_idx_is_used_only_if_both_sides_ask() {
    use std::sync::Arc;
    use subring_planes::data::{Region, RegionOptions};
    use subring_planes::pair::{AppSide, PairLayout, PairSignals, ServiceSide};
    for (created, asked, used) in [
        (true, true, true),
        (true, false, false),
        (false, true, false),
        (false, false, false),
    ] {
        let created_config = PairConfig::default()
            .with_mode(NotifyMode::Futex)
            .with_event_idx(created);
        let layout = PairLayout::of::<u64, u64>(&created_config).unwrap();
        let region = Arc::new(Region::anonymous(layout.size, RegionOptions::new()).unwrap());
        let service = ServiceSide::<u64, u64>::create(
            region.clone(),
            0,
            &created_config,
            PairSignals::default(),
        )
        .unwrap();
        let app = AppSide::<u64, u64>::attach(
            region,
            0,
            &created_config.clone().with_event_idx(asked),
            PairSignals::default(),
        )
        .unwrap();
        assert_eq!(app.event_idx(), used, "created {created}, asked {asked}");
        assert_eq!(service.event_idx(), created);
    }
}

/// Completions staged with `complete` and published by a batch commit that served nothing
/// (`serve_ready` with no request) still wake a sleeping app: the service notifies whenever
/// its published index moved, not only when the call published. (Before, the app slept until
/// its timeout.)
#[test]
fn completions_published_by_a_batch_commit_wake_the_app() {
    for mode in SLEEPING_MODES {
        for event_idx in [true, false] {
            let config = PairConfig::default()
                .with_mode(mode)
                .with_event_idx(event_idx);
            let (mut app, mut service) = in_process::<u64, u64>(&config).unwrap();
            let server = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                service.complete(7).unwrap();
                assert_eq!(service.serve_ready(&mut |x| x).unwrap(), 0);
                service.flush().unwrap();
                service
            });
            let start = Instant::now();
            assert_eq!(app.wait_completions(1, Some(LONG)).unwrap(), 1, "{mode}");
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{mode}, event-idx {event_idx}: woken only after {:?}",
                start.elapsed()
            );
            assert_eq!(app.reap().unwrap(), Some(7));
            drop(server.join().unwrap());
        }
    }
}
