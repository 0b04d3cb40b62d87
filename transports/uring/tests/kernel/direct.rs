//! Direct descriptors: accept, socket and open straight into the registered file table, and
//! the table updated through the ring.

use std::io::Write;
use std::net::{TcpListener, TcpStream};

use super::*;
use subring_uring::DirectSlot;

fn slot(c: &subring_uring::Completion) -> u32 {
    match c.output {
        Output::Slot(s) => s,
        ref o => panic!("a slot, not {o:?} ({:?})", c.result),
    }
}

#[test]
fn an_accepted_connection_lands_in_a_chosen_slot_and_is_used_from_there() {
    if !kernel_at_least(5, 19) {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut ring = Uring::builder().build().unwrap();
    ring.register_files_sparse(4).unwrap();
    push(
        &mut ring,
        1,
        Op::AcceptDirect {
            fd: target(&listener),
            slot: DirectSlot::At(2),
        },
    );
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let c = next(&mut ring);
    assert_eq!(slot(&c), 2);
    client.write_all(b"direct").unwrap();
    let done = run(
        &mut ring,
        vec![sub(
            2,
            Op::Recv {
                fd: Target::Fixed(2),
                buf: vec![0; 16],
                flags: 0,
            },
        )],
    );
    assert_eq!(buf(&done[0].output), b"direct");
    let done = run(
        &mut ring,
        vec![sub(
            3,
            Op::Close {
                fd: CloseTarget::Fixed(2),
            },
        )],
    );
    assert!(done[0].result.is_ok(), "{:?}", done[0].result);
}

#[test]
fn a_multishot_accept_fills_free_slots() {
    if !kernel_at_least(5, 19) {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut ring = Uring::builder().build().unwrap();
    ring.register_files_sparse(8).unwrap();
    push(
        &mut ring,
        1,
        Op::AcceptMultiDirect {
            fd: target(&listener),
        },
    );
    let _clients: Vec<_> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut slots: Vec<u32> = (0..3)
        .map(|_| {
            let c = next(&mut ring);
            assert!(c.more, "{c:?}");
            slot(&c)
        })
        .collect();
    slots.sort_unstable();
    slots.dedup();
    assert_eq!(slots.len(), 3, "three distinct slots");
    assert!(slots.iter().all(|s| *s < 8));
    push(&mut ring, 2, Op::CancelAll);
    let _ = (next(&mut ring), next(&mut ring));
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn a_socket_and_a_file_opened_into_any_free_slot() {
    if !kernel_at_least(5, 19) {
        return;
    }
    let dir = TempDir::new("direct");
    let path = dir.file("f");
    std::fs::write(&path, b"read through a direct descriptor").unwrap();
    let mut ring = Uring::builder().build().unwrap();
    ring.register_files_sparse(2).unwrap();
    let done = run(
        &mut ring,
        vec![
            sub(
                1,
                Op::OpenAtDirect {
                    dir: None,
                    path: CString::new(path.to_str().unwrap()).unwrap(),
                    flags: libc::O_RDONLY,
                    mode: 0,
                    slot: DirectSlot::Any,
                },
            ),
            sub(
                2,
                Op::SocketDirect {
                    domain: libc::AF_INET,
                    ty: libc::SOCK_DGRAM,
                    protocol: 0,
                    slot: DirectSlot::Any,
                },
            ),
        ],
    );
    let (file, sock) = (slot(&done[0]), slot(&done[1]));
    assert_ne!(file, sock);
    let done = run(
        &mut ring,
        vec![sub(
            3,
            Op::Read {
                fd: Target::Fixed(file),
                buf: vec![0; 64],
                offset: 0,
            },
        )],
    );
    assert_eq!(buf(&done[0].output), b"read through a direct descriptor");
    // The table is full now: a third open into any slot fails in the kernel (ENFILE).
    let done = run(
        &mut ring,
        vec![sub(
            4,
            Op::OpenAtDirect {
                dir: None,
                path: CString::new(path.to_str().unwrap()).unwrap(),
                flags: libc::O_RDONLY,
                mode: 0,
                slot: DirectSlot::Any,
            },
        )],
    );
    assert_eq!(
        errno(done[0].result.as_ref().unwrap_err()),
        Some(libc::ENFILE)
    );
}

#[test]
fn the_file_table_is_updated_through_the_ring() {
    let (rx, tx) = nix::unistd::pipe().unwrap();
    let mut ring = Uring::builder().build().unwrap();
    ring.register_files_sparse(4).unwrap();
    let done = run(
        &mut ring,
        vec![sub(
            1,
            Op::FilesUpdate {
                offset: 1,
                fds: vec![Some(subring_uring::SharedFd::from(rx))],
            },
        )],
    );
    assert_eq!(*done[0].result.as_ref().unwrap(), 1, "one slot updated");
    nix::unistd::write(&tx, b"via slot 1").unwrap();
    let done = run(
        &mut ring,
        vec![sub(
            2,
            Op::Read {
                fd: Target::Fixed(1),
                buf: vec![0; 32],
                offset: u64::MAX,
            },
        )],
    );
    assert_eq!(buf(&done[0].output), b"via slot 1");
    // Emptied: the slot names nothing.
    let done = run(
        &mut ring,
        vec![
            sub(
                3,
                Op::FilesUpdate {
                    offset: 1,
                    fds: vec![None],
                },
            )
            .link(Link::Hard),
            sub(
                4,
                Op::Read {
                    fd: Target::Fixed(1),
                    buf: vec![0; 32],
                    offset: u64::MAX,
                },
            ),
        ],
    );
    assert_eq!(*done[0].result.as_ref().unwrap(), 1);
    assert_eq!(
        errno(done[1].result.as_ref().unwrap_err()),
        Some(libc::EBADF)
    );
}

#[test]
fn direct_slots_are_checked_against_the_table_at_push() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut ring = Uring::builder().build().unwrap();
    let e = ring
        .push(sub(
            1,
            Op::AcceptMultiDirect {
                fd: target(&listener),
            },
        ))
        .unwrap_err()
        .error;
    assert!(matches!(refusal(&e), SubmitError::NoFileTable), "{e}");
    ring.register_files_sparse(4).unwrap();
    let e = ring
        .push(sub(
            2,
            Op::AcceptDirect {
                fd: target(&listener),
                slot: DirectSlot::At(4),
            },
        ))
        .unwrap_err()
        .error;
    assert!(
        matches!(
            refusal(&e),
            SubmitError::FileOutOfRange {
                index: 4,
                registered: 4
            }
        ),
        "{e}"
    );
    let e = ring
        .push(sub(
            3,
            Op::FilesUpdate {
                offset: 3,
                fds: vec![None, None],
            },
        ))
        .unwrap_err()
        .error;
    assert!(
        matches!(
            refusal(&e),
            SubmitError::FileOutOfRange {
                index: 4,
                registered: 4
            }
        ),
        "{e}"
    );
}
