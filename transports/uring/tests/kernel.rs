//! The kernel transport against the real kernel: files in a temporary directory, sockets on
//! loopback, fixed buffers in a memfd region.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::opcode;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use subring_planes::data::{BufHandle, BufferPool, Region, RegionOptions};
use subring_planes::queue::{Completer, QueueError, Submitter};
use subring_uring::{
    FixedBuf, Link, OnFull, Op, OpError, Output, Submission, Target, Uring, WaitMode,
};

const LIMIT: Option<Duration> = Some(Duration::from_secs(20));

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("subring-uring-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sub(token: u64, op: Op) -> Submission {
    Submission::new(token, op)
}

/// Pushes, submits once, and reaps until every submission has completed.
fn run(ring: &mut Uring, subs: Vec<Submission>) -> Vec<subring_uring::Completion> {
    let n = subs.len();
    for s in subs {
        ring.push(s).map_err(|r| r.error).unwrap();
    }
    ring.submit().unwrap();
    let mut done = Vec::new();
    while done.len() < n {
        ring.wait(LIMIT).unwrap();
        ring.reap_into(&mut done, n).unwrap();
    }
    done.sort_by_key(|c| c.token);
    done
}

fn open(path: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap()
}

fn buf(out: &Output) -> &[u8] {
    match out {
        Output::Buf(b) => b,
        other => panic!("expected a buffer, got {other:?}"),
    }
}

