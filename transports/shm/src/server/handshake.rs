//! A connection's messages: the hello and its checks, the welcome with the shared memory (and
//! for a client that sleeps, the kick eventfd and an epoll instance to wait in), and later
//! control messages (registering a region, shutting down).

use std::collections::VecDeque;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use bytemuck::Pod;
use nix::sys::epoll::{EpollEvent, EpollFlags};
use subring_planes::data::{PoolLayout, Region, RegionOptions};
use subring_planes::interrupt::NotifyMode;
use subring_planes::pair::{PairConfig, PairLayout, PairSignals, ServiceSide};

use super::config::{ClientInfo, ServerSleep};
use super::conn::{Active, Armed, State};
use super::ctx::ClientMemory;
use super::service::{Ledger, Service};
use super::{kick_waits, FutexWaits, Server, KICK_WAITS};
use crate::peer_fd::PeerFd;
use crate::proto::{self, ClientMsg, EntryShape, Hello, Incoming, Refusal, ServerMsg, Welcome};
use crate::Error;

/// Control messages read from one client per look at its socket.
const CONTROL_MESSAGES_PER_TURN: usize = 16;

impl<S: Pod, C: Pod, V: Service<S, C>> Server<S, C, V> {
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
                    if matches!(refusal, Refusal::UserBusy { .. }) {
                        self.stats.user_busy += 1;
                    }
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

    fn check_hello(&self, i: usize, hello: &Hello, fds: &[PeerFd]) -> Result<(), Refusal> {
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
        let uid = self.conns[i].uid();
        let (mut active, mut users) = (0, 0);
        for c in &self.conns {
            if matches!(c.state, State::Active(_)) {
                active += 1;
                users += usize::from(c.uid() == uid);
            }
        }
        if active >= cfg.max_clients as usize {
            return Err(Refusal::Busy {
                max_clients: cfg.max_clients,
            });
        }
        if users >= cfg.max_clients_per_user as usize {
            return Err(Refusal::UserBusy {
                uid,
                max_per_user: cfg.max_clients_per_user,
            });
        }
        Ok(())
    }

    /// Sleeping in epoll: sets up the io_uring that waits on futex doorbells, if no client
    /// has one yet.
    fn start_kick_waits(&mut self) -> Result<(), Refusal> {
        if self.kick_waits.is_some() {
            return Ok(());
        }
        let waits =
            FutexWaits::new(kick_waits::max_waits(self.config.max_clients)).map_err(|e| {
                Refusal::Unsupported {
                    what: "a futex doorbell while sleeping in epoll".into(),
                    needs: format!(
                        "io_uring's FUTEX_WAIT (Linux 6.7 and later), which failed: {e}"
                    ),
                }
            })?;
        self.epoll
            .add(&waits, EpollEvent::new(EpollFlags::EPOLLIN, KICK_WAITS))
            .map_err(|e| Refusal::Internal(format!("epoll_ctl(ADD futex-wait ring): {e}")))?;
        self.kick_waits = Some(waits);
        Ok(())
    }

    fn welcome(&mut self, i: usize, hello: &Hello, fds: Vec<PeerFd>) -> Result<(), Refusal> {
        self.check_hello(i, hello, &fds)?;
        let mode: NotifyMode = hello.mode.into();
        let config = PairConfig {
            sq_capacity: hello.sq_capacity,
            cq_capacity: hello.cq_capacity,
            // The server waits for a spin client by polling it; for everyone else it sleeps in
            // epoll, where their doorbell is the kick eventfd, or on their kick words.
            kick_mode: match (mode, self.config.sleep) {
                (NotifyMode::Spin, _) => NotifyMode::Spin,
                (_, ServerSleep::Futex) => NotifyMode::Futex,
                // A client that takes no eventfd doorbell: its words are waited on through
                // io_uring.
                (_, ServerSleep::Epoll) if hello.futex_doorbell => {
                    self.start_kick_waits()?;
                    NotifyMode::Futex
                }
                (_, ServerSleep::Epoll) => NotifyMode::EventFd,
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
        let creds = self.conns[i].creds;
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
        if kick_word.is_some() && self.kick_waits.is_some() {
            self.futex_doorbells += 1;
        }
        match mode {
            NotifyMode::Spin => self.spin_clients += 1,
            NotifyMode::Adaptive => {
                self.adaptive_clients += 1;
                // A new client may stream at once, into a window that has collapsed.
                self.window.arrival();
            }
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
            limits: self.turn_limits(),
        }));
        self.shares_stale = true;
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
}
