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
            }
        };
    }
    atomic_int!(AtomicU32, u32);
    atomic_int!(AtomicU64, u64);
}

#[cfg(loom)]
mod imp {
    pub use loom::cell::UnsafeCell;
    pub use loom::hint::spin_loop;
    pub use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
    pub use loom::sync::{Condvar, Mutex};
    pub use loom::thread;

    /// Whether the code runs inside a loom model.
    pub const LOOM: bool = true;
}

pub use imp::*;

/// One entry slot of a ring: a cell of plain-old-data that is written by one side and read by the
/// other, possibly in another process.
///
/// Slots are only ever reached through raw pointers and copied in or out whole (volatile
/// accesses under std): subring never hands out a reference into memory that a peer process may
/// write, so a hostile peer scribbling on a slot can change the value we copy, never the
/// soundness of the copy. Under loom the slot is loom's `UnsafeCell`, so the model checks that
/// every read is ordered after the write it observes.
#[cfg_attr(not(loom), repr(transparent))]
#[derive(Debug)]
pub struct Slot<T>(UnsafeCell<T>);

impl<T: Copy> Slot<T> {
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
        // SAFETY: `Slot` is `repr(transparent)` over `UnsafeCell<T>`, which has `T`'s layout; the
        // caller guarantees the pointer is valid and aligned.
        unsafe { UnsafeCell::raw_get(this.cast::<UnsafeCell<T>>()).read_volatile() }
    }

    /// Copies `value` into the slot.
    ///
    /// # Safety
    /// As for [`Slot::read`].
    #[cfg(not(loom))]
    #[inline(always)]
    pub unsafe fn write(this: *const Self, value: T) {
        // SAFETY: as in `read`.
        unsafe { UnsafeCell::raw_get(this.cast::<UnsafeCell<T>>()).write_volatile(value) }
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
