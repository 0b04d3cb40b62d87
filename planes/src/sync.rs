//! The synchronisation shim: the only module that names atomics, `UnsafeCell`, locks, threads
//! and spin hints.
//!
//! Under `--cfg loom` every item here is loom's model of it, so the loom tests explore all
//! interleavings (and all weak-memory outcomes loom models) of the real protocol code. The switch
//! is plain `cfg(loom)`, not `cfg(all(test, loom))`: `cfg(test)` is only set for the crate under
//! test, so a dependent crate's tests would silently get std atomics.
//!
//! `clippy.toml` forbids the std types everywhere else (`clippy::disallowed_types`).
#![allow(clippy::disallowed_types)]

#[cfg(not(loom))]
mod imp {
    pub use std::cell::UnsafeCell;
    pub use std::hint::spin_loop;
    pub use std::sync::atomic::{fence, Ordering};
    pub use std::thread;

    /// Whether the code runs inside a loom model.
    pub const LOOM: bool = false;

    macro_rules! atomic_int {
        ($name:ident, $int:ty) => {
            #[doc = concat!("`std::sync::atomic::", stringify!($name), "` behind the shim (same layout).")]
            #[repr(transparent)]
            #[derive(Debug, Default)]
            pub struct $name(std::sync::atomic::$name);

            impl $name {
                /// A new atomic holding `v`.
                pub const fn new(v: $int) -> Self {
                    Self(std::sync::atomic::$name::new(v))
                }
                /// See the std method of the same name.
                #[inline(always)]
                pub fn load(&self, order: Ordering) -> $int {
                    self.0.load(order)
                }
                /// See the std method of the same name.
                #[inline(always)]
                pub fn store(&self, v: $int, order: Ordering) {
                    self.0.store(v, order)
                }
                /// See the std method of the same name.
                #[inline(always)]
                pub fn swap(&self, v: $int, order: Ordering) -> $int {
                    self.0.swap(v, order)
                }
                /// See the std method of the same name.
                #[inline(always)]
                pub fn compare_exchange(
                    &self,
                    current: $int,
                    new: $int,
                    success: Ordering,
                    failure: Ordering,
                ) -> Result<$int, $int> {
                    self.0.compare_exchange(current, new, success, failure)
                }
                /// See the std method of the same name.
                #[inline(always)]
                pub fn compare_exchange_weak(
                    &self,
                    current: $int,
                    new: $int,
                    success: Ordering,
                    failure: Ordering,
                ) -> Result<$int, $int> {
                    self.0.compare_exchange_weak(current, new, success, failure)
                }
                /// See the std method of the same name.
                #[inline(always)]
                pub fn fetch_add(&self, v: $int, order: Ordering) -> $int {
                    self.0.fetch_add(v, order)
                }
                /// See the std method of the same name.
                #[inline(always)]
                pub fn fetch_sub(&self, v: $int, order: Ordering) -> $int {
                    self.0.fetch_sub(v, order)
                }
                /// See the std method of the same name.
                #[inline(always)]
                pub fn fetch_or(&self, v: $int, order: Ordering) -> $int {
                    self.0.fetch_or(v, order)
                }
                /// See the std method of the same name.
                #[inline(always)]
                pub fn fetch_and(&self, v: $int, order: Ordering) -> $int {
                    self.0.fetch_and(v, order)
                }
                /// The address of the value (for `futex(2)`).
                pub fn as_ptr(&self) -> *mut $int {
                    self.0.as_ptr()
                }
                /// The std atomic inside, for system call wrappers that take one (`futex`).
                #[inline(always)]
                pub fn as_std(&self) -> &std::sync::atomic::$name {
                    &self.0
                }
            }
        };
    }
    atomic_int!(AtomicU8, u8);
    atomic_int!(AtomicU32, u32);
    atomic_int!(AtomicU64, u64);

    /// `std::sync::Mutex` behind the shim (loom's under loom).
    #[derive(Debug, Default)]
    pub struct Mutex<T>(std::sync::Mutex<T>);

    impl<T> Mutex<T> {
        /// A new mutex holding `v`.
        pub const fn new(v: T) -> Self {
            Self(std::sync::Mutex::new(v))
        }
        /// See the std method of the same name.
        pub fn lock(&self) -> std::sync::LockResult<std::sync::MutexGuard<'_, T>> {
            self.0.lock()
        }
    }
}

