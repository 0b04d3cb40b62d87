//! Emptying a connection's control socket before it is closed. The kernel drops the
//! descriptors still queued on a Unix socket (sent and never read) at its last close, on the
//! closing thread, and the last close of one of those can block (a socket lingering with
//! unsent data, a file on a FUSE mount). So this side's end of a connection ([`ConnSocket`])
//! is shut down first, where it is dropped (nothing more can arrive, and the peer sees the
//! hang-up at once), and read out on a closer thread (a queue full of descriptors takes a
//! while, and the thread that drops it may be serving other clients): each descriptor queued
//! on it is owned and closed there. Then its own close has nothing to drop.
//!
//! Only this side's own end of a `SOCK_SEQPACKET` connection is read out so: its options are
//! this side's alone (`SO_PASSCRED` makes every message carry its sender's credentials, so a
//! read with neither bytes nor control data is the end of the queue, not an empty message).
//! A Unix socket a peer sent is another matter (the peer holds it too and can set its options:
//! a stream socket's end of file carries credentials, `SO_PASSPIDFD` adds descriptors to every
//! read): it goes to the closer threads whole.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    getsockopt, recvmsg, setsockopt, shutdown, sockopt, ControlMessageOwned, MsgFlags, Shutdown,
    SockType,
};

use super::closers;
use crate::proto::rights_in;

/// Messages read from one socket at most (its queue is bounded by what the peer may have in
/// flight, its send buffer); past it, the socket is closed with the rest queued (on its closer
/// thread).
const MAX_MESSAGES: usize = 1 << 16;

/// This side's end of a connection: shut down when dropped, then emptied and closed on a closer
/// thread (see the module docs). The shutdown ends the connection
/// for every process that holds it: a forked child that drops its copy of a client or a server
/// (running destructors, unlike `exec` or `_exit`) hangs up its parent's connections.
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
            if prepare(socket.as_fd()) {
                // Shut down here (the peer sees the hang-up now), read out there: a queue full
                // of descriptors is long to read out and close, and this may be a server's
                // event loop.
                closers::drain(socket);
            } else {
                closers::close(socket);
            }
        }
    }
}

/// Makes `socket` (this side's end of a `SOCK_SEQPACKET` connection) ready to be read out:
/// `SO_PASSCRED` on, then shut down. `false` if it is some other kind of socket, or its option
/// cannot be set.
fn prepare(socket: BorrowedFd<'_>) -> bool {
    if getsockopt(&socket, sockopt::SockType) != Ok(SockType::SeqPacket)
        || setsockopt(&socket, sockopt::PassCred, &true).is_err()
    {
        return false;
    }
    let _ = shutdown(socket.as_raw_fd(), Shutdown::Both);
    true
}

/// Shuts `socket` (this side's end of a `SOCK_SEQPACKET` connection) down and reads out its
/// queue, discarding every descriptor queued on it; `true` once the queue is empty. `false` if
/// it is some other kind of socket, cannot be read, or holds more than [`MAX_MESSAGES`].
#[cfg(test)]
fn read_out(socket: BorrowedFd<'_>) -> bool {
    prepare(socket) && read_queue(socket, closers::close_all)
}

