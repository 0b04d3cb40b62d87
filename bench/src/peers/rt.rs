//! Round trips: pipe, Unix socket, eventfd (blocking and under epoll), futex, and the raw
//! shared-memory spin floor.

// The words below live in `MAP_SHARED` memory shared by two processes, which the loom shim
// (`subring_planes::sync`) cannot model: use the std atomics directly.
#![allow(clippy::disallowed_types)]

use super::*;

/// Round trips of an 8-byte counter that the child echoes; each side's ends are `(rx, tx)`.
pub(super) fn echo_rt(
    what: &str,
    n: usize,
    placement: Placement,
    (parent_rx, parent_tx): Ends,
    (child_rx, child_tx): Ends,
) -> Result<Latency, String> {
    let close = [parent_rx.as_raw_fd(), parent_tx.as_raw_fd()];
    let echo = move || {
        let mut buf = [0u8; 8];
        // EOF or an error ends the child: the parent is done (or gone).
        while (&child_rx).read_exact(&mut buf).is_ok() {
            if (&child_tx).write_all(&buf).is_err() {
                return EXIT_IO;
            }
        }
        0
    };
    run(what, placement, &close, echo, || {
        let mut seq = 0u64;
        let latency = sample(n, RT_BUDGET, || {
            seq += 1;
            (&parent_tx)
                .write_all(&seq.to_ne_bytes())
                .map_err(io_err("write"))?;
            let mut back = [0u8; 8];
            recv(&parent_rx, &mut back)?;
            match u64::from_ne_bytes(back) {
                echoed if echoed == seq => Ok(()),
                echoed => Err(format!("sent {seq}, child echoed {echoed}")),
            }
        });
        drop((parent_rx, parent_tx)); // the child reads EOF and exits
        latency
    })
}

/// Round trips of an 8-byte message over two pipes (parent → child, child → parent).
pub fn pipe_rt(n: usize, placement: Placement) -> Result<Latency, String> {
    let (down_rx, down_tx) = pipe().map_err(|e| format!("pipe_rt: {e}"))?;
    let (up_rx, up_tx) = pipe().map_err(|e| format!("pipe_rt: {e}"))?;
    echo_rt("pipe_rt", n, placement, (up_rx, down_tx), (down_rx, up_tx))
}

/// Round trips of an 8-byte message over an `AF_UNIX` `SOCK_STREAM` socketpair.
pub fn unix_socket_rt(n: usize, placement: Placement) -> Result<Latency, String> {
    let (parent, child) = socket_ends().map_err(|e| format!("unix_socket_rt: {e}"))?;
    echo_rt("unix_socket_rt", n, placement, parent, child)
}

/// Round trips over two eventfds: the parent writes 1 to one; the child reads it and writes 1
/// to the other, which the parent reads.
pub fn eventfd_rt(n: usize, placement: Placement) -> Result<Latency, String> {
    let err = |e: String| format!("eventfd_rt: {e}");
    let (down, up) = (eventfd().map_err(err)?, eventfd().map_err(err)?);
    let child = || {
        let mut buf = [0u8; 8];
        loop {
            if (&down).read_exact(&mut buf).is_err() {
                return EXIT_IO;
            } else if u64::from_ne_bytes(buf) != 1 {
                return 0; // the parent's stop value
            } else if (&up).write_all(&1u64.to_ne_bytes()).is_err() {
                return EXIT_IO;
            }
        }
    };
    run("eventfd_rt", placement, &[], child, || {
        let latency = sample(n, RT_BUDGET, || {
            (&down)
                .write_all(&1u64.to_ne_bytes())
                .map_err(io_err("write"))?;
            let mut buf = [0u8; 8];
            recv(&up, &mut buf)?;
            match u64::from_ne_bytes(buf) {
                1 => Ok(()),
                got => Err(format!("eventfd counter {got}, expected 1")),
            }
        })?;
        // An eventfd has no EOF: tell the child to stop.
        (&down)
            .write_all(&2u64.to_ne_bytes())
            .map_err(io_err("write"))?;
        Ok(latency)
    })
}

/// An edge-triggered `epoll` set holding one non-blocking eventfd: waiting never reads the
/// counter (each write is an edge), as subring's eventfd signal waits.
pub(super) struct EdgeWait(File);

impl EdgeWait {
    pub(super) fn new(efd: &File) -> Result<Self, String> {
        // SAFETY: epoll_create1 takes a flag and touches no memory.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(os_err("epoll_create1"));
        }
        // SAFETY: `ep` is a fresh descriptor that nothing else owns.
        let ep = unsafe { File::from_raw_fd(ep) };
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: both descriptors are open; `ev` is a valid event the kernel copies.
        if unsafe {
            libc::epoll_ctl(
                ep.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                efd.as_raw_fd(),
                &mut ev,
            )
        } != 0
        {
            return Err(os_err("epoll_ctl"));
        }
        Ok(EdgeWait(ep))
    }

    /// Waits, with no timeout, for the next write.
    pub(super) fn wait(&self) -> Result<(), String> {
        let mut ev = [libc::epoll_event { events: 0, u64: 0 }];
        // SAFETY: `ev` has room for the one event we ask for.
        match unsafe { libc::epoll_wait(self.0.as_raw_fd(), ev.as_mut_ptr(), 1, -1) } {
            1 => Ok(()),
            // The parent's time limit (a child has no handler: SIGALRM kills it).
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {
                Err("interrupted by the time limit".into())
            }
            _ => Err(os_err("epoll_wait")),
        }
    }
}

