//! The server's work: accepting, installing, receiving, sending back and closing.

use super::*;

impl Server {
    pub(super) fn push(&mut self, token: u64, op: Op) -> Res<()> {
        self.ring
            .push(Submission::new(token, op))
            .map_err(|r| r.error.into())
    }

    /// Cancels the operation of `token`. Its last completion may be reaped already, in this
    /// turn's batch, and not handled yet: then there is nothing to cancel.
    pub(super) fn cancel(&mut self, token: u64) -> Res<()> {
        match self
            .ring
            .push(Submission::new(CANCEL, Op::Cancel { token }))
        {
            Ok(()) => Ok(()),
            Err(r)
                if matches!(
                    SubmitError::of(&r.error),
                    Some(SubmitError::NotInFlight { .. })
                ) =>
            {
                Ok(())
            }
            Err(r) => Err(r.error.into()),
        }
    }

    /// Arms the multishot accept unless it is in flight, paused after a failure, or as many
    /// connections wait for a slot as can be served.
    pub(super) fn accept(&mut self) -> Res<()> {
        if self.accepting || self.accept_retry || self.waiting.len() >= self.cfg.max_conns as usize
        {
            return Ok(());
        }
        self.accepting = true;
        let fd = Target::Fd(self.listener.clone());
        self.push(ACCEPT, Op::AcceptMulti { fd })
    }

