//! Queue pairs between two threads: round trips in every notify mode, ordering,
//! back-pressure, close, modes both sides must agree on, and the doorbell and completion fds in
//! an event loop.
#![cfg(not(loom))]
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use subring_planes::control::Doorbell;
use subring_planes::interrupt::{EventFdSignal, NotifyMode, SleepNotifier, SpinPolicy, WakeRef};
use subring_planes::pair::{in_process, PairConfig};
use subring_planes::queue::{Completer, QueueError, SetupError, Submitter};

const LONG: Option<Duration> = Some(Duration::from_secs(30));

/// Round trips through an in-process pair in `mode`, checking every completion.
fn round_trips(mode: NotifyMode, n: u64) {
    let config = PairConfig::default().with_capacity(64).with_mode(mode);
    let (mut app, mut service) = in_process::<u64, u64>(&config).unwrap();
    let server = std::thread::spawn(move || {
        service.run(|x| x.wrapping_mul(3) + 1, Some(Duration::from_secs(60)))?;
        Ok::<_, QueueError>(service.stats())
    });
    for i in 0..n {
        app.push(i).unwrap();
        app.submit().unwrap();
        app.wait(LONG).unwrap();
        assert_eq!(app.reap().unwrap(), Some(i * 3 + 1), "{mode}");
    }
    let doorbells = app.doorbell_stats();
    let interrupts = app.notify_stats();
    drop(app);
    let (kick, call) = server.join().unwrap().unwrap();
    assert_eq!(
        doorbells.rung + doorbells.skipped,
        n,
        "{mode}: one doorbell per submit"
    );
    assert_eq!(
        kick.sent + kick.suppressed,
        0,
        "the service never notifies on the kick word"
    );
    assert_eq!(
        call.sent + call.suppressed,
        n,
        "{mode}: one notification per flush"
    );
    if mode == NotifyMode::Spin {
        assert_eq!(
            doorbells.rung + call.sent,
            0,
            "spin mode makes no wake-up syscalls"
        );
        assert_eq!(interrupts.sleeps + kick.sleeps, 0);
    } else {
        // Every wake-up sent claims an announced sleep on the other side. An announced sleep
        // need not block: the waiter re-checks after announcing, and the futex/eventfd wait
        // returns at once if the wake-up came first, so compare with announcements, not with
        // `sleeps` (which a wake-up racing the announcement can leave one short). A wait can
        // announce more than once (a late wake-up meant for the previous wait ends its block
        // early, and it announces again), so count announcements, not waits.
        assert!(
            call.sent <= interrupts.announced,
            "{mode}: {call:?} vs {interrupts:?}"
        );
        assert!(
            doorbells.rung <= kick.announced + 1,
            "{mode}: {doorbells:?} vs {kick:?}"
        );
    }
}

#[test]
fn round_trips_in_every_mode() {
    for mode in NotifyMode::ALL {
        round_trips(mode, 2_000);
    }
}