#[test]
fn nop_batch_one_doorbell() {
    let mut ring = Uring::builder().entries(128).build().unwrap();
    let done = run(&mut ring, (0..100).map(|i| sub(i, Op::Nop)).collect());
    assert_eq!(
        done.iter().map(|c| c.token).collect::<Vec<_>>(),
        (0..100).collect::<Vec<_>>()
    );
    assert!(done.iter().all(|c| matches!(c.result, Ok(0))));
    let s = ring.stats();
    assert_eq!(
        s.doorbell.rung, 1,
        "100 entries, one io_uring_enter to submit"
    );
    assert_eq!(s.pushed, 100);
    assert_eq!(s.completed, 100);
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn write_then_read_back_plain_and_vectored() {
    let dir = TempDir::new("rw");
    let file = open(&dir.file("data"));
    let fd = Target::Fd(file.as_raw_fd());
    let mut ring = Uring::builder().build().unwrap();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();

    let done = run(
        &mut ring,
        vec![sub(
            1,
            Op::Write {
                fd,
                buf: data.clone(),
                offset: 0,
            },
        )],
    );
    assert_eq!(done[0].result.as_ref().unwrap(), &(data.len() as u32));
    assert_eq!(
        buf(&done[0].output),
        &data[..],
        "the write hands its buffer back"
    );

    let done = run(
        &mut ring,
        vec![sub(
            2,
            Op::Read {
                fd,
                buf: vec![0; 20_000],
                offset: 0,
            },
        )],
    );
    assert_eq!(*done[0].result.as_ref().unwrap(), 10_000);
    assert_eq!(
        buf(&done[0].output),
        &data[..],
        "read truncated to what was read"
    );

    let parts = vec![b"abc".to_vec(), b"defgh".to_vec(), b"ij".to_vec()];
    let done = run(
        &mut ring,
        vec![sub(
            3,
            Op::Writev {
                fd,
                bufs: parts,
                offset: 20_000,
            },
        )],
    );
    assert_eq!(*done[0].result.as_ref().unwrap(), 10);
    let done = run(
        &mut ring,
        vec![sub(
            4,
            Op::Readv {
                fd,
                bufs: vec![vec![0; 4], vec![0; 4], vec![0; 4]],
                offset: 20_000,
            },
        )],
    );
    match &done[0].output {
        Output::Bufs(b) => assert_eq!(b, &[b"abcd".to_vec(), b"efgh".to_vec(), b"ij".to_vec()]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn fixed_buffers_in_a_memfd_region() {
    let dir = TempDir::new("fixed");
    let file = open(&dir.file("data"));
    let fd = Target::Fd(file.as_raw_fd());
    let region = Arc::new(Region::memfd("fixed", 1 << 20, RegionOptions::new().id(5)).unwrap());
    let pool = BufferPool::new(region.clone(), 0, 4096, 64).unwrap();
    let mut ring = Uring::builder().build().unwrap();
    ring.register_region(region.clone()).unwrap();

    // Write from a pool buffer.
    let mut out = pool.alloc().unwrap();
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    out.fill_from(&data);
    let done = run(
        &mut ring,
        vec![sub(
            1,
            Op::WriteFixed {
                fd,
                buf: FixedBuf::Buf(out),
                offset: 0,
            },
        )],
    );
    assert_eq!(*done[0].result.as_ref().unwrap(), 4096);

    // Read into another pool buffer: its length becomes the bytes read.
    let into = pool.alloc().unwrap();
    let done = run(
        &mut ring,
        vec![sub(
            2,
            Op::ReadFixed {
                fd,
                buf: FixedBuf::Buf(into),
                offset: 0,
            },
        )],
    );
    match &done[0].output {
        Output::Fixed(FixedBuf::Buf(b)) => assert_eq!(&b[..], &data[..]),
        other => panic!("{other:?}"),
    }

    // Read by handle into memory that a second mapping of the memfd (another "process") sees.
    let other = Region::from_fd(
        region.fd().unwrap().try_clone_to_owned().unwrap(),
        Some(1 << 20),
        RegionOptions::new().id(5),
    )
    .unwrap();
    let handle = BufHandle {
        offset: 512 * 1024,
        len: 1000,
        region: 5,
    };
    let done = run(
        &mut ring,
        vec![sub(
            3,
            Op::ReadFixed {
                fd,
                buf: FixedBuf::Handle(handle),
                offset: 100,
            },
        )],
    );
    assert_eq!(*done[0].result.as_ref().unwrap(), 1000);
    let mut seen = vec![0u8; 1000];
    assert_eq!(other.read_into(handle, &mut seen).unwrap(), 1000);
    assert_eq!(seen, &data[100..1100]);

    // Handles outside the region, or naming an unregistered region, are refused at push.
    for bad in [
        BufHandle {
            offset: (1 << 20) - 10,
            len: 100,
            region: 5,
        },
        BufHandle {
            offset: 0,
            len: 10,
            region: 6,
        },
    ] {
        let r = ring
            .push(sub(
                4,
                Op::ReadFixed {
                    fd,
                    buf: FixedBuf::Handle(bad),
                    offset: 0,
                },
            ))
            .unwrap_err();
        assert_eq!(r.entry.token, 4, "the submission comes back");
        assert!(
            matches!(r.error, QueueError::Io(ref e) if e.kind() == std::io::ErrorKind::InvalidInput),
            "{}",
            r.error
        );
    }
    // A pool buffer from an unregistered region is refused too.
    let stray = Arc::new(Region::memfd("stray", 8192, RegionOptions::new().id(5)).unwrap());
    let stray_pool = BufferPool::new(stray, 0, 4096, 2).unwrap();
    let r = ring
        .push(sub(
            5,
            Op::WriteFixed {
                fd,
                buf: FixedBuf::Buf(stray_pool.alloc().unwrap()),
                offset: 0,
            },
        ))
        .unwrap_err();
    assert!(
        r.error
            .to_string()
            .contains("not inside the registered region"),
        "{}",
        r.error
    );
}

#[test]
fn open_write_fsync_statx_close() {
    let dir = TempDir::new("open");
    let path = CString::new(dir.file("new").to_str().unwrap()).unwrap();
    let mut ring = Uring::builder().build().unwrap();
    let done = run(
        &mut ring,
        vec![sub(
            1,
            Op::OpenAt {
                dir: None,
                path: path.clone(),
                flags: libc::O_CREAT | libc::O_RDWR,
                mode: 0o600,
            },
        )],
    );
    let fd = *done[0].result.as_ref().unwrap() as RawFd;
    let t = Target::Fd(fd);
    let done = run(
        &mut ring,
        vec![
            sub(
                2,
                Op::Write {
                    fd: t,
                    buf: vec![9; 12345],
                    offset: 0,
                },
            )
            .link(Link::Soft),
            sub(
                3,
                Op::Fsync {
                    fd: t,
                    datasync: false,
                },
            )
            .link(Link::Soft),
            sub(
                4,
                Op::Statx {
                    dir: None,
                    path,
                    flags: 0,
                    mask: libc::STATX_SIZE,
                },
            ),
        ],
    );
    assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
    match &done[2].output {
        Output::Statx(st) => assert_eq!(st.stx_size, 12345),
        other => panic!("{other:?}"),
    }
    let done = run(&mut ring, vec![sub(5, Op::Close { fd: t })]);
    assert!(done[0].result.is_ok());
    // SAFETY: checking that the fd is closed; fcntl on a closed fd only returns EBADF.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_GETFD) }, -1);
}

#[test]
fn errors_name_the_operation() {
    let mut ring = Uring::builder().build().unwrap();
    let done = run(
        &mut ring,
        vec![sub(
            77,
            Op::Read {
                fd: Target::Fd(-1),
                buf: vec![0; 8],
                offset: 0,
            },
        )],
    );
    let err = done[0].result.as_ref().unwrap_err();
    assert_eq!(
        err.kind(),
        std::io::Error::from_raw_os_error(libc::EBADF).kind()
    );
    let op = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<OpError>())
        .expect("an OpError inside");
    assert_eq!((op.op, op.token), ("read", 77));
    assert_eq!(op.source.raw_os_error(), Some(libc::EBADF));
    assert!(
        err.to_string().contains("io_uring read (token 77) failed"),
        "{err}"
    );
    // The buffer still comes back.
    assert_eq!(buf(&done[0].output).len(), 0);
}

#[test]
fn sockets_on_loopback() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // SAFETY: plain socket(2) call; the result is checked and owned below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(raw >= 0);
    // SAFETY: `raw` is a fresh socket we own.
    let client = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut ring = Uring::builder().build().unwrap();
    let done = run(
        &mut ring,
        vec![
            sub(
                1,
                Op::Accept {
                    fd: Target::Fd(listener.as_raw_fd()),
                },
            ),
            sub(
                2,
                Op::Connect {
                    fd: Target::Fd(client.as_raw_fd()),
                    addr,
                },
            ),
        ],
    );
    let accepted = *done[0].result.as_ref().unwrap() as RawFd;
    // SAFETY: the kernel returned a new descriptor for us to own.
    let accepted = unsafe { OwnedFd::from_raw_fd(accepted) };
    assert!(done[1].result.is_ok(), "{:?}", done[1].result);

    let msg = b"hello over io_uring".to_vec();
    let done = run(
        &mut ring,
        vec![
            sub(
                3,
                Op::Send {
                    fd: Target::Fd(client.as_raw_fd()),
                    buf: msg.clone(),
                    flags: 0,
                },
            ),
            sub(
                4,
                Op::Recv {
                    fd: Target::Fd(accepted.as_raw_fd()),
                    buf: vec![0; 100],
                    flags: 0,
                },
            ),
        ],
    );
    assert_eq!(*done[0].result.as_ref().unwrap() as usize, msg.len());
    assert_eq!(buf(&done[1].output), &msg[..]);
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
}

#[test]
fn timeouts_and_linked_timeouts() {
    let mut ring = Uring::builder().build().unwrap();
    let start = Instant::now();
    let done = run(
        &mut ring,
        vec![sub(
            1,
            Op::Timeout {
                after: Duration::from_millis(30),
                count: 0,
            },
        )],
    );
    assert!(matches!(done[0].result, Ok(0)));
    assert!(start.elapsed() >= Duration::from_millis(30));

    // A poll on a pipe nobody writes, bounded by a linked timeout.
    let (rx, _tx) = pipe();
    let done = run(
        &mut ring,
        vec![
            sub(
                2,
                Op::Poll {
                    fd: Target::Fd(rx.as_raw_fd()),
                    events: libc::POLLIN as u32,
                },
            )
            .link(Link::Soft),
            sub(
                3,
                Op::LinkTimeout {
                    after: Duration::from_millis(20),
                },
            ),
        ],
    );
    let poll_err = done[0].result.as_ref().unwrap_err();
    assert_eq!(
        poll_err
            .get_ref()
            .and_then(|e| e.downcast_ref::<OpError>())
            .unwrap()
            .source
            .raw_os_error(),
        Some(libc::ECANCELED)
    );
    let lt_err = done[1].result.as_ref().unwrap_err();
    assert!(lt_err.to_string().contains("link_timeout"), "{lt_err}");
}

#[test]
fn linked_chain_runs_in_order() {
    let dir = TempDir::new("chain");
    let file = open(&dir.file("data"));
    let fd = Target::Fd(file.as_raw_fd());
    let mut ring = Uring::builder().build().unwrap();
    let done = run(
        &mut ring,
        vec![
            sub(
                1,
                Op::Write {
                    fd,
                    buf: b"first".to_vec(),
                    offset: 0,
                },
            )
            .link(Link::Soft),
            sub(
                2,
                Op::Write {
                    fd,
                    buf: b"SECOND".to_vec(),
                    offset: 0,
                },
            )
            .link(Link::Hard),
            sub(
                3,
                Op::Read {
                    fd,
                    buf: vec![0; 6],
                    offset: 0,
                },
            ),
        ],
    );
    assert_eq!(buf(&done[2].output), b"SECOND");
}

#[test]
fn cancellation() {
    let mut ring = Uring::builder().build().unwrap();
    let (rx, _tx) = pipe();
    ring.push(sub(
        10,
        Op::Poll {
            fd: Target::Fd(rx.as_raw_fd()),
            events: libc::POLLIN as u32,
        },
    ))
    .unwrap();
    ring.submit().unwrap();
    ring.push(sub(11, Op::Cancel { token: 10 })).unwrap();
    ring.submit().unwrap();
    // Both the cancel and its target complete, each on its own.
    let mut done = Vec::new();
    while done.len() < 2 {
        ring.wait(LIMIT).unwrap();
        ring.reap_into(&mut done, 2).unwrap();
    }
    done.sort_by_key(|c| c.token);
    assert!(
        matches!(done[1].result, Ok(0)),
        "cancel found its target: {:?}",
        done[1].result
    );
    let e = done[0].result.as_ref().unwrap_err();
    assert!(e.to_string().contains("poll (token 10)"), "{e}");
    assert_eq!(ring.in_flight(), 0);
    // Nothing to cancel: refused at push, with a reason.
    let r = ring.push(sub(12, Op::Cancel { token: 999 })).unwrap_err();
    assert!(matches!(r.error, QueueError::Io(ref e) if e.kind() == std::io::ErrorKind::NotFound));
}

#[test]
fn sqpoll_skips_the_doorbell_while_the_kernel_polls() {
    let mut ring = Uring::builder().sqpoll(2000).build().unwrap();
    assert!(ring.is_sqpoll());
    let mut done = Vec::new();
    for i in 0..50 {
        ring.push(sub(i, Op::Nop)).unwrap();
        ring.submit().unwrap();
        while done.len() <= i as usize {
            ring.wait(LIMIT).unwrap();
            ring.reap_into(&mut done, 64).unwrap();
        }
    }
    let bell = ring.stats().doorbell;
    assert_eq!(bell.rung + bell.skipped, 50);
    assert!(
        bell.skipped > 0,
        "the polling kernel thread should make some doorbells unnecessary: {bell:?}"
    );
}

#[test]
fn eventfd_signals_completions() {
    let mut ring = Uring::builder()
        .wait_mode(WaitMode::EventFd)
        .build()
        .unwrap();
    ring.push(sub(
        1,
        Op::Timeout {
            after: Duration::from_millis(20),
            count: 0,
        },
    ))
    .unwrap();
    ring.submit().unwrap();
    let fd = ring
        .completion_fd()
        .expect("eventfd mode registers an eventfd");
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    assert_eq!(
        poll(&mut fds, PollTimeout::from(10_000u16)).unwrap(),
        1,
        "eventfd never fired"
    );
    ring.wait(LIMIT).unwrap();
    assert!(matches!(ring.reap().unwrap().unwrap().result, Ok(0)));
    // And `wait` sleeps on the eventfd when nothing is ready yet.
    ring.push(sub(
        2,
        Op::Timeout {
            after: Duration::from_millis(20),
            count: 0,
        },
    ))
    .unwrap();
    ring.wait(LIMIT).unwrap();
    assert_eq!(ring.reap().unwrap().unwrap().token, 2);
    assert!(ring.notify_stats().sleeps >= 1);
}

#[test]
fn unsupported_opcode_is_a_clear_error() {
    let mut ring = Uring::builder()
        .disable_opcodes(&[opcode::Statx::CODE])
        .build()
        .unwrap();
    let r = ring
        .push(sub(
            1,
            Op::Statx {
                dir: None,
                path: CString::new("/").unwrap(),
                flags: 0,
                mask: 0,
            },
        ))
        .unwrap_err();
    match r.error {
        QueueError::Io(e) => {
            assert_eq!(e.kind(), std::io::ErrorKind::Unsupported);
            assert!(e.to_string().contains("statx"), "{e}");
        }
        other => panic!("{other}"),
    }
    assert!(!ring.supports(opcode::Statx::CODE));
    assert!(ring.supports(opcode::Nop::CODE));
}

#[test]
fn full_submission_queue() {
    let mut ring = Uring::builder().entries(4).build().unwrap();
    for i in 0..4 {
        ring.push(sub(i, Op::Nop)).unwrap();
    }
    assert_eq!(ring.space().unwrap(), 0);
    let r = ring.push(sub(4, Op::Nop)).unwrap_err();
    assert!(matches!(r.error, QueueError::Full));
    assert_eq!(r.entry.token, 4, "the rejected submission comes back");
    // An operation that owns memory is handed back whole, and takes no slot.
    let devnull = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap();
    let write = Op::Write {
        fd: Target::Fd(devnull.as_raw_fd()),
        buf: vec![7; 100],
        offset: 0,
    };
    let r = ring.push(sub(5, write)).unwrap_err();
    assert!(matches!(r.error, QueueError::Full));
    assert!(matches!(&r.entry.op, Op::Write { buf, .. } if buf == &vec![7; 100]));
    assert_eq!(ring.in_flight(), 4, "a rejected push is not in flight");
    assert_eq!(ring.stats().pushed, 4);
    assert_eq!(
        ring.submit().unwrap(),
        4,
        "the four queued entries were submitted"
    );
    assert_eq!(ring.submit().unwrap(), 0, "nothing new to submit");
    // Or let the push make room by submitting.
    let mut ring = Uring::builder()
        .entries(4)
        .on_full(OnFull::Submit)
        .build()
        .unwrap();
    for i in 0..10 {
        ring.push(sub(i, Op::Nop)).unwrap();
    }
    ring.submit().unwrap();
    let mut done = Vec::new();
    while done.len() < 10 {
        ring.wait(LIMIT).unwrap();
        ring.reap_into(&mut done, 10).unwrap();
    }
    assert_eq!(ring.in_flight(), 0);
    let s = ring.stats();
    assert_eq!((s.pushed, s.completed), (10, 10));
}

/// A ring with a CQ of 8 and `batches` batches of 8 NOPs submitted (tokens 0 up): the kernel
/// completes them inline and holds what does not fit in the CQ.
fn nops_overflowing_a_cq_of_8(batches: u64) -> Uring {
    let mut ring = Uring::builder().entries(8).cq_entries(8).build().unwrap();
    for batch in 0..batches {
        for i in 0..8 {
            ring.push(sub(batch * 8 + i, Op::Nop)).unwrap();
        }
        ring.submit().unwrap();
    }
    ring
}

fn sorted_tokens(done: &[subring_uring::Completion]) -> Vec<u64> {
    let mut tokens: Vec<u64> = done.iter().map(|c| c.token).collect();
    tokens.sort_unstable();
    tokens
}

#[test]
fn completion_queue_overflow_is_drained() {
    let mut ring = nops_overflowing_a_cq_of_8(8);
    // 64 completions for a CQ of 8: the kernel holds the rest and says so. Reaping alone (no
    // wait, which would flush as a side effect of entering) must find the flag and flush.
    let mut done = Vec::new();
    let start = Instant::now();
    while done.len() < 64 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "only {} completions",
            done.len()
        );
        if ring.reap_into(&mut done, 64).unwrap() == 0 {
            ring.wait(LIMIT).unwrap();
        }
    }
    let tokens = sorted_tokens(&done);
    assert_eq!(tokens, (0..64).collect::<Vec<_>>());
    assert!(
        ring.stats().flushes >= 1,
        "the overflow flag was seen and flushed"
    );
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn a_wait_drains_overflowed_completions() {
    let mut ring = nops_overflowing_a_cq_of_8(4);
    // 32 completions for a CQ of 8. Waiting for more than the CQ holds makes the kernel
    // move held completions in as the CQ is emptied.
    let mut done = Vec::new();
    let start = Instant::now();
    while done.len() < 32 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "only {} completions",
            done.len()
        );
        ring.wait_for(8, LIMIT).unwrap();
        let got = ring.reap_into(&mut done, 8).unwrap();
        assert!(got >= 1, "a wait for 8 returned with an empty CQ");
    }
    let tokens = sorted_tokens(&done);
    assert_eq!(tokens, (0..32).collect::<Vec<_>>());
    assert_eq!(ring.in_flight(), 0);
    assert_eq!(ring.stats().completed, 32);
}

