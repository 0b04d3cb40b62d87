//! Step 1: a userspace subsystem, the echo server in a child process, beside a Unix socket.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use subring::queue::{Completer, Submitter};
use subring::shm::echo::{self, EchoOp, EchoReq, EchoResp, EchoStatus, ECHO_PROTOCOL};
use subring::shm::{Client, ClientOptions, NotifyMode, Server, ServerConfig};

use super::*;

/// The child process: subring-shm's echo server on `path`, and a classic Unix-socket server on
/// `unix_path` answering each 4 KiB message with its word sum. Serves `connections`
/// subring clients (or until `PATIENCE` passes with nobody connected), then prints its
/// counters on stdout for the parent.
pub fn serve(path: &Path, unix_path: &Path, connections: u64) -> Result<(), Error> {
    let listener = UnixListener::bind(unix_path)
        .map_err(|e| format!("binding {}: {e}", unix_path.display()))?;
    let classic = std::thread::spawn(move || classic_server(listener));
    let mut server = Server::bind(
        path,
        ServerConfig::new(ECHO_PROTOCOL),
        echo::handler_factory(),
    )?;
    let start = Instant::now();
    let mut last_activity = Instant::now();
    loop {
        server.run_for(Duration::from_millis(20))?;
        let s = server.stats();
        if s.clients > 0 {
            last_activity = Instant::now();
        }
        if s.welcomed >= connections && s.clients == 0 {
            break;
        }
        if last_activity.elapsed() > PATIENCE || start.elapsed() > 10 * PATIENCE {
            return Err("the tour's client went away".into());
        }
    }
    let s = server.stats();
    drop(server);
    let classic = classic
        .join()
        .map_err(|_| "the Unix-socket server panicked")??;
    println!(
        "{} {} {} {} {}",
        s.requests, s.calls.sent, s.calls.suppressed, s.sleeps, classic
    );
    Ok(())
}

/// Answers 4 KiB messages with their word sum (8 bytes) until the client closes; returns how
/// many it answered.
fn classic_server(listener: UnixListener) -> Result<u64, String> {
    let (mut conn, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    conn.set_read_timeout(Some(PATIENCE))
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; PAYLOAD];
    let mut served = 0;
    loop {
        match conn.read_exact(&mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(served),
            Err(e) => return Err(format!("Unix socket read: {e}")),
        }
        let sum = echo::word_sum(&buf);
        conn.write_all(&sum.to_le_bytes())
            .map_err(|e| format!("Unix socket write: {e}"))?;
        served += 1;
    }
}

