//! The three receivers, each as its users write it, on CPU 1 in the receiving namespace: an
//! AF_XDP socket through subring-xdp (copy mode, generic XDP: veth has nothing else), an
//! `AF_PACKET` socket with a `TPACKET_V3` ring mapped into memory, and a UDP socket drained with
//! `recvmmsg`. Each counts the frames it took between `start` and `stop`, and its system calls.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Duration;

use subring_xdp::{AttachMode, XdpProgram, XskConfig, XskSocket};

/// What a receiver took in its window.
#[derive(Debug, Default, Clone, Copy)]
pub struct Taken {
    /// Frames received.
    pub frames: u64,
    /// System calls made.
    pub syscalls: u64,
}

fn stopped(stop: &Receiver<()>) -> bool {
    !matches!(stop.try_recv(), Err(TryRecvError::Empty))
}

fn poll_in(fd: i32, ms: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

/// subring-xdp: the redirect program, one socket on queue 0, frames read, dropped (back to the
/// pool) and posted again.
pub fn xsk(ifindex: u32, ready: impl FnOnce(), stop: &Receiver<()>) -> Result<Taken, String> {
    let e = |e: subring_xdp::XdpError| e.to_string();
    let prog = XdpProgram::attach(ifindex, 1, AttachMode::Generic).map_err(e)?;
    let mut sock = XskSocket::bind(ifindex, 0, XskConfig::default()).map_err(e)?;
    prog.register(0, sock.fd()).map_err(e)?;
    sock.fill(usize::MAX).map_err(e)?;
    ready();
    let before = sock.stats();
    let mut batch = Vec::with_capacity(64);
    let mut frames = 0u64;
    while !stopped(stop) {
        let n = sock.recv(&mut batch, 64).map_err(e)?;
        if n == 0 {
            // The default notify mode (adaptive): looking at the ring for up to 100 us before
            // sleeping in poll, so a loaded receiver never sleeps.
            sock.wait(Duration::from_millis(10)).map_err(e)?;
            continue;
        }
        frames += n as u64;
        batch.clear();
        sock.fill(usize::MAX).map_err(e)?;
    }
    let after = sock.stats();
    let syscalls = (after.rx_polls - before.rx_polls) + (after.fill_wakeups - before.fill_wakeups);
    Ok(Taken { frames, syscalls })
}

/// `AF_PACKET` with a `TPACKET_V3` receive ring: blocks of frames handed over whole, polled
/// when the next block is not ready.
pub fn packet_v3(ifindex: u32, ready: impl FnOnce(), stop: &Receiver<()>) -> Result<Taken, String> {
    const BLOCK: usize = 1 << 20;
    const BLOCKS: usize = 16;
    const FRAME: usize = 2048;
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); checked and owned below.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if raw < 0 {
        return Err(format!(
            "packet socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a new descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let set = |opt: i32, val: *const libc::c_void, len: usize, what: &str| -> Result<(), String> {
        // SAFETY: `val` points at `len` readable bytes (the callers' locals).
        let rc =
            unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_PACKET, opt, val, len as u32) };
        if rc != 0 {
            return Err(format!("{what}: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    };
    let version: libc::c_int = 2; // TPACKET_V3
    set(
        libc::PACKET_VERSION,
        (&version as *const libc::c_int).cast(),
        4,
        "PACKET_VERSION",
    )?;
    let req = libc::tpacket_req3 {
        tp_block_size: BLOCK as u32,
        tp_block_nr: BLOCKS as u32,
        tp_frame_size: FRAME as u32,
        tp_frame_nr: (BLOCK * BLOCKS / FRAME) as u32,
        tp_retire_blk_tov: 1,
        tp_sizeof_priv: 0,
        tp_feature_req_word: 0,
    };
    set(
        libc::PACKET_RX_RING,
        (&req as *const libc::tpacket_req3).cast(),
        std::mem::size_of::<libc::tpacket_req3>(),
        "PACKET_RX_RING",
    )?;
    let len = BLOCK * BLOCKS;
    // SAFETY: maps the ring the kernel just made for this socket, of that size.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd.as_raw_fd(),
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(format!(
            "mmap the packet ring: {}",
            std::io::Error::last_os_error()
        ));
    }
    struct Unmap(*mut libc::c_void, usize);
    impl Drop for Unmap {
        fn drop(&mut self) {
            // SAFETY: the mapping made above, unmapped once.
            unsafe { libc::munmap(self.0, self.1) };
        }
    }
    let _unmap = Unmap(base, len);
    super::netns::bind_packet_socket(&fd, ifindex, libc::ETH_P_ALL as u16)?;
    ready();
    let (mut frames, mut syscalls, mut block) = (0u64, 0u64, 0usize);
    while !stopped(stop) {
        // SAFETY: block `block` lies inside the mapping; its header's `block_status` (offset 8)
        // and `num_pkts` (12) are words the kernel writes and hands over with the status.
        let hdr = unsafe { base.cast::<u8>().add(block * BLOCK) };
        // SAFETY: as above, 4-aligned.
        let status = unsafe { std::ptr::read_volatile(hdr.add(8).cast::<u32>()) };
        if status & libc::TP_STATUS_USER == 0 {
            syscalls += 1;
            poll_in(fd.as_raw_fd(), 10);
            continue;
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        // SAFETY: as above.
        let n = unsafe { std::ptr::read_volatile(hdr.add(12).cast::<u32>()) };
        // Walk the block's packets as a user does (their lengths), to touch what arrived.
        // SAFETY: `offset_to_first_pkt` (16) and each packet's `tp_next_offset` stay inside the
        // block, which the kernel handed over.
        let mut at = unsafe { std::ptr::read_volatile(hdr.add(16).cast::<u32>()) } as usize;
        let mut bytes = 0u64;
        for _ in 0..n {
            if at + 24 > BLOCK {
                break;
            }
            // SAFETY: checked to lie inside the block.
            // (Unaligned reads: `at` comes from the kernel.)
            let (next, snaplen) = unsafe {
                (
                    std::ptr::read_unaligned(hdr.add(at).cast::<u32>()),
                    std::ptr::read_unaligned(hdr.add(at + 12).cast::<u32>()),
                )
            };
            bytes += u64::from(snaplen);
            if next == 0 {
                break;
            }
            at += next as usize;
        }
        std::hint::black_box(bytes);
        frames += u64::from(n);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        // SAFETY: as above: the block goes back to the kernel.
        unsafe { std::ptr::write_volatile(hdr.add(8).cast::<u32>(), 0) };
        block = (block + 1) % BLOCKS;
    }
    Ok(Taken { frames, syscalls })
}

/// A UDP socket on 10.79.0.1:9, drained with `recvmmsg` (64 per call, blocking for the first
/// with a 10 ms timeout).
pub fn recvmmsg(ready: impl FnOnce(), stop: &Receiver<()>) -> Result<Taken, String> {
    const BATCH: usize = 64;
    let sock = std::net::UdpSocket::bind("10.79.0.1:9").map_err(|e| format!("bind UDP: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(10)))
        .map_err(|e| e.to_string())?;
    let mut bufs = vec![[0u8; 2048]; BATCH];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: all zeroes is a valid `mmsghdr`.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    ready();
    let (mut frames, mut syscalls) = (0u64, 0u64);
    while !stopped(stop) {
        syscalls += 1;
        // SAFETY: every `mmsghdr` points at one of `iovs`, each at one of `bufs`: all alive.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n > 0 {
            frames += n as u64;
        }
    }
    Ok(Taken { frames, syscalls })
}
