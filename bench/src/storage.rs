//! The storage section: the block service (client → shm service → io_uring into the client's
//! memory) against what a user would do instead, interleaved inside each repetition (the
//! order rotates).
//!
//! Work: random reads of 4 KiB and 64 KiB at queue depth 32 per client, one client and four,
//! of a file of random data in the temporary directory, with `O_DIRECT` where its file system
//! has it (every row then reads the device, not the page cache). Each measurement runs for a
//! fixed time and reports bytes per second over every client. Rows:
//! - **subring blk**: the block service in a forked process, its clients threads of this one,
//!   each over its own shm connection, waiting with a timeout as users do; the service's
//!   io_uring enters per read are the row's system calls per operation;
//! - **local io_uring** (the floor): each client does the same reads with its own ring (the
//!   `io-uring` crate, fixed buffers, `submit_and_wait(1)` and everything that completed
//!   re-issued at once, as such loops are usually written);
//! - **local io_uring, batches of 16**: the same, waiting for 16 completions per enter, which
//!   hands the kernel the same batches the service's submission batching does (in a VM each
//!   submit that reaches the device is a virtio notification, a VM exit: batches are cheaper);
//! - **Unix-socket server**: the classic design, a forked server with a thread per connection
//!   that `pread`s each request and writes the bytes back; the client pipelines 32 requests;
//! - **subring blk, copying**: the same service reading into its own buffers and copying into
//!   the client's (what registering the client's memory saves).

// Peers measured as their users write them: std atomics for the bench's own counters.
#![allow(clippy::disallowed_types)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
use subring_blk::{BlkClient, BlkConfig, BlkOptions};
use subring_planes::data::{Region, RegionOptions};

use crate::kernel::{make_file, TempFile};
use crate::report::{Report, Section, Unit};
use crate::{peers, Context, Progress};

/// Requests in flight per client.
const QD: usize = 32;
/// The CPU the forked servers are pinned to (clients float).
const SERVER_CPU: usize = 1;

/// How much to measure.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// Repetitions.
    pub reps: usize,
    /// How long each row reads, per repetition.
    pub duration: Duration,
    /// Size of the file read.
    pub file_len: u64,
    /// Where the file goes.
    pub dir: PathBuf,
}

impl StorageConfig {
    /// The full run (`quick`: a short one).
    pub fn new(quick: bool) -> Self {
        StorageConfig {
            reps: if quick { 3 } else { 7 },
            duration: Duration::from_millis(if quick { 400 } else { 1500 }),
            file_len: if quick { 128 << 20 } else { 512 << 20 },
            dir: std::env::temp_dir(),
        }
    }
}

/// One measurement: bytes per second, and system calls (io_uring enters) per read where known.
#[derive(Debug, Clone, Copy)]
struct Measured {
    rate: f64,
    enters_per_op: Option<f64>,
}

/// Whether `O_DIRECT` opens work on files in `dir`.
fn direct_works(path: &Path) -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .is_ok()
}

fn open(path: &Path, direct: bool) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path)
}

/// A deterministic random block offset stream.
struct Offsets {
    x: u64,
    blocks: u64,
    block: u64,
}

impl Offsets {
    fn new(seed: u64, file_len: u64, block: usize) -> Self {
        Offsets {
            x: seed | 1,
            blocks: file_len / block as u64,
            block: block as u64,
        }
    }
    fn next(&mut self) -> u64 {
        self.x ^= self.x << 13;
        self.x ^= self.x >> 7;
        self.x ^= self.x << 17;
        (self.x % self.blocks) * self.block
    }
}

#[derive(Clone, Copy, Debug)]
enum Peer {
    Subring,
    SubringCopy,
    Local,
    LocalBatched,
    Socket,
}

/// Completions the batched local peer waits for per enter (the block service's default
/// submission batch).
const BATCH: usize = 16;

