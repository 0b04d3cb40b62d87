//! The queues themselves: doorbells, timers, links, cancellation, SQPOLL, the eventfd, a full SQ, an overflowing CQ, messages between rings and forged ones, dropping with operations in flight, tokens.

use super::*;

#[test]
fn nop_batch_one_doorbell() {
    let mut ring = Uring::builder().entries(128).build().unwrap();
    let done = run(&mut ring, (0..100).map(|i| sub(i, Op::Nop)).collect());
    assert_eq!(
        done.iter().map(|c| c.token).collect::<Vec<_>>(),
        (0..100).collect::<Vec<_>>()
    );
    assert!(done.iter().all(|c| matches!(c.result, Ok(0))));
    let s = ring.stats();
    assert_eq!(
        s.doorbell.rung, 1,
        "100 entries, one io_uring_enter to submit"
    );
    assert_eq!(s.pushed, 100);
    assert_eq!(s.completed, 100);
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn timeouts_and_linked_timeouts() {
    let mut ring = Uring::builder().build().unwrap();
    let start = Instant::now();
    let done = run(
        &mut ring,
        vec![sub(
            1,
            Op::Timeout {
                after: Duration::from_millis(30),
                count: 0,
            },
        )],
    );
    assert!(matches!(done[0].result, Ok(0)));
    assert!(start.elapsed() >= Duration::from_millis(30));

    // A poll on a pipe nobody writes, bounded by a linked timeout.
    let (rx, _tx) = pipe();
    let done = run(
        &mut ring,
        vec![
            sub(
                2,
                Op::Poll {
                    fd: target(&rx),
                    events: libc::POLLIN as u32,
                },
            )
            .link(Link::Soft),
            sub(
                3,
                Op::LinkTimeout {
                    after: Duration::from_millis(20),
                },
            ),
        ],
    );
    let poll_err = done[0].result.as_ref().unwrap_err();
    assert_eq!(
        poll_err
            .get_ref()
            .and_then(|e| e.downcast_ref::<OpError>())
            .unwrap()
            .source
            .raw_os_error(),
        Some(libc::ECANCELED)
    );
    let lt_err = done[1].result.as_ref().unwrap_err();
    assert_eq!(op_error(lt_err).0, "link_timeout", "{lt_err}");
}

#[test]
fn linked_chain_runs_in_order() {
    let dir = TempDir::new("chain");
    let file = open(&dir.file("data"));
    let fd = target(&file);
    let mut ring = Uring::builder().build().unwrap();
    let done = run(
        &mut ring,
        vec![
            sub(
                1,
                Op::Write {
                    fd: fd.clone(),
                    buf: b"first".to_vec(),
                    offset: 0,
                },
            )
            .link(Link::Soft),
            sub(
                2,
                Op::Write {
                    fd: fd.clone(),
                    buf: b"SECOND".to_vec(),
                    offset: 0,
                },
            )
            .link(Link::Hard),
            sub(
                3,
                Op::Read {
                    fd: fd.clone(),
                    buf: vec![0; 6],
                    offset: 0,
                },
            ),
        ],
    );
    assert_eq!(buf(&done[2].output), b"SECOND");
}

#[test]
fn sqpoll_skips_the_doorbell_while_the_kernel_polls() {
    let mut ring = Uring::builder().sqpoll(2000).build().unwrap();
    assert!(ring.is_sqpoll());
    let mut done = Vec::new();
    for i in 0..50 {
        ring.push(sub(i, Op::Nop)).unwrap();
        ring.submit().unwrap();
        while done.len() <= i as usize {
            ring.wait(LIMIT).unwrap();
            ring.reap_into(&mut done, 64).unwrap();
        }
    }
    let bell = ring.stats().doorbell;
    assert_eq!(bell.rung + bell.skipped, 50);
    assert!(
        bell.skipped > 0,
        "the polling kernel thread should make some doorbells unnecessary: {bell:?}"
    );
}

/// `wait_space` on a full SQ: without SQPOLL it submits and the kernel takes everything at
/// once; with SQPOLL it waits (`IORING_ENTER_SQ_WAIT`) until the polling thread has taken
/// entries. Either way the next push fits, and every operation completes.
#[test]
fn wait_space_makes_room_in_a_full_sq() {
    for sqpoll in [false, true] {
        let mut builder = Uring::builder().entries(8);
        if sqpoll {
            builder = builder.sqpoll(2000);
        }
        let mut ring = builder.build().unwrap();
        let mut token = 0;
        let refused = loop {
            match ring.push(sub(token, Op::Nop)) {
                Ok(()) => token += 1,
                Err(r) => break r,
            }
        };
        assert!(matches!(refused.error, QueueError::Full), "sqpoll {sqpoll}");
        ring.wait_space(LIMIT).unwrap();
        assert!(ring.space().unwrap() > 0, "sqpoll {sqpoll}");
        ring.push(refused.entry).unwrap();
        ring.submit().unwrap();
        let mut done = Vec::new();
        while done.len() <= token as usize {
            ring.wait(LIMIT).unwrap();
            ring.reap_into(&mut done, 64).unwrap();
        }
        assert_eq!(done.len(), token as usize + 1, "sqpoll {sqpoll}");
    }
}

#[test]
fn eventfd_signals_completions() {
    let mut ring = Uring::builder()
        .wait_mode(WaitMode::EventFd)
        .build()
        .unwrap();
    ring.push(sub(
        1,
        Op::Timeout {
            after: Duration::from_millis(20),
            count: 0,
        },
    ))
    .unwrap();
    ring.submit().unwrap();
    let fd = ring
        .completion_fd()
        .expect("eventfd mode registers an eventfd");
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    assert_eq!(
        poll(&mut fds, PollTimeout::from(10_000u16)).unwrap(),
        1,
        "eventfd never fired"
    );
    ring.wait(LIMIT).unwrap();
    assert!(matches!(ring.reap().unwrap().unwrap().result, Ok(0)));
    // And `wait` sleeps on the eventfd when nothing is ready yet.
    ring.push(sub(
        2,
        Op::Timeout {
            after: Duration::from_millis(20),
            count: 0,
        },
    ))
    .unwrap();
    ring.wait(LIMIT).unwrap();
    assert_eq!(ring.reap().unwrap().unwrap().token, 2);
    assert!(ring.notify_stats().sleeps >= 1);
}

#[test]
fn unsupported_opcode_is_a_clear_error() {
    let mut ring = Uring::builder()
        .disable_opcodes(&[opcode::Statx::CODE])
        .build()
        .unwrap();
    let r = ring
        .push(sub(
            1,
            Op::Statx {
                dir: None,
                path: CString::new("/").unwrap(),
                flags: 0,
                mask: 0,
            },
        ))
        .unwrap_err();
    match r.error {
        QueueError::Io(e) => {
            assert_eq!(e.kind(), std::io::ErrorKind::Unsupported);
            assert!(
                matches!(
                    e.get_ref().and_then(|e| e.downcast_ref::<SubmitError>()),
                    Some(SubmitError::Unsupported { op: "statx", .. })
                ),
                "{e}"
            );
        }
        other => panic!("{other}"),
    }
    assert!(!ring.supports(opcode::Statx::CODE));
    assert!(ring.supports(opcode::Nop::CODE));
}

#[test]
fn full_submission_queue() {
    let mut ring = Uring::builder().entries(4).build().unwrap();
    for i in 0..4 {
        ring.push(sub(i, Op::Nop)).unwrap();
    }
    assert_eq!(ring.space().unwrap(), 0);
    let r = ring.push(sub(4, Op::Nop)).unwrap_err();
    assert!(matches!(r.error, QueueError::Full));
    assert_eq!(r.entry.token, 4, "the rejected submission comes back");
    // An operation that owns memory is handed back whole, and takes no slot.
    let devnull = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap();
    let write = Op::Write {
        fd: target(&devnull),
        buf: vec![7; 100],
        offset: 0,
    };
    let r = ring.push(sub(5, write)).unwrap_err();
    assert!(matches!(r.error, QueueError::Full));
    assert!(matches!(&r.entry.op, Op::Write { buf, .. } if buf == &vec![7; 100]));
    assert_eq!(ring.in_flight(), 4, "a rejected push is not in flight");
    assert_eq!(ring.stats().pushed, 4);
    assert_eq!(
        ring.submit().unwrap(),
        4,
        "the four queued entries were submitted"
    );
    assert_eq!(ring.submit().unwrap(), 0, "nothing new to submit");
    // Or let the push make room by submitting.
    let mut ring = Uring::builder()
        .entries(4)
        .on_full(OnFull::Submit)
        .build()
        .unwrap();
    for i in 0..10 {
        ring.push(sub(i, Op::Nop)).unwrap();
    }
    ring.submit().unwrap();
    let mut done = Vec::new();
    while done.len() < 10 {
        ring.wait(LIMIT).unwrap();
        ring.reap_into(&mut done, 10).unwrap();
    }
    assert_eq!(ring.in_flight(), 0);
    let s = ring.stats();
    assert_eq!((s.pushed, s.completed), (10, 10));
}

#[test]
fn completion_queue_overflow_is_drained() {
    let mut ring = nops_overflowing_a_cq_of_8(8);
    // 64 completions for a CQ of 8: the kernel holds the rest and says so. Reaping alone (no
    // wait, which would flush as a side effect of entering) must find the flag and flush.
    let mut done = Vec::new();
    let start = Instant::now();
    while done.len() < 64 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "only {} completions",
            done.len()
        );
        if ring.reap_into(&mut done, 64).unwrap() == 0 {
            ring.wait(LIMIT).unwrap();
        }
    }
    let tokens = sorted_tokens(&done);
    assert_eq!(tokens, (0..64).collect::<Vec<_>>());
    assert!(
        ring.stats().flushes >= 1,
        "the overflow flag was seen and flushed"
    );
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn a_wait_drains_overflowed_completions() {
    let mut ring = nops_overflowing_a_cq_of_8(4);
    // 32 completions for a CQ of 8. Waiting for more than the CQ holds makes the kernel
    // move held completions in as the CQ is emptied.
    let mut done = Vec::new();
    let start = Instant::now();
    while done.len() < 32 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "only {} completions",
            done.len()
        );
        ring.wait_for(8, LIMIT).unwrap();
        let got = ring.reap_into(&mut done, 8).unwrap();
        assert!(got >= 1, "a wait for 8 returned with an empty CQ");
    }
    let tokens = sorted_tokens(&done);
    assert_eq!(tokens, (0..32).collect::<Vec<_>>());
    assert_eq!(ring.in_flight(), 0);
    assert_eq!(ring.stats().completed, 32);
}

