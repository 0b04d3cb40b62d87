//! Hostile servers the client meets at the handshake and after it, faked in this process: a
//! welcome that places the pool over the rings, or carries descriptors its modes do not use, or
//! an eventfd doorbell to a client that asked for a futex one; a server that corrupts the ring,
//! or dies, with completions posted. (Hostile peers that need descriptor counts or other
//! processes are in `hostile.rs`.)

mod support;

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use subring_shm::echo::{EchoReq, EchoResp, ECHO_PROTOCOL};
use subring_shm::proto::{self, ClientMsg, ServerMsg, Welcome, WireMode};
use subring_shm::{Client, ClientOptions, Error, NotifyMode};
use support::*;

fn eventfds(n: usize) -> Vec<OwnedFd> {
    (0..n)
        .map(|_| EventFd::from_flags(EfdFlags::EFD_CLOEXEC).unwrap().into())
        .collect()
}

/// A "server" that lays out a real queue pair and then places the client's pool over the
/// pair's or a ring's header, or at an offset that overflows: the client refuses the welcome
/// (a typed error, in debug builds too: no arithmetic panic).
#[test]
fn a_welcome_placing_the_pool_over_the_rings_is_refused() {
    use subring_planes::pair::{PairConfig, PairLayout, PairSignals, ServiceSide};
    use subring_shm::{Region, RegionOptions};
    let config = PairConfig {
        sq_capacity: 64,
        cq_capacity: 64,
        kick_mode: NotifyMode::Futex,
        call_mode: NotifyMode::Futex,
        event_idx: true,
    };
    let layout = PairLayout::of::<EchoReq, EchoResp>(&config).unwrap();
    for (pool_offset, what) in [
        (0u64, "the pair's header"),
        (layout.sq as u64, "the submission ring's header"),
        (layout.cq as u64, "the completion ring's header"),
        (u64::MAX, "an offset that overflows"),
        (
            u64::MAX - 255,
            "an offset that overflows with the pool's span",
        ),
    ] {
        let region = std::sync::Arc::new(
            Region::memfd("fake-server", 1 << 20, RegionOptions::new().id(0)).unwrap(),
        );
        let _service = ServiceSide::<EchoReq, EchoResp>::create(
            region.clone(),
            0,
            &config,
            PairSignals::default(),
        )
        .unwrap();
        let w = Welcome {
            client_id: 1,
            server_pid: 1,
            region_len: 1 << 20,
            pair_offset: 0,
            pool_offset,
            buf_size: 256,
            buf_count: 8,
            sq_capacity: 64,
            cq_capacity: 64,
            kick_mode: WireMode::Futex,
            call_mode: WireMode::Futex,
            kick_fd: false,
            call_fd: false,
            event_idx: true,
        };
        let body = postcard::to_stdvec(&ServerMsg::Welcome(w)).unwrap();
        let bytes = frame(proto::PROTOCOL_VERSION, proto::KIND_MESSAGE, &body);
        let (ours, theirs) = subring_shm::socket_pair().unwrap();
        send_raw(&ours, &bytes, &[region.fd().unwrap().as_raw_fd()]);
        let options = ClientOptions::new(ECHO_PROTOCOL)
            .buffers(256, 8)
            .capacity(64)
            .mode(NotifyMode::Futex);
        match Client::<EchoReq, EchoResp>::from_socket(theirs, &options) {
            Err(Error::Pool(e)) => eprintln!("{what}: refused: {e}"),
            Err(e) => panic!("{what}: refused for another reason: {e}"),
            Ok(_) => panic!("{what}: the client accepted a pool over its rings"),
        }
        drop(ours);
    }
}

