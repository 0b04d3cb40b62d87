//! Helpers shared by the shm integration tests: child processes that are always reaped, and
//! an echo client that checks every payload.

#![allow(dead_code)]

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use subring_shm::echo::ECHO_PROTOCOL;
use subring_shm::echo::{self, checksum, EchoOp, EchoReq, EchoResp, EchoStatus};
use subring_shm::proto::{self, EntryShape, Hello, ServerMsg, WireMode};
use subring_shm::queue::{Completer, QueueError, Submitter};
use subring_shm::{Client, ClientOptions, NotifyMode, Server, ServerConfig};

/// A child process killed and reaped when dropped.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    pub fn kill(&mut self) -> ExitStatus {
        let mut child = self.0.take().expect("not reaped yet");
        let _ = child.kill();
        child.wait().expect("reap child")
    }

    /// Waits for the child to exit by itself, killing it after `limit`.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.0.take().expect("not reaped yet");
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("child did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs this test binary's ignored test `name` as a child with `env`.
pub fn spawn_child(name: &str, env: &[(&str, String)]) -> ChildGuard {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        name,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::null());
    ChildGuard(Some(cmd.spawn().expect("spawn child test process")))
}

/// This test process's directory of socket paths.
fn socket_dir() -> PathBuf {
    std::env::temp_dir().join(format!("subring-shm-{}", std::process::id()))
}

/// Removes the socket directory when the test process exits (the harness exits through
/// `exit`, which runs `atexit` handlers).
extern "C" fn remove_socket_dir() {
    let _ = std::fs::remove_dir_all(socket_dir());
}

/// A fresh socket path for one test, in a directory removed when the process exits.
pub fn socket_path(test: &str) -> PathBuf {
    static CLEANUP: std::sync::Once = std::sync::Once::new();
    // SAFETY: registers a plain function that neither unwinds nor touches anything but the file
    // system; `atexit` only stores the pointer.
    CLEANUP.call_once(|| unsafe {
        libc::atexit(remove_socket_dir);
    });
    let dir = socket_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{test}.sock"));
    let _ = std::fs::remove_file(&path);
    path
}

/// Connects to `path`, retrying while the server starts (up to `limit`).
pub fn connect_retry(
    path: &std::path::Path,
    options: &ClientOptions,
    limit: Duration,
) -> Client<EchoReq, EchoResp> {
    let start = Instant::now();
    loop {
        match Client::connect(path, options) {
            Ok(c) => return c,
            Err(e) if start.elapsed() < limit => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("could not connect to {}: {e}", path.display()),
        }
    }
}

pub fn pattern(seq: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = b'a' + ((seq as usize + i) % 26) as u8;
    }
}

pub const WAIT: Duration = Duration::from_secs(20);

/// Sends `count` UPPER requests, up to `depth` in flight, and checks every answer: sequence,
/// checksum of what the server read, and the payload upper-cased in place.
pub fn echo_many(client: &mut Client<EchoReq, EchoResp>, count: u64, depth: u64, len: usize) {
    let mut sent = 0u64;
    let mut done = 0u64;
    let mut expected = std::collections::HashMap::new();
    while done < count {
        while sent < count && sent - done < depth {
            let Some(mut buf) = client.alloc() else { break };
            let mut data = vec![0u8; len.min(buf.capacity())];
            pattern(sent, &mut data);
            expected.insert(sent, checksum(&data));
            buf.fill_from(&data);
            let req = EchoReq {
                seq: sent,
                op: EchoOp::UPPER,
                reserved: 0,
                buf: buf.lend(),
            };
            client.push(req).map_err(|r| r.error).expect("push");
            sent += 1;
        }
        client.submit().expect("submit");
        client.wait(Some(WAIT)).expect("wait for echo");
        while let Some(resp) = client.reap().expect("reap") {
            assert_eq!(resp.status, EchoStatus::OK, "echo {} failed", resp.seq);
            let want = expected
                .remove(&resp.seq)
                .expect("an answer to a request we sent");
            assert_eq!(resp.sum, want, "checksum of echo {}", resp.seq);
            let buf = client.reclaim(resp.buf).expect("our buffer back");
            let mut original = vec![0u8; buf.len()];
            pattern(resp.seq, &mut original);
            original.make_ascii_uppercase();
            assert_eq!(buf.to_vec(), original, "payload of echo {}", resp.seq);
            done += 1;
        }
    }
}

