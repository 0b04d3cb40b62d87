//! `subring tour`: a userspace subsystem in a child process, then the kernel as a subsystem,
//! each beside the classic way of doing the same work, with what crossed which plane.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use subring::data::{BufferPool, Region, RegionOptions};
use subring::queue::{Completer, Submitter};
use subring::shm::echo::{self, op, status, EchoReq, EchoResp, ECHO_PROTOCOL};
use subring::shm::{Client, ClientOptions, NotifyMode, Server, ServerConfig};
use subring::uring::{FixedBuf, Op, Output, Submission, Target, Uring};

use subring_bench::peers::Latency;

use crate::Error;

const PAYLOAD: usize = 4096;
/// Round trips per mode.
const ROUND_TRIPS: u64 = 3000;
/// Requests in flight in the pipelined run.
const DEPTH: u64 = 32;
/// Requests in the pipelined run.
const PIPELINED: u64 = 20_000;
/// Connections the tour makes to the child's server (three modes and the pipelined run).
const CONNECTIONS: u64 = 4;
/// How long anything in the tour may wait for the other process.
const PATIENCE: Duration = Duration::from_secs(10);
/// The kernel part: file size and reads.
const FILE_LEN: u64 = 32 << 20;
const READS: u64 = 50_000;

fn us(ns: f64) -> String {
    if ns < 10_000.0 {
        format!("{:.2} us", ns / 1e3)
    } else {
        format!("{:.1} us", ns / 1e3)
    }
}

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

/// Kills and reaps the child if the tour stops early.
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Removes the socket files when the tour ends.
struct Paths(Vec<PathBuf>);

impl Drop for Paths {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn payload(seq: u64, buf: &mut [u8]) {
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for word in buf.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes());
    }
}

/// Runs the tour.
pub fn run() -> Result<(), Error> {
    println!("subring tour: one interface shape, two subsystems.");
    println!("Every subsystem interface has a data plane (shared rings and buffers), a control");
    println!("plane (the doorbell that says work is queued) and an interrupt plane (the event");
    println!("that says work is done). Each step below counts what crossed each plane.\n");
    userspace()?;
    println!();
    kernel()?;
    println!("\nMore: `subring bench --quick` measures all of this against its peers;");
    println!("examples/ has a two-terminal echo server, std::io streams and a file copy.");
    Ok(())
}

fn userspace() -> Result<(), Error> {
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let path = dir.join(format!("subring-tour-{pid}.sock"));
    let unix_path = dir.join(format!("subring-tour-{pid}-classic.sock"));
    let _paths = Paths(vec![path.clone(), unix_path.clone()]);
    let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let child = Command::new(exe)
        .arg("serve-tour")
        .arg(&path)
        .arg(&unix_path)
        .arg(CONNECTIONS.to_string())
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
    let connect = |mode: NotifyMode| -> Result<Client<EchoReq, EchoResp>, Error> {
        let options = ClientOptions::new(ECHO_PROTOCOL)
            .mode(mode)
            .buffers(PAYLOAD as u32, 64);
        let start = Instant::now();
        loop {
            match Client::connect(&path, &options) {
                Ok(c) => return Ok(c),
                Err(_) if start.elapsed() < PATIENCE => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => return Err(format!("connecting to {}: {e}", path.display()).into()),
            }
        }
    };
    let mut first = true;
    for (name, mode) in [
        ("spin", NotifyMode::Spin),
        ("adaptive", NotifyMode::Adaptive),
        ("eventfd", NotifyMode::EventFd),
    ] {
        let mut client = connect(mode)?;
        if first {
            let region = client.region();
            println!(
                "   Handshake over {}: one sealed memfd of {} KiB (both rings and 64 \
                 buffers) and two eventfds.",
                path.display(),
                region.len() / 1024
            );
            first = false;
            println!(
                "\n   {:<22} {:>9} {:>9} {:>11} {:>16} {:>10}",
                "one request at a time", "p50", "p99", "syscalls/op", "doorbells rung", "sleeps"
            );
        }
        let mut samples = Latency::default();
        for seq in 0..ROUND_TRIPS {
            let t = Instant::now();
            round_trip(&mut client, seq)?;
            samples.samples_ns.push(t.elapsed().as_nanos() as u64);
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
    let mut samples = Latency::default();
    let mut msg = vec![0u8; PAYLOAD];
    for seq in 0..ROUND_TRIPS {
        payload(seq, &mut msg);
        let t = Instant::now();
        classic.write_all(&msg)?;
        let mut sum = [0u8; 8];
        classic.read_exact(&mut sum)?;
        samples.samples_ns.push(t.elapsed().as_nanos() as u64);
        if u64::from_le_bytes(sum) != echo::word_sum(&msg) {
            return Err("the Unix-socket server answered a wrong sum".into());
        }
    }
    println!(
        "   {:<22} {:>9} {:>9} {:>11.2} {:>16} {:>10}",
        "classic: Unix socket",
        us(samples.p50()),
        us(samples.p99()),
        2.0,
        "-",
        "-"
    );
    drop(classic);

    // Pipelined: many requests in flight, one doorbell per batch.
    let mut client = connect(NotifyMode::Adaptive)?;
    let start = Instant::now();
    pipelined(&mut client)?;
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

    let mut child = child.0.take().ok_or("server process already reaped")?;
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut out)?;
    }
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("the server process failed ({status})").into());
    }
    let nums: Vec<u64> = out
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    if let [requests, sent, suppressed, sleeps, classic] = nums[..] {
        println!(
            "   server side: {requests} requests served from shared memory; completion \
             notifications: {sent} sent, {suppressed} suppressed (client not asleep); the server \
             slept {sleeps} times; {classic} Unix-socket messages"
        );
    } else {
        return Err(format!("the server process printed {out:?}").into());
    }
    Ok(())
}