/// A server that corrupts its client's completion ring and then dies is reported gone, in
/// every notify mode: the corrupt ring used to end every wait first (found by the hostile
/// server campaign: after a SIGKILL, an eventfd- or spin-mode client saw `Corrupt` at every
/// wait, forever, and never `PeerGone`).
#[test]
fn a_server_that_corrupts_the_ring_and_dies_is_seen_gone() {
    use subring_shm::queue::{Completer, QueueError, Submitter};
    use subring_shm::BufHandle;
    const POOL: u64 = FAKE_POOL;
    for mode in NotifyMode::ALL {
        let (
            FakePair {
                region, service, ..
            },
            ours,
            mut client,
        ) = connect_to_fake_server(mode);
        // The server writes ones over everything below the pool but the pair header's first
        // line (so the client still attaches), then dies.
        region
            .write_from(
                BufHandle {
                    offset: 64,
                    len: (POOL - 64) as u32,
                    region: 0,
                },
                &vec![0xff; (POOL - 64) as usize],
            )
            .unwrap();
        let corrupt = client.wait(Some(Duration::from_millis(1)));
        assert!(
            matches!(corrupt, Err(QueueError::Corrupt(_))),
            "{mode}: {corrupt:?}"
        );
        // Dies as a SIGKILLed process does: no close of its side, its socket hangs up.
        std::mem::forget(service);
        drop(ours);
        let start = Instant::now();
        let seen = loop {
            match client.wait(Some(Duration::from_millis(10))) {
                Err(QueueError::PeerGone) => break true,
                _ if start.elapsed() > Duration::from_secs(2) => break false,
                _ => {}
            }
        };
        assert!(seen, "{mode}: the dead server was never reported gone");
        let _ = client.push(EchoReq::default());
    }
}

/// Where the fake server's pool lies in its region.
const FAKE_POOL: u64 = 1 << 16;

/// A fake server (a queue pair this process serves, see `fake_pair`) and a client in `mode`
/// connected to it; the server's end of the socket is returned so that dropping it hangs up.
fn connect_to_fake_server(mode: NotifyMode) -> (FakePair, OwnedFd, Client<EchoReq, EchoResp>) {
    connect_to_fake_server_with(mode, |_| {})
}

/// [`connect_to_fake_server`] with the welcome changed by `tweak` first.
fn connect_to_fake_server_with(
    mode: NotifyMode,
    tweak: impl FnOnce(&mut Welcome),
) -> (FakePair, OwnedFd, Client<EchoReq, EchoResp>) {
    let mut pair = fake_pair(mode, 32, FAKE_POOL);
    tweak(&mut pair.welcome);
    let (ours, theirs) = subring_shm::socket_pair().unwrap();
    send_raw(&ours, &welcome_frame(&pair.welcome), &raw_fds(&pair.fds));
    pair.fds.clear();
    let options = ClientOptions::new(ECHO_PROTOCOL)
        .buffers(256, 32)
        .capacity(64)
        .mode(mode);
    let client = Client::<EchoReq, EchoResp>::from_socket(theirs, &options).unwrap();
    (pair, ours, client)
}

/// A server that posts one completion of a batch the client waits for, then dies (no close of
/// its side, its socket hangs up): the batch wait returns what came, and only the next wait
/// reports the server gone. (In eventfd mode the wait sleeps on the hang-up itself; it used to
/// report `PeerGone` with the completion still unreaped.)
#[test]
fn a_batch_wait_keeps_what_a_dying_server_posted() {
    use subring_shm::queue::{Completer, QueueError};
    for mode in NotifyMode::ALL {
        let (
            FakePair {
                region: _region,
                mut service,
                ..
            },
            ours,
            mut client,
        ) = connect_to_fake_server(mode);
        service.complete(EchoResp::default()).unwrap();
        service.flush().unwrap();
        std::mem::forget(service);
        drop(ours);
        let start = Instant::now();
        let ready = client.wait_completions(4, Some(Duration::from_secs(10)));
        assert!(
            matches!(ready, Ok(1)),
            "{mode}: {ready:?} after {:?}",
            start.elapsed()
        );
        assert!(client.reap().unwrap().is_some(), "{mode}");
        let gone = client.wait_completions(4, Some(Duration::from_secs(10)));
        assert!(
            matches!(gone, Err(QueueError::PeerGone)),
            "{mode}: {gone:?}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{mode}: the death took {:?} to be seen",
            start.elapsed()
        );
    }
}

