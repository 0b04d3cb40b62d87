//! Limits per user: one user's clients, or its silent connections, cannot take every place
//! from another user's. The other user is a thread that switched to an unprivileged user id
//! before it connected (the kernel records the connecting thread's credentials, which the
//! server reads with `SO_PEERCRED`), so the parts with another user need root; without it
//! they say so and are skipped. A test binary of its own: such a thread changes the whole
//! process's dumpable flag.

mod support;

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::MsgFlags;
use subring_shm::echo::{EchoReq, EchoResp};
use subring_shm::proto::{self, ClientMsg, Refusal, ServerMsg};
use subring_shm::{Client, Error, NotifyMode, ServerConfig};
use support::*;

/// The user the other side runs as (`nobody` on most systems; only its number matters).
const OTHER: u32 = 65534;

/// Runs `f` on a thread of its own whose real, effective and saved ids are `uid` (and its
/// group ids too), or says why it cannot. The raw system calls change the calling thread only,
/// as the kernel keeps credentials per thread (the C library's wrappers would change every
/// thread of the test process); the thread ends with `f`.
fn as_user<T: Send + 'static>(
    uid: u32,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    std::thread::spawn(move || {
        let check = |what: &str, r: libc::c_long| match r {
            0 => Ok(()),
            _ => Err(format!("{what}: {}", std::io::Error::last_os_error())),
        };
        // SAFETY: a system call that empties this thread's supplementary groups (a null list
        // of length 0: nothing is read).
        let r = unsafe { libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) };
        check("setgroups", r)?;
        // SAFETY: system calls that change this thread's credentials and touch no memory.
        let r = unsafe { libc::syscall(libc::SYS_setresgid, uid, uid, uid) };
        check(&format!("setresgid({uid})"), r)?;
        // SAFETY: as above.
        let r = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
        check(&format!("setresuid({uid})"), r)?;
        Ok(f())
    })
    .join()
    .expect("the other user's thread panicked")
}

/// Whether user [`OTHER`] can reach the socket at `path` (which needs this process to be able
/// to switch a thread to it: root, in a namespace that maps it); says why not if it cannot.
fn other_user_reaches(path: &Path) -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory.
    if unsafe { libc::geteuid() } == OTHER {
        eprintln!("skipped: the test runs as user {OTHER}, the other user it would connect as");
        return false;
    }
    let probe = path.to_path_buf();
    let reached = as_user(OTHER, move || {
        std::fs::metadata(&probe).map_err(|e| format!("{}: {e}", probe.display()))
    });
    match reached {
        Ok(Ok(_)) => true,
        Ok(Err(e)) | Err(e) => {
            eprintln!("skipped: cannot connect as user {OTHER} ({e})");
            false
        }
    }
}

/// An echo server at a fresh path that any user may connect to.
fn server(test: &str, tune: impl FnOnce(&mut ServerConfig)) -> (support::EchoServer, PathBuf) {
    let (server, path) = echo_server_with(test, tune);
    // Connecting takes write permission on the socket file, and search on its directories.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let dir = path.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    (server, path)
}

fn connect(path: &Path) -> Result<Client<EchoReq, EchoResp>, Error> {
    Client::connect(path, &options(NotifyMode::EventFd))
}

/// With `max_clients_per_user` at 2 of 4 places, a user's third client is refused, naming the
/// user and the limit (this part runs as any user), and another user still gets in and is
/// served (this part needs root).
#[test]
fn one_user_cannot_take_every_client_place() {
    let (server, path) = server("per-user-clients", |c| {
        c.max_clients = 4;
        c.max_clients_per_user = 2;
    });
    let ours: Vec<_> = (0..2).map(|_| connect(&path).unwrap()).collect();
    let err = connect(&path).unwrap_err();
    // SAFETY: geteuid has no preconditions and touches no memory.
    let me = unsafe { libc::geteuid() };
    match &err {
        Error::Refused(Refusal::UserBusy {
            uid: Some(uid),
            max_per_user: 2,
        }) if *uid == me => {}
        other => panic!("a third client of user {me}: {other}"),
    }
    assert!(
        err.to_string().contains(&format!("2 clients of user {me}")),
        "{err}"
    );
    if other_user_reaches(&path) {
        let other_path = path.clone();
        let mut other = as_user(OTHER, move || connect(&other_path))
            .unwrap()
            .unwrap();
        echo_many(&mut other, 8, 2, 32);
        drop(other);
    }
    drop(ours);
    let stats = server.stop().unwrap().stats();
    assert_eq!(stats.user_busy, 1, "{stats:?}");
}

