//! An AF_XDP socket: its UMEM, its four rings, and the frames moving between them. This file
//! sets it up; `frames.rs` has the frames, `rx.rs` the fill and RX rings, `tx.rs` the TX and
//! completion rings.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use subring_planes::data::{Buf, BufferPool, Region, RegionOptions};
use subring_planes::interrupt::NotifyMode;

use crate::ring::{Consumer, Mapped, Producer, RingKind};
use crate::XdpError;

mod frames;
mod rx;
mod tx;

pub use frames::{RxFrame, TxFrame};

/// How the socket asks the driver to move frames. Zero-copy needs the program in the driver
/// ([`AttachMode::Driver`](crate::AttachMode::Driver)); the defaults (copy, generic) work on
/// every interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BindMode {
    /// Copy mode (`XDP_COPY`): works on every interface (veth, generic XDP).
    #[default]
    Copy,
    /// Zero-copy (`XDP_ZEROCOPY`): the driver DMAs into the UMEM; fails where the driver has
    /// no support.
    ZeroCopy,
    /// Zero-copy if the driver grants it, copy otherwise ([`XskSocket::zero_copy`] says
    /// which).
    Any,
}

/// How to build an [`XskSocket`].
#[derive(Debug, Clone)]
pub struct XskConfig {
    /// Bytes per frame: 2048 or 4096 (a power of two, at most a page).
    pub frame_size: u32,
    /// Frames in the UMEM.
    pub frames: u32,
    /// Entries in each of the four rings (a power of two).
    pub ring_size: u32,
    /// Bind with `XDP_USE_NEED_WAKEUP`: the doorbells are skipped while the kernel does not ask.
    pub need_wakeup: bool,
    /// Copy, zero-copy, or whichever the driver grants.
    pub mode: BindMode,
    /// The UMEM's memory (from offset 0); a memfd of its own if `None`.
    pub region: Option<Arc<Region>>,
    /// How [`XskSocket::wait`] waits for received frames: [`NotifyMode::Spin`] looks at the
    /// RX ring and never sleeps, [`NotifyMode::Adaptive`] looks for a while
    /// ([`ADAPTIVE_MAX_SPIN`](subring_planes::interrupt::ADAPTIVE_MAX_SPIN)) and then sleeps
    /// in `poll`, [`NotifyMode::EventFd`] sleeps in `poll` on the socket's descriptor at once
    /// (the descriptor an event loop watches, [`XskSocket::fd`]). [`NotifyMode::Futex`] does
    /// not fit: the kernel wakes an XSK socket only through its descriptor; `bind` refuses it.
    pub notify: NotifyMode,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            frame_size: 2048,
            frames: 4096,
            ring_size: 2048,
            need_wakeup: true,
            mode: BindMode::Copy,
            region: None,
            notify: NotifyMode::Adaptive,
        }
    }
}

/// Counters of one socket, for system calls per packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskStats {
    /// Frames received.
    pub rx: u64,
    /// Frames queued for sending.
    pub tx: u64,
    /// Frames whose sending completed.
    pub tx_completed: u64,
    /// Fill-ring doorbells rung (`recvfrom`) and skipped (the kernel did not ask).
    pub fill_wakeups: u64,
    /// Fill-ring doorbells skipped.
    pub fill_wakeups_skipped: u64,
    /// TX doorbells rung (`sendto`).
    pub tx_kicks: u64,
    /// TX doorbells skipped.
    pub tx_kicks_skipped: u64,
    /// Descriptors refused (see [`XdpError::BadDescriptor`]).
    pub refused: u64,
    /// `poll` calls made waiting for received frames ([`XskSocket::wait_rx`]).
    pub rx_polls: u64,
}

/// One bit per frame.
#[derive(Debug)]
struct FrameSet(Vec<u64>);

