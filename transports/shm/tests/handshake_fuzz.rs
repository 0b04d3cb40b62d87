//! The handshake under structure-aware fuzzing (proptest): conversations a hostile client could
//! hold with a real server, and greetings a hostile server could give a real client, generated
//! from the protocol's own types with edge values in every field (capacities of 0, 1, 3, 2^31,
//! `u32::MAX`; absurd entry shapes and buffer sizes; every mode; long and empty names), wrong
//! versions and kinds, truncated and bit-flipped encodings, and every wrong kind and count of
//! descriptor beside them. The server must answer or hang up and go on serving an honest
//! client at once; the client must return an error or a working connection; neither may
//! panic, hang or keep a descriptor.
//!
//! 48 cases per side here; more: `SUBRING_FUZZ_CASES=5000 cargo test --release -p subring-shm
//! --test handshake_fuzz -- --nocapture`.

// The tests' own bookkeeping (a lock that serialises the descriptor counts) is not a protocol
// under test: std types.
#![allow(clippy::disallowed_types)]

mod support;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::memfd::{memfd_create, MFdFlags};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use subring_shm::echo::{EchoReq, EchoResp, ECHO_PROTOCOL};
use subring_shm::proto::{
    self, ClientMsg, EntryShape, Hello, Refusal, ServerMsg, Welcome, WireMode,
};
use subring_shm::queue::{Completer, Submitter};
use subring_shm::{Client, ClientOptions, NotifyMode};
use support::*;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn cases() -> u32 {
    std::env::var("SUBRING_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

/// A descriptor a peer might send.
#[derive(Debug, Clone)]
enum FdKind {
    /// A memfd of this many bytes, sealed as subring seals its own (or not at all).
    Memfd {
        len: u64,
        sealed: bool,
    },
    EventFd,
    Pipe,
    Socket,
    DevNull,
}

fn make_fd(kind: &FdKind) -> OwnedFd {
    match kind {
        FdKind::Memfd { len, sealed } => {
            let fd =
                memfd_create("fuzz", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
            let _ = nix::unistd::ftruncate(&fd, (*len).min(1 << 24) as i64);
            if *sealed {
                use nix::fcntl::{fcntl, FcntlArg, SealFlag};
                let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
                fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).unwrap();
            }
            fd
        }
        FdKind::EventFd => EventFd::from_flags(EfdFlags::EFD_CLOEXEC).unwrap().into(),
        FdKind::Pipe => nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap().0,
        FdKind::Socket => subring_shm::socket_pair().unwrap().0,
        FdKind::DevNull => std::fs::File::open("/dev/null").unwrap().into(),
    }
}

/// Mostly none (a hello carries none), sometimes up to five of any kind.
fn fd_kinds() -> impl Strategy<Value = Vec<FdKind>> {
    prop_oneof![
        3 => Just(Vec::new()),
        1 => proptest::collection::vec(fd_kind(), 1..6),
    ]
}

fn fd_kind() -> impl Strategy<Value = FdKind> {
    prop_oneof![
        (edge_u64(), any::<bool>()).prop_map(|(len, sealed)| FdKind::Memfd { len, sealed }),
        Just(FdKind::Memfd {
            len: 1 << 20,
            sealed: true
        }),
        Just(FdKind::EventFd),
        Just(FdKind::Pipe),
        Just(FdKind::Socket),
        Just(FdKind::DevNull),
    ]
}

fn edge_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(3),
        Just(8),
        Just(64),
        Just(256),
        Just(4096),
        Just(1 << 16),
        Just(1 << 31),
        Just(u32::MAX),
        any::<u32>(),
    ]
}

fn edge_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(4096),
        Just(1 << 16),
        Just(1 << 20),
        Just(u64::from(u32::MAX)),
        Just(1 << 63),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

fn wire_mode() -> impl Strategy<Value = WireMode> {
    prop_oneof![
        Just(WireMode::Spin),
        Just(WireMode::Adaptive),
        Just(WireMode::EventFd),
        Just(WireMode::Futex),
    ]
}

fn shape<T>() -> impl Strategy<Value = EntryShape> {
    prop_oneof![
        3 => Just(EntryShape::of::<T>()),
        1 => (edge_u32(), edge_u32()).prop_map(|(size, align)| EntryShape { size, align }),
    ]
}

fn protocol() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(ECHO_PROTOCOL.to_string()),
        1 => Just(String::new()),
        1 => "\\PC{0,40}",
        1 => Just("x".repeat(5000)),
    ]
}

