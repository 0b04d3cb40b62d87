//! Ring publish and consume, single and batched, under both publications.

use super::*;

/// Single pushes and pops through a capacity-2 ring, wrapping around: every value arrives once,
/// in order, and every slot read is ordered after its write (loom checks the slot cells).
fn publish_consume_wraps<P: Publication>() {
    model(|| {
        let (mut tx, mut rx) = Ring::<u32, P>::with_capacity(2).unwrap();
        let producer = thread::spawn(move || push_all(&mut tx, 1..=3));
        let mut expected = 1;
        while expected <= 3 {
            match rx.pop().unwrap() {
                Some(v) => {
                    assert_eq!(v, expected);
                    expected += 1;
                }
                None => thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert_eq!(rx.pop().unwrap(), None);
    });
}

#[test]
fn indexed_ring_publish_consume_wraps() {
    publish_consume_wraps::<Indexed>();
}

#[test]
fn stamped_ring_publish_consume_wraps() {
    publish_consume_wraps::<Stamped>();
}

/// Batches: a write chunk committed at once and a wrapping second batch, read back with read
/// chunks released at once.
fn batches_wrap<P: Publication>() {
    model(|| {
        let (mut tx, mut rx) = Ring::<u32, P>::with_capacity(4).unwrap();
        let producer = thread::spawn(move || {
            let mut chunk = tx.write_chunk(3).unwrap();
            assert_eq!(chunk.len(), 3, "an empty ring has room for 3");
            for i in 0..3 {
                chunk.set(i, i as u32 + 1);
            }
            chunk.commit(3);
            // The second batch wraps around the end of the ring once the consumer frees slots.
            let mut sent = 0;
            let values = [4, 5, 6];
            while sent < values.len() {
                sent += tx.push_slice(&values[sent..]).unwrap();
                if sent < values.len() {
                    thread::yield_now();
                }
            }
        });
        let mut got = Vec::new();
        while got.len() < 6 {
            let chunk = rx.read_chunk(4).unwrap();
            if chunk.is_empty() {
                drop(chunk);
                thread::yield_now();
                continue;
            }
            got.extend(chunk.iter());
            chunk.release_all();
        }
        producer.join().unwrap();
        assert_eq!(got, [1, 2, 3, 4, 5, 6]);
    });
}

#[test]
fn indexed_ring_batches_wrap() {
    batches_wrap::<Indexed>();
}

#[test]
fn stamped_ring_batches_wrap() {
    batches_wrap::<Stamped>();
}

/// Negative control: publishing with Relaxed instead of Release (the tail of an indexed ring,
/// a slot's stamp in a stamped one) lets the consumer read an entry that is not ordered after
/// the producer's write of it. loom must report it.
fn relaxed_publish<P: Publication>() {
    model(|| {
        let (mut tx, mut rx) = Ring::<u32, P>::with_capacity(2).unwrap();
        let producer = thread::spawn(move || tx.push_relaxed_for_loom(7).unwrap());
        loop {
            if let Some(v) = rx.pop().unwrap() {
                assert_eq!(v, 7);
                break;
            }
            thread::yield_now();
        }
        producer.join().unwrap();
    });
}

#[test]
#[should_panic(expected = "Causality violation")]
fn negative_control_relaxed_tail_is_caught() {
    relaxed_publish::<Indexed>();
}

#[test]
#[should_panic(expected = "Causality violation")]
fn negative_control_relaxed_stamp_is_caught() {
    relaxed_publish::<Stamped>();
}
