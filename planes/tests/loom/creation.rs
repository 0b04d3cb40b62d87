//! Creation of a ring or a queue pair racing a peer's attach.

use super::*;

/// Creation racing an attach: one thread creates a ring (over memory whose loom objects were
/// constructed first, as mapped memory exists before anyone writes it) and pushes an entry;
/// another attaches as soon as the magic says the ring is there, and takes the entry. The
/// magic is published last, with Release: whoever sees it sees the whole header.
fn ring_created_while_attached(publish: Ordering) {
    model(move || {
        let layout = RingLayout::of::<u32, Stamped>(2).unwrap();
        let region = Arc::new(Region::anonymous(layout.size, RegionOptions::new()).unwrap());
        Ring::<u32, Stamped>::construct_for_loom(&region, 0, 2).unwrap();
        let shared = region.clone();
        let creator = thread::spawn(move || {
            let ring =
                Ring::<u32, Stamped>::create_constructed_for_loom(shared, 0, 2, publish).unwrap();
            let mut tx = ring.into_producer().unwrap();
            tx.push(7).unwrap();
        });
        let ring = loop {
            match Ring::<u32, Stamped>::attach(region.clone(), 0, 2) {
                Ok(ring) => break ring,
                Err(RingError::HeaderMismatch { field: "magic", .. }) => thread::yield_now(),
                Err(e) => panic!("attach raced creation: {e}"),
            }
        };
        let mut rx = ring.into_consumer().unwrap();
        let got = loop {
            match rx.pop().unwrap() {
                Some(v) => break v,
                None => thread::yield_now(),
            }
        };
        assert_eq!(got, 7);
        creator.join().unwrap();
    });
}

#[test]
fn a_ring_attached_while_it_is_created_is_seen_whole() {
    ring_created_while_attached(Ordering::Release);
}

/// Negative control: the magic stored Relaxed lets the attacher see it before the rest of the
/// header (a capacity of 0).
#[test]
#[should_panic(expected = "attach raced creation")]
fn negative_control_relaxed_magic_is_caught() {
    ring_created_while_attached(Ordering::Relaxed);
}

/// A queue pair's creation racing the app's attach: the service's thread lays the pair out
/// (over constructed memory, as for the ring) and attaches its side; the app attaches as soon
/// as the pair's magic is there and makes a round trip. The pair's magic goes last, with
/// Release, after both rings' own. At most 6 preemptions (about 20 s; 10 take five minutes).
fn pair_created_while_attached(publish: Ordering) {
    model_bounded(6, move || {
        let config = PairConfig::default()
            .with_capacity(1)
            .with_mode(NotifyMode::Futex);
        let layout = PairLayout::of::<u32, u32>(&config).unwrap();
        let region = Arc::new(Region::anonymous(layout.size, RegionOptions::new()).unwrap());
        pair::construct_for_loom::<u32, u32>(&region, 0, &config).unwrap();
        let (shared, cfg) = (region.clone(), config.clone());
        let server = thread::spawn(move || {
            pair::create_constructed_for_loom::<u32, u32>(&shared, 0, &cfg, publish).unwrap();
            let mut service =
                ServiceSide::<u32, u32>::attach(shared, 0, &cfg, PairSignals::default()).unwrap();
            service.wait_requests(None).unwrap();
            service.serve_ready(&mut |x: u32| x + 1).unwrap();
            service
        });
        let mut app = loop {
            match AppSide::<u32, u32>::attach(region.clone(), 0, &config, PairSignals::default()) {
                Ok(app) => break app,
                Err(QueueError::Setup(e)) if matches!(*e, SetupError::NoPair { magic: 0, .. }) => {
                    thread::yield_now()
                }
                Err(e) => panic!("attach raced creation: {e}"),
            }
        };
        app.push(41).unwrap();
        app.submit().unwrap();
        app.wait(None).unwrap();
        assert_eq!(app.reap().unwrap(), Some(42));
        drop(server.join().unwrap());
    });
}

#[test]
fn a_pair_attached_while_it_is_created_is_seen_whole() {
    pair_created_while_attached(Ordering::Release);
}

/// Negative control: the pair's magic stored Relaxed lets the app see it before the mode
/// words (or a ring's header) it guards.
#[test]
#[should_panic(expected = "attach raced creation")]
fn negative_control_relaxed_pair_magic_is_caught() {
    pair_created_while_attached(Ordering::Relaxed);
}
