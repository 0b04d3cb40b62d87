//! Step 2: the kernel as a subsystem, io_uring reads into fixed buffers, beside `pread`.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use subring::data::{BufferPool, Region, RegionOptions, SharedBytes};
use subring::queue::{Completer, Submitter};
use subring::uring::{FixedBuf, Op, Output, Submission, Target, Uring};

use super::*;

/// Whether this process may set up an io_uring: `Err` says why not.
pub(crate) fn available() -> Result<(), String> {
    Uring::builder()
        .entries(2)
        .build()
        .map(drop)
        .map_err(|e| e.to_string())
}

pub(crate) fn kernel(dir: &TourDir) -> Result<(), Error> {
    let mut ring = Uring::builder()
        .entries(64)
        .build()
        .map_err(|e| format!("io_uring is not available here: {e}"))?;
    let path = dir.path("data");
    let file = make_file(&path)?;
    // Open is all the tour needs: the name goes now (its 32 MiB with the last descriptor).
    std::fs::remove_file(&path).map_err(|e| format!("removing {}: {e}", path.display()))?;
    let depth = DEPTH as usize;
    let region = Arc::new(Region::memfd(
        "tour",
        PAYLOAD * depth,
        RegionOptions::new(),
    )?);
    let pool = BufferPool::new(region.clone(), 0, PAYLOAD, depth)?;
    ring.register_region(region)?;
    ring.register_files(&[&file])?;
    println!(
        "   {READS} random 4 KiB reads of a {} MiB page-cached file, {depth} in flight, into \
         fixed buffers: a memfd region registered with the ring (the kernel copies straight \
         into memory another process could map). Every block read is checked (every 64th word).",
        FILE_LEN >> 20
    );

    let mut next = offsets();
    let mut started = vec![(Instant::now(), 0u64); depth];
    let mut samples = Latency::new();
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
            samples.record(t.elapsed());
            let n = c.result?;
            let Output::Fixed(FixedBuf::Buf(buf)) = c.output else {
                return Err("a fixed read did not return its buffer".into());
            };
            if n as usize != PAYLOAD {
                return Err(format!("short read: {n} bytes").into());
            }
            check_block(buf.bytes(), offset)?;
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
    let mut samples = Latency::new();
    let start = Instant::now();
    let mut calls = 0u64; // the preads made, counted as they are made
    for _ in 0..READS {
        let offset = next();
        let t = Instant::now();
        let n = file.read_at(&mut buf, offset)?;
        calls += 1;
        samples.record(t.elapsed());
        if n != PAYLOAD {
            return Err(format!("short pread: {n} bytes").into());
        }
        check_block(SharedBytes::from_mut_slice(&mut buf), offset)?;
    }
    let took = start.elapsed();
    println!(
        "   {:<22} {:>11} {:>12} {:>12} {:>12.3}",
        "classic: pread loop",
        format!("{:.0} K", READS as f64 / took.as_secs_f64() / 1e3),
        us(samples.p50()),
        us(samples.p99()),
        calls as f64 / READS as f64
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
            ring.push(Submission::new(i, Op::Nop))?;
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
