//! Building raw submission entries from [`Op`]s, and turning completions back into
//! [`Output`]s: the one place entries are built.

use super::*;

/// Memory that an in-flight operation's entry points into, besides the `Op` itself. The
/// contents are never read back here (except `Statx`): they are held so the kernel can use them.
#[derive(Debug, Default)]
#[allow(dead_code)]
pub(crate) enum Aux {
    #[default]
    None,
    Iovecs(Vec<libc::iovec>),
    Timespec(Box<types::Timespec>),
    Statx(Box<libc::statx>),
    SockAddr(Box<(libc::sockaddr_storage, libc::socklen_t)>),
    Msg(Box<MsgHdr>),
    /// The bytes a zero-copy send reported in its first completion, for its last one.
    Sent(u32),
    /// The error (a negative `errno`) a zero-copy send reported in its first completion, for
    /// its last one: a send that fails has a notification too on the kernels that post one.
    SendFailed(i32),
    /// The descriptor numbers a files update reads.
    Fds(Vec<RawFd>),
}

/// A `msghdr` and everything it points to, kept together until the completion: the kernel
/// writes the sender's address and the flags back into it when a `recvmsg` completes.
#[derive(Debug)]
pub(crate) struct MsgHdr {
    hdr: libc::msghdr,
    iov: Vec<libc::iovec>,
    name: libc::sockaddr_storage,
}

/// A boxed `msghdr` over `bufs`, naming `to` (send), or with room for the sender (receive).
fn msghdr(bufs: &mut [Vec<u8>], to: Option<&SocketAddr>, receive: bool) -> Box<MsgHdr> {
    // SAFETY: `msghdr` and `sockaddr_storage` are plain old data; all zeroes is a valid value.
    let mut m = Box::new(unsafe {
        MsgHdr {
            hdr: std::mem::zeroed(),
            iov: iovecs(bufs),
            name: std::mem::zeroed(),
        }
    });
    // The pointers target the box's own fields and the vector's heap buffer: moving the box
    // (into `Aux`) moves neither.
    m.hdr.msg_iov = m.iov.as_mut_ptr();
    m.hdr.msg_iovlen = m.iov.len();
    if let Some(addr) = to {
        let sa = sockaddr(addr);
        m.name = sa.0;
        m.hdr.msg_namelen = sa.1;
    } else if receive {
        m.hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    }
    if to.is_some() || receive {
        m.hdr.msg_name = (&mut m.name as *mut libc::sockaddr_storage).cast();
    }
    m
}

