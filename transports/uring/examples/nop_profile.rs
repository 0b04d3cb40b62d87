//! A fixed NOP workload (5000 batches of 32) for counting user-space instructions per
//! operation with callgrind, which is repeatable on a noisy machine where timings are not:
//!
//! ```text
//! cargo build --release -p subring-uring --example nop_profile
//! valgrind --tool=callgrind target/release/examples/nop_profile subring
//! valgrind --tool=callgrind target/release/examples/nop_profile raw
//! ```
//!
//! Divide the reported `I refs` by 160,000 operations.

use subring_planes::queue::{Completer, Submitter};
use subring_uring::{Op, Submission, Uring};

const BATCHES: usize = 5000;
const BATCH: usize = 32;

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("raw") => raw(),
        Some("subring") | None => subring(),
        Some(other) => {
            eprintln!("unknown mode {other:?}: expected raw or subring");
            std::process::exit(2);
        }
    }
}

fn subring() {
    let mut ring = Uring::builder()
        .entries(256)
        .build()
        .expect("io_uring setup");
    let mut out = Vec::with_capacity(BATCH);
    for _ in 0..BATCHES {
        for i in 0..BATCH {
            ring.push(Submission::new(i as u64, Op::Nop))
                .map_err(|r| r.error)
                .expect("push");
        }
        ring.wait_for(BATCH, None).expect("wait");
        out.clear();
        ring.reap_into(&mut out, BATCH).expect("reap");
    }
}

fn raw() {
    let mut ring = io_uring::IoUring::new(256).expect("io_uring setup");
    for _ in 0..BATCHES {
        for _ in 0..BATCH {
            let e = io_uring::opcode::Nop::new().build().user_data(1);
            // SAFETY: a NOP entry points to no memory.
            unsafe { ring.submission().push(&e).expect("push") };
        }
        ring.submit_and_wait(BATCH).expect("wait");
        let _ = ring.completion().count();
    }
}