#[test]
fn msg_ring_between_two_threads() {
    let mut target = Uring::builder().build().unwrap();
    let target_fd = target.ring_fd();
    let waiter = std::thread::spawn(move || {
        target.wait(LIMIT).unwrap();
        let msg = target.reap().unwrap().unwrap();
        // A message is reaped and counted, but it was never this ring's operation.
        assert_eq!(target.in_flight(), 0);
        assert_eq!(target.stats().completed, 1);
        msg
    });
    let mut sender = Uring::builder().build().unwrap();
    let done = run(
        &mut sender,
        vec![sub(
            1,
            Op::MsgRing {
                ring: target_fd,
                result: 42,
                token: 5,
            },
        )],
    );
    assert!(done[0].result.is_ok());
    assert_eq!(sender.in_flight(), 0);
    let msg = waiter.join().unwrap();
    assert_eq!(msg.token, 5);
    assert_eq!(*msg.result.as_ref().unwrap(), 42);
    assert!(matches!(msg.output, Output::Message));
}

#[test]
fn dropping_the_ring_with_operations_in_flight() {
    let (rx, _tx) = pipe();
    let mut ring = Uring::builder().build().unwrap();
    for i in 0..8 {
        ring.push(sub(
            i,
            Op::Read {
                fd: Target::Fd(rx.as_raw_fd()),
                buf: vec![0; 4096],
                offset: u64::MAX,
            },
        ))
        .unwrap();
    }
    ring.submit().unwrap();
    let start = Instant::now();
    drop(ring); // cancels and waits for the reads before freeing their buffers
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn registered_files() {
    let dir = TempDir::new("files");
    let file = open(&dir.file("data"));
    let mut ring = Uring::builder().build().unwrap();
    ring.register_files(&[file.as_raw_fd()]).unwrap();
    let done = run(
        &mut ring,
        vec![sub(
            1,
            Op::Write {
                fd: Target::Fixed(0),
                buf: b"via slot 0".to_vec(),
                offset: 0,
            },
        )],
    );
    assert_eq!(*done[0].result.as_ref().unwrap(), 10);
    assert_eq!(std::fs::read(dir.file("data")).unwrap(), b"via slot 0");
    let r = ring
        .push(sub(
            2,
            Op::Fsync {
                fd: Target::Fixed(1),
                datasync: true,
            },
        ))
        .unwrap_err();
    assert!(
        r.error.to_string().contains("index 1 is out of range"),
        "{}",
        r.error
    );
}

#[test]
fn tokens_of_every_size_and_errors_of_slotless_operations() {
    let mut ring = Uring::builder().build().unwrap();
    // Operations that own no memory travel without a slot when the token fits in 56 bits; a
    // larger token takes the slot path. Both come back unchanged.
    let big = u64::MAX - 1;
    let done = run(&mut ring, vec![sub(big, Op::Nop), sub(3, Op::Nop)]);
    assert_eq!(done.iter().map(|c| c.token).collect::<Vec<_>>(), [3, big]);
    assert!(done.iter().all(|c| matches!(c.result, Ok(0))));
    // A slotless operation's error still names it and its token.
    let done = run(&mut ring, vec![sub(9, Op::Close { fd: Target::Fd(-1) })]);
    let e = done[0].result.as_ref().unwrap_err();
    assert!(
        e.to_string().contains("io_uring close (token 9) failed"),
        "{e}"
    );
    assert_eq!(ring.in_flight(), 0);
    // Message tokens may not use the two bits the ring uses to tell its own completions apart.
    let r = ring
        .push(sub(
            1,
            Op::MsgRing {
                ring: ring.ring_fd(),
                result: 0,
                token: 1 << 62,
            },
        ))
        .unwrap_err();
    assert!(r.error.to_string().contains("top two bits"), "{}", r.error);
}

/// Two regions with the same id (two clients' pools, say), each named by its key; one
/// unregistered while an operation on the other is in flight; neither while its own is.
#[test]
fn regions_registered_and_unregistered_by_key() {
    regions_by_key(true);
}

/// The same with the whole table registered again on every change: a region can then go
/// only while no fixed operation is in flight on any region.
#[test]
fn regions_by_key_without_a_sparse_table() {
    regions_by_key(false);
}

fn regions_by_key(sparse: bool) {
    let dir = TempDir::new(&format!("keys-{sparse}"));
    let file = open(&dir.file("data"));
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.file("data"), &data).unwrap();
    let fd = Target::Fd(file.as_raw_fd());
    let a = Arc::new(Region::memfd("a", 1 << 16, RegionOptions::new().id(0)).unwrap());
    let b = Arc::new(Region::memfd("b", 1 << 16, RegionOptions::new().id(0)).unwrap());
    let mut ring = Uring::builder().sparse_buffers(sparse).build().unwrap();
    let ka = ring.register_region(a.clone()).unwrap();
    let kb = ring.register_region(b.clone()).unwrap();
    assert_ne!(ka, kb);
    assert_eq!(ring.registered_regions(), 2);
    let h = |offset: u64, len: u32| BufHandle {
        offset,
        len,
        region: 0,
    };

    // The same handle lands in each region by key.
    let done = run(
        &mut ring,
        vec![
            sub(
                1,
                Op::ReadFixed {
                    fd,
                    buf: FixedBuf::In(ka, h(4096, 4096)),
                    offset: 0,
                },
            ),
            sub(
                2,
                Op::ReadFixed {
                    fd,
                    buf: FixedBuf::In(kb, h(4096, 4096)),
                    offset: 4096,
                },
            ),
        ],
    );
    assert_eq!(*done[0].result.as_ref().unwrap(), 4096);
    assert_eq!(*done[1].result.as_ref().unwrap(), 4096);
    let mut seen = vec![0u8; 4096];
    a.read_into(h(4096, 4096), &mut seen).unwrap();
    assert_eq!(seen, data[..4096]);
    b.read_into(h(4096, 4096), &mut seen).unwrap();
    assert_eq!(seen, data[4096..]);

    // By id alone the handle is ambiguous: refused at push.
    let r = ring
        .push(sub(
            3,
            Op::ReadFixed {
                fd,
                buf: FixedBuf::Handle(h(0, 16)),
                offset: 0,
            },
        ))
        .unwrap_err();
    assert!(
        r.error.to_string().contains("several registered regions"),
        "{}",
        r.error
    );
    // Out of the key's region: refused.
    let r = ring
        .push(sub(
            3,
            Op::ReadFixed {
                fd,
                buf: FixedBuf::In(ka, h(1 << 16, 1)),
                offset: 0,
            },
        ))
        .unwrap_err();
    assert!(r.error.to_string().contains("fixed buffer"), "{}", r.error);

    // A read from an empty pipe stays in flight on `a`.
    let (rx, tx) = pipe();
    ring.push(sub(
        4,
        Op::ReadFixed {
            fd: Target::Fd(rx.as_raw_fd()),
            buf: FixedBuf::In(ka, h(0, 64)),
            offset: u64::MAX,
        },
    ))
    .unwrap();
    ring.submit().unwrap();
    assert_eq!(ring.region_in_flight(ka), 1);
    let e = ring.unregister_region(ka).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ResourceBusy, "{e}");
    if !sparse {
        // The whole table cannot change while anything fixed is in flight.
        let e = ring.unregister_region(kb).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ResourceBusy, "{e}");
        nix::unistd::write(&tx, b"x").unwrap();
        ring.wait(LIMIT).unwrap();
        assert_eq!(ring.reap().unwrap().unwrap().token, 4);
        ring.push(sub(
            4,
            Op::ReadFixed {
                fd: Target::Fd(rx.as_raw_fd()),
                buf: FixedBuf::In(ka, h(0, 64)),
                offset: u64::MAX,
            },
        ))
        .unwrap();
        ring.submit().unwrap();
        let e = ring.unregister_region(kb).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ResourceBusy, "{e}");
        nix::unistd::write(&tx, b"hello").unwrap();
        ring.wait(LIMIT).unwrap();
        assert_eq!(ring.reap().unwrap().unwrap().token, 4);
        let back = ring.unregister_region(ka).unwrap();
        drop(back);
        assert_eq!(Arc::strong_count(&a), 1);
        let back = ring.unregister_region(kb).unwrap();
        drop(back);
        assert_eq!(Arc::strong_count(&b), 1);
        assert_eq!(ring.registered_regions(), 0);
        return;
    }
    // `b` has nothing in flight: it goes, and its slot is reused by a new region.
    let back = ring.unregister_region(kb).unwrap();
    assert!(Arc::ptr_eq(&back, &b));
    drop(back);
    assert_eq!(Arc::strong_count(&b), 1, "the ring let go of the region");
    let c = Arc::new(Region::memfd("c", 1 << 16, RegionOptions::new().id(7)).unwrap());
    let kc = ring.register_region(c.clone()).unwrap();
    let done = run(
        &mut ring,
        vec![sub(
            5,
            Op::ReadFixed {
                fd,
                buf: FixedBuf::In(
                    kc,
                    BufHandle {
                        offset: 0,
                        len: 100,
                        region: 7,
                    },
                ),
                offset: 0,
            },
        )],
    );
    assert_eq!(*done[0].result.as_ref().unwrap(), 100);
    let r = ring
        .push(sub(
            6,
            Op::ReadFixed {
                fd,
                buf: FixedBuf::In(kb, h(0, 16)),
                offset: 0,
            },
        ))
        .unwrap_err();
    assert!(
        r.error
            .to_string()
            .contains("no region is registered under key")
            || ring.region(kb).is_some(),
        "{}",
        r.error
    );

    // Feed the pipe: the read on `a` completes, and then `a` can go.
    nix::unistd::write(&tx, b"hello").unwrap();
    ring.wait(LIMIT).unwrap();
    let done = ring.reap().unwrap().unwrap();
    assert_eq!(done.token, 4);
    assert_eq!(*done.result.as_ref().unwrap(), 5);
    assert_eq!(ring.region_in_flight(ka), 0);
    let back = ring.unregister_region(ka).unwrap();
    drop(back);
    assert_eq!(Arc::strong_count(&a), 1);
    assert!(ring.unregister_region(ka).is_err(), "unregistered twice");
}

