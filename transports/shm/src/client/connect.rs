//! Connecting: the handshake from the client's side, and everything it checks in what the
//! server hands over (the welcome, the memfd, the eventfds) before using it.

use super::*;
use crate::error::{check_duration, LONGEST_TIMEOUT};

/// Connects a `SOCK_SEQPACKET` socket to `path`, giving up after `timeout`: a connect to a
/// server whose listen backlog is full would otherwise block until it accepts, which a server
/// that never accepts never does.
///
/// While the backlog is full, the connect waits in the kernel (bounded by `SO_SNDTIMEO`), in
/// the listener's queue of connecting peers, where each connection the server accepts wakes
/// the one that has waited longest: a peer that keeps the backlog full with connects of its
/// own waiting delays this one by about as many accepts as it has connects waiting before it.
/// (Retrying a non-blocking connect every few milliseconds, as this did before, lost every
/// freed place to the connects waiting there.) It is not a guarantee: a connect that comes
/// between an accept and the woken waiter takes the place, and the waiter queues again at the
/// back (so does one a signal interrupts).
fn connect_path(path: &Path, timeout: Duration) -> Result<OwnedFd, Error> {
    let shown = path.display().to_string();
    let path_error = |source: std::io::Error| Error::Path {
        what: "cannot connect to",
        path: shown.clone(),
        source,
        hint: "",
    };
    let io = |op| {
        move |e: nix::errno::Errno| Error::Io {
            op,
            source: e.into(),
        }
    };
    let addr = UnixAddr::new(path).map_err(|e| path_error(e.into()))?;
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io("socket(AF_UNIX, SOCK_SEQPACKET)"))?;
    let start = Instant::now();
    let deadline = start.checked_add(timeout);
    loop {
        // What is left of the timeout, as the connect's own bound (a zero `SO_SNDTIMEO` would
        // mean no bound at all: at least a microsecond; none if the deadline overflowed).
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let bound = left.map_or(TimeVal::new(0, 0), |l| {
            let l = l.max(Duration::from_micros(1));
            TimeVal::new(
                l.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
                l.subsec_micros() as libc::suseconds_t,
            )
        });
        setsockopt(&sock, sockopt::SendTimeout, &bound)
            .map_err(io("setsockopt(SO_SNDTIMEO) on the control socket"))?;
        match connect(sock.as_raw_fd(), &addr) {
            Ok(()) => break,
            // The backlog stayed full for the whole bound (EAGAIN), or a signal came (EINTR):
            // wait on while time is left.
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(Error::Timeout {
                        waiting_for: "the server to accept the connection (its backlog is full)",
                        after: start.elapsed(),
                    });
                }
            }
            Err(e) => {
                let hint = match e {
                    nix::errno::Errno::ENOENT => " (no such socket: is the server running?)",
                    nix::errno::Errno::ECONNREFUSED => {
                        " (nobody listens there: a stale socket file?)"
                    }
                    _ => "",
                };
                return Err(Error::Path {
                    what: "cannot connect to",
                    path: shown,
                    source: e.into(),
                    hint,
                });
            }
        }
    }
    // Connected: no bound on sends (`from_socket`'s exchanges are bounded by polls with
    // deadlines).
    setsockopt(&sock, sockopt::SendTimeout, &TimeVal::new(0, 0))
        .map_err(io("setsockopt(SO_SNDTIMEO) on the control socket"))?;
    Ok(sock)
}

/// What the options must be before anything is sent: a client that does not trust its server
/// waits only on futexes (or spins), since an eventfd-mode client would wait in an epoll
/// instance the server made; and the liveness interval is a length its waits can be cut into.
fn check_options(options: &ClientOptions) -> Result<(), Error> {
    check_duration(
        "liveness_interval",
        options.liveness_interval,
        LONGEST_TIMEOUT,
    )?;
    if options.untrusted_server && options.mode == NotifyMode::EventFd {
        return Err(ConfigError::Mode {
            what: "a client that does not trust its server (futex, adaptive or spin)",
            needs: NotifyMode::Futex,
            given: options.mode,
        }
        .into());
    }
    Ok(())
}

