//! **subring**: talk to a subsystem — the kernel, another process, a device — the way io_uring
//! talks to the kernel.
//!
//! Every such interface has three planes, which subring implements once, generically:
//! - the **data plane** ([`data`]): shared memory, single-producer/single-consumer submission and
//!   completion rings, and buffer regions whose contents are exchanged without copying;
//! - the **control plane** ([`control`]): the doorbell that tells the subsystem work is queued,
//!   skipped when the subsystem is already polling;
//! - the **interrupt plane** ([`interrupt`]): events back to the application (eventfd, futex,
//!   or polling), suppressed while the application is busy.
//!
//! The [`queue`] traits are what every transport implements; [`pair`] builds a queue pair from
//! the planes for subsystems in this process or another one. The transports instantiate them:
//! [`uring`] puts the kernel behind them, [`shm`] another process.
//!
//! # Examples
//! A subsystem on another thread that doubles numbers:
//! ```
//! use std::time::Duration;
//! use subring::pair::{in_process, PairConfig};
//! use subring::queue::{Completer, Submitter};
//!
//! let (mut app, mut service) = in_process::<u64, u64>(&PairConfig::default())?;
//! let server = std::thread::spawn(move || service.run(|x| x * 2, None));
//! for i in 0..10 {
//!     app.push(i).unwrap();
//! }
//! app.submit()?; // one publish, at most one doorbell
//! let mut got = Vec::new();
//! while got.len() < 10 {
//!     app.wait(Some(Duration::from_secs(10)))?;
//!     app.reap_into(&mut got, 10)?;
//! }
//! assert_eq!(got, (0..10).map(|i| i * 2).collect::<Vec<u64>>());
//! drop(app);
//! server.join().unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations)]

pub use subring_planes::{control, data, interrupt, pair, queue, sync};

/// The crate behind ring entries: every entry type is plain old data ([`Pod`]). Derive it
/// without depending on bytemuck yourself:
/// ```
/// #[derive(Clone, Copy, subring::Pod, subring::Zeroable)]
/// #[bytemuck(crate = "subring::bytemuck")]
/// #[repr(C)]
/// struct Request {
///     key: u64,
///     len: u32,
///     flags: u32,
/// }
/// ```
pub use bytemuck;
/// Plain old data: any bytes are a valid value, so an entry a peer wrote is never undefined
/// behaviour to read. The derive checks the type (`#[repr(C)]`, no padding, `Pod` fields).
pub use bytemuck::{Pod, Zeroable};

/// The kernel transport: the kernel as a subsystem, over io_uring.
pub use subring_uring as uring;

/// The network-device transport: a network interface's queue as a subsystem, over AF_XDP.
pub use subring_xdp as xdp;

/// The userspace transport: another process as a subsystem, over a sealed memfd, eventfds and a
/// Unix-socket handshake.
pub use subring_shm as shm;

/// The block-storage subsystem: a shm service whose io_uring reads and writes land in its
/// clients' memory (the chain client → service → kernel; `subring-blk`).
#[doc(inline)]
pub use subring_blk as blk;
