//! The limits on what one connection may hold, checked every [`SWEEP`]: no client, however it
//! behaves, keeps ring buffers, memory or a slot that others need for as long as it likes.

use super::*;

impl Server {
    /// Cancels sends from ring buffers that stalled (`send_stall`), closes connections whose
    /// sends made no progress for `send_timeout`, and, while connections wait for a slot,
    /// closes those idle for `idle_evict`.
    pub(super) fn sweep(&mut self) -> Res<()> {
        let (now, cfg) = (self.now, self.cfg);
        // As many idle connections are closed as connections wait for a slot, less those
        // closing already (an eviction of an earlier sweep whose close is under way among them).
        let closing = self.conns.iter().flatten().filter(|c| c.closing).count();
        let mut evict = self
            .waiting
            .len()
            .saturating_sub(closing + self.closes_in_flight);
        for slot in 0..self.conns.len() {
            let Some(conn) = self.conns[slot].as_mut() else {
                continue;
            };
            let mut cancel_send = false;
            if conn.sending
                && !conn.abandoned
                && now.duration_since(conn.send_progress) > cfg.send_timeout
            {
                // It does not read what it is sent: it is closed.
                conn.abandon();
                self.stats.closed_slow += 1;
                cancel_send = true;
            } else if conn.abandoned && conn.sending && !conn.send_cancelled {
                // Given up (past `max_held`, say) with a send in flight: it goes.
                cancel_send = true;
            } else if conn.sending
                && conn.send_ring
                && !conn.send_stalled
                && !conn.abandoned
                && now.duration_since(conn.send_since) > cfg.send_stall
            {
                // Its client does not read: the connection gives back every ring buffer it
                // holds (as a demotion does: what it holds is copied, and it receives into
                // memory of its own from now on), the one being sent too, whose bytes go on
                // from a copy once the cancelled send completes.
                conn.send_stalled = true;
                self.stats.stalled_sends += 1;
                cancel_send = true;
                if !conn.demoted {
                    conn.demoted = true;
                    self.stats.demoted += 1;
                }
                conn.copy_out_of_the_ring();
            } else if evict > 0
                && !conn.closing
                && !conn.sending
                && conn.queue.is_empty()
                && now.duration_since(conn.active) > cfg.idle_evict
            {
                conn.closing = true;
                self.stats.evicted_idle += 1;
                evict -= 1;
            } else {
                continue;
            }
            if cancel_send {
                self.cancel_send(slot)?;
            }
            // A closing connection's receive is cancelled, and it closes once nothing is in
            // flight.
            self.resume_recv(slot)?;
            self.send_next(slot)?;
        }
        Ok(())
    }
}
