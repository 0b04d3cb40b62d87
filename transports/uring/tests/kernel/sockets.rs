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