/// [`eventfd_rt`] with both sides waiting the way subring's eventfd mode does: in an
/// edge-triggered `epoll` on a non-blocking eventfd, without a timeout, never reading the
/// counter (subring waits in epoll because its sides also watch sockets and other rings: a
/// client notices a dead server through its control socket's hang-up, registered in the same
/// epoll set, which costs nothing per wait). Against [`eventfd_rt`] this is the price of that
/// way of waiting; subring's eventfd mode against this is the price of its shared-memory rings.
pub fn eventfd_epoll_rt(n: usize, placement: Placement) -> Result<Latency, String> {
    let err = |e: String| format!("eventfd_epoll_rt: {e}");
    let (down, up) = (
        eventfd_with(libc::EFD_NONBLOCK).map_err(err)?,
        eventfd_with(libc::EFD_NONBLOCK).map_err(err)?,
    );
    let shm = Shm::new(4096).map_err(err)?;
    let stop = shm.word(0);
    let child = || {
        let Ok(waiter) = EdgeWait::new(&down) else {
            return EXIT_IO;
        };
        loop {
            if waiter.wait().is_err() {
                return EXIT_IO;
            } else if stop.load(Ordering::Acquire) != 0 {
                return 0;
            } else if (&up).write_all(&1u64.to_ne_bytes()).is_err() {
                return EXIT_IO;
            }
        }
    };
    run("eventfd_epoll_rt", placement, &[], child, || {
        let waiter = EdgeWait::new(&up)?;
        let latency = sample(n, RT_BUDGET, || {
            (&down)
                .write_all(&1u64.to_ne_bytes())
                .map_err(io_err("write"))?;
            waiter.wait()
        })?;
        stop.store(1, Ordering::Release);
        (&down)
            .write_all(&1u64.to_ne_bytes())
            .map_err(io_err("write"))?;
        Ok(latency)
    })
}

/// Round trips through two futex words in shared memory, always waking: the parent stores a
/// counter in one word and wakes it; the child, asleep on it, stores the counter in the other
/// word and wakes that, on which the parent sleeps. The raw form of subring's futex mode (which
/// wakes only a side that announced sleep, and carries entries in rings).
pub fn futex_rt(n: usize, placement: Placement) -> Result<Latency, String> {
    const FUTEX_QUIT: u32 = u32::MAX;
    let shm = Shm::new(4096).map_err(|e| format!("futex_rt: {e}"))?;
    let (ping, pong) = (shm.word32(0), shm.word32(LINE));
    let child = || {
        let mut last = 0;
        loop {
            let v = ping.load(Ordering::Acquire);
            if v == last {
                if futex_wait(ping, last).is_err() {
                    return EXIT_IO;
                }
                continue;
            }
            if v == FUTEX_QUIT {
                return 0;
            }
            last = v;
            pong.store(v, Ordering::Release);
            if futex_wake(pong).is_err() {
                return EXIT_IO;
            }
        }
    };
    run("futex_rt", placement, &[], child, || {
        let mut seq = 0u32;
        let latency = sample(n, RT_BUDGET, || {
            seq += 1;
            ping.store(seq, Ordering::Release);
            futex_wake(ping)?;
            loop {
                let v = pong.load(Ordering::Acquire);
                if v == seq {
                    return Ok(());
                }
                futex_wait(pong, v)?;
            }
        });
        ping.store(FUTEX_QUIT, Ordering::Release);
        futex_wake(ping)?;
        latency
    })
}

/// Round trips through shared memory alone: the parent publishes a counter in one word (`swap`,
/// SeqCst); the child spins on it (Acquire loads) and publishes it back in another word two
/// cache lines away, on which the parent spins. The floor of any shared-memory transport.
///
/// In [`Placement::Shared`] each spin lasts until the scheduler preempts the spinner, so this
/// stops after about 3 s with however many samples it has (at least one).
pub fn spin_floor_rt(n: usize, placement: Placement) -> Result<Latency, String> {
    let shm = Shm::new(4096).map_err(|e| format!("spin_floor_rt: {e}"))?;
    let (ping, pong) = (shm.word(0), shm.word(LINE));
    let child = || {
        let mut last = 0;
        loop {
            match spin_until(ping, CHILD_WAIT, |v| v != last) {
                Ok(QUIT) => return 0,
                Ok(v) => last = v,
                Err(_) => return EXIT_IO,
            }
            pong.swap(last, Ordering::SeqCst);
        }
    };
    run("spin_floor_rt", placement, &[], child, || {
        let mut seq = 0u64;
        let latency = sample(n, SPIN_BUDGET, || {
            seq += 1;
            ping.swap(seq, Ordering::SeqCst);
            spin_until(pong, WAIT, |v| v == seq).map(drop)
        });
        ping.swap(QUIT, Ordering::SeqCst);
        latency
    })
}