const SUBRING: &str = "subring blk";
const COPYING: &str = "subring blk, copying";
const LOCAL: &str = "local io_uring";
const LOCAL_BATCHED: &str = "local io_uring, batches of 16";
const SOCKET: &str = "Unix-socket server";

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Subring => SUBRING,
            Peer::SubringCopy => COPYING,
            Peer::Local => LOCAL,
            Peer::LocalBatched => LOCAL_BATCHED,
            Peer::Socket => SOCKET,
        }
    }
}

/// Runs the storage sections into `report`.
pub fn run(
    cfg: &StorageConfig,
    report: &mut Report,
    progress: &mut dyn Progress,
) -> Result<(), String> {
    let works: [(usize, usize); 4] = [(4096, 1), (4096, 4), (65536, 1), (65536, 4)];
    let peers = [
        Peer::Subring,
        Peer::Local,
        Peer::LocalBatched,
        Peer::Socket,
        Peer::SubringCopy,
    ];
    progress.begin("storage", (cfg.reps * works.len() * peers.len()) as u64 + 1);
    progress.step("writing the file");
    let path = cfg
        .dir
        .join(format!("subring-bench-blk-{}", std::process::id()));
    make_file(&path, cfg.file_len).ctx(&format!("writing {}", path.display()))?;
    let _cleanup = TempFile(path.clone());
    let direct = direct_works(&path);
    let how = if direct { "O_DIRECT" } else { "buffered" };
    let mut sections: Vec<Section> = works
        .iter()
        .map(|(block, clients)| {
            Section::new(
                &format!(
                    "storage {}K random read, QD 32, {clients} client{} ({how})",
                    block / 1024,
                    if *clients == 1 { "" } else { "s" }
                ),
                cfg.reps,
            )
        })
        .collect();
    for rep in 0..cfg.reps {
        let before = peers::probe();
        for ((block, clients), section) in works.iter().zip(sections.iter_mut()) {
            // Rotate the order so that no row always runs first (or after the same one).
            for k in 0..peers.len() {
                let peer = peers[(k + rep) % peers.len()];
                progress.step(&format!("{} {}K x{clients}", peer.name(), block / 1024));
                let m = measure(peer, &path, cfg, *block, *clients, direct)?;
                section.rate(rep, peer.name(), Unit::BytesPerSec, m.rate);
                if let Some(e) = m.enters_per_op {
                    section.syscalls(peer.name(), e);
                }
            }
        }
        let after = peers::probe();
        for s in &mut sections {
            s.label(rep, before, after);
        }
    }
    for ((block, _), s) in works.iter().zip(sections.iter_mut()) {
        s.order(&[SUBRING, LOCAL, LOCAL_BATCHED, SOCKET, COPYING]);
        let big = *block >= 65536;
        s.compare(LOCAL, SUBRING, Some(if big { ">= 0.85" } else { ">= 0.7" }));
        s.compare(LOCAL_BATCHED, SUBRING, None);
        s.compare(SOCKET, SUBRING, big.then_some(">= 2"));
        s.compare(COPYING, SUBRING, big.then_some(">= 1.2"));
    }
    for s in sections {
        s.finish(report);
    }
    Ok(())
}

fn measure(
    peer: Peer,
    path: &Path,
    cfg: &StorageConfig,
    block: usize,
    clients: usize,
    direct: bool,
) -> Result<Measured, String> {
    match peer {
        Peer::Subring => subring(path, cfg, block, clients, direct, true),
        Peer::SubringCopy => subring(path, cfg, block, clients, direct, false),
        Peer::Local => local(path, cfg, block, clients, direct, 1),
        Peer::LocalBatched => local(path, cfg, block, clients, direct, BATCH),
        Peer::Socket => socket(path, cfg, block, clients, direct),
    }
}

