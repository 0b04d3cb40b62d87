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
    /// What each of the pool's buffers is lent for ([`Lent`]), by index: a completion is
    /// counted against what its buffer was lent for, whatever kind the server says it is.
    lent: Vec<Lent>,
    /// An error met after `write` had taken its bytes (it returned `Ok`): the next call
    /// returns it.
    deferred: Option<io::Error>,
    eof: bool,
    fin_sent: bool,
    timeout: Option<Duration>,
    /// Never wait: what would wait fails with `WouldBlock` instead (the async stream's mode).
    nonblocking: bool,
    scratch: Vec<StreamResp>,
    /// Completions reaped so far (wrapping): the async stream wakes its other half when a
    /// call reaped some, whatever that call returns.
    reaped: u64,
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
            lent: vec![Lent::No; count],
            deferred: None,
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
            reaped: 0,
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
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
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

    /// Pushes `req`, waiting for room in a full ring (for the server to take requests, not
    /// for a completion: requests it takes need not be answered soon, receives in particular).
    /// Non-blocking, a ring still full after reaping what is ready is `WouldBlock`.
    fn push(&mut self, req: StreamReq) -> io::Result<()> {
        let mut req = req;
        loop {
            match self.client.push(req) {
                Ok(()) => return Ok(()),
                Err(r) if matches!(r.error, QueueError::Full) => {
                    req = r.entry;
                    self.client.submit().map_err(io_err)?;
                    // What is ready frees buffers, and lets a server stopped on a full
                    // completion ring take requests again.
                    self.pump(false)?;
                    if self.client.space().map_err(io_err)? > 0 {
                        continue;
                    }
                    if self.nonblocking {
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    match self.client.wait_space(self.timeout) {
                        // Only reaping makes room (the completion ring is full): the loop
                        // reaps.
                        Ok(()) | Err(QueueError::Full) => {}
                        Err(e) => return Err(io_err(e)),
                    }
                }
                Err(r) => return Err(io_err(r.error)),
            }
        }
    }

    /// Lends receive buffers until `max_rx` are lent or filled, or (until the end of the
    /// writes is sent) the ring has one free slot left: receives never wait for room, and never
    /// take the slot a write's data (or its end) needs, which the server answers without
    /// waiting for input. (A ring full of receives that the server holds until it has data
    /// would leave a write waiting on them.)
    fn post_receives(&mut self) -> io::Result<()> {
        let mut posted = false;
        let keep = usize::from(!self.fin_sent);
        while !self.eof
            && self.posted + self.rx.len() < self.max_rx
            && self.client.space().map_err(io_err)? > keep
        {
            let Some(mut buf) = self.client.alloc() else {
                break;
            };
            let cap = buf.capacity();
            buf.set_len(cap);
            let index = buf.index() as usize;
            let handle = buf.lend();
            let req = StreamReq {
                kind: request::RECV,
                reserved: 0,
                buf: handle,
            };
            if let Err(r) = self.client.push(req) {
                // Not lent after all: take it back so it is not lost.
                let _ = self.client.reclaim(handle);
                if matches!(r.error, QueueError::Full) {
                    break;
                }
                return Err(io_err(r.error));
            }
            self.lend(index, Lent::Receive);
            posted = true;
        }
        if posted {
            self.client.submit().map_err(io_err)?;
        }
        Ok(())
    }

    /// Records buffer `index` lent for `what`.
    fn lend(&mut self, index: usize, what: Lent) {
        match what {
            Lent::Receive => self.posted += 1,
            Lent::Data => self.tx_in_flight += 1,
            Lent::No => {}
        }
        if let Some(slot) = self.lent.get_mut(index) {
            *slot = what;
        }
    }

    /// Buffer `index` is back: what it was lent for, its count taken down.
    fn returned(&mut self, index: usize) -> Lent {
        let what = self
            .lent
            .get_mut(index)
            .map_or(Lent::No, |slot| std::mem::replace(slot, Lent::No));
        match what {
            Lent::Receive => self.posted -= 1,
            Lent::Data => self.tx_in_flight -= 1,
            Lent::No => {}
        }
        what
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
        if let Ok(n) = reaped {
            self.reaped = self.reaped.wrapping_add(n as u64);
        }
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
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        // A buffer the server hands back is counted against what it was lent for, whatever
        // the completion says: the counts stay true (an error or a wrong kind still returns
        // its buffer), so a stream never waits on receives it no longer has lent.
        let buf = self.client.reclaim(c.buf).map_err(|e| {
            bad(format!(
                "server returned a buffer this stream did not lend: {e}"
            ))
        })?;
        let lent = self.returned(buf.index() as usize);
        match (c.kind, lent) {
            (completion::SENT, Lent::Data) => drop(buf),
            (completion::FILLED, Lent::Receive) => {
                if buf.is_empty() {
                    // The end of the stream is `EOF`: an empty fill would have a reader
                    // post and wait again for as long as the server sent them.
                    return Err(bad("server filled a receive with no bytes".into()));
                }
                self.rx.push_back(buf);
            }
            (completion::EOF, Lent::Receive) => {
                self.eof = true;
                drop(buf);
            }
            (completion::ERROR, _) => {
                return Err(bad(format!(
                    "server refused a stream request (status {})",
                    c.status
                )));
            }
            (completion::SENT | completion::FILLED | completion::EOF, _) => {
                return Err(bad(format!(
                    "server completed a buffer lent as {lent:?} with kind {}",
                    c.kind
                )));
            }
            (other, _) => return Err(bad(format!("unknown stream completion kind {other}"))),
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
        let index = buf.index() as usize;
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
        self.lend(index, Lent::Data);
        Ok(())
    }
}

impl Write for Stream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
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
            // The bytes are taken, so this call returns `Ok(n)` (an error says nothing was
            // written, and a caller would write them again); what goes wrong from here is
            // the next call's error. Bytes not sent now go out with the next call.
            let sent = match self.send_tx() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                r => r,
            };
            // Reap what is ready without waiting, so buffers come back as we go.
            if let Err(e) = sent.and_then(|()| self.pump(false)) {
                self.deferred = Some(e);
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        self.send_tx()?;
        self.post_receives()?;
        self.client.submit().map_err(io_err)?;
        Ok(())
    }
}

