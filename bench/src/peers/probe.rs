//! Which vCPU placement the host gave us.

// The words below live in `MAP_SHARED` memory shared by two processes, which the loom shim
// (`subring_planes::sync`) cannot model: use the std atomics directly.
#![allow(clippy::disallowed_types)]

use super::*;

/// Mean cache-line round trip between two threads, in ns (20 000 rounds, 5 s at most): which
/// vCPU placement the host gave us. NaN if the other thread never ran (or could not start).
/// Pins nothing.
pub fn probe() -> f64 {
    const ROUNDS: u64 = 20_000;
    let line = Arc::new(AtomicU64::new(0));
    let other = Arc::clone(&line);
    let deadline = Instant::now() + Duration::from_secs(5);
    let left = move || deadline.saturating_duration_since(Instant::now());
    let spawned = std::thread::Builder::new()
        .name("peers-probe".into())
        .spawn(move || {
            for i in 0..ROUNDS {
                if spin_until(&other, left(), |v| v == 2 * i + 1).is_err() {
                    return;
                }
                other.store(2 * i + 2, Ordering::Release);
            }
        });
    let Ok(thread) = spawned else { return f64::NAN };
    let start = Instant::now();
    for i in 0..ROUNDS {
        line.store(2 * i + 1, Ordering::Release);
        if spin_until(&line, left(), |v| v == 2 * i + 2).is_err() {
            let _ = thread.join();
            return f64::NAN;
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / ROUNDS as f64;
    thread.join().map_or(f64::NAN, |()| ns)
}

/// "near" if both probes are under 250 ns, "far" if neither is, "mixed" otherwise.
pub fn label(before: f64, after: f64) -> &'static str {
    let near = |ns: f64| ns < 250.0;
    match (near(before), near(after)) {
        (true, true) => "near",
        (false, false) => "far",
        _ => "mixed",
    }
}