impl FrameSet {
    fn new(frames: u32) -> Self {
        FrameSet(vec![0; frames.div_ceil(64) as usize])
    }
    fn set(&mut self, i: u32) {
        self.0[(i / 64) as usize] |= 1 << (i % 64);
    }
    /// Clears bit `i`; whether it was set (false for an `i` out of range).
    fn take(&mut self, i: u32) -> bool {
        let Some(w) = self.0.get_mut((i / 64) as usize) else {
            return false;
        };
        let was = *w & (1 << (i % 64)) != 0;
        *w &= !(1 << (i % 64));
        was
    }
}

/// An AF_XDP socket bound to one queue of one interface, with its own UMEM.
#[derive(Debug)]
pub struct XskSocket {
    // Dropped in this order: the rings' mappings, the socket (the kernel lets the UMEM go when
    // the last of them is gone), then the UMEM's frames and memory.
    fill: Producer,
    comp: Consumer,
    rx: Consumer,
    tx: Producer,
    fd: OwnedFd,
    pool: Arc<BufferPool>,
    region: Arc<Region>,
    frame_size: u32,
    frames: u32,
    ring_size: u32,
    /// Frames lent to the kernel for receiving (fill ring, or received and not yet read).
    in_fill: FrameSet,
    /// Frames lent to the kernel for sending.
    in_tx: FrameSet,
    need_wakeup: bool,
    zero_copy: bool,
    notify: NotifyMode,
    stats: XskStats,
}

fn os(what: &'static str) -> XdpError {
    XdpError::Os {
        what,
        source: std::io::Error::last_os_error(),
    }
}

fn setsockopt<T>(
    fd: BorrowedFd<'_>,
    opt: libc::c_int,
    value: &T,
    what: &'static str,
) -> Result<(), XdpError> {
    // SAFETY: `value` is valid for reads of its size, which is what the option takes.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(os(what));
    }
    Ok(())
}

