//! A client inside a tokio runtime (feature `tokio`): completions awaited through tokio's
//! `AsyncFd` on the client's [`poll_fd`](crate::Client::poll_fd) (its completion eventfd's
//! epoll instance in eventfd mode; in futex mode an io_uring of its own whose `FUTEX_WAIT` on
//! the completion word the server's futex wake ends), beside its control socket, so a task
//! sleeps in the runtime's own epoll rather than blocking a worker thread, and a dead server
//! wakes it as a hang-up. Futex mode is the one a client that does not trust its server
//! ([`ClientOptions::untrusted_server`]) can use.
//!
//! The wait is the planes' arm/disarm protocol: announce the sleep (`arm`; if completions are
//! already there, no sleep at all), await the descriptor or the socket, end the announcement
//! (`disarm_edge`: tokio's epoll is edge-triggered, so the eventfd is not drained). While
//! completions keep coming, no system call is made; a wait that sleeps costs the runtime's
//! `epoll_wait` and the server's doorbell (and in futex mode the `io_uring_enter` that arms
//! the wait, and the `epoll_wait` its completion interrupts and the runtime calls again),
//! nothing more. In futex mode the completion interrupts the worker thread that armed the
//! wait, as a signal would ([`Client::poll_fd`]): under a multi-thread runtime any worker, so
//! blocking calls in tasks (which a runtime's tasks should not make anyway) may see `EINTR`. The socket is looked at only after
//! it fired. A wait future dropped before it finishes (a `select!` that took another branch, a
//! timeout) ends the announcement in its drop: nothing is lost (completions stay in the ring)
//! and nothing is leaked.
//!
//! ```
//! use subring_shm::echo::{self, EchoOp, EchoReq, ECHO_PROTOCOL};
//! use subring_shm::tokio::AsyncClient;
//! use subring_shm::{ClientOptions, NotifyMode, Server, ServerConfig};
//!
//! let (server_end, client_end) = subring_shm::socket_pair()?;
//! let mut server = Server::new(ServerConfig::new(ECHO_PROTOCOL), echo::handler_factory())?;
//! server.add_connection(server_end)?;
//! let server = server.spawn()?;
//!
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! runtime.block_on(async {
//!     let options = ClientOptions::new(ECHO_PROTOCOL).mode(NotifyMode::EventFd);
//!     let mut client = AsyncClient::<EchoReq, echo::EchoResp>::from_socket(client_end, &options)?;
//!     let answer = client
//!         .call(EchoReq { seq: 7, op: EchoOp::PING, ..EchoReq::default() })
//!         .await?;
//!     assert_eq!(answer.seq, 7);
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })?;
//! server.stop()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::os::fd::OwnedFd;
use std::path::Path;
use std::task::Poll;

use bytemuck::Pod;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::queue::{Completer, QueueError, Submitter};
use crate::{Client, ClientOptions, ConfigError, Error, NotifyMode};

/// A [`Client`] whose waits are `async`: its [`poll_fd`](Client::poll_fd) and control socket
/// are registered with the tokio runtime it was made in.
///
/// It needs [`NotifyMode::EventFd`] or [`NotifyMode::Futex`] (the modes whose completions can
/// arrive on a descriptor an event loop watches; futex mode through io_uring, Linux 6.7);
/// the spinning modes are refused with [`Error::Config`].
#[derive(Debug)]
pub struct AsyncClient<S: Pod, C: Pod> {
    client: Client<S, C>,
    completion: AsyncFd<OwnedFd>,
    control: AsyncFd<OwnedFd>,
    /// The control socket fired (a message or a hang-up) since the server was last checked:
    /// only then is the socket looked at (a system call).
    control_fired: bool,
}

impl<S: Pod, C: Pod> AsyncClient<S, C> {
    /// Connects to a server listening at `path` (the handshake itself blocks this thread for
    /// at most `options.control_timeout`), then registers with the current tokio runtime.
    pub fn connect(path: impl AsRef<Path>, options: &ClientOptions) -> Result<Self, Error> {
        Self::check(options)?;
        Self::over(Client::connect(path, options)?)
    }

    /// As [`connect`](Self::connect), over an already-connected socket.
    pub fn from_socket(socket: OwnedFd, options: &ClientOptions) -> Result<Self, Error> {
        Self::check(options)?;
        Self::over(Client::from_socket(socket, options)?)
    }