fn round_trip(client: &mut Client<EchoReq, EchoResp>, seq: u64) -> Result<(), Error> {
    let mut buf = client.alloc().ok_or("no free buffer")?;
    buf.set_len(PAYLOAD);
    payload(seq, &mut buf);
    let expect = echo::word_sum(&buf);
    let req = EchoReq {
        seq,
        op: op::TOUCH,
        reserved: 0,
        buf: buf.lend(),
    };
    client.push(req).map_err(|r| r.error)?;
    client.submit()?;
    loop {
        if let Some(r) = client.reap()? {
            drop(client.reclaim(r.buf)?);
            if r.seq != seq || r.status != status::OK || r.value != expect {
                return Err(format!("bad answer {r:?} to request {seq}").into());
            }
            return Ok(());
        }
        client.wait(Some(PATIENCE))?;
    }
}

fn pipelined(client: &mut Client<EchoReq, EchoResp>) -> Result<(), Error> {
    let slots = DEPTH * 4;
    let mut expect = vec![0u64; slots as usize];
    let (mut sent, mut done) = (0u64, 0u64);
    let mut out = Vec::new();
    while done < PIPELINED {
        while sent < PIPELINED && sent - done < DEPTH {
            let mut buf = client.alloc().ok_or("no free buffer")?;
            buf.set_len(PAYLOAD);
            payload(sent, &mut buf);
            expect[(sent % slots) as usize] = echo::word_sum(&buf);
            let req = EchoReq {
                seq: sent,
                op: op::TOUCH,
                reserved: 0,
                buf: buf.lend(),
            };
            client.push(req).map_err(|r| r.error)?;
            sent += 1;
        }
        client.submit()?;
        client.wait(Some(PATIENCE))?;
        out.clear();
        client.reap_into(&mut out, DEPTH as usize)?;
        for r in &out {
            drop(client.reclaim(r.buf)?);
            let want = expect[(r.seq % slots) as usize];
            if r.status != status::OK || r.value != want {
                return Err(format!("bad answer {r:?}").into());
            }
            done += 1;
        }
    }
    Ok(())
}

/// The 8 bytes at `offset` of the tour's file: a function of the offset, so that any block
/// read can be checked.
fn word_at(offset: u64) -> u64 {
    let mut x = offset.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d;
    x ^= x >> 31;
    x.wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

fn make_file(path: &Path) -> Result<File, Error> {
    let mut f = File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    let mut block = vec![0u8; 1 << 20];
    for mib in 0..FILE_LEN >> 20 {
        for (i, w) in block.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&word_at((mib << 20) + 8 * i as u64).to_le_bytes());
        }
        f.write_all(&block)?;
    }
    drop(f);
    let f = File::open(path)?;
    // Read it once, untimed, so that both ways read from the page cache.
    let mut off = 0;
    while off < FILE_LEN {
        off += f.read_at(&mut block, off)? as u64;
    }
    Ok(f)
}

fn offsets() -> impl FnMut() -> u64 {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % (FILE_LEN / PAYLOAD as u64)) * PAYLOAD as u64
    }
}

fn check_block(bytes: &[u8], offset: u64) -> Result<(), Error> {
    for (i, w) in bytes.chunks_exact(8).enumerate().step_by(64) {
        let at = offset + 8 * i as u64;
        if u64::from_le_bytes(w.try_into().expect("8 bytes")) != word_at(at) {
            return Err(format!("read the wrong bytes at offset {at}").into());
        }
    }
    Ok(())
}