/// A hello: mostly a good one with at most one field set to an edge value (so that the
/// server's checks past the first are reached too), sometimes every field at random.
fn hello() -> impl Strategy<Value = Hello> {
    prop_oneof![
        2 => (0usize..10, edge_u32(), wire_mode(), protocol()).prop_map(|(field, v, mode, name)| {
            let mut h = support::hello();
            match field {
                0 => h.protocol = name,
                1 => h.request.size = v,
                2 => h.completion.align = v,
                3 => h.sq_capacity = v,
                4 => h.cq_capacity = v,
                5 => h.mode = mode,
                6 => h.buf_size = v,
                7 => h.buf_count = v,
                8 => h.futex_doorbell = true,
                _ => {}
            }
            h
        }),
        1 => random_hello(),
    ]
}

fn random_hello() -> impl Strategy<Value = Hello> {
    (
        protocol(),
        shape::<EchoReq>(),
        shape::<EchoResp>(),
        prop_oneof![Just(64u32), edge_u32()],
        prop_oneof![Just(64u32), edge_u32()],
        wire_mode(),
        prop_oneof![Just(256u32), edge_u32()],
        prop_oneof![Just(8u32), edge_u32()],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                protocol,
                request,
                completion,
                sq,
                cq,
                mode,
                buf_size,
                buf_count,
                event_idx,
                futex_doorbell,
            )| Hello {
                protocol,
                request,
                completion,
                sq_capacity: sq,
                cq_capacity: cq,
                mode,
                buf_size,
                buf_count,
                event_idx,
                futex_doorbell,
            },
        )
}

fn client_msg() -> impl Strategy<Value = ClientMsg> {
    prop_oneof![
        6 => hello().prop_map(ClientMsg::Hello),
        1 => (any::<u32>(), edge_u64()).prop_map(|(id, len)| ClientMsg::RegisterRegion { id, len }),
        1 => Just(ClientMsg::Shutdown),
    ]
}

/// How a well-formed message is spoiled on the way (or not).
#[derive(Debug, Clone)]
enum Spoil {
    None,
    Version(u16),
    Kind(u8),
    Truncate(usize),
    Flip(usize, u8),
    Garbage(Vec<u8>),
}

fn spoil() -> impl Strategy<Value = Spoil> {
    prop_oneof![
        6 => Just(Spoil::None),
        1 => any::<u16>().prop_map(Spoil::Version),
        1 => any::<u8>().prop_map(Spoil::Kind),
        1 => (0usize..64).prop_map(Spoil::Truncate),
        1 => (0usize..64, 1u8..=255).prop_map(|(at, bits)| Spoil::Flip(at, bits)),
        1 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(Spoil::Garbage),
    ]
}

/// A control message's bytes on the wire, spoiled as `how` says.
fn wire(body: &[u8], how: &Spoil) -> Vec<u8> {
    let mut bytes = match how {
        Spoil::Version(v) => frame(*v, proto::KIND_MESSAGE, body),
        Spoil::Kind(k) => frame(proto::PROTOCOL_VERSION, *k, body),
        _ => frame(proto::PROTOCOL_VERSION, proto::KIND_MESSAGE, body),
    };
    match how {
        Spoil::Truncate(n) => bytes.truncate((*n).min(bytes.len())),
        Spoil::Flip(at, bits) => {
            let i = at % bytes.len();
            bytes[i] ^= bits;
        }
        Spoil::Garbage(g) => bytes = g.clone(),
        _ => {}
    }
    bytes
}

/// Sends `bytes` with `fds` without blocking; `false` if the peer is gone or the socket is full.
fn try_send(sock: &OwnedFd, bytes: &[u8], fds: &[OwnedFd]) -> bool {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[std::io::IoSlice::new(bytes)],
        cmsgs,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .is_ok()
}

/// Reads what the peer sends (descriptors that come along are closed by the kernel: no room
/// was given for them) until it hangs up or `limit` passes; the number of messages.
fn drain(sock: &OwnedFd, limit: Duration) -> usize {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let start = Instant::now();
    let mut n = 0;
    loop {
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            return n;
        }
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX).max(1);
        if poll(&mut fds, PollTimeout::from(ms)).unwrap_or(0) == 0 {
            return n;
        }
        let mut buf = [0u8; 8192];
        match nix::unistd::read(sock, &mut buf) {
            Ok(0) | Err(_) => return n,
            Ok(_) => n += 1,
        }
    }
}

type Conversation = Vec<(ClientMsg, Spoil, Vec<FdKind>)>;

