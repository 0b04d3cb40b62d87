//! Copies in and out of memory a peer process may write at any moment.
//!
//! Such bytes are never behind a Rust reference here: every access is a volatile read or write
//! through a raw pointer, word by word where the shared side is aligned (the way rust-vmm's
//! `vm-memory` copies guest memory), so a peer writing meanwhile can change what is copied but
//! not make the copy undefined behaviour.

const WORD: usize = std::mem::size_of::<u64>();

/// Copies `dst.len()` bytes from `src` into `dst`.
///
/// # Safety
/// `src..src + dst.len()` must be mapped and readable for the duration of the call.
pub(crate) unsafe fn copy_from_shared(src: *const u8, dst: &mut [u8]) {
    let n = dst.len();
    let mut i = 0;
    // Bytes up to the shared side's first aligned word, then whole words, then the tail.
    let head = src.align_offset(WORD).min(n);
    while i < head {
        // SAFETY: `i < n`: inside the range the caller vouched for.
        dst[i] = unsafe { src.add(i).read_volatile() };
        i += 1;
    }
    while i + WORD <= n {
        // SAFETY: inside the range, and `src + i` is 8-aligned (`head` aligned it).
        let w = unsafe { src.add(i).cast::<u64>().read_volatile() };
        dst[i..i + WORD].copy_from_slice(&w.to_ne_bytes());
        i += WORD;
    }
    while i < n {
        // SAFETY: `i < n`, inside the range.
        dst[i] = unsafe { src.add(i).read_volatile() };
        i += 1;
    }
}

/// Copies `src` to `dst..dst + src.len()`.
///
/// # Safety
/// `dst..dst + src.len()` must be mapped and writable for the duration of the call, and not
/// aliased by any Rust reference of this process.
pub(crate) unsafe fn copy_to_shared(src: &[u8], dst: *mut u8) {
    let n = src.len();
    let mut i = 0;
    let head = dst.align_offset(WORD).min(n);
    while i < head {
        // SAFETY: `i < n`: inside the range the caller vouched for.
        unsafe { dst.add(i).write_volatile(src[i]) };
        i += 1;
    }
    while i + WORD <= n {
        let w = u64::from_ne_bytes(src[i..i + WORD].try_into().expect("a word"));
        // SAFETY: inside the range, and `dst + i` is 8-aligned (`head` aligned it).
        unsafe { dst.add(i).cast::<u64>().write_volatile(w) };
        i += WORD;
    }
    while i < n {
        // SAFETY: `i < n`, inside the range.
        unsafe { dst.add(i).write_volatile(src[i]) };
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_at_every_alignment_and_length() {
        let shared: Vec<u8> = (0..200u32).map(|i| (i * 7 % 251) as u8).collect();
        for start in 0..9 {
            for len in [0, 1, 7, 8, 9, 15, 16, 17, 63, 100] {
                let mut out = vec![0u8; len];
                // SAFETY: inside `shared`.
                unsafe { copy_from_shared(shared.as_ptr().add(start), &mut out) };
                assert_eq!(out, shared[start..start + len]);
                let mut target = vec![0u8; 200];
                // SAFETY: inside `target`, which nothing else references during the call.
                unsafe { copy_to_shared(&out, target.as_mut_ptr().add(start)) };
                assert_eq!(target[start..start + len], out[..]);
                assert!(target[..start].iter().all(|b| *b == 0));
                assert!(target[start + len..].iter().all(|b| *b == 0));
            }
        }
    }
}
