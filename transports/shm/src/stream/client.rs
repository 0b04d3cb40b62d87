//! The client end: `Stream`, with `Read`, `BufRead` and `Write` (and a non-blocking mode).

use super::*;

fn io_err(e: QueueError) -> io::Error {
    match e {
        QueueError::PeerGone => io::Error::new(io::ErrorKind::BrokenPipe, "the server is gone"),
        QueueError::Timeout(t) => io::Error::new(
            io::ErrorKind::TimedOut,
            format!("stream wait timed out after {t:?}"),
        ),
        QueueError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

/// The client end of a byte stream.
#[derive(Debug)]
pub struct Stream {
    client: Client<StreamReq, StreamResp>,
    /// The buffer `write` is filling.
    tx: Option<Buf>,
    /// Filled receive buffers, oldest first, and how far the oldest has been read.
    rx: VecDeque<Buf>,
    rx_pos: usize,
    /// What `fill_buf` copied out of a receive buffer (the buffer itself lives in memory the
    /// server maps, so it is never lent out as a slice), and how far it has been consumed.
    copied: Vec<u8>,
    copied_pos: usize,
    /// Receive buffers lent to the server, and how many to keep lent.
    posted: usize,
    max_rx: usize,
    /// Data buffers lent to the server.
    tx_in_flight: usize,
    eof: bool,
    fin_sent: bool,
    timeout: Option<Duration>,
    /// Never wait: what would wait fails with `WouldBlock` instead (the async stream's mode).
    nonblocking: bool,
    scratch: Vec<StreamResp>,
}

impl Stream {
    /// Connects to a stream server listening at `path`. `options.protocol` should be
    /// [`STREAM_PROTOCOL`] unless the server names its streams otherwise.
    pub fn connect(path: impl AsRef<Path>, options: &ClientOptions) -> Result<Self, Error> {
        Ok(Self::over(Client::connect(path, options)?))
    }

    /// A stream over an already-connected socket.
    pub fn from_socket(socket: OwnedFd, options: &ClientOptions) -> Result<Self, Error> {
        Ok(Self::over(Client::from_socket(socket, options)?))
    }

    fn over(client: Client<StreamReq, StreamResp>) -> Self {
        let count = client.pool().count();
        Stream {
            // Half the buffers receive, so writing always has buffers of its own.
            max_rx: (count / 2).max(1),
            client,
            tx: None,
            rx: VecDeque::new(),
            rx_pos: 0,
            copied: Vec::new(),
            copied_pos: 0,
            posted: 0,
            tx_in_flight: 0,
            eof: false,
            fin_sent: false,
            timeout: None,
            nonblocking: false,
            scratch: Vec::new(),
        }
    }

    /// Limits every wait inside `read`/`write`/`flush` (`None`: no limit; a dead server is
    /// still noticed).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// Makes every call that would wait fail with [`io::ErrorKind::WouldBlock`] instead, as a
    /// non-blocking socket does: nothing is lost (bytes a `write` took stay queued), and the
    /// call can be made again once [`client`](Self::client)'s completion eventfd or control
    /// socket is readable (arm the client first). What the async stream builds on.
    pub fn set_nonblocking(&mut self, nonblocking: bool) {
        self.nonblocking = nonblocking;
    }

    /// The connection underneath.
    pub fn client(&self) -> &Client<StreamReq, StreamResp> {
        &self.client
    }

    /// The connection underneath, to arm and disarm it around an external wait.
    #[cfg(feature = "tokio")]
    pub(crate) fn client_mut(&mut self) -> &mut Client<StreamReq, StreamResp> {
        &mut self.client
    }

    /// Sends what is buffered and tells the server no more data follows (like
    /// `shutdown(SHUT_WR)`); reading goes on until the server's end of stream.
    pub fn finish(&mut self) -> io::Result<()> {
        if self.fin_sent {
            return Ok(());
        }
        self.send_tx()?;
        self.push(StreamReq {
            kind: request::FIN,
            reserved: 0,
            buf: BufHandle::default(),
        })?;
        self.fin_sent = true;
        self.client.submit().map_err(io_err)?;
        Ok(())
    }

    fn push(&mut self, req: StreamReq) -> io::Result<()> {
        let mut req = req;
        loop {
            match self.client.push(req) {
                Ok(()) => return Ok(()),
                Err(r) if matches!(r.error, QueueError::Full) => {
                    req = r.entry;
                    self.client.submit().map_err(io_err)?;
                    self.pump(true)?;
                }
                Err(r) => return Err(io_err(r.error)),
            }
        }
    }

    /// Lends receive buffers until `max_rx` are lent or filled.
    fn post_receives(&mut self) -> io::Result<()> {
        let mut posted = false;
        while !self.eof && self.posted + self.rx.len() < self.max_rx {
            let Some(mut buf) = self.client.alloc() else {
                break;
            };
            let cap = buf.capacity();
            buf.set_len(cap);
            let handle = buf.lend();
            if let Err(e) = self.push(StreamReq {
                kind: request::RECV,
                reserved: 0,
                buf: handle,
            }) {
                // Not lent after all: take it back so it is not lost.
                let _ = self.client.reclaim(handle);
                if e.kind() == io::ErrorKind::WouldBlock {
                    // The ring is full: more receives are posted later.
                    break;
                }
                return Err(e);
            }
            self.posted += 1;
            posted = true;
        }
        if posted {
            self.client.submit().map_err(io_err)?;
        }
        Ok(())
    }

    /// Handles the completions that are ready; with `wait`, waits for at least one first.
    /// Non-blocking, a wait that finds nothing is `WouldBlock`.
    fn pump(&mut self, wait: bool) -> io::Result<()> {
        if wait && !self.nonblocking {
            self.client.wait(self.timeout).map_err(io_err)?;
        }
        let mut done = std::mem::take(&mut self.scratch);
        done.clear();
        let reaped = self.client.reap_into(&mut done, usize::MAX).map_err(io_err);
        let handled = match reaped {
            Ok(0) if wait && self.nonblocking => Err(io::ErrorKind::WouldBlock.into()),
            Ok(_) => self.handle_completions(&done),
            Err(e) => Err(e),
        };
        self.scratch = done;
        handled
    }

    /// Handles every completion of `done`, even after one is bad (its error is returned once
    /// all are handled): stopping there would leave the buffers the rest hand back lent for
    /// good, lost to the pool, and their data unread.
    fn handle_completions(&mut self, done: &[StreamResp]) -> io::Result<()> {
        let mut first = Ok(());
        for c in done {
            if let Err(e) = self.handle_completion(c) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    fn handle_completion(&mut self, c: &StreamResp) -> io::Result<()> {
        let buf = self.client.reclaim(c.buf).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("server returned a buffer this stream did not lend: {e}"),
            )
        });
        // The counters move only for completions that can be true: a server that reports
        // more sends or receives completed than there were is an error, not an underflow
        // (which would leave `fill_buf` waiting forever).
        let fewer = |n: &mut usize, what: &str| -> io::Result<()> {
            *n = n.checked_sub(1).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("server completed more {what} than this stream sent"),
                )
            })?;
            Ok(())
        };
        match c.kind {
            completion::SENT => {
                let buf = buf?;
                fewer(&mut self.tx_in_flight, "sends")?;
                drop(buf);
            }
            completion::FILLED => {
                let buf = buf?;
                fewer(&mut self.posted, "receives")?;
                self.rx.push_back(buf);
            }
            completion::EOF => {
                let buf = buf?;
                fewer(&mut self.posted, "receives")?;
                self.eof = true;
                drop(buf);
            }
            completion::ERROR => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("server refused a stream request (status {})", c.status),
                ));
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unknown stream completion kind {other}"),
                ));
            }
        }
        Ok(())
    }

    fn send_tx(&mut self) -> io::Result<()> {
        let Some(buf) = self.tx.take() else {
            return Ok(());
        };
        if buf.is_empty() {
            return Ok(());
        }
        let handle = buf.lend();
        if let Err(e) = self.push(StreamReq {
            kind: request::DATA,
            reserved: 0,
            buf: handle,
        }) {
            // Not sent: the bytes stay queued in it for the next try.
            self.tx = self.client.reclaim(handle).ok();
            return Err(e);
        }
        self.tx_in_flight += 1;
        Ok(())
    }
}

