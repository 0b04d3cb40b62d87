//! Zero-copy sends: the buffer stays with the operation until the kernel's notification.

use super::*;

/// A zero-copy send: the bytes sent come first, with `more` set and no buffer; the buffer comes
/// back only with the kernel's notification, in the last completion, which repeats the result.
#[test]
fn a_zero_copy_send_returns_its_buffer_only_with_the_notification() {
    if !kernel_at_least(6, 0) {
        return;
    }
    use std::io::Read;
    let (tx, mut rx) = tcp_pair();
    let mut ring = Uring::builder().build().unwrap();
    let data = pattern(64 * 1024);
    push(
        &mut ring,
        4,
        Op::SendZc {
            fd: target(&tx),
            buf: data.clone(),
            flags: 0,
        },
    );
    let first = next(&mut ring);
    assert_eq!(first.token, 4);
    let sent = *first.result.as_ref().unwrap();
    assert!(sent > 0);
    assert!(first.more, "a notification follows: {first:?}");
    assert!(
        matches!(first.output, Output::None),
        "the buffer stays with the operation: {first:?}"
    );
    assert_eq!(ring.in_flight(), 1);
    let mut got = vec![0; sent as usize];
    rx.read_exact(&mut got).unwrap();
    assert_eq!(got, &data[..sent as usize]);
    let last = next(&mut ring);
    assert!(!last.more);
    assert_eq!(
        *last.result.as_ref().unwrap(),
        sent,
        "the send's result again"
    );
    assert_eq!(buf(&last.output), &data[..], "the buffer, whole");
    assert_eq!(ring.in_flight(), 0);
}

/// A zero-copy send from registered memory: a pool buffer goes out and comes back with the
/// notification.
#[test]
fn a_zero_copy_send_from_a_registered_region() {
    if !kernel_at_least(6, 0) {
        return;
    }
    use std::io::Read;
    let (tx, mut rx) = tcp_pair();
    let region = Arc::new(Region::memfd("sendzc", 1 << 16, RegionOptions::new()).unwrap());
    let pool = BufferPool::new(region.clone(), 0, 4096, 16).unwrap();
    let mut ring = Uring::builder().build().unwrap();
    ring.register_region(region).unwrap();
    let mut b = pool.alloc().unwrap();
    b.fill_from(&pattern(3000));
    push(
        &mut ring,
        8,
        Op::SendZcFixed {
            fd: target(&tx),
            buf: FixedBuf::Buf(b),
            flags: 0,
        },
    );
    let first = next(&mut ring);
    assert_eq!(*first.result.as_ref().unwrap(), 3000);
    assert!(first.more && matches!(first.output, Output::None));
    let mut got = vec![0; 3000];
    rx.read_exact(&mut got).unwrap();
    assert_eq!(got, pattern(3000));
    let last = next(&mut ring);
    assert!(!last.more);
    let Output::Fixed(FixedBuf::Buf(back)) = last.output else {
        panic!("the pool buffer comes back: {last:?}")
    };
    assert_eq!(back.to_vec(), pattern(3000));
    assert_eq!(pool.free_count(), 15);
}

/// A zero-copy send that fails (a TCP socket never connected): the kernel posts its error
/// with `more` set and then a notification. The last completion, the one with the buffer,
/// carries the error too. It used to say `Ok(0)`, as if the send had gone out empty, so a
/// caller that looks at the last completion (where the buffer comes back) lost the error.
#[test]
fn a_zero_copy_send_that_fails_says_so_with_its_buffer() {
    if !kernel_at_least(6, 0) {
        return;
    }
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let never_connected = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let mut ring = Uring::builder().build().unwrap();
    let data = pattern(4096);
    push(
        &mut ring,
        9,
        Op::SendZc {
            fd: target(&never_connected),
            buf: data.clone(),
            flags: libc::MSG_NOSIGNAL,
        },
    );
    let mut last = next(&mut ring);
    let mut errors = 0;
    loop {
        assert_eq!(last.token, 9);
        let e = last
            .result
            .as_ref()
            .expect_err("a send on a socket never connected");
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
        errors += 1;
        if !last.more {
            break;
        }
        last = next(&mut ring);
    }
    assert!((1..=2).contains(&errors), "{errors} completions");
    assert_eq!(
        buf(&last.output),
        &data[..],
        "the buffer, whole, with the last"
    );
    assert_eq!(ring.in_flight(), 0);
}
