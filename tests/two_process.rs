//! A queue pair across two processes: the test process is the service; it re-executes this test
//! binary as the app (the `child_app` test), handing it the sealed memfd and the eventfds by fd
//! inheritance. The app sends sequence-numbered requests whose payloads live in a buffer pool in
//! the shared region (zero-copy: only handles travel in the ring); the service reads each payload
//! in place through the validated handle and answers with its checksum.
//!
//! A second child plays a hostile peer and writes an impossible tail into the submission ring:
//! the service gets a typed error instead of crashing.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use subring::data::{BufHandle, BufferPool, Region, RegionOptions};
use subring::interrupt::{EventFdSignal, NotifyMode};
use subring::pair::{AppSide, PairConfig, PairLayout, PairSignals, ServiceSide};
use subring::queue::{Completer, QueueError, Submitter};

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct Req {
    seq: u64,
    buf: BufHandle,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct Resp {
    seq: u64,
    sum: u64,
    buf: BufHandle,
}

const COUNT: u64 = 20_000;
const BUF_SIZE: usize = 256;
const BUFS: usize = 64;
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

fn config(mode: NotifyMode) -> PairConfig {
    PairConfig::default().with_capacity(32).with_mode(mode)
}

/// The region holds the queue pair, then (page-aligned) the app's buffer pool.
fn layout(mode: NotifyMode) -> (usize, usize) {
    let pair = PairLayout::of::<Req, Resp>(&config(mode)).unwrap();
    let pool_offset = pair.size.next_multiple_of(4096);
    (pool_offset, pool_offset + BUF_SIZE * BUFS)
}

fn payload(seq: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (seq as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// Spawns this test binary running only `test_name`, with `fds` inherited (their close-on-exec
/// flag cleared in the child only) and `env` set.
fn spawn_child(test_name: &str, fds: &[RawFd], env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        test_name,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // The child's test-harness chatter is noise here; its panics go to stderr, which is kept.
    cmd.stdout(std::process::Stdio::null());
    let fds = fds.to_vec();
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl, which is
    // async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &fds {
                if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawn child test process")
}

/// Waits for the child, killing it if it outlives `limit`.
fn reap(mut child: Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child process did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn raw(fd: Option<BorrowedFd<'_>>) -> String {
    fd.map_or(String::new(), |fd| fd.as_raw_fd().to_string())
}

fn serve_child(mode: NotifyMode) {
    let cfg = config(mode);
    let (_, len) = layout(mode);
    let region = Arc::new(Region::memfd("two-process", len, RegionOptions::new()).unwrap());
    let signals = PairSignals::for_config(&cfg).unwrap();
    let mut service =
        ServiceSide::<Req, Resp>::create(region.clone(), 0, &cfg, signals.clone()).unwrap();

    let kick = signals.kick.as_ref().map(|s| s.as_fd());
    let call = signals.call.as_ref().map(|s| s.as_fd());
    let mut fds = vec![region.fd().unwrap().as_raw_fd()];
    fds.extend(kick.iter().chain(call.iter()).map(|fd| fd.as_raw_fd()));
    let child = spawn_child(
        "child_app",
        &fds,
        &[
            ("SUBRING_TEST_MODE", mode.to_string()),
            (
                "SUBRING_TEST_REGION_FD",
                region.fd().unwrap().as_raw_fd().to_string(),
            ),
            ("SUBRING_TEST_KICK_FD", raw(kick)),
            ("SUBRING_TEST_CALL_FD", raw(call)),
        ],
    );

    let mut served = 0u64;
    let mut bad_handles = 0u64;
    let result = service.run(
        |req: Req| {
            served += 1;
            // SAFETY: zero-copy read in place. By the protocol the app lent this buffer and does
            // not touch it until the completion returns it; a misbehaving app could only change
            // the bytes we checksum (`u8` has no invalid values), which the app then detects.
            let sum = match unsafe { region.slice(req.buf) } {
                Ok(bytes) => checksum(bytes),
                Err(_) => {
                    bad_handles += 1;
                    u64::MAX
                }
            };
            Resp {
                seq: req.seq,
                sum,
                buf: req.buf,
            }
        },
        Some(Duration::from_secs(60)),
    );
    let status = reap(child, CHILD_TIMEOUT);
    assert!(status.success(), "{mode}: child app failed: {status}");
    result.unwrap_or_else(|e| panic!("{mode}: service failed: {e}"));
    assert_eq!(served, COUNT, "{mode}");
    assert_eq!(bad_handles, 0, "{mode}");
}

#[test]
fn two_processes_spin() {
    serve_child(NotifyMode::Spin);
}

#[test]
fn two_processes_adaptive() {
    serve_child(NotifyMode::Adaptive);
}

#[test]
fn two_processes_eventfd() {
    serve_child(NotifyMode::EventFd);
}

#[test]
fn two_processes_futex() {
    serve_child(NotifyMode::Futex);
}

fn inherited(var: &str) -> Option<OwnedFd> {
    let value = std::env::var(var).ok().filter(|v| !v.is_empty())?;
    let fd: RawFd = value.parse().expect("fd number");
    // SAFETY: the parent passed this fd to us by inheritance for our exclusive use; nothing else
    // in this process owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The app side, in the child process.
#[test]
#[ignore = "runs only as the child process of the two-process tests"]
fn child_app() {
    let Ok(mode) = std::env::var("SUBRING_TEST_MODE") else {
        return;
    };
    let mode: NotifyMode = mode.parse().unwrap();
    let cfg = config(mode);
    let (pool_offset, len) = layout(mode);
    let region = Arc::new(
        Region::from_fd(
            inherited("SUBRING_TEST_REGION_FD").unwrap(),
            Some(len),
            RegionOptions::new(),
        )
        .unwrap(),
    );
    let signals = PairSignals {
        kick: inherited("SUBRING_TEST_KICK_FD").map(|fd| EventFdSignal::from_fd(fd).unwrap()),
        call: inherited("SUBRING_TEST_CALL_FD").map(|fd| EventFdSignal::from_fd(fd).unwrap()),
    };
    let mut app = AppSide::<Req, Resp>::attach(region.clone(), 0, &cfg, signals).unwrap();
    let pool = BufferPool::new(region, pool_offset, BUF_SIZE, BUFS).unwrap();

    let (mut sent, mut done) = (0u64, 0u64);
    let mut completions = Vec::new();
    while done < COUNT {
        // Fill as many requests as there are buffers and ring slots, submit them at once.
        while sent < COUNT {
            let Some(mut buf) = pool.alloc() else { break };
            let mut data = vec![0u8; BUF_SIZE - (sent % 64) as usize];
            payload(sent, &mut data);
            buf.fill_from(&data);
            let req = Req {
                seq: sent,
                buf: buf.lend(),
            };
            match app.push(req) {
                Ok(()) => sent += 1,
                Err(rejected) => {
                    assert!(matches!(rejected.error, QueueError::Full));
                    pool.reclaim(rejected.entry.buf).unwrap();
                    break;
                }
            }
        }
        app.submit().unwrap();
        app.wait(Some(Duration::from_secs(60))).unwrap();
        completions.clear();
        app.reap_into(&mut completions, 64).unwrap();
        for resp in &completions {
            assert_eq!(resp.seq, done, "completions out of order");
            let buf = pool
                .reclaim(resp.buf)
                .expect("the service returned our handle");
            let mut expected = vec![0u8; BUF_SIZE - (done % 64) as usize];
            payload(done, &mut expected);
            assert_eq!(buf.to_vec(), expected, "payload changed");
            assert_eq!(
                resp.sum,
                checksum(&expected),
                "service read a different payload"
            );
            done += 1;
        }
    }
    let bell = app.doorbell_stats();
    let irq = app.notify_stats();
    println!(
        "child app ({mode}): {COUNT} requests; doorbells rung {} skipped {}; sleeps {}",
        bell.rung, bell.skipped, irq.sleeps
    );
}

/// A hostile peer: maps the region and stamps the first submission slot with a value no correct
/// producer writes there.
#[test]
#[ignore = "runs only as the child process of the two-process tests"]
fn child_hostile() {
    let Some(fd) = inherited("SUBRING_TEST_REGION_FD") else {
        return;
    };
    let region = Region::from_fd(fd, None, RegionOptions::new()).unwrap();
    let sq = PairLayout::of::<Req, Resp>(&config(NotifyMode::Futex))
        .unwrap()
        .sq;
    // The submission ring's slots start 640 bytes in, each with its 4-byte stamp first.
    let stamp = sq + 640;
    region.check(stamp as u64, 4).unwrap();
    // SAFETY: in bounds (checked) and 4-aligned; this child deliberately corrupts the ring.
    unsafe {
        region
            .as_ptr()
            .add(stamp)
            .cast::<u32>()
            .write_volatile(0x7fff_0000)
    };
}

#[test]
fn hostile_peer_gets_a_typed_error() {
    let cfg = config(NotifyMode::Futex);
    let (_, len) = layout(NotifyMode::Futex);
    let region = Arc::new(Region::memfd("hostile", len, RegionOptions::new()).unwrap());
    let mut service =
        ServiceSide::<Req, Resp>::create(region.clone(), 0, &cfg, PairSignals::default()).unwrap();
    let fd = region.fd().unwrap().as_raw_fd();
    let child = spawn_child(
        "child_hostile",
        &[fd],
        &[("SUBRING_TEST_REGION_FD", fd.to_string())],
    );
    assert!(reap(child, CHILD_TIMEOUT).success());
    match service.wait_requests(Some(Duration::from_secs(10))) {
        Err(QueueError::Corrupt(e)) => assert_eq!(e.found, 0x7fff_0000),
        other => panic!("expected a corrupt-index error, got {other:?}"),
    }
}
