//! Reaping completions.

use super::*;

impl Uring {
    /// Completions waiting in the completion queue (reaping them needs no system call).
    pub fn completions_ready(&mut self) -> usize {
        self.cq_len()
    }

    /// Moves up to `max` completions from the CQ into `out`, reading the entries where they
    /// lie, with one head update; returns how many. The caller counts them.
    #[inline]
    pub(crate) fn drain(&mut self, out: &mut Vec<Completion>, max: usize) -> usize {
        let mut cq = self.ring.completion();
        let avail = cq.len().min(max);
        if avail == 0 {
            return 0;
        }
        out.reserve(avail);
        let len = out.len();
        let mut written = 0;
        // Light operations in flight, kept in a register through the loop.
        let mut light = self.book.light;
        // The bounded side first: `zip` pulls from its first iterator first, and an entry
        // pulled from the CQ is consumed.
        for (dst, cqe) in out.spare_capacity_mut()[..avail].iter_mut().zip(&mut cq) {
            let ud = cqe.user_data();
            // Light operations (NOPs and the like) that succeeded are finished here and written
            // straight into the vector: building the value elsewhere and moving it in copied it
            // with wide loads over narrow stores, a store-forwarding stall per completion. (One
            // that looks light while none is in flight is foreign: `complete_slotless`.)
            if ud & (OWNED | LIGHT) == LIGHT && cqe.result() >= 0 && light > 0 {
                light -= 1;
                dst.write(Completion {
                    token: ud & LIGHT_TOKEN_MASK,
                    result: Ok(cqe.result() as u32),
                    output: Output::None,
                    more: false,
                });
            } else {
                self.book.light = light;
                self.book.complete_into(&cqe, dst);
                light = self.book.light;
            }
            written += 1;
        }
        self.book.light = light;
        // SAFETY: the loop initialised the first `written` spare elements, in order.
        unsafe { out.set_len(len + written) };
        // Dropping `cq` publishes the new head.
        written
    }

    /// Enters the kernel to flush overflowed completions or deferred task work, if it says so.
    #[cold]
    pub(crate) fn flush_if_needed(&mut self) -> io::Result<bool> {
        let (overflow, taskrun) = {
            let sq = self.ring.submission();
            (sq.cq_overflow(), sq.taskrun())
        };
        if overflow || taskrun {
            retry_eintr(|| self.ring.submitter().submit_and_wait(0))
                .map_err(|e| self.enter_error(e))?;
            self.stats.enters += 1;
            self.stats.flushes += 1;
            return Ok(true);
        }
        Ok(false)
    }
}

impl Completer for Uring {
    type Completion = Completion;

    fn reap(&mut self) -> Result<Option<Completion>, QueueError> {
        self.book.replenish_all();
        let mut next = self.ring.completion().next();
        if next.is_none() && self.flush_if_needed()? {
            next = self.ring.completion().next();
        }
        Ok(next.map(|cqe| {
            self.stats.completed += 1;
            self.book.complete(&cqe)
        }))
    }

    /// Moves what the CQ holds, up to `max`, into `out`. If the CQ is empty and the kernel
    /// says completions overflowed (or task work is deferred), flushes them first.
    fn reap_into(&mut self, out: &mut Vec<Completion>, max: usize) -> Result<usize, QueueError> {
        self.book.replenish_all();
        let mut n = self.drain(out, max);
        if n == 0 && max > 0 && self.flush_if_needed()? {
            n = self.drain(out, max);
        }
        self.stats.completed += n as u64;
        Ok(n)
    }

    /// Waits for at least one completion. Queued entries are submitted first (in
    /// [`WaitMode::Enter`], in the same system call).
    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), QueueError> {
        self.wait_for(1, timeout)
    }

    fn notify_stats(&self) -> NotifyStats {
        self.notify
    }
}
