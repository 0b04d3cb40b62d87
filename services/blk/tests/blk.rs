//! The block service end to end: data written read back bit-exact across processes, flush
//! ordering, bad requests answered with errors, a client SIGKILLed with reads in flight, a
//! client leaving with requests still waiting for room in the ring, and copy mode reaching a
//! region registered late.

// The tests' own bookkeeping (a lock, a stop flag) is not a protocol under test: std types.
#![allow(clippy::disallowed_types)]

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use subring_blk::{
    server, server_config, BlkClient, BlkConfig, BlkOptions, BlkResultError, BlkServer, Status,
};
use subring_shm::{socket_pair, BufHandle};

const LIMIT: Duration = Duration::from_secs(20);

/// The tests of this file run one at a time: the kill test counts this process's descriptors
/// and mappings, which another test's clients would change under it.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
const DEVICE: u64 = 8 << 20;

/// A directory for one test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    /// Under the system temp dir (ext4 here: direct I/O works), or `/dev/shm` (tmpfs: none).
    fn new(name: &str, tmpfs: bool) -> Self {
        let base = if tmpfs {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("subring-blk-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn disk(&self, len: u64) -> PathBuf {
        let path = self.0.join("disk.img");
        std::fs::File::create(&path).unwrap().set_len(len).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed and reaped when dropped.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn spawn(test: &str, env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            test,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::null());
        ChildGuard(Some(cmd.spawn().unwrap()))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            // SIGKILL: no destructor, no goodbye.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A deterministic pseudo-random sequence (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn connect_retry(path: &Path) -> BlkClient {
    connect_retry_with(path, &BlkOptions::new())
}

fn connect_retry_with(path: &Path, options: &BlkOptions) -> BlkClient {
    let start = Instant::now();
    loop {
        match BlkClient::connect(path, options) {
            Ok(c) => return c,
            Err(e) if start.elapsed() < LIMIT => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("could not connect to {}: {e}", path.display()),
        }
    }
}

/// The server a child runs: `SUBRING_BLK_SOCKET`, `SUBRING_BLK_DISK`.
#[test]
#[ignore = "the server half of a cross-process test"]
fn blk_server_child() {
    let Ok(socket) = std::env::var("SUBRING_BLK_SOCKET") else {
        return;
    };
    let disk = std::env::var("SUBRING_BLK_DISK").unwrap();
    let mut config = server_config();
    config.exit_when_empty = true;
    let mut server = subring_blk::serve(&socket, config, BlkConfig::new(disk)).unwrap();
    server.run().unwrap();
}

/// Random writes of random sizes at random offsets, then random reads, compared with a copy
/// kept here: across two processes, through the kernel, straight into this process's buffers.
fn read_back_across_processes(tmpfs: bool) {
    let _serial = serial();
    let dir = TempDir::new(&format!("xproc-{tmpfs}"), tmpfs);
    let disk = dir.disk(DEVICE);
    let socket = dir.0.join("blk.sock");
    let _server = ChildGuard::spawn(
        "blk_server_child",
        &[
            ("SUBRING_BLK_SOCKET", socket.display().to_string()),
            ("SUBRING_BLK_DISK", disk.display().to_string()),
        ],
    );
    let mut client = connect_retry(&socket);
    assert_eq!(client.size(), DEVICE);
    assert_eq!(
        client.direct(),
        !tmpfs,
        "direct I/O on ext4, buffered on tmpfs"
    );
    let mut shadow = vec![0u8; DEVICE as usize];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(tmpfs));
    let block = 4096u64;
    // Writes in batches of up to 16 in flight, never two of a batch on the same bytes.
    let mut tag = 0;
    for _batch in 0..20 {
        let mut batch: Vec<(u64, u64)> = Vec::new();
        while batch.len() < 16 {
            let len = (1 + rng.below(16)) * block;
            let offset = rng.below(DEVICE / block - 16) * block;
            if batch
                .iter()
                .any(|(o, l)| offset < *o + *l && *o < offset + len)
            {
                continue;
            }
            let mut buf = client.alloc().expect("a free buffer");
            let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            buf.fill_from(&data);
            shadow[offset as usize..(offset + len) as usize].copy_from_slice(&data);
            client.write(tag, offset, buf).map_err(|r| r.error).unwrap();
            batch.push((offset, len));
            tag += 1;
        }
        client.submit().unwrap();
        for _ in 0..batch.len() {
            let d = client.next(Some(LIMIT)).unwrap();
            assert!(d.result.is_ok(), "write {} failed: {:?}", d.tag, d.result);
        }
    }
    // A discard reads back as zeroes.
    client.discard(9999, 64 * block, 8 * block as u32).unwrap();
    client.submit().unwrap();
    let d = client.next(Some(LIMIT)).unwrap();
    assert_eq!(d.result, Ok(0), "discard");
    shadow[(64 * block) as usize..(72 * block) as usize].fill(0);
    // Reads at QD 16, each compared with the shadow.
    let mut reads = std::collections::HashMap::new();
    let mut issued = 0u64;
    let mut checked = 0;
    while checked < 400 {
        while issued < 400 && reads.len() < 16 {
            let len = (1 + rng.below(16)) * block;
            let offset = rng.below(DEVICE / block - 16) * block;
            let buf = client.alloc().expect("a free buffer");
            client
                .read(issued, offset, buf, len as usize)
                .map_err(|r| r.error)
                .unwrap();
            reads.insert(issued, (offset, len));
            issued += 1;
        }
        client.submit().unwrap();
        let d = client.next(Some(LIMIT)).unwrap();
        let (offset, len) = reads.remove(&d.tag).expect("a read of ours");
        assert_eq!(d.result, Ok(len), "read {} at {offset}", d.tag);
        let buf = d.buf.expect("the buffer came back");
        assert_eq!(buf.len() as u64, len);
        assert!(
            buf.to_vec() == shadow[offset as usize..(offset + len) as usize],
            "read {} of {len} bytes at {offset} differs from what was written",
            d.tag
        );
        checked += 1;
    }
}

#[test]
fn data_written_reads_back_across_processes_direct() {
    read_back_across_processes(false);
}

#[test]
fn data_written_reads_back_across_processes_buffered() {
    read_back_across_processes(true);
}

/// The service on a thread of this process and a client over a socket pair.
fn local(
    dir: &TempDir,
    tweak: impl FnOnce(&mut BlkConfig),
) -> (
    subring_shm::ServerThread<
        subring_blk::BlkRequest,
        subring_blk::BlkCompletion,
        subring_blk::BlkService,
    >,
    BlkClient,
) {
    let mut blk = BlkConfig::new(dir.disk(DEVICE));
    tweak(&mut blk);
    let (server_end, client_end): (OwnedFd, OwnedFd) = socket_pair().unwrap();
    let mut server = server(server_config(), blk).unwrap();
    server.add_connection(server_end).unwrap();
    let server = server.spawn().unwrap();
    let client = BlkClient::from_socket(client_end, &BlkOptions::new()).unwrap();
    (server, client)
}

/// A flush completes after every write before it, and waits for those still in flight.
#[test]
fn flush_completes_after_the_writes_before_it() {
    let _serial = serial();
    let dir = TempDir::new("flush", false);
    let (server, mut client) = local(&dir, |_| {});
    let mut waited = false;
    for round in 0..20u64 {
        for i in 0..16u64 {
            let mut buf = client.alloc().unwrap();
            buf.fill_from(&vec![(round + i) as u8; 65536]);
            client
                .write(i, (round * 16 + i) * 65536 % DEVICE, buf)
                .unwrap();
        }
        client.flush(100).unwrap();
        for i in 0..4u64 {
            let mut buf = client.alloc().unwrap();
            buf.fill_from(&[1u8; 4096]);
            client.write(200 + i, i * 4096, buf).unwrap();
        }
        client.submit().unwrap();
        let mut writes_before = 0;
        let mut flushed = false;
        for _ in 0..21 {
            let d = client.next(Some(LIMIT)).unwrap();
            assert!(d.result.is_ok(), "{:?}", d.result);
            match d.tag {
                0..16 => {
                    assert!(!flushed, "a write sent before the flush completed after it");
                    writes_before += 1;
                }
                100 => {
                    assert_eq!(writes_before, 16, "the flush completed before the writes");
                    flushed = true;
                }
                _ => {}
            }
        }
        assert!(flushed);
        if round == 19 {
            let stats = server.stop().unwrap().service().stats();
            assert_eq!(stats.flushes, 20);
            waited = stats.flushes_waited > 0;
            break;
        }
    }
    assert!(
        waited,
        "no flush ever had to wait: the barrier was never exercised"
    );
}

/// Bad ops, handles, ranges, lengths and alignments are error completions; the service goes on.
#[test]
fn bad_requests_are_error_completions() {
    let _serial = serial();
    let dir = TempDir::new("bad", false);
    let (server, mut client) = local(&dir, |_| {});
    assert!(
        client.direct(),
        "the temporary directory supports direct I/O"
    );
    let good = client.alloc().unwrap().handle();
    let h = |offset: u64, len: u32, region: u32| BufHandle {
        offset,
        len,
        region,
    };
    let read = 1;
    let cases: Vec<(u32, u64, u32, BufHandle, Status)> = vec![
        (77, 0, 4096, good, Status::BadOp),
        (
            read,
            0,
            4096,
            h(good.offset + 1, 4096, 0),
            Status::BadHandle,
        ),
        (read, 0, 4096, h(good.offset, 4096, 9), Status::BadHandle),
        (read, 0, 4096, h(1 << 40, 4096, 0), Status::BadHandle),
        (
            read,
            DEVICE,
            4096,
            h(good.offset, 4096, 0),
            Status::BadRange,
        ),
        (
            read,
            u64::MAX - 10,
            4096,
            h(good.offset, 4096, 0),
            Status::BadRange,
        ),
        (read, 0, 0, h(good.offset, 4096, 0), Status::BadLength),
        (read, 0, 8192, h(good.offset, 4096, 0), Status::BadLength),
        (
            read,
            100,
            4096,
            h(good.offset, 4096, 0),
            Status::BadAlignment,
        ),
        (4, DEVICE - 4096, 8192, h(0, 0, 0), Status::BadRange),
    ];
    // (The handle `good` names a buffer this client still owns: the service cannot know, and
    // may use it; these requests are refused before that anyway.)
    for (i, (op, offset, len, handle, want)) in cases.iter().enumerate() {
        client.raw(i as u64, *op, *offset, *len, *handle).unwrap();
        client.submit().unwrap();
        let d = client.next(Some(LIMIT)).unwrap();
        assert_eq!(d.tag, i as u64);
        assert_eq!(d.result, Err(BlkResultError::Refused(*want)), "case {i}");
    }
    // Still serving.
    let buf = client.alloc().unwrap();
    client.read(50, 0, buf, 4096).unwrap();
    client.submit().unwrap();
    assert_eq!(client.next(Some(LIMIT)).unwrap().result, Ok(4096));
    drop(client);
    let stats = server.stop().unwrap().service().stats();
    assert_eq!(stats.refused, cases.len() as u64);
}

/// In copy mode the service copies through its own view of each client's memory: a region
/// the client registers after its first request is in that view too. A write from it reaches
/// the disk and a read into it arrives (before the fix, the write sent whatever a staging slot
/// held and both reported success).
#[test]
fn copy_mode_reaches_a_region_registered_after_the_first_request() {
    use subring_shm::{Region, RegionOptions};
    let _serial = serial();
    let dir = TempDir::new("copy-later", false);
    let (server, mut client) = local(&dir, |c| c.zero_copy = false);
    // A first request: the service takes its view of the client's memory.
    let buf = client.alloc().unwrap();
    client.read(1, 0, buf, 4096).unwrap();
    client.submit().unwrap();
    assert_eq!(client.next(Some(LIMIT)).unwrap().result, Ok(4096));
    let region =
        std::sync::Arc::new(Region::memfd("later", 1 << 20, RegionOptions::new().id(7)).unwrap());
    client.shm().register_region(region.clone()).unwrap();
    let at = |offset: u64| BufHandle {
        offset,
        len: 65536,
        region: 7,
    };
    let pattern: Vec<u8> = (0..65536u32).map(|i| (i * 13 + 5) as u8).collect();
    region.write_from(at(0), &pattern).unwrap();
    let (read, write) = (1, 2);
    client.raw(2, write, 1 << 20, 65536, at(0)).unwrap();
    client.submit().unwrap();
    assert_eq!(client.next(Some(LIMIT)).unwrap().result, Ok(65536));
    client.raw(3, read, 1 << 20, 65536, at(65536)).unwrap();
    client.submit().unwrap();
    assert_eq!(client.next(Some(LIMIT)).unwrap().result, Ok(65536));
    let mut back = vec![0u8; 65536];
    region.read_into(at(65536), &mut back).unwrap();
    assert!(
        back == pattern,
        "the bytes read back are not the bytes written"
    );
    drop(client);
    let stats = server.stop().unwrap().service().stats();
    assert!(stats.bytes_copied >= 2 * 65536, "{stats:?}");
}

/// Registering a region pins all of it: a client cannot make the service pin more of its
/// memory than `max_registered`. A read into a region past the limit is refused with
/// `NoMemory`; the client's other memory is still served; and what was registered comes off
/// the count when the client leaves.
#[test]
fn a_client_cannot_pin_more_than_its_limit() {
    use subring_shm::{Region, RegionOptions};
    let _serial = serial();
    let dir = TempDir::new("pin", false);
    // The client's pool is 64 buffers of 64 KiB: 4 MiB.
    let (server, mut client) = local(&dir, |c| c.max_registered = 8 << 20);
    let read = |client: &mut BlkClient, tag: u64| {
        let buf = client.alloc().unwrap();
        client.read(tag, 0, buf, 4096).unwrap();
        client.submit().unwrap();
        client.next(Some(LIMIT)).unwrap().result
    };
    assert_eq!(read(&mut client, 1), Ok(4096), "the pool fits");
    let big =
        std::sync::Arc::new(Region::memfd("big", 8 << 20, RegionOptions::new().id(9)).unwrap());
    client.shm().register_region(big).unwrap();
    let into_big = BufHandle {
        offset: 0,
        len: 4096,
        region: 9,
    };
    client.raw(2, 1, 0, 4096, into_big).unwrap();
    client.submit().unwrap();
    let d = client.next(Some(LIMIT)).unwrap();
    assert_eq!(d.result, Err(BlkResultError::Refused(Status::NoMemory)));
    assert_eq!(read(&mut client, 3), Ok(4096), "still served");
    drop(client);
    let stopped = server.stop().unwrap();
    let service = stopped.service();
    assert_eq!(service.stats().regions_registered, 1);
    assert_eq!(service.registered_bytes(), 0, "the pool came off the count");
}

/// A client that leaves with requests still waiting for room in the ring, behind another
/// client's: they are answered without reaching the kernel, the other client's requests before
/// and after are each answered once (those after with their own bytes), and every operation
/// reaches the kernel once. (A slot emptied while waiting and reused at once used to be offered
/// to the ring twice; the table's unit tests show that case deterministically, this one runs
/// the departure end to end.)
#[test]
fn a_client_leaving_with_a_backlog_leaves_the_others_alone() {
    let _serial = serial();
    let dir = TempDir::new("backlog", false);
    let socket = dir.0.join("blk.sock");
    // Real data, read with direct I/O: reads go to the device and take a while.
    let disk = dir.0.join("disk.img");
    let mut rng = Rng(11);
    let data: Vec<u8> = (0..DEVICE).map(|_| rng.next() as u8).collect();
    std::fs::write(&disk, &data).unwrap();
    let mut blk = BlkConfig::new(&disk);
    // Four in the ring: the rest waits in the backlog, in order.
    blk.depth = 4;
    let running = Running::start(subring_blk::serve(&socket, server_config(), blk).unwrap());
    let options = BlkOptions::new().buffers(1 << 20, 40);
    let mut other = connect_retry_with(&socket, &options);
    // (A buffer's handle names its filled bytes: none yet. The slow reads name all of it.)
    let whole = |buf: &subring_shm::Buf| BufHandle {
        len: 1 << 20,
        ..buf.handle()
    };
    let slow = other.alloc().unwrap();
    // (With the 32 reads after them, as many as the client's submission ring holds.)
    const SLOW: u64 = 32;
    let mut exercised = false;
    for attempt in 0..10u64 {
        // The other client's slow reads first (milliseconds of work, one at a time), then the
        // leaving client's, behind them; it leaves at once.
        let mut leaving = connect_retry_with(&socket, &options);
        let buf = leaving.alloc().unwrap();
        let before = running.seen().blk.answered_unsent;
        for i in 0..SLOW {
            let offset = (i << 20) % DEVICE;
            other
                .raw(1000 + i, 1, offset, 1 << 20, whole(&slow))
                .unwrap();
        }
        other.submit().unwrap();
        for i in 0..64u64 {
            let offset = (i << 20) % DEVICE;
            leaving.raw(i, 1, offset, 1 << 20, whole(&buf)).unwrap();
        }
        leaving.submit().unwrap();
        drop(leaving);
        drop(buf);
        // Bounded: the departure is noticed between two of the slow reads, or not at all.
        let start = Instant::now();
        while running.seen().blk.answered_unsent == before
            && start.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_micros(100));
        }
        let slow_left = running.seen().blk.reads;
        // The other client's next reads: each completes once, with its own bytes.
        for i in 0..32u64 {
            let offset = (i * 3 + attempt) * 65536 % DEVICE;
            other
                .read(i, offset, other.alloc().unwrap(), 65536)
                .unwrap();
        }
        other.submit().unwrap();
        let mut answered = std::collections::HashSet::new();
        for _ in 0..SLOW + 32 {
            let d = other.next(Some(LIMIT)).unwrap();
            assert!(answered.insert(d.tag), "tag {} answered twice", d.tag);
            if d.tag >= 1000 {
                assert_eq!(d.result, Ok(1 << 20), "tag {}", d.tag);
                continue;
            }
            assert_eq!(d.result, Ok(65536), "tag {}", d.tag);
            let offset = ((d.tag * 3 + attempt) * 65536 % DEVICE) as usize;
            assert!(
                d.buf.unwrap().to_vec() == data[offset..offset + 65536],
                "tag {}: not the bytes at {offset}",
                d.tag
            );
        }
        let seen = running.until("the leaving client is retired", |s| {
            s.blk.retired == attempt + 1 && s.in_flight == 0
        });
        eprintln!(
            "attempt {attempt}: {} answered unsent, departure seen after {slow_left} of {} reads",
            seen.blk.answered_unsent - before,
            seen.blk.reads
        );
        // Exercised when the departure came while the slow reads still held the ring.
        if seen.blk.answered_unsent > before && slow_left + 32 < seen.blk.reads {
            exercised = true;
            break;
        }
    }
    assert!(
        exercised,
        "no client left with requests waiting behind another's in 10 attempts"
    );
    drop(slow);
    drop(other);
    let seen = running.until("every operation completed", |s| {
        s.in_flight == 0 && s.server.clients == 0
    });
    let b = seen.blk;
    // Every operation went to the kernel once (and every cancel), and came back once.
    assert_eq!(
        b.uring.pushed,
        b.reads + b.writes + b.flushes + b.discards + b.cancels,
        "{b:?}"
    );
    assert_eq!(b.uring.completed, b.uring.pushed, "{b:?}");
    assert_eq!(b.unsendable, 0);
    drop(running.stop());
}

