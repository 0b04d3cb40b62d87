//! Copies a file through the kernel transport with fixed buffers: a pipeline of linked
//! read→write pairs, each naming a buffer of a memfd region registered with the ring.
//!
//! ```text
//! cargo run --release --example kernel_copy [-- SRC DST]
//! ```
//!
//! Without arguments it copies a fresh 256 MiB file of pseudo-random data in the temp directory
//! and checks the copy. It prints the throughput and how many `io_uring_enter` calls each
//! operation cost, beside `std::io::copy` of the same file in the same run.

use std::fs::File;
use std::io::{Read, Write};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use subring::data::{Buf, BufferPool, Region, RegionOptions};
use subring::queue::{Completer, Submitter};
use subring::uring::{FixedBuf, Link, Op, Submission, Target, Uring};

type Error = Box<dyn std::error::Error>;

const CHUNK: usize = 1 << 20;
const DEPTH: usize = 8;

fn main() -> Result<(), Error> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let (src, dst, generated) = match &args[..] {
        [src, dst] => (src.clone(), dst.clone(), false),
        [] => {
            let dir = std::env::temp_dir();
            let src = dir.join(format!("subring-copy-src-{}", std::process::id()));
            make_input(&src, 256 << 20)?;
            (
                src,
                dir.join(format!("subring-copy-dst-{}", std::process::id())),
                true,
            )
        }
        _ => return Err("usage: kernel_copy [SRC DST]".into()),
    };
    let len = std::fs::metadata(&src)?.len();
    let std_dst = dst.with_extension("std");
    let std_copy = || -> Result<Duration, Error> {
        let start = Instant::now();
        std::io::copy(&mut File::open(&src)?, &mut File::create(&std_dst)?)?;
        Ok(start.elapsed())
    };
    // One untimed copy first: it pulls the input into the page cache and touches the memory the
    // destination's page cache will use (this VM is slow on the first use of fresh memory).
    std_copy()?;
    // Then alternate the two ways, so that neither always runs on a colder machine.
    const ROUNDS: usize = 3;
    let (mut ours, mut theirs, mut enters, mut ops) = (Vec::new(), Vec::new(), 0, 0);
    for _ in 0..ROUNDS {
        let (took, e, o) = copy_uring(&src, &dst, len)?;
        (enters, ops) = (enters + e, ops + o);
        ours.push(took);
        theirs.push(std_copy()?);
    }
    if generated {
        verify(&src, &dst)?;
    }
    std::fs::remove_file(&std_dst)?;

    let gib = |d: &Duration| len as f64 / d.as_secs_f64() / (1u64 << 30) as f64;
    let ratios: Vec<f64> = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| b.as_secs_f64() / a.as_secs_f64())
        .collect();
    let mut sorted = ratios.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let list = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.2}", gib(d)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "copied {} MiB {} -> {}, {ROUNDS} rounds alternating",
        len >> 20,
        src.display(),
        dst.display()
    );
    println!(
        "  subring (io_uring, {DEPTH} x {} KiB fixed buffers, linked read->write): {} GiB/s",
        CHUNK >> 10,
        list(&ours)
    );
    println!(
        "  std::io::copy:                                                 {} GiB/s",
        list(&theirs)
    );
    println!(
        "  ratio subring / std::io::copy per round: {} (median {:.2})",
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" "),
        sorted[ROUNDS / 2]
    );
    println!(
        "  {ops} operations, {enters} io_uring_enter calls: {:.3} per operation{}",
        enters as f64 / ops as f64,
        if generated { " (copy verified)" } else { "" }
    );
    if generated {
        std::fs::remove_file(&src)?;
        std::fs::remove_file(&dst)?;
    }
    Ok(())
}

fn make_input(path: &Path, len: usize) -> Result<(), Error> {
    let mut f = File::create(path)?;
    let mut x = 0x9e3779b97f4a7c15u64;
    let mut block = vec![0u8; CHUNK];
    for _ in 0..len / CHUNK {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block)?;
    }
    Ok(())
}

fn verify(a: &Path, b: &Path) -> Result<(), Error> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    loop {
        let n = fa.read(&mut ba)?;
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Err("the copy differs from the source".into());
        }
        if n == 0 {
            return Ok(());
        }
    }
}

/// The pipeline: up to `DEPTH` chunks in flight, each a read linked to the write of the same
/// buffer. A buffer is reused once its write has completed.
fn copy_uring(src: &Path, dst: &Path, len: u64) -> Result<(Duration, u64, u64), Error> {
    let (input, output) = (File::open(src)?, File::create(dst)?);
    output.set_len(len)?;
    let region = Arc::new(Region::memfd("copy", CHUNK * DEPTH, RegionOptions::new())?);
    let pool = BufferPool::new(region.clone(), 0, CHUNK, DEPTH)?;
    let mut ring = Uring::builder().entries(2 * DEPTH as u32).build()?;
    ring.register_region(region)?;
    ring.register_files(&[&input, &output])?;

    // Buffers held by the example while their read/write pair is in flight, by chunk index.
    let mut held: Vec<Option<Buf>> = Vec::new();
    let (mut next, mut written) = (0u64, 0u64);
    let mut done = Vec::new();
    let start = Instant::now();
    while written < len {
        while next < len {
            let Some(mut buf) = pool.alloc() else { break };
            let n = (len - next).min(CHUNK as u64) as usize;
            buf.set_len(n);
            let chunk = (next / CHUNK as u64) as usize;
            let handle = buf.handle();
            let read = Op::ReadFixed {
                fd: Target::Fixed(0),
                buf: FixedBuf::Handle(handle),
                offset: next,
            };
            let write = Op::WriteFixed {
                fd: Target::Fixed(1),
                buf: FixedBuf::Handle(handle),
                offset: next,
            };
            ring.push(Submission::new(2 * chunk as u64, read).link(Link::Soft))?;
            ring.push(Submission::new(2 * chunk as u64 + 1, write))?;
            if held.len() <= chunk {
                held.resize_with(chunk + 1, || None);
            }
            held[chunk] = Some(buf);
            next += n as u64;
        }
        // Submit the new pairs and wait for half the pipeline in one io_uring_enter.
        ring.wait_for(DEPTH, Some(Duration::from_secs(30)))?;
        done.clear();
        ring.reap_into(&mut done, 2 * DEPTH)?;
        for c in done.drain(..) {
            let chunk = (c.token / 2) as usize;
            let n = c.result?;
            if c.token % 2 == 1 {
                let buf = held[chunk].take().ok_or("write completed twice")?;
                if n as usize != buf.len() {
                    return Err(
                        format!("short write of chunk {chunk}: {n} of {}", buf.len()).into(),
                    );
                }
                written += u64::from(n);
            } else if held[chunk].as_ref().is_some_and(|b| n as usize != b.len()) {
                return Err(format!("short read of chunk {chunk}: {n} bytes").into());
            }
        }
    }
    let took = start.elapsed();
    let stats = ring.stats();
    Ok((took, stats.enters, stats.completed))
}