#[test]
fn msg_ring_between_two_threads() {
    let mut target = Uring::builder().build().unwrap();
    let target_fd = target.shared_fd().unwrap();
    let waiter = std::thread::spawn(move || {
        target.wait(LIMIT).unwrap();
        let msg = target.reap().unwrap().unwrap();
        // A message is reaped and counted, but it was never this ring's operation.
        assert_eq!(target.in_flight(), 0);
        assert_eq!(target.stats().completed, 1);
        msg
    });
    let mut sender = Uring::builder().build().unwrap();
    let done = run(
        &mut sender,
        vec![sub(
            1,
            Op::MsgRing {
                ring: target_fd,
                result: 42,
                token: 5,
            },
        )],
    );
    assert!(done[0].result.is_ok());
    assert_eq!(sender.in_flight(), 0);
    let msg = waiter.join().unwrap();
    assert_eq!(msg.token, 5);
    assert_eq!(*msg.result.as_ref().unwrap(), 42);
    assert!(matches!(msg.output, Output::Message));
}

#[test]
fn dropping_the_ring_with_operations_in_flight() {
    let (rx, _tx) = pipe();
    let mut ring = Uring::builder().build().unwrap();
    for i in 0..8 {
        ring.push(sub(
            i,
            Op::Read {
                fd: target(&rx),
                buf: vec![0; 4096],
                offset: u64::MAX,
            },
        ))
        .unwrap();
    }
    ring.submit().unwrap();
    let start = Instant::now();
    drop(ring); // cancels and waits for the reads before freeing their buffers
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn tokens_of_every_size_and_errors_of_slotless_operations() {
    let mut ring = Uring::builder().build().unwrap();
    // Operations that own no memory travel without a slot when the token fits in 56 bits; a
    // larger token takes the slot path. Both come back unchanged.
    let big = u64::MAX - 1;
    let done = run(&mut ring, vec![sub(big, Op::Nop), sub(3, Op::Nop)]);
    assert_eq!(done.iter().map(|c| c.token).collect::<Vec<_>>(), [3, big]);
    assert!(done.iter().all(|c| matches!(c.result, Ok(0))));
    // A slotless operation's error still names it and its token: closing a registered file
    // slot a second time.
    let devnull = std::fs::File::open("/dev/null").unwrap();
    ring.register_files(&[&devnull]).unwrap();
    let close = || Op::Close {
        fd: CloseTarget::Fixed(0),
    };
    let done = run(&mut ring, vec![sub(8, close())]);
    assert!(done[0].result.is_ok(), "{done:?}");
    let done = run(&mut ring, vec![sub(9, close())]);
    let e = done[0].result.as_ref().unwrap_err();
    assert_eq!(op_error(e), ("close", 9), "{e}");
    assert_eq!(ring.in_flight(), 0);
    // Message tokens may not use the two bits the ring uses to tell its own completions apart.
    let r = ring
        .push(sub(
            1,
            Op::MsgRing {
                ring: ring.shared_fd().unwrap(),
                result: 0,
                token: 1 << 62,
            },
        ))
        .unwrap_err();
    assert!(
        matches!(refusal(&r.error), SubmitError::TokenBits { token } if *token == 1 << 62),
        "{}",
        r.error
    );
}

/// Another ring can post a completion into this one with any `user_data` (`MSG_RING`). One
/// that names a live slot without its seal must not complete the operation there (its buffer
/// would come back while the kernel may still write it): it is counted as foreign.
#[test]
fn forged_completions_do_not_match_live_operations() {
    let (mut ring, _rx, tx) = a_read_in_flight();
    // The owned bit and slot numbers, unsealed.
    let seen = forge_completions(&mut ring, &[0, 1, 2, 3].map(|slot| (1u64 << 63) | slot));
    for c in &seen {
        assert_ne!(
            c.token, 1,
            "a forged completion completed the read in flight"
        );
        assert!(c.result.is_err(), "{c:?}");
    }
    assert_eq!(ring.stats().foreign, 4);
    assert_eq!(ring.in_flight(), 1, "the read is still in flight");
    // The real completion still comes, once.
    nix::unistd::write(&tx, b"hi").unwrap();
    ring.wait(LIMIT).unwrap();
    let done = ring.reap().unwrap().unwrap();
    assert_eq!(done.token, 1);
    assert_eq!(*done.result.as_ref().unwrap(), 2);
    assert_eq!(ring.in_flight(), 0);
}

/// A ring with one read in flight (token 1, 64 bytes) from a pipe nobody has written yet: the
/// pipe's ends, the write end to finish it.
fn a_read_in_flight() -> (Uring, OwnedFd, OwnedFd) {
    let mut ring = Uring::builder().build().unwrap();
    let (rx, tx) = pipe();
    ring.push(sub(
        1,
        Op::Read {
            fd: target(&rx),
            buf: vec![0u8; 64],
            offset: u64::MAX,
        },
    ))
    .unwrap();
    ring.submit().unwrap();
    (ring, rx, tx)
}

/// The forger: a raw ring posting a completion into `ring` for each of `uds` (with `MSG_RING`,
/// result 64), reaped there; what `ring` made of them.
fn forge_completions(ring: &mut Uring, uds: &[u64]) -> Vec<subring_uring::Completion> {
    let mut forger = io_uring::IoUring::new(8).unwrap();
    for (i, &ud) in uds.iter().enumerate() {
        let e = opcode::MsgRingData::new(
            io_uring::types::Fd(ring.ring_fd().as_raw_fd()),
            64,
            ud,
            None,
        )
        .build()
        .user_data(i as u64);
        // SAFETY: a MSG_RING entry points to no memory.
        unsafe { forger.submission().push(&e).unwrap() };
    }
    forger.submit_and_wait(uds.len()).unwrap();
    let mut seen = Vec::new();
    let start = Instant::now();
    while seen.len() < uds.len() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "forged completions never came"
        );
        ring.reap_into(&mut seen, 16).unwrap();
    }
    seen
}