/// A welcome whose descriptors its modes do not use (an epoll instance to wait in beside a
/// futex-mode client, a kick eventfd beside a futex doorbell) is refused before any of them is
/// used: the client would otherwise set up, and could wait in, an epoll instance the server
/// made, and count on a hang-up watch its futex waits never see.
#[test]
fn a_welcome_with_descriptors_its_modes_do_not_use_is_refused() {
    // (That a refused welcome's descriptors are all closed is
    // `descriptors_beyond_the_limit_are_closed_by_the_client`'s to check, in `hostile.rs`:
    // counting this process's descriptors here raced the tests that hold lingering sockets
    // for seconds.)
    for (kick_fd, call_fd) in [(false, true), (true, false), (true, true)] {
        let (ours, theirs) = subring_shm::socket_pair().unwrap();
        let fake = std::thread::spawn(move || {
            let _hello = recv_raw(&ours);
            let mut pair = fake_pair(NotifyMode::Futex, 8, FAKE_POOL);
            pair.welcome.kick_fd = kick_fd;
            pair.welcome.call_fd = call_fd;
            let signal = subring_planes::interrupt::EventFdSignal::new().unwrap();
            if kick_fd {
                pair.fds.push(eventfds(1).pop().unwrap());
            }
            if call_fd {
                pair.fds.push(signal.peer_waiter().unwrap());
            }
            send_raw(&ours, &welcome_frame(&pair.welcome), &raw_fds(&pair.fds));
            // Kept until the client is done: the epoll instance watches its eventfd.
            (ours, pair, signal)
        });
        let options = ClientOptions::new(ECHO_PROTOCOL)
            .buffers(256, 8)
            .capacity(64)
            .mode(NotifyMode::Futex);
        let e = Client::<EchoReq, EchoResp>::from_socket(theirs, &options).unwrap_err();
        assert!(
            matches!(
                &e,
                Error::Malformed {
                    what: "welcome",
                    ..
                }
            ),
            "kick fd {kick_fd}, call fd {call_fd}: {e}"
        );
        drop(fake.join().unwrap());
    }
}

/// A server that answers a client asking for a futex doorbell (`untrusted_server`) with an
/// eventfd doorbell anyway, the eventfd its own, is refused before the eventfd is used
/// (`Error::Untrusted`): a server holding the eventfd a client's kicks write can clear its
/// `O_NONBLOCK` and fill its counter, and the client's next kick would block for good. (An
/// honest server gives such a client a futex doorbell or refuses it.) The same welcome is
/// taken by a client that did not ask.
#[test]
fn an_untrusting_client_refuses_an_eventfd_doorbell_it_did_not_ask_for() {
    for untrusting in [true, false] {
        let (ours, theirs) = subring_shm::socket_pair().unwrap();
        let fake = std::thread::spawn(move || {
            let hello = recv_raw(&ours);
            // The eventfd doorbell an epoll server gives a client that does not ask for a
            // futex one.
            let pair = fake_pair_kicked(NotifyMode::EventFd, NotifyMode::Futex, 8, FAKE_POOL);
            send_raw(&ours, &welcome_frame(&pair.welcome), &raw_fds(&pair.fds));
            // Kept until the client is done.
            (ours, pair, hello)
        });
        let mut options = ClientOptions::new(ECHO_PROTOCOL)
            .buffers(256, 8)
            .capacity(64)
            .mode(NotifyMode::Futex);
        if untrusting {
            options = options.untrusted_server();
        }
        let connected = Client::<EchoReq, EchoResp>::from_socket(theirs, &options);
        let (_, _, hello) = fake.join().unwrap();
        // The hello asked for a futex doorbell exactly when the client does not trust.
        match postcard::from_bytes::<ClientMsg>(&hello[7..]).unwrap() {
            ClientMsg::Hello(h) => assert_eq!(h.futex_doorbell, untrusting),
            other => panic!("expected a hello, got {other:?}"),
        }
        match (untrusting, connected) {
            (true, Err(Error::Untrusted { detail })) => {
                assert!(detail.contains("eventfd"), "{detail}")
            }
            (true, other) => panic!("expected Error::Untrusted, got {:?}", other.map(drop)),
            (false, Ok(client)) => assert_eq!(client.kick_mode(), NotifyMode::EventFd),
            (false, Err(e)) => panic!("a trusting client refused the welcome: {e}"),
        }
    }
}

