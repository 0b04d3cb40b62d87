//! Throughput: a Unix socket, and a raw shared-memory ring that copies every payload.

// The words below live in `MAP_SHARED` memory shared by two processes, which the loom shim
// (`subring_planes::sync`) cannot model: use the std atomics directly.
#![allow(clippy::disallowed_types)]

use super::*;
use subring_shm::echo::word_sum;

/// A recognisable, non-constant payload.
pub(super) fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(131) + 7) as u8).collect()
}

/// The sum of all bytes (per 256-byte chunk in `u16`, which cannot overflow and vectorises).
pub(super) fn byte_sum(bytes: &[u8]) -> u64 {
    let chunk_sum = |c: &[u8]| u64::from(c.iter().map(|&b| u16::from(b)).sum::<u16>());
    bytes.chunks(256).map(chunk_sum).sum()
}

/// Bytes per second over an `AF_UNIX` `SOCK_STREAM` socketpair: the parent writes `total_bytes`
/// in `msg`-byte writes; the child reads them into a `msg`-byte buffer, sums every byte, and at
/// EOF acknowledges with one byte (the low byte of the sum, which the parent checks). Timed from
/// the first write to the acknowledgement. Stops early (counting the bytes sent) after 10 s.
pub fn unix_socket_throughput(
    total_bytes: usize,
    msg: usize,
    placement: Placement,
) -> Result<f64, String> {
    const WHAT: &str = "unix_socket_throughput";
    if total_bytes == 0 || msg == 0 {
        return Err(format!("{WHAT}: total_bytes and msg must be > 0"));
    }
    let (mine, theirs) = UnixStream::pair().map_err(|e| format!("{WHAT}: socketpair: {e}"))?;
    // Bound every blocking call: a stuck child must not hang the parent on a full socket.
    let timeouts = mine
        .set_write_timeout(Some(WAIT))
        .and_then(|()| mine.set_read_timeout(Some(WAIT)));
    timeouts.map_err(|e| format!("{WHAT}: setting socket timeouts: {e}"))?;
    let (src, mut sink) = (pattern(msg), vec![0u8; msg]);
    let child = move || {
        let mut sum = 0u64;
        loop {
            match (&theirs).read(&mut sink) {
                Ok(0) => break,
                Ok(n) => sum = sum.wrapping_add(byte_sum(&sink[..n])),
                Err(_) => return EXIT_IO,
            }
        }
        (&theirs).write_all(&[sum as u8]).map_or(EXIT_IO, |()| 0)
    };
    run(WHAT, placement, &[mine.as_raw_fd()], child, || {
        let (mut sent, mut writes) = (0usize, 0u64);
        let start = Instant::now();
        while sent < total_bytes && (writes % 64 != 63 || start.elapsed() < SOCKET_BUDGET) {
            let len = msg.min(total_bytes - sent);
            (&mine).write_all(&src[..len]).map_err(io_err("write"))?;
            sent += len;
            writes += 1;
        }
        mine.shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown(SHUT_WR): {e}"))?;
        let mut ack = [0u8; 1];
        (&mine)
            .read_exact(&mut ack)
            .map_err(io_err("reading the ack"))?;
        let secs = start.elapsed().as_secs_f64();
        // Every write but the last was a whole `src`.
        let whole = byte_sum(&src).wrapping_mul((sent / msg) as u64);
        let expect = whole.wrapping_add(byte_sum(&src[..sent % msg]));
        if ack[0] != expect as u8 {
            return Err(format!(
                "checksum: child acked {}, expected {}",
                ack[0], expect as u8
            ));
        }
        drop(mine);
        Ok(sent as f64 / secs)
    })
}

/// The raw SPSC ring of [`shm_ring_throughput`], in `MAP_SHARED` memory.
#[derive(Clone, Copy)]
pub(super) struct Ring<'a> {
    /// Messages published by the producer ([`QUIT`]: the consumer must exit).
    head: &'a AtomicU64,
    /// Messages consumed; on the consumer's line, with `checksum`.
    tail: &'a AtomicU64,
    /// The consumer's running checksum, up to date with `tail`.
    checksum: &'a AtomicU64,
    data: *mut u8,
    slot: usize,
    slots: usize,
    total_bytes: usize,
}

impl Ring<'_> {
    pub(super) fn slot_ptr(&self, k: u64) -> *mut u8 {
        // SAFETY: `k % slots < slots`, so the offset stays inside the `slots * slot` data bytes.
        unsafe { self.data.add((k % self.slots as u64) as usize * self.slot) }
    }

    /// Length of the message that follows the first `sent` bytes.
    pub(super) fn len(&self, sent: usize) -> usize {
        self.slot.min(self.total_bytes - sent)
    }
}

