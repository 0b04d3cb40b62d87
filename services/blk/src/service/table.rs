//! The service's operations: slots reused through a free list (an operation's slot number is
//! its token in the ring), and the backlog of those waiting for room in the ring: one queue
//! per client, in order, and the clients taken in turn, one operation each, so that a client
//! with thousands queued delays another's next operation by one, not by thousands.
//!
//! A slot can be emptied while its operation waits in the backlog (its client left, so it is
//! answered without reaching the kernel) and then reused by another operation at once. Each
//! backlog entry therefore names the slot's generation as well as its number: an entry whose
//! generation is not the slot's any more is stale and skipped, so the reused slot is offered
//! to the ring once, through its own entry. (Before, the stale entry offered the new
//! operation a second time, while the first was in flight.)
//!
//! A client whose turn comes while it holds its share of the ring is passed over
//! ([`pass_turn`](OpTable::pass_turn)); its operations keep their order.

use std::collections::{HashMap, VecDeque};

#[derive(Debug)]
struct Slot<T> {
    /// Counts the slot's uses: bumped each time it is emptied.
    generation: u32,
    op: Option<T>,
}

/// Operations by token, and the backlog of those not yet offered to the ring.
#[derive(Debug)]
pub(super) struct OpTable<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    /// Each client's waiting operations, (token, generation), oldest first.
    queues: HashMap<u64, VecDeque<(u32, u32)>>,
    /// Clients with a non-empty queue, the one whose turn it is first.
    turns: VecDeque<u64>,
    live: usize,
}

impl<T> Default for OpTable<T> {
    fn default() -> Self {
        OpTable {
            slots: Vec::new(),
            free: Vec::new(),
            queues: HashMap::new(),
            turns: VecDeque::new(),
            live: 0,
        }
    }
}

