//! A block-storage subsystem built on subring: **the chain**, client → shm service → kernel,
//! with the kernel's reads landing straight in the client's memory.
//!
//! A client process connects over a Unix socket as to any subring shm service and sends
//! [`BlkRequest`]s — read, write, flush, discard, info — naming (offset, length, buffer
//! handle). The service ([`BlkService`], a [`Service`](subring_shm::Service)) multiplexes every
//! client's requests onto one io_uring, at a bounded depth, and completes each when the kernel
//! does. For reads and writes it registers the client's memory (its pool, and any region it
//! registered, a window at a time as requests name it: [`BlkConfig::register_window`]) with its
//! ring as fixed buffers and hands the kernel the client's own buffer:
//! disk → client memory, with no copy in the service (with `O_DIRECT`, by DMA; buffered, the
//! page cache copies once, as for any read). [`BlkStats::bytes_copied`] stays 0.
//!
//! Untrusted clients: every handle, range and length is checked before it reaches the kernel
//! and a bad one is an error completion ([`Status`]); a client that leaves or dies with I/O in
//! flight has its operations cancelled and waited for before its memory is unregistered from
//! the ring and unmapped (the kernel never writes memory the service no longer maps); each
//! client's requests in the service are bounded by the server's
//! [`max_deferred`](subring_shm::ServerConfig::max_deferred), and the clients share the
//! ring's depth ([`BlkConfig::depth`]). A device can be served read-only
//! ([`BlkConfig::read_only`]).
//!
//! - [`serve`] / [`server`]: a server of a device; [`BlkClient`]: the client side, with
//!   owned buffers that come back with their completions. The client checks what a server
//!   answers as well: a tag that names no request in flight (or one already answered), a
//!   transfer longer than asked, are typed errors; [`BlkOptions::untrusted_server`] makes it a
//!   client that a server cannot make block either.
//! - `cargo run --release --example blk_server -- /tmp/blk.sock /tmp/disk.img` and
//!   `cargo run --release --example blk_client -- /tmp/blk.sock` in two terminals.
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use subring_blk::{BlkClient, BlkConfig, BlkOptions};
//!
//! let dir = std::env::temp_dir().join(format!("subring-blk-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let disk = dir.join("disk.img");
//! std::fs::File::create(&disk)?.set_len(1 << 20)?;
//!
//! // The service on a thread of its own, reached over a socket pair.
//! let (server_end, client_end) = subring_shm::socket_pair()?;
//! let mut server = subring_blk::server(subring_blk::server_config(), BlkConfig::new(&disk))?;
//! server.add_connection(server_end)?;
//! let server = server.spawn()?;
//!
//! let mut client = BlkClient::from_socket(client_end, &BlkOptions::new())?;
//! let mut buf = client.alloc().expect("a buffer");
//! buf.fill_from(&[7u8; 4096]);
//! client.write(1, 8192, buf).map_err(|r| r.error)?;
//! client.submit()?;
//! let done = client.next(Some(Duration::from_secs(10)))?;
//! assert_eq!(done.result?, 4096);
//!
//! let buf = done.buf.expect("the buffer comes back");
//! client.read(2, 8192, buf, 4096).map_err(|r| r.error)?;
//! client.submit()?;
//! let done = client.next(Some(Duration::from_secs(10)))?;
//! assert_eq!(done.buf.unwrap().to_vec(), [7u8; 4096]);
//! drop(client);
//! server.stop()?;
//! std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations)]

mod client;
mod device;
pub mod proto;
mod service;

use std::path::Path;

pub use client::{
    BlkClient, BlkClientError, BlkDone, BlkOptions, BlkResultError, ReadTooLong, Refused,
    MAX_IN_FLIGHT,
};
pub use proto::{BlkCompletion, BlkOp, BlkRequest, Status, BLK_PROTOCOL};
pub use service::{BlkConfig, BlkError, BlkService, BlkStats};

use subring_shm::{Server, ServerConfig};

/// A block server of `S` = [`BlkRequest`], `C` = [`BlkCompletion`] running a [`BlkService`].
pub type BlkServer = Server<BlkRequest, BlkCompletion, BlkService>;

/// The shm server configuration a block server starts from: the [`BLK_PROTOCOL`], buffers up
/// to 1 MiB, 256 requests in the service per client.
pub fn server_config() -> ServerConfig {
    let mut config = ServerConfig::new(BLK_PROTOCOL);
    config.max_deferred = 256;
    config
}

/// A block server with no listening socket (clients arrive through
/// [`Server::add_connection`]), its ring's completions watched.
pub fn server(config: ServerConfig, blk: BlkConfig) -> Result<BlkServer, BlkError> {
    let service = BlkService::open(blk)?;
    let fd = service
        .completion_fd()
        .try_clone_to_owned()
        .map_err(BlkError::Uring)?;
    let mut server = Server::with_service(config, service)?;
    server.watch(&fd)?;
    Ok(server)
}

/// A block server listening at `socket`.
pub fn serve(
    socket: impl AsRef<Path>,
    config: ServerConfig,
    blk: BlkConfig,
) -> Result<BlkServer, BlkError> {
    let service = BlkService::open(blk)?;
    let fd = service
        .completion_fd()
        .try_clone_to_owned()
        .map_err(BlkError::Uring)?;
    let mut server = Server::bind_service(socket, config, service)?;
    server.watch(&fd)?;
    Ok(server)
}
