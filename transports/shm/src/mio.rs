//! A client in a plain mio event loop (feature `mio`): [`Client`] is a [`mio::event::Source`].
//!
//! Register it with a [`mio::Poll`] beside your own sockets, under one token: its event means
//! that completions may be ready, or that the server spoke or died. The client must be in
//! eventfd or futex mode ([`Client::poll_fd`]: in futex mode it waits through an io_uring of
//! its own, which a client that does not trust its server can do). The loop is the completion
//! channel protocol of the epoll example: [`arm`](Client::arm) before polling (`true`: reap
//! first), poll, then [`disarm_edge`](Client::disarm_edge) (mio is edge-triggered, so the
//! eventfd need not be drained) and reap until empty;
//! [`QueueError::PeerGone`](crate::queue::QueueError::PeerGone) from `arm` (or a wait) tells
//! that the server is gone and nothing is left to reap.
//!
//! ```
//! use std::time::Duration;
//! use mio::{Events, Interest, Poll, Token};
//! use subring_shm::echo::{self, EchoOp, EchoReq, EchoResp, ECHO_PROTOCOL};
//! use subring_shm::queue::{Completer, Submitter};
//! use subring_shm::{Client, ClientOptions, NotifyMode, Server, ServerConfig};
//!
//! let (server_end, client_end) = subring_shm::socket_pair()?;
//! let mut server = Server::new(ServerConfig::new(ECHO_PROTOCOL), echo::handler_factory())?;
//! server.add_connection(server_end)?;
//! let server = server.spawn()?;
//!
//! let options = ClientOptions::new(ECHO_PROTOCOL).mode(NotifyMode::EventFd);
//! let mut client = Client::<EchoReq, EchoResp>::from_socket(client_end, &options)?;
//! let mut poll = Poll::new()?;
//! poll.registry().register(&mut client, Token(7), Interest::READABLE)?;
//! client.push(EchoReq { seq: 1, op: EchoOp::PING, ..EchoReq::default() })?;
//! client.submit()?;
//! let mut events = Events::with_capacity(8);
//! let answer = loop {
//!     if let Some(c) = client.reap()? {
//!         break c;
//!     }
//!     if !client.arm()? {
//!         match poll.poll(&mut events, Some(Duration::from_secs(10))) {
//!             // A futex-mode client's wait interrupts the thread when it completes.
//!             Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
//!             r => {
//!                 r?;
//!                 assert!(!events.is_empty(), "an answer within 10 s");
//!             }
//!         }
//!     }
//!     client.disarm_edge();
//! };
//! assert_eq!(answer.seq, 1);
//! poll.registry().deregister(&mut client)?;
//! drop(client);
//! server.stop()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;
use std::os::fd::AsRawFd;

use bytemuck::Pod;
use mio::event::Source;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::{Client, Error};

impl<S: Pod, C: Pod> Client<S, C> {
    /// The two descriptors an event loop watches: [`poll_fd`](Client::poll_fd) (the
    /// completion eventfd's epoll instance, or in futex mode an io_uring futex wait) and the
    /// control socket.
    fn event_fds(&mut self) -> io::Result<[i32; 2]> {
        let completion = self.poll_fd().map_err(|e| match e {
            Error::Io { op, source } => io::Error::new(source.kind(), format!("{op}: {source}")),
            Error::Config(c) => io::Error::new(io::ErrorKind::InvalidInput, c),
            e => io::Error::new(io::ErrorKind::InvalidInput, e),
        })?;
        Ok([completion.as_raw_fd(), self.control_fd().as_raw_fd()])
    }
}

/// Both descriptors under the caller's token: [`Client::poll_fd`] and the control socket (the
/// server's messages and its hang-up). Refused (`InvalidInput`, with a
/// [`ConfigError::Mode`](crate::ConfigError::Mode) inside) for a client in a mode that spins
/// ([`NotifyMode::Spin`](crate::NotifyMode::Spin), [`NotifyMode::Adaptive`](crate::NotifyMode::Adaptive));
/// in futex mode, where the kernel has no io_uring futex waits, the error from setting them
/// up (`Unsupported`, `PermissionDenied`, ...), the step named in its message.
impl<S: Pod, C: Pod> Source for Client<S, C> {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        let [completion, control] = self.event_fds()?;
        SourceFd(&completion).register(registry, token, interests)?;
        if let Err(e) = SourceFd(&control).register(registry, token, interests) {
            let _ = SourceFd(&completion).deregister(registry);
            return Err(e);
        }
        Ok(())
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        for fd in self.event_fds()? {
            SourceFd(&fd).reregister(registry, token, interests)?;
        }
        Ok(())
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        for fd in self.event_fds()? {
            SourceFd(&fd).deregister(registry)?;
        }
        Ok(())
    }
}