/// Runs `clients` threads of `body` (each given its index) and sums what they return: bytes
/// read in the timed window and its length.
fn clients_run(
    clients: usize,
    body: impl Fn(usize) -> Result<(u64, Duration), String> + Sync,
) -> Result<f64, String> {
    let results: Vec<Result<(u64, Duration), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                s.spawn({
                    let body = &body;
                    move || body(i)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a client thread panicked".into()))
            })
            .collect()
    });
    let mut rate = 0.0;
    for r in results {
        let (bytes, took) = r?;
        rate += bytes as f64 / took.as_secs_f64();
    }
    Ok(rate)
}

/// The block service in a forked child serving `clients` socket pairs; the child writes its
/// ring's enters and reads to `report` when every client has left.
fn subring(
    path: &Path,
    cfg: &StorageConfig,
    block: usize,
    clients: usize,
    direct: bool,
    zero_copy: bool,
) -> Result<Measured, String> {
    let mut server_ends = Vec::new();
    let mut client_ends = Vec::new();
    for _ in 0..clients {
        let (s, c) = subring_shm::socket_pair().ctx("socketpair")?;
        server_ends.push(s);
        client_ends.push(c);
    }
    let (stats_rx, stats_tx) = pipe()?;
    let close: Vec<i32> = client_ends
        .iter()
        .map(|c| c.as_raw_fd())
        .chain([stats_rx.as_raw_fd()])
        .collect();
    let mut blk = BlkConfig::new(path);
    blk.direct = direct;
    blk.zero_copy = zero_copy;
    blk.max_io = block as u32;
    let child = peers::fork_pinned(SERVER_CPU, &close, move || {
        let run = || -> Result<(u64, u64), String> {
            let mut config = subring_blk::server_config();
            config.exit_when_empty = true;
            let mut server = subring_blk::server(config, blk).map_err(|e| e.to_string())?;
            for s in server_ends {
                server.add_connection(s).map_err(|e| e.to_string())?;
            }
            server.run().map_err(|e| e.to_string())?;
            let stats = server.service().stats();
            Ok((stats.uring.enters, stats.reads))
        };
        match run() {
            Ok((enters, reads)) => {
                let mut out = File::from(stats_tx);
                let _ = writeln!(out, "{enters} {reads}");
                0
            }
            Err(_) => 4,
        }
    })?;
    let rate = clients_run(clients, |i| {
        let end = client_ends_take(&client_ends, i)?;
        let options = BlkOptions::new()
            .buffers(block as u32, QD as u32)
            .capacity(QD as u32);
        let mut client =
            BlkClient::from_socket(end, &options).ctx("connect to the block service")?;
        if client.direct() != direct {
            return Err("the service's I/O mode differs from the peers'".into());
        }
        let mut offsets = Offsets::new(0x1234 + i as u64, cfg.file_len, block);
        let timeout = Some(Duration::from_secs(10));
        let mut tag = 0u64;
        let mut window = |client: &mut BlkClient, until: Instant| -> Result<u64, String> {
            let mut bytes = 0u64;
            while Instant::now() < until {
                while client.in_flight() < QD {
                    let Some(buf) = client.alloc() else { break };
                    client
                        .read(tag, offsets.next(), buf, block)
                        .map_err(|r| r.error.to_string())?;
                    tag += 1;
                }
                client.submit().ctx("submit")?;
                let mut done = client.next(timeout).ctx("wait for a read")?;
                loop {
                    bytes += done.result.map_err(|e| format!("read: {e}"))?;
                    match client.try_next().ctx("reap")? {
                        Some(d) => done = d,
                        None => break,
                    }
                }
            }
            Ok(bytes)
        };
        let warm = Instant::now() + cfg.duration / 5;
        window(&mut client, warm)?;
        let start = Instant::now();
        let bytes = window(&mut client, start + cfg.duration)?;
        let took = start.elapsed();
        // Drain what is in flight before leaving.
        while client.in_flight() > 0 {
            client.next(timeout).ctx("drain")?;
        }
        Ok((bytes, took))
    });
    drop(client_ends);
    let rate = rate?;
    let mut text = String::new();
    File::from(stats_rx)
        .read_to_string(&mut text)
        .ctx("read the service's counters")?;
    child.reap(Duration::from_secs(10))?;
    let mut it = text
        .split_whitespace()
        .map(|w| w.parse::<u64>().unwrap_or(0));
    let (enters, reads) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    Ok(Measured {
        rate,
        enters_per_op: (reads > 0).then(|| enters as f64 / reads as f64),
    })
}

