//! The application's side of the XSK ring protocol, over the kernel's index and flags words:
//! the few lines whose orderings matter. This file names nothing but the planes' sync shim, so
//! that the loom model (`planes/tests/loom/xsk.rs`) compiles this very code over loom's atomics
//! and fences (`#[path]`).

use subring_planes::sync::{fence, AtomicU32, Ordering};

/// `XDP_RING_NEED_WAKEUP`: the kernel asks to be woken before it looks at the ring again.
pub(crate) const NEED_WAKEUP: u32 = 1;

/// Publishes the entries below `prod` (written before this call).
#[inline(always)]
pub(crate) fn publish(producer: &AtomicU32, prod: u32) {
    // SYNC POINT (xsk-prod): Release pairs with the kernel's acquire of the producer index
    // (`xskq_cons_peek`/`__xskq_cons_peek`): the entries are written before it sees them.
    producer.store(prod, Ordering::Release);
}

/// Whether the kernel asks to be woken, read after publishing. The SeqCst fence orders the
/// producer store above before this read; the kernel sets the flag and then looks at the ring
/// again behind its own barrier, so one of the two sides sees the other (no lost wake-up).
/// `NO_FENCE` is the loom negative control's breakage.
#[inline(always)]
pub(crate) fn needs_wakeup<const NO_FENCE: bool>(flags: &AtomicU32) -> bool {
    if !NO_FENCE {
        // SYNC POINT (xsk-wakeup): between publishing and reading the flag.
        fence(Ordering::SeqCst);
    }
    flags.load(Ordering::Relaxed) & NEED_WAKEUP != 0
}

/// Entries free to produce, given this side's next index `prod` and a ring of `entries`; the
/// consumer index read if it is impossible (more entries in use than the ring holds).
#[inline(always)]
pub(crate) fn free(consumer: &AtomicU32, prod: u32, entries: u32) -> Result<u32, u32> {
    // SYNC POINT (xsk-cons): Acquire pairs with the kernel's release of the consumer index:
    // the entries it consumed may be written again.
    let cons = consumer.load(Ordering::Acquire);
    let used = prod.wrapping_sub(cons);
    if used > entries {
        return Err(cons);
    }
    Ok(entries - used)
}

/// Entries ready to consume, given this side's next index `cons`; the producer index read if
/// it is impossible (more ready than the ring holds).
#[inline(always)]
pub(crate) fn ready(producer: &AtomicU32, cons: u32, entries: u32) -> Result<u32, u32> {
    // SYNC POINT (xsk-prod): Acquire pairs with the kernel's release of the producer index:
    // the entries below it are written.
    let prod = producer.load(Ordering::Acquire);
    let n = prod.wrapping_sub(cons);
    if n > entries {
        return Err(prod);
    }
    Ok(n)
}

/// Gives the entries below `cons` back to the kernel (read before this call).
#[inline(always)]
pub(crate) fn release(consumer: &AtomicU32, cons: u32) {
    // SYNC POINT (xsk-cons): Release pairs with the kernel's acquire of the consumer index:
    // the entries are read before it may write them again.
    consumer.store(cons, Ordering::Release);
}