/// The client half of the kill test: reads at QD 32 until killed.
#[test]
#[ignore = "the client half of a cross-process test"]
fn blk_reader_child() {
    let Ok(socket) = std::env::var("SUBRING_BLK_SOCKET") else {
        return;
    };
    let mut client = connect_retry(Path::new(&socket));
    let mut rng = Rng(42);
    let mut tag = 0u64;
    loop {
        while client.in_flight() < 32 {
            let Some(buf) = client.alloc() else { break };
            let offset = rng.below(DEVICE / 65536) * 65536;
            client.read(tag, offset, buf, 65536).unwrap();
            tag += 1;
        }
        client.submit().unwrap();
        let d = client.next(Some(LIMIT)).unwrap();
        assert!(d.result.is_ok());
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn mapped_client_memfds() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:subring-shm-"))
        .count()
}

/// A server turning on a thread of its own, publishing what the kill test looks at.
struct Running {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Seen>>,
    thread: Option<std::thread::JoinHandle<BlkServer>>,
}

#[derive(Debug, Clone, Default)]
struct Seen {
    server: subring_shm::ServerStats,
    blk: subring_blk::BlkStats,
    blk_clients: usize,
    in_flight: usize,
    registered: usize,
}

impl Running {
    fn start(mut server: BlkServer) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
        let thread = std::thread::spawn({
            let (stop, seen) = (stop.clone(), seen.clone());
            move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    server.run_for(Duration::from_millis(1)).unwrap();
                    let blk = server.service();
                    *seen.lock().unwrap() = Seen {
                        server: server.stats(),
                        blk: blk.stats(),
                        blk_clients: blk.clients(),
                        in_flight: blk.in_flight(),
                        registered: blk.registered_regions(),
                    };
                }
                server
            }
        });
        Running {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (bounded) until `what` holds of what the server shows.
    fn until(&self, what: &str, mut ok: impl FnMut(&Seen) -> bool) -> Seen {
        let start = Instant::now();
        loop {
            let seen = self.seen();
            if ok(&seen) {
                return seen;
            }
            assert!(start.elapsed() < LIMIT, "{what}: never happened ({seen:?})");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn stop(mut self) -> BlkServer {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A client SIGKILLed with reads in flight: the service cancels and waits for them, then
/// unregisters and unmaps the client's memory, and serves the next client.
#[test]
fn a_client_killed_with_reads_in_flight_leaves_the_service_healthy() {
    let _serial = serial();
    let dir = TempDir::new("kill", false);
    let socket = dir.0.join("blk.sock");
    // Real data on disk: direct reads then go to the device and stay in flight a while
    // (reads of a sparse file's holes complete at once).
    let disk = dir.0.join("disk.img");
    let mut rng = Rng(7);
    let data: Vec<u8> = (0..DEVICE).map(|_| rng.next() as u8).collect();
    std::fs::write(&disk, &data).unwrap();
    drop(data);
    let server = subring_blk::serve(&socket, server_config(), BlkConfig::new(&disk)).unwrap();
    let fds = open_fds();
    let running = Running::start(server);
    let mut with_io = 0;
    for attempt in 0..5u64 {
        let mut child = ChildGuard::spawn(
            "blk_reader_child",
            &[("SUBRING_BLK_SOCKET", socket.display().to_string())],
        );
        let reads = running.seen().blk.reads;
        running.until("the reader reads", |s| s.blk.reads > reads + 1000);
        child.kill();
        let seen = running.until("the killed client is retired", |s| {
            s.server.clients == 0 && s.server.departing == 0 && s.blk_clients == 0
        });
        assert_eq!(seen.in_flight, 0);
        assert_eq!(seen.registered, 0, "the client's memory left the ring");
        let stats = seen.blk;
        assert_eq!(stats.retired, attempt + 1);
        assert_eq!(stats.regions_registered, stats.regions_unregistered);
        assert_eq!(mapped_client_memfds(), 0, "the client's memory is unmapped");
        let start = Instant::now();
        // No more than before (fewer: an earlier test's descriptor closed late).
        while open_fds() > fds {
            assert!(
                start.elapsed() < LIMIT,
                "descriptors of the client were left open"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        with_io = stats.departed_with_io;
        if with_io > 0 {
            assert!(stats.completed_after_departure > 0, "{stats:?}");
            eprintln!(
                "killed with reads in flight: {} cancels issued, {} completions waited for",
                stats.cancels, stats.completed_after_departure
            );
            break;
        }
    }
    assert!(
        with_io > 0,
        "no client was killed with reads in flight in 5 attempts"
    );
    // The next client is served.
    let mut client = connect_retry(&socket);
    let buf = client.alloc().unwrap();
    client.read(1, 4096, buf, 4096).unwrap();
    client.submit().unwrap();
    let d = client.next(Some(LIMIT)).unwrap();
    assert_eq!(d.result, Ok(4096));
    let mut rng = Rng(7);
    let expect: Vec<u8> = (0..8192).map(|_| rng.next() as u8).collect();
    assert_eq!(d.buf.unwrap().to_vec(), &expect[4096..]);
    drop(client);
    let server = running.stop();
    assert_eq!(server.stats().clients, 0);
}
