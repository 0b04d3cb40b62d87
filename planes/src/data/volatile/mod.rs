//! Copies in and out of memory a peer process may write at any moment.
//!
//! Such bytes are never behind a Rust reference here: every access is a volatile read or write
//! through a raw pointer, word by word where the shared side is aligned (the way rust-vmm's
//! `vm-memory` copies guest memory), so a peer writing meanwhile can change what is copied but
//! not make the copy undefined behaviour. Long copies into shared memory on x86-64 are one
//! `rep movsb` instead (an asm block, as opaque to the compiler as a volatile access), which
//! writes whole lines without reading them first.
//!
//! By the letter of Rust's memory model, a volatile access racing with a write is still a data
//! race, whether the writer is a peer process or another thread of this one (a view is `Copy`
//! and `Send`, so two threads can copy into the same bytes at once). subring treats such memory
//! as `vm-memory` treats guest memory, which the guest's vCPUs and the VMM's threads write
//! while a copy runs: every access is one the compiler must perform as written, never merged,
//! elided or invented, so a racing writer can change the bytes copied but not what the copy
//! does. Ring
//! slots, which carry the protocol's own words, use relaxed atomic word copies instead.

const WORD: usize = std::mem::size_of::<u64>();

/// The widest access every CPU of the architecture has (SSE2 is part of x86-64, NEON of
/// AArch64): a volatile copy moves this much per instruction on the shared side, twice a
/// word's worth (measured: 4 KiB in about half the time of word by word). Wider where the CPU
/// says it can (see `AVX2_FROM`).
#[cfg(target_arch = "x86_64")]
type Wide = std::arch::x86_64::__m128i;
#[cfg(target_arch = "aarch64")]
type Wide = std::arch::aarch64::uint8x16_t;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
type Wide = u64;

/// Copies `dst.len()` bytes from `src` into `dst`.
///
/// # Safety
/// `src..src + dst.len()` must be mapped and readable for the duration of the call.
pub(crate) unsafe fn copy_from_shared(src: *const u8, dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if dst.len() >= AVX2_FROM && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2; the caller's contract is passed on.
        return unsafe { avx2::copy_from_shared(src, dst) };
    }
    // SAFETY: the caller's contract.
    unsafe { copy_from_shared_by::<Wide>(src, dst) }
}

/// Copies `src` to `dst..dst + src.len()`.
///
/// # Safety
/// `dst..dst + src.len()` must be mapped and writable for the duration of the call, and not
/// aliased by any Rust reference of this process.
pub(crate) unsafe fn copy_to_shared(src: &[u8], dst: *mut u8) {
    #[cfg(target_arch = "x86_64")]
    if src.len() >= REP_MOVSB_FROM && std::arch::is_x86_feature_detected!("ermsb") {
        // SAFETY: the caller's contract.
        return unsafe { rep_movsb_to_shared(src, dst) };
    }
    #[cfg(target_arch = "x86_64")]
    if src.len() >= AVX2_FROM && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2; the caller's contract is passed on.
        return unsafe { avx2::copy_to_shared(src, dst) };
    }
    // SAFETY: the caller's contract.
    unsafe { copy_to_shared_by::<Wide>(src, dst) }
}

/// Copies into shared memory of at least this many bytes (64 whole lines) are one `rep movsb`
/// where the CPU has fast string moves (ERMSB: Intel since 2012, AMD since Zen 3), as glibc's
/// `memcpy` does from this size on where it has 32-byte vectors. Such a move writes whole lines
/// without first reading them, where a vector store must fetch its line, and a line of a buffer
/// handed back and forth is usually in the peer's cache. Measured on an Intel host
/// (docs/performance-history.md, "whole lines into shared buffers"): a stream of 4 KiB
/// payloads in `Buf`s about a fifth faster; an indexed ring's 2 KiB batches about a sixth
/// slower this way than with vector stores, hence not below 4 KiB.
#[cfg(target_arch = "x86_64")]
const REP_MOVSB_FROM: usize = 4096;