/// Completions forged with the light bit (operations that own nothing carry no seal) while no
/// light operation is in flight are foreign: they cannot take an owned operation's place in
/// the count of those in flight. (Before, each counted as a light operation completed: one
/// made `in_flight` say 0 with the read still in the kernel, so a drop freed its buffer
/// without cancelling it; two made the count underflow.)
#[test]
fn forged_light_completions_do_not_hide_an_operation_in_flight() {
    let (mut ring, _rx, tx) = a_read_in_flight();
    let seen = forge_completions(&mut ring, &[5, 6].map(|token| (1u64 << 62) | token));
    assert_eq!(ring.stats().foreign, 2, "{seen:?}");
    assert_eq!(ring.in_flight(), 1, "the read is still in flight");
    nix::unistd::write(&tx, b"hi").unwrap();
    ring.wait(LIMIT).unwrap();
    let done = ring.reap().unwrap().unwrap();
    assert_eq!(done.token, 1);
    assert_eq!(ring.in_flight(), 0);
    // A light operation of the ring's own is still counted and completed as one.
    ring.push(sub(7, Op::Nop)).unwrap();
    ring.submit().unwrap();
    ring.wait(LIMIT).unwrap();
    let nop = ring.reap().unwrap().unwrap();
    assert_eq!(
        (nop.token, ring.in_flight(), ring.stats().foreign),
        (7, 0, 2)
    );
}

/// A wait without a timeout on a ring with nothing in flight could never end: it is refused
/// at once, in every wait mode; with something in flight it waits as before.
#[test]
fn waiting_forever_on_nothing_is_refused() {
    for mode in [WaitMode::Enter, WaitMode::Poll, WaitMode::EventFd] {
        let mut ring = Uring::builder().wait_mode(mode).build().unwrap();
        let e = ring.wait(None).unwrap_err();
        let inner = match &e {
            QueueError::Io(io) => io
                .get_ref()
                .and_then(|e| e.downcast_ref::<NothingInFlight>()),
            _ => None,
        };
        assert!(inner.is_some(), "{mode:?}: {e}");
        ring.push(sub(1, Op::Nop)).unwrap();
        ring.wait(None).unwrap();
        assert_eq!(ring.reap().unwrap().unwrap().token, 1);
    }
}
