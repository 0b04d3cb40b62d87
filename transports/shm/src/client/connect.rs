//! Connecting: the handshake from the client's side, and everything it checks in what the
//! server hands over (the welcome, the memfd, the eventfds) before using it.

use super::*;

/// Connects a `SOCK_SEQPACKET` socket to `path`, giving up after `timeout`: a connect to a
/// server whose listen backlog is full would otherwise block until it accepts, which a server
/// that never accepts never does.
fn connect_path(path: &Path, timeout: Duration) -> Result<OwnedFd, Error> {
    let shown = path.display().to_string();
    let path_error = |source: std::io::Error| Error::Path {
        what: "cannot connect to",
        path: shown.clone(),
        source,
        hint: "",
    };
    let addr = UnixAddr::new(path).map_err(|e| path_error(e.into()))?;
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| Error::Io {
        op: "socket(AF_UNIX, SOCK_SEQPACKET)",
        source: e.into(),
    })?;
    let start = Instant::now();
    let mut pause = Duration::from_micros(100);
    loop {
        match connect(sock.as_raw_fd(), &addr) {
            Ok(()) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            // A Unix socket's backlog is full (the server is slow to accept, or never does):
            // try again until the timeout.
            Err(nix::errno::Errno::EAGAIN) => {
                if start.elapsed() >= timeout {
                    return Err(Error::Timeout {
                        waiting_for: "the server to accept the connection (its backlog is full)",
                        after: start.elapsed(),
                    });
                }
                std::thread::sleep(pause.min(timeout.saturating_sub(start.elapsed())));
                pause = (pause * 2).min(Duration::from_millis(10));
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
    // Connected: back to a blocking socket, as `from_socket` expects one (its waits are bounded
    // by polls with deadlines).
    nix::fcntl::fcntl(
        &sock,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )
    .map_err(|e| Error::Io {
        op: "fcntl(clear O_NONBLOCK) on the control socket",
        source: e.into(),
    })?;
    Ok(sock)
}

impl<S: Pod, C: Pod> Client<S, C> {
    /// Connects to the server listening at `path` and sets up a queue pair.
    /// Connecting, like every control exchange, gives up after
    /// [`ClientOptions::control_timeout`].
    pub fn connect(path: impl AsRef<Path>, options: &ClientOptions) -> Result<Self, Error> {
        let sock = connect_path(path.as_ref(), options.control_timeout)?;
        Self::from_socket(sock, options)
    }

    /// Sets up a queue pair over an already-connected `SOCK_SEQPACKET` socket (one end of
    /// [`socket_pair`](crate::socket_pair) whose other end went to the server).
    pub fn from_socket(socket: OwnedFd, options: &ClientOptions) -> Result<Self, Error> {
        // Emptied before it is closed however this ends: a hostile server may have queued
        // descriptors on it that the kernel drops at its close.
        let socket = ConnSocket::new(socket);
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
            kick_mode: welcome.kick_mode.into(),
            call_mode: welcome.call_mode.into(),
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
        })
    }
}
