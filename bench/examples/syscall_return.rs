//! What returning through a frame after a system call costs on this machine.
//!
//! The same system call (a `FUTEX_WAKE` of a word nobody waits on: a cheap round trip into
//! the kernel) is made in a loop three ways: inlined into the loop (rustix's direct system
//! call), from an out-of-line function the loop calls (so one `ret` follows each system call),
//! and through libc's `syscall()` (which is such a function). On AMD machines whose kernel
//! mitigates Speculative Return Stack Overflow with "Safe RET"
//! (`/sys/devices/system/cpu/vulnerabilities/spec_rstack_overflow`), the first return after a
//! system call mispredicts expensively; this is why subring's waits are inlined into the
//! caller, system call included. docs/runs/2026-11-24-session-4.md quotes its output.
//!
//! Run: `cargo run --release -p subring-bench --example syscall_return`

// A futex word as a system call's argument, not a protocol between threads: nothing for the
// loom shim to model.
#![allow(clippy::disallowed_types)]

use std::sync::atomic::AtomicU32;
use std::time::Instant;

use rustix::thread::futex;

static WORD: AtomicU32 = AtomicU32::new(0);

#[inline(always)]
fn wake_inline() {
    let _ = std::hint::black_box(futex::wake(&WORD, futex::Flags::PRIVATE, 1));
}

#[inline(never)]
fn wake_in_a_function() {
    wake_inline();
}

#[inline(never)]
fn wake_two_frames_down() {
    wake_in_a_function();
    std::hint::black_box(());
}

#[inline(always)]
fn wake_libc() {
    // SAFETY: FUTEX_WAKE only uses the address to find waiters; the word is a live static.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            WORD.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        )
    };
    std::hint::black_box(r);
}

const CALLS: u32 = 2_000_000;

#[inline(always)]
fn time(f: impl Fn()) -> f64 {
    let start = Instant::now();
    for _ in 0..CALLS {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(CALLS)
}

fn main() {
    let srso =
        std::fs::read_to_string("/sys/devices/system/cpu/vulnerabilities/spec_rstack_overflow")
            .unwrap_or_else(|_| "unknown\n".into());
    println!("spec_rstack_overflow: {}", srso.trim());
    println!("ns per FUTEX_WAKE (no waiter), median of 5 runs of {CALLS}:");
    let names = [
        "inlined into the loop",
        "one frame to return through",
        "two frames to return through",
        "libc syscall()",
    ];
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for _ in 0..5 {
        // Function items (each its own type), so that each loop is compiled with its call
        // inlined: a function pointer would put a frame around every variant.
        runs[0].push(time(wake_inline));
        runs[1].push(time(wake_in_a_function));
        runs[2].push(time(wake_two_frames_down));
        runs[3].push(time(wake_libc));
    }
    let inline = median(&mut runs[0]);
    for (name, run) in names.iter().zip(&mut runs) {
        let m = median(run);
        println!("  {name:30} {m:7.1} ns  ({:+.1} ns)", m - inline);
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
