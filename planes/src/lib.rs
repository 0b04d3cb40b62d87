//! subring's generic planes: what every subsystem interface shares, independent of transport.
//!
//! - [`data`] — the **data plane**: [`Region`](data::Region)s of shared memory,
//!   single-producer/single-consumer [`Ring`](data::Ring)s laid out inside them, and
//!   [`BufferPool`](data::BufferPool)s whose [`BufHandle`](data::BufHandle)s let payloads cross
//!   without copying.
//! - [`control`] — the **control plane**: [`Doorbell`](control::Doorbell)s that tell a subsystem
//!   work is queued, skipped when it is polling.
//! - [`interrupt`] — the **interrupt plane**: [`Notifier`](interrupt::Notifier)s (eventfd, futex,
//!   spin, adaptive) with sleep/wake suppression.
//! - [`queue`] — the queue-pair traits every transport implements, and [`pair`], a queue pair
//!   built from the planes that both in-process and cross-process subsystems use.
//! - [`sync`] — the shim that lets loom replace every atomic in the above.
//!
//! Everything read from shared memory is treated as written by a buggy or hostile peer: indices,
//! lengths and handles are validated, and a bad one is a typed error.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod control;
pub mod data;
pub mod interrupt;
pub mod pair;
pub mod queue;
pub mod sync;