#[cfg(loom)]
mod imp {
    pub use loom::cell::UnsafeCell;
    pub use loom::hint::spin_loop;
    pub use loom::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};
    pub use loom::sync::{Condvar, Mutex};
    pub use loom::thread;

    /// Whether the code runs inside a loom model.
    pub const LOOM: bool = true;
}

pub use imp::*;

/// One entry slot of a ring: a cell of plain-old-data that is written by one side and read by the
/// other, possibly in another process.
///
/// Slots are only ever reached through raw pointers and copied in or out whole: subring never
/// hands out a reference into memory that a peer process may write. Under std the copy is a
/// sequence of relaxed atomic loads or stores of the widest word the entry's alignment allows
/// (plain `mov`s on x86), so a hostile peer scribbling on a slot concurrently can change the
/// value we copy, never make the copy a data race; ordering comes from the ring's index protocol.
/// (A single volatile copy of the whole entry was the first version: LLVM lowered it through the
/// stack in byte-sized pieces, and a two-ring round trip between threads took about 1.4 times as
/// long as it does now.) Two exceptions use wide volatile accesses instead, the way payloads
/// are copied (`data/volatile/`) and rust-vmm's `vm-memory` copies guest memory: an entry
/// whose size is a multiple of 16 bytes, in a slot that starts 16-byte aligned (as an indexed
/// ring's slots then do), is copied as aligned 16-byte vectors (SSE2 on x86-64, NEON on
/// AArch64: half the instructions of words; a 64-byte stream one entry at a time ran about
/// 1.5x as fast, docs/performance-history.md, "entries of 16-byte multiples as vectors"); and
/// an indexed ring's batches copy a run of contiguous slots at once. Under loom the slot is
/// loom's `UnsafeCell`, so the model checks that every read is ordered after the write it
/// observes (and batches go slot by slot).
#[cfg_attr(not(loom), repr(transparent))]
#[derive(Debug)]
pub struct Slot<T>(UnsafeCell<T>);

/// Copies between a slot (shared) and private memory as relaxed atomic words of one width:
/// `loadN` reads a slot, `storeN` writes one, `N` bits at a time.
#[cfg(not(loom))]
mod word_copy {
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8};

    macro_rules! copy_words {
        ($load:ident, $store:ident, $atomic:ty, $int:ty) => {
            /// Reads `len / size_of::<$int>()` words from `src` (shared) into `dst` (private).
            ///
            /// # Safety
            /// `src` must be valid for reads of `len` bytes and aligned to the word; `dst` valid
            /// for writes of `len` bytes; `len` a multiple of the word size.
            #[inline(always)]
            pub unsafe fn $load(src: *const u8, dst: *mut u8, len: usize) {
                const N: usize = std::mem::size_of::<$int>();
                for i in 0..len / N {
                    // SAFETY: in bounds and aligned (caller); an atomic may view any shared,
                    // aligned integer memory.
                    let w = unsafe { (*src.add(i * N).cast::<$atomic>()).load(Relaxed) };
                    // SAFETY: in bounds of the private destination (caller), which may be
                    // unaligned for the word.
                    unsafe { dst.add(i * N).cast::<$int>().write_unaligned(w) };
                }
            }

            /// Writes `len / size_of::<$int>()` words from `src` (private) into `dst` (shared).
            ///
            /// # Safety
            /// As for the load, with the roles swapped.
            #[inline(always)]
            pub unsafe fn $store(src: *const u8, dst: *mut u8, len: usize) {
                const N: usize = std::mem::size_of::<$int>();
                for i in 0..len / N {
                    // SAFETY: in bounds of the private source (caller).
                    let w = unsafe { src.add(i * N).cast::<$int>().read_unaligned() };
                    // SAFETY: in bounds and aligned (caller).
                    unsafe { (*dst.add(i * N).cast::<$atomic>()).store(w, Relaxed) };
                }
            }
        };
    }
    copy_words!(load64, store64, AtomicU64, u64);
    copy_words!(load32, store32, AtomicU32, u32);
    copy_words!(load16, store16, AtomicU16, u16);
    copy_words!(load8, store8, AtomicU8, u8);
}