impl<S: Pod, C: Pod> Client<S, C> {
    /// Connects to the server listening at `path` and sets up a queue pair.
    /// Connecting, like every control exchange, gives up after
    /// [`ClientOptions::control_timeout`].
    pub fn connect(path: impl AsRef<Path>, options: &ClientOptions) -> Result<Self, Error> {
        check_options(options)?;
        let sock = connect_path(path.as_ref(), options.control_timeout)?;
        Self::from_socket(sock, options)
    }

    /// Sets up a queue pair over an already-connected `SOCK_SEQPACKET` socket (one end of
    /// [`socket_pair`](crate::socket_pair) whose other end went to the server).
    pub fn from_socket(socket: OwnedFd, options: &ClientOptions) -> Result<Self, Error> {
        // Emptied before it is closed however this ends: a hostile server may have queued
        // descriptors on it that the kernel drops at its close.
        let socket = ConnSocket::new(socket);
        proto::check_seqpacket(socket.as_fd())?;
        check_options(options)?;
        let hello = Hello {
            protocol: options.protocol.clone(),
            request: EntryShape::of::<S>(),
            completion: EntryShape::of::<C>(),
            sq_capacity: options.sq_capacity,
            cq_capacity: options.cq_capacity,
            mode: options.mode.into(),
            buf_size: options.buf_size,
            buf_count: options.buf_count,
            event_idx: options.event_idx,
            futex_doorbell: options.untrusted_server,
        };
        let deadline = Instant::now().checked_add(options.control_timeout);
        proto::send_until(
            socket.as_fd(),
            &ClientMsg::Hello(hello.clone()),
            &[],
            deadline,
        )?;
        let (welcome, fds) = match proto::recv_blocking::<ServerMsg>(
            socket.as_fd(),
            deadline,
            "the server's welcome",
        )? {
            Incoming::VersionRefused(peer) => {
                return Err(Error::Version {
                    ours: proto::PROTOCOL_VERSION,
                    peer,
                })
            }
            Incoming::Message(ServerMsg::Welcome(w), fds) => (w, fds),
            Incoming::Message(ServerMsg::Refused(r), _) => return Err(Error::Refused(r)),
            Incoming::Message(other, _) => {
                return Err(Error::Malformed {
                    what: "handshake answer",
                    detail: format!("expected a welcome, got {other:?}"),
                })
            }
        };
        Self::attach(socket, options, &hello, welcome, fds)
    }

