//! Descriptors a peer sent: owned from the moment the kernel installs them, checked for their
//! kind before anything else is done with them, and closed where closing cannot block.
//!
//! A peer may send any descriptor. Closing some of them blocks the closing thread: a TCP socket
//! with `SO_LINGER` set and unsent data waits up to the linger time the peer chose; a file on a
//! FUSE mount waits for the daemon's answer to its flush. And a peer can send many: 253 in a
//! message. So a received descriptor is a [`PeerFd`]: it becomes an `OwnedFd` only through a
//! check of its kind ([`PeerFd::memfd`], [`PeerFd::eventfd`]), and one that is refused or
//! dropped is closed by [`discard`], which hands it to the closer threads ([`closers`]); a
//! message refused whole hands all of its own over in one job ([`discard_all`]): the thread
//! that received them spends no more on them than the handing over.
//!
//! - [`drain`]: this side's end of a connection ([`ConnSocket`]) is shut down, then emptied of
//!   the descriptors queued on it and closed on a closer thread.
//! - [`closers`]: the threads that close what may block, and read out what is long to.
//!
//! Telling the kinds apart must not block either: a file on a FUSE mount answers `fstat` and
//! `fstatfs` only when its daemon does. So the kind is read from what the kernel knows without
//! asking the file's file system: the `/proc/self/fd` link (anonymous inodes, sockets and pipes
//! name themselves there) and `F_GET_SEALS`, which only shmem (tmpfs, memfd) and hugetlbfs
//! files answer; only such a file is then `fstatfs`ed.

mod closers;
mod drain;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg};

pub(crate) use drain::ConnSocket;

use crate::{FdError, FdKind};
use nix::sys::stat::{fstat, SFlag};
use nix::sys::statfs::{fstatfs, TMPFS_MAGIC};

/// A descriptor received from a peer, not yet checked.
#[derive(Debug)]
pub(crate) struct PeerFd(Option<OwnedFd>);

/// What a descriptor is, as far as this crate cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A regular file on tmpfs (shmem): what `memfd_create` without `MFD_HUGETLB` makes.
    Shmem,
    /// An eventfd.
    EventFd,
    /// An epoll instance.
    Epoll,
    /// A socket.
    Socket,
    /// Anything else.
    Other,
}

fn kind(fd: BorrowedFd<'_>) -> Kind {
    // The link is the kernel's name for the open file (no file system is asked): a pseudo file
    // names its kind, anything on a mounted file system has a path that starts with `/`.
    if let Ok(link) = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
        let link = link.as_os_str().as_encoded_bytes();
        if link == b"anon_inode:[eventfd]" {
            return Kind::EventFd;
        }
        if link == b"anon_inode:[eventpoll]" {
            return Kind::Epoll;
        }
        if link.starts_with(b"socket:[") {
            return Kind::Socket;
        }
    }
    // Only shmem and hugetlbfs files have seals: anything else (a FUSE file among them) is
    // refused here, before any call that its file system would answer.
    if fcntl(fd, FcntlArg::F_GET_SEALS).is_err() {
        return Kind::Other;
    }
    let regular = fstat(fd)
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG);
    match fstatfs(fd) {
        Ok(fs) if regular && fs.filesystem_type() == TMPFS_MAGIC => Kind::Shmem,
        _ => Kind::Other,
    }
}

fn describe(fd: BorrowedFd<'_>) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|l| l.display().to_string())
        .unwrap_or_else(|_| "of an unknown kind".into())
}

impl PeerFd {
    /// Takes ownership of a descriptor the kernel just installed for a received message.
    pub(crate) fn new(fd: OwnedFd) -> Self {
        PeerFd(Some(fd))
    }

    /// The descriptor as a memfd: a regular file on tmpfs. Refused otherwise, and closed where
    /// it cannot block: a hugetlbfs memfd (whose pages the peer can punch out and then starve
    /// this process of, so that touching them raises SIGBUS), a file on any other file system,
    /// a socket, anything.
    pub(crate) fn memfd(self) -> Result<OwnedFd, FdError> {
        self.of_kind(FdKind::Memfd)
    }

    /// The descriptor as an eventfd. Refused (and closed where it cannot block) otherwise.
    pub(crate) fn eventfd(self) -> Result<OwnedFd, FdError> {
        self.of_kind(FdKind::EventFd)
    }

    /// The descriptor as an epoll instance. Refused (and closed where it cannot block)
    /// otherwise.
    pub(crate) fn epoll(self) -> Result<OwnedFd, FdError> {
        self.of_kind(FdKind::Epoll)
    }

    fn of_kind(mut self, expected: FdKind) -> Result<OwnedFd, FdError> {
        let fd = self.0.take().expect("a PeerFd holds its fd until taken");
        match (kind(fd.as_fd()), expected) {
            (Kind::Shmem, FdKind::Memfd)
            | (Kind::EventFd, FdKind::EventFd)
            | (Kind::Epoll, FdKind::Epoll) => Ok(fd),
            _ => {
                let got = describe(fd.as_fd());
                discard(fd);
                Err(FdError::Kind { expected, got })
            }
        }
    }
}

impl Drop for PeerFd {
    fn drop(&mut self) {
        if let Some(fd) = self.0.take() {
            discard(fd);
        }
    }
}

/// Closes a descriptor a peer sent without blocking the calling thread, or spending its time:
/// on the closer threads, lingering off first ([`closers`]).
pub(crate) fn discard(fd: OwnedFd) {
    closers::close(fd);
}