#[test]
fn batches_and_back_pressure() {
    let config = PairConfig::default()
        .with_capacity(8)
        .with_mode(NotifyMode::EventFd);
    let (mut app, mut service) = in_process::<u32, u32>(&config).unwrap();
    // The service is not running: the submission ring fills, and says so.
    let entries: Vec<u32> = (0..20).collect();
    assert_eq!(app.push_slice(&entries).unwrap(), 8);
    let rejected = app.push(99).unwrap_err();
    assert!(matches!(rejected.error, QueueError::Full));
    assert_eq!(rejected.entry, 99, "a rejected entry comes back");
    assert_eq!(app.space().unwrap(), 0);
    // Staged entries are invisible to the service until submitted.
    assert!(matches!(
        service.wait_requests(Some(Duration::from_millis(10))),
        Err(QueueError::Timeout(_))
    ));
    assert_eq!(app.submit().unwrap(), 8);
    // One doorbell for the batch; the service was not asleep, so it was skipped.
    assert_eq!(app.doorbell_stats().rung + app.doorbell_stats().skipped, 1);
    service.wait_requests(LONG).unwrap();
    assert_eq!(service.serve_ready(&mut |x| x + 1000).unwrap(), 8);
    let mut got = Vec::new();
    app.wait(LONG).unwrap();
    assert_eq!(app.reap_into(&mut got, 100).unwrap(), 8);
    assert_eq!(got, (1000..1008).collect::<Vec<_>>());

    // A full completion ring stops the service taking requests: nothing is dropped.
    assert_eq!(app.push_slice(&entries[..8]).unwrap(), 8);
    app.submit().unwrap();
    assert_eq!(service.serve_ready(&mut |x| x).unwrap(), 8);
    assert_eq!(app.push_slice(&entries[8..16]).unwrap(), 8);
    app.submit().unwrap();
    assert_eq!(
        service.serve_ready(&mut |x| x).unwrap(),
        0,
        "no room for completions"
    );
    assert_eq!(service.completion_space().unwrap(), 0);
    got.clear();
    app.reap_into(&mut got, 100).unwrap();
    assert_eq!(service.serve_ready(&mut |x| x).unwrap(), 8);
    app.reap_into(&mut got, 100).unwrap();
    assert_eq!(got, (0..16).collect::<Vec<_>>());
}

#[test]
fn closing_either_side_is_seen_as_peer_gone() {
    // Service gone: the app's wait fails instead of hanging, after draining what was posted.
    let config = PairConfig::default().with_mode(NotifyMode::Futex);
    let (mut app, mut service) = in_process::<u32, u32>(&config).unwrap();
    app.push(1).unwrap();
    app.submit().unwrap();
    service.wait_requests(LONG).unwrap();
    service.serve_ready(&mut |x| x).unwrap();
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        drop(service);
    });
    app.wait(LONG).unwrap();
    assert_eq!(app.reap().unwrap(), Some(1));
    let start = Instant::now();
    assert!(matches!(app.wait(LONG), Err(QueueError::PeerGone)));
    assert!(start.elapsed() < Duration::from_secs(10));
    closer.join().unwrap();
    assert!(matches!(
        app.push(2).unwrap_err().error,
        QueueError::PeerGone
    ));
    assert!(matches!(app.submit(), Err(QueueError::PeerGone)));

    // App gone while the service sleeps: `run` returns cleanly.
    for mode in NotifyMode::ALL {
        let config = PairConfig::default().with_mode(mode);
        let (app, mut service) = in_process::<u32, u32>(&config).unwrap();
        let server = std::thread::spawn(move || service.run(|x| x, LONG));
        std::thread::sleep(Duration::from_millis(20));
        drop(app);
        server.join().unwrap().unwrap();
    }
}

#[test]
fn completion_fd_works_in_an_event_loop() {
    let config = PairConfig::default().with_mode(NotifyMode::EventFd);
    let (mut app, mut service) = in_process::<u64, u64>(&config).unwrap();
    let server = std::thread::spawn(move || service.run(|x| x + 1, LONG));
    for i in 0..100 {
        app.push(i).unwrap();
        app.submit().unwrap();
        let mut got = None;
        while got.is_none() {
            if !app.arm().unwrap() {
                let fd = app
                    .completion_fd()
                    .expect("eventfd mode has a completion fd");
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                let ready = poll(&mut fds, PollTimeout::from(10_000u16)).unwrap();
                assert_eq!(ready, 1, "completion eventfd never became readable");
                app.disarm().unwrap();
            }
            got = app.reap().unwrap();
        }
        assert_eq!(got, Some(i + 1));
    }
    drop(app);
    server.join().unwrap().unwrap();
}

#[test]
fn doorbell_trait_counts() {
    use subring_planes::control::{NotifierDoorbell, Rung};
    let word = WakeRef::local();
    let mut bell = NotifierDoorbell::new(SleepNotifier::new(
        word.clone(),
        EventFdSignal::new().unwrap(),
        SpinPolicy::none(),
    ));
    assert_eq!(bell.ring().unwrap(), Rung::Skipped);
    word.announce_sleep();
    assert_eq!(bell.ring().unwrap(), Rung::Rang);
    assert_eq!(bell.stats().rung, 1);
    assert_eq!(bell.stats().skipped, 1);
}

