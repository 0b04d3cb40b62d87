//! A TCP echo service on the kernel transport: one thread, one ring; multishot accept,
//! multishot recv into a provided-buffer ring, each buffer sent back from where it was received.
//! With no arguments it runs the server and a load generator (a ring of its own) on loopback
//! and prints requests per second, latency and the server's system calls per request.
//!
//! ```text
//! cargo run --release --example tcp_echo                  # both, on loopback
//! cargo run --release --example tcp_echo -- server 127.0.0.1:7007
//! cargo run --release --example tcp_echo -- load 127.0.0.1:7007 CONNS SIZE SECS
//! ```

mod load;
mod server;

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::time::Duration;

use nix::sys::eventfd::{EfdFlags, EventFd};

use server::{Res, ServerConfig};

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, what: &str| -> Res<String> {
        args.get(i).cloned().ok_or_else(|| {
            format!("missing {what}: tcp_echo [server ADDR | load ADDR CONNS SIZE SECS]").into()
        })
    };
    match args.first().map(String::as_str) {
        Some("server") => {
            let listener = TcpListener::bind(arg(1, "ADDR")?)?;
            println!("echoing on {}", listener.local_addr()?);
            // Never readable: the server runs until it is killed.
            let stop = EventFd::from_flags(EfdFlags::EFD_CLOEXEC)?;
            server::serve(&listener, stop.as_fd(), ServerConfig::default())?;
        }
        Some("load") => {
            let addr: SocketAddr = arg(1, "ADDR")?.parse()?;
            let conns: usize = arg(2, "CONNS")?.parse()?;
            let size: usize = arg(3, "SIZE")?.parse()?;
            let secs: f64 = arg(4, "SECS")?.parse()?;
            let r = load::load(addr, conns, size, Duration::from_secs_f64(secs))?;
            print_row(conns, size, &r);
        }
        Some(other) => {
            return Err(format!(
                "unknown mode {other:?}: tcp_echo [server ADDR | load ADDR CONNS SIZE SECS]"
            )
            .into())
        }
        None => both()?,
    }
    Ok(())
}

fn print_row(conns: usize, size: usize, r: &load::LoadReport) {
    println!(
        "{conns:>5} {size:>6} {:>12.0} {:>10.1} {:>10.1}",
        r.rate(),
        r.quantile(0.5).as_secs_f64() * 1e6,
        r.quantile(0.99).as_secs_f64() * 1e6
    );
}

/// The server on a thread, and the load generator at 1, 16 and 64 connections with 64-byte and
/// 4 KiB messages (`SUBRING_ECHO_SECS` each, 0.5 s by default).
fn both() -> Res<()> {
    let secs: f64 = std::env::var("SUBRING_ECHO_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.5);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let stop = EventFd::from_flags(EfdFlags::EFD_CLOEXEC)?;
    let stop_fd = stop.as_fd().try_clone_to_owned()?;
    let server = std::thread::spawn(move || {
        server::serve(&listener, stop_fd.as_fd(), ServerConfig::default())
    });
    println!("TCP echo over io_uring on {addr}: {secs} s per row, every byte checked");
    println!(
        "{:>5} {:>6} {:>12} {:>10} {:>10}",
        "conns", "bytes", "requests/s", "p50 µs", "p99 µs"
    );
    let mut requests = 0;
    let mut failed = None;
    for size in [64, 4096] {
        for conns in [1, 16, 64] {
            match load::load(addr, conns, size, Duration::from_secs_f64(secs)) {
                Ok(r) => {
                    requests += r.requests;
                    print_row(conns, size, &r);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
    }
    stop.write(1)?;
    let stats = server.join().map_err(|_| "the server thread panicked")??;
    if let Some(e) = failed {
        return Err(e);
    }
    println!(
        "server: {} connections, {} requests, {} bytes echoed, {:.3} io_uring_enter per request, \
         {} times out of buffers, {} connections demoted for holding too many",
        stats.connections,
        requests,
        stats.bytes,
        stats.enters as f64 / requests.max(1) as f64,
        stats.enobufs,
        stats.demoted
    );
    Ok(())
}