    pub(super) fn attach(
        socket: ConnSocket,
        options: &ClientOptions,
        hello: &Hello,
        welcome: Welcome,
        fds: Vec<PeerFd>,
    ) -> Result<Self, Error> {
        let granted = (
            welcome.sq_capacity,
            welcome.cq_capacity,
            welcome.buf_size,
            welcome.buf_count,
            welcome.call_mode,
        );
        let asked = (
            hello.sq_capacity,
            hello.cq_capacity,
            hello.buf_size,
            hello.buf_count,
            hello.mode,
        );
        if granted != asked {
            return Err(Error::Malformed {
                what: "welcome",
                detail: format!(
                    "server granted (sq, cq, buf size, buf count, mode) {granted:?}, asked {asked:?}"
                ),
            });
        }
        let kick_mode: NotifyMode = welcome.kick_mode.into();
        if options.untrusted_server && !matches!(kick_mode, NotifyMode::Futex | NotifyMode::Spin) {
            return Err(Error::Untrusted {
                detail: format!(
                    "the doorbell would be {kick_mode}, not a futex wake (an eventfd the server \
                     holds can be made to block a kick), though the client asked for a futex \
                     doorbell; a server must sleep on futexes (ServerSleep::Futex) or, \
                     sleeping in epoll, wait on them through io_uring (Linux 6.7)"
                ),
            });
        }
        // Which descriptors come follows from the modes, as an honest server sends them: a
        // kick eventfd only for an eventfd doorbell, a call epoll instance only for an
        // eventfd-mode client. (A welcome that sent one beside a futex mode would have this side
        // set up, and wait in, an epoll instance the server made, and take the hang-up watch
        // for granted where its futex waits never see it.)
        let call_mode: NotifyMode = welcome.call_mode.into();
        if welcome.kick_fd != kick_mode.uses_eventfd()
            || welcome.call_fd != call_mode.uses_eventfd()
        {
            return Err(Error::Malformed {
                what: "welcome",
                detail: format!(
                    "descriptors (kick {}, call {}) do not match the modes (kick {kick_mode}, \
                     call {call_mode})",
                    welcome.kick_fd, welcome.call_fd
                ),
            });
        }
        let expected_fds = 1 + usize::from(welcome.kick_fd) + usize::from(welcome.call_fd);
        if fds.len() != expected_fds {
            return Err(FdError::Count {
                message: "the welcome",
                expected: expected_fds,
                got: fds.len(),
            }
            .into());
        }
        let region_len = usize::try_from(welcome.region_len).map_err(|_| Error::Malformed {
            what: "welcome",
            detail: format!(
                "region length {} does not fit in memory",
                welcome.region_len
            ),
        })?;
        // Each descriptor's kind is checked before anything else is done with it (a refused
        // one is closed where closing cannot block).
        let mut fds = fds.into_iter();
        let memfd = fds.next().expect("count checked above").memfd()?;
        let region = Arc::new(Region::from_fd(
            memfd,
            Some(region_len),
            RegionOptions::new().id(0),
        )?);
        let kick = welcome
            .kick_fd
            .then(|| fds.next())
            .flatten()
            .map(|fd| -> Result<_, Error> {
                EventFdSignal::from_fd(fd.eventfd()?).map_err(|e| FdError::EventFd(e).into())
            })
            .transpose()?;
        // The server keeps its call eventfd: this side waits in an epoll instance watching it.
        let call = welcome
            .call_fd
            .then(|| fds.next())
            .flatten()
            .map(|fd| -> Result<_, Error> {
                EventFdSignal::from_peer_waiter(fd.epoll()?).map_err(|e| FdError::EventFd(e).into())
            })
            .transpose()?;
        // A client that sleeps on its eventfd also sleeps on the control socket's hang-up: a
        // dead server wakes it at once, and its waits need no liveness slices.
        let watches_hangup = match &call {
            Some(call) => {
                call.watch_hangup(socket.as_fd()).map_err(|e| Error::Io {
                    op: "epoll_ctl(ADD control socket to the completion wait)",
                    source: e,
                })?;
                true
            }
            None => false,
        };
        let config = PairConfig {
            sq_capacity: welcome.sq_capacity,
            cq_capacity: welcome.cq_capacity,
            kick_mode,
            call_mode,
            // Used only if asked for and granted; the attach also checks the pair header, and
            // uses the feature only if the server enabled it there too.
            event_idx: welcome.event_idx && options.event_idx,
        };
        let offset = |what: &str, v: u64| {
            usize::try_from(v).map_err(|_| Error::Malformed {
                what: "welcome",
                detail: format!("{what} offset {v} does not fit in memory"),
            })
        };
        let app = AppSide::attach(
            region.clone(),
            offset("pair", welcome.pair_offset)?,
            &config,
            PairSignals { kick, call },
        )?;
        // A client that waits on a futex or spins cannot sleep on the socket itself: the
        // process's watcher thread does, and declares the server gone if it hangs up. Should
        // the watcher not start, waits fall back to liveness slices.
        let watch = if watches_hangup {
            None
        } else {
            Watch::start(socket.as_fd(), app.gone_handle()).ok()
        };
        // The pool's claim fails if a hostile server placed it over the rings.
        let pool = BufferPool::new(
            region.clone(),
            offset("pool", welcome.pool_offset)?,
            welcome.buf_size as usize,
            welcome.buf_count as usize,
        )?;
        // The server's pid as the kernel reports it for this socket (the process that made its
        // end), not as the welcome says: any process can write any number there.
        let welcome = Welcome {
            server_pid: nix::sys::socket::getsockopt(&socket, sockopt::PeerCredentials)
                .map_or(0, |c| u32::try_from(c.pid()).unwrap_or(0)),
            ..welcome
        };
        Ok(Client {
            app,
            pool,
            region,
            extra: Vec::new(),
            socket,
            welcome,
            options: options.clone(),
            gone: false,
            sees_hangup: watches_hangup || watch.is_some(),
            _watch: watch,
            futex_poll: None,
        })
    }
}