/// One request, answered within `WAIT`.
pub fn call(client: &mut Client<EchoReq, EchoResp>, req: EchoReq) -> Result<EchoResp, QueueError> {
    client.push(req).map_err(|r| r.error)?;
    client.submit()?;
    let start = Instant::now();
    loop {
        if let Some(r) = client.reap()? {
            return Ok(r);
        }
        let left = WAIT.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(QueueError::Timeout(WAIT));
        }
        client.wait(Some(left))?;
    }
}

/// The server's (live clients, ended connections).
pub fn stats(client: &mut Client<EchoReq, EchoResp>) -> (u32, u64) {
    let r = call(
        client,
        EchoReq {
            op: EchoOp::STATS,
            ..EchoReq::default()
        },
    )
    .expect("stats");
    (r.sum, r.value)
}

/// Whether this kernel has io_uring futex waits (`IORING_OP_FUTEX_WAIT`, Linux 6.7), which a
/// server sleeping in epoll needs to serve a client with a futex doorbell.
/// With `SUBRING_REQUIRE_FUTEX_WAITS` set (CI sets it where the kernel has them), their
/// absence fails the test instead of skipping what needs them.
pub fn io_uring_futex_waits() -> bool {
    let here = (|| {
        let ring = io_uring::IoUring::new(2).ok()?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe).ok()?;
        Some(probe.is_supported(io_uring::opcode::FutexWait::CODE))
    })()
    .unwrap_or(false);
    assert!(
        here || std::env::var_os("SUBRING_REQUIRE_FUTEX_WAITS").is_none(),
        "SUBRING_REQUIRE_FUTEX_WAITS is set, but io_uring has no futex waits here"
    );
    here
}

/// Connects a client that does not trust its server (a futex doorbell) to the server at
/// `path`; `None`, said on stderr, where that server cannot give one here (one sleeping in
/// epoll needs io_uring's futex waits: Linux 6.7, io_uring not turned off).
pub fn connect_untrusting(
    path: &std::path::Path,
    options: &ClientOptions,
) -> Option<Client<EchoReq, EchoResp>> {
    match Client::connect(path, &options.clone().untrusted_server()) {
        Ok(client) => Some(client),
        Err(subring_shm::Error::Refused(r @ subring_shm::proto::Refusal::Unsupported { .. })) => {
            assert!(
                std::env::var_os("SUBRING_REQUIRE_FUTEX_WAITS").is_none(),
                "SUBRING_REQUIRE_FUTEX_WAITS is set, but: {r}"
            );
            eprintln!("skipped: {r}");
            None
        }
        Err(e) => panic!("an untrusting client ({:?}): {e}", options.mode),
    }
}

/// The ways a client can wait in an event loop (tokio, mio): eventfd mode, and where the
/// kernel has io_uring futex waits, futex mode trusting and not trusting its server (a
/// futex doorbell); each with a label. Where the kernel lacks them, says so on stderr.
pub fn event_loop_options(protocol: &str) -> Vec<(&'static str, ClientOptions)> {
    let base = |mode| ClientOptions {
        protocol: protocol.to_string(),
        ..options(mode)
    };
    let mut all = vec![("eventfd", base(NotifyMode::EventFd))];
    if io_uring_futex_waits() {
        all.push(("futex", base(NotifyMode::Futex)));
        all.push((
            "futex, untrusting",
            base(NotifyMode::Futex).untrusted_server(),
        ));
    } else {
        eprintln!("skipped futex mode in an event loop: no io_uring futex waits here");
    }
    all
}

pub fn options(mode: NotifyMode) -> ClientOptions {
    ClientOptions::new(subring_shm::echo::ECHO_PROTOCOL)
        .mode(mode)
        .capacity(64)
        .buffers(256, 32)
}

// Raw control-plane helpers: a peer that speaks the wire format by hand.

pub fn raw_connect(path: &std::path::Path) -> OwnedFd {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let s = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    connect(s.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
    s
}

pub fn send_raw(sock: &OwnedFd, bytes: &[u8], fds: &[i32]) {
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(bytes)],
        cmsgs,
        MsgFlags::empty(),
        None,
    )
    .unwrap();
}