impl Write for Stream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.fin_sent {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after finish() on a subring stream",
            ));
        }
        if data.is_empty() {
            return Ok(0);
        }
        if self.tx.as_ref().is_some_and(|tx| tx.len() == tx.capacity()) {
            // Full from an earlier write that could not send it.
            self.send_tx()?;
        }
        if self.tx.is_none() {
            loop {
                if let Some(buf) = self.client.alloc() {
                    self.tx = Some(buf);
                    break;
                }
                // Every buffer is lent or holds unread input: completions free some.
                self.client.submit().map_err(io_err)?;
                self.pump(true)?;
            }
        }
        let tx = self.tx.as_mut().expect("allocated above");
        let len = tx.len();
        let n = (tx.capacity() - len).min(data.len());
        tx.spare()
            .get(len..len + n)
            .expect("within the capacity")
            .copy_from(&data[..n]);
        tx.set_len(len + n);
        if tx.len() == tx.capacity() {
            match self.send_tx() {
                // The bytes are taken: they go out with the next call.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => r?,
            }
            // Reap what is ready without waiting, so buffers come back as we go.
            self.pump(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_tx()?;
        self.post_receives()?;
        self.client.submit().map_err(io_err)?;
        Ok(())
    }
}

impl Stream {
    /// Waits until input is ready (`true`) or the stream has ended (`false`).
    fn input_ready(&mut self) -> io::Result<bool> {
        loop {
            if self.copied_pos < self.copied.len() {
                return Ok(true);
            }
            if let Some(front) = self.rx.front() {
                if self.rx_pos < front.len() {
                    return Ok(true);
                }
                self.rx.pop_front();
                self.rx_pos = 0;
                continue;
            }
            if self.eof {
                return Ok(false);
            }
            // Whatever was written goes out first: the answer may depend on it.
            self.send_tx()?;
            self.post_receives()?;
            self.client.submit().map_err(io_err)?;
            // With nothing lent, no completion can come: say so rather than wait forever.
            if self.posted == 0 && self.tx_in_flight == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    "no receive buffer could be lent (all are in use)",
                ));
            }
            self.pump(true)?;
        }
    }
}

