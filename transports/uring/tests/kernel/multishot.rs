//! Multishot operations: one submission, many completions, the slot kept until the last.

use std::io::Write;
use std::net::{TcpListener, TcpStream};

use subring_uring::BufRingOptions;

use super::*;

#[test]
fn a_multishot_accept_delivers_a_descriptor_per_connection_until_cancelled() {
    if !kernel_at_least(5, 19) {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut ring = Uring::builder().build().unwrap();
    push(
        &mut ring,
        9,
        Op::AcceptMulti {
            fd: target(&listener),
        },
    );
    let clients: Vec<_> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut accepted = Vec::new();
    for _ in 0..3 {
        let c = next(&mut ring);
        assert_eq!(c.token, 9);
        assert!(c.more, "the accept stays armed: {c:?}");
        let Output::Fd(fd) = c.output else {
            panic!("each completion carries its descriptor: {c:?}")
        };
        assert_eq!(*c.result.as_ref().unwrap() as RawFd, fd.as_raw_fd());
        accepted.push(fd);
    }
    // Every accepted descriptor is a distinct, connected socket.
    for (client, fd) in clients.iter().zip(&accepted) {
        let peer = nix::sys::socket::getpeername::<nix::sys::socket::SockaddrIn>(fd.as_raw_fd());
        assert_eq!(
            peer.unwrap().port(),
            client.local_addr().unwrap().port(),
            "accepted in order"
        );
    }
    assert_eq!(
        ring.in_flight(),
        1,
        "one operation, however many completions"
    );
    assert_eq!(ring.stats().continued, 3);
    // The end is visible: cancelled, `more` clear, the slot gone.
    push(&mut ring, 10, Op::Cancel { token: 9 });
    let mut ends = [next(&mut ring), next(&mut ring)];
    ends.sort_by_key(|c| c.token);
    assert_eq!(*ends[1].result.as_ref().unwrap(), 0, "the cancel found it");
    assert!(cancelled(&ends[0]), "{:?}", ends[0]);
    assert!(!ends[0].more);
    assert_eq!(ring.in_flight(), 0);
    // Re-arming is one push.
    push(
        &mut ring,
        11,
        Op::AcceptMulti {
            fd: target(&listener),
        },
    );
    let _late = TcpStream::connect(addr).unwrap();
    let c = next(&mut ring);
    assert!(c.more && matches!(c.output, Output::Fd(_)), "{c:?}");
}

#[test]
fn a_multishot_poll_fires_each_time_and_ends_on_cancel() {
    if !kernel_at_least(5, 19) {
        return;
    }
    let (mut tx, rx) = tcp_pair();
    let mut ring = Uring::builder().build().unwrap();
    push(
        &mut ring,
        1,
        Op::PollMulti {
            fd: target(&rx),
            events: libc::POLLIN as u32,
        },
    );
    tx.write_all(b"x").unwrap();
    let c = next(&mut ring);
    assert!(c.more, "{c:?}");
    assert_ne!(c.result.unwrap() & libc::POLLIN as u32, 0);
    tx.write_all(b"y").unwrap();
    let c = next(&mut ring);
    assert!(
        c.more && c.token == 1,
        "fires again without a new push: {c:?}"
    );
    push(&mut ring, 2, Op::CancelAll);
    let mut ends = [next(&mut ring), next(&mut ring)];
    ends.sort_by_key(|c| c.token);
    assert!(cancelled(&ends[0]) && !ends[0].more, "{:?}", ends[0]);
    assert_eq!(
        *ends[1].result.as_ref().unwrap(),
        1,
        "one operation cancelled"
    );
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn a_multishot_read_of_a_pipe_picks_a_buffer_per_write() {
    if !kernel_at_least(6, 7) {
        return;
    }
    let (rx, tx) = nix::unistd::pipe().unwrap();
    let mut ring = Uring::builder().build().unwrap();
    let group = ring
        .register_buf_ring(BufRingOptions::new(1, 256, 8))
        .unwrap();
    push(
        &mut ring,
        1,
        Op::ReadMulti {
            fd: target(&rx),
            group,
        },
    );
    for word in [&b"first"[..], b"second"] {
        nix::unistd::write(&tx, word).unwrap();
        let c = next(&mut ring);
        assert!(c.more, "{c:?}");
        assert_eq!(selected(c).to_vec(), word);
    }
    drop(tx);
    let c = next(&mut ring);
    assert_eq!(*c.result.as_ref().unwrap(), 0, "end of file: {c:?}");
    assert!(!c.more);
}
