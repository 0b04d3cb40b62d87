//! An echo subsystem in its own process: serves every client that connects to a socket path.
//!
//! ```sh
//! cargo run --release --example echo_server -- /tmp/subring-echo.sock      # terminal 1
//! cargo run --release --example echo_client -- /tmp/subring-echo.sock      # terminal 2
//! ```
//! Clients get a queue pair and payload buffers in a sealed memfd; the server reads each
//! payload in place, upper-cases it in place and answers with its checksum. It prints a line
//! per second while clients come and go; stop it with Ctrl-C (or pass `--for SECONDS`).

use std::time::{Duration, Instant};

use subring::shm::echo::{self, ECHO_PROTOCOL};
use subring::shm::{Server, ServerConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| "/tmp/subring-echo.sock".to_string());
    let limit = match (args.next().as_deref(), args.next()) {
        (Some("--for"), Some(s)) => Some(Duration::try_from_secs_f64(s.parse()?)?),
        (None, _) => None,
        _ => return Err("usage: echo_server [SOCKET_PATH] [--for SECONDS]".into()),
    };
    let mut server = Server::bind(
        &path,
        ServerConfig::new(ECHO_PROTOCOL),
        echo::handler_factory(),
    )
    .map_err(|e| format!("echo_server: {e}"))?;
    println!(
        "echo server (pid {}) listening on {path}",
        std::process::id()
    );
    let start = Instant::now();
    let mut last = server.stats();
    loop {
        server.run_for(Duration::from_secs(1))?;
        let now = server.stats();
        if now != last {
            println!(
                "{:>6.1} s  clients {}  welcomed {}  released {}  refused {}  requests {} (+{})  sleeps {}",
                start.elapsed().as_secs_f64(),
                now.clients,
                now.welcomed,
                now.released,
                now.refused,
                now.requests,
                now.requests - last.requests,
                now.sleeps,
            );
            last = now;
        }
        if limit.is_some_and(|l| start.elapsed() >= l) {
            return Ok(());
        }
    }
}
