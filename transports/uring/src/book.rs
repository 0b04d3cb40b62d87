//! The bookkeeping of operations in flight: slots that own what the kernel may still touch.

use super::*;

/// One in-flight operation: what the kernel may still read or write.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) token: u64,
    pub(crate) op: Option<Op>,
    pub(crate) aux: op::Aux,
    /// The registered region ([`RegionKey`] index) a fixed operation uses, or `NO_REGION`.
    pub(crate) region: u32,
    /// The seal in the `user_data` of the operation using the slot now (see [`Book::seal`]).
    pub(crate) seal: u32,
}

/// The operations in flight that own memory, and what completions have told about them.
#[derive(Debug)]
pub(crate) struct Book {
    pub(crate) slots: Vec<Slot>,
    pub(crate) free: Vec<u32>,
    /// Fixed operations in flight per registered region, by key.
    pub(crate) fixed_in_flight: Vec<u32>,
    /// Completions reaped that were not for this ring's operations (messages from other
    /// rings, unknown slots): counted in `stats.completed`, never in flight here.
    pub(crate) foreign: u64,
    /// Completions that left their operation in flight (`IORING_CQE_F_MORE`).
    pub(crate) continued: u64,
    /// Light operations in flight: their `user_data` carries no seal, so a completion that
    /// looks light while none is in flight is foreign (another ring's `MSG_RING` can forge
    /// one), and cannot take an owned operation's place in the count of those in flight.
    pub(crate) light: u64,
    /// The registered provided-buffer rings.
    pub(crate) groups: Vec<bufring::Group>,
    /// The registered send rings.
    pub(crate) send_groups: Vec<bufring::SendGroup>,
    /// This ring's secret part of every seal.
    pub(crate) salt: u32,
    /// Slots taken so far: the changing part of every seal.
    pub(crate) taken: u32,
}

/// Bits of a seal: `user_data` bits 32..62 (63 and 62 mark owned and light operations).
pub(crate) const SEAL_MASK: u32 = (1 << 30) - 1;

impl Default for Book {
    fn default() -> Self {
        use std::hash::BuildHasher;
        Book {
            slots: Vec::new(),
            free: Vec::new(),
            fixed_in_flight: Vec::new(),
            foreign: 0,
            continued: 0,
            light: 0,
            groups: Vec::new(),
            send_groups: Vec::new(),
            // A secret per ring, from the process's random hashing keys.
            salt: std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64) as u32,
            taken: 0,
        }
    }
}

impl Book {
    /// The `user_data` of slot `key` holding an operation sealed with `seal`.
    ///
    /// Another ring can post a completion into this one with any `user_data` it likes
    /// (`IORING_OP_MSG_RING`). A `user_data` of only the owned bit and a slot number would let it
    /// complete an operation still in the kernel, handing its buffer back while the kernel may
    /// still write it. So every slot's `user_data` also carries a seal, a 30-bit value that
    /// changes with every operation and includes a per-ring secret; a completion whose seal is
    /// not the slot's is foreign (counted, never matched).
    #[inline(always)]
    pub(crate) fn user_data(key: usize, seal: u32) -> u64 {
        OWNED | (u64::from(seal) << 32) | key as u64
    }

    /// A free slot for an operation that owns memory.
    #[inline]
    pub(crate) fn take_slot(&mut self) -> (usize, u32) {
        let key = match self.free.pop() {
            Some(k) => k as usize,
            None => {
                self.slots.push(Slot {
                    token: 0,
                    op: None,
                    aux: op::Aux::None,
                    region: register::NO_REGION,
                    seal: 0,
                });
                self.slots.len() - 1
            }
        };
        self.taken = self.taken.wrapping_add(1);
        let seal = (self.taken.wrapping_mul(0x9e37_79b9) ^ self.salt) & SEAL_MASK;
        self.slots[key].seal = seal;
        (key, seal)
    }

    /// Turns a reaped completion entry into a [`Completion`], releasing its slot. The caller
    /// counts it in `stats.completed`.
    pub(crate) fn complete(&mut self, cqe: &cqueue::Entry) -> Completion {
        let mut done = MaybeUninit::uninit();
        self.complete_into(cqe, &mut done);
        // SAFETY: `complete_into` initialises `done` on every path.
        unsafe { done.assume_init() }
    }