    fn check(options: &ClientOptions) -> Result<(), Error> {
        if !matches!(options.mode, NotifyMode::EventFd | NotifyMode::Futex) {
            return Err(ConfigError::Mode {
                what: "an async client in a mode other than eventfd (it waits in tokio's epoll)",
                needs: NotifyMode::Futex,
                given: options.mode,
            }
            .into());
        }
        Ok(())
    }

    fn over(mut client: Client<S, C>) -> Result<Self, Error> {
        let (completion, control) = register(&mut client)?;
        Ok(AsyncClient {
            completion,
            control,
            client,
            control_fired: true,
        })
    }

    /// The client underneath: push, submit, reap, buffers and the rest, none of which block.
    pub fn client(&mut self) -> &mut Client<S, C> {
        &mut self.client
    }

    /// Queues `entry` and makes it visible to the server (a doorbell only if the server
    /// sleeps). [`QueueError::Full`] is back-pressure: the ring had no room and the entry was
    /// not taken (send it again later). Any other error may come after the entry was queued,
    /// so do not send it again: [`QueueError::PeerGone`] says the server will answer nothing
    /// more, and an `Io` error from the doorbell leaves the entry published (a server that
    /// polls still sees it).
    pub fn send(&mut self, entry: S) -> Result<(), QueueError> {
        self.client.push(entry)?;
        self.client.submit().map(drop)
    }

    /// Waits until a completion can be reaped, or the server is gone
    /// ([`QueueError::PeerGone`]). Cancel-safe: dropped unfinished, it loses no completion.
    pub async fn ready(&mut self) -> Result<(), QueueError> {
        loop {
            if self.client.completions_ready()? {
                return Ok(());
            }
            if std::mem::take(&mut self.control_fired) && self.client.server_gone() {
                return Err(QueueError::PeerGone);
            }
            if self.client.arm()? {
                // Completions arrived meanwhile (the server's close with none is `PeerGone`).
                self.client.disarm_edge();
                continue;
            }
            // Armed: the server wakes the eventfd (or the futex the ring waits on) for the next
            // completion. The guard disarms however this ends (a dropped future included).
            let armed = Armed(&mut self.client);
            let (completion, control) = (&self.completion, &self.control);
            let fired = std::future::poll_fn(|cx| {
                let mut fired = None;
                for (k, fd) in [completion, control].into_iter().enumerate() {
                    if let Poll::Ready(ready) = fd.poll_read_ready(cx) {
                        // Edge-triggered (tokio's epoll): each wake-up of the eventfd and each
                        // message or hang-up of the socket is a new edge, so nothing is
                        // drained.
                        match ready {
                            Ok(mut guard) => guard.clear_ready(),
                            Err(e) => return Poll::Ready(Err(e)),
                        }
                        fired = Some(k == 1);
                    }
                }
                fired.map_or(Poll::Pending, |control| Poll::Ready(Ok(control)))
            })
            .await
            .map_err(QueueError::Io)?;
            self.control_fired |= fired;
            drop(armed);
        }
    }

    /// Reaps the next completion, waiting for it if there is none.
    pub async fn next(&mut self) -> Result<C, QueueError> {
        loop {
            if let Some(c) = self.client.reap()? {
                return Ok(c);
            }
            self.ready().await?;
        }
    }

    /// Sends `entry` and waits for the next completion: a round trip when nothing else is in
    /// flight.
    ///
    /// Not cancel-safe: dropped after its send (a timeout, a `select!` that took another
    /// branch), its answer stays in the ring and is what the next [`next`](Self::next) or
    /// `call` returns, so every later call would be answered one behind. Where calls can be
    /// cancelled, use [`send`](Self::send) and [`next`](Self::next) (which is cancel-safe), and
    /// match answers to requests by a field of your own (as the echo protocol's `seq`).
    pub async fn call(&mut self, entry: S) -> Result<C, QueueError> {
        self.send(entry)?;
        self.next().await
    }
}