/// A server that hangs up (its end of the socket closed) but keeps its memory mapped and keeps
/// clearing its closed word in the pair header: the client's wait still ends with `PeerGone`,
/// in every notify mode. The hang-up watcher's declaration also sets a word of the client's
/// own, which the server cannot reach; it used to set only the shared word, which the server
/// cleared again, and a futex-, adaptive- or spin-mode client slept on until its timeout, at
/// every wait.
#[test]
fn a_server_that_hangs_up_and_clears_its_closed_word_is_seen_gone() {
    use subring_planes::sync::{AtomicU32, Ordering::Relaxed};
    use subring_shm::queue::{Completer, QueueError};
    for mode in NotifyMode::ALL {
        let (
            FakePair {
                region, service, ..
            },
            ours,
            mut client,
        ) = connect_to_fake_server(mode);
        // The server's own mapping of the memfd, as its process has one.
        let header = ServerHeader::map(&region);
        let closed = header.closed();
        let stop = AtomicU32::new(0);
        let (outcome, took) = std::thread::scope(|s| {
            s.spawn(|| {
                while stop.load(Relaxed) == 0 {
                    closed.store(0, Relaxed);
                    std::thread::yield_now();
                }
            });
            drop(ours);
            let start = Instant::now();
            let outcome = client.wait(Some(Duration::from_secs(3)));
            let took = start.elapsed();
            stop.store(1, Relaxed);
            (outcome, took)
        });
        assert!(
            matches!(outcome, Err(QueueError::PeerGone)),
            "{mode}: a wait after the hang-up gave {outcome:?} after {took:?}"
        );
        assert!(
            took < Duration::from_secs(2),
            "{mode}: seen gone after {took:?}"
        );
        // The server never closes its side.
        std::mem::forget(service);
        drop(header);
    }
}

/// The server's pid a client reports is the kernel's (`SO_PEERCRED`), not the welcome's: a
/// fake server whose welcome says it is pid 1 is this process (which made the socket pair).
#[test]
fn the_servers_pid_is_the_kernels_not_the_welcomes() {
    let (_pair, ours, client) =
        connect_to_fake_server_with(NotifyMode::Futex, |w| w.server_pid = 1);
    assert_eq!(client.server_pid(), std::process::id());
    drop(ours);
}

/// A server that sets its closed word while a request is staged (`submit` says `PeerGone`),
/// then clears it: the client stays gone, and the staged request is never published. (Before,
/// the next `submit` published it: an async client's `send` had handed the entry back as
/// rejected, so a caller retrying it sent it twice, its buffer perhaps reused by then.)
#[test]
fn a_closed_word_cleared_after_a_submit_said_gone_leaves_the_client_gone() {
    use subring_planes::sync::Ordering::Relaxed;
    use subring_shm::queue::{QueueError, Submitter};
    let (
        FakePair {
            region,
            mut service,
            ..
        },
        _ours,
        mut client,
    ) = connect_to_fake_server(NotifyMode::Futex);
    let header = ServerHeader::map(&region);
    let closed = header.closed();
    let req = EchoReq {
        seq: 1,
        op: subring_shm::echo::EchoOp::PING,
        reserved: 0,
        buf: subring_shm::BufHandle::default(),
    };
    client.push(req).unwrap();
    closed.store(1, Relaxed);
    assert!(matches!(client.submit(), Err(QueueError::PeerGone)));
    closed.store(0, Relaxed);
    let again = client.submit();
    assert!(
        matches!(again, Err(QueueError::PeerGone)),
        "a submit after the word was cleared: {again:?}"
    );
    assert!(
        matches!(client.push(req), Err(r) if matches!(r.error, QueueError::PeerGone)),
        "a push after the server said it closed"
    );
    assert!(
        matches!(service.pop_request(), Ok(None)),
        "the staged request was never published"
    );
    drop(client);
    drop(header);
}

/// A server that closes its side with nothing posted, its socket still open: the event loop
/// the mio docs give (reap, then `arm`, then poll unless `arm` said "ready") learns it from
/// `arm`, in each mode a loop can wait in. `arm` used to say "ready" for the close, so the loop
/// reaped nothing, armed, and turned again without end, never polling.
#[test]
fn arm_says_the_server_is_gone_once_it_closed_with_nothing_to_reap() {
    use subring_shm::queue::{Completer, QueueError};
    for mode in [NotifyMode::EventFd, NotifyMode::Futex] {
        let (FakePair { service, .. }, _ours, mut client) = connect_to_fake_server(mode);
        drop(service);
        let mut turns = 0;
        let gone = loop {
            assert!(
                client.reap().unwrap().is_none(),
                "{mode}: nothing was posted"
            );
            match client.arm() {
                Ok(true) => client.disarm_edge(),
                Ok(false) => panic!("{mode}: armed to wait after the server closed"),
                Err(e) => break e,
            }
            turns += 1;
            assert!(
                turns < 1000,
                "{mode}: 1000 turns, each told to reap, none to wait"
            );
        };
        assert!(matches!(gone, QueueError::PeerGone), "{mode}: {gone:?}");
    }
}