#[test]
fn both_sides_must_agree_on_notify_modes() {
    use std::sync::Arc;
    use subring_planes::data::{Region, RegionOptions};
    use subring_planes::pair::{create, AppSide, PairLayout, PairSignals};
    let spin = PairConfig::default().with_mode(NotifyMode::Spin);
    let futex = PairConfig::default().with_mode(NotifyMode::Futex);
    let layout = PairLayout::of::<u64, u64>(&spin).unwrap();
    let second = layout.size.next_multiple_of(4096);
    let region = Arc::new(Region::memfd("modes", 2 * second, RegionOptions::new()).unwrap());
    create::<u64, u64>(&region, 0, &futex).unwrap();
    // An app that would spin (and so never wake a sleeping service) is refused at attach.
    let err =
        AppSide::<u64, u64>::attach(region.clone(), 0, &spin, PairSignals::default()).unwrap_err();
    let QueueError::Setup(setup) = &err else {
        panic!("not a setup error: {err}")
    };
    assert!(
        matches!(
            **setup,
            SetupError::ModeMismatch {
                offset: 0,
                direction: "kick",
                asked: NotifyMode::Spin,
                ..
            }
        ),
        "{err}"
    );
    // Where no pair was created, attaching says so.
    let err = AppSide::<u64, u64>::attach(region.clone(), second, &futex, PairSignals::default())
        .unwrap_err();
    assert!(
        matches!(&err, QueueError::Setup(s) if matches!(**s, SetupError::NoPair { offset, magic: 0, .. } if offset == second)),
        "{err}"
    );
    AppSide::<u64, u64>::attach(region, 0, &futex, PairSignals::default()).unwrap();
}

#[test]
fn kick_fd_works_in_an_event_loop() {
    let config = PairConfig::default().with_mode(NotifyMode::EventFd);
    let (mut app, mut service) = in_process::<u64, u64>(&config).unwrap();
    let client = std::thread::spawn(move || {
        for i in 0..50 {
            app.push(i).unwrap();
            app.submit().unwrap();
            app.wait(LONG).unwrap();
            assert_eq!(app.reap().unwrap(), Some(i * 2));
        }
    });
    let mut served = 0;
    while served < 50 {
        if !service.arm().unwrap() {
            let fd = service.kick_fd().expect("eventfd mode has a kick fd");
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            assert_eq!(
                poll(&mut fds, PollTimeout::from(10_000u16)).unwrap(),
                1,
                "kick never fired"
            );
            service.disarm().unwrap();
        }
        served += service.serve_ready(&mut |x| x * 2).unwrap();
    }
    client.join().unwrap();
    assert!(
        service.stats().0.sleeps == 0,
        "the service waited in poll(2), not in wait_until"
    );
}

#[test]
fn staged_entries_are_published_when_a_side_drops() {
    let config = PairConfig::default().with_mode(NotifyMode::Futex);
    let (mut app, mut service) = in_process::<u32, u32>(&config).unwrap();
    app.push(1).unwrap();
    app.push(2).unwrap();
    drop(app); // never submitted: dropping publishes, then closes
    let mut got = Vec::new();
    while let Ok(()) = service.wait_requests(LONG) {
        while let Some(x) = service.pop_request().unwrap() {
            got.push(x);
        }
    }
    assert_eq!(got, [1, 2]);
    assert!(service.app_closed());
}

#[test]
fn enormous_timeouts_mean_no_limit() {
    let config = PairConfig::default().with_mode(NotifyMode::Futex);
    let (mut app, mut service) = in_process::<u32, u32>(&config).unwrap();
    let server = std::thread::spawn(move || service.run(|x| x, Some(Duration::MAX)));
    app.push(5).unwrap();
    app.submit().unwrap();
    app.wait(Some(Duration::MAX)).unwrap();
    assert_eq!(app.reap().unwrap(), Some(5));
    drop(app);
    server.join().unwrap().unwrap();
}
