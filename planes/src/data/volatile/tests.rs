//! Tests of the copies in and out of shared bytes, and of `SharedBytes`.

use super::*;

#[test]
fn copies_at_every_alignment_and_length() {
    // Lengths on both sides of every access width and of the wide-copy and string-move
    // thresholds.
    let shared: Vec<u8> = (0..4200u32).map(|i| (i * 7 % 251) as u8).collect();
    for start in 0..33 {
        for len in [
            0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 100, 255, 256, 257, 300, 513, 1000, 2047,
            2048, 2049, 4095, 4096, 4097, 4100,
        ] {
            let mut out = vec![0u8; len];
            // SAFETY: inside `shared`.
            unsafe { copy_from_shared(shared.as_ptr().add(start), &mut out) };
            assert_eq!(out, shared[start..start + len]);
            let mut target = vec![0u8; 4200];
            // SAFETY: inside `target`, which nothing else references during the call.
            unsafe { copy_to_shared(&out, target.as_mut_ptr().add(start)) };
            assert_eq!(target[start..start + len], out[..]);
            assert!(target[..start].iter().all(|b| *b == 0));
            assert!(target[start + len..].iter().all(|b| *b == 0));
        }
    }
}

fn view(bytes: &mut [u8]) -> SharedBytes<'_> {
    SharedBytes::from_mut_slice(bytes)
}

#[test]
fn shared_bytes_copy_in_and_out_within_bounds() {
    let mut backing: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let expect = backing.clone();
    let v = view(&mut backing);
    assert_eq!(v.len(), 10_000);
    let mut out = vec![0u8; 20_000];
    assert_eq!(v.copy_to(&mut out), 10_000);
    assert_eq!(out[..10_000], expect[..]);
    assert_eq!(v.read_u8(9_999), Some(expect[9_999]));
    assert_eq!(v.read_u8(10_000), None);
    assert!(v.get(9_000..10_001).is_none());
    assert!(v.get(usize::MAX - 1..usize::MAX).is_none());
    let sub = v.get(100..108).unwrap();
    assert_eq!(
        sub.read_obj::<u64>(0),
        Some(u64::from_ne_bytes(expect[100..108].try_into().unwrap()))
    );
    assert_eq!(sub.read_obj::<u64>(1), None);
    assert_eq!(v.read_obj::<u32>(usize::MAX), None);
    assert!(v.write_obj(8, &0xdead_beef_u32));
    assert!(!v.write_obj(9_998, &0u32));
    assert_eq!(v.read_obj::<u32>(8), Some(0xdead_beef));
    // Chunks see every byte once, in order, across chunk boundaries.
    let mut seen = Vec::new();
    v.for_each_chunk(|c| seen.extend_from_slice(c));
    assert_eq!(seen.len(), 10_000);
    assert_eq!(seen[12..], expect[12..]);
    v.update_chunks(|c| c.iter_mut().for_each(|b| *b = b.wrapping_add(1)));
    let mut after = vec![0u8; 10_000];
    v.copy_to(&mut after);
    assert!(after[12..]
        .iter()
        .zip(&expect[12..])
        .all(|(a, e)| *a == e.wrapping_add(1)));
    // Short views (through the small buffer) too: each byte seen and updated once, and
    // an empty view calls nothing.
    for len in [0, 1, 51, SMALL - 1, SMALL, SMALL + 1] {
        let sub = v.get(300..300 + len).unwrap();
        let mut before = vec![0u8; len];
        sub.copy_to(&mut before);
        let (mut seen, mut calls) = (Vec::new(), 0);
        sub.for_each_chunk(|c| {
            seen.extend_from_slice(c);
            calls += 1;
        });
        assert_eq!(
            (seen.len(), calls),
            (len, usize::from(len > 0)),
            "{len} bytes"
        );
        assert_eq!(seen, before);
        sub.update_chunks(|c| c.iter_mut().for_each(|b| *b ^= 0x5a));
        let mut now = vec![0u8; len];
        sub.copy_to(&mut now);
        assert!(
            now.iter().zip(&before).all(|(n, b)| *n == b ^ 0x5a),
            "{len} bytes"
        );
    }
    // The sum of a view's little-endian words, the last one padded with zeros, computed
    // from a private copy.
    let word_sum = |view: SharedBytes<'_>| {
        let mut bytes = vec![0u8; view.len()];
        view.copy_to(&mut bytes);
        bytes.chunks(8).fold(0u64, |s, c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            s.wrapping_add(u64::from_le_bytes(w))
        })
    };
    assert_eq!(v.fold_words_le(0u64, u64::wrapping_add), word_sum(v));
    assert_eq!(
        v.get(3..1003).unwrap().fold_words_le(0u64, |n, _| n + 1),
        125
    );
    // A view that ends mid-word, past a chunk boundary, at an unaligned start: the last
    // word is padded with zeros.
    let odd = v.get(5..1030).unwrap();
    assert_eq!(odd.fold_words_le(0u64, u64::wrapping_add), word_sum(odd));
    assert_eq!(odd.fold_words_le(0u64, |n, _| n + 1), 129);
    // The direct sum agrees with the fold at every start (aligned or not, on both sides
    // of the wide path's threshold) and length.
    for start in 0..40 {
        for len in [
            0, 1, 7, 8, 9, 31, 32, 33, 255, 256, 257, 300, 511, 512, 1000, 4096,
        ] {
            let part = v.get(start..start + len).unwrap();
            assert_eq!(
                part.sum_words_le(),
                word_sum(part),
                "start {start}, len {len}"
            );
        }
    }
    assert_eq!(v.copy_from(&[7u8; 3]), 3);
    assert_eq!(v.read_u8(2), Some(7));
}
