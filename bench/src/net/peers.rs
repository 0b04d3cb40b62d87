//! The echo servers subring's is compared with, each written the way its users write one: a
//! single thread, a task (or a registration) per connection, read into a buffer and write it
//! back. Each runs until its process is killed, and returns an exit code only if it fails.

use std::io::{self, Read, Write};
use std::net::TcpListener;

/// An epoll loop through mio: edge-triggered, every connection read until `WouldBlock`, its
/// bytes written back at once, and what the socket would not take kept until it is writable.
pub(super) fn mio_echo(listener: TcpListener) -> i32 {
    use mio::net::{TcpListener as MioListener, TcpStream};
    use mio::{Events, Interest, Poll, Token};

    struct Conn {
        stream: TcpStream,
        pending: Vec<u8>,
    }

    fn flush(c: &mut Conn) -> io::Result<()> {
        while !c.pending.is_empty() {
            match c.stream.write(&c.pending) {
                Ok(n) => {
                    c.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    let run = || -> io::Result<()> {
        listener.set_nonblocking(true)?;
        let mut listener = MioListener::from_std(listener);
        let mut poll = Poll::new()?;
        const LISTENER: Token = Token(usize::MAX);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut conns: Vec<Option<Conn>> = Vec::new();
        let mut events = Events::with_capacity(256);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match poll.poll(&mut events, None) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => r?,
            }
            for ev in &events {
                if ev.token() == LISTENER {
                    loop {
                        match listener.accept() {
                            Ok((mut stream, _)) => {
                                stream.set_nodelay(true)?;
                                let id = conns
                                    .iter()
                                    .position(Option::is_none)
                                    .unwrap_or(conns.len());
                                poll.registry().register(
                                    &mut stream,
                                    Token(id),
                                    Interest::READABLE | Interest::WRITABLE,
                                )?;
                                let conn = Conn {
                                    stream,
                                    pending: Vec::new(),
                                };
                                match conns.get_mut(id) {
                                    Some(slot) => *slot = Some(conn),
                                    None => conns.push(Some(conn)),
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e),
                        }
                    }
                    continue;
                }
                let id = ev.token().0;
                let Some(c) = conns.get_mut(id).and_then(Option::as_mut) else {
                    continue;
                };
                let mut closed = flush(c).is_err();
                while !closed {
                    match c.stream.read(&mut buf) {
                        Ok(0) => closed = true,
                        Ok(n) => {
                            c.pending.extend_from_slice(&buf[..n]);
                            closed = flush(c).is_err();
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => closed = true,
                    }
                }
                if closed {
                    conns[id] = None;
                }
            }
        }
    };
    match run() {
        Ok(()) => 0,
        Err(_) => 5,
    }
}

/// tokio's current-thread runtime: a task per connection.
pub(super) fn tokio_echo(listener: TcpListener) -> i32 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let run = || -> io::Result<()> {
        listener.set_nonblocking(true)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        rt.block_on(async {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            loop {
                let (mut stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        })
    };
    match run() {
        Ok(()) => 0,
        Err(_) => 5,
    }
}

/// tokio-uring: a task per connection, owned buffers.
#[cfg(feature = "runtimes")]
pub(super) fn tokio_uring_echo(listener: TcpListener) -> i32 {
    use tokio_uring::buf::BoundedBuf;

    let run = || -> io::Result<()> {
        tokio_uring::start(async {
            let listener = tokio_uring::net::TcpListener::from_std(listener);
            loop {
                let (stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                tokio_uring::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let (res, b) = stream.read(buf).await;
                        let n = match res {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let (res, slice) = stream.write_all(b.slice(..n)).await;
                        if res.is_err() {
                            return;
                        }
                        buf = slice.into_inner();
                    }
                });
            }
        })
    };
    match run() {
        Ok(()) => 0,
        Err(_) => 5,
    }
}

/// compio: a task per connection, owned buffers.
#[cfg(feature = "runtimes")]
pub(super) fn compio_echo(listener: TcpListener) -> i32 {
    use compio::buf::{BufResult, IntoInner, IoBuf};
    use compio::io::{AsyncRead, AsyncWriteExt};

    let run = || -> io::Result<()> {
        let rt = compio::runtime::Runtime::new()?;
        rt.block_on(async {
            let listener = compio::net::TcpListener::from_std(listener)?;
            loop {
                let (mut stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                compio::runtime::spawn(async move {
                    let mut buf = Vec::with_capacity(4096);
                    loop {
                        let BufResult(res, b) = stream.read(buf).await;
                        let n = match res {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let BufResult(res, slice) = stream.write_all(b.slice(..n)).await;
                        if res.is_err() {
                            return;
                        }
                        buf = slice.into_inner();
                        buf.clear();
                    }
                })
                .detach();
            }
        })
    };
    match run() {
        Ok(()) => 0,
        Err(_) => 5,
    }
}