    /// [`Book::complete`], written straight into `dst` (building the value and moving it in
    /// copied it through the stack). A `user_data` that names no operation of this ring (a
    /// message from another ring, or an empty slot) is counted in `foreign`.
    #[inline]
    pub(crate) fn complete_into(&mut self, cqe: &cqueue::Entry, dst: &mut MaybeUninit<Completion>) {
        let (ud, res) = (cqe.user_data(), cqe.result());
        if ud & OWNED == 0 {
            dst.write(self.complete_slotless(ud, res));
            return;
        }
        let key = (ud & u64::from(u32::MAX)) as usize;
        let seal = (ud >> 32) as u32 & SEAL_MASK;
        if cqueue::more(cqe.flags()) {
            dst.write(self.complete_more(key, seal, ud, res, cqe.flags()));
            return;
        }
        let Some(slot) = self.slots.get_mut(key).filter(|s| s.seal == seal) else {
            dst.write(self.unknown_slot(ud, key));
            return;
        };
        let (token, region) = (slot.token, slot.region);
        if region == register::NO_REGION && matches!(slot.aux, op::Aux::None) {
            if let Some((buf, name, too_long)) = op::take_plain_buf(&mut slot.op, res) {
                let result = match res {
                    0.. if !too_long => Ok(res as u32),
                    0.. => Err(op::too_long(name, token, res, buf.len())),
                    _ => Err(op::plain_failed(name, token, res)),
                };
                self.free.push(key as u32);
                dst.write(Completion {
                    token,
                    result,
                    output: Output::Buf(buf),
                    more: false,
                });
                return;
            }
        }
        let Some(op) = slot.op.take() else {
            dst.write(self.unknown_slot(ud, key));
            return;
        };
        let mut aux = std::mem::take(&mut slot.aux);
        self.free.push(key as u32);
        if region != register::NO_REGION {
            self.release_region(key, region);
        }
        let mut result = match (res, &aux) {
            // A zero-copy send's notification: the result is the send's, failure included.
            (0, op::Aux::Sent(n)) if cqueue::notif(cqe.flags()) => Ok(*n),
            (0, op::Aux::SendFailed(e)) if cqueue::notif(cqe.flags()) => failed(&op, token, *e),
            (0.., _) => match op::most_bytes(&op) {
                Some(most) if res as usize > most => Err(op::too_long(op.name(), token, res, most)),
                _ => Ok(res as u32),
            },
            _ => failed(&op, token, res),
        };
        let output = match op.buf_group() {
            None => op::output(op, &mut aux, res),
            Some(group) if matches!(op, Op::SendBundle { .. }) => {
                self.sent(group, cqe.flags(), res, false, &mut result)
            }
            Some(group) => {
                let bundle = matches!(op, Op::RecvMultiBundle { .. });
                self.selected(group, bundle, cqe.flags(), res, &mut result)
            }
        };
        op::drop_aux(aux);
        dst.write(Completion {
            token,
            result,
            output,
            more: false,
        });
    }

    /// A completion that leaves its multishot operation armed: the slot stays, and what the
    /// completion carries (a descriptor, a picked buffer) comes out on its own.
    #[inline(never)]
    fn complete_more(
        &mut self,
        key: usize,
        seal: u32,
        ud: u64,
        res: i32,
        flags: u32,
    ) -> Completion {
        let Some(slot) = self
            .slots
            .get_mut(key)
            .filter(|s| s.seal == seal && s.op.is_some())
        else {
            return self.unknown_slot(ud, key);
        };
        let token = slot.token;
        let op = slot.op.as_ref().expect("checked above");
        if matches!(op, Op::SendZc { .. } | Op::SendZcFixed { .. }) {
            slot.aux = match res {
                0.. => op::Aux::Sent(res as u32),
                _ => op::Aux::SendFailed(res),
            };
        }
        let mut result = match res {
            0.. => Ok(res as u32),
            _ => failed(op, token, res),
        };
        let output = match op {
            Op::AcceptMulti { .. } if res >= 0 => {
                // SAFETY: the kernel installed descriptor `res` in this process for this
                // completion of the accept and nothing else knows of it.
                Output::Fd(unsafe { std::os::fd::FromRawFd::from_raw_fd(res) })
            }
            Op::AcceptMultiDirect { .. } if res >= 0 => Output::Slot(res as u32),
            Op::SendBundle { group, .. } => {
                let group = *group;
                self.sent(group, flags, res, true, &mut result)
            }
            _ => match op.buf_group() {
                Some(group) => {
                    let bundle = matches!(op, Op::RecvMultiBundle { .. });
                    self.selected(group, bundle, flags, res, &mut result)
                }
                None => Output::None,
            },
        };
        self.continued += 1;
        Completion {
            token,
            result,
            output,
            more: true,
        }
    }

