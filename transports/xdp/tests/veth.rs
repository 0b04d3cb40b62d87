//! AF_XDP against the real kernel: a veth pair between two network namespaces that each test
//! creates and removes, frames sent from the far end with a packet socket and received through
//! the redirect program, and the other way round. Without the privileges (root, `ip`), each
//! test says so and skips.

#[path = "../../../tests/support/netns.rs"]
mod netns;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netns::{End, Topology};
use subring_planes::interrupt::NotifyMode;
use subring_xdp::{
    AttachMode, BindMode, RingKind, RxFrame, TxFrame, XdpError, XdpProgram, XskConfig, XskSocket,
};

/// The EtherType of the test's frames (IEEE local experimental).
const ETHERTYPE: u16 = 0x88b5;

/// Namespaces `a` and `b` joined by a veth pair `x`-`y`, or `None` (the test skips).
fn pair() -> Option<Topology> {
    Topology::create_or_skip("srx", &["a", "b"], &[("a", "x", "b", "y")])
}

/// The two ends: `x` in `a`, `y` in `b`.
fn ends(t: &Topology) -> [End; 2] {
    [t.end("a", "x"), t.end("b", "y")]
}

fn packet_socket(ifindex: u32) -> OwnedFd {
    netns::packet_socket(ifindex, ETHERTYPE).unwrap()
}

fn send_raw(fd: &OwnedFd, bytes: &[u8]) {
    netns::send_raw(fd, bytes).unwrap()
}

use netns::recv_raw;

/// Frame `i` of a test: broadcast, the test's EtherType, then a pattern of `len` bytes in all.
fn frame(i: usize, len: usize) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend((14..len).map(|k| (k * 13 + i * 7) as u8));
    f
}

/// The receiving side in namespace `a`: the program, a socket on queue 0, its fill ring full.
fn receiver(a: &End, cfg: XskConfig) -> Result<(XdpProgram, XskSocket), XdpError> {
    let ifindex = a.enter().unwrap();
    let prog = XdpProgram::attach(ifindex, 1, AttachMode::Generic)?;
    // The kernel may still hold the queue for a socket the previous case just closed (the
    // program's XSKMAP, which referenced it, is freed after the close returns): a bind then
    // fails with EBUSY for a moment. Tried again for at most two seconds.
    let start = Instant::now();
    let mut sock = loop {
        match XskSocket::bind(ifindex, 0, cfg.clone()) {
            Err(XdpError::Os { source, .. })
                if source.raw_os_error() == Some(libc::EBUSY)
                    && start.elapsed() < Duration::from_secs(2) =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => break other?,
        }
    };
    prog.register(0, sock.fd())?;
    sock.fill(usize::MAX)?;
    Ok((prog, sock))
}

/// Collects frames of the test's EtherType until `n` came or `timeout` passed.
fn collect(sock: &mut XskSocket, n: usize, timeout: Duration) -> Vec<RxFrame> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut batch = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        sock.wait_rx(Duration::from_millis(50)).unwrap();
        sock.recv(&mut batch, 64).unwrap();
        for f in batch.drain(..) {
            if f.bytes().get(12..14).map(|b| b.to_vec()) == Some(ETHERTYPE.to_be_bytes().to_vec()) {
                got.push(f);
            }
        }
        sock.fill(usize::MAX).unwrap();
    }
    got
}