impl<T> OpTable<T> {
    /// Stores `client`'s `op` in a free slot, at the back of the client's queue; returns its
    /// token.
    pub(super) fn insert(&mut self, client: u64, op: T) -> u32 {
        let token = match self.free.pop() {
            Some(t) => t,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    op: None,
                });
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 operations")
            }
        };
        let slot = &mut self.slots[token as usize];
        debug_assert!(slot.op.is_none(), "a free slot is empty");
        slot.op = Some(op);
        let generation = slot.generation;
        let queue = self.queues.entry(client).or_default();
        if queue.is_empty() {
            self.turns.push_back(client);
        }
        queue.push_back((token, generation));
        self.live += 1;
        token
    }

    /// The token of the next operation to offer the ring: the oldest of the client whose turn
    /// it is, dropping stale entries (and clients left with none) on the way.
    pub(super) fn front(&mut self) -> Option<u32> {
        while let Some(&client) = self.turns.front() {
            let queue = self
                .queues
                .get_mut(&client)
                .expect("a client in turn has a queue");
            while let Some(&(token, generation)) = queue.front() {
                let slot = &self.slots[token as usize];
                if slot.generation == generation && slot.op.is_some() {
                    return Some(token);
                }
                queue.pop_front();
            }
            self.queues.remove(&client);
            self.turns.pop_front();
        }
        None
    }

    /// Passes the turn of the client [`front`](Self::front) named to the next client, its
    /// operations left as they are (it is at the back of the turns now).
    pub(super) fn pass_turn(&mut self) {
        if let Some(client) = self.turns.pop_front() {
            self.turns.push_back(client);
        }
    }

    /// Clients with operations waiting (some may turn out to hold only stale entries).
    pub(super) fn waiting_clients(&self) -> usize {
        self.turns.len()
    }

    /// Whether a client other than `client` has operations waiting.
    pub(super) fn others_waiting(&self, client: u64) -> bool {
        self.turns.len() > usize::from(self.queues.contains_key(&client))
    }

    /// Drops `client`'s queue (its operations have been taken: it left), so that its stale
    /// entries do not count as a client waiting.
    pub(super) fn forget(&mut self, client: u64) {
        if self.queues.remove(&client).is_some() {
            self.turns.retain(|&c| c != client);
        }
    }

    /// Removes the entry [`front`](Self::front) named (`token`), and passes the turn to the next
    /// client.
    pub(super) fn pop_front(&mut self, token: u32) {
        let Some(client) = self.turns.pop_front() else {
            return;
        };
        let queue = self
            .queues
            .get_mut(&client)
            .expect("a client in turn has a queue");
        let popped = queue.pop_front();
        debug_assert_eq!(popped.map(|(t, _)| t), Some(token), "pop_front after front");
        if queue.is_empty() {
            self.queues.remove(&client);
        } else {
            self.turns.push_back(client);
        }
    }

    /// The operation in slot `token`.
    pub(super) fn get(&self, token: u32) -> Option<&T> {
        self.slots.get(token as usize)?.op.as_ref()
    }

    /// The operation in slot `token`, to change.
    pub(super) fn get_mut(&mut self, token: u32) -> Option<&mut T> {
        self.slots.get_mut(token as usize)?.op.as_mut()
    }

    /// Empties slot `token` and frees it for reuse; any backlog entry for it goes stale.
    pub(super) fn take(&mut self, token: u32) -> Option<T> {
        let slot = self.slots.get_mut(token as usize)?;
        let op = slot.op.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(token);
        self.live -= 1;
        Some(op)
    }

    /// Tokens of every slot in use, lowest first.
    pub(super) fn tokens(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.slots.len() as u32).filter(|&t| self.slots[t as usize].op.is_some())
    }

    /// Operations held (waiting or in the ring).
    pub(super) fn len(&self) -> usize {
        self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drains the backlog as the service's pump does: the token at the front, then the next.
    fn drain(t: &mut OpTable<&'static str>) -> Vec<(u32, &'static str)> {
        let mut out = Vec::new();
        while let Some(token) = t.front() {
            out.push((token, *t.get(token).unwrap()));
            t.pop_front(token);
        }
        out
    }

    #[test]
    fn one_clients_backlog_is_first_in_first_out() {
        let mut t = OpTable::default();
        let (a, b, c) = (t.insert(1, "a"), t.insert(1, "b"), t.insert(1, "c"));
        assert_eq!(drain(&mut t), vec![(a, "a"), (b, "b"), (c, "c")]);
        assert_eq!(t.len(), 3);
    }

    /// A client with many operations queued delays another's next one by one operation.
    #[test]
    fn clients_take_turns() {
        let mut t = OpTable::default();
        for _ in 0..100 {
            t.insert(1, "flood");
        }
        t.insert(2, "b1");
        t.insert(2, "b2");
        t.insert(3, "c1");
        let order: Vec<&str> = drain(&mut t).into_iter().map(|(_, op)| op).collect();
        assert_eq!(&order[..6], &["flood", "b1", "c1", "flood", "b2", "flood"]);
        assert!(order[6..].iter().all(|&op| op == "flood"));
        assert_eq!(order.len(), 103);
        // A client whose queue ran dry takes its turn at the back when it comes again.
        t.insert(1, "x");
        t.insert(2, "y");
        assert_eq!(
            drain(&mut t)
                .into_iter()
                .map(|(_, op)| op)
                .collect::<Vec<_>>(),
            ["x", "y"]
        );
    }

    /// The bug this table fixes: an operation answered while waiting, its slot reused at once
    /// by another operation, must not offer the new one twice (once through the stale entry).
    #[test]
    fn a_slot_emptied_while_waiting_and_reused_is_offered_once() {
        let mut t = OpTable::default();
        let a = t.insert(1, "a");
        let b = t.insert(2, "b");
        let c = t.insert(1, "c");
        // b's client leaves: b is answered without reaching the ring.
        assert_eq!(t.take(b), Some("b"));
        // Client 1's next operation takes b's slot at once.
        let d = t.insert(1, "d");
        assert_eq!(d, b, "the freed slot is reused");
        assert_eq!(drain(&mut t), vec![(a, "a"), (c, "c"), (d, "d")]);
        assert_eq!(t.len(), 3);
    }

    /// A client passed over keeps its operations, in order, and its place comes round again.
    #[test]
    fn a_client_passed_over_keeps_its_order() {
        let mut t = OpTable::default();
        let a1 = t.insert(1, "a1");
        let a2 = t.insert(1, "a2");
        let b1 = t.insert(2, "b1");
        assert_eq!(t.waiting_clients(), 2);
        assert_eq!(t.front(), Some(a1));
        t.pass_turn();
        assert_eq!(t.front(), Some(b1), "the next client's turn");
        t.pop_front(b1);
        assert_eq!(
            t.front(),
            Some(a1),
            "the passed client's oldest, still first"
        );
        t.pass_turn();
        assert_eq!(t.front(), Some(a1), "the only client waiting");
        assert!(!t.others_waiting(1));
        assert_eq!(drain(&mut t), vec![(a1, "a1"), (a2, "a2")]);
        assert_eq!(t.waiting_clients(), 0);
    }

    #[test]
    fn a_forgotten_client_no_longer_waits() {
        let mut t = OpTable::default();
        let a = t.insert(1, "a");
        let b = t.insert(2, "b");
        assert!(t.others_waiting(1) && t.others_waiting(2) && t.others_waiting(3));
        assert_eq!(t.take(b), Some("b"));
        t.forget(2);
        assert_eq!(t.waiting_clients(), 1);
        assert!(!t.others_waiting(1));
        assert_eq!(drain(&mut t), vec![(a, "a")]);
    }

    #[test]
    fn emptied_slots_leave_the_backlog_and_come_back_free() {
        let mut t = OpTable::default();
        let tokens: Vec<u32> = (0..8).map(|_| t.insert(1, "x")).collect();
        for &k in &tokens[2..6] {
            assert!(t.take(k).is_some());
        }
        assert_eq!(t.take(tokens[2]), None, "an empty slot is not taken twice");
        assert_eq!(t.tokens().collect::<Vec<_>>(), vec![0, 1, 6, 7]);
        let again: Vec<u32> = (0..4).map(|_| t.insert(1, "y")).collect();
        let mut sorted = again.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![2, 3, 4, 5], "no new slot while one is free");
        let order: Vec<&str> = drain(&mut t).into_iter().map(|(_, op)| op).collect();
        assert_eq!(order, vec!["x", "x", "x", "x", "y", "y", "y", "y"]);
    }

    #[test]
    fn a_slot_taken_after_leaving_the_backlog_is_not_offered_again() {
        let mut t = OpTable::default();
        let a = t.insert(1, "a");
        assert_eq!(t.front(), Some(a));
        t.pop_front(a);
        // In the ring, then completed.
        assert_eq!(t.take(a), Some("a"));
        let b = t.insert(1, "b");
        assert_eq!(drain(&mut t), vec![(b, "b")]);
        assert_eq!(t.front(), None);
    }
}
