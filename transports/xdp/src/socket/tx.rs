//! Sending: the TX ring (frames queued) and the completion ring (frames sent).

use std::os::fd::AsRawFd;
use std::time::Duration;

use subring_planes::data::BufHandle;

use super::{TxFrame, XskSocket};
use crate::ring::RingKind;
use crate::XdpError;

impl XskSocket {
    /// Queues a frame for sending (the kernel owns it from now until its completion,
    /// [`XskSocket::reap_tx`]); a full TX ring hands it back. Nothing is sent before
    /// [`XskSocket::flush_tx`] rings the doorbell (queue many, ring once).
    pub fn queue_tx(&mut self, frame: TxFrame) -> Result<(), (TxFrame, XdpError)> {
        match self.tx.free() {
            Ok(0) => return Err((frame, XdpError::Full)),
            Ok(_) => {}
            Err(e) => return Err((frame, e)),
        }
        if let Err(why) = self.check_tx(&frame) {
            return Err((frame, why));
        }
        let TxFrame { buf, offset, len } = frame;
        self.in_tx.set(buf.index());
        let addr = buf.lend().offset + u64::from(offset);
        self.tx.write_desc(0, addr, len);
        self.tx.publish(1);
        self.stats.tx += 1;
        Ok(())
    }

    /// A frame this socket can send: one of its own UMEM's (not another socket's pool, whose
    /// index would name a frame of this UMEM), with bytes to send, inside its frame.
    fn check_tx(&self, frame: &TxFrame) -> Result<(), XdpError> {
        let base = self.region.as_ptr() as usize;
        let at = (frame.buf.as_ptr() as usize).wrapping_sub(base);
        let size = self.frame_size as usize;
        let own = at < size * self.frames as usize
            && at % size == 0
            && at / size == frame.buf.index() as usize;
        if !own {
            return Err(XdpError::ForeignFrame);
        }
        if frame.len == 0
            || u64::from(frame.offset) + u64::from(frame.len) > u64::from(self.frame_size)
        {
            return Err(XdpError::Config(format!(
                "a frame to send needs 1..={} bytes inside its frame, not {} at {}",
                self.frame_size, frame.len, frame.offset
            )));
        }
        Ok(())
    }

    /// The TX doorbell (`sendto`): with need-wakeup, only if the kernel set the flag (copy mode
    /// always sets it). In copy mode one call sends at most the kernel's budget (32 frames);
    /// this repeats it while the kernel says there is more, a bounded number of times, and
    /// [`XskSocket::drain_tx`] until all completed. The kernel sends nothing while the
    /// completion ring is full: then this reaps the completions ([`XskSocket::reap_tx`], whose
    /// errors it returns) and goes on; completions the kernel has reserved but not posted yet
    /// leave the rest queued for a later call. A link that is down is [`XdpError::LinkDown`]:
    /// the frames stay queued.
    pub fn flush_tx(&mut self) -> Result<(), XdpError> {
        self.kick_tx()
    }

    fn kick_tx(&mut self) -> Result<(), XdpError> {
        if self.need_wakeup && !self.tx.needs_wakeup() {
            self.stats.tx_kicks_skipped += 1;
            return Ok(());
        }
        // Enough calls for a full ring at the kernel's budget of 32 per call, and one more.
        let calls = self.tx_in_flight() / 32 + 2;
        let mut free = self.tx.free()?;
        for _ in 0..calls {
            self.stats.tx_kicks += 1;
            // SAFETY: a zero-length send of no buffer to no address: the documented TX doorbell.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if rc >= 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                // The budget ran out with more queued (the kernel took frames: again), or the
                // completion ring had no room for what it would send (it took none: the
                // completions are reaped to make room, and the call made again if there were
                // any; with none, there is nothing a call can do now).
                Some(libc::EAGAIN) => {
                    let now_free = self.tx.free()?;
                    if now_free == free && self.reap_tx()? == 0 {
                        return Ok(());
                    }
                    free = now_free;
                }
                // The kernel is busy with this ring, or its buffers are: a later call sends.
                Some(libc::EBUSY | libc::ENOBUFS) => return Ok(()),
                Some(libc::ENETDOWN) => return Err(XdpError::LinkDown),
                _ => {
                    return Err(XdpError::Os {
                        what: "sendto kicking the TX ring",
                        source: e,
                    })
                }
            }
        }
        Ok(())
    }

    /// Takes back the frames whose sending completed (they return to the pool); returns how
    /// many.
    pub fn reap_tx(&mut self) -> Result<usize, XdpError> {
        let n = self.comp.ready()?;
        let mut first_bad = None;
        for k in 0..n {
            let addr = self.comp.read_u64(k);
            let size = u64::from(self.frame_size);
            let index = addr / size;
            let bad = |why| XdpError::BadDescriptor {
                ring: RingKind::Completion,
                addr,
                len: 0,
                why,
            };
            let taken = if index >= u64::from(self.frames) {
                Err(bad("outside the UMEM"))
            } else if !self.in_tx.take(index as u32) {
                Err(bad("a frame not lent to the kernel for sending"))
            } else {
                let layout = self.pool.layout();
                self.pool
                    .reclaim(BufHandle {
                        offset: layout.base + index * size,
                        len: 0,
                        region: layout.region,
                    })
                    .map(drop)
                    .map_err(|_| bad("a frame the pool does not have lent"))
            };
            match taken {
                Ok(()) => self.stats.tx_completed += 1,
                Err(e) => {
                    self.stats.refused += 1;
                    first_bad.get_or_insert(e);
                }
            }
        }
        if n > 0 {
            self.comp.release(n);
        }
        match first_bad {
            Some(e) => Err(e),
            None => Ok(n as usize),
        }
    }

    /// Frames queued for sending whose completion has not come back.
    pub fn tx_in_flight(&self) -> usize {
        self.in_tx.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Waits, at most `timeout`, until every frame queued for sending has completed, ringing
    /// the doorbell when the kernel asks. Frames that never come back (a link that went down,
    /// a driver that stalls) end it with [`XdpError::TxStalled`] once `timeout` has passed (a
    /// timeout too long for a deadline to hold waits without limit).
    pub fn drain_tx(&mut self, timeout: Duration) -> Result<(), XdpError> {
        // A timeout past what a deadline can hold is no limit.
        let deadline = std::time::Instant::now().checked_add(timeout);
        let mut link_down = false;
        loop {
            self.reap_tx()?;
            let pending = self.tx_in_flight();
            if pending == 0 {
                return Ok(());
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Err(XdpError::TxStalled {
                    pending,
                    waited: timeout,
                    link_down,
                });
            }
            match self.kick_tx() {
                // The link may come back before the deadline.
                Err(XdpError::LinkDown) => link_down = true,
                r => r?,
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}
