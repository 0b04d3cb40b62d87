//! Building a ring: sizes, setup flags, wait mode.

use super::*;

/// Builds a [`Uring`].
#[derive(Debug, Clone)]
pub struct UringBuilder {
    entries: u32,
    cq_entries: Option<u32>,
    sqpoll_idle: Option<u32>,
    coop_taskrun: bool,
    single_issuer: bool,
    defer_taskrun: bool,
    wait: WaitMode,
    on_full: OnFull,
    disabled: Vec<u8>,
    sparse_buffers: bool,
}

impl Default for UringBuilder {
    fn default() -> Self {
        UringBuilder {
            entries: 256,
            cq_entries: None,
            sqpoll_idle: None,
            coop_taskrun: false,
            single_issuer: false,
            defer_taskrun: false,
            wait: WaitMode::Enter,
            on_full: OnFull::Reject,
            disabled: Vec::new(),
            sparse_buffers: true,
        }
    }
}

impl UringBuilder {
    /// Submission queue entries (rounded up to a power of two by the kernel).
    pub fn entries(mut self, n: u32) -> Self {
        self.entries = n;
        self
    }

    /// Completion queue entries (default: twice the submission entries).
    pub fn cq_entries(mut self, n: u32) -> Self {
        self.cq_entries = Some(n);
        self
    }

    /// A kernel thread polls the submission queue (`IORING_SETUP_SQPOLL`); it sleeps after
    /// `idle_ms` without work, and only then does a submit need `io_uring_enter`.
    pub fn sqpoll(mut self, idle_ms: u32) -> Self {
        self.sqpoll_idle = Some(idle_ms);
        self
    }

    /// `IORING_SETUP_COOP_TASKRUN`: completions are not forced in by interrupting the task.
    pub fn coop_taskrun(mut self, yes: bool) -> Self {
        self.coop_taskrun = yes;
        self
    }

    /// `IORING_SETUP_SINGLE_ISSUER`: only the creating thread submits (the ring must stay on
    /// it). A `Uring` moved to another thread and submitted from there fails with
    /// [`SubmitError::NotTheIssuer`](crate::SubmitError::NotTheIssuer) (the kernel refuses with
    /// `EEXIST`); what was pushed stays queued for the creating thread.
    pub fn single_issuer(mut self, yes: bool) -> Self {
        self.single_issuer = yes;
        self
    }

    /// `IORING_SETUP_DEFER_TASKRUN` (implies single issuer): completion work runs only when this
    /// thread enters the kernel to wait or flush. Reaping flushes it when the kernel says so.
    /// Waiting from another thread fails as submitting does
    /// ([`SubmitError::NotTheIssuer`](crate::SubmitError::NotTheIssuer)).
    pub fn defer_taskrun(mut self, yes: bool) -> Self {
        self.defer_taskrun = yes;
        self
    }

    /// How waits wait (default [`WaitMode::Enter`]).
    pub fn wait_mode(mut self, mode: WaitMode) -> Self {
        self.wait = mode;
        self
    }

    /// What a push into a full submission queue does (default [`OnFull::Reject`]).
    pub fn on_full(mut self, on_full: OnFull) -> Self {
        self.on_full = on_full;
        self
    }

    /// Treats these opcodes as unsupported, as if the kernel lacked them (to forbid them, or to
    /// exercise a fallback).
    pub fn disable_opcodes(mut self, opcodes: &[u8]) -> Self {
        self.disabled.extend_from_slice(opcodes);
        self
    }

    /// Whether fixed buffers live in a sparse table updated region by region (the default;
    /// Linux 5.19, and a kernel without it falls back by itself), or in one table registered
    /// again as a whole on every [`Uring::register_region`] and [`Uring::unregister_region`]
    /// (which then need no fixed operation in flight on any region).
    pub fn sparse_buffers(mut self, yes: bool) -> Self {
        self.sparse_buffers = yes;
        self
    }

    /// Sets the ring up. Setup flags the kernel rejects come back as an error naming them.
    pub fn build(self) -> io::Result<Uring> {
        let mut b = IoUring::builder();
        let mut flags = Vec::new();
        if let Some(cq) = self.cq_entries {
            b.setup_cqsize(cq);
        }
        if let Some(idle) = self.sqpoll_idle {
            b.setup_sqpoll(idle);
            flags.push("SQPOLL");
        }
        if self.coop_taskrun {
            b.setup_coop_taskrun();
            flags.push("COOP_TASKRUN");
        }
        if self.single_issuer || self.defer_taskrun {
            b.setup_single_issuer();
            flags.push("SINGLE_ISSUER");
        }
        if self.defer_taskrun {
            b.setup_defer_taskrun();
            b.setup_taskrun_flag();
            flags.push("DEFER_TASKRUN");
        }
        let ring = b.build(self.entries).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "io_uring setup with {} entries{}{} failed: {e}",
                    self.entries,
                    if flags.is_empty() { "" } else { " and " },
                    flags.join("|")
                ),
            )
        })?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        let eventfd = match self.wait {
            WaitMode::EventFd => {
                let efd = EventFdSignal::new()?;
                ring.submitter().register_eventfd(efd.as_fd().as_raw_fd())?;
                Some(efd)
            }
            _ => None,
        };
        // One bit per opcode, looked up on every push.
        let mut supported = [0u64; 4];
        for op in 0..=u8::MAX {
            if probe.is_supported(op) && !self.disabled.contains(&op) {
                supported[usize::from(op / 64)] |= 1 << (op % 64);
            }
        }
        Ok(Uring {
            ring,
            supported,
            book: Book::default(),
            rung_at: 0,
            fixed: register::FixedTable::new(self.sparse_buffers),
            files: 0,
            eventfd,
            wait: self.wait,
            on_full: self.on_full,
            stats: UringStats::default(),
            notify: NotifyStats::default(),
            defer_taskrun: self.defer_taskrun,
        })
    }
}