/// Registers `client`'s [`poll_fd`](Client::poll_fd) and control socket (duplicates, owned by
/// the returned values) with the current runtime.
fn register<S: Pod, C: Pod>(
    client: &mut Client<S, C>,
) -> Result<(AsyncFd<OwnedFd>, AsyncFd<OwnedFd>), Error> {
    let io = |op: &'static str| move |source| Error::Io { op, source };
    let completion = client
        .poll_fd()?
        .try_clone_to_owned()
        .map_err(io("duplicating the completion descriptor"))?;
    let control = client
        .control_fd()
        .try_clone_to_owned()
        .map_err(io("duplicating the control socket"))?;
    let register = |fd: OwnedFd, op: &'static str| {
        // SAFETY: an `OwnedFd` is open, refers to one file description for its whole life and
        // always answers the same number; the `AsyncFd` owns it until it drops.
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| Error::Io {
            op,
            source: e.into_parts().1,
        })
    };
    Ok((
        register(
            completion,
            "registering the completion descriptor with tokio",
        )?,
        register(control, "registering the control socket with tokio")?,
    ))
}

/// An armed wait: disarmed when dropped.
struct Armed<'a, S: Pod, C: Pod>(&'a mut Client<S, C>);

impl<S: Pod, C: Pod> Drop for Armed<'_, S, C> {
    fn drop(&mut self) {
        self.0.disarm_edge();
    }
}

/// A byte stream ([`Stream`](crate::stream::Stream)) as tokio's `AsyncRead`, `AsyncBufRead`
/// and `AsyncWrite`: the stream runs non-blocking, and a call that would wait registers the
/// task's waker on the client's [`poll_fd`](Client::poll_fd) and control socket (the client
/// armed, so the server wakes it) and returns `Pending`. The client needs
/// [`NotifyMode::EventFd`] or [`NotifyMode::Futex`], as [`AsyncClient`] does.
///
/// ```
/// use subring_shm::stream::{ByteService, StreamHandler, STREAM_PROTOCOL};
/// use subring_shm::tokio::AsyncStream;
/// use subring_shm::{ClientOptions, NotifyMode, Server, ServerConfig};
/// use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
///
/// struct Upper;
/// impl ByteService for Upper {
///     fn data(&mut self, input: &[u8], out: &mut Vec<u8>) {
///         out.extend(input.iter().map(u8::to_ascii_uppercase));
///     }
/// }
///
/// let (server_end, client_end) = subring_shm::socket_pair()?;
/// let mut server = Server::new(ServerConfig::new(STREAM_PROTOCOL), |_| StreamHandler::new(Upper))?;
/// server.add_connection(server_end)?;
/// let server = server.spawn()?;
/// let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// runtime.block_on(async {
///     let options = ClientOptions::new(STREAM_PROTOCOL).mode(NotifyMode::EventFd);
///     let mut stream = AsyncStream::from_socket(client_end, &options)?;
///     stream.write_all(b"hello, async subsystem\n").await?;
///     stream.flush().await?;
///     let mut line = String::new();
///     BufReader::new(&mut stream).read_line(&mut line).await?;
///     assert_eq!(line, "HELLO, ASYNC SUBSYSTEM\n");
///     Ok::<(), Box<dyn std::error::Error>>(())
/// })?;
/// server.stop()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct AsyncStream {
    stream: crate::stream::Stream,
    completion: AsyncFd<OwnedFd>,
    control: AsyncFd<OwnedFd>,
    /// Whether the client is armed from a `Pending` poll (disarmed at the next poll).
    armed: bool,
    /// The control socket fired since the server was last checked (see `AsyncClient`).
    control_fired: bool,
    /// Tasks waiting (a read half and a write half may both be): an `AsyncFd` wakes only the
    /// last task that polled it, so whoever makes progress or sees readiness wakes the rest.
    waiters: Vec<std::task::Waker>,
}

impl AsyncStream {
    /// Connects to a stream server listening at `path` (the handshake blocks this thread for
    /// at most `options.control_timeout`), then registers with the current tokio runtime.
    pub fn connect(path: impl AsRef<Path>, options: &ClientOptions) -> Result<Self, Error> {
        AsyncClient::<crate::stream::StreamReq, crate::stream::StreamResp>::check(options)?;
        Self::over(crate::stream::Stream::connect(path, options)?)
    }

    /// As [`connect`](Self::connect), over an already-connected socket.
    pub fn from_socket(socket: OwnedFd, options: &ClientOptions) -> Result<Self, Error> {
        AsyncClient::<crate::stream::StreamReq, crate::stream::StreamResp>::check(options)?;
        Self::over(crate::stream::Stream::from_socket(socket, options)?)
    }

