//! Emptying a Unix socket before it is closed. The kernel drops the descriptors still queued
//! on a Unix socket (sent and never read) at its last close, on the closing thread, and the
//! last close of one of those can block (a socket lingering with unsent data, a file on a FUSE
//! mount). So a connection's control socket ([`ConnSocket`]), and any Unix socket a peer sent,
//! is shut down first (nothing more can arrive, and the peer sees the hang-up at once) and
//! read out: each descriptor queued on it is owned and discarded where its close cannot block
//! ([`discard`](super::discard)). Then the socket's own close has nothing to drop.

use std::cell::Cell;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    getsockname, recvmsg, setsockopt, shutdown, sockopt, AddressFamily, ControlMessageOwned,
    MsgFlags, Shutdown, SockaddrLike, SockaddrStorage,
};

use super::{closers, discard};
use crate::proto::rights_in;

/// Messages read from one socket at most (a Unix socket's queue holds at most its backlog,
/// `somaxconn`: 4096 by default); past it, the socket goes to the closer threads.
const MAX_MESSAGES: usize = 1 << 16;
/// Unix sockets emptied inside one another at most (the kernel passes a Unix socket inside
/// another at most four deep); deeper ones go to the closer threads.
const MAX_DEPTH: u32 = 5;

thread_local! {
    /// How many drains this thread is inside (a drain discards what it reads, which may be
    /// another Unix socket to drain).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// A connection's control socket: shut down, emptied and closed when dropped (see the module
/// docs), on the closer threads if it could not be emptied.
#[derive(Debug)]
pub(crate) struct ConnSocket(Option<OwnedFd>);

impl ConnSocket {
    pub(crate) fn new(socket: OwnedFd) -> Self {
        ConnSocket(Some(socket))
    }
}

impl AsFd for ConnSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0
            .as_ref()
            .expect("a ConnSocket holds its socket until dropped")
            .as_fd()
    }
}

impl Drop for ConnSocket {
    fn drop(&mut self) {
        if let Some(socket) = self.0.take() {
            if drain_unix(socket.as_fd()) {
                drop(socket);
            } else {
                closers::close(socket);
            }
        }
    }
}

/// Shuts `socket` down and reads out its queue, discarding every descriptor queued on it;
/// `true` once the queue is empty (closing it then drops nothing). `false` if it is not a Unix
/// socket, cannot be read (a listening socket), holds more than [`MAX_MESSAGES`], or lies more
/// than [`MAX_DEPTH`] drains deep: then it is for the closer threads.
pub(super) fn drain_unix(socket: BorrowedFd<'_>) -> bool {
    let unix = getsockname::<SockaddrStorage>(socket.as_raw_fd())
        .is_ok_and(|a| a.family() == Some(AddressFamily::Unix));
    if !unix || DEPTH.get() >= MAX_DEPTH {
        return false;
    }
    // With SO_PASSCRED every message read carries its sender's credentials, so a read with
    // neither bytes nor control data is the end of the queue, not an empty message.
    if setsockopt(&socket, sockopt::PassCred, &true).is_err() {
        return false;
    }
    let _ = shutdown(socket.as_raw_fd(), Shutdown::Both);
    DEPTH.set(DEPTH.get() + 1);
    let emptied = read_out(socket);
    DEPTH.set(DEPTH.get() - 1);
    emptied
}

fn read_out(socket: BorrowedFd<'_>) -> bool {
    let mut buf = [0u8; 64];
    let mut space = nix::cmsg_space!([RawFd; 253], libc::ucred);
    for _ in 0..MAX_MESSAGES {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return true,
            Err(_) => return false,
        };
        let bytes = msg.bytes;
        let mut control = false;
        match msg.cmsgs() {
            Ok(cmsgs) => {
                for c in cmsgs {
                    control = true;
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        for fd in fds {
                            // SAFETY: the kernel just installed this descriptor in this
                            // process for us (SCM_RIGHTS); nothing else owns it.
                            discard(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                }
            }
            // Truncated (nix refuses to parse it): own what the kernel did install.
            Err(_) => {
                control = true;
                drop(rights_in(&space, space.len()));
            }
        }
        if bytes == 0 && !control {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::socket::{sendmsg, ControlMessage};

    fn send(to: &OwnedFd, bytes: &[u8], fds: &[RawFd]) {
        let iov = [std::io::IoSlice::new(bytes)];
        let cmsgs = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsgs };
        sendmsg::<()>(to.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None).unwrap();
    }

    /// Whether the write end of the pipe whose read end is `r` has been closed, within 2 s.
    fn closed(r: &OwnedFd) -> bool {
        let mut fds = [PollFd::new(r.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(2000u16)).unwrap() == 1
    }

    /// Everything queued on a dropped connection socket is owned and discarded, past an empty
    /// message (which a read without SO_PASSCRED could not tell from the end of the queue) and
    /// inside a Unix socket queued on it; the socket's own close then drops nothing, and a
    /// lingering socket among them does not make it wait (closed inline, it waited 3 s).
    #[test]
    fn a_dropped_connection_socket_discards_what_is_queued_on_it() {
        let (ours, theirs) = crate::socket_pair().unwrap();
        let (inner, inner_peer) = crate::socket_pair().unwrap();
        let (r1, w1) = nix::unistd::pipe().unwrap();
        let (r2, w2) = nix::unistd::pipe().unwrap();
        let (tcp, _listener) = super::super::tests::lingering_socket(3);
        send(&inner_peer, b"x", &[w2.as_raw_fd()]);
        drop((w2, inner_peer));
        send(&theirs, b"", &[]);
        send(&theirs, b"y", &[w1.as_raw_fd(), inner.as_raw_fd()]);
        send(&theirs, b"z", &[tcp.as_raw_fd()]);
        drop((w1, inner, tcp));
        let start = std::time::Instant::now();
        drop(ConnSocket::new(ours));
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "dropping the socket took {:?}",
            start.elapsed()
        );
        assert!(closed(&r1), "the pipe queued on the socket stayed open");
        assert!(
            closed(&r2),
            "the pipe queued inside the queued socket stayed open"
        );
        // The peer sees the hang-up.
        let mut fds = [PollFd::new(theirs.as_fd(), PollFlags::POLLIN)];
        assert_eq!(poll(&mut fds, PollTimeout::from(2000u16)).unwrap(), 1);
    }
}
