//! A full ring sleeps: a side that finds the ring it produces into full waits on the ring's
//! producer word, and the other side's reaping (or taking) wakes it, in every mode that sleeps.
#![cfg(not(loom))]
use std::time::{Duration, Instant};

use subring_planes::interrupt::NotifyMode;
use subring_planes::pair::{in_process, PairConfig};
use subring_planes::queue::{Completer, QueueError, Submitter};

const LONG: Duration = Duration::from_secs(30);
const SLEEPING_MODES: [NotifyMode; 3] =
    [NotifyMode::Futex, NotifyMode::EventFd, NotifyMode::Adaptive];

/// The service answers 16 requests through a completion ring of 4 while the app does not
/// reap for 200 ms: the service sleeps on the full ring (no polling: a handful of sleeps, not
/// one per millisecond) and every completion arrives once the app reaps.
#[test]
fn a_service_with_a_full_completion_ring_sleeps_until_the_app_reaps() {
    for mode in SLEEPING_MODES {
        let config = PairConfig {
            sq_capacity: 64,
            cq_capacity: 4,
            ..PairConfig::default().with_mode(mode)
        };
        let (mut app, mut service) = in_process::<u64, u64>(&config).unwrap();
        let client = std::thread::spawn(move || {
            for i in 0..16 {
                app.push(i).unwrap();
            }
            app.submit().unwrap();
            std::thread::sleep(Duration::from_millis(200));
            for i in 0..16 {
                assert_eq!(app.wait_reap(LONG).unwrap(), i + 1, "{mode}");
            }
            app.room_stats().1
        });
        service.run(|x| x + 1, Some(LONG)).unwrap();
        let (room, _) = service.room_stats();
        let woken_by_app = client.join().unwrap();
        eprintln!("{mode}: the service's waits for room {room:?}; the app's bell {woken_by_app:?}");
        assert!(
            room.waits >= 1,
            "{mode}: the service never found the ring full"
        );
        assert!(
            room.sleeps >= 1,
            "{mode}: the service did not sleep on the full ring"
        );
        // One sleep per completion at most (each reap may wake it for one more); a service
        // that polled through the 200 ms would have slept or looked a hundred times.
        assert!(room.sleeps <= 16, "{mode}: {} sleeps", room.sleeps);
        assert!(
            woken_by_app.sent >= 1,
            "{mode}: the app never woke the service"
        );
    }
}

/// The app fills a submission ring of 2 while the service has not started taking: the third
/// push is refused as full, `wait_space` sleeps until the service takes, and every request is
/// answered in order.
#[test]
fn wait_space_sleeps_until_the_service_takes() {
    for mode in SLEEPING_MODES.into_iter().chain([NotifyMode::Spin]) {
        let config = PairConfig {
            sq_capacity: 2,
            cq_capacity: 64,
            ..PairConfig::default().with_mode(mode)
        };
        let (mut app, mut service) = in_process::<u64, u64>(&config).unwrap();
        let server = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            service.run(|x| x * 10, Some(LONG))
        });
        app.push(1).unwrap();
        app.push(2).unwrap();
        let refused = app.push(3).unwrap_err();
        assert!(matches!(refused.error, QueueError::Full), "{mode}");
        let start = Instant::now();
        app.wait_space(Some(LONG)).unwrap();
        let waited = start.elapsed();
        app.push(refused.entry).unwrap();
        app.submit().unwrap();
        for i in 1..=3 {
            assert_eq!(app.wait_reap(LONG).unwrap(), i * 10, "{mode}");
        }
        let (room, _) = app.room_stats();
        eprintln!("{mode}: waited {waited:?} for space; {room:?}");
        assert_eq!(room.waits, 1, "{mode}");
        if mode != NotifyMode::Spin {
            assert!(room.sleeps >= 1, "{mode}: the app did not sleep for space");
        }
        drop(app);
        server.join().unwrap().unwrap();
    }
}