/// Copies `src` to `dst..dst + src.len()` with one `rep movsb`.
///
/// The instruction's accesses are opaque to the compiler, as volatile ones are: it cannot
/// assume the bytes unchanged by anyone else, nor split, merge or repeat the stores, and
/// they are equivalent to relaxed atomic byte stores, which a peer writing the same bytes
/// meanwhile cannot turn into a data race.
///
/// # Safety
/// As for [`copy_to_shared`].
#[cfg(target_arch = "x86_64")]
unsafe fn rep_movsb_to_shared(src: &[u8], dst: *mut u8) {
    // SAFETY: `rep movsb` reads `rcx` bytes from `rsi` (inside `src`) and writes `rcx` bytes
    // from `rdi` (inside the range the caller vouched for, which no reference of this process
    // aliases), forwards: Rust guarantees the direction flag clear on entry to an asm block.
    // It changes no flags and touches no stack; the registers it moves are declared clobbered.
    unsafe {
        std::arch::asm!(
            "rep movsb",
            inout("rcx") src.len() => _,
            inout("rsi") src.as_ptr() => _,
            inout("rdi") dst => _,
            options(nostack, preserves_flags),
        )
    };
}

/// Copies of at least this many bytes use 32-byte accesses where the CPU has AVX2 (checked at
/// run time, once; nearly every x86-64 CPU since 2013): half the instructions of 16-byte ones.
#[cfg(target_arch = "x86_64")]
const AVX2_FROM: usize = 256;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::__m256i;

    /// [`super::copy_from_shared`] with 32-byte accesses.
    ///
    /// # Safety
    /// As there, and the CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn copy_from_shared(src: *const u8, dst: &mut [u8]) {
        // SAFETY: the caller's contract.
        unsafe { super::copy_from_shared_by::<__m256i>(src, dst) }
    }

    /// [`super::copy_to_shared`] with 32-byte accesses.
    ///
    /// # Safety
    /// As there, and the CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn copy_to_shared(src: &[u8], dst: *mut u8) {
        // SAFETY: the caller's contract.
        unsafe { super::copy_to_shared_by::<__m256i>(src, dst) }
    }

    /// The wrapping sum of the little-endian 64-bit words of `src..src + len` (a short tail
    /// padded with zeros), read with 32-byte volatile loads added lane by lane: one pass, no
    /// copy, each byte read once.
    ///
    /// # Safety
    /// `src..src + len` must be mapped and readable for the duration of the call, `src` must
    /// be 32-byte aligned, and the CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn sum_words_le(src: *const u8, len: usize) -> u64 {
        const WIDE: usize = 32;
        let wide = src.cast::<__m256i>();
        // Four independent sums, so that the loads and adds of a step overlap.
        let mut acc: [__m256i; 4] = bytemuck::Zeroable::zeroed();
        let mut i = 0;
        while i + 4 * WIDE <= len {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: `i / WIDE + k` names a whole 32-byte block inside the range, aligned
                // (`src` is, and `i` is a multiple of 32); any bits are a valid `__m256i`; this
                // function runs with AVX2 (its caller's contract).
                *a = unsafe { add(*a, wide.add(i / WIDE + k).read_volatile()) };
            }
            i += 4 * WIDE;
        }
        while i + WIDE <= len {
            // SAFETY: as above, for one block.
            acc[0] = unsafe { add(acc[0], wide.add(i / WIDE).read_volatile()) };
            i += WIDE;
        }
        // SAFETY: this function runs with AVX2 (its caller's contract).
        let all = unsafe { add(add(acc[0], acc[1]), add(acc[2], acc[3])) };
        let lanes: [u64; 4] = bytemuck::cast(all);
        let mut sum = lanes.iter().fold(0u64, |s, w| s.wrapping_add(*w));
        // SAFETY: the rest of the range (under 32 bytes), at an aligned offset: the caller's
        // contract passed on.
        sum = sum.wrapping_add(unsafe { super::sum_tail_le(src.add(i), len - i) });
        sum
    }

    /// `a + b` in four 64-bit lanes, wrapping.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    // The intrinsic is a safe call inside an AVX2 function from Rust 1.87 on, an unsafe one
    // before (the workspace's `rust-version` is 1.85): the block is needed on one and unused on
    // the other.
    #[allow(unused_unsafe)]
    unsafe fn add(a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: the CPU has AVX2 (this function's contract).
        unsafe { std::arch::x86_64::_mm256_add_epi64(a, b) }
    }
}

