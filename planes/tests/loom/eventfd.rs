//! Arm and disarm inside an external event loop, over the modelled eventfd.

use super::*;

/// The app in a level-triggered event loop (poll, or epoll without `EPOLLET`) on its completion
/// eventfd, over the modelled eventfd: it arms, waits until the fd is readable, disarms
/// (draining the counter) and reaps, until both completions the service posts have arrived.
/// A wake-up can find nothing to reap once (the service claimed an earlier announcement and
/// wrote after the app had already seen the entry), never twice in a row: the drain clears
/// it. Without the drain the counter stays up and every later wait returns at once.
/// Explored with at most 6 preemptions (about 20 s; each one more multiplies that by four).
fn level_triggered_app(drain: bool) {
    model_bounded(6, move || {
        let config = PairConfig::default()
            .with_capacity(2)
            .with_mode(NotifyMode::EventFd);
        let layout = PairLayout::of::<u32, u32>(&config).unwrap();
        let region = Arc::new(Region::anonymous(layout.size, RegionOptions::new()).unwrap());
        let signals = PairSignals::for_config(&config).unwrap();
        let call = signals.call.clone().unwrap();
        let mut service =
            ServiceSide::<u32, u32>::create(region.clone(), 0, &config, signals.clone()).unwrap();
        let mut app = AppSide::<u32, u32>::attach(region, 0, &config, signals).unwrap();
        let server = thread::spawn(move || {
            for v in [1, 2] {
                service.complete(v).unwrap();
                service.flush().unwrap();
            }
            service
        });
        let mut got = Vec::new();
        let mut idle_in_a_row = 0;
        while got.len() < 2 {
            if !app.arm().unwrap() {
                call.wait_readable_for_loom();
            }
            if drain {
                app.disarm().unwrap();
            } else {
                app.disarm_edge();
            }
            let before = got.len();
            while let Some(c) = app.reap().unwrap() {
                got.push(c);
            }
            if got.len() == before {
                idle_in_a_row += 1;
                assert!(
                    idle_in_a_row < 2,
                    "a level-triggered wait woke twice in a row with nothing to reap"
                );
            } else {
                idle_in_a_row = 0;
            }
        }
        assert_eq!(got, [1, 2]);
        drop(server.join().unwrap());
    });
}

#[test]
fn a_level_triggered_app_sees_every_completion_and_no_stale_wakeup() {
    level_triggered_app(true);
}

/// Negative control: disarming without draining (what `disarm_edge` does, right for an
/// edge-triggered loop) leaves the counter up for a level-triggered one.
#[test]
#[should_panic(expected = "woke twice in a row with nothing to reap")]
fn negative_control_level_triggered_without_drain_is_caught() {
    level_triggered_app(false);
}

/// The service in an edge-triggered loop on its kick eventfd (as the shm server's epoll set
/// watches it): it arms, blocks in the modelled `EPOLLET` wait, disarms without draining, and
/// serves, until the app has had both answers; the app submits one request at a time and
/// waits for each answer. Without a drain, each write is still a new edge. At most 6
/// preemptions, as above. `ignore_arm` is the negative control.
fn edge_triggered_service(ignore_arm: bool) {
    model_bounded(6, move || {
        let config = PairConfig::default()
            .with_capacity(2)
            .with_mode(NotifyMode::EventFd);
        let layout = PairLayout::of::<u32, u32>(&config).unwrap();
        let region = Arc::new(Region::anonymous(layout.size, RegionOptions::new()).unwrap());
        let signals = PairSignals::for_config(&config).unwrap();
        let kick = signals.kick.clone().unwrap();
        let mut service = std::mem::ManuallyDrop::new(
            ServiceSide::<u32, u32>::create(region.clone(), 0, &config, signals.clone()).unwrap(),
        );
        // Not dropped while a detected deadlock unwinds (dropping closes the pair, which
        // touches loom objects, and loom aborts on a panic inside a panic).
        let mut app = std::mem::ManuallyDrop::new(
            AppSide::<u32, u32>::attach(region, 0, &config, signals).unwrap(),
        );
        let server = thread::spawn(move || {
            let mut served = 0;
            while served < 2 {
                let ready = service.arm().unwrap();
                if !ready || ignore_arm {
                    kick.block(&service.kick_word(), None).unwrap();
                }
                service.disarm_edge_triggered();
                served += service.serve_ready(&mut |x: u32| x + 100).unwrap();
            }
            service
        });
        for v in [1, 2] {
            app.push(v).unwrap();
            app.submit().unwrap();
            app.wait(None).unwrap();
            assert_eq!(app.reap().unwrap(), Some(v + 100));
        }
        drop(std::mem::ManuallyDrop::into_inner(server.join().unwrap()));
        drop(std::mem::ManuallyDrop::into_inner(app));
    });
}

#[test]
fn an_edge_triggered_service_sees_every_kick() {
    edge_triggered_service(false);
}

/// Negative control: a service that blocks even when `arm` says requests are already there
/// waits for an edge that never comes (the app's doorbell was suppressed: the service was
/// awake when it rang).
#[test]
#[should_panic(expected = "deadlock")]
fn negative_control_edge_triggered_service_that_ignores_arm_is_caught() {
    edge_triggered_service(true);
}
