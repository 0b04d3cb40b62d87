//! Waiting for a batch (`Uring::wait_batch`): as many completions as asked, or whatever came
//! once the batch wait has passed, or the timeout.

use super::*;

/// With one completion ready and the other 30 s away, the wait returns once the batch wait has
/// passed, not after 30 s; with both ready it returns at once.
#[test]
fn a_batch_wait_returns_with_what_came_once_the_batch_wait_has_passed() {
    let mut ring = Uring::builder().build().unwrap();
    push(
        &mut ring,
        1,
        Op::Timeout {
            after: Duration::from_secs(30),
            count: 0,
        },
    );
    push(&mut ring, 2, Op::Nop);
    let t0 = Instant::now();
    ring.wait_batch(2, Duration::from_millis(20), Some(Duration::from_secs(20)))
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert_eq!(ring.completions_ready(), 1);
    assert_eq!(ring.reap().unwrap().unwrap().token, 2);
    // Two more ready at once: no wait at all.
    push(&mut ring, 3, Op::Nop);
    push(&mut ring, 4, Op::Nop);
    ring.wait_batch(2, Duration::from_secs(5), Some(Duration::from_secs(20)))
        .unwrap();
    assert_eq!(ring.completions_ready(), 2);
    let _ = (ring.reap().unwrap(), ring.reap().unwrap());
    push(&mut ring, 5, Op::Cancel { token: 1 });
    let _ = (next(&mut ring), next(&mut ring));
}

/// Nothing comes: the timeout ends the wait.
#[test]
fn a_batch_wait_ends_at_its_timeout() {
    let mut ring = Uring::builder().build().unwrap();
    push(
        &mut ring,
        1,
        Op::Timeout {
            after: Duration::from_secs(30),
            count: 0,
        },
    );
    push(
        &mut ring,
        2,
        Op::Timeout {
            after: Duration::from_secs(30),
            count: 0,
        },
    );
    let t0 = Instant::now();
    let e = ring
        .wait_batch(2, Duration::from_millis(5), Some(Duration::from_millis(50)))
        .unwrap_err();
    assert!(matches!(e, QueueError::Timeout(_)), "{e}");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(45) && took < Duration::from_secs(10),
        "{took:?}"
    );
    push(&mut ring, 3, Op::CancelAll);
    let _ = (next(&mut ring), next(&mut ring), next(&mut ring));
}