/// The wrapping sum of the little-endian 64-bit words of `src..src + len` (a short tail padded
/// with zeros), word by word with volatile reads.
///
/// # Safety
/// `src..src + len` must be mapped and readable for the duration of the call, and `src` must
/// be 8-byte aligned.
#[cfg(target_arch = "x86_64")]
unsafe fn sum_tail_le(src: *const u8, len: usize) -> u64 {
    let mut sum = 0u64;
    let mut i = 0;
    while i + WORD <= len {
        // SAFETY: a whole word inside the range, aligned (`src` is, `i` a multiple of 8).
        let w = unsafe { src.add(i).cast::<u64>().read_volatile() };
        sum = sum.wrapping_add(u64::from_le(w));
        i += WORD;
    }
    if i < len {
        let mut word = [0u8; WORD];
        for (k, b) in word[..len - i].iter_mut().enumerate() {
            // SAFETY: `i + k < len`: inside the range.
            *b = unsafe { src.add(i + k).read_volatile() };
        }
        sum = sum.wrapping_add(u64::from_le_bytes(word));
    }
    sum
}

/// The wrapping sum of `words`, in four lanes the compiler turns into vector adds.
fn sum_words(words: &[u64]) -> u64 {
    let mut lanes = [0u64; 4];
    let mut quads = words.chunks_exact(4);
    for q in &mut quads {
        for (lane, w) in lanes.iter_mut().zip(q) {
            *lane = lane.wrapping_add(u64::from_le(*w));
        }
    }
    let rest = quads
        .remainder()
        .iter()
        .fold(0u64, |s, w| s.wrapping_add(u64::from_le(*w)));
    lanes.iter().fold(rest, |s, l| s.wrapping_add(*l))
}

/// [`copy_from_shared`] with volatile reads of `W` (a plain-old-data vector or integer type).
///
/// # Safety
/// As for [`copy_from_shared`]; `W` must be valid for any bit pattern.
#[inline(always)]
unsafe fn copy_from_shared_by<W: Copy>(src: *const u8, dst: &mut [u8]) {
    let wide = std::mem::size_of::<W>();
    let n = dst.len();
    let out = dst.as_mut_ptr();
    let mut i = 0;
    // Bytes up to the shared side's first aligned wide access, then wide accesses (four per
    // step: independent loads the CPU overlaps), then the tail byte by byte.
    let head = src.align_offset(wide).min(n);
    while i < head {
        // SAFETY: `i < n`: inside the range the caller vouched for.
        dst[i] = unsafe { src.add(i).read_volatile() };
        i += 1;
    }
    while i + 4 * wide <= n {
        // SAFETY: four consecutive `W`s inside the range; `src + i` is aligned for `W` (`head`
        // aligned it) and `out + i` is written unaligned; any bits are a valid `W`.
        unsafe {
            let (s, d) = (src.add(i).cast::<W>(), out.add(i).cast::<W>());
            let w = [
                s.read_volatile(),
                s.add(1).read_volatile(),
                s.add(2).read_volatile(),
                s.add(3).read_volatile(),
            ];
            d.write_unaligned(w[0]);
            d.add(1).write_unaligned(w[1]);
            d.add(2).write_unaligned(w[2]);
            d.add(3).write_unaligned(w[3]);
        }
        i += 4 * wide;
    }
    while i + wide <= n {
        // SAFETY: as above, for one `W`.
        unsafe {
            let w = src.add(i).cast::<W>().read_volatile();
            out.add(i).cast::<W>().write_unaligned(w);
        }
        i += wide;
    }
    while i < n {
        // SAFETY: `i < n`, inside the range.
        dst[i] = unsafe { src.add(i).read_volatile() };
        i += 1;
    }
}

