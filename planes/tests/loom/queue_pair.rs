//! A queue pair end to end: round trip, close, a service declared gone, and full rings that sleep.

use super::*;

/// Preemption bound of the round-trip model (two sides of a pair, each many steps): CI's
/// bound of 10 took about four minutes of the loom step.
const PAIR_ROUND_TRIP_PREEMPTIONS: usize = 6;

/// A queue pair end to end: one request, its completion, then the app closes and the service
/// sees `PeerGone` rather than waiting forever (the close goes through the same protocol).
#[test]
fn pair_round_trip_and_close() {
    model_bounded(PAIR_ROUND_TRIP_PREEMPTIONS, || {
        let config = PairConfig::default()
            .with_capacity(2)
            .with_mode(subring_planes::interrupt::NotifyMode::Futex);
        let (mut app, mut service) = in_process::<u32, u32>(&config).unwrap();
        let server = thread::spawn(move || {
            let mut served = 0;
            loop {
                match service.wait_requests(None) {
                    Ok(()) => {}
                    Err(QueueError::PeerGone) => return served,
                    Err(e) => panic!("service: {e}"),
                }
                served += service.serve_ready(&mut |x: u32| x + 100).unwrap();
            }
        });
        app.push(1).unwrap();
        app.submit().unwrap();
        app.wait(None).unwrap();
        assert_eq!(app.reap().unwrap(), Some(101));
        drop(app);
        assert_eq!(server.join().unwrap(), 1);
    });
}

/// The close never overtakes what was published before it: the app pushes a request and
/// closes at once (dropping publishes what is staged, then stores the closed word with
/// Release); the service, whenever it looks, must take that request before it sees
/// `PeerGone`. `relaxed_close` is the negative control.
fn close_after_publish(relaxed_close: bool) {
    model(move || {
        let config = PairConfig::default()
            .with_capacity(2)
            .with_mode(subring_planes::interrupt::NotifyMode::Futex);
        let (mut app, mut service) = in_process::<u32, u32>(&config).unwrap();
        let server = thread::spawn(move || {
            let mut taken = 0;
            loop {
                match service.wait_requests(None) {
                    Ok(()) => {}
                    Err(QueueError::PeerGone) => return taken,
                    Err(e) => panic!("service: {e}"),
                }
                while service.pop_request().unwrap().is_some() {
                    taken += 1;
                }
            }
        });
        app.push(1).unwrap();
        if relaxed_close {
            app.close_relaxed_for_loom();
        }
        drop(app);
        assert_eq!(
            server.join().unwrap(),
            1,
            "a request published before the close was lost"
        );
    });
}

#[test]
fn a_close_never_overtakes_what_was_published_before_it() {
    close_after_publish(false);
}

/// Negative control: the closed word stored Relaxed lets the service see the close before
/// the request published just before it, and report the app gone with the request unseen.
#[test]
#[should_panic(expected = "a request published before the close was lost")]
fn negative_control_relaxed_close_is_caught() {
    close_after_publish(true);
}

/// A watcher thread declares the service gone (its process died) while the app waits with no
/// timeout and the service side stays silent: the app must wake and see `PeerGone`, whichever
/// comes first of its announcing sleep and the declaration.
#[test]
fn service_declared_gone_wakes_a_waiting_app() {
    model(|| {
        let config = PairConfig::default()
            .with_capacity(2)
            .with_mode(subring_planes::interrupt::NotifyMode::Futex);
        let (mut app, service) = in_process::<u32, u32>(&config).unwrap();
        let gone = app.gone_handle();
        let watcher = thread::spawn(move || gone.declare().unwrap());
        match app.wait(None) {
            Err(QueueError::PeerGone) => {}
            other => panic!("waiting after the service was declared gone gave {other:?}"),
        }
        watcher.join().unwrap();
        drop(service);
    });
}

/// A full completion ring sleeps: the service posts two completions through a ring of one
/// slot, so the second finds it full and the service sleeps on the ring's producer word
/// ([`ServiceSide::wait_room`]) until the app's reaping wakes it. The app reaps the first,
/// then waits for the second; the look at the producer word that its wait makes first is
/// fenced, and is what wakes the service when the relaxed look right after the reap missed
/// the announcement (store buffering on both sides). Futex mode, so a missed wake-up is a
/// deadlock. Explored with at most 4 preemptions (about 30 s; 5 take five minutes).
fn full_completion_ring_sleeps(skip_backstop: bool) {
    model_bounded(4, move || {
        let (mut app, server) = posting_two_through_one_slot(false);
        for expected in [1, 2] {
            if skip_backstop {
                app.wait_without_room_look_for_loom(None).unwrap();
            } else {
                app.wait(None).unwrap();
            }
            assert_eq!(app.reap().unwrap(), Some(expected));
        }
        drop(server.join().unwrap());
    });
}

