//! A client of `blk_server`: writes a pattern, reads it back at queue depth 32 and checks every
//! byte, then prints throughput, latency and what crossed each plane.
//!
//! ```sh
//! cargo run --release --example blk_client -- /tmp/subring-blk.sock [BLOCK_SIZE] [COUNT] [--untrusting]
//! ```
//! BLOCK_SIZE defaults to 65536 (a multiple of 4096), COUNT (reads) to 20000. `--untrusting`
//! connects as a client that does not trust the server (`ClientOptions::untrusted_server`: its
//! doorbell a futex wake, which the server waits on however it sleeps).

use std::time::{Duration, Instant};

use subring::blk::{BlkClient, BlkOptions};
use subring::queue::{Completer, Submitter};

const LIMIT: Option<Duration> = Some(Duration::from_secs(30));

fn word(offset: u64) -> u64 {
    offset.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed
}

fn fill(offset: u64, bytes: &mut [u8]) {
    for (i, w) in bytes.chunks_mut(8).enumerate() {
        let v = word(offset + i as u64 * 8).to_le_bytes();
        w.copy_from_slice(&v[..w.len()]);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let all: Vec<String> = std::env::args().skip(1).collect();
    let untrusting = all.iter().any(|a| a == "--untrusting");
    if let Some(bad) = all
        .iter()
        .find(|a| a.starts_with("--") && *a != "--untrusting")
    {
        return Err(format!("unknown option {bad} (the one option is --untrusting)").into());
    }
    let mut args = all.into_iter().filter(|a| !a.starts_with("--"));
    let path = args
        .next()
        .unwrap_or_else(|| "/tmp/subring-blk.sock".to_string());
    let block: usize = args.next().as_deref().unwrap_or("65536").parse()?;
    let count: u64 = args.next().as_deref().unwrap_or("20000").parse()?;
    if block == 0 || block % 4096 != 0 {
        return Err("BLOCK_SIZE must be a positive multiple of 4096".into());
    }
    if count == 0 {
        return Err("COUNT must be at least 1".into());
    }
    let mut options = BlkOptions::new().buffers(block as u32, 64).capacity(64);
    if untrusting {
        options = options.untrusted_server();
    }
    let mut client = BlkClient::connect(&path, &options).map_err(|e| format!("blk_client: {e}"))?;
    let blocks = (client.size() / block as u64).min(4096);
    if blocks == 0 {
        return Err("the device is smaller than one block".into());
    }
    println!(
        "connected to {path}: {} bytes, {}; {blocks} blocks of {block} bytes; doorbell: {}",
        client.size(),
        if client.direct() {
            "O_DIRECT"
        } else {
            "buffered"
        },
        client.shm().kick_mode()
    );

    // Write a pattern over the blocks used, then flush.
    let start = Instant::now();
    let mut next = 0u64;
    let mut done = 0u64;
    while done < blocks {
        while next < blocks && client.in_flight() < 32 {
            let Some(mut buf) = client.alloc() else { break };
            let offset = next * block as u64;
            let mut data = vec![0u8; block];
            fill(offset, &mut data);
            buf.fill_from(&data);
            client.write(next, offset, buf)?;
            next += 1;
        }
        client.submit()?;
        let d = client.next(LIMIT)?;
        let n = d.result.map_err(|e| format!("write {}: {e}", d.tag))?;
        if n as usize != block {
            return Err(format!("write {}: {n} of {block} bytes written", d.tag).into());
        }
        done += 1;
    }
    client.flush(u64::MAX)?;
    client.submit()?;
    client.next(LIMIT)?.result?;
    println!("wrote {blocks} blocks and flushed in {:?}", start.elapsed());

    // Random reads at queue depth 32, every byte checked.
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut lat = Vec::with_capacity(count as usize);
    let mut sent = std::collections::HashMap::new();
    let mut expect = vec![0u8; block];
    let (mut issued, mut checked) = (0u64, 0u64);
    let start = Instant::now();
    while checked < count {
        while issued < count && client.in_flight() < 32 {
            let Some(buf) = client.alloc() else { break };
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let offset = (rng % blocks) * block as u64;
            client.read(issued, offset, buf, block)?;
            sent.insert(issued, (offset, Instant::now()));
            issued += 1;
        }
        client.submit()?;
        let d = client.next(LIMIT)?;
        let (offset, at) = sent.remove(&d.tag).ok_or("an answer to nothing sent")?;
        lat.push(at.elapsed());
        let n = d.result.map_err(|e| format!("read {}: {e}", d.tag))?;
        let buf = d.buf.ok_or("the buffer did not come back")?;
        fill(offset, &mut expect);
        if n as usize != block || buf.to_vec() != expect {
            return Err(format!("read {} at {offset}: wrong data", d.tag).into());
        }
        checked += 1;
    }
    let took = start.elapsed();
    lat.sort();
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    println!(
        "{count} random reads at QD 32, every byte checked: {:.0} MB/s, {:.0} reads/s; \
         latency p50 {:?} p99 {:?}",
        (count * block as u64) as f64 / took.as_secs_f64() / 1e6,
        count as f64 / took.as_secs_f64(),
        p(0.5),
        p(0.99)
    );
    let shm = client.shm();
    let (bell, notify) = (shm.doorbell_stats(), shm.notify_stats());
    println!(
        "doorbells rung {} skipped {}; completions waited for {}, slept {}",
        bell.rung, bell.skipped, notify.waits, notify.sleeps
    );
    Ok(())
}