pub(crate) fn userspace(dir: &TourDir) -> Result<(), Error> {
    let path = dir.path("echo.sock");
    let unix_path = dir.path("classic.sock");
    // Spinning on one CPU would have the two processes take turns at it, each spin a waste:
    // spin mode is left out there, and the server told of one connection fewer.
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let connections = CONNECTIONS - u64::from(one_cpu);
    let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let child = Command::new(exe)
        .arg("serve-tour")
        .arg(&path)
        .arg(&unix_path)
        .arg(connections.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the server process: {e}"))?;
    let server_pid = child.id();
    let mut child = Reaped(Some(child));

    println!("1. A userspace subsystem: another process (pid {server_pid}) serving requests");
    println!(
        "   Each request names a 4 KiB payload the client wrote into shared memory; the server"
    );
    println!("   reads it in place (zero-copy) and answers with its sum, which the client checks.");
    let mut connect = |mode: NotifyMode| -> Result<Client<EchoReq, EchoResp>, Error> {
        let options = ClientOptions::new(ECHO_PROTOCOL)
            .mode(mode)
            .buffers(PAYLOAD as u32, 64);
        let client = connect_to_child(&mut child, "the server process", || {
            Client::connect(&path, &options)
                .map_err(|e| format!("connecting to {}: {e}", path.display()).into())
        })?;
        // The kernel's word for who listens (the directory is this user's alone anyway).
        if client.server_pid() != server_pid {
            return Err(format!(
                "{} is served by pid {}",
                path.display(),
                client.server_pid()
            )
            .into());
        }
        Ok(client)
    };
    let mut first = true;
    for (name, mode) in [
        ("spin", NotifyMode::Spin),
        ("adaptive", NotifyMode::Adaptive),
        ("eventfd", NotifyMode::EventFd),
    ] {
        if one_cpu && mode == NotifyMode::Spin {
            println!("   (spin mode skipped: this machine has one CPU)");
            continue;
        }
        let mut client = connect(mode)?;
        if first {
            let region = client.region();
            println!(
                "   Handshake over {}: one sealed memfd of {} KiB (both rings and 64 \
                 buffers); a client that sleeps also gets the eventfd that wakes the server \
                 and an epoll instance in which it waits for the server's wake-ups.",
                path.display(),
                region.len() / 1024
            );
            first = false;
            println!(
                "\n   {:<22} {:>9} {:>9} {:>11} {:>16} {:>10}",
                "one request at a time", "p50", "p99", "syscalls/op", "doorbells rung", "sleeps"
            );
        }
        let mut samples = Latency::new();
        let mut data = [0u8; PAYLOAD];
        for seq in 0..ROUND_TRIPS {
            // The payload and its sum are made before the clock starts, as for the socket
            // below: what is timed is the copy into shared memory and the round trip.
            payload(seq, &mut data);
            let expect = echo::word_sum(&data);
            let t = Instant::now();
            round_trip(&mut client, seq, &data, expect)?;
            samples.record(t.elapsed());
        }
        let bell = client.doorbell_stats();
        let wait = client.notify_stats();
        println!(
            "   subring {:<14} {:>9} {:>9} {:>11.2} {:>16} {:>10}",
            name,
            us(samples.p50()),
            us(samples.p99()),
            (bell.rung + wait.sleeps) as f64 / ROUND_TRIPS as f64,
            format!("{} of {}", bell.rung, bell.rung + bell.skipped),
            wait.sleeps
        );
    }
    let mut classic = UnixStream::connect(&unix_path)
        .map_err(|e| format!("connecting to {}: {e}", unix_path.display()))?;
    classic.set_read_timeout(Some(PATIENCE))?;
    let mut samples = Latency::new();
    let mut msg = vec![0u8; PAYLOAD];
    // The system calls this loop makes, counted as it makes them (a write or read may move
    // fewer bytes than asked, and is then repeated).
    let mut calls = 0u64;
    for seq in 0..ROUND_TRIPS {
        payload(seq, &mut msg);
        let t = Instant::now();
        let mut sent = 0;
        while sent < msg.len() {
            sent += classic.write(&msg[sent..])?;
            calls += 1;
        }
        let mut sum = [0u8; 8];
        let mut got = 0;
        while got < sum.len() {
            match classic.read(&mut sum[got..])? {
                0 => return Err("the Unix-socket server hung up".into()),
                n => got += n,
            }
            calls += 1;
        }
        samples.record(t.elapsed());
        if u64::from_le_bytes(sum) != echo::word_sum(&msg) {
            return Err("the Unix-socket server answered a wrong sum".into());
        }
    }
    println!(
        "   {:<22} {:>9} {:>9} {:>11.2} {:>16} {:>10}",
        "classic: Unix socket",
        us(samples.p50()),
        us(samples.p99()),
        calls as f64 / ROUND_TRIPS as f64,
        "-",
        "-"
    );
    println!(
        "   (syscalls/op: the client's system calls per request, counted as the program runs: \
         doorbells rung and sleeps taken for subring, reads and writes made for the socket)"
    );
    drop(classic);

    // Pipelined: many requests in flight, one doorbell per batch. The payloads (64 of them,
    // reused) and their sums are made before the clock starts.
    let mut client = connect(NotifyMode::Adaptive)?;
    let payloads: Vec<(Vec<u8>, u64)> = (0..64)
        .map(|seq| {
            let mut data = vec![0u8; PAYLOAD];
            payload(seq, &mut data);
            let sum = echo::word_sum(&data);
            (data, sum)
        })
        .collect();
    let start = Instant::now();
    pipelined(&mut client, &payloads)?;
    let took = start.elapsed();
    let bell = client.doorbell_stats();
    let wait = client.notify_stats();
    println!(
        "\n   pipelined, {DEPTH} in flight (adaptive): {PIPELINED} requests in {:.1} ms, {:.2} GB/s \
         of payload",
        took.as_secs_f64() * 1e3,
        (PIPELINED as usize * PAYLOAD) as f64 / took.as_secs_f64() / 1e9
    );
    println!(
        "   control plane: {} submits rang the doorbell {} times and skipped it {} times (the \
         server was still polling)",
        bell.rung + bell.skipped,
        bell.rung,
        bell.skipped
    );
    println!(
        "   interrupt plane: the client waited {} times, slept in the kernel {} times",
        wait.waits, wait.sleeps
    );
    drop(client);

    let out = finish(&mut child, "the server process", 2 * PATIENCE)?;
    let nums: Vec<u64> = out
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    if let [requests, sent, suppressed, sleeps, classic] = nums[..] {
        println!(
            "   server side, over all {connections} connections: {requests} requests served from \
             shared memory; completion notifications: {sent} sent, {suppressed} suppressed (client not \
             asleep); the server slept {sleeps} times; {classic} Unix-socket messages"
        );
    } else {
        return Err(format!("the server process printed {out:?}").into());
    }
    Ok(())
}

/// One request for `data` (whose word sum is `expect`), and its answer, within `PATIENCE`.
fn round_trip(
    client: &mut Client<EchoReq, EchoResp>,
    seq: u64,
    data: &[u8],
    expect: u64,
) -> Result<(), Error> {
    let mut buf = client.alloc().ok_or("no free buffer")?;
    buf.fill_from(data);
    client.push_lending(buf, |buf| EchoReq {
        seq,
        op: EchoOp::TOUCH,
        reserved: 0,
        buf,
    })?;
    client.submit()?;
    let (r, _buf) = client
        .wait_reap_buf(PATIENCE, |r| r.buf)
        .map_err(|e| format!("waiting for the answer to request {seq}: {e}"))?;
    if r.seq != seq || r.status != EchoStatus::OK || r.value != expect {
        return Err(format!("bad answer {r:?} to request {seq}").into());
    }
    Ok(())
}

/// `PIPELINED` requests, `DEPTH` in flight, their payloads taken in turn from `payloads`
/// (each with its word sum).
fn pipelined(
    client: &mut Client<EchoReq, EchoResp>,
    payloads: &[(Vec<u8>, u64)],
) -> Result<(), Error> {
    let (mut sent, mut done) = (0u64, 0u64);
    let mut out = Vec::new();
    let of = |seq: u64| &payloads[(seq % payloads.len() as u64) as usize];
    while done < PIPELINED {
        while sent < PIPELINED && sent - done < DEPTH {
            let mut buf = client.alloc().ok_or("no free buffer")?;
            buf.fill_from(&of(sent).0);
            client.push_lending(buf, |buf| EchoReq {
                seq: sent,
                op: EchoOp::TOUCH,
                reserved: 0,
                buf,
            })?;
            sent += 1;
        }
        client.submit()?;
        client.wait(Some(PATIENCE))?;
        out.clear();
        client.reap_into(&mut out, DEPTH as usize)?;
        for r in &out {
            drop(client.reclaim(r.buf)?);
            let want = of(r.seq).1;
            if r.status != EchoStatus::OK || r.value != want {
                return Err(format!("bad answer {r:?}").into());
            }
            done += 1;
        }
    }
    Ok(())
}
