//! Connections arriving and leaving: the listening socket, accepting (with the spare descriptor
//! at the descriptor limit), admitting a connection while it says hello (at most
//! `max_handshakes`; past it, the user holding the most silent connections gives up its oldest),
//! expiring silent ones, and releasing a connection.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use bytemuck::Pod;
use nix::errno::Errno;
use nix::sys::epoll::{EpollEvent, EpollFlags};
use nix::sys::socket::{
    accept4, bind, getsockopt, listen, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    UnixAddr,
};
use subring_planes::interrupt::NotifyMode;

use super::conn::{Active, Conn, Limits, State};
use super::service::Service;
use super::{os, spare_fd, Server};
use crate::peer_fd::ConnSocket;
use crate::proto::{self, ServerMsg};
use crate::Error;

/// Connections accepted per look at the listener.
const ACCEPTS_PER_TURN: usize = 64;

pub(crate) fn listen_on(path: &Path) -> Result<OwnedFd, Error> {
    let shown = path.display().to_string();
    let path_error = |source: std::io::Error| Error::Path {
        what: "cannot listen on",
        path: shown.clone(),
        source,
        hint: "",
    };
    let addr = UnixAddr::new(path).map_err(|e| path_error(e.into()))?;
    let open = || {
        socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(os("socket(AF_UNIX, SOCK_SEQPACKET)"))
    };
    let sock = open()?;
    match bind(sock.as_raw_fd(), &addr) {
        Ok(()) => {}
        Err(Errno::EADDRINUSE) => {
            // A socket file is there. If a server answers it is in use; if nobody does, it is
            // left over from a server that died, and is replaced.
            let probe = open()?;
            match nix::sys::socket::connect(probe.as_raw_fd(), &addr) {
                Err(Errno::ECONNREFUSED) => {
                    std::fs::remove_file(path).map_err(path_error)?;
                    bind(sock.as_raw_fd(), &addr).map_err(|e| path_error(e.into()))?;
                }
                _ => {
                    return Err(Error::Path {
                        what: "cannot listen on",
                        path: shown,
                        source: Errno::EADDRINUSE.into(),
                        hint: " (another server is listening there)",
                    })
                }
            }
        }
        Err(e) => return Err(path_error(e.into())),
    }
    listen(&sock, Backlog::new(128).unwrap_or(Backlog::MAXCONN))
        .map_err(|e| path_error(e.into()))?;
    Ok(sock)
}

impl<S: Pod, C: Pod, V: Service<S, C>> Server<S, C, V> {
    pub(crate) fn accept_all(&mut self) -> Result<(), Error> {
        let Some(listener) = self.listener.as_ref().map(|l| l.0.as_raw_fd()) else {
            return Ok(());
        };
        // A bounded number per look, like control messages (the listener is level-triggered).
        for _ in 0..ACCEPTS_PER_TURN {
            match accept4(listener, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK) {
                Ok(fd) => {
                    // SAFETY: accept4 returned a new descriptor that nothing else owns.
                    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                    // A client we cannot register is dropped (it sees the hang-up); the
                    // server goes on.
                    let _ = self.admit(sock);
                }
                Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
                // Out of descriptors: the connection waiting in the backlog keeps the listener
                // readable, and the server would spin on it. The spare descriptor kept for
                // this is closed to accept it, and the connection is closed at once (the
                // client sees the hang-up); then the spare is taken again. Once a descriptor
                // frees, the next client is served as usual.
                Err(Errno::EMFILE | Errno::ENFILE) => {
                    if !self.refuse_for_lack_of_fds(listener) {
                        return Ok(());
                    }
                }
                // Out of memory: try again at the next event.
                Err(Errno::ENOBUFS | Errno::ENOMEM) => return Ok(()),
                Err(e) => return Err(os("accept4")(e)),
            }
        }
        Ok(())
    }

    /// At the descriptor limit: accepts one waiting connection with the spare descriptor and
    /// closes it. `false` if there was no spare (nothing to do but wait).
    fn refuse_for_lack_of_fds(&mut self, listener: std::os::fd::RawFd) -> bool {
        let Some(spare) = self.spare_fd.take() else {
            return false;
        };
        drop(spare);
        let refused = accept4(listener, SockFlag::SOCK_CLOEXEC);
        if let Ok(fd) = refused {
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            let socket = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            // Closed here as it is, not emptied first (reading out what is queued on it needs
            // descriptors too): the spare is taken again just below, and only this close frees
            // the descriptor it needs (otherwise the listener stays readable with no spare and
            // the server spins on it). A client that queued a message carrying a lingering
            // socket before it was accepted could make this close wait; that needs the server
            // already at its descriptor limit.
            drop(socket);
            self.stats.accepted += 1;
            self.stats.refused += 1;
            self.stats.refused_no_fds += 1;
        }
        self.spare_fd = spare_fd();
        refused.is_ok()
    }

