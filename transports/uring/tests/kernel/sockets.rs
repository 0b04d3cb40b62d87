//! Sockets on loopback.

use super::*;

#[test]
fn sockets_on_loopback() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // SAFETY: plain socket(2) call; the result is checked and owned below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(raw >= 0);
    // SAFETY: `raw` is a fresh socket we own.
    let client = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut ring = Uring::builder().build().unwrap();
    let done = run(
        &mut ring,
        vec![
            sub(
                1,
                Op::Accept {
                    fd: target(&listener),
                },
            ),
            sub(
                2,
                Op::Connect {
                    fd: target(&client),
                    addr,
                },
            ),
        ],
    );
    assert!(done[1].result.is_ok(), "{:?}", done[1].result);
    let number = *done[0].result.as_ref().unwrap() as RawFd;
    let mut done = done.into_iter();
    // The accepted connection comes back owned: the number in `result` is its descriptor.
    let Some(Output::Fd(accepted)) = done.next().map(|c| c.output) else {
        panic!("accept returns its descriptor owned");
    };
    assert_eq!(accepted.as_raw_fd(), number);

    let msg = b"hello over io_uring".to_vec();
    let done = run(
        &mut ring,
        vec![
            sub(
                3,
                Op::Send {
                    fd: target(&client),
                    buf: msg.clone(),
                    flags: 0,
                },
            ),
            sub(
                4,
                Op::Recv {
                    fd: target(&accepted),
                    buf: vec![0; 100],
                    flags: 0,
                },
            ),
        ],
    );
    assert_eq!(*done[0].result.as_ref().unwrap() as usize, msg.len());
    assert_eq!(buf(&done[1].output), &msg[..]);
}

/// The whole socket path through the ring: `socket`, `bind`, `listen`, `accept`, then a
/// client's bytes received and `shutdown` seen as end of stream (`bind` and `listen` need
/// Linux 6.11; the ring refuses an opcode the kernel lacks with `SubmitError::Unsupported`).
#[test]
fn a_listener_made_bound_and_shut_down_through_the_ring() {
    let mut ring = Uring::builder().build().unwrap();
    let listener = tcp_socket(&mut ring, 1);
    // SAFETY: F_GETFD on a descriptor we own.
    let fd_flags = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_GETFD) };
    assert_eq!(
        fd_flags & libc::FD_CLOEXEC,
        libc::FD_CLOEXEC,
        "close-on-exec"
    );
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let done = run(
        &mut ring,
        vec![
            sub(
                2,
                Op::Bind {
                    fd: target(&listener),
                    addr: any,
                },
            )
            .link(Link::Soft),
            sub(
                3,
                Op::Listen {
                    fd: target(&listener),
                    backlog: 8,
                },
            ),
        ],
    );
    for c in &done {
        assert!(c.result.is_ok(), "token {}: {:?}", c.token, c.result);
    }
    let addr = nix::sys::socket::getsockname::<nix::sys::socket::SockaddrIn>(listener.as_raw_fd())
        .unwrap();
    let addr = std::net::SocketAddr::from(std::net::SocketAddrV4::from(addr));
    assert_ne!(addr.port(), 0, "bound to a port the kernel chose");

    let mut client = std::net::TcpStream::connect(addr).unwrap();
    let done = run(
        &mut ring,
        vec![sub(
            4,
            Op::Accept {
                fd: target(&listener),
            },
        )],
    );
    let Some(Output::Fd(accepted)) = done.into_iter().next().map(|c| c.output) else {
        panic!("accept returns its descriptor owned");
    };
    std::io::Write::write_all(&mut client, b"ring").unwrap();
    let done = run(
        &mut ring,
        vec![sub(
            5,
            Op::Recv {
                fd: target(&accepted),
                buf: vec![0; 16],
                flags: 0,
            },
        )],
    );
    match &done[0].output {
        Output::Buf(b) => assert_eq!(b, b"ring"),
        other => panic!("a buffer back, got {other:?}"),
    }
    // Shutting the accepted end's writing side down: the client reads end of stream.
    let done = run(
        &mut ring,
        vec![sub(
            6,
            Op::Shutdown {
                fd: target(&accepted),
                how: libc::SHUT_WR,
            },
        )],
    );
    assert!(done[0].result.is_ok(), "{:?}", done[0].result);
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut client, &mut byte).unwrap(), 0);

    // A bind to an address in use fails as bind(2) does, named.
    let second = tcp_socket(&mut ring, 7);
    let done = run(
        &mut ring,
        vec![sub(
            8,
            Op::Bind {
                fd: target(&second),
                addr,
            },
        )],
    );
    let err = done[0].result.as_ref().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    assert_eq!(op_error(err), ("bind", 8));
}

/// A TCP/IPv4 socket made by the ring's `socket` operation (submitted with `token`).
fn tcp_socket(ring: &mut Uring, token: u64) -> OwnedFd {
    let done = run(
        ring,
        vec![sub(
            token,
            Op::Socket {
                domain: libc::AF_INET,
                ty: libc::SOCK_STREAM,
                protocol: 0,
            },
        )],
    );
    match done.into_iter().next().map(|c| c.output) {
        Some(Output::Fd(fd)) => fd,
        other => panic!("socket returns its descriptor owned, got {other:?}"),
    }
}

/// `sendmsg` gathering two buffers to an unconnected UDP socket's peer, `recvmsg` scattering
/// the datagram into two, with the sender's address; a datagram larger than the buffers comes
/// back truncated with `MSG_TRUNC`.
#[test]
fn sendmsg_and_recvmsg_over_udp() {
    let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let mut ring = Uring::builder().build().unwrap();
    let done = run(
        &mut ring,
        vec![
            sub(
                1,
                Op::SendMsg {
                    fd: target(&a),
                    bufs: vec![b"hello ".to_vec(), b"world".to_vec()],
                    to: Some(Box::new(b_addr)),
                    flags: 0,
                },
            ),
            sub(
                2,
                Op::RecvMsg {
                    fd: target(&b),
                    bufs: vec![vec![0; 4], vec![0; 64]],
                    flags: 0,
                },
            ),
        ],
    );
    let mut done = done;
    done.sort_by_key(|c| c.token);
    assert_eq!(*done[0].result.as_ref().unwrap(), 11);
    match &done[0].output {
        Output::Bufs(bufs) => assert_eq!(bufs.concat(), b"hello world"),
        other => panic!("the sent buffers back, got {other:?}"),
    }
    assert_eq!(*done[1].result.as_ref().unwrap(), 11);
    match &done[1].output {
        Output::Msg { bufs, from, flags } => {
            assert_eq!(bufs[0], b"hell");
            assert_eq!(bufs[1], b"o world");
            assert_eq!(*from, Some(a_addr));
            assert_eq!(flags & libc::MSG_TRUNC, 0);
        }
        other => panic!("a received message, got {other:?}"),
    }

    a.send_to(&[7u8; 100], b_addr).unwrap();
    let done = run(
        &mut ring,
        vec![sub(
            3,
            Op::RecvMsg {
                fd: target(&b),
                bufs: vec![vec![0; 10]],
                flags: 0,
            },
        )],
    );
    match &done[0].output {
        Output::Msg { bufs, flags, .. } => {
            assert_eq!(bufs[0], [7u8; 10]);
            assert_eq!(flags & libc::MSG_TRUNC, libc::MSG_TRUNC, "truncated");
        }
        other => panic!("a received message, got {other:?}"),
    }
}