/// A wait for space ends: with a timeout while the service does not take, and with
/// `PeerGone` when the service closes with the ring still full.
#[test]
fn wait_space_times_out_and_sees_the_service_close() {
    for mode in SLEEPING_MODES.into_iter().chain([NotifyMode::Spin]) {
        let config = PairConfig {
            sq_capacity: 1,
            cq_capacity: 1,
            ..PairConfig::default().with_mode(mode)
        };
        let (mut app, service) = in_process::<u64, u64>(&config).unwrap();
        app.push(1).unwrap();
        match app.wait_space(Some(Duration::from_millis(50))) {
            Err(QueueError::Timeout(_)) => {}
            other => panic!("{mode}: a wait for space no one makes gave {other:?}"),
        }
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(service);
        });
        let start = Instant::now();
        match app.wait_space(Some(LONG)) {
            Err(QueueError::PeerGone) => {}
            other => panic!("{mode}: a wait for space on a closed service gave {other:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{mode}");
        closer.join().unwrap();
    }
}

/// Both rings full: the app sleeps for submission room while the service, whose completion
/// ring is full, waits for the app to reap. Neither would move; the service's wait wakes the
/// app, whose wait for space ends with `Full` (reap first), and after the reap everything
/// goes through. The service posts one unsolicited completion after the app went to sleep,
/// as answers to deferred requests would.
#[test]
fn wait_space_ends_with_full_when_only_reaping_can_make_room() {
    for mode in SLEEPING_MODES.into_iter().chain([NotifyMode::Spin]) {
        let config = PairConfig {
            sq_capacity: 2,
            cq_capacity: 1,
            ..PairConfig::default().with_mode(mode)
        };
        let (mut app, mut service) = in_process::<u64, u64>(&config).unwrap();
        let server = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            service.complete(0).unwrap();
            service.flush().unwrap();
            service.run(|x| x * 10, Some(LONG))
        });
        app.push(1).unwrap();
        app.push(2).unwrap();
        let refused = app.push(3).unwrap_err();
        assert!(matches!(refused.error, QueueError::Full), "{mode}");
        let start = Instant::now();
        match app.wait_space(Some(LONG)) {
            Err(QueueError::Full) => {}
            other => panic!("{mode}: a wait for space with both rings full gave {other:?}"),
        }
        let waited = start.elapsed();
        assert!(
            waited < Duration::from_secs(10),
            "{mode}: the app waited {waited:?} to learn it must reap"
        );
        let mut got = Vec::new();
        let mut entry = Some(refused.entry);
        while got.len() < 4 {
            assert!(start.elapsed() < LONG, "{mode}: stuck with {got:?}");
            got.extend(app.reap().unwrap());
            if let Some(e) = entry.take() {
                if let Err(r) = app.push(e) {
                    entry = Some(r.entry);
                    match app.wait_space(Some(LONG)) {
                        Ok(()) | Err(QueueError::Full) => {}
                        Err(e) => panic!("{mode}: {e}"),
                    }
                    continue;
                }
                app.submit().unwrap();
            } else if got.len() < 4 {
                app.wait(Some(LONG)).unwrap();
            }
        }
        assert_eq!(got, [0, 10, 20, 30], "{mode}");
        drop(app);
        server.join().unwrap().unwrap();
    }
}

/// A service that staged completions into a ring they fill, and arms for room in an external
/// event loop without flushing, has them published by the arm: the app can reap them, and its
/// reap is what wakes the service.
#[test]
fn arming_for_room_publishes_what_is_staged() {
    for mode in SLEEPING_MODES {
        let config = PairConfig {
            sq_capacity: 2,
            cq_capacity: 2,
            ..PairConfig::default().with_mode(mode)
        };
        let (mut app, mut service) = in_process::<u64, u64>(&config).unwrap();
        service.complete(1).unwrap();
        service.complete(2).unwrap();
        assert!(
            service.complete(3).is_err(),
            "{mode}: two completions fill the ring"
        );
        assert!(!service.arm_room().unwrap(), "{mode}: no room yet");
        assert_eq!(
            app.reap().unwrap(),
            Some(1),
            "{mode}: staged, not published"
        );
        assert_eq!(app.reap().unwrap(), Some(2), "{mode}");
        service.disarm_room();
        assert!(service.arm_room().unwrap(), "{mode}: room after the reap");
        service.disarm_room();
    }
}