/// The IPv4 or IPv6 address the kernel wrote into a received `msghdr`.
fn sender(m: &MsgHdr) -> Option<SocketAddr> {
    use nix::sys::socket::{SockaddrLike, SockaddrStorage};
    let len = m
        .hdr
        .msg_namelen
        .min(std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t);
    // SAFETY: `name` holds `len` bytes of a socket address the kernel wrote (bounded by the
    // storage's size).
    let addr = unsafe {
        SockaddrStorage::from_raw((&m.name as *const libc::sockaddr_storage).cast(), Some(len))
    }?;
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

// SAFETY: the iovecs point into the `Op`'s own buffers, which travel with them; nothing here is
// shared with another thread.
unsafe impl Send for Aux {}

fn timespec(d: Duration) -> Box<types::Timespec> {
    Box::new(
        types::Timespec::new()
            .sec(d.as_secs())
            .nsec(d.subsec_nanos()),
    )
}

fn sockaddr(addr: &SocketAddr) -> Box<(libc::sockaddr_storage, libc::socklen_t)> {
    let addr = nix::sys::socket::SockaddrStorage::from(*addr);
    use nix::sys::socket::SockaddrLike;
    // SAFETY: `sockaddr_storage` is plain old data; all zeroes is a valid (empty) value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = addr.len();
    // SAFETY: `addr.as_ptr()` points to `len` valid bytes of a socket address, and
    // `sockaddr_storage` is large enough for any address (`len <= size_of`).
    unsafe {
        std::ptr::copy_nonoverlapping(
            addr.as_ptr().cast::<u8>(),
            (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
            (len as usize).min(std::mem::size_of::<libc::sockaddr_storage>()),
        );
    }
    Box::new((storage, len))
}

/// `addr` as a socket address kept in `aux` until the completion: its pointer and length.
fn kept_sockaddr(aux: &mut Aux, addr: &SocketAddr) -> (*const libc::sockaddr, libc::socklen_t) {
    let sa = sockaddr(addr);
    // Moving the box into `aux` does not move what it points to.
    let ptr = (&sa.0 as *const libc::sockaddr_storage).cast::<libc::sockaddr>();
    let len = sa.1;
    *aux = Aux::SockAddr(sa);
    (ptr, len)
}

/// Truncates scattered buffers, in order, to the `n` bytes the kernel filled.
fn truncate_to(bufs: &mut [Vec<u8>], n: usize) {
    let mut left = n;
    for b in bufs {
        let take = b.len().min(left);
        b.truncate(take);
        left -= take;
    }
}

fn iovecs(bufs: &mut [Vec<u8>]) -> Vec<libc::iovec> {
    bufs.iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect()
}

fn len32(len: usize) -> u32 {
    len.min(u32::MAX as usize) as u32
}

/// A resolved fixed buffer: where the kernel should read or write.
pub(crate) struct FixedAddr {
    pub ptr: *mut u8,
    pub len: u32,
    pub index: u16,
    /// The registered region's key.
    pub key: u32,
}

/// What the ring adds to every entry: its `user_data`, its link flags, and what the operation
/// needs from the ring (a resolved fixed buffer; the `user_data` a cancel targets).
pub(crate) struct Finish {
    pub user_data: u64,
    pub flags: squeue::Flags,
    pub fixed: Option<FixedAddr>,
    pub cancel_target: u64,
}

impl Finish {
    #[inline(always)]
    fn apply(&self, entry: squeue::Entry) -> squeue::Entry {
        let entry = entry.user_data(self.user_data);
        // Unlinked entries (the common case) are left alone: setting the flags byte of an
        // entry in memory and then copying it as whole words is a store-forwarding stall.
        if self.flags.is_empty() {
            entry
        } else {
            entry.flags(self.flags)
        }
    }
}

/// Builds the entry for `op` and hands it to `emit` (which queues it), recording in `aux` any
/// memory the entry points to beside `op`'s own fields.
///
/// Each operation calls `emit` on its own, just-built entry. Building into one shared entry
/// and copying it into the queue afterwards made the compiler keep the entry on the stack,
/// written field by field and read back as whole words: a store-forwarding stall per push.
/// This way the fields can be stored straight into the submission queue.
#[inline(always)]
pub(crate) fn build<R>(
    op: &mut Op,
    aux: &mut Aux,
    fin: &Finish,
    emit: impl FnOnce(&squeue::Entry) -> R,
) -> R {
    let out = |entry: squeue::Entry| emit(&fin.apply(entry));
    macro_rules! fd {
        ($t:expr, $b:expr) => {
            match $t {
                Target::Fd(fd) => out($b(types::Fd(fd.raw()))),
                Target::Fixed(i) => out($b(types::Fixed(*i))),
            }
        };
    }
    let at = |dir: &Option<SharedFd>| types::Fd(dir.as_ref().map_or(libc::AT_FDCWD, SharedFd::raw));
    // Memory recorded in `aux` is moved there before the entry is emitted: moving a `Vec` or
    // a `Box` does not move what it points to, so the pointers taken before stay valid.
    match op {
        Op::Nop => out(opcode::Nop::new().build()),
        Op::Read { fd, buf, offset } => {
            fd!(fd, |f| opcode::Read::new(
                f,
                buf.as_mut_ptr(),
                len32(buf.len())
            )
            .offset(*offset)
            .build())
        }
        Op::Write { fd, buf, offset } => {
            fd!(fd, |f| opcode::Write::new(
                f,
                buf.as_ptr(),
                len32(buf.len())
            )
            .offset(*offset)
            .build())
        }
        Op::Readv { fd, bufs, offset } => {
            let iov = iovecs(bufs);
            let (ptr, n) = (iov.as_ptr(), len32(iov.len()));
            *aux = Aux::Iovecs(iov);
            fd!(fd, |f| opcode::Readv::new(f, ptr, n)
                .offset(*offset)
                .build())
        }
        Op::Writev { fd, bufs, offset } => {
            let iov = iovecs(bufs);
            let (ptr, n) = (iov.as_ptr(), len32(iov.len()));
            *aux = Aux::Iovecs(iov);
            fd!(fd, |f| opcode::Writev::new(f, ptr, n)
                .offset(*offset)
                .build())
        }
        Op::ReadFixed { fd, offset, .. } => {
            let a = fin
                .fixed
                .as_ref()
                .expect("fixed buffer resolved by the caller");
            fd!(fd, |f| opcode::ReadFixed::new(f, a.ptr, a.len, a.index)
                .offset(*offset)
                .build())
        }
        Op::WriteFixed { fd, offset, .. } => {
            let a = fin
                .fixed
                .as_ref()
                .expect("fixed buffer resolved by the caller");
            fd!(fd, |f| opcode::WriteFixed::new(f, a.ptr, a.len, a.index)
                .offset(*offset)
                .build())
        }
        Op::Fsync { fd, datasync } => {
            let flags = if *datasync {
                types::FsyncFlags::DATASYNC
            } else {
                types::FsyncFlags::empty()
            };
            fd!(fd, |f| opcode::Fsync::new(f).flags(flags).build())
        }
        Op::OpenAt {
            dir,
            path,
            flags,
            mode,
        } => out(opcode::OpenAt::new(at(dir), path.as_ptr())
            .flags(*flags | libc::O_CLOEXEC)
            .mode(*mode)
            .build()),
        Op::Close { fd } => match fd {
            CloseTarget::Owned(fd) => {
                out(opcode::Close::new(types::Fd(std::os::fd::AsRawFd::as_raw_fd(fd))).build())
            }
            CloseTarget::Fixed(i) => out(opcode::Close::new(types::Fixed(*i)).build()),
        },
        Op::Statx {
            dir,
            path,
            flags,
            mask,
        } => {
            // SAFETY: `statx` is plain old data; all zeroes is a valid value.
            let mut buf: Box<libc::statx> = Box::new(unsafe { std::mem::zeroed() });
            let ptr = (&mut *buf as *mut libc::statx).cast::<types::statx>();
            *aux = Aux::Statx(buf);
            out(opcode::Statx::new(at(dir), path.as_ptr(), ptr)
                .flags(*flags)
                .mask(*mask)
                .build())
        }
        Op::Send { fd, buf, flags } => {
            fd!(fd, |f| opcode::Send::new(f, buf.as_ptr(), len32(buf.len()))
                .flags(*flags)
                .build())
        }
        Op::SendBuf { fd, buf, flags } => {
            fd!(fd, |f| opcode::Send::new(f, buf.as_ptr(), len32(buf.len()))
                .flags(*flags)
                .build())
        }
        Op::SendZc { fd, buf, flags } => {
            fd!(fd, |f| opcode::SendZc::new(
                f,
                buf.as_ptr(),
                len32(buf.len())
            )
            .flags(*flags)
            .build())
        }
        Op::SendZcFixed { fd, flags, .. } => {
            let a = fin
                .fixed
                .as_ref()
                .expect("fixed buffer resolved by the caller");
            fd!(fd, |f| opcode::SendZc::new(f, a.ptr, a.len)
                .buf_index(Some(a.index))
                .flags(*flags)
                .build())
        }
        Op::Recv { fd, buf, flags } => {
            fd!(fd, |f| opcode::Recv::new(
                f,
                buf.as_mut_ptr(),
                len32(buf.len())
            )
            .flags(*flags)
            .build())
        }
        Op::SendMsg {
            fd,
            bufs,
            to,
            flags,
        } => {
            let m = msghdr(bufs, to.as_deref(), false);
            let ptr: *const libc::msghdr = &m.hdr;
            *aux = Aux::Msg(m);
            fd!(fd, |f| opcode::SendMsg::new(f, ptr)
                .flags(*flags as u32)
                .build())
        }
        Op::RecvMsg { fd, bufs, flags } => {
            let mut m = msghdr(bufs, None, true);
            let ptr: *mut libc::msghdr = &mut m.hdr;
            *aux = Aux::Msg(m);
            fd!(fd, |f| opcode::RecvMsg::new(f, ptr)
                .flags(*flags as u32)
                .build())
        }
        Op::Accept { fd } => fd!(fd, |f| opcode::Accept::new(
            f,
            std::ptr::null_mut(),
            std::ptr::null_mut()
        )
        .flags(libc::SOCK_CLOEXEC)
        .build()),
        Op::AcceptDirect { fd, slot } => fd!(fd, |f| opcode::Accept::new(
            f,
            std::ptr::null_mut(),
            std::ptr::null_mut()
        )
        .file_index(Some(slot.kernel()))
        .build()),
        Op::AcceptMultiDirect { fd } => fd!(fd, |f| opcode::AcceptMulti::new(f)
            .allocate_file_index(true)
            .build()),
        Op::SocketDirect {
            domain,
            ty,
            protocol,
            slot,
        } => out(opcode::Socket::new(*domain, *ty, *protocol)
            .file_index(Some(slot.kernel()))
            .build()),
        Op::OpenAtDirect {
            dir,
            path,
            flags,
            mode,
            slot,
        } => out(opcode::OpenAt::new(at(dir), path.as_ptr())
            .flags(*flags)
            .mode(*mode)
            .file_index(Some(slot.kernel()))
            .build()),
        Op::FilesUpdate { offset, fds } => {
            let raw: Vec<RawFd> = fds
                .iter()
                .map(|f| f.as_ref().map_or(-1, SharedFd::raw))
                .collect();
            let (ptr, n) = (raw.as_ptr(), len32(raw.len()));
            *aux = Aux::Fds(raw);
            out(opcode::FilesUpdate::new(ptr, n)
                .offset(*offset as i32)
                .build())
        }
        Op::AcceptMulti { fd } => fd!(fd, |f| opcode::AcceptMulti::new(f)
            .flags(libc::SOCK_CLOEXEC)
            .build()),
        Op::RecvMulti { fd, group, flags } => {
            fd!(fd, |f| opcode::RecvMulti::new(f, group.id())
                .flags(*flags)
                .build())
        }
        Op::RecvMultiBundle { fd, group, flags } => {
            fd!(fd, |f| opcode::RecvMultiBundle::new(f, group.id())
                .flags(*flags)
                .build())
        }
        Op::SendBundle { fd, group, flags } => {
            fd!(fd, |f| opcode::SendBundle::new(f, group.id())
                .flags(*flags)
                .build())
        }
        Op::ReadMulti { fd, group } => fd!(fd, |f| opcode::ReadMulti::new(f, 0, group.id())
            .offset(u64::MAX)
            .build()),
        Op::PollMulti { fd, events } => {
            fd!(fd, |f| opcode::PollAdd::new(f, *events).multi(true).build())
        }
        Op::Connect { fd, addr } => {
            let (ptr, len) = kept_sockaddr(aux, addr);
            fd!(fd, |f| opcode::Connect::new(f, ptr, len).build())
        }
        Op::Socket {
            domain,
            ty,
            protocol,
        } => out(opcode::Socket::new(*domain, *ty | libc::SOCK_CLOEXEC, *protocol).build()),
        Op::Bind { fd, addr } => {
            let (ptr, len) = kept_sockaddr(aux, addr);
            fd!(fd, |f| opcode::Bind::new(f, ptr, len).build())
        }
        Op::Listen { fd, backlog } => fd!(fd, |f| opcode::Listen::new(f, *backlog).build()),
        Op::Shutdown { fd, how } => fd!(fd, |f| opcode::Shutdown::new(f, *how).build()),
        Op::Timeout { after, count } => {
            let ts = timespec(*after);
            let ptr: *const types::Timespec = &*ts;
            *aux = Aux::Timespec(ts);
            out(opcode::Timeout::new(ptr).count(*count).build())
        }
        Op::LinkTimeout { after } => {
            let ts = timespec(*after);
            let ptr: *const types::Timespec = &*ts;
            *aux = Aux::Timespec(ts);
            out(opcode::LinkTimeout::new(ptr).build())
        }
        Op::Cancel { .. } => out(opcode::AsyncCancel::new(fin.cancel_target).build()),
        Op::CancelFd { fd, all } => {
            let which = |b: types::CancelBuilder| if *all { b.all() } else { b };
            match fd {
                Target::Fd(fd) => out(opcode::AsyncCancel2::new(which(types::CancelBuilder::fd(
                    types::Fd(fd.raw()),
                )))
                .build()),
                Target::Fixed(i) => out(opcode::AsyncCancel2::new(which(
                    types::CancelBuilder::fd(types::Fixed(*i)),
                ))
                .build()),
            }
        }
        Op::CancelAll => out(opcode::AsyncCancel2::new(types::CancelBuilder::any()).build()),
        Op::TimeoutRemove { .. } => out(opcode::TimeoutRemove::new(fin.cancel_target).build()),
        Op::TimeoutUpdate { after, .. } => {
            let ts = timespec(*after);
            let ptr: *const types::Timespec = &*ts;
            *aux = Aux::Timespec(ts);
            out(opcode::TimeoutUpdate::new(fin.cancel_target, ptr).build())
        }
        Op::Poll { fd, events } => fd!(fd, |f| opcode::PollAdd::new(f, *events).build()),
        Op::Fallocate {
            fd,
            offset,
            len,
            mode,
        } => fd!(fd, |f| opcode::Fallocate::new(f, *len)
            .offset(*offset)
            .mode(*mode)
            .build()),
        Op::MsgRing {
            ring,
            result,
            token,
        } => out(opcode::MsgRingData::new(types::Fd(ring.raw()), *result, *token, None).build()),
    }
}

/// Drops `aux` without a call to its drop glue when it holds nothing, as it does for most
/// operations (an `Aux` is dropped at every push and every completion).
#[inline(always)]
pub(crate) fn drop_aux(aux: Aux) {
    if matches!(aux, Aux::None) {
        std::mem::forget(aux);
    } else {
        drop(aux);
    }
}

/// Puts `aux` into `place`, a free slot's, which holds nothing (completions take a slot's
/// `Aux` out): so without a call to the drop glue of what was there.
#[inline(always)]
pub(crate) fn put_aux(place: &mut Aux, aux: Aux) {
    drop_aux(std::mem::replace(place, aux));
}

/// The plain buffer operations (read, write, send and recv of a `Vec`), the commonest that own
/// memory, finished in place: takes the buffer out of the operation in `slot` (truncated to
/// the bytes read or received), drops the rest of it there (its descriptor), and leaves the
/// slot empty; returns the buffer and the operation's name. `None`, changing nothing, for any
/// other operation ([`output`] finishes those, moved out of the slot).
///
/// What this saves: moving a whole operation (72 bytes) out of its slot and through the
/// stack, and a call to its drop glue (docs/performance-history.md, "the kernel transport's
/// per-operation work").
///
/// The `bool` says whether `res` is more bytes than the buffer held: a result the kernel
/// cannot give (a forged completion's, or a kernel bug's), which the caller turns into an
/// error rather than a count past the buffer's end.
#[inline(always)]
pub(crate) fn take_plain_buf(
    slot: &mut Option<Op>,
    res: i32,
) -> Option<(Vec<u8>, &'static str, bool)> {
    let n = if res > 0 { res as usize } else { 0 };
    // The name, and whether the kernel filled the buffer (then it is cut to what it filled).
    // Every field is named: one added to these variants must be handled below (or it would
    // be forgotten with the rest).
    // `truncating`: a receive with `MSG_TRUNC`, whose result is the datagram's whole length.
    let (fd, buf, name, filled, truncating) = match slot {
        Some(Op::Read { fd, buf, offset: _ }) => (fd, buf, "read", true, false),
        Some(Op::Recv { fd, buf, flags }) => (fd, buf, "recv", true, *flags & libc::MSG_TRUNC != 0),
        Some(Op::Write { fd, buf, offset: _ }) => (fd, buf, "write", false, false),
        Some(Op::Send { fd, buf, flags: _ }) => (fd, buf, "send", false, false),
        _ => return None,
    };
    let mut buf = std::mem::take(buf);
    let too_long = n > buf.len() && !truncating;
    if filled {
        buf.truncate(n);
    }
    // The descriptor is dropped here (a shared one's count goes down); what is left owns
    // nothing (an empty `Vec`, a table index), so it is forgotten rather than dropped.
    drop(std::mem::replace(fd, Target::Fixed(0)));
    std::mem::forget(slot.take());
    Some((buf, name, too_long))
}

/// The most bytes a transfer's result can count (the buffers' lengths; a fixed pool buffer's
/// capacity when read into), or `None` for an operation whose result is not a byte count of
/// its own buffers (a receive with `MSG_TRUNC` counts the whole datagram).
pub(crate) fn most_bytes(op: &Op) -> Option<usize> {
    let total = |bufs: &[Vec<u8>]| bufs.iter().map(Vec::len).sum();
    match op {
        Op::Recv { flags, .. } | Op::RecvMsg { flags, .. } if flags & libc::MSG_TRUNC != 0 => None,
        Op::Read { buf, .. } | Op::Recv { buf, .. } | Op::Write { buf, .. } => Some(buf.len()),
        Op::Send { buf, .. } | Op::SendZc { buf, .. } => Some(buf.len()),
        Op::Readv { bufs, .. } | Op::Writev { bufs, .. } => Some(total(bufs)),
        Op::RecvMsg { bufs, .. } | Op::SendMsg { bufs, .. } => Some(total(bufs)),
        Op::ReadFixed { buf, .. } => Some(buf.handle(true).len as usize),
        Op::WriteFixed { buf, .. } => Some(buf.handle(false).len as usize),
        _ => None,
    }
}

/// The error for a transfer whose result counts more bytes than its buffers hold.
#[cold]
pub(crate) fn too_long(name: &'static str, token: u64, res: i32, most: usize) -> std::io::Error {
    crate::OpError {
        op: name,
        token,
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the completion counts {res} bytes, the buffers hold {most}"),
        ),
    }
    .into_io()
}

/// The error of a plain buffer operation ([`take_plain_buf`]) the kernel finished with
/// `res < 0`.
#[cold]
pub(crate) fn plain_failed(name: &'static str, token: u64, res: i32) -> std::io::Error {
    crate::OpError {
        op: name,
        token,
        source: std::io::Error::from_raw_os_error(-res),
    }
    .into_io()
}

/// Turns a finished operation into what the caller gets back, given the kernel's result (and
/// takes from `aux` what it returns).
#[inline]
pub(crate) fn output(op: Op, aux: &mut Aux, res: i32) -> Output {
    let n = if res > 0 { res as usize } else { 0 };
    match op {
        Op::Read { mut buf, .. } | Op::Recv { mut buf, .. } => {
            buf.truncate(n);
            Output::Buf(buf)
        }
        Op::Write { buf, .. } | Op::Send { buf, .. } | Op::SendZc { buf, .. } => Output::Buf(buf),
        Op::SendZcFixed { buf, .. } => Output::Fixed(buf),
        Op::SendBuf { buf, .. } => Output::Pooled(buf),
        Op::SendMsg { bufs, .. } => Output::Bufs(bufs),
        Op::RecvMsg { mut bufs, .. } => {
            truncate_to(&mut bufs, n);
            let (from, flags) = match &*aux {
                Aux::Msg(m) if res >= 0 => (sender(m), m.hdr.msg_flags),
                _ => (None, 0),
            };
            Output::Msg { bufs, from, flags }
        }
        Op::Readv { mut bufs, .. } => {
            truncate_to(&mut bufs, n);
            Output::Bufs(bufs)
        }
        Op::Writev { bufs, .. } => Output::Bufs(bufs),
        Op::ReadFixed { buf, .. } => Output::Fixed(match buf {
            FixedBuf::Buf(mut b) => {
                b.set_len(n.min(b.capacity()));
                FixedBuf::Buf(b)
            }
            h => h,
        }),
        Op::WriteFixed { buf, .. } => Output::Fixed(buf),
        Op::Accept { .. } | Op::AcceptMulti { .. } | Op::OpenAt { .. } | Op::Socket { .. }
            if res >= 0 =>
        {
            // SAFETY: the kernel installed descriptor `res` in this process for this operation
            // and nothing else knows of it: it is this completion's to own.
            Output::Fd(unsafe { OwnedFd::from_raw_fd(res) })
        }
        Op::AcceptDirect {
            slot: DirectSlot::At(i),
            ..
        }
        | Op::SocketDirect {
            slot: DirectSlot::At(i),
            ..
        }
        | Op::OpenAtDirect {
            slot: DirectSlot::At(i),
            ..
        } if res >= 0 => Output::Slot(i),
        Op::AcceptDirect { .. }
        | Op::AcceptMultiDirect { .. }
        | Op::SocketDirect { .. }
        | Op::OpenAtDirect { .. }
            if res >= 0 =>
        {
            Output::Slot(res as u32)
        }
        Op::Close {
            fd: CloseTarget::Owned(fd),
        } => {
            // The kernel closed it unless the operation was cancelled or refused it (`EBADF`:
            // io_uring does not close its own descriptors); then it is closed here, by drop.
            if res != -libc::ECANCELED && res != -libc::EBADF {
                let _ = fd.into_raw_fd();
            }
            Output::None
        }
        Op::Statx { .. } => match std::mem::take(aux) {
            Aux::Statx(s) => Output::Statx(s),
            other => {
                drop_aux(other);
                Output::None
            }
        },
        _ => Output::None,
    }
}

#[cfg(test)]
mod tests;
