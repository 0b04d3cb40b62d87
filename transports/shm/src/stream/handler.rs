//! The server end: a `ByteService` run over a client's stream requests by `StreamHandler`.

use super::*;

/// A service that answers bytes with bytes: what a [`StreamHandler`] runs for each client.
pub trait ByteService {
    /// `input` arrived from the client; append any answer to `out`.
    fn data(&mut self, input: &[u8], out: &mut Vec<u8>);

    /// The client finished writing; append any last answer to `out`. The stream ends (the
    /// client reads end-of-file) once everything in `out` has been delivered.
    fn finish(&mut self, out: &mut Vec<u8>) {
        let _ = out;
    }
}

/// The server side of a stream: runs a [`ByteService`] over a client's stream requests.
#[derive(Debug)]
pub struct StreamHandler<B> {
    service: B,
    /// Answer bytes not yet delivered, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    /// Receive buffers the client lent, oldest first.
    posted: VecDeque<BufHandle>,
    /// Data buffers held back while the answer backlog is over the limit.
    held: VecDeque<BufHandle>,
    fin: bool,
    finished: bool,
    limit: usize,
    /// The data of the buffer being consumed, copied out of the client's memory.
    input: Vec<u8>,
}

/// Answer bytes a [`StreamHandler`] buffers before it stops taking data.
pub const DEFAULT_BACKLOG: usize = 4 << 20;

impl<B: ByteService> StreamHandler<B> {
    /// Serves `service`, holding at most [`DEFAULT_BACKLOG`] undelivered answer bytes before it
    /// stops taking data.
    pub fn new(service: B) -> Self {
        StreamHandler {
            service,
            out: Vec::new(),
            out_pos: 0,
            posted: VecDeque::new(),
            held: VecDeque::new(),
            fin: false,
            finished: false,
            limit: DEFAULT_BACKLOG,
            input: Vec::new(),
        }
    }

    /// The service.
    pub fn service(&self) -> &B {
        &self.service
    }

    fn backlog(&self) -> usize {
        self.out.len() - self.out_pos
    }

    fn consume(&mut self, ctx: &mut Ctx<'_, StreamResp>, handle: BufHandle) {
        match ctx.payload(handle) {
            Ok(bytes) => {
                // Copied out first: the client can write its buffer at any moment, and the
                // byte service gets bytes that hold still.
                self.input.resize(bytes.len(), 0);
                bytes.copy_to(&mut self.input);
                self.service.data(&self.input, &mut self.out);
                ctx.complete(StreamResp {
                    kind: completion::SENT,
                    status: 0,
                    buf: handle,
                });
            }
            Err(_) => ctx.complete(StreamResp {
                kind: completion::ERROR,
                status: status::BAD_HANDLE,
                buf: handle,
            }),
        }
    }

    /// Delivers answer bytes into lent receive buffers, takes held data as the backlog drains,
    /// and ends the stream once the client finished and everything is delivered.
    fn pump(&mut self, ctx: &mut Ctx<'_, StreamResp>) {
        loop {
            while self.backlog() > 0 {
                let Some(handle) = self.posted.pop_front() else {
                    break;
                };
                let n = match ctx.write(handle, &self.out[self.out_pos..]) {
                    Ok(n) => n,
                    Err(_) => {
                        ctx.complete(StreamResp {
                            kind: completion::ERROR,
                            status: status::BAD_HANDLE,
                            buf: handle,
                        });
                        continue;
                    }
                };
                self.out_pos += n;
                ctx.complete(StreamResp {
                    kind: completion::FILLED,
                    status: 0,
                    buf: BufHandle {
                        len: n as u32,
                        ..handle
                    },
                });
            }
            if self.out_pos > 0 && self.out_pos * 2 >= self.out.len() {
                self.out.drain(..self.out_pos);
                self.out_pos = 0;
            }
            match self.held.front() {
                Some(&handle) if self.backlog() < self.limit => {
                    self.held.pop_front();
                    self.consume(ctx, handle);
                }
                _ => break,
            }
        }
        if self.fin && self.held.is_empty() && !self.finished {
            self.service.finish(&mut self.out);
            self.finished = true;
            return self.pump(ctx);
        }
        if self.finished && self.backlog() == 0 {
            while let Some(handle) = self.posted.pop_front() {
                ctx.complete(StreamResp {
                    kind: completion::EOF,
                    status: 0,
                    buf: BufHandle { len: 0, ..handle },
                });
            }
        }
    }
}

impl<B: ByteService> Handler<StreamReq, StreamResp> for StreamHandler<B> {
    fn request(&mut self, ctx: &mut Ctx<'_, StreamResp>, req: StreamReq) {
        match req.kind {
            request::DATA if self.fin => ctx.complete(StreamResp {
                kind: completion::ERROR,
                status: status::AFTER_FIN,
                buf: req.buf,
            }),
            // A client cannot have more buffers lent than its pool holds: beyond that, its
            // requests are refused rather than queued without bound.
            request::DATA | request::RECV
                if self.posted.len() + self.held.len() >= ctx.memory().pool().count as usize =>
            {
                ctx.complete(StreamResp {
                    kind: completion::ERROR,
                    status: status::TOO_MANY,
                    buf: req.buf,
                })
            }
            request::DATA => {
                if self.backlog() >= self.limit || !self.held.is_empty() {
                    self.held.push_back(req.buf);
                } else {
                    self.consume(ctx, req.buf);
                }
            }
            request::RECV => self.posted.push_back(req.buf),
            request::FIN => self.fin = true,
            _ => ctx.complete(StreamResp {
                kind: completion::ERROR,
                status: status::BAD_KIND,
                buf: req.buf,
            }),
        }
        self.pump(ctx);
    }
}