fn conversation() -> impl Strategy<Value = Conversation> {
    proptest::collection::vec((client_msg(), spoil(), fd_kinds()), 1..4)
}

/// Hostile conversations with a real server: after each, an honest client is served at once,
/// and at the end the server holds no descriptor a conversation brought.
#[test]
fn generated_conversations_do_not_hurt_the_server() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // What is open before the server and its honest client: the count to be back at before the
    // next test (serialised with this one) takes its own, so that a descriptor of theirs that
    // closes late (a client's watcher thread ends on its own) is not counted there.
    let baseline = open_fds();
    let (server, path) = echo_server("fuzz-server");
    let honest = std::cell::RefCell::new(connect_retry(&path, &options(NotifyMode::EventFd), WAIT));
    echo_many(&mut honest.borrow_mut(), 8, 2, 64);
    let before = open_fds();
    let (answered, worst) = (
        std::cell::Cell::new(0usize),
        std::cell::Cell::new(Duration::ZERO),
    );
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&conversation(), |talk| {
            let sock = raw_connect(&path);
            for (msg, how, kinds) in &talk {
                let body = postcard::to_stdvec(msg).unwrap();
                let fds: Vec<OwnedFd> = kinds.iter().map(make_fd).collect();
                if !try_send(&sock, &wire(&body, how), &fds) {
                    break;
                }
            }
            answered.set(answered.get() + drain(&sock, Duration::from_millis(50)));
            drop(sock);
            let t = Instant::now();
            echo_many(&mut honest.borrow_mut(), 1, 1, 64);
            worst.set(worst.get().max(t.elapsed()));
            prop_assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
            Ok(())
        })
        .unwrap();
    // Every conversation's connection is released and every descriptor closed.
    let mut honest = honest.into_inner();
    let (answered, worst) = (answered.get(), worst.get());
    let (live, ended) = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = stats(&mut honest);
            if s.0 == 1 || Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    fds_back_to(before, "after the generated conversations");
    eprintln!(
        "{} generated conversations: {answered} answers read; the server ended {ended} \
         connections and serves {live}; the slowest honest round trip after one {worst:?}",
        cases()
    );
    assert_eq!(live, 1);
    drop(honest);
    server.stop().unwrap();
    fds_back_to(baseline, "after the server and its honest client are gone");
}

/// What a hostile server might send a connecting client.
#[derive(Debug, Clone)]
enum Greeting {
    /// A real pair set up in a real memfd, welcomed with at most one field of the welcome set
    /// to an edge value, at most one word of the shared memory scribbled on, and the
    /// descriptors perhaps one short or one too many.
    Real {
        field: usize,
        value: u64,
        mode: WireMode,
        scribble: Option<(u64, u64)>,
        drop_fd: bool,
        extra_fd: Option<FdKind>,
    },
    /// Every field at random, with random descriptors.
    Random(Welcome, Vec<FdKind>),
    Refused(u32),
    Goodbye(String),
}

