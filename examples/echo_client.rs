//! A client of `echo_server`: sends payloads in shared buffers, checks every answer, and
//! prints round-trip latency and what crossed each plane.
//!
//! ```sh
//! cargo run --release --example echo_client -- /tmp/subring-echo.sock [MODE] [COUNT]
//! ```
//! MODE is spin, adaptive (default), eventfd or futex.

use std::time::{Duration, Instant};

use subring::queue::{Completer, Submitter};
use subring::shm::echo::{checksum, EchoOp, EchoReq, EchoResp, EchoStatus, ECHO_PROTOCOL};
use subring::shm::{Client, ClientOptions, NotifyMode};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| "/tmp/subring-echo.sock".to_string());
    let mode: NotifyMode = args.next().as_deref().unwrap_or("adaptive").parse()?;
    let count: usize = args.next().as_deref().unwrap_or("20000").parse()?;
    if count == 0 {
        return Err("COUNT must be at least 1".into());
    }
    let options = ClientOptions::new(ECHO_PROTOCOL)
        .mode(mode)
        .buffers(4096, 64);
    let mut client = Client::<EchoReq, EchoResp>::connect(&path, &options)
        .map_err(|e| format!("echo_client: {e}"))?;
    println!(
        "connected to {path} (server pid {}, client id {}), mode {mode}",
        client.server_pid(),
        client.id()
    );

    let mut rtts = Vec::with_capacity(count);
    let message = b"hello from another process, through a shared buffer";
    for seq in 0..count as u64 {
        let mut buf = client.alloc().ok_or("no free buffer")?;
        buf.fill_from(message);
        let sum = checksum(message);
        let start = Instant::now();
        // The buffer is lent once the ring has taken the request (a refused push hands it back).
        client.push_lending(buf, |buf| EchoReq {
            seq,
            op: EchoOp::UPPER,
            reserved: 0,
            buf,
        })?;
        client.submit()?;
        // The answer and its buffer, within 10 s in all.
        let (resp, back) = client.wait_reap_buf(Duration::from_secs(10), |r| r.buf)?;
        rtts.push(start.elapsed().as_nanos() as u64);
        if resp.seq != seq || resp.status != EchoStatus::OK || resp.sum != sum {
            return Err(format!("bad answer {resp:?} to request {seq}").into());
        }
        if back.to_vec() != message.to_ascii_uppercase() {
            return Err(format!("payload {seq} not upper-cased in place").into());
        }
    }
    rtts.sort_unstable();
    let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p) as usize];
    let (kick, call) = (client.doorbell_stats(), client.notify_stats());
    println!(
        "{count} round trips with {}-byte payloads: p50 {} ns, p99 {} ns, max {} ns",
        message.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "doorbell: rung {} skipped {} | completions: waits {} without sleep {} sleeps {}",
        kick.rung, kick.skipped, call.waits, call.without_sleep, call.sleeps
    );
    Ok(())
}
