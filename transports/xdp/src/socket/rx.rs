//! Receiving: the fill ring (frames lent to the kernel) and the RX ring (frames it filled).

use std::os::fd::AsRawFd;
use std::time::Duration;

use subring_planes::data::BufHandle;
use subring_planes::interrupt::{NotifyMode, ADAPTIVE_MAX_SPIN};

use super::{RxFrame, XskSocket};
use crate::ring::RingKind;
use crate::XdpError;

impl XskSocket {
    /// Lends up to `max` free frames to the kernel for receiving (as many as the fill ring
    /// has room for); returns how many. Rings the fill doorbell if the kernel asks.
    pub fn fill(&mut self, max: usize) -> Result<usize, XdpError> {
        let room = self
            .fill
            .free()?
            .min(u32::try_from(max).unwrap_or(u32::MAX));
        let mut k = 0;
        while k < room {
            let Some(buf) = self.pool.alloc() else { break };
            self.in_fill.set(buf.index());
            let addr = buf.lend().offset;
            self.fill.write_u64(k, addr);
            k += 1;
        }
        if k > 0 {
            self.fill.publish(k);
        }
        self.wake_fill()?;
        Ok(k as usize)
    }

    /// The fill doorbell: with need-wakeup, only if the kernel set the flag.
    fn wake_fill(&mut self) -> Result<(), XdpError> {
        if self.need_wakeup && !self.fill.needs_wakeup() {
            self.stats.fill_wakeups_skipped += 1;
            return Ok(());
        }
        if !self.need_wakeup {
            return Ok(());
        }
        self.stats.fill_wakeups += 1;
        // SAFETY: a zero-length receive into no buffer: the documented way to wake the
        // kernel's RX processing for this socket.
        let rc = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if !matches!(
                e.raw_os_error(),
                Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS)
            ) {
                return Err(XdpError::Os {
                    what: "recvfrom waking the fill ring",
                    source: e,
                });
            }
        }
        Ok(())
    }

    /// Takes up to `max` received frames into `out`; returns how many. A descriptor that names
    /// memory the kernel was not given is refused and counted, and the first such refusal is
    /// returned as the error after the good frames are in `out`.
    pub fn recv(&mut self, out: &mut Vec<RxFrame>, max: usize) -> Result<usize, XdpError> {
        let n = self.rx.ready()?.min(u32::try_from(max).unwrap_or(u32::MAX));
        let mut first_bad = None;
        let mut got = 0;
        for k in 0..n {
            let (addr, len, _options) = self.rx.read_desc(k);
            match self.take_rx(addr, len) {
                Ok(frame) => {
                    out.push(frame);
                    got += 1;
                }
                Err(e) => {
                    self.stats.refused += 1;
                    first_bad.get_or_insert(e);
                }
            }
        }
        if n > 0 {
            self.rx.release(n);
        }
        self.stats.rx += got as u64;
        match first_bad {
            Some(e) => Err(e),
            None => Ok(got),
        }
    }

    /// The frame an RX descriptor names, taken back from the kernel after checking it.
    fn take_rx(&mut self, addr: u64, len: u32) -> Result<RxFrame, XdpError> {
        let bad = |why| XdpError::BadDescriptor {
            ring: RingKind::Rx,
            addr,
            len,
            why,
        };
        let size = u64::from(self.frame_size);
        let index = addr / size;
        let offset = (addr % size) as u32;
        if index >= u64::from(self.frames) {
            return Err(bad("outside the UMEM"));
        }
        if u64::from(offset) + u64::from(len) > size {
            return Err(bad("past the end of its frame"));
        }
        if !self.in_fill.take(index as u32) {
            return Err(bad("a frame not lent to the kernel for receiving"));
        }
        let layout = self.pool.layout();
        let buf = self
            .pool
            .reclaim(BufHandle {
                offset: layout.base + index * size,
                len: 0,
                region: layout.region,
            })
            .map_err(|_| bad("a frame the pool does not have lent"))?;
        Ok(RxFrame { buf, offset, len })
    }

    /// Frames received and not taken yet (no system call).
    pub fn rx_ready(&mut self) -> Result<usize, XdpError> {
        Ok(self.rx.ready()? as usize)
    }

    /// Waits up to `timeout` for received frames as the socket's notify mode says
    /// ([`XskConfig::notify`](crate::XskConfig::notify)): looking at the RX ring only (spin;
    /// no system call, however long), looking for up to
    /// [`ADAPTIVE_MAX_SPIN`](subring_planes::interrupt::ADAPTIVE_MAX_SPIN) and then sleeping
    /// in `poll` (adaptive), or sleeping in `poll` at once (eventfd). Whether there are.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, XdpError> {
        match self.notify {
            NotifyMode::Spin => self.spin_rx(timeout),
            NotifyMode::Adaptive => self.wait_rx_spin(ADAPTIVE_MAX_SPIN.min(timeout), timeout),
            // Futex is refused at bind.
            NotifyMode::EventFd | NotifyMode::Futex => self.wait_rx(timeout),
        }
    }

    /// The notify mode [`wait`](Self::wait) follows.
    pub fn notify_mode(&self) -> NotifyMode {
        self.notify
    }

    /// Looks at the RX ring until it has frames or `timeout` passes; whether it has.
    fn spin_rx(&mut self, timeout: Duration) -> Result<bool, XdpError> {
        let start = std::time::Instant::now();
        loop {
            if self.rx.ready()? > 0 {
                return Ok(true);
            }
            if start.elapsed() >= timeout {
                return Ok(false);
            }
            spin_a_while();
        }
    }

    /// Waits up to `timeout` for received frames: first looking at the RX ring for up to
    /// `spin` (no system call: a busy receiver never sleeps), then `poll` on the socket;
    /// whether there are.
    pub fn wait_rx_spin(&mut self, spin: Duration, timeout: Duration) -> Result<bool, XdpError> {
        let start = std::time::Instant::now();
        loop {
            if self.rx.ready()? > 0 {
                return Ok(true);
            }
            if start.elapsed() >= spin {
                break;
            }
            spin_a_while();
        }
        self.wait_rx(timeout.saturating_sub(start.elapsed()))
    }

    /// Waits up to `timeout` for received frames (`poll` on the socket); whether there are.
    /// A signal does not cut the wait short, and a wait shorter than a millisecond (`poll`'s
    /// unit) still waits: the time left is rounded up.
    pub fn wait_rx(&mut self, timeout: Duration) -> Result<bool, XdpError> {
        // A timeout past what a deadline can hold is no limit.
        let deadline = std::time::Instant::now().checked_add(timeout);
        let mut first = true;
        loop {
            if self.rx.ready()? > 0 {
                return Ok(true);
            }
            let ms = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    // At least one `poll`, even with no time left: with need-wakeup it is
                    // also the fill ring's doorbell.
                    if left.is_zero() && !first {
                        return Ok(false);
                    }
                    i32::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX)
                }
            };
            first = false;
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            self.stats.rx_polls += 1;
            // SAFETY: one valid `pollfd`.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(XdpError::Os {
                    what: "poll on the XSK socket",
                    source: e,
                });
            }
            if rc > 0 {
                return Ok(self.rx.ready()? > 0);
            }
            // Timed out: the deadline has passed, unless `poll`'s longest wait was shorter
            // than what was left (about 24 days); the top of the loop says which.
        }
    }

    /// Overwrites the RX ring's producer index, as a hostile (or broken) kernel could. Only for
    /// tests.
    ///
    /// # Safety
    /// The ring is broken for the kernel too afterwards: drop the socket.
    #[doc(hidden)]
    pub unsafe fn forge_rx_producer_for_tests(&self, value: u32) {
        // SAFETY: the caller accepts that the ring is broken.
        unsafe { self.rx.mapped().forge_producer(value) };
    }

    /// Frames lent to the kernel for receiving (in the fill ring, or received and not read).
    pub fn lent_for_rx(&self) -> usize {
        self.in_fill.0.iter().map(|w| w.count_ones() as usize).sum()
    }
}

/// Between two looks at the RX producer index: each look pulls its cache line away from the
/// kernel, whose next store then misses.
#[inline(always)]
fn spin_a_while() {
    for _ in 0..64 {
        std::hint::spin_loop();
    }
}
