//! Step 3: the chain. A storage process (the block service) fronts the kernel; the tour reads
//! blocks through it, and the kernel's reads land in the tour's own memory, which the storage
//! process registered with its io_uring: no copy in between.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use subring::blk::{self, BlkClient, BlkConfig, BlkOptions};
use subring::queue::{Completer, Submitter};

use super::*;

/// Block size of the chain's reads.
const BLOCK: usize = 64 << 10;
/// Reads through the chain.
const CHAIN_READS: u64 = 4000;

/// The child process: a block service on `path` over the file `device`, serving until its
/// client leaves (or `PATIENCE` passes with nobody connected); then prints its counters.
pub fn serve_blk(path: &Path, device: &Path) -> Result<(), Error> {
    let mut config = blk::server_config();
    config.exit_when_empty = true;
    let mut server = blk::serve(path, config, BlkConfig::new(device))?;
    let start = Instant::now();
    while server.stats().welcomed == 0 {
        if start.elapsed() > PATIENCE {
            return Err("the tour's client never came".into());
        }
        server.run_for(Duration::from_millis(20))?;
    }
    server.run()?;
    let s = server.service().stats();
    println!(
        "{} {} {} {} {} {} {} {}",
        s.reads,
        s.bytes_read,
        s.bytes_copied,
        s.uring.enters,
        s.regions_registered,
        s.regions_unregistered,
        u8::from(server.service().direct()),
        server.stats().sleeps,
    );
    Ok(())
}

pub(crate) fn chain(dir: &TourDir) -> Result<(), Error> {
    let path = dir.path("blk.sock");
    let device = dir.path("disk");
    drop(make_file(&device)?);
    let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let child = Command::new(exe)
        .arg("serve-blk")
        .arg(&path)
        .arg(&device)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the storage process: {e}"))?;
    let server_pid = child.id();
    let mut child = Reaped(Some(child));
    let options = BlkOptions::new().buffers(BLOCK as u32, 32).capacity(32);
    let mut client = connect_to_child(&mut child, "the storage process", || {
        BlkClient::connect(&path, &options)
            .map_err(|e| format!("connecting to {}: {e}", path.display()).into())
    })?;
    // The storage process has the file open: its name goes now.
    std::fs::remove_file(&device).map_err(|e| format!("removing {}: {e}", device.display()))?;
    println!(
        "   The storage process (pid {server_pid}) serves a {} MiB file {}. It registered this",
        client.size() >> 20,
        if client.direct() {
            "with O_DIRECT: the disk DMAs into our buffers"
        } else {
            "buffered (no O_DIRECT on this file system): the page cache copies into our buffers"
        }
    );
    println!(
        "   process's buffers (a sealed memfd it maps) with its io_uring as fixed buffers, so a"
    );
    println!("   read names one of our buffers and the kernel fills it in place.");

    let blocks = FILE_LEN / BLOCK as u64;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next_offset = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % blocks) * BLOCK as u64
    };
    let mut sent = std::collections::HashMap::new();
    let mut samples = Latency::new();
    let (mut issued, mut done) = (0u64, 0u64);
    let start = Instant::now();
    while done < CHAIN_READS {
        while issued < CHAIN_READS && client.in_flight() < 32 {
            let Some(buf) = client.alloc() else { break };
            let offset = next_offset();
            client.read(issued, offset, buf, BLOCK)?;
            sent.insert(issued, (offset, Instant::now()));
            issued += 1;
        }
        client.submit()?;
        let mut d = client.next(Some(PATIENCE))?;
        loop {
            let (offset, t) = sent
                .remove(&d.tag)
                .ok_or("an answer to a read never sent")?;
            samples.record(t.elapsed());
            let n = d.result.map_err(|e| format!("read at {offset}: {e}"))?;
            let buf = d.buf.ok_or("a read did not hand its buffer back")?;
            if n as usize != BLOCK {
                return Err(format!("short read: {n} bytes").into());
            }
            check_block(buf.bytes(), offset)?;
            done += 1;
            match client.try_next()? {
                Some(more) => d = more,
                None => break,
            }
        }
    }
    let took = start.elapsed();
    let shm = client.shm();
    let (bell, wait) = (shm.doorbell_stats(), shm.notify_stats());
    drop(client);

    let out = finish(&mut child, "the storage process", 2 * PATIENCE)?;
    let nums: Vec<u64> = out
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [reads, bytes, copied, enters, registered, unregistered, _direct, sleeps] = nums[..] else {
        return Err(format!("the storage process printed {out:?}").into());
    };
    println!(
        "\n   {CHAIN_READS} random {} KiB reads, 32 in flight, every block checked (every 64th \
         word): {:.2} GB/s, latency p50 {} p99 {}",
        BLOCK >> 10,
        (CHAIN_READS as usize * BLOCK) as f64 / took.as_secs_f64() / 1e9,
        us(samples.p50()),
        us(samples.p99())
    );
    println!(
        "   data plane: {} MiB read by the kernel into this process's buffers; bytes copied by \
         the storage process: {copied}",
        bytes >> 20
    );
    println!(
        "   control plane (client -> storage): {} submits rang the doorbell {} times, skipped \
         it {} times; (storage -> kernel): {enters} io_uring_enter calls for {reads} reads \
         ({:.3} per read)",
        bell.rung + bell.skipped,
        bell.rung,
        bell.skipped,
        enters as f64 / reads.max(1) as f64
    );
    println!(
        "   interrupt plane: this process waited {} times and slept {} times; the storage \
         process slept {sleeps} times (woken by its ring's eventfd or a doorbell)",
        wait.waits, wait.sleeps
    );
    println!(
        "   our memory was registered with the storage process's ring {registered} time(s), and \
         unregistered {unregistered} time(s) when we left"
    );
    Ok(())
}