impl Stream {
    /// Completions reaped so far (wrapping): it changes exactly when a call reaped some.
    #[cfg(feature = "tokio")]
    pub(crate) fn reaped(&self) -> u64 {
        self.reaped
    }

    /// Waits until input is ready (`true`) or the stream has ended (`false`).
    fn input_ready(&mut self) -> io::Result<bool> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
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
            // With nothing lent, no completion can come: say so rather than wait forever. (Room
            // for a receive comes as the server takes what the ring holds: wait for it.)
            if self.posted == 0
                && self.tx_in_flight == 0
                && self.client.space().map_err(io_err)? == 0
            {
                if self.nonblocking {
                    // Reap first, as every other call that says `WouldBlock` does: with nothing
                    // lent, a completion there is one the server made up (an error here), and
                    // left in the ring it would have the async stream's arm find it ready again
                    // and again, turning without end inside one poll.
                    self.pump(false)?;
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                match self.client.wait_space(self.timeout) {
                    Ok(()) | Err(QueueError::Full) => continue,
                    Err(e) => return Err(io_err(e)),
                }
            }
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
    /// Sends what `write` buffered, waiting for room in the ring at most [`DROP_LINGER`] (or
    /// the stream's timeout, if shorter; not at all if it is non-blocking): a server that
    /// stopped taking requests cannot hold a drop. Bytes that found no room by then are
    /// discarded: `flush` or `finish` first to know they went.
    fn drop(&mut self) {
        self.timeout = Some(self.timeout.map_or(DROP_LINGER, |t| t.min(DROP_LINGER)));
        let _ = self.send_tx();
        let _ = self.client.submit();
    }
}

/// The longest a dropped [`Stream`] waits for room to send what `write` buffered.
pub const DROP_LINGER: Duration = Duration::from_millis(100);

/// What a buffer of the stream's pool is lent to the server for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lent {
    No,
    Receive,
    Data,
}
