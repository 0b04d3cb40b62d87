//! The ring's setup modes for real: `COOP_TASKRUN`, `SINGLE_ISSUER` and `DEFER_TASKRUN`, each
//! doing I/O, and a single-issuer ring entered from another thread refused with an error that
//! says why.

use super::*;

/// The modes under test, by name: (coop_taskrun, single_issuer, defer_taskrun).
const MODES: [(&str, bool, bool, bool); 5] = [
    ("default", false, false, false),
    ("COOP_TASKRUN", true, false, false),
    ("SINGLE_ISSUER", false, true, false),
    ("COOP_TASKRUN|SINGLE_ISSUER", true, true, false),
    ("DEFER_TASKRUN", false, true, true),
];

fn ring_in(coop: bool, single: bool, defer: bool, wait: WaitMode) -> Uring {
    Uring::builder()
        .entries(64)
        .coop_taskrun(coop)
        .single_issuer(single)
        .defer_taskrun(defer)
        .wait_mode(wait)
        .build()
        .unwrap()
}

/// Every mode, waiting in `io_uring_enter` and by polling: nops in batches, and a file written
/// and read back byte for byte. With `DEFER_TASKRUN` the completions are only posted when this
/// thread enters the kernel to wait: a polling wait must enter to get them (the ring's
/// `IORING_SQ_TASKRUN` flag says so), or it would spin until its timeout.
#[test]
fn every_setup_mode_does_io() {
    let dir = TempDir::new("modes");
    for (name, coop, single, defer) in MODES {
        for wait in [WaitMode::Enter, WaitMode::Poll] {
            let mut ring = ring_in(coop, single, defer, wait);
            let done = run(&mut ring, (0..40).map(|i| sub(i, Op::Nop)).collect());
            assert_eq!(done.len(), 40, "{name}, {wait:?}");
            assert!(done.iter().all(|c| c.result.is_ok()), "{name}, {wait:?}");

            let path = dir.file(&format!("{name}-{wait:?}"));
            let file = std::fs::File::create_new(&path).unwrap();
            let fd = target(&file);
            let data: Vec<u8> = (0..8192u32).map(|i| (i * 31 % 251) as u8).collect();
            let done = run(
                &mut ring,
                vec![sub(
                    1,
                    Op::Write {
                        fd: fd.clone(),
                        buf: data.clone(),
                        offset: 0,
                    },
                )],
            );
            assert_eq!(*done[0].result.as_ref().unwrap(), 8192, "{name}, {wait:?}");
            let done = run(
                &mut ring,
                vec![sub(
                    2,
                    Op::Read {
                        fd,
                        buf: vec![0; 8192],
                        offset: 0,
                    },
                )],
            );
            assert_eq!(*done[0].result.as_ref().unwrap(), 8192, "{name}, {wait:?}");
            match &done[0].output {
                Output::Buf(b) => assert_eq!(b, &data, "{name}, {wait:?}"),
                other => panic!("{name}, {wait:?}: a buffer back, got {other:?}"),
            }
        }
    }
}

/// A ring bound to its thread, moved to another: submitting there is refused with
/// `SubmitError::NotTheIssuer` naming the setup flag, and nothing is lost: back on its own
/// thread, the refused submission goes through.
#[test]
fn a_single_issuer_ring_refuses_another_thread() {
    for (setup, defer) in [("SINGLE_ISSUER", false), ("DEFER_TASKRUN", true)] {
        let mut ring = ring_in(false, true, defer, WaitMode::Enter);
        ring.push(sub(1, Op::Nop)).unwrap();
        let ring = std::thread::spawn(move || {
            let err = ring.submit().unwrap_err();
            match SubmitError::of(&err) {
                Some(SubmitError::NotTheIssuer { setup: s, .. }) => assert_eq!(*s, setup),
                other => panic!("{setup}: NotTheIssuer, got {other:?} ({err})"),
            }
            assert!(err.to_string().contains(setup), "{err}");
            ring
        })
        .join()
        .unwrap();
        let mut ring = ring;
        // The refused entry was not counted as submitted: this submits it.
        assert_eq!(ring.submit().unwrap(), 1, "{setup}");
        let mut done = Vec::new();
        while done.is_empty() {
            ring.wait(LIMIT).unwrap();
            ring.reap_into(&mut done, 1).unwrap();
        }
        assert_eq!(done[0].token, 1, "{setup}");
    }
    // Without the flag, any thread may submit.
    let mut ring = ring_in(false, false, false, WaitMode::Enter);
    ring.push(sub(1, Op::Nop)).unwrap();
    let mut ring = std::thread::spawn(move || {
        ring.submit().unwrap();
        ring
    })
    .join()
    .unwrap();
    ring.wait(LIMIT).unwrap();
    assert!(ring.reap().unwrap().is_some());
}
