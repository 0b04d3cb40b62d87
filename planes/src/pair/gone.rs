//! Declaring the service gone from outside the rings (its process died).

use super::*;

/// Declares the service side of a queue pair gone, on evidence from outside the rings (its
/// process died: the socket it was reached by hung up), for a thread other than the app's: a
/// watcher that sleeps on sockets while the app sleeps on its wake word.
/// [`declare`](ServiceGone::declare) does what the service's own close would have: it marks the
/// pair closed by the service and wakes the app if it announced sleep (for completions, or for
/// room in a full submission ring), so the app's wait ends with
/// [`QueueError::PeerGone`] (once it has reaped what was published) instead of lasting until a
/// timeout. Made by [`AppSide::gone_handle`]; it keeps the shared memory mapped.
pub struct ServiceGone {
    pub(super) state: StateRef,
    pub(super) call_word: WakeRef,
    /// The submission ring's producer word, where the app sleeps waiting for room.
    pub(super) room_word: WakeRef,
    pub(super) call_fd: Option<EventFdSignal>,
    pub(super) call_mode: NotifyMode,
    /// The app's own word of the service's declared death ([`AppSide`]'s `declared`).
    pub(super) declared: Arc<AtomicU32>,
}

impl fmt::Debug for ServiceGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceGone")
            .field("call_mode", &self.call_mode)
            .finish_non_exhaustive()
    }
}

impl ServiceGone {
    /// Marks the pair closed by the service and wakes the app if it sleeps. Idempotent.
    pub fn declare(&self) -> io::Result<()> {
        // SYNC POINT (pair-close): Release pairs with the Acquire load in `closed`, as in `close`.
        self.state.get().service_closed.store(1, Release);
        // The shared word is the service's to write, and a service that hung up could clear it
        // again (it may be alive, and hostile): the app's waits also look at this word, which
        // only this process writes. Set before the wake-ups, as the shared one is.
        self.declared.store(1, Release);
        // `take_sleeper` fences (sleep-dekker): either the app's re-check after announcing
        // sleep sees the closed word, or it sleeps and is woken here. The wake is sent whether
        // or not the word still says the app sleeps: the service may have died after claiming
        // the sleeper (clearing the word) and before its own wake-up, and then nobody else
        // would wake the app. A spurious wake costs one system call, once per death.
        let _ = self.call_word.take_sleeper();
        let _ = self.room_word.take_sleeper();
        match self.call_mode {
            NotifyMode::Spin => Ok(()),
            // One eventfd serves both waits (for completions and for room).
            NotifyMode::EventFd => match &self.call_fd {
                Some(efd) => efd.wake(&self.call_word),
                None => Ok(()),
            },
            NotifyMode::Adaptive | NotifyMode::Futex => {
                let futex = FutexSignal::new();
                let call = futex.wake(&self.call_word);
                futex.wake(&self.room_word).and(call)
            }
        }
    }
}