/// [`copy_to_shared`] with volatile writes of `W` (a plain-old-data vector or integer type).
///
/// # Safety
/// As for [`copy_to_shared`]; `W` must be valid for any bit pattern.
#[inline(always)]
unsafe fn copy_to_shared_by<W: Copy>(src: &[u8], dst: *mut u8) {
    let wide = std::mem::size_of::<W>();
    let n = src.len();
    let from = src.as_ptr();
    let mut i = 0;
    let head = dst.align_offset(wide).min(n);
    while i < head {
        // SAFETY: `i < n`: inside the range the caller vouched for.
        unsafe { dst.add(i).write_volatile(src[i]) };
        i += 1;
    }
    while i + 4 * wide <= n {
        // SAFETY: four consecutive `W`s inside `src` (read unaligned; any bits are a valid
        // `W`) and inside the range at `dst + i`, aligned for `W` (`head` aligned it).
        unsafe {
            let (s, d) = (from.add(i).cast::<W>(), dst.add(i).cast::<W>());
            let w = [
                s.read_unaligned(),
                s.add(1).read_unaligned(),
                s.add(2).read_unaligned(),
                s.add(3).read_unaligned(),
            ];
            d.write_volatile(w[0]);
            d.add(1).write_volatile(w[1]);
            d.add(2).write_volatile(w[2]);
            d.add(3).write_volatile(w[3]);
        }
        i += 4 * wide;
    }
    while i + wide <= n {
        // SAFETY: as above, for one `W`.
        unsafe {
            let w = from.add(i).cast::<W>().read_unaligned();
            dst.add(i).cast::<W>().write_volatile(w);
        }
        i += wide;
    }
    while i < n {
        // SAFETY: `i < n`, inside the range.
        unsafe { dst.add(i).write_volatile(src[i]) };
        i += 1;
    }
}

/// Bytes of shared memory that another process may write at any moment: read and written
/// only by copies (volatile accesses, word by word where aligned), never through a Rust
/// reference, so that a peer writing meanwhile can change what is copied but cannot make the
/// copy undefined behaviour. rust-vmm's `VolatileSlice` is the model.
///
/// Bounds were checked when the view was made ([`Region::shared`](super::Region::shared)); every
/// accessor is checked against the view's length. Read each value you need once, into your
/// own memory, and check it there: reading the same byte twice can give two answers.
#[derive(Clone, Copy)]
pub struct SharedBytes<'a> {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    _mapping: std::marker::PhantomData<&'a super::Region>,
}

impl std::fmt::Debug for SharedBytes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBytes")
            .field("len", &self.len)
            .finish()
    }
}

/// Bytes copied per step, at most, by [`SharedBytes::for_each_chunk`] and
/// [`SharedBytes::update_chunks`].
const CHUNK: usize = 4096;

/// Views of at most this many bytes go through a buffer of this size instead of a [`CHUNK`]:
/// the buffer is zeroed at every call, and zeroing 4 KiB for a 51-byte payload took longer
/// than the copy and the work on it (docs/performance-history.md, "small views through a
/// small buffer").
const SMALL: usize = 256;

impl<'a> SharedBytes<'a> {
    /// A view of `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr + len` must stay mapped, readable and writable for `'a`, and no Rust reference
    /// of this process may cover it while the view lives.
    pub(crate) unsafe fn new(ptr: std::ptr::NonNull<u8>, len: usize) -> Self {
        SharedBytes {
            ptr,
            len,
            _mapping: std::marker::PhantomData,
        }
    }

    /// A view of this process's own bytes (so code written for shared views also runs over
    /// private memory); the exclusive borrow keeps every reference away while the view lives.
    pub fn from_mut_slice(bytes: &'a mut [u8]) -> Self {
        let len = bytes.len();
        let ptr = std::ptr::NonNull::new(bytes.as_mut_ptr()).expect("a slice is never null");
        // SAFETY: the slice is mapped and writable for `'a`, and borrowing it mutably for `'a`
        // means no other reference can be used while the view lives.
        unsafe { SharedBytes::new(ptr, len) }
    }