fn received_every_byte(len: usize, need_wakeup: bool) {
    let Some(p) = pair() else { return };
    let cfg = XskConfig {
        need_wakeup,
        mode: BindMode::Copy,
        ..XskConfig::default()
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let b = ends(&p)[1].clone();
    let sender = std::thread::spawn(move || {
        let fd = packet_socket(b.enter().unwrap());
        rx.recv_timeout(Duration::from_secs(20))
            .expect("receiver ready");
        for i in 0..32 {
            send_raw(&fd, &frame(i, len));
        }
    });
    let a = ends(&p)[0].clone();
    let receiver_thread = std::thread::spawn(move || {
        let (_prog, mut sock) = receiver(&a, cfg).expect("AF_XDP receiver");
        assert!(!sock.zero_copy(), "veth in generic mode copies");
        tx.send(()).unwrap();
        let got = collect(&mut sock, 32, Duration::from_secs(10));
        assert_eq!(got.len(), 32, "every frame arrived");
        for (i, f) in got.iter().enumerate() {
            assert_eq!(f.bytes().to_vec(), frame(i, len), "frame {i}, every byte");
        }
        let st = sock.stats();
        assert_eq!(st.refused, 0);
        // In copy mode the kernel never asks for a fill-ring wake-up: with need-wakeup every
        // doorbell is skipped; without it there is none to skip.
        assert_eq!(st.fill_wakeups, 0, "{st:?}");
        assert_eq!(st.fill_wakeups_skipped > 0, need_wakeup, "{st:?}");
        assert!(st.rx >= 32, "counted: {st:?}");
    });
    sender.join().unwrap();
    receiver_thread.join().unwrap();
}

#[test]
fn receives_64_byte_frames_every_byte_checked() {
    received_every_byte(64, true);
}

#[test]
fn receives_1500_byte_frames_every_byte_checked() {
    received_every_byte(1500, true);
}

#[test]
fn receives_without_need_wakeup() {
    received_every_byte(64, false);
}

/// Two frames in the fill ring, ten sent: two arrive, the kernel counts the rest as dropped
/// for want of fill frames, and waiting for more ends at its timeout.
#[test]
fn a_starved_fill_ring_drops_and_counts_and_nothing_hangs() {
    let Some(p) = pair() else { return };
    let (tx, rx) = std::sync::mpsc::channel();
    let b = ends(&p)[1].clone();
    let sender = std::thread::spawn(move || {
        let fd = packet_socket(b.enter().unwrap());
        rx.recv_timeout(Duration::from_secs(20))
            .expect("receiver ready");
        for i in 0..10 {
            send_raw(&fd, &frame(i, 64));
        }
    });
    let a = ends(&p)[0].clone();
    let r = std::thread::spawn(move || {
        let ifindex = a.enter().unwrap();
        let prog = XdpProgram::attach(ifindex, 1, AttachMode::Generic).unwrap();
        let mut sock = XskSocket::bind(ifindex, 0, XskConfig::default()).unwrap();
        prog.register(0, sock.fd()).unwrap();
        assert_eq!(sock.fill(2).unwrap(), 2);
        tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < 2 && Instant::now() < deadline {
            sock.wait_rx(Duration::from_millis(50)).unwrap();
            sock.recv(&mut got, 64).unwrap();
        }
        assert_eq!(got.len(), 2);
        // No more frames lent: nothing more arrives, and the wait ends.
        let t0 = Instant::now();
        assert!(!sock.wait_rx(Duration::from_millis(200)).unwrap());
        assert!(t0.elapsed() < Duration::from_secs(5));
        let ks = sock.kernel_stats().unwrap();
        assert!(
            ks.rx_dropped + ks.rx_fill_ring_empty_descs > 0,
            "the kernel counted the drops: {ks:?}"
        );
    });
    sender.join().unwrap();
    r.join().unwrap();
}

/// A producer index the kernel could not have written is refused. (Nothing registered, nothing
/// filled: no frame of the kernel's can overwrite the forged index.)
#[test]
fn a_forged_rx_producer_index_is_a_typed_error() {
    let Some(p) = pair() else { return };
    let a = ends(&p)[0].clone();
    std::thread::spawn(move || {
        let mut sock = XskSocket::bind(a.enter().unwrap(), 0, XskConfig::default()).unwrap();
        // SAFETY: the socket is dropped right after.
        unsafe { sock.forge_rx_producer_for_tests(1 << 30) };
        let e = sock.recv(&mut Vec::new(), 64).unwrap_err();
        assert!(
            matches!(
                e,
                XdpError::CorruptIndex {
                    ring: RingKind::Rx,
                    word: "producer",
                    ..
                }
            ),
            "{e}"
        );
        assert!(matches!(
            sock.wait_rx(Duration::from_millis(10)),
            Err(XdpError::CorruptIndex { .. })
        ));
    })
    .join()
    .unwrap();
}

/// A frame of another socket's UMEM, or one with nothing to send, is handed back refused.
#[test]
fn foreign_and_empty_frames_are_refused() {
    let Some(p) = pair() else { return };
    let a = ends(&p)[0].clone();
    std::thread::spawn(move || {
        let ifindex = a.enter().unwrap();
        let mut sock = XskSocket::bind(ifindex, 0, XskConfig::default()).unwrap();
        let other = XskSocket::bind(
            ifindex,
            0,
            XskConfig {
                frames: 64,
                ..XskConfig::default()
            },
        );
        // A second socket on the same queue may be refused (EBUSY); a plain pool serves too.
        let region = Arc::new(
            subring_planes::data::Region::memfd("foreign", 1 << 16, Default::default()).unwrap(),
        );
        let pool = subring_planes::data::BufferPool::new(region, 0, 2048, 8).unwrap();
        let mut foreign = match &other {
            Ok(o) => o.alloc().unwrap(),
            Err(_) => pool.alloc().unwrap(),
        };
        foreign.fill_from(&frame(0, 64));
        let (back, e) = sock.queue_tx(TxFrame::new(foreign)).unwrap_err();
        assert!(matches!(e, XdpError::ForeignFrame), "{e}");
        drop(back);
        let empty = sock.alloc().unwrap();
        let (_, e) = sock.queue_tx(TxFrame::new(empty)).unwrap_err();
        assert!(matches!(e, XdpError::Config(_)), "{e}");
        assert_eq!(sock.tx_in_flight(), 0);
    })
    .join()
    .unwrap();
}

/// Forty frames sent from the UMEM (more than the kernel sends per doorbell in copy mode)
/// arrive whole at the far end, and come back through the completion ring; then frames
/// received from the far end are sent back as they lie (`into_tx`, an offset into the frame).
#[test]
fn transmits_every_byte_and_echoes_received_frames_in_place() {
    let Some(p) = pair() else { return };
    const N: usize = 40;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let b = ends(&p)[1].clone();
    let far = std::thread::spawn(move || {
        let fd = packet_socket(b.enter().unwrap());
        ready_tx.send(()).unwrap();
        let sent: Vec<_> = (0..N)
            .map(|_| recv_raw(&fd, Duration::from_secs(10)).expect("a frame"))
            .collect();
        // Now the echo: four frames out, four back.
        go_rx.recv_timeout(Duration::from_secs(20)).unwrap();
        for i in 0..4 {
            send_raw(&fd, &frame(100 + i, 200));
        }
        let echoed: Vec<_> = (0..4)
            .map(|_| recv_raw(&fd, Duration::from_secs(10)).expect("an echo"))
            .collect();
        (sent, echoed)
    });
    ready_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let a = ends(&p)[0].clone();
    std::thread::spawn(move || {
        let ifindex = a.enter().unwrap();
        let prog = XdpProgram::attach(ifindex, 1, AttachMode::Generic).unwrap();
        let mut sock = XskSocket::bind(ifindex, 0, XskConfig::default()).unwrap();
        for i in 0..N {
            let mut b = sock.alloc().unwrap();
            b.fill_from(&frame(i, 60 + i * 30));
            sock.queue_tx(TxFrame::new(b)).map_err(|(_, e)| e).unwrap();
        }
        assert_eq!(sock.tx_in_flight(), N);
        sock.flush_tx().unwrap();
        sock.drain_tx(Duration::from_secs(10)).unwrap();
        assert_eq!(sock.stats().tx_completed, N as u64);
        assert!(sock.stats().tx_kicks > 0);
        prog.register(0, sock.fd()).unwrap();
        sock.fill(usize::MAX).unwrap();
        go_tx.send(()).unwrap();
        let got = collect(&mut sock, 4, Duration::from_secs(10));
        assert_eq!(got.len(), 4);
        for f in got {
            sock.queue_tx(f.into_tx()).map_err(|(_, e)| e).unwrap();
        }
        sock.flush_tx().unwrap();
        sock.drain_tx(Duration::from_secs(10)).unwrap();
        assert_eq!(sock.stats().refused, 0);
        // Nothing in flight: any timeout returns at once, the longest too (it panicked adding
        // the timeout to the clock).
        sock.drain_tx(Duration::MAX).unwrap();
    })
    .join()
    .unwrap();
    let (sent, echoed) = far.join().unwrap();
    for (i, f) in sent.iter().enumerate() {
        assert_eq!(f, &frame(i, 60 + i * 30), "frame {i}");
    }
    for (i, f) in echoed.iter().enumerate() {
        assert_eq!(f, &frame(100 + i, 200), "echo {i}");
    }
}

/// A batch queued while the completion ring is full of unreaped completions: the kernel takes
/// none (`EAGAIN`, as when its budget runs out), and `flush_tx` reaps the completions to make
/// room and sends it. (Before, it made `sendto` calls that sent nothing, and said `Ok`.)
#[test]
fn a_flush_behind_a_full_completion_ring_sends() {
    use subring_planes::sync::{AtomicU64, Ordering};
    let Some(p) = pair() else { return };
    const N: usize = 64;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let received = Arc::new(AtomicU64::new(0));
    let b = ends(&p)[1].clone();
    let far = std::thread::spawn({
        let received = received.clone();
        move || {
            let fd = packet_socket(b.enter().unwrap());
            ready_tx.send(()).unwrap();
            let mut got = Vec::new();
            while got.len() < 2 * N {
                let Some(f) = recv_raw(&fd, Duration::from_secs(5)) else {
                    break;
                };
                got.push(f);
                received.fetch_add(1, Ordering::Release);
            }
            got
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let a = ends(&p)[0].clone();
    let (arrived, stats) = std::thread::spawn(move || {
        let cfg = XskConfig {
            ring_size: N as u32,
            frames: 4 * N as u32,
            ..XskConfig::default()
        };
        let mut sock = XskSocket::bind(a.enter().unwrap(), 0, cfg).unwrap();
        for batch in 0..2 {
            for i in 0..N {
                let mut b = sock.alloc().unwrap();
                b.fill_from(&frame(batch * N + i, 64));
                sock.queue_tx(TxFrame::new(b)).map_err(|(_, e)| e).unwrap();
            }
            // No reap between the batches: the first fills the completion ring.
            sock.flush_tx().unwrap();
        }
        let stats = sock.stats();
        // What the two flushes sent, before anything else kicks or reaps.
        let start = Instant::now();
        while received.load(Ordering::Acquire) < 2 * N as u64
            && start.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let arrived = received.load(Ordering::Acquire);
        sock.drain_tx(Duration::from_secs(10)).unwrap();
        (arrived, stats)
    })
    .join()
    .unwrap();
    let got = far.join().unwrap();
    assert_eq!(
        arrived,
        2 * N as u64,
        "frames the two flushes sent ({stats:?})"
    );
    for (i, f) in got.iter().enumerate() {
        assert_eq!(f, &frame(i, 64), "frame {i}");
    }
}

/// With the link down, queued frames never complete: the wait ends with `TxStalled`, saying
/// the link is down.
#[test]
fn completions_that_never_come_end_in_a_bounded_wait() {
    let Some(p) = pair() else { return };
    let a = ends(&p)[0].clone();
    std::thread::spawn(move || {
        let mut sock = XskSocket::bind(a.enter().unwrap(), 0, XskConfig::default()).unwrap();
        a.set_link(false).unwrap();
        let mut b = sock.alloc().unwrap();
        b.fill_from(&frame(0, 64));
        sock.queue_tx(TxFrame::new(b)).map_err(|(_, e)| e).unwrap();
        assert!(matches!(sock.flush_tx(), Err(XdpError::LinkDown)));
        let t0 = Instant::now();
        let e = sock.drain_tx(Duration::from_millis(300)).unwrap_err();
        assert!(
            matches!(
                e,
                XdpError::TxStalled {
                    pending: 1,
                    link_down: true,
                    ..
                }
            ),
            "{e}"
        );
        assert!(t0.elapsed() < Duration::from_secs(5));
    })
    .join()
    .unwrap();
}

/// `wait` follows the socket's notify mode: each mode times out when nothing comes and wakes
/// for a frame sent while it waits; spin never makes a system call, eventfd mode sleeps in
/// `poll`; futex mode is refused at bind.
#[test]
fn wait_follows_the_notify_mode() {
    let Some(p) = pair() else { return };
    let [a, b] = ends(&p);
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let sender = std::thread::spawn(move || {
        let fd = packet_socket(b.enter().unwrap());
        // One frame per signal, 20 ms after it (the receiver is waiting by then).
        while go_rx.recv_timeout(Duration::from_secs(30)).is_ok() {
            std::thread::sleep(Duration::from_millis(20));
            send_raw(&fd, &frame(1, 64));
        }
    });
    let receiver_thread = std::thread::spawn(move || {
        let futex = XskConfig {
            notify: NotifyMode::Futex,
            ..XskConfig::default()
        };
        match receiver(&a, futex) {
            Err(XdpError::Config(why)) => assert!(why.contains("futex"), "{why}"),
            other => panic!("futex mode refused at bind, not {:?}", other.map(|_| ())),
        }
        for mode in [NotifyMode::Spin, NotifyMode::Adaptive, NotifyMode::EventFd] {
            let cfg = XskConfig {
                notify: mode,
                ..XskConfig::default()
            };
            let (_prog, mut sock) = receiver(&a, cfg).expect("AF_XDP receiver");
            assert_eq!(sock.notify_mode(), mode);
            // Drain whatever the link's coming up sent (IPv6 neighbour discovery, say).
            let mut batch = Vec::new();
            while sock.wait(Duration::from_millis(100)).unwrap() {
                sock.recv(&mut batch, 64).unwrap();
                batch.clear();
                sock.fill(usize::MAX).unwrap();
            }
            // With nothing sent, a wait times out. The link's own traffic (IPv6 neighbour
            // discovery, say) can still trickle in after the drain: such a frame is taken and
            // the quiet window tried again, a bounded number of times.
            let mut strays = 0;
            loop {
                let start = Instant::now();
                if !sock.wait(Duration::from_millis(50)).unwrap() {
                    let waited = start.elapsed();
                    assert!(
                        waited >= Duration::from_millis(45) && waited < Duration::from_secs(5),
                        "{mode}: timed out after {waited:?}"
                    );
                    break;
                }
                strays += 1;
                assert!(strays < 20, "{mode}: frames kept coming with nothing sent");
                sock.recv(&mut batch, 64).unwrap();
                assert!(
                    !batch.iter().any(|f| f.bytes().to_vec() == frame(1, 64)),
                    "{mode}: the test's frame came before it was sent"
                );
                batch.clear();
                sock.fill(usize::MAX).unwrap();
            }
            // A wait shorter than `poll`'s millisecond still waits its time (it was rounded
            // down to a `poll` that returned at once).
            let start = Instant::now();
            if !sock.wait(Duration::from_micros(900)).unwrap() {
                let waited = start.elapsed();
                assert!(
                    waited >= Duration::from_micros(900),
                    "{mode}: a 900 us wait timed out after {waited:?}"
                );
            }
            go_tx.send(()).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut ours = false;
            while !ours {
                assert!(Instant::now() < deadline, "{mode}: the frame never came");
                if !sock.wait(Duration::from_secs(5)).unwrap() {
                    continue;
                }
                sock.recv(&mut batch, 64).unwrap();
                ours = batch.iter().any(|f| f.bytes().to_vec() == frame(1, 64));
                batch.clear();
                sock.fill(usize::MAX).unwrap();
            }
            let polls = sock.stats().rx_polls;
            match mode {
                NotifyMode::Spin => assert_eq!(polls, 0, "spin makes no system call"),
                NotifyMode::EventFd => assert!(polls >= 2, "eventfd mode polls: {polls}"),
                _ => {}
            }
        }
        drop(go_tx);
    });
    receiver_thread.join().unwrap();
    sender.join().unwrap();
}
