//! Descriptors by ownership: an operation holds the descriptor it targets until it completes,
//! `close` closes only what it was given (once), and new descriptors come back owned.

use super::*;

/// Dropping the caller's last handle while a read waits does not close the descriptor under
/// the kernel: the operation holds it, and it is closed when the completion is reaped.
#[test]
fn an_operation_holds_its_descriptor_until_it_completes() {
    let (rx, tx) = pipe();
    let number = rx.as_raw_fd();
    let pipe_file = identity(number).unwrap();
    let rx = Arc::new(rx);
    let mut ring = Uring::builder().build().unwrap();
    ring.push(sub(
        1,
        Op::Read {
            fd: Target::fd(&rx),
            buf: vec![0; 16],
            offset: u64::MAX,
        },
    ))
    .unwrap();
    ring.submit().unwrap();
    drop(rx);
    assert_eq!(
        identity(number),
        Some(pipe_file),
        "the read in flight still holds the pipe open"
    );
    nix::unistd::write(&tx, b"late").unwrap();
    ring.wait(LIMIT).unwrap();
    let done = ring.reap().unwrap().unwrap();
    assert_eq!(*done.result.as_ref().unwrap(), 4);
    assert_eq!(buf(&done.output), b"late");
    assert_ne!(
        identity(number),
        Some(pipe_file),
        "closed with the completion"
    );
}

/// A successful close gives the descriptor to the kernel for good: nothing closes its number
/// again when the completion is reaped (which would close whatever reused it).
#[test]
fn a_close_closes_once() {
    let mut ring = Uring::builder().build().unwrap();
    let file = std::fs::File::open("/dev/null").unwrap();
    let number = file.as_raw_fd();
    ring.push(sub(
        1,
        Op::Close {
            fd: OwnedFd::from(file).into(),
        },
    ))
    .unwrap();
    ring.submit().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ring.completions_ready() == 0 {
        assert!(Instant::now() < deadline, "the close did not complete");
        std::thread::sleep(Duration::from_millis(1));
    }
    // The number is free now: a new file (probably) takes it before the completion is reaped.
    let reuse = std::fs::File::open("/dev/zero").unwrap();
    let reuse_file = identity(reuse.as_raw_fd()).unwrap();
    let done = ring.reap().unwrap().unwrap();
    assert!(done.result.is_ok(), "{done:?}");
    assert_eq!(
        identity(reuse.as_raw_fd()),
        Some(reuse_file),
        "reaping the close closed descriptor {} again (the new file had {})",
        number,
        reuse.as_raw_fd()
    );
}

/// A close that never ran (cancelled with its failed link) leaves the descriptor with the
/// operation, which closes it when the completion is reaped: nothing leaks.
#[test]
fn a_cancelled_close_closes_the_descriptor_when_reaped() {
    let mut ring = Uring::builder().build().unwrap();
    let dir = std::fs::File::open(std::env::temp_dir()).unwrap();
    let file = std::fs::File::open("/dev/null").unwrap();
    let (number, file_id) = (file.as_raw_fd(), identity(file.as_raw_fd()).unwrap());
    let done = run(
        &mut ring,
        vec![
            // Reading a directory fails, which cancels the linked close.
            sub(
                1,
                Op::Read {
                    fd: target(&dir),
                    buf: vec![0; 8],
                    offset: 0,
                },
            )
            .link(Link::Soft),
            sub(
                2,
                Op::Close {
                    fd: OwnedFd::from(file).into(),
                },
            ),
        ],
    );
    let e = done[1].result.as_ref().unwrap_err();
    let op = e.get_ref().and_then(|e| e.downcast_ref::<OpError>());
    assert_eq!(
        op.and_then(|op| op.source.raw_os_error()),
        Some(libc::ECANCELED),
        "{e}"
    );
    assert_ne!(identity(number), Some(file_id), "the descriptor leaked");
}

/// `accept` and `openat` hand their new descriptor back owned: dropped unread, it is closed.
#[test]
fn new_descriptors_come_back_owned() {
    let mut ring = Uring::builder().build().unwrap();
    let path = CString::new("/dev/null").unwrap();
    let done = run(
        &mut ring,
        vec![sub(
            1,
            Op::OpenAt {
                dir: None,
                path,
                flags: libc::O_RDONLY,
                mode: 0,
            },
        )],
    );
    let number = *done[0].result.as_ref().unwrap() as RawFd;
    let opened = identity(number).unwrap();
    match &done[0].output {
        Output::Fd(fd) => assert_eq!(fd.as_raw_fd(), number),
        other => panic!("{other:?}"),
    }
    drop(done);
    assert_ne!(
        identity(number),
        Some(opened),
        "dropping the output closes it"
    );
}