    /// What a completion of an operation on `group` carries (a buffer, a bundle, a chunk),
    /// taken back from the kernel; a refused buffer id turns `result` into the error saying
    /// why.
    fn selected(
        &mut self,
        group: BufGroup,
        bundle: bool,
        flags: u32,
        res: i32,
        result: &mut io::Result<u32>,
    ) -> Output {
        let taken = match self.groups.iter_mut().find(|g| g.id == group.id()) {
            Some(g) => g.take(flags, res, bundle),
            // Unregistered while the operation was in flight: refused at unregistration, so
            // only a forged completion gets here.
            None if cqueue::buffer_select(flags).is_some() => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "completion names a buffer of group {}, which is not registered",
                    group.id()
                ),
            )),
            None => Ok(Output::None),
        };
        taken.unwrap_or_else(|e| {
            *result = Err(e);
            Output::None
        })
    }

    /// The buffers a send bundle's completion covered, taken off its send ring's queue; a
    /// refused report turns `result` into the error saying why.
    #[cold]
    fn sent(
        &mut self,
        group: BufGroup,
        flags: u32,
        res: i32,
        more: bool,
        result: &mut io::Result<u32>,
    ) -> Output {
        let taken = match self.send_groups.iter_mut().find(|g| g.id == group.id()) {
            Some(g) => g.take(flags, res, more),
            // Unregistered with the operation in flight: refused at unregistration.
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "send bundle completion names group {}, which is not a send ring",
                    group.id()
                ),
            )),
        };
        match taken {
            Ok(bufs) => Output::Bundle(bufs),
            Err(e) => {
                *result = Err(e);
                Output::None
            }
        }
    }

    /// A fixed operation on the region under key `region` completed.
    #[cold]
    fn release_region(&mut self, slot: usize, region: u32) {
        self.slots[slot].region = register::NO_REGION;
        if let Some(n) = self.fixed_in_flight.get_mut(region as usize) {
            *n = n.saturating_sub(1);
        }
    }

    /// The completion of a light operation (see `light_kind`) or of a message from another
    /// ring.
    #[cold]
    pub(crate) fn complete_slotless(&mut self, ud: u64, res: i32) -> Completion {
        if ud & LIGHT != 0 && self.light > 0 {
            self.light -= 1;
            let token = ud & LIGHT_TOKEN_MASK;
            let kind = ((ud & !LIGHT) >> LIGHT_TOKEN_BITS) as usize;
            let op = LIGHT_OPS.get(kind).copied().unwrap_or("unknown");
            return Completion {
                token,
                result: if res < 0 {
                    Err(OpError {
                        op,
                        token,
                        source: io::Error::from_raw_os_error(-res),
                    }
                    .into_io())
                } else {
                    Ok(res as u32)
                },
                output: Output::None,
                more: false,
            };
        }
        self.foreign += 1;
        Completion {
            token: ud,
            result: if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                Ok(res as u32)
            },
            output: Output::Message,
            more: false,
        }
    }

    /// The completion for a slot with nothing in flight: the kernel (or whoever wrote the
    /// `user_data`) named an operation this ring does not have.
    #[cold]
    pub(crate) fn unknown_slot(&mut self, ud: u64, key: usize) -> Completion {
        self.foreign += 1;
        Completion {
            token: ud,
            result: Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("completion for unknown operation slot {key}"),
            )),
            output: Output::None,
            more: false,
        }
    }
}

/// The result of an operation the kernel finished with `res < 0`.
#[cold]
pub(crate) fn failed(op: &Op, token: u64, res: i32) -> io::Result<u32> {
    match op {
        // A timer that fires has done its job.
        Op::Timeout { .. } if res == -libc::ETIME => Ok(0),
        _ => Err(OpError {
            op: op.name(),
            token,
            source: io::Error::from_raw_os_error(-res),
        }
        .into_io()),
    }
}
