//! Cancellation: by token, by descriptor (one or all of its operations), everything in flight;
//! and pending timeouts removed or re-armed.

use super::*;

#[test]
fn cancellation() {
    let mut ring = Uring::builder().build().unwrap();
    let (rx, _tx) = pipe();
    ring.push(sub(
        10,
        Op::Poll {
            fd: target(&rx),
            events: libc::POLLIN as u32,
        },
    ))
    .unwrap();
    ring.submit().unwrap();
    ring.push(sub(11, Op::Cancel { token: 10 })).unwrap();
    ring.submit().unwrap();
    // Both the cancel and its target complete, each on its own.
    let mut done = Vec::new();
    while done.len() < 2 {
        ring.wait(LIMIT).unwrap();
        ring.reap_into(&mut done, 2).unwrap();
    }
    done.sort_by_key(|c| c.token);
    assert!(
        matches!(done[1].result, Ok(0)),
        "cancel found its target: {:?}",
        done[1].result
    );
    let e = done[0].result.as_ref().unwrap_err();
    assert_eq!(op_error(e), ("poll", 10), "{e}");
    assert_eq!(ring.in_flight(), 0);
    // Nothing to cancel: refused at push, with a reason.
    let r = ring.push(sub(12, Op::Cancel { token: 999 })).unwrap_err();
    assert!(
        matches!(
            SubmitError::of(&r.error),
            Some(SubmitError::NotInFlight { token: 999 })
        ),
        "{}",
        r.error
    );
}

/// The `OpError`'s errno inside an operation's error.
fn errno(e: &std::io::Error) -> Option<i32> {
    e.get_ref()
        .and_then(|e| e.downcast_ref::<OpError>())
        .and_then(|e| e.source.raw_os_error())
}

/// Cancelling by descriptor, one or all of its operations, and everything of the ring.
#[test]
fn cancel_by_fd_and_cancel_all() {
    let mut ring = Uring::builder().build().unwrap();
    let (rx, _tx) = pipe();
    let (other, _other_tx) = pipe();
    let poll = |fd: &OwnedFd| Op::Poll {
        fd: target(fd),
        events: libc::POLLIN as u32,
    };
    for (token, op) in [(1, poll(&rx)), (2, poll(&rx)), (3, poll(&other))] {
        ring.push(sub(token, op)).unwrap();
    }
    ring.submit().unwrap();
    // Both polls on `rx`, not the one on `other`.
    let mut done = run(
        &mut ring,
        vec![sub(
            4,
            Op::CancelFd {
                fd: target(&rx),
                all: true,
            },
        )],
    );
    while done.len() < 3 {
        ring.wait(LIMIT).unwrap();
        ring.reap_into(&mut done, 3).unwrap();
    }
    done.sort_by_key(|c| c.token);
    let tokens: Vec<u64> = done.iter().map(|c| c.token).collect();
    assert_eq!(tokens, [1, 2, 4]);
    assert_eq!(
        errno(done[0].result.as_ref().unwrap_err()),
        Some(libc::ECANCELED)
    );
    assert_eq!(
        errno(done[1].result.as_ref().unwrap_err()),
        Some(libc::ECANCELED)
    );
    assert_eq!(*done[2].result.as_ref().unwrap(), 2, "two cancelled");
    // Nothing left on `rx`: ENOENT, named.
    let done = run(
        &mut ring,
        vec![sub(
            5,
            Op::CancelFd {
                fd: target(&rx),
                all: false,
            },
        )],
    );
    let err = done[0].result.as_ref().unwrap_err();
    assert_eq!(op_error(err), ("cancel_fd", 5));
    assert_eq!(errno(err), Some(libc::ENOENT));
    // Everything: the poll on `other`.
    let mut done = run(&mut ring, vec![sub(6, Op::CancelAll)]);
    while done.len() < 2 {
        ring.wait(LIMIT).unwrap();
        ring.reap_into(&mut done, 2).unwrap();
    }
    done.sort_by_key(|c| c.token);
    assert_eq!(done[0].token, 3);
    assert_eq!(
        errno(done[0].result.as_ref().unwrap_err()),
        Some(libc::ECANCELED)
    );
    assert_eq!(*done[1].result.as_ref().unwrap(), 1);
    assert_eq!(ring.in_flight(), 0);
}

/// A pending timeout removed (it completes cancelled), and one re-armed to fire sooner.
#[test]
fn timeout_remove_and_update() {
    let mut ring = Uring::builder().build().unwrap();
    let long = Op::Timeout {
        after: Duration::from_secs(30),
        count: 0,
    };
    ring.push(sub(1, long)).unwrap();
    ring.submit().unwrap();
    let mut done = run(&mut ring, vec![sub(2, Op::TimeoutRemove { token: 1 })]);
    while done.len() < 2 {
        ring.wait(LIMIT).unwrap();
        ring.reap_into(&mut done, 2).unwrap();
    }
    done.sort_by_key(|c| c.token);
    assert_eq!(
        errno(done[0].result.as_ref().unwrap_err()),
        Some(libc::ECANCELED)
    );
    assert!(done[1].result.is_ok(), "{:?}", done[1].result);
    // A token with nothing in flight is refused before the kernel sees it.
    let err = ring
        .push(sub(3, Op::TimeoutRemove { token: 1 }))
        .map_err(|r| r.error)
        .unwrap_err();
    assert!(matches!(
        refusal(&err),
        SubmitError::NotInFlight { token: 1 }
    ));

    // Thirty seconds, re-armed to 20 ms: it fires (with 0) well before.
    let start = Instant::now();
    ring.push(sub(
        4,
        Op::Timeout {
            after: Duration::from_secs(30),
            count: 0,
        },
    ))
    .unwrap();
    ring.submit().unwrap();
    let mut done = run(
        &mut ring,
        vec![sub(
            5,
            Op::TimeoutUpdate {
                token: 4,
                after: Duration::from_millis(20),
            },
        )],
    );
    while done.len() < 2 {
        ring.wait(LIMIT).unwrap();
        ring.reap_into(&mut done, 2).unwrap();
    }
    done.sort_by_key(|c| c.token);
    assert!(matches!(done[0].result, Ok(0)), "{:?}", done[0].result);
    assert!(done[1].result.is_ok(), "{:?}", done[1].result);
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// A ring dropped with its submission queue full of reads that will never complete (a pipe
/// nobody writes): the drop's cancel-any goes in once the first enter made room, and the drop
/// returns at once. (Before, the cancel found the queue full and was never sent: the drop
/// waited out its 10 s bound and then leaked the reads' buffers.)
#[test]
fn a_ring_dropped_with_a_full_queue_cancels_what_it_holds() {
    let mut ring = Uring::builder().entries(8).build().unwrap();
    let (rx, _tx) = pipe();
    let mut token = 0;
    loop {
        let read = Op::Read {
            fd: target(&rx),
            buf: vec![0u8; 64],
            offset: u64::MAX,
        };
        match ring.push(sub(token, read)) {
            Ok(()) => token += 1,
            Err(r) if matches!(r.error, QueueError::Full) => break,
            Err(r) => panic!("push {token}: {}", r.error),
        }
        assert!(token < 64, "the queue never filled");
    }
    let start = Instant::now();
    let dropper = std::thread::spawn(move || drop(ring));
    while !dropper.is_finished() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the drop did not return in 5 s ({token} reads queued)"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    dropper.join().unwrap();
}