#[cfg(test)]
// The test's stop flag is its own bookkeeping, not a protocol under test: std types.
#[allow(clippy::disallowed_types)]
mod tests {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use nix::sys::socket::{
        accept4, bind, connect, listen, setsockopt, socket, sockopt, AddressFamily, Backlog,
        SockFlag, SockType, UnixAddr,
    };
    use nix::sys::time::TimeVal;

    use super::connect_path;

    /// A peer that keeps a listener's backlog full, with connects of its own waiting in the
    /// kernel and a new one as soon as each is accepted, does not keep another connect out: it
    /// gets in after about as many accepts as the peer had connects waiting before it. (Retrying a
    /// non-blocking connect every few milliseconds lost every freed place to them, and timed
    /// out.)
    #[test]
    fn a_full_backlog_lets_a_waiting_connect_in_among_a_peers_many() {
        let dir = std::env::temp_dir().join(format!("subring-connect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("backlog.sock");
        let _ = std::fs::remove_file(&path);
        let addr = UnixAddr::new(&path).unwrap();
        let seqpacket = |flags| {
            socket(
                AddressFamily::Unix,
                SockType::SeqPacket,
                SockFlag::SOCK_CLOEXEC | flags,
                None,
            )
            .unwrap()
        };
        // Non-blocking, so that the acceptor's last look never waits.
        let listener = seqpacket(SockFlag::SOCK_NONBLOCK);
        bind(listener.as_raw_fd(), &addr).unwrap();
        listen(&listener, Backlog::new(1).unwrap()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        // However the test ends, the threads are told to stop and the directory goes.
        struct Cleanup(Arc<AtomicBool>, std::path::PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
                let _ = std::fs::remove_dir_all(&self.1);
            }
        }
        let cleanup = Cleanup(stop.clone(), dir.clone());
        // The peer: four threads, each connecting again as soon as its last connection is
        // accepted (each connect bounded, so that they all end once told to stop).
        let flooders: Vec<_> = (0..4)
            .map(|_| {
                let (stop, addr) = (stop.clone(), addr);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let s = seqpacket(SockFlag::empty());
                        setsockopt(&s, sockopt::SendTimeout, &TimeVal::new(0, 100_000)).unwrap();
                        // Once accepted (or timed out), it has done its part: closed.
                        let _ = connect(s.as_raw_fd(), &addr);
                    }
                })
            })
            .collect();
        // The server: accepts one connection every 25 ms and closes it.
        let acceptor = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(25));
                    if let Ok(fd) = accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                        // SAFETY: accept4 returned a new descriptor that nothing else owns.
                        drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
                    }
                }
            })
        };
        // Until the backlog is full (a non-blocking connect is refused), so that the connect
        // below has to wait among the peer's.
        let full_by = Instant::now() + Duration::from_secs(5);
        loop {
            let probe = seqpacket(SockFlag::SOCK_NONBLOCK);
            match connect(probe.as_raw_fd(), &addr) {
                Err(nix::errno::Errno::EAGAIN) => break,
                _ => {
                    assert!(
                        Instant::now() < full_by,
                        "the peer never filled the backlog"
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        let start = Instant::now();
        let connected = connect_path(&path, Duration::from_secs(2));
        let waited = start.elapsed();
        drop(cleanup);
        for t in flooders {
            t.join().unwrap();
        }
        acceptor.join().unwrap();
        assert!(
            connected.is_ok(),
            "kept out by the peer's connects: {:?} after {waited:?}",
            connected.err()
        );
    }
}