/// Copies between a slot (shared) and private memory as aligned volatile 16-byte vectors, for
/// entries whose size is a multiple of 16 in slots that start 16-byte aligned.
#[cfg(all(not(loom), any(target_arch = "x86_64", target_arch = "aarch64")))]
mod vector_copy {
    /// A 16-byte vector every CPU of the architecture has (SSE2, NEON); any bits are valid.
    #[cfg(target_arch = "x86_64")]
    type V = std::arch::x86_64::__m128i;
    #[cfg(target_arch = "aarch64")]
    type V = std::arch::aarch64::uint8x16_t;
    const N: usize = std::mem::size_of::<V>();

    /// Whether `len` bytes at `slot` can go as vectors (`len` is a constant where this is
    /// used: for other sizes the test folds away).
    #[inline(always)]
    pub fn fits(slot: *const u8, len: usize) -> bool {
        len % N == 0 && slot.addr() % N == 0
    }

    /// Reads `len` bytes from `src` (shared) into `dst` (private).
    ///
    /// # Safety
    /// `fits(src, len)`; `src` valid for reads of `len` bytes, `dst` for writes of `len` bytes.
    #[inline(always)]
    pub unsafe fn load(src: *const u8, dst: *mut u8, len: usize) {
        for i in 0..len / N {
            // SAFETY: a whole vector inside the slot, aligned (`fits`); any bits are a valid
            // `V`. A volatile read is never split, merged or repeated by the compiler.
            let v = unsafe { src.add(i * N).cast::<V>().read_volatile() };
            // SAFETY: inside the private destination (caller), which may be unaligned.
            unsafe { dst.add(i * N).cast::<V>().write_unaligned(v) };
        }
    }

    /// Writes `len` bytes from `src` (private) into `dst` (shared).
    ///
    /// # Safety
    /// `fits(dst, len)`; `src` valid for reads of `len` bytes, `dst` for writes of `len` bytes.
    #[inline(always)]
    pub unsafe fn store(src: *const u8, dst: *mut u8, len: usize) {
        for i in 0..len / N {
            // SAFETY: inside the private source (caller), which may be unaligned.
            let v = unsafe { src.add(i * N).cast::<V>().read_unaligned() };
            // SAFETY: a whole vector inside the slot, aligned (`fits`).
            unsafe { dst.add(i * N).cast::<V>().write_volatile(v) };
        }
    }
}

impl<T: bytemuck::Pod> Slot<T> {
    /// Writes a fresh slot holding `value` to `this`, which is not yet a slot.
    ///
    /// # Safety
    /// `this` must be valid for writes of `Self` and aligned.
    pub unsafe fn init(this: *mut Self, value: T) {
        // SAFETY: the caller guarantees `this` is valid and aligned.
        unsafe { this.write(Slot(UnsafeCell::new(value))) }
    }

    /// Copies the value out of the slot.
    ///
    /// # Safety
    /// `this` must point to an initialised slot in live memory, and the caller must own the
    /// slot under the ring protocol (a hostile peer may still write it; `T: Pod` makes any
    /// bytes a valid `T`).
    #[cfg(not(loom))]
    #[inline(always)]
    pub unsafe fn read(this: *const Self) -> T {
        let mut out = T::zeroed();
        let (src, dst) = (this.cast::<u8>(), (&raw mut out).cast::<u8>());
        let len = std::mem::size_of::<T>();
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        if vector_copy::fits(src, len) {
            // SAFETY: `fits`; the slot holds `len` bytes (`Slot` is `repr(transparent)` over
            // `UnsafeCell<T>`) and `out` is a private `T`.
            unsafe { vector_copy::load(src, dst, len) };
            return out;
        }
        // SAFETY: `Slot` is `repr(transparent)` over `UnsafeCell<T>`, so `this` is valid and
        // aligned for `size_of::<T>()` bytes at `align_of::<T>()`, and `size_of::<T>()` is a
        // multiple of that alignment: each arm's word divides both. `out` is a private `T`.
        unsafe {
            match std::mem::align_of::<T>() {
                a if a >= 8 => word_copy::load64(src, dst, len),
                4 => word_copy::load32(src, dst, len),
                2 => word_copy::load16(src, dst, len),
                _ => word_copy::load8(src, dst, len),
            }
        }
        out
    }

