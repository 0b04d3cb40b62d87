//! Descriptors a peer sent: owned from the moment the kernel installs them, checked for their
//! kind before anything else is done with them, and closed where closing cannot block.
//!
//! A peer may send any descriptor. Closing some of them blocks the closing thread: a TCP socket
//! with `SO_LINGER` set and unsent data waits up to the linger time the peer chose; a file on a
//! FUSE mount waits for the daemon's answer to its flush. So a received descriptor is a
//! [`PeerFd`]: it becomes an `OwnedFd` only through a check of its kind ([`PeerFd::memfd`],
//! [`PeerFd::eventfd`]), and one that is refused or dropped is closed by [`discard`], which
//! closes memfds and eventfds (whose close never blocks) at once and hands anything else to a
//! closer thread, after turning a socket's lingering off.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{self, Sender};
use std::sync::OnceLock;

use nix::sys::socket::{setsockopt, sockopt};

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
    let Ok(st) = fstat(fd) else {
        return Kind::Other;
    };
    let ty = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if ty == SFlag::S_IFSOCK {
        return Kind::Socket;
    }
    if ty == SFlag::S_IFREG {
        return match fstatfs(fd) {
            Ok(fs) if fs.filesystem_type() == TMPFS_MAGIC => Kind::Shmem,
            _ => Kind::Other,
        };
    }
    match std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
        Ok(link) if link.as_os_str() == "anon_inode:[eventfd]" => Kind::EventFd,
        Ok(link) if link.as_os_str() == "anon_inode:[eventpoll]" => Kind::Epoll,
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

/// A connection's control socket, closed on the closer thread when dropped: the kernel drops
/// the descriptors still queued on it unread (a peer may send any) at its last close, and the
/// last close of one of those can block as any peer descriptor's can ([`discard`]).
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
            discard(socket);
        }
    }
}

/// The closer thread of this process: its sender, and the process it was started in (a
/// forked child has no such thread and starts its own).
static CLOSER: OnceLock<(u32, Sender<OwnedFd>)> = OnceLock::new();

fn closer() -> Option<&'static Sender<OwnedFd>> {
    let (pid, tx) = CLOSER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<OwnedFd>();
        let started = std::thread::Builder::new()
            .name("subring-fd-closer".into())
            .spawn(move || {
                // Each close may block (that is why it is here); the others wait their turn.
                for fd in rx {
                    drop(fd);
                }
            });
        // Without a thread the receiver is gone, every send fails and `discard` closes inline.
        drop(started);
        (std::process::id(), tx)
    });
    (*pid == std::process::id()).then_some(tx)
}

/// Closes a descriptor a peer sent without blocking the calling thread: memfds and eventfds at
/// once (their close never waits), anything else on the closer thread. A socket first has its
/// lingering turned off, so that even its last close does not wait for unsent data.
pub(crate) fn discard(fd: OwnedFd) {
    match kind(fd.as_fd()) {
        // (Closing an epoll instance never closes what it watches.)
        Kind::Shmem | Kind::EventFd | Kind::Epoll => drop(fd),
        k => {
            if k == Kind::Socket {
                let _ = setsockopt(
                    &fd,
                    sockopt::Linger,
                    &libc::linger {
                        l_onoff: 0,
                        l_linger: 0,
                    },
                );
            }
            match closer() {
                Some(tx) => {
                    if let Err(mpsc::SendError(fd)) = tx.send(fd) {
                        close_inline(fd);
                    }
                }
                None => close_inline(fd),
            }
        }
    }
}

/// The last resort when no closer thread runs (it could not start, or this is a forked child of
/// a process that started one: the thread did not survive the fork): close here. With
/// lingering off a socket's close does not wait; a file on a FUSE mount still could.
fn close_inline(fd: OwnedFd) {
    drop(fd);
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::eventfd::{EfdFlags, EventFd};
    use nix::sys::memfd::{memfd_create, MFdFlags};

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
