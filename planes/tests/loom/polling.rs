//! Sides that poll instead of waiting: the peer asleep on a full ring must still be woken by
//! the polling side's looks, with no wait, arm or publishing submit of its own to fence them.

use super::*;

/// An app that only polls (`reap` in a loop, yielding when it finds nothing) against a
/// service that finds the completion ring (one slot) full and sleeps on it
/// ([`ServiceSide::wait_room`]). The relaxed look after a reap can miss the service's
/// announcement while the service misses the reap (store buffering on both sides); the fenced
/// look that a reap makes when it finds the ring dry is what wakes it. Futex mode, so a missed
/// wake-up is a service asleep for good (and an app polling for good: loom reports the endless
/// loop as too many branches). With `event_loop`, the service sleeps as one in an event loop
/// does ([`ServiceSide::arm_room`], then an armed `FUTEX_WAIT` on its room word, as the shm
/// server's io_uring keeps one, then [`ServiceSide::disarm_room`]). `skip_look` is the
/// negative control. Explored with at most 4 preemptions.
fn polling_app_against_a_full_completion_ring(skip_look: bool, event_loop: bool) {
    polling_app(skip_look, event_loop, false);
}

/// [`polling_app_against_a_full_completion_ring`], the app reaping with `reap_into` if `into`
/// (as the shm byte stream does).
fn polling_app(skip_look: bool, event_loop: bool, into: bool) {
    model_bounded(4, move || {
        let (mut app, server) = super::queue_pair::posting_two_through_one_slot(event_loop);
        let mut got = Vec::new();
        while got.len() < 2 {
            let reaped = match (into, skip_look) {
                (true, false) => app.reap_into(&mut got, 2),
                (true, true) => app.reap_into_without_dry_look_for_loom(&mut got, 2),
                (false, false) => app.reap().map(|v| got.extend(v)).map(|()| 0),
                (false, true) => app
                    .reap_without_dry_look_for_loom()
                    .map(|v| got.extend(v))
                    .map(|()| 0),
            };
            reaped.unwrap();
            if got.len() < 2 {
                thread::yield_now();
            }
        }
        assert_eq!(got, [1, 2]);
        drop(server.join().unwrap());
    });
}

#[test]
fn a_polling_app_wakes_a_service_asleep_on_a_full_completion_ring() {
    polling_app_against_a_full_completion_ring(false, false);
}

#[test]
fn a_polling_app_wakes_a_service_in_an_event_loop_armed_for_room() {
    polling_app_against_a_full_completion_ring(false, true);
}

#[test]
fn an_app_polling_reap_into_wakes_a_service_asleep_on_a_full_completion_ring() {
    polling_app(false, false, true);
}

/// Negative control: `reap_into` without its fenced look when dry is caught.
#[test]
#[should_panic(expected = "maximum number of branches")]
fn negative_control_an_app_polling_reap_into_with_relaxed_looks_only_is_caught() {
    polling_app(true, false, true);
}

/// Negative control: the reap without its fenced look when dry (relaxed looks only) is
/// caught.
#[test]
#[should_panic(expected = "maximum number of branches")]
fn negative_control_a_polling_app_with_relaxed_looks_only_is_caught() {
    polling_app_against_a_full_completion_ring(true, false);
}

/// Negative control: the same against the service armed for room in its event loop.
#[test]
#[should_panic(expected = "maximum number of branches")]
fn negative_control_relaxed_looks_miss_a_service_armed_for_room() {
    polling_app_against_a_full_completion_ring(true, true);
}

/// A service that defers a request (takes it and completes nothing) and then polls for the
/// next, against an app asleep on a full submission ring (one slot) waiting for space
/// ([`Submitter::wait_space`]). With `flush`, the service flushes (nothing to publish, so no
/// notification fences for it: its look at the app's word is fenced itself) and then polls
/// with `requests_ready`, which looks at nothing; without, it polls with `pop_request`, whose
/// fenced look when it finds the ring dry wakes the app. `relaxed` is the negative control
/// (that look relaxed, as it was). Explored with at most 4 preemptions.
fn deferring_service_against_an_app_asleep_for_space(flush: bool, relaxed: bool) {
    model_bounded(4, move || {
        let config = PairConfig {
            sq_capacity: 1,
            cq_capacity: 2,
            ..PairConfig::default().with_mode(NotifyMode::Futex)
        };
        let (mut app, mut service) = in_process::<u32, u32>(&config).unwrap();
        let server = thread::spawn(move || {
            service.wait_requests(None).unwrap();
            let first = service.pop_request().unwrap();
            let second = if flush {
                if relaxed {
                    service.flush_relaxed_for_loom().unwrap();
                } else {
                    service.flush().unwrap();
                }
                while !service.requests_ready().unwrap() {
                    thread::yield_now();
                }
                service.pop_request().unwrap()
            } else {
                loop {
                    let popped = if relaxed {
                        service.pop_request_without_dry_look_for_loom()
                    } else {
                        service.pop_request()
                    };
                    match popped.unwrap() {
                        Some(v) => break Some(v),
                        None => thread::yield_now(),
                    }
                }
            };
            (first, second)
        });
        super::queue_pair::submit_two_through_one_slot(&mut app);
        assert_eq!(server.join().unwrap(), (Some(1), Some(2)));
        drop(app);
    });
}

#[test]
fn a_deferring_service_that_flushes_wakes_an_app_asleep_for_space() {
    deferring_service_against_an_app_asleep_for_space(true, false);
}

#[test]
fn a_deferring_service_that_polls_wakes_an_app_asleep_for_space() {
    deferring_service_against_an_app_asleep_for_space(false, false);
}

/// Negative control: the flush's relaxed look alone is caught.
#[test]
#[should_panic(expected = "maximum number of branches")]
fn negative_control_a_flush_with_a_relaxed_look_is_caught() {
    deferring_service_against_an_app_asleep_for_space(true, true);
}

/// Negative control: polling `pop_request` with relaxed looks only is caught.
#[test]
#[should_panic(expected = "maximum number of branches")]
fn negative_control_a_polling_service_with_relaxed_looks_only_is_caught() {
    deferring_service_against_an_app_asleep_for_space(false, true);
}
