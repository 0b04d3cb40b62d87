//! The load: UDP-over-IPv4 Ethernet frames blasted from the far end of the veth pair with
//! `sendmmsg` on a packet socket, 32 per call, the same for every receiver.

use std::os::fd::{AsRawFd, OwnedFd};

/// Frame `len` bytes long (Ethernet header included, no FCS): from `src` to `dst` MAC, IPv4
/// 10.79.0.2 -> 10.79.0.1, UDP 1234 -> 9, a counting payload. The IPv4 checksum is computed;
/// the UDP one is 0 (none, allowed over IPv4).
pub fn udp_frame(len: usize, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let len = len.max(14 + 20 + 8);
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (len - 14) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 79, 0, 2]);
    ip[16..20].copy_from_slice(&[10, 79, 0, 1]);
    let sum = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&1234u16.to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&(ip_len - 20).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend((f.len()..len).map(|i| i as u8));
    f
}

/// Sends `frame` on `fd` (a packet socket bound to the interface) until `stop` says so;
/// returns how many were sent.
pub fn blast(fd: &OwnedFd, frame: &[u8], stop: &std::sync::mpsc::Receiver<()>) -> u64 {
    const BATCH: usize = 32;
    let mut iov = [libc::iovec {
        iov_base: frame.as_ptr() as *mut libc::c_void,
        iov_len: frame.len(),
    }];
    // SAFETY: all zeroes is a valid `mmsghdr`.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for m in &mut msgs {
        m.msg_hdr.msg_iov = iov.as_mut_ptr();
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut sent = 0u64;
    while matches!(stop.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty)) {
        // SAFETY: `msgs` point at `iov`, which points at `frame`: all alive for the call.
        let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64;
        }
    }
    sent
}
