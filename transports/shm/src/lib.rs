//! subring's userspace transport: **another process as the subsystem**.
//!
//! A server process serves requests; client processes submit them. Each client gets its own
//! queue pair and payload buffers in a sealed memfd that the server creates and passes over a
//! Unix socket:
//!
//! - **Control plane.** A `SOCK_SEQPACKET` Unix socket carries versioned control messages
//!   ([`proto`]: `"SBSH"`, a version, a postcard body) and, with `SCM_RIGHTS`, the memfd, the
//!   kick eventfd and an epoll instance watching the server's call eventfd (the server keeps
//!   the eventfd it writes, so that no client can make that write block). The client's [`Hello`](proto::Hello) names the application protocol, the entry
//!   types' sizes, ring capacities, buffer sizes and notify mode; the server checks every field
//!   and answers with a [`Welcome`](proto::Welcome) or a [`proto::Refusal`]. The socket
//!   stays open for the connection's life: later control messages (registering another region,
//!   shutting down) use it, and its hang-up is how each side learns the other died.
//! - **Data plane.** The planes' submission and completion rings and a buffer pool in the memfd.
//!   Entry types are the user's plain-old-data structs; payloads stay in the buffers and travel
//!   as [`BufHandle`]s inside entries. The client owns the buffers (its pool's bookkeeping is
//!   private to it); the server reads and writes them in place through handles it validates
//!   ([`Ctx::payload`]) — the virtio model, where the driver owns the buffers and the device uses
//!   them.
//! - **Doorbell and interrupts.** The client rings the server's kick eventfd only when the server
//!   announced it sleeps; the server signals the client only when the client sleeps. A spin-mode
//!   client is polled by the server and never rings at all.
//!
//! One [`Server`] serves many clients from one thread: it polls their submission rings while
//! there is work (and, for adaptive clients, for an adaptive window after it), then arms every
//! ring and sleeps in `epoll` on the listener, the control sockets and the kick eventfds. Run it
//! on the calling thread ([`Server::run`]) or on a dedicated thread ([`Server::spawn`]), like
//! SQPOLL or Snap.
//!
//! What the server runs is a [`Service`]: one object for all clients, with state per client,
//! that answers a request in the call or defers it ([`Ctx::defer`] gives a [`Pending`] token)
//! and completes it later from [`Service::poll`], when one of its own event sources fires (an
//! io_uring's completion eventfd, a timer: [`Server::watch`] adds it to the server's sleep).
//! That is how a service becomes a hop in a chain of subsystems (the block service in
//! `subring-blk` fronts the kernel this way). The simple case, one closure per client that
//! answers at once, is [`Server::new`] (a [`PerClient`] service).
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use subring_shm::{Client, ClientOptions, Server, ServerConfig};
//! use subring_shm::queue::{Completer, Submitter};
//!
//! // A server that doubles numbers, on its own thread, reached over a socket pair (a path
//! // works the same with `Server::bind` and `Client::connect`).
//! let (server_end, client_end) = subring_shm::socket_pair()?;
//! let mut server = Server::<u64, u64, _>::new(ServerConfig::new("doubler"), |_info| {
//!     |ctx: &mut subring_shm::Ctx<'_, u64>, x: u64| ctx.complete(x * 2)
//! })?;
//! server.add_connection(server_end)?;
//! let server = server.spawn()?;
//!
//! let mut client = Client::<u64, u64>::from_socket(client_end, &ClientOptions::new("doubler"))?;
//! client.push(21).unwrap();
//! client.submit()?;
//! client.wait(Some(Duration::from_secs(10)))?;
//! assert_eq!(client.reap()?, Some(42));
//! drop(client);
//! server.stop()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod client;
pub mod echo;
mod error;
mod futex_sleep;
mod futex_waits;
#[cfg(feature = "mio")]
pub mod mio;
mod peer_fd;
pub mod proto;
mod server;
pub mod stream;
#[cfg(feature = "tokio")]
pub mod tokio;
mod watch;

pub use client::{Client, ClientOptions};
pub use proto::socket_pair;
pub use server::{
    CallStats, ClientInfo, ClientMemory, Completions, Ctx, HandleError, Handler, Pending,
    PerClient, Server, ServerConfig, ServerSleep, ServerStats, ServerThread, Service, Stopper,
};
pub use subring_planes::data::{
    Buf, BufHandle, BufferPool, PoolError, Region, RegionError, RegionOptions,
};
pub use subring_planes::interrupt::NotifyMode;
pub use subring_planes::queue;

pub use error::{ConfigError, Error, FdError, FdKind};