/// `fallocate` punches a hole (a discard) and the range reads back as zeroes.
#[test]
fn fallocate_punches_a_hole() {
    let dir = TempDir::new("falloc");
    let path = dir.file("data");
    std::fs::write(&path, vec![0xAAu8; 16384]).unwrap();
    let file = open_existing(&path);
    let mut ring = Uring::builder().build().unwrap();
    let done = run(
        &mut ring,
        vec![sub(
            1,
            Op::Fallocate {
                fd: Target::Fd(file.as_raw_fd()),
                offset: 4096,
                len: 8192,
                mode: libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            },
        )],
    );
    match &done[0].result {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            eprintln!("skipping: the temporary directory's file system cannot punch holes");
            return;
        }
        r => assert_eq!(*r.as_ref().unwrap(), 0),
    }
    let back = std::fs::read(&path).unwrap();
    assert_eq!(back.len(), 16384);
    assert!(back[..4096].iter().all(|b| *b == 0xAA));
    assert!(back[4096..12288].iter().all(|b| *b == 0));
    assert!(back[12288..].iter().all(|b| *b == 0xAA));
}

fn open_existing(path: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// Another ring can post a completion into this one with any `user_data` (`MSG_RING`). One
/// that names a live slot without its seal must not complete the operation there (its buffer
/// would come back while the kernel may still write it): it is counted as foreign.
#[test]
fn forged_completions_do_not_match_live_operations() {
    let mut ring = Uring::builder().build().unwrap();
    let (rx, tx) = pipe();
    ring.push(sub(
        1,
        Op::Read {
            fd: Target::Fd(rx.as_raw_fd()),
            buf: vec![0u8; 64],
            offset: u64::MAX,
        },
    ))
    .unwrap();
    ring.submit().unwrap();
    // The forger: a raw ring posting into ours with the owned bit and slot numbers, unsealed.
    let mut forger = io_uring::IoUring::new(8).unwrap();
    for slot in 0..4u64 {
        let ud = (1u64 << 63) | slot;
        let e = opcode::MsgRingData::new(io_uring::types::Fd(ring.ring_fd()), 64, ud, None)
            .build()
            .user_data(slot);
        // SAFETY: a MSG_RING entry points to no memory.
        unsafe { forger.submission().push(&e).unwrap() };
    }
    forger.submit_and_wait(4).unwrap();
    let mut seen = Vec::new();
    let start = Instant::now();
    while seen.len() < 4 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "forged completions never came"
        );
        ring.reap_into(&mut seen, 16).unwrap();
    }
    for c in &seen {
        assert_ne!(
            c.token, 1,
            "a forged completion completed the read in flight"
        );
        assert!(c.result.is_err(), "{c:?}");
    }
    assert_eq!(ring.stats().foreign, 4);
    assert_eq!(ring.in_flight(), 1, "the read is still in flight");
    // The real completion still comes, once.
    nix::unistd::write(&tx, b"hi").unwrap();
    ring.wait(LIMIT).unwrap();
    let done = ring.reap().unwrap().unwrap();
    assert_eq!(done.token, 1);
    assert_eq!(*done.result.as_ref().unwrap(), 2);
    assert_eq!(ring.in_flight(), 0);
}