/// By default only `max_clients` counts: one user's clients fill every place (the default
/// limit per user was once a fixed 64, which refused the 65th client of a server allowing more).
#[test]
fn one_users_clients_are_limited_only_by_max_clients() {
    let (server, path) = server("per-user-default", |c| c.max_clients = 66);
    let clients: Vec<_> = (0..66)
        .map(|k| connect(&path).unwrap_or_else(|e| panic!("client {k}: {e}")))
        .collect();
    let err = connect(&path).unwrap_err();
    assert!(
        matches!(err, Error::Refused(Refusal::Busy { max_clients: 66 })),
        "{err}"
    );
    drop(clients);
    server.stop().unwrap();
}

/// A connection of another user that has not said hello yet survives a flood of silent
/// connections from one user past `max_handshakes`: the flood pushes out its own oldest ones,
/// and the other user's connection is welcomed when it says hello. (Pushing out the oldest
/// of all, as the server did before, closed it at the flood's fourth connection.)
#[test]
fn silent_connections_of_one_user_push_out_their_own() {
    let (server, path) = server("per-user-handshakes", |c| {
        c.max_handshakes = 4;
        c.handshake_timeout = Duration::from_secs(10);
    });
    if !other_user_reaches(&path) {
        return;
    }
    let other_path = path.clone();
    let other = as_user(OTHER, move || raw_connect(&other_path)).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    let flood: Vec<_> = (0..8)
        .map(|_| {
            let c = raw_connect(&path);
            // Let the server admit it before the next one arrives.
            std::thread::sleep(Duration::from_millis(30));
            c
        })
        .collect();
    // The flood's first five made room for its later ones.
    for (k, s) in flood[..5].iter().enumerate() {
        assert!(recv_raw(s).is_empty(), "flood connection {k} got an answer");
    }
    let body = postcard::to_stdvec(&ClientMsg::Hello(hello())).unwrap();
    let hello = frame(proto::PROTOCOL_VERSION, proto::KIND_MESSAGE, &body);
    let sent = nix::sys::socket::send(other.as_raw_fd(), &hello, MsgFlags::MSG_NOSIGNAL);
    assert!(
        sent.is_ok(),
        "the other user's connection was closed by the flood ({sent:?})"
    );
    let answer = recv_raw(&other);
    assert!(
        !answer.is_empty(),
        "the other user's connection was closed by the flood"
    );
    assert!(
        matches!(decode(&answer), ServerMsg::Welcome(_)),
        "{:?}",
        decode(&answer)
    );
    drop((other, flood));
    let stats = server.stop().unwrap().stats();
    assert_eq!(stats.made_room, 5, "{stats:?}");
}

/// 64 KiB checksums of a client's own region (id 3): each costs the server far more than the
/// client pays to ask for it, so the server is the bottleneck.
fn checksum_request(seq: u64) -> EchoReq {
    const LEN: u32 = 64 << 10;
    EchoReq {
        seq,
        op: subring_shm::echo::EchoOp::SUM,
        reserved: 0,
        buf: subring_shm::BufHandle {
            offset: (seq % 15) * u64::from(LEN),
            len: LEN,
            region: 3,
        },
    }
}

