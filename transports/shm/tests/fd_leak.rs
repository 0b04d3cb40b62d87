//! No descriptor outlives its connection, on either side: many connect/use/disconnect cycles
//! (in every notify mode, some ending with a clean shutdown and some with the client simply
//! dropping its socket) leave this process — which runs both the server and the clients — with
//! the descriptors it started with. Its own test binary, so no other test opens fds meanwhile.

mod support;

use std::time::{Duration, Instant};

use subring_shm::echo::{self, ECHO_PROTOCOL};
use subring_shm::{NotifyMode, Server, ServerConfig};
use support::*;

#[test]
fn no_descriptor_leaks_after_many_connections() {
    let path = socket_path("fd_leak");
    let server = Server::bind(
        &path,
        ServerConfig::new(ECHO_PROTOCOL),
        echo::handler_factory(),
    )
    .unwrap()
    .spawn()
    .unwrap();
    // One connection in each mode first, so that descriptors opened once per process (the
    // hang-up watcher's epoll, at the first client that is not in eventfd mode) are counted.
    for mode in NotifyMode::ALL {
        let mut c = connect_retry(&path, &options(mode), WAIT);
        echo_many(&mut c, 4, 2, 32);
    }
    let mut probe = connect_retry(&path, &options(NotifyMode::EventFd), WAIT);
    let wait_released = |probe: &mut _, ended_at_least: u64| {
        let start = Instant::now();
        loop {
            let (live, ended) = stats(probe);
            if live == 1 && ended >= ended_at_least {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "connections not released: live {live}, ended {ended}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_released(&mut probe, NotifyMode::ALL.len() as u64);
    let before = open_fds();
    const CYCLES: u64 = 200;
    for i in 0..CYCLES {
        let mode = NotifyMode::ALL[i as usize % 4];
        let mut c = connect_retry(&path, &options(mode), WAIT);
        echo_many(&mut c, 3, 2, 32);
        drop(c);
    }
    wait_released(&mut probe, NotifyMode::ALL.len() as u64 + CYCLES);
    // A released connection's socket is read out and closed on a closer thread, a moment after
    // the release is counted.
    let settled = Instant::now();
    let mut after = open_fds();
    while after > before && settled.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
        after = open_fds();
    }
    // (Fewer is no leak: a warm-up connection's socket, still waiting for its closer when
    // `before` was counted.)
    if after > before {
        for e in std::fs::read_dir("/proc/self/fd").unwrap().take(40) {
            let e = e.unwrap();
            eprintln!("{:?} -> {:?}", e.file_name(), std::fs::read_link(e.path()));
        }
    }
    assert!(
        after <= before,
        "descriptors before and after {CYCLES} connections: {before}, {after}"
    );
    drop(probe);
    let stats = server.stop().unwrap().stats();
    assert_eq!(stats.welcomed, CYCLES + NotifyMode::ALL.len() as u64 + 1);
    assert_eq!(stats.clients, 0);
}