/// Child: copies each published slot out into `dst`, sums the copy as 64-bit words (what
/// subring's zero-copy row has its server compute in place: the same work on the same bytes),
/// releases the slot.
pub(super) fn consume(ring: Ring<'_>, mut dst: Vec<u8>) -> i32 {
    let (mut k, mut published, mut got, mut sum) = (0u64, 0u64, 0usize, 0u64);
    loop {
        if k == published {
            published = match spin_until(ring.head, CHILD_WAIT, |h| h != k) {
                Ok(QUIT) => return 0,
                Ok(h) => h,
                Err(_) => return EXIT_IO,
            };
        }
        let len = ring.len(got);
        // SAFETY: slot `k` was published (head > k, read with Acquire) and the producer does not
        // touch it again until `tail` passes `k`; `dst` holds `slot >= len` bytes.
        unsafe { ptr::copy_nonoverlapping(ring.slot_ptr(k), dst.as_mut_ptr(), len) };
        sum = sum.wrapping_add(word_sum(std::hint::black_box(&dst[..len])));
        got += len;
        k += 1;
        ring.checksum.store(sum, Ordering::Relaxed);
        ring.tail.store(k, Ordering::Release);
    }
}

/// Bytes per second through a raw SPSC ring of `slots` × `slot` bytes in `MAP_SHARED` memory,
/// with `head` and `tail` counters on separate cache lines: the parent copies a `slot`-byte
/// source buffer into each free slot and publishes it; the child copies each published slot out
/// into a private buffer, sums it as 64-bit words and releases it. Timed from the first copy in until the
/// child has released every slot (its checksum is checked). The "raw shared-memory ring"
/// reference. Stops early (counting the bytes moved) after 3 s, which in [`Placement::Shared`]
/// (one scheduler tick per ring's worth) it does.
pub fn shm_ring_throughput(
    total_bytes: usize,
    slot: usize,
    slots: usize,
    placement: Placement,
) -> Result<f64, String> {
    const WHAT: &str = "shm_ring_throughput";
    /// Where the slots start: a page after the counters.
    const DATA: usize = 4096;
    if total_bytes == 0 || slot == 0 || slots == 0 {
        return Err(format!("{WHAT}: total_bytes, slot and slots must be > 0"));
    }
    let len = slot.checked_mul(slots).and_then(|d| d.checked_add(DATA));
    let shm = Shm::new(len.ok_or(format!("{WHAT}: {slots} x {slot} bytes overflow"))?)
        .map_err(|e| format!("{WHAT}: {e}"))?;
    let ring = Ring {
        head: shm.word(0),
        tail: shm.word(LINE),
        checksum: shm.word(LINE + 8),
        // SAFETY: the mapping holds `DATA + slots * slot` bytes.
        data: unsafe { shm.base.add(DATA) },
        slot,
        slots,
        total_bytes,
    };
    // SAFETY: the data bytes lie inside the mapping, and no other process exists yet. Touching
    // them now keeps page faults out of the timed loop.
    unsafe { ptr::write_bytes(ring.data, 1, slots * slot) };
    let (src, dst, depth) = (pattern(slot), vec![1u8; slot], slots as u64);
    let producer = || {
        let (mut k, mut free_below, mut sent, mut expect) = (0u64, depth, 0usize, 0u64);
        let start = Instant::now();
        while sent < total_bytes && (k % 64 != 63 || start.elapsed() < SPIN_BUDGET) {
            if k == free_below {
                // Slot `k` is free once the consumer has released message `k - slots`.
                free_below = spin_until(ring.tail, WAIT, |t| t + depth > k)? + depth;
            }
            let len = ring.len(sent);
            // SAFETY: slot `k` lies in the ring and was released (tail > k - slots, Acquire);
            // the consumer does not read it before `head` passes `k`; `src` has `len` bytes.
            unsafe { ptr::copy_nonoverlapping(src.as_ptr(), ring.slot_ptr(k), len) };
            k += 1;
            ring.head.store(k, Ordering::Release);
            expect = expect.wrapping_add(word_sum(&src[..len]));
            sent += len;
        }
        spin_until(ring.tail, WAIT, |t| t == k)?;
        let secs = start.elapsed().as_secs_f64();
        let sum = ring.checksum.load(Ordering::Relaxed); // ordered by the Acquire on `tail`
        ring.head.store(QUIT, Ordering::Release);
        if sum != expect {
            return Err(format!("checksum: child summed {sum}, expected {expect}"));
        }
        Ok(sent as f64 / secs)
    };
    run(WHAT, placement, &[], move || consume(ring, dst), producer)
}