/// A client end for thread `i` (each is used by exactly one thread).
fn client_ends_take(ends: &[OwnedFd], i: usize) -> Result<OwnedFd, String> {
    ends[i].try_clone().ctx("dup a client socket")
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe2: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Each client thread reads with its own io_uring: fixed buffers in an aligned region,
/// `submit_and_wait(wait_for)`, everything completed reaped and re-issued at once (and
/// submitted with the next wait).
fn local(
    path: &Path,
    cfg: &StorageConfig,
    block: usize,
    clients: usize,
    direct: bool,
    wait_for: usize,
) -> Result<Measured, String> {
    let enters = std::sync::atomic::AtomicU64::new(0);
    let reads = std::sync::atomic::AtomicU64::new(0);
    let rate = clients_run(clients, |i| {
        let file = open(path, direct).ctx("open")?;
        let mut ring = IoUring::new(QD as u32 * 2).ctx("io_uring setup")?;
        let region =
            Region::anonymous(block * QD, RegionOptions::new()).map_err(|e| e.to_string())?;
        let iov = [libc::iovec {
            iov_base: region.as_ptr().cast(),
            iov_len: region.len(),
        }];
        // SAFETY: the iovec covers `region`, which outlives the ring (dropped after it below).
        unsafe { ring.submitter().register_buffers(&iov) }.ctx("register buffers")?;
        let mut offsets = Offsets::new(0x1234 + i as u64, cfg.file_len, block);
        let fd = types::Fd(file.as_raw_fd());
        let push = |ring: &mut IoUring, slot: usize, offset: u64| {
            // SAFETY: slot `slot` of the registered region is this read's alone until its
            // completion (slots are re-issued only after they complete).
            let ptr = unsafe { region.as_ptr().add(slot * block) };
            let e = opcode::ReadFixed::new(fd, ptr, block as u32, 0)
                .offset(offset)
                .build()
                .user_data(slot as u64);
            // SAFETY: the entry points into the registered region (alive, see above).
            unsafe { ring.submission().push(&e) }.map_err(|_| "submission queue full".to_string())
        };
        for slot in 0..QD {
            push(&mut ring, slot, offsets.next())?;
        }
        let mut n_enters = 0u64;
        let mut n_reads = 0u64;
        let mut run = |ring: &mut IoUring, until: Instant, count: bool| -> Result<u64, String> {
            let mut bytes = 0u64;
            while Instant::now() < until {
                ring.submit_and_wait(wait_for).ctx("submit_and_wait")?;
                if count {
                    n_enters += 1;
                }
                let done: Vec<(usize, i32)> = ring
                    .completion()
                    .map(|c| (c.user_data() as usize, c.result()))
                    .collect();
                for (slot, res) in done {
                    if res < 0 {
                        return Err(format!("read: {}", std::io::Error::from_raw_os_error(-res)));
                    }
                    bytes += res as u64;
                    if count {
                        n_reads += 1;
                    }
                    push(ring, slot, offsets.next())?;
                }
            }
            Ok(bytes)
        };
        run(&mut ring, Instant::now() + cfg.duration / 5, false)?;
        let start = Instant::now();
        let bytes = run(&mut ring, start + cfg.duration, true)?;
        let took = start.elapsed();
        // Let the reads in flight finish before the buffers go.
        let mut left = QD;
        while left > 0 {
            ring.submit_and_wait(1).ctx("drain")?;
            left -= ring.completion().count();
        }
        drop(ring);
        drop(region);
        enters.fetch_add(n_enters, std::sync::atomic::Ordering::Relaxed);
        reads.fetch_add(n_reads, std::sync::atomic::Ordering::Relaxed);
        Ok((bytes, took))
    })?;
    let reads = reads.into_inner();
    Ok(Measured {
        rate,
        enters_per_op: (reads > 0).then(|| enters.into_inner() as f64 / reads as f64),
    })
}

/// The classic server: a forked process with a thread per connection that `pread`s each
/// 16-byte request (offset, length) and writes the bytes back; each client pipelines 32.
fn socket(
    path: &Path,
    cfg: &StorageConfig,
    block: usize,
    clients: usize,
    direct: bool,
) -> Result<Measured, String> {
    let mut server_ends = Vec::new();
    let mut client_ends = Vec::new();
    for _ in 0..clients {
        let (s, c) = UnixStream::pair().ctx("socketpair")?;
        server_ends.push(s);
        client_ends.push(c);
    }
    let close: Vec<i32> = client_ends.iter().map(|c| c.as_raw_fd()).collect();
    let path_owned = path.to_path_buf();
    let child = peers::fork_pinned(SERVER_CPU, &close, move || {
        let serve = |mut conn: UnixStream| -> Result<(), String> {
            let file = open(&path_owned, direct).ctx("open")?;
            let region =
                Region::anonymous(block, RegionOptions::new()).map_err(|e| e.to_string())?;
            // SAFETY: the region is this thread's own private memory; nothing else uses it.
            let buf = unsafe { std::slice::from_raw_parts_mut(region.as_ptr(), block) };
            let mut req = [0u8; 16];
            loop {
                if conn.read_exact(&mut req).is_err() {
                    return Ok(()); // the client left
                }
                let offset = u64::from_le_bytes(req[..8].try_into().expect("8 bytes"));
                let len =
                    (u64::from_le_bytes(req[8..].try_into().expect("8 bytes")) as usize).min(block);
                let n = file.read_at(&mut buf[..len], offset).ctx("pread")?;
                conn.write_all(&buf[..n]).ctx("send")?;
            }
        };
        let ok = std::thread::scope(|s| {
            let hs: Vec<_> = server_ends
                .into_iter()
                .map(|c| s.spawn(move || serve(c)))
                .collect();
            hs.into_iter()
                .all(|h| h.join().map(|r| r.is_ok()).unwrap_or(false))
        });
        if ok {
            0
        } else {
            4
        }
    })?;
    let rate = clients_run(clients, |i| {
        let mut conn = client_ends[i].try_clone().ctx("dup a client socket")?;
        let mut offsets = Offsets::new(0x1234 + i as u64, cfg.file_len, block);
        let mut buf = vec![0u8; block];
        let mut send = |conn: &mut UnixStream| -> Result<(), String> {
            let mut req = [0u8; 16];
            req[..8].copy_from_slice(&offsets.next().to_le_bytes());
            req[8..].copy_from_slice(&(block as u64).to_le_bytes());
            conn.write_all(&req).ctx("send a request")
        };
        for _ in 0..QD {
            send(&mut conn)?;
        }
        let mut run = |conn: &mut UnixStream, until: Instant| -> Result<u64, String> {
            let mut bytes = 0u64;
            while Instant::now() < until {
                conn.read_exact(&mut buf).ctx("receive a block")?;
                bytes += block as u64;
                send(conn)?;
            }
            Ok(bytes)
        };
        run(&mut conn, Instant::now() + cfg.duration / 5)?;
        let start = Instant::now();
        let bytes = run(&mut conn, start + cfg.duration)?;
        let took = start.elapsed();
        for _ in 0..QD {
            conn.read_exact(&mut buf).ctx("drain")?;
        }
        Ok((bytes, took))
    });
    drop(client_ends);
    let rate = rate?;
    child.reap(Duration::from_secs(10))?;
    Ok(Measured {
        rate,
        enters_per_op: None,
    })
}