/// Reads out the queue of `socket`, made ready by [`prepare`], giving the descriptors of each
/// message to `dispose` once the message is off the queue (a closer thread closes them itself:
/// queued for later, a queue full of them would pile up in this process); `true` once the
/// queue is empty. `false` if it cannot be read or holds more than [`MAX_MESSAGES`].
pub(super) fn read_queue(socket: BorrowedFd<'_>, mut dispose: impl FnMut(Vec<OwnedFd>)) -> bool {
    let mut buf = [0u8; 64];
    let mut space = nix::cmsg_space!([RawFd; 253], libc::ucred);
    for _ in 0..MAX_MESSAGES {
        // A read whose descriptors did not fit (the descriptor limit) writes no header for
        // them: the walk of a truncated buffer must not find the last read's.
        space.fill(0);
        let mut iov = [IoSliceMut::new(&mut buf)];
        // Peeked at first (as `proto::recv` does, and for the same reason): descriptors the
        // kernel cannot install (this process near its descriptor limit) are then dropped while
        // the queued message still holds them, never closed here; a queue that holds such a
        // message is left for the socket's close (on its closer thread).
        let msg = match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_PEEK,
        ) {
            Ok(msg) => msg,
            // A peer that closed with messages of ours unread leaves ECONNRESET pending, which
            // a read reports (and clears) before the queue.
            Err(Errno::EINTR | Errno::ECONNRESET) => continue,
            Err(Errno::EAGAIN) => return true,
            Err(_) => return false,
        };
        let (bytes, truncated) = (msg.bytes, msg.flags.contains(MsgFlags::MSG_CTRUNC));
        let mut control = false;
        // Held until the message is off the queue: discarded before, one could be closed (on
        // a closer thread) while the queued reference is still there, which would then be the
        // last, dropped by the consuming read on this thread.
        let mut peeked: Vec<OwnedFd> = Vec::new();
        match msg.cmsgs() {
            Ok(cmsgs) => {
                for c in cmsgs {
                    control = true;
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        for fd in fds {
                            // SAFETY: the kernel just installed this descriptor in this
                            // process for us (SCM_RIGHTS); nothing else owns it.
                            peeked.push(unsafe { OwnedFd::from_raw_fd(fd) });
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
        if truncated {
            // Left queued (the queue still holds every reference): discarding is safe.
            dispose(peeked);
            return false;
        }
        if bytes == 0 && !control {
            return true;
        }
        // Off the queue, with no room for descriptors: the peek's references are the last.
        let mut iov = [IoSliceMut::new(&mut buf)];
        let consumed = recvmsg::<()>(socket.as_raw_fd(), &mut iov, None, MsgFlags::MSG_DONTWAIT);
        dispose(peeked);
        match consumed {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return false,
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

    /// Everything queued on a connection socket is read out, owned and discarded, past an
    /// empty message (which a read without SO_PASSCRED could not tell from the end of the
    /// queue), on the reading thread without waiting for any close (a lingering socket queued
    /// on it, closed with it inline, waited 3 s); the descriptors are closed while the socket
    /// is still open, so its own close has nothing to drop. A Unix socket queued on it goes to
    /// the closer threads whole, and is closed there.
    #[test]
    fn a_read_out_discards_what_is_queued_on_it() {
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
        // The peer closes with our messages unread: ECONNRESET is pending on our end.
        send(&ours, b"unread", &[]);
        drop(theirs);
        let start = std::time::Instant::now();
        assert!(read_out(ours.as_fd()), "the queue was not read out");
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "reading out the socket took {:?}",
            start.elapsed()
        );
        assert!(closed(&r1), "the pipe queued on the socket stayed open");
        assert!(
            closed(&r2),
            "the pipe queued inside the queued socket stayed open"
        );
        drop(ours);
    }

    /// Dropping a connection socket returns at once, a lingering socket queued on it or not:
    /// its queue is read out on a closer thread, which closes what was queued.
    #[test]
    fn a_dropped_connection_socket_is_read_out_elsewhere() {
        let (ours, theirs) = crate::socket_pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let (tcp, _listener) = super::super::tests::lingering_socket(3);
        send(&theirs, b"y", &[w.as_raw_fd(), tcp.as_raw_fd()]);
        drop((w, tcp));
        let start = std::time::Instant::now();
        drop(ConnSocket::new(ours));
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "dropping the socket took {:?}",
            start.elapsed()
        );
        assert!(closed(&r), "the pipe queued on the socket stayed open");
        drop(theirs);
    }

    /// A Unix socket queued on a connection, behind which 252 other descriptors come in the
    /// same message, carries on its own queue a TCP socket lingering for 30 s: the read-out
    /// returns at once. It peeks, takes the message off the queue, and only then hands what it
    /// peeked to the closer threads: handed over first, a closer could close the Unix socket's
    /// peeked copy while the queue still held the other reference, which the read that takes
    /// the message off would then drop on the reading thread, lingering socket and all (a
    /// reviewer helper's finding in the first version of the peeked read-out).
    #[test]
    fn a_socket_nested_in_a_queued_one_is_not_closed_here() {
        let (ours, theirs) = crate::socket_pair().unwrap();
        let (inner, inner_peer) = crate::socket_pair().unwrap();
        let (tcp, _listener) = super::super::tests::lingering_socket(30);
        send(&inner_peer, b"x", &[tcp.as_raw_fd()]);
        drop((tcp, inner_peer));
        let fillers: Vec<OwnedFd> = (0..252)
            .map(|_| nix::sys::eventfd::EventFd::new().unwrap().into())
            .collect();
        let mut raw = vec![inner.as_raw_fd()];
        raw.extend(fillers.iter().map(|f| f.as_raw_fd()));
        send(&theirs, b"y", &raw);
        drop((inner, fillers));
        let start = std::time::Instant::now();
        assert!(read_out(ours.as_fd()), "the queue was not read out");
        assert!(
            start.elapsed() < std::time::Duration::from_secs(2),
            "reading out the socket took {:?}",
            start.elapsed()
        );
        drop((ours, theirs));
    }

    /// A peer that closed with messages of ours unread leaves ECONNRESET pending on our end,
    /// which the first read reports: the read-out goes on past it (it used to stop there and
    /// hand the whole socket, and what was queued on it, to the closer threads).
    #[test]
    fn a_pending_reset_does_not_stop_the_read_out() {
        let (ours, theirs) = crate::socket_pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        send(&theirs, b"a", &[w.as_raw_fd()]);
        drop(w);
        send(&ours, b"unread", &[]);
        drop(theirs);
        assert!(read_out(ours.as_fd()), "the queue was not read out");
        assert!(closed(&r));
    }

    /// The peer sees the hang-up as soon as the socket is dropped, even while another copy of
    /// it is open (a client's hang-up watcher holds one).
    #[test]
    fn the_peer_sees_the_hang_up_at_once() {
        let (ours, theirs) = crate::socket_pair().unwrap();
        let copy = ours.try_clone().unwrap();
        drop(ConnSocket::new(ours));
        let mut fds = [PollFd::new(theirs.as_fd(), PollFlags::POLLIN)];
        assert_eq!(poll(&mut fds, PollTimeout::from(2000u16)).unwrap(), 1);
        drop(copy);
    }
}
