//! A connection's state, and the chunks of bytes it holds.

use super::*;

pub(super) struct Conn {
    /// This connection's generation of its slot: a completion of an earlier connection in
    /// the same slot is told apart by it.
    pub(super) generation: u64,
    /// Received data waiting for its turn to be sent back.
    pub(super) queue: VecDeque<Chunk>,
    pub(super) sending: bool,
    /// The send in flight is from a ring buffer (which it keeps until it completes) ...
    pub(super) send_ring: bool,
    /// ... and it was cancelled for stalling: its bytes go on from a copy.
    pub(super) send_stalled: bool,
    /// A cancel of the send in flight was asked for (it stalled, or the connection is given
    /// up).
    pub(super) send_cancelled: bool,
    /// When the send in flight was made, and when a send last moved bytes (or the connection
    /// began to send after it had nothing to send).
    pub(super) send_since: Instant,
    pub(super) send_progress: Instant,
    /// The last send ended without moving a byte (cancelled for stalling, say).
    pub(super) send_stuck: bool,
    /// A receive is in flight ...
    pub(super) receiving: bool,
    /// ... and it is the multishot one.
    pub(super) multishot: bool,
    /// Its cancel was asked for (the connection is closing, or was demoted).
    pub(super) cancelled: bool,
    /// It held `per_conn` buffers: it receives into memory of its own now.
    pub(super) demoted: bool,
    /// Its last receive found the ring empty: re-armed when a buffer comes back.
    pub(super) starved: bool,
    /// The peer finished (or the connection failed): close once the queue is sent.
    pub(super) closing: bool,
    /// When it last received bytes or had a send move some.
    pub(super) active: Instant,
    /// It is closed for its behaviour: what it held was given up.
    pub(super) abandoned: bool,
}

impl Conn {
    pub(super) fn new(generation: u64, now: Instant) -> Self {
        Conn {
            generation,
            queue: VecDeque::new(),
            sending: false,
            send_ring: false,
            send_stalled: false,
            send_cancelled: false,
            send_since: now,
            send_progress: now,
            send_stuck: false,
            receiving: false,
            multishot: false,
            cancelled: false,
            demoted: false,
            starved: false,
            closing: false,
            active: now,
            abandoned: false,
        }
    }

    /// The chunks it holds: queued, and the one being sent.
    pub(super) fn held(&self) -> usize {
        self.queue.len() + usize::from(self.sending)
    }

    /// The bytes queued to be sent back.
    pub(super) fn queued_bytes(&self) -> usize {
        self.queue.iter().map(Chunk::len).sum()
    }

    /// Copies what it holds in the ring's buffers into memory of its own, giving the buffers
    /// back.
    pub(super) fn copy_out_of_the_ring(&mut self) {
        for chunk in self.queue.iter_mut() {
            if let Chunk::Ring(b) = chunk {
                *chunk = Chunk::Own(b.to_vec());
            }
        }
    }

    /// Gives up what it has not sent (a connection closed for its behaviour): the queue goes,
    /// and it closes once its send and receive in flight are done.
    pub(super) fn abandon(&mut self) {
        self.closing = true;
        self.abandoned = true;
        self.queue.clear();
    }
}

/// Received bytes: a buffer of the ring, or memory of the connection's own.
pub(super) enum Chunk {
    Ring(Buf),
    Own(Vec<u8>),
}

impl Chunk {
    pub(super) fn len(&self) -> usize {
        match self {
            Chunk::Ring(b) => b.len(),
            Chunk::Own(v) => v.len(),
        }
    }
}

/// The connection in a token's slot if the token is of its generation (else the completion is
/// of an earlier connection in that slot, whose buffer, if any, just goes back to the ring).
pub(super) fn conn_of(conns: &mut [Option<Conn>], token: u64) -> Option<(usize, &mut Conn)> {
    let slot = (token & SLOT) as usize;
    let generation = (token >> GEN_SHIFT) & GEN;
    let conn = conns.get_mut(slot)?.as_mut()?;
    (conn.generation & GEN == generation).then_some((slot, conn))
}