impl XskSocket {
    /// Creates a socket with a UMEM as `cfg` says and binds it to queue `queue` of interface
    /// `ifindex`. Frames reach it once an [`XdpProgram`](crate::XdpProgram) on the interface
    /// registers it for the queue. Nothing is posted to the fill ring yet ([`XskSocket::fill`]).
    pub fn bind(ifindex: u32, queue: u32, cfg: XskConfig) -> Result<Self, XdpError> {
        let page = 4096;
        if !cfg.frame_size.is_power_of_two() || !(2048..=page).contains(&cfg.frame_size) {
            return Err(XdpError::Config(format!(
                "frame size {} must be 2048 or 4096",
                cfg.frame_size
            )));
        }
        if !cfg.ring_size.is_power_of_two() || cfg.ring_size < 2 {
            return Err(XdpError::Config(format!(
                "ring size {} must be a power of two",
                cfg.ring_size
            )));
        }
        if cfg.frames == 0 {
            return Err(XdpError::Config("a UMEM needs at least one frame".into()));
        }
        if cfg.notify == NotifyMode::Futex {
            return Err(XdpError::Config(
                "notify mode futex does not fit an AF_XDP socket: the kernel wakes it only \
                 through its descriptor (eventfd mode sleeps in poll on it)"
                    .into(),
            ));
        }
        let umem_len = u64::from(cfg.frame_size) * u64::from(cfg.frames);
        let region = match cfg.region {
            Some(r) => r,
            None => Arc::new(
                Region::memfd("subring-xdp-umem", umem_len as usize, RegionOptions::new())
                    .map_err(|e| XdpError::Config(format!("UMEM memory: {e}")))?,
            ),
        };
        let pool = BufferPool::new(
            region.clone(),
            0,
            cfg.frame_size as usize,
            cfg.frames as usize,
        )
        .map_err(|e| XdpError::Config(format!("UMEM frames: {e}")))?;
        // SAFETY: plain socket(2); the result is checked and owned below.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(os("socket(AF_XDP)"));
        }
        // SAFETY: a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let reg = libc::xdp_umem_reg {
            addr: region.as_ptr() as u64,
            len: umem_len,
            chunk_size: cfg.frame_size,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        // The kernel pins the UMEM's pages and reaches them through its own mapping; `region`
        // (held here and by the pool, and dropped after the socket) keeps ours mapped too.
        setsockopt(
            fd.as_fd(),
            libc::XDP_UMEM_REG,
            &reg,
            "setsockopt(XDP_UMEM_REG)",
        )?;
        let mut sock = Self::rings_and_bind(
            fd,
            pool,
            region,
            (cfg.frame_size, cfg.frames, cfg.ring_size),
            cfg.need_wakeup,
            cfg.mode,
            (ifindex, queue),
            None,
        )?;
        sock.notify = cfg.notify;
        Ok(sock)
    }

    /// Creates a second socket over this one's UMEM (`XDP_SHARED_UMEM`), bound to queue
    /// `queue` of interface `ifindex` (another interface, or another queue), with rings of its
    /// own: a frame received on one can be sent on the other as it lies, netmap's buffer swap
    /// ([`RxFrame::into_tx`]). Copy or zero-copy, need-wakeup and the notify mode are this
    /// socket's. The frames
    /// either socket has lent to the kernel when it is dropped stay lent for good (the kernel
    /// may release them later), lost to the shared pool while the other socket lives.
    pub fn bind_shared(&self, ifindex: u32, queue: u32) -> Result<XskSocket, XdpError> {
        // SAFETY: plain socket(2); the result is checked and owned below.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(os("socket(AF_XDP)"));
        }
        // SAFETY: a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut sock = Self::rings_and_bind(
            fd,
            self.pool.clone(),
            self.region.clone(),
            (self.frame_size, self.frames, self.ring_size),
            self.need_wakeup,
            BindMode::Copy,
            (ifindex, queue),
            Some(self.fd.as_fd()),
        )?;
        sock.notify = self.notify;
        Ok(sock)
    }

    /// Sizes and maps the four rings of `fd` and binds it (sharing `shared`'s UMEM if given).
    #[allow(clippy::too_many_arguments)]
    fn rings_and_bind(
        fd: OwnedFd,
        pool: Arc<BufferPool>,
        region: Arc<Region>,
        (frame_size, frames, ring_size): (u32, u32, u32),
        need_wakeup: bool,
        mode: BindMode,
        (ifindex, queue): (u32, u32),
        shared: Option<BorrowedFd<'_>>,
    ) -> Result<Self, XdpError> {
        for (opt, what) in [
            (libc::XDP_UMEM_FILL_RING, "setsockopt(XDP_UMEM_FILL_RING)"),
            (
                libc::XDP_UMEM_COMPLETION_RING,
                "setsockopt(XDP_UMEM_COMPLETION_RING)",
            ),
            (libc::XDP_RX_RING, "setsockopt(XDP_RX_RING)"),
            (libc::XDP_TX_RING, "setsockopt(XDP_TX_RING)"),
        ] {
            setsockopt(fd.as_fd(), opt, &ring_size, what)?;
        }
        // SAFETY: all zeroes is a valid `xdp_mmap_offsets`.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: `off` is writable for `len` bytes; the kernel writes at most that.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut off as *mut libc::xdp_mmap_offsets).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(os("getsockopt(XDP_MMAP_OFFSETS)"));
        }
        if len as usize != std::mem::size_of::<libc::xdp_mmap_offsets>() {
            return Err(XdpError::Config(
                "the kernel's ring offsets have no flags word (Linux before 5.4)".into(),
            ));
        }
        let n = ring_size;
        let fill = Mapped::map(
            fd.as_fd(),
            RingKind::Fill,
            &off.fr,
            n,
            8,
            libc::XDP_UMEM_PGOFF_FILL_RING,
        )?;
        let comp = Mapped::map(
            fd.as_fd(),
            RingKind::Completion,
            &off.cr,
            n,
            8,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
        )?;
        let rx = Mapped::map(
            fd.as_fd(),
            RingKind::Rx,
            &off.rx,
            n,
            16,
            libc::XDP_PGOFF_RX_RING as u64,
        )?;
        let tx = Mapped::map(
            fd.as_fd(),
            RingKind::Tx,
            &off.tx,
            n,
            16,
            libc::XDP_PGOFF_TX_RING as u64,
        )?;
        let wake = if need_wakeup {
            libc::XDP_USE_NEED_WAKEUP
        } else {
            0
        };
        let attempts: &[u16] = match (shared, mode) {
            // A socket sharing a UMEM takes its mode from the UMEM's first socket; the kernel
            // refuses mode flags beside XDP_SHARED_UMEM.
            (Some(_), _) => &[libc::XDP_SHARED_UMEM],
            (None, BindMode::Copy) => &[libc::XDP_COPY],
            (None, BindMode::ZeroCopy) => &[libc::XDP_ZEROCOPY],
            (None, BindMode::Any) => &[libc::XDP_ZEROCOPY, libc::XDP_COPY],
        };
        let wake = if shared.is_some() { 0 } else { wake };
        let mut bound = Err(os("bind(AF_XDP)"));
        for &mode in attempts {
            let sa = libc::sockaddr_xdp {
                sxdp_family: libc::AF_XDP as u16,
                sxdp_flags: mode | wake,
                sxdp_ifindex: ifindex,
                sxdp_queue_id: queue,
                sxdp_shared_umem_fd: shared.map_or(0, |f| f.as_raw_fd() as u32),
            };
            // SAFETY: `sa` is a valid `sockaddr_xdp` of the size passed.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_xdp).cast(),
                    std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
                )
            };
            bound = if rc == 0 {
                Ok(())
            } else {
                Err(os("bind(AF_XDP)"))
            };
            if bound.is_ok() {
                break;
            }
        }
        bound?;
        let mut opts: u32 = 0;
        let mut olen = std::mem::size_of::<u32>() as libc::socklen_t;
        // SAFETY: `opts` is writable for `olen` bytes.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_OPTIONS,
                (&mut opts as *mut u32).cast(),
                &mut olen,
            )
        };
        let zero_copy = rc == 0 && opts & libc::XDP_OPTIONS_ZEROCOPY != 0;
        Ok(XskSocket {
            fd,
            pool,
            region,
            frame_size,
            frames,
            fill: Producer::new(fill),
            comp: Consumer::new(comp),
            rx: Consumer::new(rx),
            tx: Producer::new(tx),
            in_fill: FrameSet::new(frames),
            in_tx: FrameSet::new(frames),
            ring_size,
            need_wakeup,
            zero_copy,
            notify: NotifyMode::default(),
            stats: XskStats::default(),
        })
    }

    /// The socket's descriptor (to register with an [`XdpProgram`](crate::XdpProgram), or to
    /// poll).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Whether the driver granted zero-copy (`XDP_OPTIONS_ZEROCOPY`); copy mode otherwise.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// The UMEM's memory.
    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// Counters.
    pub fn stats(&self) -> XskStats {
        self.stats
    }

    /// The kernel's counters (`XDP_STATISTICS`): drops for want of fill frames, invalid
    /// descriptors, full rings.
    pub fn kernel_stats(&self) -> Result<libc::xdp_statistics, XdpError> {
        // SAFETY: all zeroes is a valid `xdp_statistics`.
        let mut st: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: `st` is writable for `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&mut st as *mut libc::xdp_statistics).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(os("getsockopt(XDP_STATISTICS)"));
        }
        Ok(st)
    }

    /// A free frame of the UMEM, to fill and send.
    pub fn alloc(&self) -> Option<Buf> {
        self.pool.alloc()
    }
}
