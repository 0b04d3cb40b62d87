//! The checks on what a completion counts.

use super::*;

/// A result counting more bytes than the buffer holds (a forged completion's, or a kernel
/// bug's) is flagged, for the completion to turn into an error; one a receive with
/// `MSG_TRUNC` may give (the whole datagram) is not.
#[test]
fn results_past_the_buffers_are_flagged() {
    let read = |len| {
        Some(Op::Read {
            fd: Target::Fixed(0),
            buf: vec![0u8; len],
            offset: 0,
        })
    };
    let (buf, name, too_long) = take_plain_buf(&mut read(4), 8).unwrap();
    assert_eq!((buf.len(), name, too_long), (4, "read", true));
    let (buf, _, too_long) = take_plain_buf(&mut read(4), 3).unwrap();
    assert_eq!((buf.len(), too_long), (3, false));
    let recv = |flags| {
        Some(Op::Recv {
            fd: Target::Fixed(0),
            buf: vec![0u8; 4],
            flags,
        })
    };
    assert!(take_plain_buf(&mut recv(0), 8).unwrap().2);
    assert!(!take_plain_buf(&mut recv(libc::MSG_TRUNC), 8).unwrap().2);
    let readv = Op::Readv {
        fd: Target::Fixed(0),
        bufs: vec![vec![0; 3], vec![0; 5]],
        offset: 0,
    };
    assert_eq!(most_bytes(&readv), Some(8));
    let recvmsg = Op::RecvMsg {
        fd: Target::Fixed(0),
        bufs: vec![vec![0; 3]],
        flags: libc::MSG_TRUNC,
    };
    assert_eq!(most_bytes(&recvmsg), None);
    assert_eq!(most_bytes(&Op::Nop), None);
}
