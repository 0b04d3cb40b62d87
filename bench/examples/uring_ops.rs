//! The kernel transport's two loops of `subring bench --only kernel` on one thread, through
//! subring or the raw io-uring crate, for counting user-space instructions per operation with
//! callgrind (perf counters do not work on the project's VM; callgrind does not see inside
//! system calls, so the kernel's work is left out):
//!
//! ```sh
//! cargo build --release -p subring-bench --example uring_ops
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \
//!     target/release/examples/uring_ops subring-nops   # or: raw-nops, subring-reads, raw-reads
//! callgrind_annotate /tmp/cg.out | head -40
//! ```
//!
//! - `*-nops`: 1,000,000 NOPs in batches of 32 (the instruction total divided by 10^6 is the
//!   instructions per operation, the loop's own included);
//! - `*-reads`: 200,000 random 4 KiB reads of a page-cached 64 MiB file (made in the temporary
//!   directory the first time) with 32 in flight, each buffer moved into its read and handed
//!   back with the completion, the file shared with the ring (divide by 200,000).
//!
//! Each loop is the bench's, as written there (the raw read loop collects each batch of
//! completions into a `Vec`, as the bench's does).

use io_uring::{opcode, IoUring};
use subring_planes::queue::{Completer, Submitter};
use subring_uring::{Op, Submission, Uring};

const N: u64 = 1_000_000;
const BATCH: usize = 32;

fn subring() {
    let mut ring = Uring::builder()
        .entries(256)
        .build()
        .expect("io_uring setup");
    let mut out = Vec::with_capacity(64);
    let mut done = 0;
    while done < N {
        for i in 0..BATCH {
            ring.push(Submission::new(i as u64, Op::Nop))
                .map_err(|r| r.error)
                .expect("push");
        }
        ring.wait_for(BATCH, None).expect("wait");
        out.clear();
        done += ring.reap_into(&mut out, BATCH).expect("reap") as u64;
    }
}

fn raw() {
    let mut ring = IoUring::new(256).expect("io_uring setup");
    let mut done = 0;
    while done < N {
        for _ in 0..BATCH {
            let e = opcode::Nop::new().build().user_data(1);
            // SAFETY: a NOP entry points to no memory.
            unsafe { ring.submission().push(&e) }.expect("push");
        }
        ring.submit_and_wait(BATCH).expect("submit");
        for c in ring.completion() {
            assert!(c.result() >= 0, "raw nop failed");
            std::hint::black_box(c.user_data());
            done += 1;
        }
    }
}

const BLOCK: usize = 4096;
const FILE_LEN: u64 = 64 << 20;
const DEPTH: usize = 32;
const READS: u64 = 200_000;

fn file() -> std::fs::File {
    use std::io::Write;
    let path = std::env::temp_dir().join("uring_ops.data");
    if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) != FILE_LEN {
        let mut f = std::fs::File::create(&path).expect("create");
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..FILE_LEN >> 20 {
            f.write_all(&chunk).expect("write");
        }
    }
    std::fs::File::open(&path).expect("open")
}

fn offset(i: u64) -> u64 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) % (FILE_LEN / BLOCK as u64) * BLOCK as u64
}

fn subring_reads() {
    use subring_uring::{Output, Target};
    let mut ring = Uring::builder()
        .entries(256)
        .build()
        .expect("io_uring setup");
    let fd = Target::fd(std::sync::Arc::new(file()));
    let mut out = Vec::with_capacity(64);
    let (mut issued, mut done) = (0u64, 0u64);
    for i in 0..DEPTH {
        let op = Op::Read {
            fd: fd.clone(),
            buf: vec![0; BLOCK],
            offset: offset(issued),
        };
        ring.push(Submission::new(i as u64, op))
            .map_err(|r| r.error)
            .expect("push");
        issued += 1;
    }
    while done < READS {
        ring.wait_for(1, None).expect("wait");
        out.clear();
        ring.reap_into(&mut out, DEPTH).expect("reap");
        for c in out.drain(..) {
            assert_eq!(c.result.expect("read") as usize, BLOCK);
            done += 1;
            if issued < READS {
                let Output::Buf(buf) = c.output else {
                    panic!("no buffer")
                };
                let op = Op::Read {
                    fd: fd.clone(),
                    buf,
                    offset: offset(issued),
                };
                ring.push(Submission::new(c.token, op))
                    .map_err(|r| r.error)
                    .expect("push");
                issued += 1;
            }
        }
    }
}

fn raw_reads() {
    use std::os::fd::AsRawFd;
    let f = file();
    let mut ring = IoUring::new(256).expect("io_uring setup");
    let mut bufs = vec![vec![0u8; BLOCK]; DEPTH];
    let fd = io_uring::types::Fd(f.as_raw_fd());
    let (mut issued, mut done) = (0u64, 0u64);
    let push = |ring: &mut IoUring, bufs: &mut Vec<Vec<u8>>, i: usize, off: u64| {
        let e = opcode::Read::new(fd, bufs[i].as_mut_ptr(), BLOCK as u32)
            .offset(off)
            .build()
            .user_data(i as u64);
        // SAFETY: `bufs[i]` outlives the loop and is not reused until its completion.
        unsafe { ring.submission().push(&e) }.expect("push");
    };
    for i in 0..DEPTH {
        push(&mut ring, &mut bufs, i, offset(issued));
        issued += 1;
    }
    while done < READS {
        ring.submit_and_wait(1).expect("submit");
        let finished: Vec<(usize, i32)> = ring
            .completion()
            .map(|c| (c.user_data() as usize, c.result()))
            .collect();
        for (i, res) in finished {
            assert_eq!(res, BLOCK as i32);
            done += 1;
            if issued < READS {
                push(&mut ring, &mut bufs, i, offset(issued));
                issued += 1;
            }
        }
    }
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("subring-nops") => subring(),
        Some("raw-nops") => raw(),
        Some("subring-reads") => subring_reads(),
        Some("raw-reads") => raw_reads(),
        _ => eprintln!("usage: uring_ops subring-nops|raw-nops|subring-reads|raw-reads"),
    }
}
