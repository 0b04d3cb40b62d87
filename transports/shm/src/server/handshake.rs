//! Connections arriving and leaving: accepting, the hello and its checks, the welcome with the
//! shared memory and eventfds, later control messages (registering a region, shutting down),
//! and release.

use std::collections::VecDeque;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytemuck::Pod;
use nix::errno::Errno;
use nix::sys::epoll::{EpollEvent, EpollFlags};
use nix::sys::socket::{
    accept4, bind, getsockopt, listen, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    UnixAddr,
};
use subring_planes::data::{PoolLayout, Region, RegionOptions};
use subring_planes::interrupt::NotifyMode;
use subring_planes::pair::{PairConfig, PairLayout, PairSignals, ServiceSide};

use super::config::{ClientInfo, ServerSleep};
use super::conn::{Active, Armed, Conn, Limits, State};
use super::ctx::ClientMemory;
use super::service::{Ledger, Service};
use super::{os, spare_fd, Server};

/// Control messages read from one client per look at its socket.
const CONTROL_MESSAGES_PER_TURN: usize = 16;
/// Connections accepted per look at the listener.
const ACCEPTS_PER_TURN: usize = 64;
use crate::peer_fd::{ConnSocket, PeerFd};
use crate::proto::{self, ClientMsg, EntryShape, Hello, Incoming, Refusal, ServerMsg, Welcome};
use crate::Error;

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
        // Connections that have not said hello cost a descriptor and a place in every look at
        // the connections: a bounded number of them.
        let saying_hello = self
            .conns
            .iter()
            .filter(|c| matches!(c.state, State::Handshake { .. }))
            .count();
        let socket = ConnSocket::new(socket);
        if saying_hello >= self.config.max_handshakes as usize {
            // The one that has said nothing longest makes room: refusing the newcomer instead
            // would let a peer keep every new client out with `max_handshakes` silent
            // connections renewed once per handshake timeout, where now it must open them
            // faster than an honest client says hello (within a turn or two).
            let oldest = self
                .conns
                .iter()
                .enumerate()
                .filter_map(|(i, c)| match c.state {
                    State::Handshake { deadline } => Some((deadline, i)),
                    State::Active(_) => None,
                })
                .min()
                .map(|(_, i)| i);
            match oldest {
                Some(i) => self.release(i, Some("made room for a newer connection".into())),
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

    pub(crate) fn on_socket(&mut self, id: u64, events: EpollFlags) {
        let Some(i) = self.conns.iter().position(|c| c.id == id) else {
            return;
        };
        if events.contains(EpollFlags::EPOLLIN) {
            // Read the messages that are there, a bounded number: a client that floods its
            // control socket gets a fair share of the server's turn, not all of it (the socket
            // is watched level-triggered, so what is left is reported at the next look). A
            // hang-up after them is seen below.
            for _ in 0..CONTROL_MESSAGES_PER_TURN {
                let msg = proto::recv::<ClientMsg>(self.conns[i].socket.as_fd());
                match msg {
                    Ok(None) => break,
                    Ok(Some(m)) => {
                        if !self.on_message(i, m) {
                            return;
                        }
                    }
                    Err(Error::Closed { .. }) => {
                        self.release(i, None);
                        return;
                    }
                    Err(Error::Version { peer, .. }) => {
                        let _ = proto::send_version_refusal(self.conns[i].socket.as_fd());
                        self.release(i, Some(format!("client speaks control version {peer}")));
                        return;
                    }
                    Err(e) => {
                        let why = e.to_string();
                        let _ = proto::send(
                            self.conns[i].socket.as_fd(),
                            &ServerMsg::Refused(Refusal::Malformed(why.clone())),
                            &[],
                        );
                        self.release(i, Some(why));
                        return;
                    }
                }
            }
        }
        if events.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLERR) {
            // The client died (a client that leaves says so first, and what it published
            // before its shutdown message was served above): what it left in its ring is
            // nobody's to answer, and serving it would only delay everyone else. Release.
            self.release(i, None);
        }
    }

    /// Handles one control message from connection `i`; `false` if the connection is gone.
    fn on_message(&mut self, i: usize, msg: Incoming<ClientMsg>) -> bool {
        let (msg, fds) = match msg {
            Incoming::VersionRefused(v) => {
                self.release(
                    i,
                    Some(format!("client refused our version, it speaks {v}")),
                );
                return false;
            }
            Incoming::Message(m, fds) => (m, fds),
        };
        let handshake = matches!(self.conns[i].state, State::Handshake { .. });
        match (msg, handshake) {
            (ClientMsg::Hello(hello), true) => match self.welcome(i, &hello, fds) {
                Ok(()) => true,
                Err(refusal) => {
                    let _ = proto::send(
                        self.conns[i].socket.as_fd(),
                        &ServerMsg::Refused(refusal.clone()),
                        &[],
                    );
                    self.release(i, Some(refusal.to_string()));
                    false
                }
            },
            (ClientMsg::RegisterRegion { id, len }, false) => {
                let answer = match self.register(i, id, len, fds) {
                    Ok(()) => ServerMsg::Registered { id },
                    Err(r) => ServerMsg::Refused(r),
                };
                let _ = proto::send(self.conns[i].socket.as_fd(), &answer, &[]);
                true
            }
            (ClientMsg::Shutdown, false) => {
                // What the client published before leaving is served, but in turns under the
                // usual limits, as any client's requests are (served here at once, a ring of
                // requests each touching a whole buffer would hold up every other client), and
                // the connection is released at the first turn that takes nothing from it. Its
                // socket is no longer watched (its hang-up would report at every look).
                if let State::Active(a) = &mut self.conns[i].state {
                    a.leaving = true;
                }
                let _ = self.epoll.delete(&self.conns[i].socket);
                false
            }
            (other, _) => {
                let why = format!(
                    "unexpected {other:?} {}",
                    if handshake {
                        "before hello"
                    } else {
                        "after hello"
                    }
                );
                let _ = proto::send(
                    self.conns[i].socket.as_fd(),
                    &ServerMsg::Refused(Refusal::Malformed(why.clone())),
                    &[],
                );
                self.release(i, Some(why));
                false
            }
        }
    }

    fn check_hello(&self, hello: &Hello, fds: &[PeerFd]) -> Result<(), Refusal> {
        let cfg = &self.config;
        if !fds.is_empty() {
            return Err(Refusal::Malformed(format!(
                "hello carried {} file descriptors, expected none",
                fds.len()
            )));
        }
        if hello.protocol != cfg.protocol {
            return Err(Refusal::Protocol {
                server: cfg.protocol.clone(),
                client: hello.protocol.clone(),
            });
        }
        for (which, server, client) in [
            ("request", EntryShape::of::<S>(), hello.request),
            ("completion", EntryShape::of::<C>(), hello.completion),
        ] {
            if server != client {
                return Err(Refusal::EntryShape {
                    which: which.into(),
                    server,
                    client,
                });
            }
        }
        let limit = |what: &str, asked: u64, min: u64, max: u64| {
            if asked < min || asked > max {
                Err(Refusal::Limit {
                    what: what.into(),
                    asked,
                    min,
                    max,
                })
            } else {
                Ok(())
            }
        };
        for (what, cap) in [
            ("submission ring capacity", hello.sq_capacity),
            ("completion ring capacity", hello.cq_capacity),
        ] {
            limit(what, cap.into(), 2, cfg.max_capacity.into())?;
            if !cap.is_power_of_two() {
                return Err(Refusal::Unaligned {
                    what: what.into(),
                    asked: cap.into(),
                    of: 0,
                });
            }
        }
        limit(
            "buffer size",
            hello.buf_size.into(),
            64,
            cfg.max_buf_size.into(),
        )?;
        if hello.buf_size % 64 != 0 {
            return Err(Refusal::Unaligned {
                what: "buffer size".into(),
                asked: hello.buf_size.into(),
                of: 64,
            });
        }
        limit("buffer count", hello.buf_count.into(), 1, 1 << 20)?;
        let active = self
            .conns
            .iter()
            .filter(|c| matches!(c.state, State::Active(_)))
            .count();
        if active >= cfg.max_clients as usize {
            return Err(Refusal::Busy {
                max_clients: cfg.max_clients,
            });
        }
        Ok(())
    }

    fn welcome(&mut self, i: usize, hello: &Hello, fds: Vec<PeerFd>) -> Result<(), Refusal> {
        self.check_hello(hello, &fds)?;
        let mode: NotifyMode = hello.mode.into();
        let config = PairConfig {
            sq_capacity: hello.sq_capacity,
            cq_capacity: hello.cq_capacity,
            // The server waits for a spin client by polling it; for everyone else it sleeps in
            // epoll, where their doorbell is the kick eventfd, or on their kick words.
            kick_mode: match (mode, self.config.sleep) {
                (NotifyMode::Spin, _) => NotifyMode::Spin,
                (_, ServerSleep::Epoll) => NotifyMode::EventFd,
                (_, ServerSleep::Futex) => NotifyMode::Futex,
            },
            call_mode: mode,
            event_idx: hello.event_idx && self.config.event_idx,
        };
        let internal = |e: &dyn fmt::Display| Refusal::Internal(e.to_string());
        let pair = PairLayout::of::<S, C>(&config).map_err(|e| internal(&e))?;
        let pool_offset = pair.size.next_multiple_of(4096) as u64;
        let span = u64::from(hello.buf_size) * u64::from(hello.buf_count);
        let region_len = (pool_offset + span).next_multiple_of(4096);
        if region_len > self.config.max_region_len {
            return Err(Refusal::Limit {
                what: "shared memory (rings and buffers) in bytes".into(),
                asked: region_len,
                min: 1,
                max: self.config.max_region_len,
            });
        }
        let id = self.conns[i].id;
        let region = Region::memfd(
            &format!("subring-shm-{id}"),
            region_len as usize,
            RegionOptions::new().id(0),
        )
        .map_err(|e| internal(&e))?;
        let region = Arc::new(region);
        let signals = PairSignals::for_config(&config).map_err(|e| internal(&e))?;
        let service = ServiceSide::<S, C>::create(region.clone(), 0, &config, signals.clone())
            .map_err(|e| internal(&e))?;
        let welcome = Welcome {
            client_id: id,
            server_pid: std::process::id(),
            region_len,
            pair_offset: 0,
            pool_offset,
            buf_size: hello.buf_size,
            buf_count: hello.buf_count,
            sq_capacity: hello.sq_capacity,
            cq_capacity: hello.cq_capacity,
            kick_mode: config.kick_mode.into(),
            call_mode: config.call_mode.into(),
            kick_fd: signals.kick.is_some(),
            call_fd: signals.call.is_some(),
            event_idx: config.event_idx,
        };
        let memfd = region
            .fd()
            .ok_or_else(|| Refusal::Internal("memfd region has no fd".into()))?;
        // The call eventfd stays the server's: the client gets an epoll instance watching it,
        // so that it cannot make the server's wake-ups block (see `EventFdSignal`). (The kick
        // eventfd the client writes; the server only waits on it, which cannot block.)
        let call_waiter = signals
            .call
            .as_ref()
            .map(|s| s.peer_waiter())
            .transpose()
            .map_err(|e| internal(&e))?;
        let mut pass: Vec<BorrowedFd<'_>> = vec![memfd];
        pass.extend(signals.kick.as_ref().map(|s| s.as_fd()));
        pass.extend(call_waiter.as_ref().map(|f| f.as_fd()));
        let socket = &self.conns[i].socket;
        proto::send(socket.as_fd(), &ServerMsg::Welcome(welcome), &pass)
            .map_err(|e| internal(&e))?;
        if let Some(kick) = &signals.kick {
            self.epoll
                .add(
                    kick,
                    EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, id * 2 + 1),
                )
                .map_err(|e| internal(&e))?;
        }
        let creds = getsockopt(socket, sockopt::PeerCredentials).ok();
        let info = ClientInfo {
            id,
            pid: creds
                .and_then(|c| u32::try_from(c.pid()).ok())
                .filter(|p| *p != 0),
            uid: creds.map(|c| c.uid()),
            gid: creds.map(|c| c.gid()),
            mode,
        };
        let client = self.service.connect(&info);
        let kick_word = (config.kick_mode == NotifyMode::Futex).then(|| service.kick_word());
        let room_word = (config.kick_mode == NotifyMode::Futex).then(|| service.room_word());
        self.kick_words_changed |= kick_word.is_some();
        match mode {
            NotifyMode::Spin => self.spin_clients += 1,
            NotifyMode::Adaptive => self.adaptive_clients += 1,
            _ => {}
        }
        self.conns[i].state = State::Active(Box::new(Active {
            service,
            client,
            info,
            memory: ClientMemory {
                pool: PoolLayout {
                    region: 0,
                    base: pool_offset,
                    buf_size: hello.buf_size,
                    count: hello.buf_count,
                },
                region,
                extra: Arc::from(Vec::new()),
            },
            pending: VecDeque::new(),
            blocked: false,
            unflushed: false,
            kick_word,
            room_word,
            armed: Armed::Requests,
            in_set: Armed::Requests,
            ledger: Arc::new(Ledger::default()),
            cut_short: false,
            leaving: false,
        }));
        self.stats.welcomed += 1;
        Ok(())
    }

    fn register(&mut self, i: usize, id: u32, len: u64, fds: Vec<PeerFd>) -> Result<(), Refusal> {
        let max_len = self.config.max_region_len;
        let max_regions = self.config.max_regions;
        let State::Active(a) = &mut self.conns[i].state else {
            return Err(Refusal::Malformed(
                "region registration before hello".into(),
            ));
        };
        if fds.len() != 1 {
            return Err(Refusal::Malformed(format!(
                "region registration carried {} descriptors, expected 1",
                fds.len()
            )));
        }
        // Its kind first, before anything else is done with it.
        let fd = fds
            .into_iter()
            .next()
            .expect("count checked above")
            .memfd()
            .map_err(|e| Refusal::Malformed(format!("region {id}: {e}")))?;
        if id == 0 || a.memory.extra.iter().any(|r| r.id() == id) {
            return Err(Refusal::Malformed(format!(
                "region id {id} is reserved or already registered"
            )));
        }
        if a.memory.extra.len() >= max_regions as usize {
            return Err(Refusal::Limit {
                what: "registered regions".into(),
                asked: a.memory.extra.len() as u64 + 1,
                min: 0,
                max: max_regions.into(),
            });
        }
        if len == 0 || len > max_len {
            return Err(Refusal::Limit {
                what: "registered region length".into(),
                asked: len,
                min: 1,
                max: max_len,
            });
        }
        let region = Region::from_fd(fd, Some(len as usize), RegionOptions::new().id(id))
            .map_err(|e| Refusal::Malformed(format!("region {id}: {e}")))?;
        // Copy on write: a service may hold a clone of the old set.
        let mut extra = a.memory.extra.to_vec();
        extra.push(Arc::new(region));
        a.memory.extra = Arc::from(extra);
        Ok(())
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
            self.kick_words_changed |= a.kick_word.is_some();
            let Active {
                client,
                info,
                ledger,
                ..
            } = *a;
            // The service cancels what it can; the queue pair and the server's mappings go now
            // (the service holds its own references to whatever memory it still lends out).
            self.service.disconnect(client, &info);
            self.departing.push(ledger);
            self.retire_departed();
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