fn kernel() -> Result<(), Error> {
    println!("2. The kernel as a subsystem: io_uring");
    let mut ring = Uring::builder()
        .entries(64)
        .build()
        .map_err(|e| format!("io_uring is not available here: {e}"))?;
    let path = std::env::temp_dir().join(format!("subring-tour-{}.data", std::process::id()));
    let _paths = Paths(vec![path.clone()]);
    let file = make_file(&path)?;
    let depth = DEPTH as usize;
    let region = Arc::new(Region::memfd(
        "tour",
        PAYLOAD * depth,
        RegionOptions::new(),
    )?);
    let pool = BufferPool::new(region.clone(), 0, PAYLOAD, depth)?;
    ring.register_region(region)?;
    ring.register_files(&[file.as_raw_fd()])?;
    println!(
        "   {READS} random 4 KiB reads of a {} MiB page-cached file, {depth} in flight, into \
         fixed buffers: a memfd region registered with the ring (the kernel copies straight \
         into memory another process could map). Every block read is checked.",
        FILE_LEN >> 20
    );

    let mut next = offsets();
    let mut started = vec![(Instant::now(), 0u64); depth];
    let mut samples = Latency::default();
    let mut done_list = Vec::new();
    let before = ring.stats();
    let start = Instant::now();
    let (mut issued, mut done) = (0u64, 0u64);
    let mut push = |ring: &mut Uring, slot: usize, buf, started: &mut Vec<(Instant, u64)>| {
        let offset = next();
        started[slot] = (Instant::now(), offset);
        let op = Op::ReadFixed {
            fd: Target::Fixed(0),
            buf: FixedBuf::Buf(buf),
            offset,
        };
        ring.push(Submission::new(slot as u64, op))
            .map_err(|r| r.error)
    };
    for slot in 0..depth {
        let buf = pool.alloc().ok_or("no free buffer")?;
        push(&mut ring, slot, buf, &mut started)?;
        issued += 1;
    }
    while done < READS {
        ring.wait_for(1, Some(PATIENCE))?;
        done_list.clear();
        ring.reap_into(&mut done_list, depth)?;
        for c in done_list.drain(..) {
            let slot = c.token as usize;
            let (t, offset) = *started.get(slot).ok_or("unknown token")?;
            samples.samples_ns.push(t.elapsed().as_nanos() as u64);
            let n = c.result?;
            let Output::Fixed(FixedBuf::Buf(buf)) = c.output else {
                return Err("a fixed read did not return its buffer".into());
            };
            if n as usize != PAYLOAD {
                return Err(format!("short read: {n} bytes").into());
            }
            check_block(&buf, offset)?;
            done += 1;
            if issued < READS {
                push(&mut ring, slot, buf, &mut started)?;
                issued += 1;
            }
        }
    }
    let took = start.elapsed();
    let stats = ring.stats();
    let enters = stats.enters - before.enters;
    println!(
        "\n   {:<22} {:>11} {:>12} {:>12} {:>12}",
        "", "reads/s", "p50 latency", "p99 latency", "syscalls/op"
    );
    println!(
        "   {:<22} {:>11} {:>12} {:>12} {:>12.3}",
        "subring-uring, fixed",
        format!("{:.0} K", READS as f64 / took.as_secs_f64() / 1e3),
        us(samples.p50()),
        us(samples.p99()),
        enters as f64 / READS as f64
    );
    let mut next = offsets();
    let mut buf = vec![0u8; PAYLOAD];
    let mut samples = Latency::default();
    let start = Instant::now();
    for _ in 0..READS {
        let offset = next();
        let t = Instant::now();
        let n = file.read_at(&mut buf, offset)?;
        samples.samples_ns.push(t.elapsed().as_nanos() as u64);
        if n != PAYLOAD {
            return Err(format!("short pread: {n} bytes").into());
        }
        check_block(&buf, offset)?;
    }
    let took = start.elapsed();
    println!(
        "   {:<22} {:>11} {:>12} {:>12} {:>12.3}",
        "classic: pread loop",
        format!("{:.0} K", READS as f64 / took.as_secs_f64() / 1e3),
        us(samples.p50()),
        us(samples.p99()),
        1.0
    );
    println!(
        "   control plane: {} reads pushed, {} io_uring_enter calls (each one submits a batch \
         and waits: the doorbell and the interrupt in one syscall)",
        stats.pushed - before.pushed,
        enters
    );
    println!(
        "   (latency here is submit to reap with {depth} in flight, so it includes queueing; \
         page-cached reads are a memory copy, which pread does with one syscall each)"
    );

    // Batching: one doorbell for 32 NOPs.
    let before = ring.stats();
    const NOPS: u64 = 32 * 1000;
    let mut out = Vec::new();
    let start = Instant::now();
    for _ in 0..NOPS / 32 {
        for i in 0..32 {
            ring.push(Submission::new(i, Op::Nop))
                .map_err(|r| r.error)?;
        }
        ring.wait_for(32, Some(PATIENCE))?;
        out.clear();
        if ring.reap_into(&mut out, 32)? != 32 {
            return Err("a batch of NOPs came back short".into());
        }
    }
    let took = start.elapsed();
    let s = ring.stats();
    println!(
        "   batches of 32 NOPs: {NOPS} operations, {} io_uring_enter calls ({:.3} per operation), \
         {:.2} M ops/s",
        s.enters - before.enters,
        (s.enters - before.enters) as f64 / NOPS as f64,
        NOPS as f64 / took.as_secs_f64() / 1e6
    );
    Ok(())
}