/// Closes every descriptor of `fds` (a message's) as [`discard`] does, handed over in one job.
pub(crate) fn discard_all(fds: Vec<PeerFd>) {
    closers::close_all(fds.into_iter().filter_map(|mut f| f.0.take()).collect());
}

/// Drops `value` on the dropper thread: what takes long to drop in proportion to what a peer
/// made of it, such as the mappings of a departed client's memory (unmapping them, and
/// freeing the memory if this process held the last reference to its memfd: tens of
/// milliseconds for a gigabyte the client filled). A thread of its own, not a closer: a
/// closer may be held for good by a close that blocks, and memory must not wait behind it.
pub(crate) fn drop_elsewhere<T: Send + 'static>(value: T) {
    closers::drop_elsewhere(Box::new(value));
}

/// Closes a descriptor of this side's on the closer threads: one whose close drops what peers
/// queued on it (a listener, with the connections still in its backlog).
pub(crate) fn close_elsewhere(fd: OwnedFd) {
    closers::close(fd);
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::eventfd::{EfdFlags, EventFd};
    use nix::sys::memfd::{memfd_create, MFdFlags};
    use nix::sys::socket::{setsockopt, sockopt};

    #[test]
    fn kinds_are_told_apart() {
        let memfd = memfd_create("peer-fd-test", MFdFlags::MFD_CLOEXEC).unwrap();
        assert!(PeerFd::new(memfd).memfd().is_ok());
        let efd: OwnedFd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC).unwrap().into();
        assert!(PeerFd::new(efd.try_clone().unwrap()).eventfd().is_ok());
        // Refused with the kind expected, and what arrived named for people.
        let refused = |e: FdError, kind: FdKind, named: &str| {
            assert!(
                matches!(&e, FdError::Kind { expected, got } if *expected == kind && got.contains(named)),
                "{e}"
            );
        };
        refused(
            PeerFd::new(efd).memfd().unwrap_err(),
            FdKind::Memfd,
            "eventfd",
        );
        let (a, _b) = crate::socket_pair().unwrap();
        refused(
            PeerFd::new(a).eventfd().unwrap_err(),
            FdKind::EventFd,
            "socket",
        );
        let (r, _w) = nix::unistd::pipe().unwrap();
        refused(PeerFd::new(r).memfd().unwrap_err(), FdKind::Memfd, "pipe");
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        assert!(PeerFd::new(file.into()).memfd().is_err(), "not tmpfs");
    }

    /// A TCP socket on loopback whose close blocks for `secs`: lingering, with a send queue
    /// the peer never drains. The listener must outlive it (its close would reset the
    /// connection and end the linger).
    pub(super) fn lingering_socket(secs: i32) -> (OwnedFd, std::net::TcpListener) {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        stream.set_nonblocking(true).unwrap();
        while stream.write(&[0u8; 1 << 16]).is_ok() {}
        let tcp: OwnedFd = stream.into();
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: secs,
        };
        setsockopt(&tcp, sockopt::Linger, &linger).unwrap();
        // Blocking again, so that its close waits for the linger.
        let flags = fcntl(&tcp, FcntlArg::F_GETFL).unwrap();
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) - nix::fcntl::OFlag::O_NONBLOCK;
        fcntl(&tcp, FcntlArg::F_SETFL(flags)).unwrap();
        (tcp, listener)
    }

    /// A close that blocks (a Unix socket whose queue holds the last reference to a socket
    /// lingering with unsent data, here: turning the outer one's lingering off does not help;
    /// a FUSE file whose daemon never answers, in the attack) holds one closer thread; the
    /// next descriptor is closed by another at once, not queued behind it.
    #[test]
    fn a_close_that_blocks_holds_one_closer_and_the_others_go_on() {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        use std::time::{Duration, Instant};
        let (tcp, listener) = lingering_socket(3);
        let (outer, outer_peer) = crate::socket_pair().unwrap();
        let raw = [tcp.as_raw_fd()];
        let iov = [std::io::IoSlice::new(b"x")];
        sendmsg::<()>(
            outer_peer.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        drop((tcp, outer_peer));
        let pool = closers::Closers::new();
        assert_eq!(pool.threads(), closers::CLOSER_THREADS);
        // One of them closing the socket, which blocks.
        pool.run(closers::Job::Close(vec![outer]))
            .map_err(drop)
            .unwrap();
        let start = Instant::now();
        while pool.busy() != 1 {
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "no closer took it"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let (r, w) = nix::unistd::pipe().unwrap();
        let start = Instant::now();
        pool.run(closers::Job::Close(vec![w]))
            .map_err(drop)
            .unwrap();
        let mut fds = [nix::poll::PollFd::new(
            r.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ready = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(2000u16)).unwrap();
        assert_eq!(ready, 1, "the pipe's write end was not closed within 2 s");
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the second close waited {:?} behind the first",
            start.elapsed()
        );
        drop(listener);
    }

    /// A hugetlbfs memfd is refused: its pages can be taken away under the mapping.
    #[test]
    fn a_hugetlb_memfd_is_refused() {
        let Ok(fd) = memfd_create(
            "peer-fd-huge",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_HUGETLB,
        ) else {
            eprintln!("skipping: this kernel cannot make hugetlb memfds");
            return;
        };
        let e = PeerFd::new(fd).memfd().unwrap_err();
        assert!(
            matches!(
                e,
                FdError::Kind {
                    expected: FdKind::Memfd,
                    ..
                }
            ),
            "{e}"
        );
    }
}