    pub(crate) fn admit(&mut self, socket: OwnedFd) -> Result<(), Error> {
        self.stats.accepted += 1;
        // The kernel's word for who connected, taken once: the welcome hands it to the service,
        // and the limits per user go by it.
        let creds = getsockopt(&socket, sockopt::PeerCredentials).ok();
        let socket = ConnSocket::new(socket);
        // Connections that have not said hello cost a descriptor and a place in every look at
        // the connections: a bounded number of them.
        let saying_hello = self
            .conns
            .iter()
            .filter(|c| matches!(c.state, State::Handshake { .. }))
            .count();
        if saying_hello >= self.config.max_handshakes as usize {
            // A silent connection makes room: refusing the newcomer instead would let a peer
            // keep every new client out with `max_handshakes` silent connections renewed once
            // per handshake timeout, where now it must open them faster than an honest client
            // says hello (within a turn or two). It is the oldest of the user who would hold
            // the most, so that one user's flood pushes out its own connections before anyone
            // else's.
            let newcomer = creds.map(|c| c.uid());
            let pending = self
                .conns
                .iter()
                .enumerate()
                .filter_map(|(i, c)| match c.state {
                    State::Handshake { deadline } => Some((c.uid(), deadline, i)),
                    State::Active(_) => None,
                });
            match evictee(pending, newcomer) {
                Some(i) => {
                    self.stats.made_room += 1;
                    self.release(i, Some("made room for a newer connection".into()));
                }
                None => {
                    self.stats.refused += 1;
                    drop(socket); // the client sees the hang-up
                    return Ok(());
                }
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.epoll
            .add(
                &socket,
                EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP, id * 2),
            )
            .map_err(os("epoll_ctl(ADD client socket)"))?;
        self.conns.push(Conn {
            id,
            socket,
            creds,
            state: State::Handshake {
                deadline: Instant::now() + self.config.handshake_timeout,
            },
        });
        Ok(())
    }

    pub(crate) fn expire_handshakes(&mut self) {
        // As in `sleep_limit`: no clock read unless a handshake is pending (this runs after
        // every wake-up, before the request that woke the server is served).
        let mut now = None;
        let mut i = 0;
        while i < self.conns.len() {
            if matches!(self.conns[i].state, State::Handshake { deadline }
                if deadline <= *now.get_or_insert_with(Instant::now))
            {
                self.release(i, Some("no hello within the handshake timeout".into()));
            } else {
                i += 1;
            }
        }
    }

    /// Releases connection `i`: says why if it is an eviction, unregisters its fds, drops its
    /// queue pair (which tells the client the service side closed) and its memory.
    pub(crate) fn release(&mut self, i: usize, why: Option<String>) {
        let conn = self.conns.swap_remove(i);
        if let Some(reason) = why {
            if matches!(conn.state, State::Active(_)) {
                self.stats.evicted += 1;
                let _ = proto::send(conn.socket.as_fd(), &ServerMsg::Goodbye { reason }, &[]);
            } else {
                self.stats.refused += 1;
            }
        }
        let _ = self.epoll.delete(&conn.socket);
        if let State::Active(a) = conn.state {
            if let Some(kick) = a.service.kick_fd() {
                let _ = self.epoll.delete(kick);
            }
            match a.info.mode {
                NotifyMode::Spin => self.spin_clients -= 1,
                NotifyMode::Adaptive => self.adaptive_clients -= 1,
                _ => {}
            }
            self.stats.calls.add(a.service.stats());
            self.stats.released += 1;
            self.shares_stale = true;
            self.kick_words_changed |= a.kick_word.is_some();
            self.words_departed |= a.kick_word.is_some();
            if let (Some(waits), Some(_)) = (&mut self.kick_waits, &a.kick_word) {
                // Best effort: a wait left armed ends at a wake-up, or with the ring.
                let _ = waits.cancel(&super::kick_waits::keys(conn.id));
                self.futex_doorbells -= 1;
            }
            let Active {
                client,
                info,
                ledger,
                service,
                memory,
                kick_word,
                room_word,
                ..
            } = *a;
            // The service cancels what it can; the queue pair goes now (which tells the client
            // the service side closed), and the server's mappings of the client's memory on a
            // closer thread: unmapping them, and freeing the memory if the client is gone,
            // takes in proportion to what the client filled (about 25 ms a gigabyte here).
            // The service holds its own references to whatever memory it still lends out.
            self.service.disconnect(client, &info);
            drop(service);
            // (The client's words hold its memory too.)
            crate::peer_fd::drop_elsewhere((memory, kick_word, room_word));
            self.departing.push(ledger);
            self.retire_departed();
        }
        if self.futex_doorbells == 0 {
            // No client rings a futex doorbell any more (the last one left, or the one the
            // ring was set up for was refused after all): the ring and its descriptor go.
            if let Some(waits) = self.kick_waits.take() {
                let _ = self.epoll.delete(&waits);
                // Its waits not yet reaped may hold the last of a departed client's memory.
                crate::peer_fd::drop_elsewhere(waits);
            }
        }
    }

    pub(crate) fn release_all(&mut self, reason: &str) {
        while !self.conns.is_empty() {
            let last = self.conns.len() - 1;
            if let State::Active(a) = &mut self.conns[last].state {
                let _ = a.serve(
                    &mut self.service,
                    Limits::draining(self.config.max_deferred),
                );
            }
            let _ = proto::send(
                self.conns[last].socket.as_fd(),
                &ServerMsg::Goodbye {
                    reason: reason.into(),
                },
                &[],
            );
            self.release(last, None);
        }
    }
}

/// Which silent connection makes room for a newcomer from user `newcomer`, given the
/// connections still saying hello (user, handshake deadline, index): the oldest of the user who
/// would hold the most with the newcomer counted, the user whose oldest is oldest among equals.
/// `None` if there are none.
fn evictee(
    pending: impl Iterator<Item = (Option<u32>, Instant, usize)>,
    newcomer: Option<u32>,
) -> Option<usize> {
    // Per user: how many, and the oldest (the earliest deadline: they all had the same timeout).
    let mut users: BTreeMap<Option<u32>, (usize, Instant, usize)> = BTreeMap::new();
    for (uid, deadline, i) in pending {
        let entry = users.entry(uid).or_insert((0, deadline, i));
        entry.0 += 1;
        if deadline < entry.1 {
            (entry.1, entry.2) = (deadline, i);
        }
    }
    users
        .iter()
        .map(|(uid, &(count, oldest, i))| (count + usize::from(*uid == newcomer), oldest, i))
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, _, i)| i)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::evictee;

    /// Connections (user, age in seconds), the newest last, as `evictee` sees them.
    fn pending(conns: &[(Option<u32>, u64)]) -> Vec<(Option<u32>, Instant, usize)> {
        let now = Instant::now() + Duration::from_secs(100);
        conns
            .iter()
            .enumerate()
            .map(|(i, &(uid, age))| (uid, now - Duration::from_secs(age), i))
            .collect()
    }

    #[test]
    fn the_user_holding_the_most_gives_up_its_oldest() {
        // User 7 holds three, user 1 one (the oldest of all): user 7's oldest goes.
        let p = pending(&[(Some(1), 9), (Some(7), 8), (Some(7), 5), (Some(7), 2)]);
        assert_eq!(evictee(p.iter().copied(), Some(2)), Some(1));
        assert_eq!(evictee(p.iter().copied(), Some(7)), Some(1));
    }

    #[test]
    fn the_newcomer_counts_for_its_user() {
        // Two each: the newcomer's user would hold three, so its own oldest goes, even though
        // the other user's is older.
        let p = pending(&[(Some(1), 9), (Some(7), 8), (Some(1), 5), (Some(7), 2)]);
        assert_eq!(evictee(p.iter().copied(), Some(7)), Some(1));
        assert_eq!(evictee(p.iter().copied(), Some(1)), Some(0));
    }

    #[test]
    fn among_equals_the_oldest_goes() {
        let p = pending(&[(Some(3), 4), (Some(1), 9), (None, 6)]);
        assert_eq!(evictee(p.iter().copied(), Some(2)), Some(1));
        // Unknown credentials are a user of their own.
        let p = pending(&[(None, 4), (Some(1), 9), (None, 6)]);
        assert_eq!(evictee(p.iter().copied(), Some(2)), Some(2));
        assert_eq!(evictee(std::iter::empty(), Some(2)), None);
    }
}