/// The next datagram from the server (empty if it hung up), within 10 s.
pub fn recv_raw(sock: &OwnedFd) -> Vec<u8> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
    assert_eq!(
        poll(&mut fds, PollTimeout::from(10_000u16)).unwrap(),
        1,
        "server silent"
    );
    let mut buf = vec![0u8; 8192];
    let n = nix::unistd::read(sock, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

pub fn frame(version: u16, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = b"SBSH".to_vec();
    f.extend_from_slice(&version.to_le_bytes());
    f.push(kind);
    f.extend_from_slice(body);
    f
}

pub fn decode(bytes: &[u8]) -> ServerMsg {
    assert!(bytes.len() >= 7, "short answer {bytes:?}");
    assert_eq!(&bytes[..4], b"SBSH");
    assert_eq!(bytes[6], proto::KIND_MESSAGE);
    postcard::from_bytes(&bytes[7..]).unwrap()
}

pub fn hello() -> Hello {
    Hello {
        protocol: ECHO_PROTOCOL.into(),
        request: EntryShape::of::<EchoReq>(),
        completion: EntryShape::of::<EchoResp>(),
        sq_capacity: 64,
        cq_capacity: 64,
        mode: WireMode::EventFd,
        buf_size: 256,
        buf_count: 8,
        event_idx: true,
        futex_doorbell: false,
    }
}

/// An echo server on a thread, listening at a fresh path for `test`, with a 500 ms handshake
/// timeout.
pub type EchoServer = subring_shm::ServerThread<
    EchoReq,
    EchoResp,
    subring_shm::PerClient<subring_shm::echo::EchoHandler>,
>;

pub fn echo_server(test: &str) -> (EchoServer, std::path::PathBuf) {
    echo_server_with(test, |_| {})
}

/// [`echo_server`], its configuration changed by `tune` first.
pub fn echo_server_with(
    test: &str,
    tune: impl FnOnce(&mut ServerConfig),
) -> (EchoServer, std::path::PathBuf) {
    let path = socket_path(test);
    let mut config = ServerConfig::new(ECHO_PROTOCOL);
    config.handshake_timeout = Duration::from_millis(500);
    tune(&mut config);
    let server = Server::bind(&path, config, echo::handler_factory()).unwrap();
    (server.spawn().unwrap(), path)
}

/// xorshift64*: the campaigns' random numbers (seeded, so a run can be repeated).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A value a hostile writer would pick: random, or one of the edges.
    pub fn nasty(&mut self) -> u64 {
        match self.below(8) {
            0 => 0,
            1 => u64::MAX,
            2 => u64::from(u32::MAX),
            3 => 1 << 63,
            4 => self.below(1 << 20),
            _ => self.next(),
        }
    }
}