/// Keeps every client's ring full of [`checksum_request`]s until `answers` have come back in
/// all; returns how many each client got.
fn answers_per_client(clients: &mut [Client<EchoReq, EchoResp>], answers: u64) -> Vec<u64> {
    use subring_shm::echo::EchoStatus;
    use subring_shm::queue::{Completer, Submitter};
    let mut got = vec![0u64; clients.len()];
    let deadline = std::time::Instant::now() + WAIT;
    let mut seq = 0;
    while got.iter().sum::<u64>() < answers {
        assert!(
            std::time::Instant::now() < deadline,
            "only {got:?} answers within {WAIT:?}"
        );
        for (k, c) in clients.iter_mut().enumerate() {
            while c.push(checksum_request(seq)).is_ok() {
                seq += 1;
            }
            c.submit().unwrap();
            while let Some(r) = c.reap().unwrap() {
                assert_eq!(r.status, EchoStatus::OK, "{r:?}");
                got[k] += 1;
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    got
}

/// Reaps until each client has every answer it is owed, for `settle` at most.
fn drain(clients: &mut [Client<EchoReq, EchoResp>], settle: Duration) {
    use subring_shm::queue::Completer;
    let deadline = std::time::Instant::now() + settle;
    while std::time::Instant::now() < deadline {
        for c in clients.iter_mut() {
            while c.reap().unwrap().is_some() {}
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The lone client's part of `answers`.
fn lone_part(answers: &[u64]) -> f64 {
    answers[0] as f64 / answers.iter().sum::<u64>() as f64
}

/// What part of the answers a lone client of another user gets beside `crowd` busy clients of
/// ours, all keeping their rings full of 64 KiB checksums, with a batch of 4 per turn and
/// budgets shared by user or not; with sharing, also after all but one of the crowd left (the
/// shares recounted). `None` without a second user.
fn lone_clients_part(test: &str, crowd: usize, shared: bool) -> Option<(f64, Option<f64>)> {
    use std::sync::Arc;
    use subring_shm::{Region, RegionOptions};
    const ANSWERS: u64 = 1400;
    let (server, path) = server(test, |c| {
        c.batch = 4;
        c.share_by_user = shared;
    });
    if !other_user_reaches(&path) {
        return None;
    }
    let other_path = path.clone();
    let lone = as_user(OTHER, move || connect(&other_path))
        .unwrap()
        .unwrap();
    let mut clients = vec![lone];
    clients.extend((0..crowd).map(|_| connect(&path).unwrap()));
    for c in &mut clients {
        let region = Region::memfd("share", 1 << 20, RegionOptions::new().id(3)).unwrap();
        c.register_region(Arc::new(region)).unwrap();
    }
    let answers = answers_per_client(&mut clients, ANSWERS);
    let part = lone_part(&answers);
    eprintln!("shared by user: {shared}; answers {answers:?}; the lone client's part {part:.2}");
    let after = shared.then(|| {
        // All but one of the crowd leave; the one left takes its user's whole budget.
        drain(&mut clients, Duration::from_millis(300));
        clients.truncate(2);
        drain(&mut clients, Duration::from_millis(300));
        let answers = answers_per_client(&mut clients, ANSWERS);
        let part = lone_part(&answers);
        eprintln!("the crowd down to one: answers {answers:?}; the lone client's part {part:.2}");
        part
    });
    drop(clients);
    server.stop().unwrap();
    Some((part, after))
}

/// With `share_by_user`, the clients of one user split one client's turn budget: beside six
/// busy clients of ours, another user's single client takes 4 requests a turn against the
/// six's 1 each (its part of the answers about 4 in 10), where by default each client has a
/// budget of its own and the lone client gets about 4 in 28. When five of the six leave, the
/// one left takes the whole budget again (about half each). Needs root (the second user).
#[test]
fn a_users_many_clients_share_one_budget_per_turn() {
    let Some((by_client, _)) = lone_clients_part("per-user-turns-default", 6, false) else {
        return;
    };
    let (by_user, after) = lone_clients_part("per-user-turns-shared", 6, true).unwrap();
    let after = after.unwrap();
    assert!(
        by_client < 0.25,
        "by default the lone client got {by_client:.2} of the answers beside six busy ones"
    );
    assert!(
        by_user > 0.3,
        "with budgets shared by user, the lone client got only {by_user:.2} of the answers"
    );
    assert!(
        (0.3..0.7).contains(&after),
        "with one client of the crowd left, the lone client got {after:.2} of the answers \
         (the shares were not recounted when the others left?)"
    );
}