    fn over(mut stream: crate::stream::Stream) -> Result<Self, Error> {
        stream.set_nonblocking(true);
        let (completion, control) = register(stream.client_mut())?;
        Ok(AsyncStream {
            stream,
            completion,
            control,
            armed: false,
            control_fired: true,
            waiters: Vec::new(),
        })
    }

    /// The stream underneath (non-blocking).
    pub fn stream(&self) -> &crate::stream::Stream {
        &self.stream
    }

    /// Runs `op` until it does not say `WouldBlock`; when it does, arms the client and waits
    /// (as `Pending`) for the completion descriptor or the control socket. After
    /// [`POLL_TURNS`] turns that each found something ready but ended in `WouldBlock`, it
    /// yields (wakes its own task and returns `Pending`): a server posting completions as fast
    /// as they are reaped cannot hold a poll, and with it the runtime's thread.
    fn poll_io<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        mut op: impl FnMut(&mut crate::stream::Stream) -> std::io::Result<T>,
    ) -> Poll<std::io::Result<T>> {
        for _ in 0..POLL_TURNS {
            if std::mem::take(&mut self.armed) {
                self.stream.client_mut().disarm_edge();
            }
            let reaped = self.stream.reaped();
            match op(&mut self.stream) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if self.stream.reaped() != reaped {
                        // It reaped what the other half may wait for (a write's buffers back,
                        // a read's data), and that completion's wake-up may have gone to no
                        // one: the client was disarmed while this call ran.
                        self.wake_others(cx);
                    }
                }
                done => {
                    // This call may have reaped what another task waits for.
                    self.wake_others(cx);
                    return Poll::Ready(done);
                }
            }
            let client = self.stream.client_mut();
            if std::mem::take(&mut self.control_fired) && client.server_gone() {
                return Poll::Ready(Err(queue_io(QueueError::PeerGone)));
            }
            if client.arm().map_err(queue_io)? {
                client.disarm_edge();
                continue;
            }
            self.armed = true;
            let mut woke = false;
            for (k, fd) in [&self.completion, &self.control].into_iter().enumerate() {
                if let Poll::Ready(ready) = fd.poll_read_ready(cx) {
                    ready?.clear_ready();
                    woke = true;
                    self.control_fired |= k == 1;
                }
            }
            if !woke {
                if !self.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    self.waiters.push(cx.waker().clone());
                }
                return Poll::Pending;
            }
            self.wake_others(cx);
        }
        if std::mem::take(&mut self.armed) {
            self.stream.client_mut().disarm_edge();
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn wake_others(&mut self, cx: &std::task::Context<'_>) {
        for w in self.waiters.drain(..) {
            if !w.will_wake(cx.waker()) {
                w.wake();
            }
        }
    }
}

/// How many times one poll of an [`AsyncStream`] runs its operation before it yields.
const POLL_TURNS: usize = 32;

fn queue_io(e: QueueError) -> std::io::Error {
    match e {
        QueueError::Io(e) => e,
        QueueError::PeerGone => std::io::Error::new(std::io::ErrorKind::BrokenPipe, e),
        other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
    }
}

impl tokio::io::AsyncRead for AsyncStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let n = std::task::ready!(this.poll_io(cx, |s| {
            std::io::Read::read(s, buf.initialize_unfilled())
        }))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncBufRead for AsyncStream {
    fn poll_fill_buf(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<&[u8]>> {
        let this = self.get_mut();
        // Bytes ready first (this does not wait), then the slice of them.
        std::task::ready!(this.poll_io(cx, |s| std::io::BufRead::fill_buf(s).map(|b| b.len())))?;
        Poll::Ready(std::io::BufRead::fill_buf(&mut this.stream))
    }

    fn consume(self: std::pin::Pin<&mut Self>, amt: usize) {
        std::io::BufRead::consume(&mut self.get_mut().stream, amt);
    }
}

impl tokio::io::AsyncWrite for AsyncStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut()
            .poll_io(cx, |s| std::io::Write::write(s, buf))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.get_mut().poll_io(cx, std::io::Write::flush)
    }

    /// Sends what is buffered and the end of the stream (`finish`): the server's answer can
    /// still be read to its end.
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.get_mut().poll_io(cx, crate::stream::Stream::finish)
    }
}
