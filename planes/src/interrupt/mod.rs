//! The interrupt plane: events back to a waiting side, with suppression so that a busy side
//! costs no system calls.
//!
//! # The sleep/wake protocol
//! A [`WakeWord`] sits in memory both sides see (in a ring's header, for rings). The waiting
//! side announces that it is about to sleep *before* it blocks, re-checks its condition, and only
//! then blocks; the notifying side, *after* publishing its data, looks at the word and makes the
//! wake-up system call only if the waiter announced sleep. This is io_uring's
//! `IORING_SQ_NEED_WAKEUP` and virtio's event suppression.
//!
//! It is the store→load (Dekker) pattern, so both sides need a SeqCst fence between their store
//! and their load:
//! ```text
//! waiter:    word = SLEEPING;  fence(SeqCst);  if ready() { return }  block()
//! notifier:  publish(data);    fence(SeqCst);  if word == SLEEPING { word = AWAKE; wake() }
//! ```
//! Whichever fence comes second in the single total order of SeqCst fences, that side sees the
//! other's store: either the waiter sees the data and does not block, or the notifier sees
//! `SLEEPING` and wakes it. Without the fences both loads may read stale values (store
//! buffering) and the wake-up is lost; the loom model `lost_wakeup_without_recheck` and friends
//! in `planes/tests/loom/` check this protocol and show the broken variants fail.
//!
//! A notification is a hint: it may be spurious or coalesced, and only means "look again".
//!
//! # Notifiers
//! - [`EventFdNotifier`]: blocks on an eventfd (in an edge-triggered `epoll_wait`, one system
//!   call per sleep); implements `AsFd` so the waiter can sit in epoll, mio or tokio's
//!   `AsyncFd` instead. The same wait can watch a socket for hang-up
//!   ([`EventFdSignal::watch_hangup`]): a peer's death then ends it with
//!   [`WaitError::PeerHungUp`], so it needs no timeout to notice one.
//! - [`FutexNotifier`]: blocks in `futex(2)` on the wake word itself; works across processes
//!   with no fd at all.
//! - [`SpinNotifier`]: never sleeps, never makes a system call.
//! - [`WaitAny`]: the sleeping side over many words at once (`futex_waitv`), for a service that
//!   sleeps on all its clients' rings without an fd per client; [`SleepSet`] adds an
//!   [`Alarm`] with which another thread of the service wakes it.
//! - Adaptive: a [`SleepNotifier`] with [`SpinPolicy::adaptive`], which spins for a budget that
//!   grows when spinning pays off and shrinks when it does not, then announces sleep and blocks.

mod mode;
mod notifier;
mod signal;
mod sleep_set;
mod spin;
mod wait_any;
mod wake;

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::ops::Deref;
use std::os::fd::{AsFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use mode::{MissingEventFd, ModeNotifier, NotifyMode, UnknownMode, ADAPTIVE_MAX_SPIN};
#[cfg(loom)]
pub use notifier::breakage;
pub use notifier::{Breakage, EventFdNotifier, FutexNotifier, SleepNotifier, Sound, SpinNotifier};
pub use signal::{EventFdSignal, FutexSignal, Signal, Woke};
pub use sleep_set::{Alarm, SleepSet};
pub(crate) use spin::deadline_after;
pub use spin::SpinPolicy;
use spin::{spin_for, spin_until, SPIN_ONLY_BURST};
pub use wait_any::{WaitAny, WordCount, WAIT_ANY_MAX};
use wake::{bump, Counters};
pub use wake::{need_event, Notified, Notifier, NotifyStats, WaitError, WakeRef, WakeWord};

use crate::data::Region;
use crate::sync::{fence, spin_loop, AtomicU32, Ordering::*};

const AWAKE: u32 = 0;
const SLEEPING: u32 = 1;
/// Sleeping until a given entry is published (event-idx suppression).
const SLEEPING_AT: u32 = 2;
