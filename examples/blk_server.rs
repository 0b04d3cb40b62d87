//! A block-storage subsystem in its own process: serves a file (or block device) to every
//! client that connects, with the kernel reading into and writing from the clients' memory.
//!
//! ```sh
//! truncate -s 64M /tmp/subring-disk.img
//! cargo run --release --example blk_server -- /tmp/subring-blk.sock /tmp/subring-disk.img  # 1
//! cargo run --release --example blk_client -- /tmp/subring-blk.sock                        # 2
//! ```
//! Options after the two paths: `--copy` (copy through the service's own buffers instead: the
//! design this service exists to avoid), `--buffered` (no `O_DIRECT`), `--read-only`,
//! `--clients-per-user N` (for a server several users share: at most `N` clients of one user
//! at once), `--share-by-user` (the clients of one user split one client's budget of each of
//! the server's turns, so many connections buy a user no larger part), `--futex-sleep` (sleep on the clients' futex words rather than in epoll; clients
//! that do not trust the server, `ClientOptions::untrusted_server`, ring a futex doorbell
//! either way), `--for SECONDS`.
//! It prints a line per second while clients come and go; stop it with Ctrl-C.

use std::time::{Duration, Instant};

use subring::blk::{self, BlkConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: blk_server SOCKET_PATH DEVICE_PATH [--copy] [--buffered] [--read-only] \
                 [--clients-per-user N] [--share-by-user] [--futex-sleep] [--for SECONDS]";
    let (Some(socket), Some(device)) = (args.first(), args.get(1)) else {
        return Err(usage.into());
    };
    let mut config = BlkConfig::new(device);
    let mut server_config = blk::server_config();
    let mut limit = None;
    let mut rest = args[2..].iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--copy" => config.zero_copy = false,
            "--buffered" => config.direct = false,
            "--read-only" => config.read_only = true,
            "--clients-per-user" => {
                let n = rest.next().ok_or(usage)?;
                server_config.max_clients_per_user = n
                    .parse()
                    .map_err(|e| format!("--clients-per-user {n:?}: {e}"))?;
            }
            "--share-by-user" => server_config.share_by_user = true,
            "--futex-sleep" => server_config.sleep = subring::shm::ServerSleep::Futex,
            "--for" => {
                let s = rest.next().ok_or(usage)?;
                limit = Some(Duration::try_from_secs_f64(s.parse()?)?);
            }
            _ => return Err(usage.into()),
        }
    }
    let mut server =
        blk::serve(socket, server_config, config).map_err(|e| format!("blk_server: {e}"))?;
    let service = server.service();
    println!(
        "block server (pid {}) on {socket}: {device}, {} bytes, {}, {}{}",
        std::process::id(),
        service.size(),
        if service.direct() {
            "O_DIRECT (disk -> client memory by DMA)"
        } else {
            "buffered (page cache -> client memory)"
        },
        if service.zero_copy() {
            "zero-copy (clients' memory registered with the ring)"
        } else {
            "copying through the service's own buffers"
        },
        if service.read_only() {
            ", read-only"
        } else {
            ""
        }
    );
    let start = Instant::now();
    let mut last = server.service().stats();
    loop {
        server.run_for(Duration::from_secs(1))?;
        let now = server.service().stats();
        if now != last {
            let ops = (now.reads + now.writes) - (last.reads + last.writes);
            let enters = now.uring.enters - last.uring.enters;
            println!(
                "{:>6.1} s  clients {}  reads {} (+{})  writes {}  flushes {}  refused {}  \
                 enters/op {:.3}  copied by the service {} B  cancelled {}  retired {}",
                start.elapsed().as_secs_f64(),
                server.stats().clients,
                now.reads,
                now.reads - last.reads,
                now.writes,
                now.flushes,
                now.refused,
                enters as f64 / ops.max(1) as f64,
                now.bytes_copied,
                now.cancels,
                now.retired,
            );
            last = now;
        }
        if limit.is_some_and(|l| start.elapsed() >= l) {
            return Ok(());
        }
    }
}