/// A futex-mode pair whose completion ring has one slot, and a thread serving it that posts
/// 1 and then 2, flushing each: the second finds the ring full, and the service sleeps for room
/// until the app reaps ([`ServiceSide::wait_room`]; with `event_loop`, as in an event loop:
/// [`ServiceSide::arm_room`], an armed `FUTEX_WAIT` on its room word, as the shm server's
/// io_uring keeps one, then [`ServiceSide::disarm_room`]). The thread returns the service.
pub(super) fn posting_two_through_one_slot(
    event_loop: bool,
) -> (AppSide<u32, u32>, thread::JoinHandle<ServiceSide<u32, u32>>) {
    let config = PairConfig {
        sq_capacity: 2,
        cq_capacity: 1,
        ..PairConfig::default().with_mode(NotifyMode::Futex)
    };
    let (app, mut service) = in_process::<u32, u32>(&config).unwrap();
    let server = thread::spawn(move || {
        for v in [1, 2] {
            let mut v = v;
            while let Err(r) = service.complete(v) {
                assert!(matches!(r.error, QueueError::Full), "{}", r.error);
                v = r.entry;
                if !event_loop {
                    service.wait_room(None).unwrap();
                    continue;
                }
                let word = service.room_word();
                if !service.arm_room().unwrap() {
                    if let Some(armed) = word.loom_arm_wait() {
                        while !word.loom_armed_wait_done(armed) {
                            thread::yield_now();
                        }
                    }
                }
                service.disarm_room();
            }
            service.flush().unwrap();
        }
        service
    });
    (app, server)
}

#[test]
fn a_full_completion_ring_sleeps_and_reaping_wakes_it() {
    full_completion_ring_sleeps(false);
}

/// Negative control: with only the relaxed look after each reap (no fenced look before the
/// app's wait), the app can miss the service's announcement while the service misses the
/// app's reap; both then sleep (in the modelled futex, which waits by yielding: loom reports
/// the endless wait as too many branches).
#[test]
#[should_panic(expected = "maximum number of branches")]
fn negative_control_room_without_the_fenced_look_is_caught() {
    full_completion_ring_sleeps(true);
}

/// A full submission ring sleeps: the app submits two requests through a ring of one slot,
/// waiting for room ([`Submitter::wait_space`]) in between; the service takes requests and
/// answers them, and its flush (whose notification fences) wakes the app. Then the app closes
/// and the service sees it.
#[test]
fn a_full_submission_ring_sleeps_until_the_service_takes() {
    model_bounded(4, || {
        let config = PairConfig {
            sq_capacity: 1,
            cq_capacity: 2,
            ..PairConfig::default().with_mode(NotifyMode::Futex)
        };
        let (mut app, mut service) = in_process::<u32, u32>(&config).unwrap();
        let server = thread::spawn(move || {
            let mut served = 0;
            loop {
                match service.wait_requests(None) {
                    Ok(()) => {}
                    Err(QueueError::PeerGone) => return served,
                    Err(e) => panic!("service: {e}"),
                }
                served += service.serve_ready(&mut |x: u32| x + 100).unwrap();
            }
        });
        submit_two_through_one_slot(&mut app);
        let mut got = Vec::new();
        while got.len() < 2 {
            app.wait(None).unwrap();
            got.extend(app.reap().unwrap());
        }
        assert_eq!(got, [101, 102]);
        drop(app);
        assert_eq!(server.join().unwrap(), 2);
    });
}

/// Pushes 1 and submits, then pushes 2 into a submission ring of one slot, waiting for space
/// ([`Submitter::wait_space`]) while it is full, and submits.
pub(super) fn submit_two_through_one_slot(app: &mut AppSide<u32, u32>) {
    app.push(1).unwrap();
    app.submit().unwrap();
    let mut v = 2;
    while let Err(r) = app.push(v) {
        assert!(matches!(r.error, QueueError::Full), "{}", r.error);
        v = r.entry;
        app.wait_space(None).unwrap();
    }
    app.submit().unwrap();
}

