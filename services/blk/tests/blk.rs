//! The block service end to end: data written read back bit-exact across processes, flush
//! ordering, bad requests answered with errors, a device served read-only, and a client
//! SIGKILLed with reads in flight.
//! (Clients that leave with requests waiting, or name too much memory: misbehaving_clients.rs.)

// The tests' own bookkeeping (a lock, a stop flag) is not a protocol under test: std types.
#![allow(clippy::disallowed_types)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

use subring_blk::{server_config, BlkConfig, BlkResultError, Status};
use subring_shm::BufHandle;

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

/// A device served read-only: the client is told so, reads are served, writes and discards
/// are refused with `ReadOnly` (and nothing reaches the disk), a flush completes.
#[test]
fn a_read_only_device_refuses_writes() {
    let _serial = serial();
    let dir = TempDir::new("ro", false);
    let (server, mut client) = local(&dir, |c| c.read_only = true);
    assert!(client.read_only());
    let mut buf = client.alloc().unwrap();
    buf.fill_from(&[0xa5u8; 4096]);
    client.write(1, 8192, buf).unwrap();
    client.submit().unwrap();
    let d = client.next(Some(LIMIT)).unwrap();
    assert_eq!(d.result, Err(BlkResultError::Refused(Status::ReadOnly)));
    client.discard(2, 0, 4096).unwrap();
    client.flush(3).unwrap();
    client.submit().unwrap();
    for _ in 0..2 {
        let d = client.next(Some(LIMIT)).unwrap();
        let want = if d.tag == 2 {
            Err(BlkResultError::Refused(Status::ReadOnly))
        } else {
            Ok(0)
        };
        assert_eq!(d.result, want, "tag {}", d.tag);
    }
    let buf = d.buf.expect("the refused write's buffer comes back");
    client.read(4, 8192, buf, 4096).unwrap();
    client.submit().unwrap();
    let d = client.next(Some(LIMIT)).unwrap();
    assert_eq!(d.result, Ok(4096));
    assert!(
        d.buf.unwrap().to_vec() == [0u8; 4096],
        "the disk still holds zeroes"
    );
    drop(client);
    let stopped = server.stop().unwrap();
    let service = stopped.service();
    assert!(service.read_only());
    let stats = service.stats();
    assert_eq!((stats.refused, stats.writes, stats.discards), (2, 0, 0));
}

/// A client that does not trust its server (only futex wake-ups: `untrusted_server`) works
/// with a block server however it sleeps: its doorbell is a futex wake, which a server asleep
/// in epoll (the default) waits on through io_uring, and one asleep on its clients' kick words
/// is woken for the ring's completions by its control thread. Each round pauses long enough
/// for the server to go to sleep, so every request wakes it; every block read back is checked.
#[test]
fn an_untrusting_client_is_served_by_a_block_server_sleeping_either_way() {
    let _serial = serial();
    for sleep in [
        subring_shm::ServerSleep::Epoll,
        subring_shm::ServerSleep::Futex,
    ] {
        let dir = TempDir::new("untrusting", false);
        let mut config = server_config();
        config.sleep = sleep;
        let (server_end, client_end) = subring_shm::socket_pair().unwrap();
        let mut server = subring_blk::server(config, BlkConfig::new(dir.disk(DEVICE))).unwrap();
        server.add_connection(server_end).unwrap();
        let server = server.spawn().unwrap();
        let mut options = subring_blk::BlkOptions::new();
        options.shm = options.shm.untrusted_server();
        let mut client = match subring_blk::BlkClient::from_socket(client_end, &options) {
            Ok(client) => client,
            Err(subring_blk::BlkClientError::Shm(subring_shm::Error::Refused(
                r @ subring_shm::proto::Refusal::Unsupported { .. },
            ))) => {
                eprintln!("{sleep:?}: skipped: {r}");
                continue;
            }
            Err(e) => panic!("{sleep:?}: {e}"),
        };
        for round in 0..20u8 {
            let offset = u64::from(round) * 4096;
            let mut buf = client.alloc().unwrap();
            buf.fill_from(&[round; 4096]);
            client.write(1, offset, buf).unwrap();
            client.submit().unwrap();
            let d = client.next(Some(LIMIT)).unwrap();
            assert_eq!(d.result, Ok(4096), "{sleep:?}, round {round}: write");
            std::thread::sleep(Duration::from_millis(2));
            client.read(2, offset, d.buf.unwrap(), 4096).unwrap();
            client.submit().unwrap();
            let d = client.next(Some(LIMIT)).unwrap();
            assert_eq!(d.result, Ok(4096), "{sleep:?}, round {round}: read");
            assert!(
                d.buf.unwrap().to_vec() == [round; 4096],
                "{sleep:?}, round {round}: data"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(client);
        let stopped = server.stop().unwrap();
        assert_eq!(stopped.service().stats().reads, 20, "{sleep:?}");
        let stats = stopped.stats();
        assert!(stats.sleeps >= 20, "{sleep:?}: {stats:?}");
        if sleep == subring_shm::ServerSleep::Epoll {
            assert!(stats.futex_doorbell_waits >= 20, "{stats:?}");
        }
    }
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
        // Unmapped on the server's dropper thread, a moment after the release.
        let start = Instant::now();
        while mapped_client_memfds() > 0 {
            assert!(start.elapsed() < LIMIT, "the client's memory stayed mapped");
            std::thread::sleep(Duration::from_millis(1));
        }
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
    // Its leaving is a message the server takes at a later turn: waited for, not raced by the
    // stop (which once came first under CI's load).
    running.until("the last client is released", |s| {
        s.server.clients == 0 && s.blk_clients == 0
    });
    let server = running.stop();
    assert_eq!(server.stats().clients, 0);
}