/// This process's open descriptors.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Waits (bounded) until this process has at most `want` descriptors open again: no more
/// than before (fewer is no leak: a descriptor of an earlier test, closed late by the closer
/// thread of peers' descriptors, may have been counted in `want`).
pub fn fds_back_to(want: usize, what: &str) {
    let start = Instant::now();
    while open_fds() > want {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: {} descriptors open, {want} before",
            open_fds()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A real queue pair a fake server set up for one client (64-entry rings unless made with
/// [`fake_pair_of`], the kick on a futex, 256-byte buffers at `pool_offset` in a 1 MiB memfd),
/// with the welcome and the descriptors that bring a client onto it.
pub struct FakePair<S = EchoReq, C = EchoResp> {
    pub region: std::sync::Arc<subring_shm::Region>,
    pub service: subring_planes::pair::ServiceSide<S, C>,
    pub welcome: proto::Welcome,
    pub fds: Vec<OwnedFd>,
}

pub fn fake_pair(call_mode: NotifyMode, buf_count: u32, pool_offset: u64) -> FakePair {
    fake_pair_kicked(NotifyMode::Futex, call_mode, buf_count, pool_offset)
}

/// [`fake_pair`] with the kick in `kick_mode` (its eventfd, if it has one, sent after the
/// memfd, as a server does).
pub fn fake_pair_kicked(
    kick_mode: NotifyMode,
    call_mode: NotifyMode,
    buf_count: u32,
    pool_offset: u64,
) -> FakePair {
    fake_pair_of(kick_mode, call_mode, buf_count, pool_offset, 64)
}

/// [`fake_pair_kicked`] for entries `S` and `C`, with rings of `capacity` entries.
pub fn fake_pair_of<S: bytemuck::Pod, C: bytemuck::Pod>(
    kick_mode: NotifyMode,
    call_mode: NotifyMode,
    buf_count: u32,
    pool_offset: u64,
    capacity: u32,
) -> FakePair<S, C> {
    use std::os::fd::AsFd;
    use subring_planes::pair::{PairConfig, PairSignals, ServiceSide};
    let config = PairConfig {
        sq_capacity: capacity,
        cq_capacity: capacity,
        kick_mode,
        call_mode,
        event_idx: true,
    };
    let region = std::sync::Arc::new(
        subring_shm::Region::memfd("fake-server", 1 << 20, subring_shm::RegionOptions::new())
            .unwrap(),
    );
    let signals = PairSignals::for_config(&config).unwrap();
    let service = ServiceSide::<S, C>::create(region.clone(), 0, &config, signals.clone()).unwrap();
    let welcome = proto::Welcome {
        client_id: 1,
        server_pid: std::process::id(),
        region_len: 1 << 20,
        pair_offset: 0,
        pool_offset,
        buf_size: 256,
        buf_count,
        sq_capacity: capacity,
        cq_capacity: capacity,
        kick_mode: kick_mode.into(),
        call_mode: call_mode.into(),
        kick_fd: signals.kick.is_some(),
        call_fd: signals.call.is_some(),
        event_idx: true,
    };
    let mut fds = vec![region.fd().unwrap().try_clone_to_owned().unwrap()];
    if let Some(kick) = &signals.kick {
        fds.push(kick.as_fd().try_clone_to_owned().unwrap());
    }
    if let Some(call) = &signals.call {
        // As a server does: an epoll instance watching its eventfd, not the eventfd.
        fds.push(call.peer_waiter().unwrap());
    }
    FakePair {
        region,
        service,
        welcome,
        fds,
    }
}

/// A welcome on the wire.
pub fn welcome_frame(welcome: &proto::Welcome) -> Vec<u8> {
    let body = postcard::to_stdvec(&ServerMsg::Welcome(welcome.clone())).unwrap();
    frame(proto::PROTOCOL_VERSION, proto::KIND_MESSAGE, &body)
}

/// The raw numbers of `fds`, for [`send_raw`].
pub fn raw_fds(fds: &[OwnedFd]) -> Vec<i32> {
    fds.iter().map(|f| f.as_raw_fd()).collect()
}

// An honest client beside a hostile one (`hostile_fds.rs`, `hostile_churn.rs`).

/// The tests that measure an honest client's round trips beside a hostile one take this lock:
/// two at once would measure each other. (The tests' own bookkeeping, not a protocol under
/// test: a std lock.)
#[allow(clippy::disallowed_types)]
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`ONE_AT_A_TIME`].
#[allow(clippy::disallowed_types)]
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long an honest round trip may take before [`honest_round_trips`] gives up on it (the
/// test fails then).
pub const GIVE_UP: Duration = Duration::from_secs(2);

/// An honest client's round trips over `span`: how many, and the worst. One that takes over
/// [`GIVE_UP`] ends the count there. (Connect it before the hostile peer starts: all of a test's
/// connections are one user's, and a flood of connections saying nothing pushes out that
/// user's oldest one still saying hello.)
pub fn honest_round_trips(
    client: &mut Client<EchoReq, EchoResp>,
    span: Duration,
) -> (u64, Duration) {
    let mut worst = Duration::ZERO;
    let start = Instant::now();
    let mut seq = 0;
    while start.elapsed() < span {
        let t = Instant::now();
        let req = EchoReq {
            seq,
            op: EchoOp::PING,
            ..EchoReq::default()
        };
        client.push(req).map_err(|r| r.error).unwrap();
        client.submit().unwrap();
        let answer = loop {
            if let Some(r) = client.reap().unwrap() {
                break Some(r);
            }
            let left = GIVE_UP.saturating_sub(t.elapsed());
            if left.is_zero() {
                break None;
            }
            match client.wait(Some(left)) {
                Ok(()) | Err(QueueError::Timeout(_)) => {}
                Err(e) => panic!("an honest wait failed: {e}"),
            }
        };
        worst = worst.max(t.elapsed());
        let Some(answer) = answer else {
            return (seq, worst);
        };
        assert_eq!(answer.seq, seq);
        seq += 1;
    }
    (seq, worst)
}

/// A raw, non-blocking connection to `path`, or `None` if none could be made now (this
/// process, the server's too, out of descriptors; the server's backlog full).
pub fn try_connect(path: &std::path::Path) -> Option<OwnedFd> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let s = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .ok()?;
    connect(s.as_raw_fd(), &UnixAddr::new(path).ok()?).ok()?;
    Some(s)
}
