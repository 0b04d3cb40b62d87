//! A subring client inside an ordinary epoll event loop.
//!
//! ```sh
//! cargo run --release --example epoll_client
//! ```
//! In eventfd mode a client's completions are signalled through an eventfd that any event loop
//! can watch (here raw epoll; mio or tokio's `AsyncFd` work the same way), beside its control
//! socket, whose hang-up means the server died. The protocol is the one RDMA uses for a
//! completion channel: `arm()` (request a notification; `true` means completions are already
//! there), wait on the fd, `disarm()`, reap. While completions keep coming, no syscall is made.

use std::os::fd::AsFd;
use std::time::Instant;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use subring::queue::{Completer, Submitter};
use subring::shm::echo::{self, EchoOp, EchoReq, EchoResp, ECHO_PROTOCOL};
use subring::shm::{Client, ClientOptions, NotifyMode, Server, ServerConfig};

const COMPLETIONS: u64 = 1;
const CONTROL: u64 = 2;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The subsystem on its own thread (a path and another process work the same way).
    let (server_end, client_end) = subring::shm::socket_pair()?;
    let mut server = Server::new(ServerConfig::new(ECHO_PROTOCOL), echo::handler_factory())?;
    server.add_connection(server_end)?;
    let server = server.spawn()?;

    let options = ClientOptions::new(ECHO_PROTOCOL).mode(NotifyMode::EventFd);
    let mut client = Client::<EchoReq, EchoResp>::from_socket(client_end, &options)?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    let completion_fd = client
        .completion_fd()
        .ok_or("eventfd mode has a completion fd")?;
    epoll.add(
        completion_fd,
        EpollEvent::new(EpollFlags::EPOLLIN, COMPLETIONS),
    )?;
    epoll.add(
        client.control_fd().as_fd(),
        EpollEvent::new(EpollFlags::EPOLLIN, CONTROL),
    )?;

    let total = 100_000u64;
    let (mut sent, mut done, mut epoll_waits, mut arms_ready) = (0u64, 0u64, 0u64, 0u64);
    let start = Instant::now();
    let mut events = [EpollEvent::empty(); 4];
    while done < total {
        // Keep up to 32 requests in flight.
        while sent < total && sent - done < 32 {
            let req = EchoReq {
                seq: sent,
                op: EchoOp::PING,
                ..EchoReq::default()
            };
            client.push(req)?;
            sent += 1;
        }
        client.submit()?;
        // The event loop's turn: sleep only if arming finds nothing to reap.
        if client.arm()? {
            arms_ready += 1;
        } else {
            epoll_waits += 1;
            let n = epoll.wait(&mut events, EpollTimeout::from(10_000u16))?;
            if n == 0 {
                return Err("no completion within 10 s".into());
            }
            if events[..n].iter().any(|e| e.data() == CONTROL) && client.server_gone() {
                return Err("the server went away".into());
            }
        }
        client.disarm()?;
        while let Some(resp) = client.reap()? {
            assert_eq!(resp.seq, done, "completions arrive in order");
            done += 1;
        }
    }
    let elapsed = start.elapsed();
    println!(
        "{total} requests through an epoll loop in {:.1} ms: {epoll_waits} epoll_wait calls, \
         {arms_ready} turns found completions already there",
        elapsed.as_secs_f64() * 1e3
    );
    println!(
        "doorbells rung {} / skipped {}",
        client.doorbell_stats().rung,
        client.doorbell_stats().skipped
    );
    drop(client);
    server.stop()?;
    Ok(())
}