/// Both rings full: the service posts a completion of its own into a completion ring of one
/// slot (as an answer to a deferred request would), then serves; the app has submitted two
/// requests through a submission ring of one slot, waiting for space in between. With the
/// completion ring full the service takes nothing more and waits for the app to reap, while
/// the app waits for space: the service's look before its wait wakes the app, whose wait
/// ends with `Full`, and it reaps. Futex mode, so a missed wake-up is a deadlock. Explored
/// with at most 3 preemptions (about 15 s; 4 take four minutes). `skip_look` is the negative
/// control.
fn both_rings_full(skip_look: bool) {
    model_bounded(3, move || {
        let (app, mut service) = one_slot_rings();
        let server = thread::spawn(move || {
            service.complete(0).unwrap();
            service.flush().unwrap();
            loop {
                match service.wait_requests(None) {
                    Ok(()) => {}
                    Err(QueueError::PeerGone) => return,
                    Err(e) => panic!("service: {e}"),
                }
                if service.serve_ready(&mut |x: u32| x + 100).unwrap() == 0 {
                    let waited = if skip_look {
                        service.wait_room_without_stuck_look_for_loom(None)
                    } else {
                        service.wait_room(None)
                    };
                    match waited {
                        Ok(()) => {}
                        Err(QueueError::PeerGone) => return,
                        Err(e) => panic!("service: {e}"),
                    }
                }
            }
        });
        both_rings_full_app(app);
        server.join().unwrap();
    });
}

/// The both-rings-full models' pair: rings of one slot each, futex mode (a missed wake-up is
/// a deadlock).
fn one_slot_rings() -> (AppSide<u32, u32>, ServiceSide<u32, u32>) {
    let config = PairConfig {
        sq_capacity: 1,
        cq_capacity: 1,
        ..PairConfig::default().with_mode(NotifyMode::Futex)
    };
    in_process::<u32, u32>(&config).unwrap()
}

/// The app's side of the both-rings-full models: submits two requests through its ring of one
/// slot, reaping whenever its wait for space says `Full`, then reaps until it has the
/// service's own completion and both answers, and closes.
fn both_rings_full_app(mut app: AppSide<u32, u32>) {
    let mut got = Vec::new();
    app.push(1).unwrap();
    app.submit().unwrap();
    let mut v = 2;
    while let Err(r) = app.push(v) {
        assert!(matches!(r.error, QueueError::Full), "{}", r.error);
        v = r.entry;
        match app.wait_space(None) {
            Ok(()) => {}
            Err(QueueError::Full) => got.extend(app.reap().unwrap()),
            Err(e) => panic!("app: {e}"),
        }
    }
    app.submit().unwrap();
    while got.len() < 3 {
        got.extend(app.reap().unwrap());
        if got.len() < 3 {
            app.wait(None).unwrap();
        }
    }
    assert_eq!(got, [0, 101, 102]);
}

#[test]
fn both_rings_full_the_app_is_told_to_reap() {
    both_rings_full(false);
}

/// Negative control: a service that wakes the app only after taking requests leaves an app
/// asleep for space while it waits for the app to reap (loom reports the endless wait as too
/// many branches).
#[test]
#[should_panic(expected = "maximum number of branches")]
fn negative_control_both_rings_full_without_the_look_is_caught() {
    both_rings_full(true);
}

/// [`both_rings_full`] with a service that polls instead of sleeping (as a server turned by
/// `Server::poll`, or one that keeps polling for other clients): when the completion ring is
/// too full to serve, it calls `wake_app_to_reap` (which looks only after a publication) and
/// polls again. Explored with at most 2 preemptions (a polling loop multiplies the
/// interleavings). `skip_look` is the negative control: a polling service that never looks
/// leaves the app asleep for space.
fn both_rings_full_polled(skip_look: bool) {
    model_bounded(2, move || {
        let (app, mut service) = one_slot_rings();
        let server = thread::spawn(move || {
            service.complete(0).unwrap();
            service.flush().unwrap();
            loop {
                if service.serve_ready(&mut |x: u32| x + 100).unwrap() > 0 {
                    continue;
                }
                if service.app_closed() && !service.requests_ready().unwrap() {
                    return;
                }
                if !skip_look {
                    service.wake_app_to_reap().unwrap();
                }
                thread::yield_now();
            }
        });
        both_rings_full_app(app);
        server.join().unwrap();
    });
}

#[test]
fn both_rings_full_a_polling_service_tells_the_app_to_reap() {
    both_rings_full_polled(false);
}

/// Negative control: a polling service that never looks for an app asleep for space (loom
/// reports the app's endless wait beside the service's polling as too many branches).
#[test]
#[should_panic(expected = "maximum number of branches")]
fn negative_control_both_rings_full_polled_without_the_look_is_caught() {
    both_rings_full_polled(true);
}
