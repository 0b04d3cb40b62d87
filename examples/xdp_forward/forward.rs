//! The forwarder: two AF_XDP sockets over one UMEM, one on each interface, and every frame
//! received on one sent on the other from where it lies (netmap's buffer swap): its UMEM
//! address moves from one RX ring to the other TX ring, and no byte is copied.

use std::time::{Duration, Instant};

use subring_xdp::{AttachMode, RxFrame, XdpError, XdpProgram, XskConfig, XskSocket};

/// What the forwarder did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Forwarded {
    /// Frames moved from the left interface to the right one.
    pub left_to_right: u64,
    /// Frames moved from the right interface to the left one.
    pub right_to_left: u64,
}

/// Forwards between interfaces `left` and `right` (queue 0 of each) until `stop` says so (or
/// is dropped), or `limit` has passed. Everything on the wire crosses, not only the example's
/// frames (IPv6 neighbour discovery, say).
pub fn forward(
    left: u32,
    right: u32,
    ready: impl FnOnce(),
    stop: std::sync::mpsc::Receiver<()>,
    limit: Duration,
) -> Result<Forwarded, XdpError> {
    let _left_prog = XdpProgram::attach(left, 1, AttachMode::Generic)?;
    let _right_prog = XdpProgram::attach(right, 1, AttachMode::Generic)?;
    let mut l = XskSocket::bind(left, 0, XskConfig::default())?;
    let mut r = l.bind_shared(right, 0)?;
    _left_prog.register(0, l.fd())?;
    _right_prog.register(0, r.fd())?;
    // Half of the UMEM's frames lent to each side for receiving.
    l.fill(2048)?;
    r.fill(2048)?;
    ready();
    let mut done = Forwarded::default();
    let deadline = Instant::now() + limit;
    let mut batch: Vec<RxFrame> = Vec::with_capacity(64);
    while matches!(stop.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty))
        && Instant::now() < deadline
    {
        l.wait_rx(Duration::from_millis(1))?;
        done.left_to_right += pass(&mut l, &mut r, &mut batch)?;
        done.right_to_left += pass(&mut r, &mut l, &mut batch)?;
    }
    l.drain_tx(Duration::from_secs(5))?;
    r.drain_tx(Duration::from_secs(5))?;
    Ok(done)
}

/// Moves what `from` received to `to`'s TX ring; how many frames.
fn pass(
    from: &mut XskSocket,
    to: &mut XskSocket,
    batch: &mut Vec<RxFrame>,
) -> Result<u64, XdpError> {
    let mut moved = 0;
    from.recv(batch, 64)?;
    for frame in batch.drain(..) {
        // The same UMEM frame, from one socket's RX ring to the other's TX ring.
        match to.queue_tx(frame.into_tx()) {
            Ok(()) => moved += 1,
            // TX full: the frame is dropped (freed), as a switch drops on congestion.
            Err((_frame, XdpError::Full)) => {}
            Err((_, e)) => return Err(e),
        }
    }
    to.flush_tx()?;
    to.reap_tx()?;
    from.fill(usize::MAX)?;
    Ok(moved)
}