    /// Copies `value` into the slot.
    ///
    /// # Safety
    /// As for [`Slot::read`].
    #[cfg(not(loom))]
    #[inline(always)]
    pub unsafe fn write(this: *const Self, value: T) {
        let (src, dst) = (
            (&raw const value).cast::<u8>(),
            this.cast::<u8>().cast_mut(),
        );
        let len = std::mem::size_of::<T>();
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        if vector_copy::fits(dst, len) {
            // SAFETY: as in `read`.
            unsafe { vector_copy::store(src, dst, len) };
            return;
        }
        // SAFETY: as in `read`; the slot's memory sits in an `UnsafeCell` (and is shared memory
        // the peer may also write, which atomics tolerate).
        unsafe {
            match std::mem::align_of::<T>() {
                a if a >= 8 => word_copy::store64(src, dst, len),
                4 => word_copy::store32(src, dst, len),
                2 => word_copy::store16(src, dst, len),
                _ => word_copy::store8(src, dst, len),
            }
        }
    }

    /// Copies the value out of the slot.
    ///
    /// # Safety
    /// As for the std variant.
    #[cfg(loom)]
    pub unsafe fn read(this: *const Self) -> T {
        // SAFETY: the caller guarantees the slot is live; loom checks the access is race-free.
        unsafe { (*this).0.with(|p| p.read()) }
    }

    /// Copies `value` into the slot.
    ///
    /// # Safety
    /// As for the std variant.
    #[cfg(loom)]
    pub unsafe fn write(this: *const Self, value: T) {
        // SAFETY: the caller guarantees the slot is live; loom checks the access is race-free.
        unsafe { (*this).0.with_mut(|p| p.write(value)) }
    }
}

/// A value aligned to (and padded to a multiple of) 128 bytes, so that it shares no cache line,
/// nor an adjacent-line prefetch pair, with its neighbours.
///
/// `crossbeam_utils::CachePadded` does the same job, but it is not `repr(C)`: this one is, because
/// its layout is part of the shared-memory ABI between processes.
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct CacheLine<T>(pub T);

impl<T> std::ops::Deref for CacheLine<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::Slot;

    /// Writes and reads back an entry of `T` through a slot at every offset its alignment
    /// allows in the first 32 bytes of a 16-byte aligned buffer (so both by vectors and by
    /// words where the size allows vectors), checking the bytes around it are untouched.
    fn round_trips<T: bytemuck::Pod + PartialEq + std::fmt::Debug>(make: impl Fn(u8) -> T) {
        let size = std::mem::size_of::<T>();
        for offset in (0..32).step_by(std::mem::align_of::<T>()) {
            let mut backing = [0u128; 16];
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut backing);
            bytes.fill(0xee);
            let value = make(offset as u8);
            // SAFETY: `offset + size` lies inside the 256-byte buffer and is aligned for `T`;
            // nothing else references the buffer meanwhile.
            let seen = unsafe {
                let slot = bytes.as_mut_ptr().add(offset).cast::<Slot<T>>();
                Slot::write(slot, value);
                Slot::read(slot)
            };
            assert_eq!(seen, value, "{size}-byte entry at offset {offset}");
            let mut around = bytes[..offset].iter().chain(&bytes[offset + size..]);
            assert!(around.all(|b| *b == 0xee), "wrote outside the slot");
            let written: &[u8] = bytemuck::bytes_of(&value);
            assert_eq!(&bytes[offset..offset + size], written);
        }
    }

    #[test]
    fn entries_of_every_shape_round_trip_through_a_slot() {
        round_trips(|k| [k.wrapping_add(1); 16]);
        round_trips(|k| std::array::from_fn::<u8, 24, _>(|i| k ^ i as u8));
        round_trips(|k| std::array::from_fn::<u32, 12, _>(|i| u32::from(k) << 8 | i as u32));
        round_trips(|k| std::array::from_fn::<u64, 8, _>(|i| u64::from(k) * 1000 + i as u64));
        round_trips(|k| u64::from(k) | 0xabcd << 16);
        round_trips(|k| [u128::from(k) << 64 | 5, !u128::from(k)]);
        round_trips(|k| [k, 7, 9]);
    }
}