    /// A copy of the bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.len];
        self.copy_to(&mut out);
        out
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes `range` of this view, if inside it.
    pub fn get(&self, range: std::ops::Range<usize>) -> Option<SharedBytes<'a>> {
        if range.start > range.end || range.end > self.len {
            return None;
        }
        // SAFETY: `range` lies inside this view, which the caller of `new` vouched for.
        Some(unsafe { SharedBytes::new(self.ptr.add(range.start), range.len()) })
    }

    /// Copies the first `dst.len()` bytes (or all, if fewer) into `dst`; returns how many.
    pub fn copy_to(&self, dst: &mut [u8]) -> usize {
        let n = dst.len().min(self.len);
        // SAFETY: `n <= len`: inside the view.
        unsafe { copy_from_shared(self.ptr.as_ptr(), &mut dst[..n]) };
        n
    }

    /// Copies `src` (or as much as fits) to the start of the view; returns how many bytes.
    pub fn copy_from(&self, src: &[u8]) -> usize {
        let n = src.len().min(self.len);
        // SAFETY: `n <= len`: inside the view, which no reference covers.
        unsafe { copy_to_shared(&src[..n], self.ptr.as_ptr()) };
        n
    }

    /// The byte at `i`, if inside the view.
    pub fn read_u8(&self, i: usize) -> Option<u8> {
        // SAFETY: `i < len`: inside the view; a volatile read creates no reference.
        (i < self.len).then(|| unsafe { self.ptr.as_ptr().add(i).read_volatile() })
    }

    /// A plain-old-data value copied out from `offset`, if it fits.
    pub fn read_obj<T: bytemuck::Pod>(&self, offset: usize) -> Option<T> {
        let size = std::mem::size_of::<T>();
        let view = self.get(offset..offset.checked_add(size)?)?;
        let mut value = T::zeroed();
        view.copy_to(bytemuck::bytes_of_mut(&mut value));
        Some(value)
    }

    /// Copies a plain-old-data value in at `offset`; `false` if it does not fit.
    pub fn write_obj<T: bytemuck::Pod>(&self, offset: usize, value: &T) -> bool {
        let size = std::mem::size_of::<T>();
        match offset
            .checked_add(size)
            .and_then(|end| self.get(offset..end))
        {
            Some(view) => {
                view.copy_from(bytemuck::bytes_of(value));
                true
            }
            None => false,
        }
    }

    /// Copies the view, a chunk at a time, into a buffer of the caller's stack and calls `f`
    /// with each chunk in order: a checksum or a parser sees every byte exactly once, as it
    /// was when copied.
    pub fn for_each_chunk(&self, mut f: impl FnMut(&[u8])) {
        if self.len <= SMALL {
            if self.len > 0 {
                let mut buf = [0u8; SMALL];
                let n = self.copy_to(&mut buf);
                f(&buf[..n]);
            }
            return;
        }
        let mut buf = [0u8; CHUNK];
        for view in self.chunks() {
            let n = view.copy_to(&mut buf);
            f(&buf[..n]);
        }
    }

    /// The view cut into consecutive pieces of at most [`CHUNK`] bytes.
    fn chunks(&self) -> impl Iterator<Item = SharedBytes<'a>> + '_ {
        (0..self.len).step_by(CHUNK).map(|at| {
            self.get(at..(at + CHUNK).min(self.len))
                .expect("inside the view")
        })
    }

    /// Folds the view's little-endian 64-bit words (a short tail padded with zeros) with `f`:
    /// a checksum over bytes that may change meanwhile, each byte read once. The bytes go
    /// through a small buffer on this thread's stack, 512 bytes at a time, each copied with
    /// wide volatile loads (16 or 32 bytes), and `f` then runs over plain memory. Measured
    /// (docs/performance-history.md, "the zero-copy service's reads"): a word sum over 4 KiB
    /// took about 3 100 instructions with one volatile 8-byte load per word, and about 2 000
    /// this way, with a quarter of the loads.
    pub fn fold_words_le<A>(&self, init: A, mut f: impl FnMut(A, u64) -> A) -> A {
        // A small buffer of words: zeroing it is part of every call.
        const FOLD_WORDS: usize = 64;
        let mut acc = init;
        let mut buf = [0u64; FOLD_WORDS];
        for at in (0..self.len).step_by(FOLD_WORDS * WORD) {
            let view = self
                .get(at..(at + FOLD_WORDS * WORD).min(self.len))
                .expect("inside the view");
            let n = view.copy_to(bytemuck::cast_slice_mut(&mut buf));
            for &w in &buf[..n / WORD] {
                acc = f(acc, u64::from_le(w));
            }
            // Only the last chunk can end short of a word.
            if n % WORD != 0 {
                let mut word = [0u8; WORD];
                word[..n % WORD].copy_from_slice(&bytemuck::cast_slice(&buf)[n / WORD * WORD..n]);
                acc = f(acc, u64::from_le_bytes(word));
            }
        }
        acc
    }

    /// The wrapping sum of the view's little-endian 64-bit words (a short tail padded with
    /// zeros): `fold_words_le(0, u64::wrapping_add)`, the checksum a consumer of bulk data
    /// computes, each byte read once. Where the view starts 32-byte aligned on a CPU with AVX2
    /// it is one pass of 32-byte volatile loads added in place, with no copy (about 200
    /// instructions for 4 KiB); elsewhere the bytes go through a buffer on the stack and are
    /// summed in vector-friendly lanes.
    pub fn sum_words_le(&self) -> u64 {
        #[cfg(target_arch = "x86_64")]
        if self.len >= AVX2_FROM
            && self.ptr.as_ptr().align_offset(32) == 0
            && std::arch::is_x86_feature_detected!("avx2")
        {
            // SAFETY: the view is mapped for `'a` (its maker vouched for it), starts 32-byte
            // aligned (checked), and the CPU has AVX2 (checked).
            return unsafe { avx2::sum_words_le(self.ptr.as_ptr(), self.len) };
        }
        const SUM_WORDS: usize = 64;
        let mut buf = [0u64; SUM_WORDS];
        let mut sum = 0u64;
        for at in (0..self.len).step_by(SUM_WORDS * WORD) {
            let view = self
                .get(at..(at + SUM_WORDS * WORD).min(self.len))
                .expect("inside the view");
            let n = view.copy_to(bytemuck::cast_slice_mut(&mut buf));
            if n % WORD != 0 {
                // Only the last piece can end short of a word: zero the rest of its last word.
                let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut buf);
                bytes[n..n.next_multiple_of(WORD)].fill(0);
            }
            sum = sum.wrapping_add(sum_words(&buf[..n.div_ceil(WORD)]));
        }
        sum
    }

    /// Rewrites the view a chunk at a time: each chunk is copied out, changed by `f` in this
    /// process's memory, and copied back.
    pub fn update_chunks(&self, mut f: impl FnMut(&mut [u8])) {
        if self.len <= SMALL {
            if self.len > 0 {
                let mut buf = [0u8; SMALL];
                let n = self.copy_to(&mut buf);
                f(&mut buf[..n]);
                self.copy_from(&buf[..n]);
            }
            return;
        }
        let mut buf = [0u8; CHUNK];
        for view in self.chunks() {
            let n = view.copy_to(&mut buf);
            f(&mut buf[..n]);
            view.copy_from(&buf[..n]);
        }
    }

    /// The bytes as a slice, in place.
    ///
    /// # Safety
    /// Nothing may write these bytes while the slice lives: not this process, and not the
    /// peer process that shares them. That holds only with a trusted peer that keeps the
    /// protocol (it does not touch a buffer it lent); a hostile peer can break it at will.
    pub unsafe fn as_slice(&self) -> &'a [u8] {
        // SAFETY: inside the mapping for `'a`; the caller guarantees nothing writes it.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

// SAFETY: the view is a pointer into a mapping that outlives it and is only ever accessed with
// volatile copies; sending it to another thread changes nothing about that.
unsafe impl Send for SharedBytes<'_> {}

#[cfg(test)]
mod tests;
