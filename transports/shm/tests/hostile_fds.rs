//! Descriptors as a weapon against fairness: peers that send the server messages full of
//! descriptors (253 in each, the most one carries), every one of which the server must close,
//! and hang up with their queues full of them, beside an honest client whose round trips must
//! not notice. Each test failed before its fix: the server's event loop checked the kind of
//! each descriptor and closed it, and read out the queue of each connection it released, while
//! every other client waited.

// The tests' own bookkeeping (a stop flag) is not a protocol under test: std types.
#![allow(clippy::disallowed_types)]

mod support;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use subring_shm::proto::{self, ClientMsg};
use subring_shm::NotifyMode;
use support::*;

/// The most descriptors one message carries (`SCM_MAX_FD`).
const FDS_PER_MESSAGE: usize = 253;

/// Sends `msg` with `fd` 253 times over as its descriptors, without blocking: whether the
/// socket took it (`None` once it is closed).
fn send_full(socket: RawFd, msg: &[u8], fd: RawFd) -> Option<bool> {
    let fds = [fd; FDS_PER_MESSAGE];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    match sendmsg::<()>(
        socket,
        &[std::io::IoSlice::new(msg)],
        &cmsg,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        None,
    ) {
        Ok(_) => Some(true),
        Err(Errno::EAGAIN | Errno::EINTR) => Some(false),
        Err(_) => None,
    }
}

/// Runs `hostile` on a thread of its own while an honest client makes round trips on the same
/// server for 1.5 s; returns the honest client's count and worst, and what `hostile` returns
/// (how many messages it sent).
fn beside(
    test: &str,
    hostile: impl FnOnce(&std::path::Path, &AtomicBool) -> u64 + Send + 'static,
) -> (u64, Duration, u64) {
    let before = open_fds();
    let (srv, path) = echo_server(test);
    let mut honest = connect_retry(&path, &options(NotifyMode::EventFd), WAIT);
    let stop = Arc::new(AtomicBool::new(false));
    let thread = std::thread::spawn({
        let (stop, path) = (stop.clone(), path.clone());
        move || hostile(&path, &stop)
    });
    let (count, worst) = honest_round_trips(&mut honest, Duration::from_millis(1500));
    stop.store(true, Relaxed);
    let sent = thread.join().unwrap();
    drop(honest);
    drop(srv);
    // What the closers still hold when the test ends would leave the next test of this process
    // short of descriptors.
    fds_back_to(before + 16, "after the hostile peer");
    (count, worst, sent)
}

/// The descriptor the peers send: `/dev/null` (neither a memfd nor an eventfd).
fn dev_null() -> OwnedFd {
    std::fs::File::open("/dev/null").unwrap().into()
}

/// A client, connected and welcomed, that fills its control socket with registrations of 253
/// descriptors each (the first is refused and ends its connection; the rest are queued behind
/// it), again and again: an honest client's round trips stay under 100 ms. Before, the server
/// closed the descriptors of each queue on its event loop: about 200 ms without serving anyone,
/// at every such client.
#[test]
fn clients_that_send_descriptors_by_the_thousand_do_not_stall_the_others() {
    let _serial = one_at_a_time();
    let (count, worst, sent) = beside("fds-registrations", |path, stop| {
        let body = postcard::to_stdvec(&ClientMsg::RegisterRegion { id: 7, len: 4096 }).unwrap();
        let msg = frame(proto::PROTOCOL_VERSION, proto::KIND_MESSAGE, &body);
        let null = dev_null();
        let mut sent = 0;
        while !stop.load(Relaxed) {
            let client = connect_retry(path, &options(NotifyMode::EventFd), WAIT);
            let control = client.control_fd();
            while let Some(true) = send_full(control.as_raw_fd(), &msg, null.as_raw_fd()) {
                sent += 1;
            }
            // Until the server hangs up (or the test ends).
            while !stop.load(Relaxed)
                && send_full(control.as_raw_fd(), &msg, null.as_raw_fd()).is_some()
            {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        sent
    });
    eprintln!(
        "beside {sent} registrations of 253 descriptors: {count} round trips, worst {worst:?}"
    );
    assert!(
        sent > 20,
        "the registrations never got going ({sent} messages)"
    );
    assert!(
        worst < Duration::from_millis(100),
        "an honest round trip took {worst:?} beside {sent} registrations of 253 descriptors"
    );
}

/// Connections that say nothing, fill their queue with messages of 253 descriptors each and
/// hang up, one after another as fast as they can: an honest client's round trips stay under
/// 250 ms (and its rate is printed). Before, the server's event loop fell behind for good: an
/// honest round trip waited out its 2 s.
#[test]
fn connections_that_hang_up_full_of_descriptors_do_not_stall_the_others() {
    let _serial = one_at_a_time();
    let (count, worst, sent) = beside("fds-hangups", |path, stop| {
        let null = dev_null();
        let mut sent = 0;
        while !stop.load(Relaxed) {
            let Some(s) = try_connect(path) else {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            };
            while let Some(true) = send_full(s.as_raw_fd(), b"", null.as_raw_fd()) {
                sent += 1;
            }
        }
        sent
    });
    eprintln!("beside hang-ups after {sent} messages of 253 descriptors: {count} round trips, worst {worst:?}");
    assert!(
        sent > 1000,
        "the hang-ups never got going ({sent} messages)"
    );
    assert!(
        worst < Duration::from_millis(250),
        "an honest round trip took {worst:?} beside hang-ups after {sent} messages of 253 descriptors"
    );
}