/// `fill_buf` copies the rest of the oldest filled buffer into the stream's own memory and
/// frees the buffer (the server maps it, so it is never handed out as a slice); `read` copies
/// straight from the buffer into the caller's.
impl BufRead for Stream {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if !self.input_ready()? {
            return Ok(&[]);
        }
        if self.copied_pos >= self.copied.len() {
            let front = self.rx.pop_front().expect("input_ready found one");
            let rest = front
                .bytes()
                .get(self.rx_pos..front.len())
                .expect("rx_pos < len");
            self.copied.clear();
            self.copied.resize(rest.len(), 0);
            rest.copy_to(&mut self.copied);
            self.copied_pos = 0;
            self.rx_pos = 0;
        }
        Ok(&self.copied[self.copied_pos..])
    }

    fn consume(&mut self, amt: usize) {
        self.copied_pos = (self.copied_pos + amt).min(self.copied.len());
    }
}

impl Read for Stream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() || !self.input_ready()? {
            return Ok(0);
        }
        if self.copied_pos < self.copied.len() {
            let n = out.len().min(self.copied.len() - self.copied_pos);
            out[..n].copy_from_slice(&self.copied[self.copied_pos..self.copied_pos + n]);
            self.copied_pos += n;
            return Ok(n);
        }
        let front = self.rx.front().expect("input_ready found one");
        let n = front
            .bytes()
            .get(self.rx_pos..front.len())
            .expect("rx_pos < len")
            .copy_to(out);
        self.rx_pos += n;
        if self.rx_pos >= front.len() {
            self.rx.pop_front();
            self.rx_pos = 0;
        }
        Ok(n)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.send_tx();
        let _ = self.client.submit();
    }
}