/// `push_lending` lends its buffer only once the ring has taken the entry: a push into a full
/// ring hands the entry back and the buffer returns to the pool (lending first, as the
/// examples did, left it lent for good).
#[test]
fn a_refused_push_lending_leaves_no_buffer_lent() {
    use subring_shm::queue::{QueueError, Submitter};
    let (_pair, _ours, mut client) = connect_to_fake_server(NotifyMode::EventFd);
    let ping = |seq| EchoReq {
        seq,
        op: subring_shm::echo::EchoOp::PING,
        reserved: 0,
        buf: subring_shm::BufHandle::default(),
    };
    let mut pushed = 0;
    while client.push(ping(pushed)).is_ok() {
        pushed += 1;
        assert!(pushed <= 64, "a 64-entry ring took more than 64");
    }
    let free = client.pool().free_count();
    let buf = client.alloc().unwrap();
    let refused = client.push_lending(buf, |buf| EchoReq { buf, ..ping(99) });
    assert!(
        matches!(refused, Err(ref r) if matches!(r.error, QueueError::Full) && r.entry.seq == 99),
        "{refused:?}"
    );
    assert_eq!(
        client.pool().free_count(),
        free,
        "the buffer is back in the pool"
    );
}

/// The first page of a fake server's memfd, mapped as the server's process would map it: the
/// queue pair's header, whose fourth word is the service's closed word.
struct ServerHeader(std::ptr::NonNull<std::ffi::c_void>);

impl ServerHeader {
    const LEN: usize = 4096;

    fn map(region: &subring_shm::Region) -> Self {
        // SAFETY: a fresh shared mapping of the memfd's first page (the region is larger),
        // reached only through atomic words inside it and unmapped at drop.
        let map = unsafe {
            nix::sys::mman::mmap(
                None,
                std::num::NonZeroUsize::new(Self::LEN).unwrap(),
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED,
                region.fd().unwrap(),
                0,
            )
        }
        .unwrap();
        ServerHeader(map)
    }

    /// The service's closed word.
    fn closed(&self) -> &subring_planes::sync::AtomicU32 {
        // SAFETY: offset 12 is inside the mapped page and 4-aligned; the client reaches this
        // word only atomically; the mapping lives as long as `self`.
        unsafe { &*self.0.as_ptr().cast::<u8>().add(12).cast() }
    }
}

impl Drop for ServerHeader {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, no longer used (`closed` borrows `self`).
        unsafe { nix::sys::mman::munmap(self.0, Self::LEN) }.unwrap();
    }
}

/// A server that answers a region registration after the client's control timeout: the
/// connection ends (the client is gone), rather than every later registration reading the
/// answer to the one before it. (Before, the late `Registered` for the first region was read
/// as the second's answer: `Malformed`, and each later one one behind.)
#[test]
fn a_registration_answered_late_ends_the_connection() {
    use subring_shm::queue::{QueueError, Submitter};
    use subring_shm::{Region, RegionOptions};
    let pair = fake_pair(NotifyMode::Futex, 32, FAKE_POOL);
    let (ours, theirs) = subring_shm::socket_pair().unwrap();
    send_raw(&ours, &welcome_frame(&pair.welcome), &raw_fds(&pair.fds));
    let mut options = ClientOptions::new(ECHO_PROTOCOL)
        .buffers(256, 32)
        .capacity(64)
        .mode(NotifyMode::Futex);
    options.control_timeout = Duration::from_millis(200);
    let mut client = Client::<EchoReq, EchoResp>::from_socket(theirs, &options).unwrap();
    let region = |id| {
        std::sync::Arc::new(Region::memfd("extra", 4096, RegionOptions::new().id(id)).unwrap())
    };
    let first = client.register_region(region(5));
    assert!(
        first.is_err(),
        "no answer within the control timeout: {first:?}"
    );
    // The answer, late.
    let late = postcard::to_stdvec(&ServerMsg::Registered { id: 5 }).unwrap();
    send_raw(
        &ours,
        &frame(proto::PROTOCOL_VERSION, proto::KIND_MESSAGE, &late),
        &[],
    );
    let second = client.register_region(region(6));
    assert!(
        matches!(second, Err(subring_shm::Error::Queue(QueueError::PeerGone))),
        "a registration after a late answer: {second:?}"
    );
    let req = EchoReq {
        seq: 1,
        op: subring_shm::echo::EchoOp::PING,
        reserved: 0,
        buf: subring_shm::BufHandle::default(),
    };
    assert!(matches!(client.push(req), Err(r) if matches!(r.error, QueueError::PeerGone)));
    drop(pair);
}
