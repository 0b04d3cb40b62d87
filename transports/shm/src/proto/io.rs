//! Sending and receiving control messages: framing, `SCM_RIGHTS` descriptors (every one owned
//! on arrival), bounded waits.

use super::*;

/// A received control message: its body (or a peer's version refusal) and its fds, each
/// owned and not yet checked ([`PeerFd`]: dropping one closes it where that cannot block).
#[derive(Debug)]
pub(crate) enum Incoming<M> {
    Message(M, Vec<PeerFd>),
    VersionRefused(u16),
}

/// The most descriptors the kernel passes in one message (`SCM_MAX_FD`). The receive buffer
/// has room for that many, so that every descriptor a peer sends is installed, owned and
/// closed here, never left open because the buffer was too small for them (`MSG_CTRUNC`).
pub(super) const SCM_MAX_FD: usize = 253;

/// Takes ownership of every descriptor an `SCM_RIGHTS` message in `control` carries, walking
/// the buffer the kernel filled: used when nix will not parse it (it refuses a truncated one).
pub(crate) fn rights_in(control: &[u8], len: usize) -> Vec<PeerFd> {
    let mut fds = Vec::new();
    // SAFETY: `msghdr` is plain old data; all zeroes is a valid (empty) value.
    let mut mhdr: libc::msghdr = unsafe { std::mem::zeroed() };
    mhdr.msg_control = control.as_ptr() as *mut libc::c_void;
    mhdr.msg_controllen = len.min(control.len());
    // SAFETY: `mhdr` describes `control[..len]`, which lives through the walk; the CMSG macros
    // only read headers inside it (CMSG_NXTHDR checks each length against the end).
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&mhdr) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` points at a header inside the buffer (the macros checked it).
        let c = unsafe { &*cmsg };
        if c.cmsg_level == libc::SOL_SOCKET && c.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a constant computation.
            let header = unsafe { libc::CMSG_LEN(0) } as usize;
            let n = (c.cmsg_len as usize).saturating_sub(header) / std::mem::size_of::<RawFd>();
            // SAFETY: the data of this header holds `n` descriptors, inside the buffer.
            let data = unsafe { libc::CMSG_DATA(cmsg) } as *const RawFd;
            for k in 0..n {
                // SAFETY: `k < n`, inside this header's data; unaligned read, as the data of a
                // control message carries no alignment promise for us.
                let fd = unsafe { data.add(k).read_unaligned() };
                if fd >= 0 {
                    // SAFETY: the kernel installed this descriptor in this process for us
                    // (SCM_RIGHTS); nothing else owns it.
                    fds.push(PeerFd::new(unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
        }
        // SAFETY: `mhdr` and `cmsg` as above.
        cmsg = unsafe { libc::CMSG_NXTHDR(&mhdr, cmsg) };
    }
    fds
}

pub(super) fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&PROTOCOL_MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    out
}

pub(super) fn io_error(op: &'static str) -> impl FnOnce(Errno) -> Error {
    move |e| Error::Io {
        op,
        source: e.into(),
    }
}

/// Sends one datagram without blocking; if the peer's queue is full, waits for room until
/// `deadline` (`None`: fails at once), so that a peer that stops reading cannot hold this
/// thread.
pub(super) fn send_frame(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    deadline: Option<Instant>,
) -> Result<(), Error> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    loop {
        match sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(bytes)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(n) => {
                return Err(Error::Malformed {
                    what: "control message",
                    detail: format!("sent {n} of {} bytes", bytes.len()),
                })
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) if deadline.is_some() => wait_for(
                sock,
                PollFlags::POLLOUT,
                deadline,
                "room to send a control message",
            )?,
            Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(Error::Closed { during: "send" }),
            Err(e) => return Err(io_error("sendmsg on the control socket")(e)),
        }
    }
}

/// Sends a control message with `fds` beside it, without waiting: if the peer's queue is full
/// it fails (`EAGAIN`).
pub(crate) fn send<M: Serialize>(
    sock: BorrowedFd<'_>,
    msg: &M,
    fds: &[BorrowedFd<'_>],
) -> Result<(), Error> {
    send_until(sock, msg, fds, None)
}

/// Sends a control message, waiting for room in the peer's queue until `deadline` at most.
pub(crate) fn send_until<M: Serialize>(
    sock: BorrowedFd<'_>,
    msg: &M,
    fds: &[BorrowedFd<'_>],
    deadline: Option<Instant>,
) -> Result<(), Error> {
    let body = postcard::to_stdvec(msg).map_err(|e| Error::Malformed {
        what: "outgoing control message",
        detail: e.to_string(),
    })?;
    send_frame(sock, &frame(KIND_MESSAGE, &body), fds, deadline)
}

/// Tells the peer its version is not ours, in the format every version understands.
pub(crate) fn send_version_refusal(sock: BorrowedFd<'_>) -> Result<(), Error> {
    send_frame(
        sock,
        &frame(KIND_VERSION_REFUSED, &PROTOCOL_VERSION.to_le_bytes()),
        &[],
        None,
    )
}

/// Waits until `sock` is readable (or hung up), at most until `deadline`.
pub(crate) fn wait_readable(
    sock: BorrowedFd<'_>,
    deadline: Option<Instant>,
    waiting_for: &'static str,
) -> Result<(), Error> {
    wait_for(sock, PollFlags::POLLIN, deadline, waiting_for)
}

/// Waits until `sock` reports `events` (or hangs up), at most until `deadline`.
pub(super) fn wait_for(
    sock: BorrowedFd<'_>,
    events: PollFlags,
    deadline: Option<Instant>,
    waiting_for: &'static str,
) -> Result<(), Error> {
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Timeout {
                        waiting_for,
                        after: Duration::ZERO,
                    });
                }
                PollTimeout::try_from(left.as_millis().clamp(1, i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(sock, events)];
        match poll(&mut fds, timeout) {
            Ok(0) => continue,
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io_error("poll on the control socket")(e)),
        }
    }
}

/// Whether the peer has hung up `sock` (without blocking).
pub(crate) fn hung_up(sock: BorrowedFd<'_>) -> bool {
    // A Unix socket whose peer has closed (or died) reports POLLHUP, asked for or not.
    let mut fds = [PollFd::new(sock, PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(0) => false,
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
        Err(_) => false,
    }
}

/// Receives one control message without blocking beyond what the socket does: `Ok(None)` if
/// nothing is there (`EAGAIN` on a non-blocking socket). Every fd that arrives is owned at once,
/// so none leaks whatever the message turns out to be.
///
/// The message is peeked at first, then taken off the queue. A process with fewer free
/// descriptor numbers than a message carries gets only the descriptors that fit, and the
/// kernel drops the rest itself, on the receiving thread: dropping the last reference to one
/// can block (a socket lingering with unsent data). A peek's descriptors are new references
/// while the message still holds its own, so what a peek cannot install is dropped without a
/// close; such a message is refused ([`FdError::NoRoom`]) and left queued, for the socket's
/// close to drop where it cannot block (a `ConnSocket`'s). A message whose descriptors all
/// arrived is then taken off the queue with no room for descriptors: the references the kernel
/// drops then are not the last (the peeked ones are).
pub(crate) fn recv<M: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
) -> Result<Option<Incoming<M>>, Error> {
    let mut buf = [0u8; MAX_MESSAGE];
    let mut cmsg_space = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let (len, flags, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_space),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_PEEK,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                match msg.cmsgs() {
                    Ok(cmsgs) => {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmRights(raw) = c {
                                // SAFETY: the kernel just installed these descriptors in this
                                // process for us (SCM_RIGHTS); nothing else owns them.
                                fds.extend(
                                    raw.into_iter()
                                        .map(|fd| PeerFd::new(unsafe { OwnedFd::from_raw_fd(fd) })),
                                );
                            }
                        }
                    }
                    // Truncated (nix refuses to parse it): own what the kernel did install.
                    Err(_) => {
                        let (bytes, flags) = (msg.bytes, msg.flags);
                        fds = rights_in(&cmsg_space, cmsg_space.len());
                        break (bytes, flags, fds);
                    }
                }
                break (msg.bytes, msg.flags, fds);
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(None),
            Err(Errno::ECONNRESET) => return Err(Error::Closed { during: "receive" }),
            Err(e) => return Err(io_error("recvmsg on the control socket")(e)),
        }
    };
    // Whatever the message turns out to be, descriptors it brought that nobody takes are
    // handed to the closers in one job, not one by one (253 can come in a message).
    match parse::<M>(sock, &buf, len, flags, fds.len()) {
        Ok(Some(Parsed::Message(msg))) => Ok(Some(Incoming::Message(msg, fds))),
        Ok(Some(Parsed::VersionRefused(v))) => {
            crate::peer_fd::discard_all(fds);
            Ok(Some(Incoming::VersionRefused(v)))
        }
        Ok(None) => Ok(None),
        Err(e) => {
            crate::peer_fd::discard_all(fds);
            Err(e)
        }
    }
}

/// What [`parse`] found in a message.
enum Parsed<M> {
    Message(M),
    VersionRefused(u16),
}

/// The rest of [`recv`]: checks what a peek read (`len` bytes of `buf`, with `fds`
/// descriptors), takes it off the queue, and decodes it.
fn parse<M: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
    buf: &[u8],
    len: usize,
    flags: MsgFlags,
    fds: usize,
) -> Result<Option<Parsed<M>>, Error> {
    if flags.contains(MsgFlags::MSG_CTRUNC) {
        // The receive buffer has room for every descriptor a message can carry: the kernel
        // could not install them all. Left queued (see above).
        return Err(FdError::NoRoom.into());
    }
    if len > 0 || fds > 0 {
        take_peeked(sock)?;
    }
    if fds > MAX_FDS {
        return Err(FdError::TooMany {
            got: Some(fds),
            max: MAX_FDS,
        }
        .into());
    }
    if flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(Error::Malformed {
            what: "control message",
            detail: format!("longer than {MAX_MESSAGE} bytes"),
        });
    }
    if len == 0 {
        return Err(Error::Closed { during: "receive" });
    }
    let bytes = &buf[..len];
    if bytes.len() < HEADER {
        return Err(Error::Malformed {
            what: "control message",
            detail: format!("{len} bytes, shorter than the {HEADER}-byte header"),
        });
    }
    if bytes[..4] != PROTOCOL_MAGIC {
        return Err(Error::Malformed {
            what: "control message",
            detail: format!(
                "starts with {:02x?}, not the magic {:02x?}",
                &bytes[..4],
                PROTOCOL_MAGIC
            ),
        });
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    match bytes[6] {
        KIND_VERSION_REFUSED => {
            let theirs = bytes
                .get(HEADER..HEADER + 2)
                .map_or(version, |b| u16::from_le_bytes([b[0], b[1]]));
            return Ok(Some(Parsed::VersionRefused(theirs)));
        }
        KIND_MESSAGE => {}
        other => {
            return Err(Error::Malformed {
                what: "control message",
                detail: format!("unknown kind {other:#x}"),
            })
        }
    }
    if version != PROTOCOL_VERSION {
        return Err(Error::Version {
            ours: PROTOCOL_VERSION,
            peer: version,
        });
    }
    let msg = postcard::from_bytes(&bytes[HEADER..]).map_err(|e| Error::Malformed {
        what: "control message body",
        detail: e.to_string(),
    })?;
    Ok(Some(Parsed::Message(msg)))
}

/// Checks that `sock` is a `SOCK_SEQPACKET` socket, as every connection must be.
pub(crate) fn check_seqpacket(sock: BorrowedFd<'_>) -> Result<(), Error> {
    match nix::sys::socket::getsockopt(&sock, nix::sys::socket::sockopt::SockType) {
        Ok(nix::sys::socket::SockType::SeqPacket) => Ok(()),
        Ok(other) => Err(crate::ConfigError::NotSeqPacket {
            found: format!("a {other:?} socket"),
        }
        .into()),
        Err(e) => Err(crate::ConfigError::NotSeqPacket {
            found: format!("not a socket ({e})"),
        }
        .into()),
    }
}

/// Takes off `sock`'s queue the message a peek just read, with no room for its descriptors (the
/// peek installed its own references to them).
pub(crate) fn take_peeked(sock: BorrowedFd<'_>) -> Result<(), Error> {
    let mut buf = [0u8; MAX_MESSAGE];
    loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(sock.as_raw_fd(), &mut iov, None, MsgFlags::MSG_DONTWAIT) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            // The peer closed with messages of ours unread, between the peek and this read.
            Err(Errno::ECONNRESET) => return Err(Error::Closed { during: "receive" }),
            Err(e) => return Err(io_error("recvmsg taking a peeked control message")(e)),
        }
    }
}

/// Receives one control message, waiting at most until `deadline`.
pub(crate) fn recv_blocking<M: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
    deadline: Option<Instant>,
    waiting_for: &'static str,
) -> Result<Incoming<M>, Error> {
    let start = Instant::now();
    loop {
        wait_readable(sock, deadline, waiting_for).map_err(|e| match e {
            Error::Timeout { waiting_for, .. } => Error::Timeout {
                waiting_for,
                after: start.elapsed(),
            },
            other => other,
        })?;
        if let Some(m) = recv(sock)? {
            return Ok(m);
        }
    }
}

/// A connected `SOCK_SEQPACKET` pair, close-on-exec, for a parent and child (or two threads).
pub fn socket_pair() -> Result<(OwnedFd, OwnedFd), Error> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io_error("socketpair(AF_UNIX, SOCK_SEQPACKET)"))
}
