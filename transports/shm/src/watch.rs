//! The process's hang-up watcher: a thread that sleeps on the control sockets of clients that
//! wait on a futex or spin, and so cannot sleep on their socket themselves. When a socket hangs
//! up (the server died or left), it declares that client's server gone
//! ([`ServiceGone::declare`]): the client's wait ends at once with `PeerGone`, with no timeout
//! and no periodic wake-up to look. (An eventfd-mode client sleeps on its socket's hang-up in
//! its own epoll set and needs no watcher.)
//!
//! One thread serves every client of the process; it is started by the first client that needs
//! it, and again in a forked child (threads do not survive `fork`). It costs nothing per
//! request: it sleeps in `epoll_wait` until a socket hangs up.
//!
//! The registry is a plain `std::sync::Mutex` map, held only to add, remove or take an entry:
//! no lock-free protocol lives here. The wake-up it triggers is the planes' close protocol,
//! which the loom model `service_declared_gone_wakes_a_waiting_app` checks.
#![allow(clippy::disallowed_types)]

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use std::sync::Mutex;

use subring_planes::pair::ServiceGone;
use subring_planes::sync::{AtomicU64, Ordering};

struct Watcher {
    epoll: Epoll,
    watched: Mutex<HashMap<u64, ServiceGone>>,
    next: AtomicU64,
}

/// The process's watcher, with the id of the process that started it.
static WATCHER: Mutex<Option<(u32, Arc<Watcher>)>> = Mutex::new(None);

/// The watcher of this process, started if there is none yet (or only a parent's, inherited
/// through `fork` without its thread).
fn watcher() -> io::Result<Arc<Watcher>> {
    let mut slot = WATCHER.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    if let Some((owner, w)) = slot.as_ref() {
        if *owner == pid {
            return Ok(w.clone());
        }
    }
    let watcher = Arc::new(Watcher {
        epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
        watched: Mutex::new(HashMap::new()),
        next: AtomicU64::new(0),
    });
    let run = watcher.clone();
    std::thread::Builder::new()
        .name("subring-shm-watch".into())
        .spawn(move || run.run())?;
    *slot = Some((pid, watcher.clone()));
    Ok(watcher)
}

impl Watcher {
    fn run(&self) {
        let mut events = [EpollEvent::empty(); 16];
        loop {
            let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                // Nothing can make a failing epoll_wait succeed later: clients then notice a
                // dead server at their next push into a full ring, as without a watcher.
                Err(_) => return,
            };
            for event in &events[..n] {
                // Registered one-shot: each socket is reported once, then its entry is gone.
                let gone = self.entries().remove(&event.data());
                if let Some(gone) = gone {
                    // Best effort: a failed wake-up leaves the closed mark, which the client's
                    // next look at its ring sees.
                    let _ = gone.declare();
                }
            }
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ServiceGone>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One client's registration: the watcher declares its server gone when `socket` hangs up.
/// Dropping it ends the watch.
pub(crate) struct Watch {
    watcher: Arc<Watcher>,
    token: u64,
    /// A duplicate of the client's socket, which the epoll registration is keyed by.
    socket: OwnedFd,
}

impl Watch {
    /// Watches `socket` (the client's control socket) for hang-up, declaring `gone` then.
    pub(crate) fn start(socket: BorrowedFd<'_>, gone: ServiceGone) -> io::Result<Watch> {
        let watcher = watcher()?;
        let socket = socket.try_clone_to_owned()?;
        let token = watcher.next.fetch_add(1, Ordering::Relaxed);
        watcher.entries().insert(token, gone);
        let event = EpollEvent::new(EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLONESHOT, token);
        if let Err(e) = watcher.epoll.add(socket.as_fd(), event) {
            watcher.entries().remove(&token);
            return Err(e.into());
        }
        Ok(Watch {
            watcher,
            token,
            socket,
        })
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.watcher.entries().remove(&self.token);
        let _ = self.watcher.epoll.delete(self.socket.as_fd());
    }
}