fn welcome() -> impl Strategy<Value = Welcome> {
    (
        (any::<u64>(), any::<u32>()),
        prop_oneof![Just(1u64 << 20), edge_u64()],
        prop_oneof![Just(0u64), edge_u64()],
        prop_oneof![Just(1u64 << 16), edge_u64()],
        (
            prop_oneof![Just(256u32), edge_u32()],
            prop_oneof![Just(8u32), edge_u32()],
        ),
        (
            prop_oneof![Just(64u32), edge_u32()],
            prop_oneof![Just(64u32), edge_u32()],
        ),
        (
            wire_mode(),
            wire_mode(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (client_id, server_pid),
                region_len,
                pair_offset,
                pool_offset,
                (buf_size, buf_count),
                (sq, cq),
                (kick_mode, call_mode, kick_fd, call_fd, event_idx),
            )| Welcome {
                client_id,
                server_pid,
                region_len,
                pair_offset,
                pool_offset,
                buf_size,
                buf_count,
                sq_capacity: sq,
                cq_capacity: cq,
                kick_mode,
                call_mode,
                kick_fd,
                call_fd,
                event_idx,
            },
        )
}

fn greeting() -> impl Strategy<Value = Greeting> {
    let real = (
        0usize..14,
        edge_u64(),
        wire_mode(),
        proptest::option::weighted(0.3, ((0u64..(POOL / 8)), edge_u64())),
        proptest::bool::weighted(0.1),
        proptest::option::weighted(0.1, fd_kind()),
    )
        .prop_map(
            |(field, value, mode, scribble, drop_fd, extra_fd)| Greeting::Real {
                field,
                value,
                mode,
                scribble,
                drop_fd,
                extra_fd,
            },
        );
    prop_oneof![
        6 => real,
        2 => (welcome(), proptest::collection::vec(fd_kind(), 0..5))
            .prop_map(|(w, fds)| Greeting::Random(w, fds)),
        1 => any::<u32>().prop_map(Greeting::Refused),
        1 => "\\PC{0,40}".prop_map(Greeting::Goodbye),
    ]
}

const POOL: u64 = 1 << 16;

/// The message and descriptors of `greeting`, and what must outlive the handshake (the
/// server's side of a real pair).
fn greet(greeting: Greeting) -> (ServerMsg, Vec<OwnedFd>, Option<Box<dyn std::any::Any>>) {
    use subring_shm::BufHandle;
    match greeting {
        Greeting::Real {
            field,
            value,
            mode,
            scribble,
            drop_fd,
            extra_fd,
        } => {
            let FakePair {
                region,
                service,
                welcome: mut w,
                mut fds,
            } = fake_pair(NotifyMode::EventFd, 8, POOL);
            let v32 = value as u32;
            match field {
                0 => w.client_id = value,
                1 => w.server_pid = v32,
                2 => w.region_len = value,
                3 => w.pair_offset = value,
                4 => w.pool_offset = value,
                5 => w.buf_size = v32,
                6 => w.buf_count = v32,
                7 => w.sq_capacity = v32,
                8 => w.cq_capacity = v32,
                9 => w.kick_mode = mode,
                10 => w.call_mode = mode,
                11 => w.kick_fd = !w.kick_fd,
                12 => w.call_fd = !w.call_fd,
                _ => {}
            }
            if let Some((word, v)) = scribble {
                let at = BufHandle {
                    offset: word * 8,
                    len: 8,
                    region: 0,
                };
                region.write_from(at, &v.to_ne_bytes()).unwrap();
            }
            if drop_fd {
                fds.pop();
            }
            if let Some(kind) = extra_fd {
                fds.push(make_fd(&kind));
            }
            (ServerMsg::Welcome(w), fds, Some(Box::new(service)))
        }
        Greeting::Random(w, kinds) => (
            ServerMsg::Welcome(w),
            kinds.iter().map(make_fd).collect(),
            None,
        ),
        Greeting::Refused(n) => (
            ServerMsg::Refused(Refusal::Busy { max_clients: n }),
            Vec::new(),
            None,
        ),
        Greeting::Goodbye(reason) => (ServerMsg::Goodbye { reason }, Vec::new(), None),
    }
}

/// Greetings from a hostile server: the client returns an error that names what was wrong,
/// or a connection that works within its timeouts; it never panics, hangs or keeps a
/// descriptor it was sent.
#[test]
fn generated_greetings_do_not_hurt_the_client() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = open_fds();
    let (refused, connected) = (std::cell::Cell::new(0usize), std::cell::Cell::new(0usize));
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (greeting(), spoil());
    runner
        .run(&strategy, |(greeting, how)| {
            let (msg, fds, service) = greet(greeting);
            let body = postcard::to_stdvec(&msg).unwrap();
            let (ours, theirs) = subring_shm::socket_pair().unwrap();
            try_send(&ours, &wire(&body, &how), &fds);
            drop(fds);
            let mut options = ClientOptions::new(ECHO_PROTOCOL)
                .buffers(256, 8)
                .capacity(64)
                .mode(NotifyMode::EventFd);
            options.control_timeout = Duration::from_millis(200);
            let t = Instant::now();
            match Client::<EchoReq, EchoResp>::from_socket(theirs, &options) {
                Err(e) => {
                    refused.set(refused.get() + 1);
                    prop_assert!(!e.to_string().is_empty());
                }
                Ok(mut client) => {
                    connected.set(connected.get() + 1);
                    let _ = client.push(EchoReq::default());
                    let _ = client.submit();
                    let _ = client.wait(Some(Duration::from_millis(1)));
                    while let Ok(Some(_)) = client.reap() {}
                }
            }
            prop_assert!(
                t.elapsed() < Duration::from_secs(2),
                "the client took {:?}",
                t.elapsed()
            );
            drop(ours);
            drop(service);
            Ok(())
        })
        .unwrap();
    fds_back_to(before, "after the generated greetings");
    eprintln!(
        "{} generated greetings: {} refused with an error, {} connected",
        cases(),
        refused.get(),
        connected.get()
    );
}