    /// Installs connection `fd` in a free slot, or has it wait for one.
    pub(super) fn install(&mut self, fd: OwnedFd) -> Res<()> {
        // Bytes the peer does not acknowledge for `send_timeout` (a client that does not read,
        // its window shut) end the connection in the kernel: a zero-copy send, whose buffer
        // comes back only once the peer has taken the bytes, is not held past it either. A
        // socket that refuses the option (not TCP) goes without.
        let ms = u32::try_from(self.cfg.send_timeout.as_millis()).unwrap_or(u32::MAX);
        let _ = nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::TcpUserTimeout, &ms);
        let Some(slot) = self.free.pop() else {
            self.stats.waited += 1;
            self.waiting.push_back(fd);
            if self.waiting.len() >= self.cfg.max_conns as usize
                && self.accepting
                && !self.accept_cancelled
            {
                self.accept_cancelled = true;
                self.cancel(ACCEPT)?;
            }
            return Ok(());
        };
        let slot = slot as usize;
        self.generations[slot] += 1;
        self.conns[slot] = Some(Conn::new(self.generations[slot], self.now));
        // The table takes its own reference; the descriptor closes when the update completes.
        let op = Op::FilesUpdate {
            offset: slot as u32,
            fds: vec![Some(SharedFd::from(fd))],
        };
        self.push(self.token(INSTALL, slot), op)
    }

    pub(super) fn complete(&mut self, c: Completion) -> Res<()> {
        let errno = c.errno();
        match c.token & KIND {
            ACCEPT => {
                if let Output::Fd(fd) = c.output {
                    self.stats.connections += 1;
                    self.install(fd)?;
                }
                if !c.more {
                    self.accepting = false;
                    self.accept_cancelled = false;
                    if errno.is_some_and(|e| e != libc::ECANCELED) {
                        // Out of descriptors, say: try again a little later, not at once.
                        self.stats.accept_retries += 1;
                        self.accept_retry = true;
                        let op = Op::Timeout {
                            after: ACCEPT_RETRY,
                            count: 0,
                        };
                        self.push(RETRY, op)?;
                    }
                    self.accept()?;
                }
            }
            RETRY => {
                self.accept_retry = false;
                self.accept()?;
            }
            INSTALL => {
                let Some((slot, _)) = conn_of(&mut self.conns, c.token) else {
                    return Ok(());
                };
                match c.result {
                    Ok(_) => self.arm_recv(slot)?,
                    // Not installed: nothing to close, the slot is free again.
                    Err(_) => {
                        self.conns[slot] = None;
                        self.slot_freed(slot as u32)?;
                    }
                }
            }
            CLOSE => {
                self.closes_in_flight -= 1;
                self.slot_freed((c.token & SLOT) as u32)?;
            }
            RECV => {
                let Some((slot, conn)) = conn_of(&mut self.conns, c.token) else {
                    return Ok(());
                };
                match (&c.result, c.output) {
                    // A connection given up keeps nothing more: the buffer goes back.
                    _ if conn.abandoned => {}
                    (Ok(_), Output::Pooled(buf)) => {
                        self.stats.recvs += 1;
                        conn.active = self.now;
                        conn.queue.push_back(Chunk::Ring(buf));
                    }
                    // A demoted connection's receive into its own memory.
                    (Ok(n), Output::Buf(mut v)) if *n > 0 => {
                        self.stats.recvs += 1;
                        conn.active = self.now;
                        v.truncate(*n as usize);
                        conn.queue.push_back(Chunk::Own(v));
                    }
                    _ => {}
                }
                if !conn.demoted && conn.held() >= self.cfg.per_conn {
                    conn.demoted = true;
                    self.stats.demoted += 1;
                }
                if conn.demoted {
                    // The ring's buffers go back; the bytes stay, copied.
                    conn.copy_out_of_the_ring();
                }
                if !conn.closing && conn.queued_bytes() > self.cfg.max_held {
                    // It sends and does not read: what it holds is not sent back, and the
                    // send in flight (stuck, most likely) is cancelled.
                    conn.abandon();
                    self.stats.closed_slow += 1;
                }
                if !c.more {
                    conn.receiving = false;
                    match errno {
                        // Every buffer is in flight: re-armed when one comes back.
                        Some(libc::ENOBUFS) => {
                            self.stats.enobufs += 1;
                            conn.starved = true;
                            self.starved.push(slot);
                        }
                        // Cancelled for closing, or on demotion.
                        Some(libc::ECANCELED) if conn.cancelled => {}
                        // End of stream, or a failed connection.
                        Some(_) => conn.closing = true,
                        None if c.result.as_ref().is_ok_and(|n| *n == 0) => conn.closing = true,
                        // The kernel ended the multishot with data: go on.
                        None => {}
                    }
                    conn.cancelled = false;
                }
                if conn.abandoned {
                    self.cancel_send(slot)?;
                }
                self.send_next(slot)?;
                self.resume_recv(slot)?;
            }
            SEND => {
                if c.more {
                    // A zero-copy send's first completion; its buffer comes with the next. The
                    // bytes it moved count as progress now.
                    if let (Ok(1..), Some((_, conn))) =
                        (&c.result, conn_of(&mut self.conns, c.token))
                    {
                        conn.send_stuck = false;
                        (conn.send_progress, conn.active) = (self.now, self.now);
                    }
                    return Ok(());
                }
                let sent = c.result.as_ref().map(|n| *n as usize);
                // What was not sent, copied out of the buffer before it goes back: the rest of
                // a short send, or all of a send cancelled for stalling (its client does not
                // read), which goes on from the copy.
                let unsent = match &sent {
                    Ok(n) => Some(*n),
                    Err(_) if errno == Some(libc::ECANCELED) => Some(0),
                    Err(_) => None,
                };
                let rest = unsent.and_then(|from| {
                    let mut bytes = match &c.output {
                        Output::Pooled(b) | Output::Fixed(FixedBuf::Buf(b)) => b.to_vec(),
                        Output::Buf(v) => v.clone(),
                        _ => return None,
                    };
                    (from < bytes.len()).then(|| bytes.split_off(from))
                });
                // The buffer goes back to the ring here.
                drop(c.output);
                let now = self.now;
                let Some((slot, conn)) = conn_of(&mut self.conns, c.token) else {
                    return Ok(());
                };
                let stalled = std::mem::take(&mut conn.send_stalled);
                conn.send_cancelled = false;
                conn.sending = false;
                conn.send_ring = false;
                conn.send_stuck = true;
                match (sent, rest) {
                    (Ok(n), rest) => {
                        self.stats.bytes += n as u64;
                        if n > 0 {
                            conn.send_stuck = false;
                            conn.send_progress = now;
                            conn.active = now;
                        }
                        // A short send (rare): the rest goes next, as a copy (unless the
                        // connection is given up).
                        if let Some(rest) = rest.filter(|_| !conn.abandoned) {
                            conn.queue.push_front(Chunk::Own(rest));
                        }
                    }
                    (Err(_), Some(rest)) if stalled && !conn.abandoned => {
                        conn.queue.push_front(Chunk::Own(rest));
                    }
                    (Err(_), _) => {
                        // The connection is broken: what it still holds is not sent.
                        conn.abandon();
                    }
                }
                self.send_next(slot)?;
                self.resume_recv(slot)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Cancels the send in flight of the connection in `slot`, once.
    pub(super) fn cancel_send(&mut self, slot: usize) -> Res<()> {
        let token = self.token(SEND, slot);
        match self.conns[slot].as_mut() {
            Some(conn) if conn.sending && !conn.send_cancelled => {
                conn.send_cancelled = true;
                self.cancel(token)
            }
            _ => Ok(()),
        }
    }

    /// `slot` is empty: a waiting connection takes it.
    pub(super) fn slot_freed(&mut self, slot: u32) -> Res<()> {
        self.free.push(slot);
        if let Some(fd) = self.waiting.pop_front() {
            self.install(fd)?;
        }
        self.accept()
    }

    /// The token of `kind` for the connection in `slot`.
    pub(super) fn token(&self, kind: u64, slot: usize) -> u64 {
        kind | (self.generations[slot] & GEN) << GEN_SHIFT | slot as u64
    }

    pub(super) fn arm_recv(&mut self, slot: usize) -> Res<()> {
        let fd = Target::Fixed(slot as u32);
        let Some(conn) = self.conns[slot].as_mut() else {
            return Ok(());
        };
        conn.receiving = true;
        conn.multishot = !conn.demoted;
        let op = match conn.demoted {
            false => Op::RecvMulti {
                fd,
                group: self.group,
                flags: 0,
            },
            true => Op::Recv {
                fd,
                buf: vec![0; self.cfg.buf_size],
                flags: 0,
            },
        };
        self.push(self.token(RECV, slot), op)
    }

    /// Re-arms the receives that found the ring empty, now that it has a buffer.
    pub(super) fn feed_starved(&mut self) -> Res<()> {
        for slot in std::mem::take(&mut self.starved) {
            if let Some(conn) = self.conns[slot].as_mut() {
                conn.starved = false;
                self.resume_recv(slot)?;
            }
        }
        Ok(())
    }

    /// Re-arms the receive of the connection in `slot` if it ended (and the ring had a
    /// buffer; for a demoted connection, while it holds fewer than `per_conn` buffers), or
    /// cancels it if the connection is closing (so that its close is not held up) or was
    /// demoted with its multishot receive still in flight.
    pub(super) fn resume_recv(&mut self, slot: usize) -> Res<()> {
        let token = self.token(RECV, slot);
        let per_conn = self.cfg.per_conn;
        let Some(conn) = self.conns[slot].as_mut() else {
            return Ok(());
        };
        if conn.receiving {
            if (conn.closing || conn.demoted && conn.multishot) && !conn.cancelled {
                conn.cancelled = true;
                self.cancel(token)?;
            }
        } else if !conn.closing && !conn.starved && (!conn.demoted || conn.held() < per_conn) {
            self.arm_recv(slot)?;
        }
        Ok(())
    }

    /// Sends the next queued buffer of the connection in `slot` if none is being sent; closes
    /// it once it is finished, nothing is queued and its receive has ended.
    pub(super) fn send_next(&mut self, slot: usize) -> Res<()> {
        let token = self.token(SEND, slot);
        let Some(conn) = self.conns[slot].as_mut() else {
            return Ok(());
        };
        if conn.sending {
            return Ok(());
        }
        let Some(chunk) = conn.queue.pop_front() else {
            if conn.closing && !conn.receiving {
                // The slot is free once the close is done; completions of this connection
                // still to come are of an earlier generation by then, and ignored.
                self.conns[slot] = None;
                self.starved.retain(|s| *s != slot);
                let fd = CloseTarget::Fixed(slot as u32);
                self.closes_in_flight += 1;
                self.push(self.token(CLOSE, slot), Op::Close { fd })?;
            }
            return Ok(());
        };
        conn.sending = true;
        conn.send_cancelled = false;
        conn.send_ring = matches!(chunk, Chunk::Ring(_));
        conn.send_since = self.now;
        if !conn.send_stuck {
            // The clock for `send_timeout` starts with the first send that has not moved
            // bytes since the last that did.
            conn.send_progress = self.now;
        }
        let fd = Target::Fixed(slot as u32);
        let flags = libc::MSG_NOSIGNAL;
        let op = match chunk {
            Chunk::Ring(buf) if buf.len() >= self.cfg.zero_copy_from => Op::SendZcFixed {
                fd,
                buf: FixedBuf::Buf(buf),
                flags,
            },
            Chunk::Ring(buf) => Op::SendBuf { fd, buf, flags },
            Chunk::Own(buf) => Op::Send { fd, buf, flags },
        };
        self.push(token, op)
    }
}
