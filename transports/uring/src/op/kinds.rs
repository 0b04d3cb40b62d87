//! What kind of operation an [`Op`] is: its name, its opcode (for probing), the buffer group
//! it uses.

use io_uring::opcode;

use super::Op;

impl Op {
    /// The operation's name, used in errors.
    #[inline]
    pub fn name(&self) -> &'static str {
        match self {
            Op::Nop => "nop",
            Op::Read { .. } => "read",
            Op::Write { .. } => "write",
            Op::Readv { .. } => "readv",
            Op::Writev { .. } => "writev",
            Op::ReadFixed { .. } => "read_fixed",
            Op::WriteFixed { .. } => "write_fixed",
            Op::Fsync { .. } => "fsync",
            Op::OpenAt { .. } => "openat",
            Op::Close { .. } => "close",
            Op::Statx { .. } => "statx",
            Op::Send { .. } => "send",
            Op::SendBuf { .. } => "send_buf",
            Op::SendZc { .. } => "send_zc",
            Op::SendZcFixed { .. } => "send_zc_fixed",
            Op::Recv { .. } => "recv",
            Op::SendMsg { .. } => "sendmsg",
            Op::RecvMsg { .. } => "recvmsg",
            Op::Accept { .. } => "accept",
            Op::AcceptDirect { .. } => "accept_direct",
            Op::AcceptMultiDirect { .. } => "accept_multishot_direct",
            Op::SocketDirect { .. } => "socket_direct",
            Op::OpenAtDirect { .. } => "openat_direct",
            Op::FilesUpdate { .. } => "files_update",
            Op::AcceptMulti { .. } => "accept_multishot",
            Op::RecvMulti { .. } => "recv_multishot",
            Op::RecvMultiBundle { .. } => "recv_multishot_bundle",
            Op::SendBundle { .. } => "send_bundle",
            Op::ReadMulti { .. } => "read_multishot",
            Op::PollMulti { .. } => "poll_multishot",
            Op::Connect { .. } => "connect",
            Op::Timeout { .. } => "timeout",
            Op::LinkTimeout { .. } => "link_timeout",
            Op::Cancel { .. } => "cancel",
            Op::Poll { .. } => "poll",
            Op::MsgRing { .. } => "msg_ring",
            Op::Fallocate { .. } => "fallocate",
            Op::CancelFd { .. } => "cancel_fd",
            Op::CancelAll => "cancel_all",
            Op::TimeoutRemove { .. } => "timeout_remove",
            Op::TimeoutUpdate { .. } => "timeout_update",
            Op::Socket { .. } => "socket",
            Op::Bind { .. } => "bind",
            Op::Listen { .. } => "listen",
            Op::Shutdown { .. } => "shutdown",
        }
    }

    /// The io_uring opcode, for probing.
    #[inline]
    pub fn opcode(&self) -> u8 {
        match self {
            Op::Nop => opcode::Nop::CODE,
            Op::Read { .. } => opcode::Read::CODE,
            Op::Write { .. } => opcode::Write::CODE,
            Op::Readv { .. } => opcode::Readv::CODE,
            Op::Writev { .. } => opcode::Writev::CODE,
            Op::ReadFixed { .. } => opcode::ReadFixed::CODE,
            Op::WriteFixed { .. } => opcode::WriteFixed::CODE,
            Op::Fsync { .. } => opcode::Fsync::CODE,
            Op::OpenAt { .. } => opcode::OpenAt::CODE,
            Op::Close { .. } => opcode::Close::CODE,
            Op::Statx { .. } => opcode::Statx::CODE,
            Op::Send { .. } | Op::SendBuf { .. } => opcode::Send::CODE,
            Op::SendZc { .. } | Op::SendZcFixed { .. } => opcode::SendZc::CODE,
            Op::Recv { .. } => opcode::Recv::CODE,
            Op::SendMsg { .. } => opcode::SendMsg::CODE,
            Op::RecvMsg { .. } => opcode::RecvMsg::CODE,
            Op::Accept { .. }
            | Op::AcceptMulti { .. }
            | Op::AcceptDirect { .. }
            | Op::AcceptMultiDirect { .. } => opcode::Accept::CODE,
            Op::SocketDirect { .. } => opcode::Socket::CODE,
            Op::OpenAtDirect { .. } => opcode::OpenAt::CODE,
            Op::FilesUpdate { .. } => opcode::FilesUpdate::CODE,
            Op::RecvMulti { .. } => opcode::RecvMulti::CODE,
            Op::RecvMultiBundle { .. } => opcode::RecvMultiBundle::CODE,
            Op::SendBundle { .. } => opcode::SendBundle::CODE,
            Op::ReadMulti { .. } => opcode::ReadMulti::CODE,
            Op::PollMulti { .. } => opcode::PollAdd::CODE,
            Op::Connect { .. } => opcode::Connect::CODE,
            Op::Timeout { .. } => opcode::Timeout::CODE,
            Op::LinkTimeout { .. } => opcode::LinkTimeout::CODE,
            Op::Cancel { .. } => opcode::AsyncCancel::CODE,
            Op::Poll { .. } => opcode::PollAdd::CODE,
            Op::MsgRing { .. } => opcode::MsgRingData::CODE,
            Op::Fallocate { .. } => opcode::Fallocate::CODE,
            Op::CancelFd { .. } | Op::CancelAll => opcode::AsyncCancel2::CODE,
            Op::TimeoutRemove { .. } => opcode::TimeoutRemove::CODE,
            Op::TimeoutUpdate { .. } => opcode::TimeoutUpdate::CODE,
            Op::Socket { .. } => opcode::Socket::CODE,
            Op::Bind { .. } => opcode::Bind::CODE,
            Op::Listen { .. } => opcode::Listen::CODE,
            Op::Shutdown { .. } => opcode::Shutdown::CODE,
        }
    }

    /// The buffer group an operation picks its buffer from, if it does.
    #[inline]
    pub fn buf_group(&self) -> Option<crate::BufGroup> {
        match self {
            Op::RecvMulti { group, .. }
            | Op::RecvMultiBundle { group, .. }
            | Op::SendBundle { group, .. }
            | Op::ReadMulti { group, .. } => Some(*group),
            _ => None,
        }
    }
}
