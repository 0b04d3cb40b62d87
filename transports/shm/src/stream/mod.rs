//! Byte streams over a queue pair: [`std::io::Read`], [`std::io::Write`] and
//! [`std::io::BufRead`], so code written for `impl Read` / `impl Write` talks to a
//! subsystem unchanged.
//!
//! The stream is a protocol over the rings, like virtio-net's transmit and receive queues:
//! the client lends the server full buffers to consume (`DATA`) and empty buffers to fill
//! (`RECV`), and says when it has finished writing (`FIN`). The server returns each buffer in a
//! completion: consumed (`SENT`), filled (`FILLED`, with its length), or empty at end of stream
//! (`EOF`). Bytes are copied once on each side of the ring: into a buffer by `write` and out
//! of it by the server (its service sees its own copy), into a buffer by the server and out of
//! it by `read` or [`BufRead::fill_buf`]. The buffers live in memory both processes map, so
//! neither side reads them through a Rust reference.
//!
//! On the server, [`StreamHandler`] turns a [`ByteService`] (bytes in, bytes out) into a
//! [`Handler`].
//!
//! Like a socket, a stream can deadlock a client that writes a lot without reading while the
//! service answers as much as it is sent: the server stops taking data once
//! [`StreamHandler`]'s output backlog passes its limit. Read as you write, or give the waits a
//! timeout ([`Stream::set_timeout`]).
//!
//! ```
//! use std::io::{BufRead, BufReader, Read, Write};
//! use subring_shm::stream::{ByteService, Stream, StreamHandler, STREAM_PROTOCOL};
//! use subring_shm::{ClientOptions, Server, ServerConfig};
//!
//! /// Answers every line with its upper-case form.
//! struct Upper;
//! impl ByteService for Upper {
//!     fn data(&mut self, input: &[u8], out: &mut Vec<u8>) {
//!         out.extend(input.iter().map(u8::to_ascii_uppercase));
//!     }
//! }
//!
//! let (server_end, client_end) = subring_shm::socket_pair()?;
//! let mut server = Server::new(ServerConfig::new(STREAM_PROTOCOL), |_| StreamHandler::new(Upper))?;
//! server.add_connection(server_end)?;
//! let server = server.spawn()?;
//!
//! let mut stream = Stream::from_socket(client_end, &ClientOptions::new(STREAM_PROTOCOL))?;
//! stream.write_all(b"hello, subsystem\n")?;
//! stream.flush()?;
//! let mut line = String::new();
//! stream.read_line(&mut line)?;
//! assert_eq!(line, "HELLO, SUBSYSTEM\n");
//! drop(stream);
//! server.stop()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::VecDeque;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use bytemuck::{Pod, Zeroable};
use subring_planes::data::{Buf, BufHandle};
use subring_planes::queue::{Completer, QueueError, Submitter};

use crate::{Client, ClientOptions, Ctx, Error, Handler};

mod client;
mod handler;

pub use client::{Stream, DROP_LINGER};
pub use handler::{ByteService, StreamHandler, DEFAULT_BACKLOG};

/// The application protocol name of streams.
pub const STREAM_PROTOCOL: &str = "subring-stream/1";

/// Request kinds.
pub mod request {
    /// `buf` holds bytes for the service.
    pub const DATA: u32 = 1;
    /// `buf` (its whole length) is free for the service's answer.
    pub const RECV: u32 = 2;
    /// The client has finished writing.
    pub const FIN: u32 = 3;
}

/// Completion kinds.
pub mod completion {
    /// A `DATA` buffer was consumed; here it is back.
    pub const SENT: u32 = 1;
    /// A `RECV` buffer now holds `buf.len` bytes.
    pub const FILLED: u32 = 2;
    /// A `RECV` buffer returned empty: the service has finished answering.
    pub const EOF: u32 = 3;
    /// A request was refused; `status` says why.
    pub const ERROR: u32 = 4;
}

/// Error statuses in a [`completion::ERROR`].
pub mod status {
    /// The request named memory that is not the client's.
    pub const BAD_HANDLE: u32 = 1;
    /// The request kind is unknown.
    pub const BAD_KIND: u32 = 2;
    /// Data arrived after `FIN`.
    pub const AFTER_FIN: u32 = 3;
    /// More buffers queued at the server than the client's pool holds.
    pub const TOO_MANY: u32 = 4;
}

/// A stream request entry.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct StreamReq {
    /// One of [`request`].
    pub kind: u32,
    /// Zero.
    pub reserved: u32,
    /// The buffer concerned (empty for `FIN`).
    pub buf: BufHandle,
}

/// A stream completion entry.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct StreamResp {
    /// One of [`completion`].
    pub kind: u32,
    /// For [`completion::ERROR`], one of [`status`].
    pub status: u32,
    /// The buffer returned.
    pub buf: BufHandle,
}
