//! Descriptors in operations, by ownership (io-safety): an operation holds the descriptor it
//! targets until its completion, closes only one it was given, and hands new ones back owned.
//!
//! The kernel looks a plain descriptor up by number when it issues the operation, which for a
//! linked, deferred or punted operation is later than the push. A number the caller closed
//! meanwhile, and that the process reused for another file, would send the operation to that
//! file. So an operation never takes a bare number: a [`SharedFd`] keeps the descriptor open
//! until the completion is reaped.

use std::fs::File;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::sync::Arc;

mod sealed {
    pub trait Sealed {}
}

/// Types that own exactly one descriptor for their whole life, so that the number read once
/// stays theirs while they live: `OwnedFd`, `File` and std's sockets. (Sealed: a type whose
/// [`AsFd`] could answer differently over time would break that.)
pub trait FdOwner: AsFd + Send + Sync + sealed::Sealed + 'static {}

macro_rules! fd_owners {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl FdOwner for $t {}
    )*};
}
fd_owners!(
    OwnedFd,
    File,
    TcpStream,
    TcpListener,
    UdpSocket,
    UnixStream,
    UnixListener,
    UnixDatagram
);

/// A descriptor shared with the operations that use it: each holds a reference until its
/// completion, so the descriptor stays open (and its number means the same file) for as long
/// as the kernel may look it up, whatever the caller drops meanwhile.
///
/// ```
/// use std::sync::Arc;
/// use subring_uring::{SharedFd, Target};
/// let file = Arc::new(std::fs::File::open("/dev/null")?);
/// let target = Target::fd(&file); // the ring's operations share `file`
/// let also = SharedFd::from(std::os::fd::OwnedFd::from(std::fs::File::open("/dev/null")?));
/// # let _ = (target, also);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct SharedFd {
    raw: RawFd,
    _owner: Arc<dyn FdOwner>,
}

impl std::fmt::Debug for SharedFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SharedFd").field(&self.raw).finish()
    }
}

impl SharedFd {
    /// Shares `owner`'s descriptor.
    pub fn new<T: FdOwner>(owner: Arc<T>) -> Self {
        SharedFd {
            raw: owner.as_fd().as_raw_fd(),
            _owner: owner,
        }
    }

    /// The descriptor's number (valid while this value lives).
    pub(crate) fn raw(&self) -> RawFd {
        self.raw
    }
}

impl AsFd for SharedFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `_owner` owns this descriptor for its whole life (`FdOwner`), and it lives
        // at least as long as `self`.
        unsafe { BorrowedFd::borrow_raw(self.raw) }
    }
}

impl<T: FdOwner> From<Arc<T>> for SharedFd {
    fn from(owner: Arc<T>) -> Self {
        SharedFd::new(owner)
    }
}

impl<T: FdOwner> From<&Arc<T>> for SharedFd {
    fn from(owner: &Arc<T>) -> Self {
        SharedFd::new(owner.clone())
    }
}

impl From<OwnedFd> for SharedFd {
    fn from(fd: OwnedFd) -> Self {
        SharedFd::new(Arc::new(fd))
    }
}

/// What [`Op::Close`](crate::Op::Close) closes: a descriptor the caller gives up, or a slot of
/// the registered file table. A shared descriptor cannot be closed this way: other owners
/// still use its number.
#[derive(Debug)]
pub enum CloseTarget {
    /// A descriptor the operation now owns. If the kernel did not close it (the operation was
    /// cancelled, or refused the descriptor), it is closed when the completion is reaped.
    Owned(OwnedFd),
    /// A slot of the registered file table.
    Fixed(u32),
}

impl From<OwnedFd> for CloseTarget {
    fn from(fd: OwnedFd) -> Self {
        CloseTarget::Owned(fd)
    }
}
