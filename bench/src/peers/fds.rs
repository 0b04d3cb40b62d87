//! The descriptors and shared memory the peers talk over: pipes, eventfds, socketpairs,
//! `MAP_SHARED` words with futex waits.

// The words below live in `MAP_SHARED` memory shared by two processes, which the loom shim
// (`subring_planes::sync`) cannot model: use the std atomics directly.
#![allow(clippy::disallowed_types)]

use super::*;

/// A pipe, as `(read end, write end)`.
pub(super) fn pipe() -> Result<(File, File), String> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_err("pipe2"));
    }
    // SAFETY: pipe2 succeeded, so both are fresh descriptors that nothing else owns.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

pub(super) fn eventfd() -> Result<File, String> {
    eventfd_with(0)
}

pub(super) fn eventfd_with(flags: libc::c_int) -> Result<File, String> {
    // SAFETY: eventfd takes plain integers and touches no memory.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | flags) };
    if fd < 0 {
        return Err(os_err("eventfd"));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// One side's ends of a channel: `(rx, tx)`.
pub(super) type Ends = (File, File);

/// A connected `AF_UNIX` `SOCK_STREAM` pair, each side as [`Ends`] (two descriptors).
pub(super) fn socket_ends() -> Result<(Ends, Ends), String> {
    let split = |s: UnixStream| -> io::Result<Ends> {
        let rx = File::from(OwnedFd::from(s));
        Ok((rx.try_clone()?, rx))
    };
    let (a, b) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    Ok((
        split(a).map_err(|e| format!("dup: {e}"))?,
        split(b).map_err(|e| format!("dup: {e}"))?,
    ))
}

/// Reads all of `buf` from `rx`, blocking as a plain `read` loop does: the peers wait the way a
/// user of a pipe, socket or eventfd would, with no `poll` and no timer in the way. The wait is
/// still bounded: [`run`] arms a [`ParentAlarm`], whose signal makes a read still blocked when
/// it fires fail with `EINTR`, reported here.
pub(super) fn recv(rx: &File, buf: &mut [u8]) -> Result<(), String> {
    let mut got = 0;
    while got < buf.len() {
        let rest = &mut buf[got..];
        // SAFETY: `rest` is valid for writes of `rest.len()` bytes; `rx` is an open descriptor.
        let n = unsafe { libc::read(rx.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len()) };
        match n {
            0 => return Err("the child closed its end (EOF)".into()),
            n if n > 0 => got += n as usize,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {
                return Err(format!(
                    "no reply within {PARENT_LIMIT_SECS} s (interrupted by the time limit)"
                ))
            }
            _ => return Err(os_err("read")),
        }
    }
    Ok(())
}

/// An anonymous `MAP_SHARED` mapping, shared with children forked after it was made.
pub(super) struct Shm {
    pub(super) base: *mut u8,
    len: usize,
}

impl Shm {
    pub(super) fn new(len: usize) -> Result<Self, String> {
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_SHARED | libc::MAP_ANONYMOUS;
        // SAFETY: a fresh anonymous mapping: no address hint, no file, aliases nothing.
        let p = unsafe { libc::mmap(ptr::null_mut(), len, prot, flags, -1, 0) };
        if p == libc::MAP_FAILED {
            return Err(os_err(&format!(
                "mmap({len} bytes, MAP_SHARED|MAP_ANONYMOUS)"
            )));
        }
        Ok(Self {
            base: p.cast(),
            len,
        })
    }

    /// The atomic word at `offset`.
    pub(super) fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(
            offset % 8 == 0 && offset + 8 <= self.len,
            "word {offset} outside the mapping"
        );
        // SAFETY: in bounds and 8-aligned (the base is page-aligned), zeroed by mmap, mapped for
        // as long as `&self` lives, and only ever accessed atomically, by either process.
        unsafe { AtomicU64::from_ptr(self.base.add(offset).cast()) }
    }

    /// The 32-bit atomic word at `offset` (a futex).
    pub(super) fn word32(&self, offset: usize) -> &AtomicU32 {
        assert!(
            offset % 4 == 0 && offset + 4 <= self.len,
            "word {offset} outside the mapping"
        );
        // SAFETY: as for `word`, 4-aligned.
        unsafe { AtomicU32::from_ptr(self.base.add(offset).cast()) }
    }
}

/// `FUTEX_WAKE` of one waiter on `word` (shared: the word is in memory both processes map).
pub(super) fn futex_wake(word: &AtomicU32) -> Result<(), String> {
    // SAFETY: FUTEX_WAKE only uses the address to find waiters; the word is live and aligned.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            1,
            ptr::null::<libc::timespec>(),
            ptr::null::<u32>(),
            0,
        )
    };
    if r < 0 {
        return Err(os_err("futex(FUTEX_WAKE)"));
    }
    Ok(())
}

/// `FUTEX_WAIT` on `word` while it holds `seen`, with no timeout. EAGAIN (it changed) is a
/// success; EINTR (the parent's time limit) is an error.
pub(super) fn futex_wait(word: &AtomicU32, seen: u32) -> Result<(), String> {
    // SAFETY: FUTEX_WAIT reads the live, aligned word and compares it with `seen` atomically
    // with going to sleep; no timeout pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            seen,
            ptr::null::<libc::timespec>(),
            ptr::null::<u32>(),
            0,
        )
    };
    if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN) {
        return Err(os_err("futex(FUTEX_WAIT)"));
    }
    Ok(())
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: `base..base + len` is our own mapping, and no borrow of it outlives `self`.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Spins (Acquire loads) until `done(value)`; returns that value. Fails after `wait` without.
pub(super) fn spin_until(
    word: &AtomicU64,
    wait: Duration,
    done: impl Fn(u64) -> bool,
) -> Result<u64, String> {
    /// Spins between clock reads, so that reading the clock does not slow the fast path.
    const CHECK_EVERY: u32 = 1024;
    let (mut deadline, mut spins) = (None, 0u32);
    loop {
        let value = word.load(Ordering::Acquire);
        if done(value) {
            return Ok(value);
        }
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins % CHECK_EVERY == 0 {
            let now = Instant::now();
            match deadline {
                None => deadline = Some(now + wait),
                Some(d) if now >= d => return Err(format!("no progress within {wait:?}")),
                Some(_) => {}
            }
        }
    }
}
