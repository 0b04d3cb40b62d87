//! The in-process pairing: an [`AppSide`] on the test thread, a [`ServiceSide`] on a service
//! thread running [`ServiceSide::run`] with a handler that answers a function of the request's
//! argument (after sleeping, for held-back requests).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use subring::interrupt::NotifyMode;
use subring::pair::{in_process, AppSide, PairConfig};
use subring::queue::QueueError;
use subring::sync::{AtomicU64, Ordering::SeqCst};

use crate::Transport;

/// A request: its token, an argument the answer is computed from, and how long the service
/// holds it back.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct Req {
    token: u64,
    arg: u64,
    delay_us: u64,
}

/// A completion: the token and the answer.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct Resp {
    token: u64,
    value: u64,
}

fn arg_of(token: u64) -> u64 {
    token.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5555
}

fn answer(arg: u64) -> u64 {
    arg.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15
}

/// How long the service may sit without requests before `run` gives up (a safety net: no
/// test idles this long).
const SERVICE_IDLE: Duration = Duration::from_secs(60);

/// The service thread and what it counts.
#[derive(Debug)]
pub struct InProcess {
    service: Option<JoinHandle<Result<(), QueueError>>>,
    served: Arc<AtomicU64>,
}

impl InProcess {
    /// Joins the service thread if it ends within `limit`; `None` if it does not.
    fn join_within(&mut self, limit: Duration) -> Option<Result<(), String>> {
        let start = Instant::now();
        let handle = self.service.as_ref()?;
        while !handle.is_finished() {
            if start.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let handle = self.service.take()?;
        Some(match handle.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("ServiceSide::run failed: {e}")),
            Err(_) => Err("the service thread panicked".into()),
        })
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        // Only reached with the service still running when a test failed: the app side was
        // dropped first, so the service ends soon; do not hang the failing test on it.
        let _ = self.join_within(Duration::from_secs(10));
    }
}

impl Transport for InProcess {
    type Q = AppSide<Req, Resp>;
    type Mode = NotifyMode;
    /// One ring in each direction, served in order.
    const IN_ORDER: bool = true;

    fn modes() -> Vec<NotifyMode> {
        NotifyMode::ALL.to_vec()
    }

    fn default_mode() -> NotifyMode {
        NotifyMode::Adaptive
    }

    fn open(mode: NotifyMode, capacity: u32) -> (Self, Self::Q) {
        let config = PairConfig::default()
            .with_mode(mode)
            .with_capacity(capacity);
        let (app, mut service) = in_process::<Req, Resp>(&config)
            .unwrap_or_else(|e| panic!("in_process pair in {mode}: {e}"));
        let served = Arc::new(AtomicU64::new(0));
        let counter = served.clone();
        let handler = move |r: Req| {
            if r.delay_us > 0 {
                std::thread::sleep(Duration::from_micros(r.delay_us));
            }
            counter.fetch_add(1, SeqCst);
            Resp {
                token: r.token,
                value: answer(r.arg),
            }
        };
        let service = std::thread::Builder::new()
            .name("conformance-service".into())
            .spawn(move || service.run(handler, Some(SERVICE_IDLE)))
            .expect("spawn the service thread");
        (
            InProcess {
                service: Some(service),
                served,
            },
            app,
        )
    }

    fn request(&mut self, _q: &mut Self::Q, token: u64) -> Req {
        Req {
            token,
            arg: arg_of(token),
            delay_us: 0,
        }
    }

    fn delayed(&mut self, _q: &mut Self::Q, token: u64, delay: Duration) -> Req {
        Req {
            token,
            arg: arg_of(token),
            delay_us: delay.as_micros() as u64,
        }
    }

    fn check(&mut self, _q: &mut Self::Q, c: Resp) -> Result<u64, String> {
        let want = answer(arg_of(c.token));
        if c.value != want {
            return Err(format!(
                "token {}: value {:#x}, expected {want:#x}",
                c.token, c.value
            ));
        }
        Ok(c.token)
    }

    /// The service takes requests only while its completion ring has room: a full completion
    /// ring plus a full submission ring.
    fn outstanding_limit(capacity: usize) -> Option<usize> {
        Some(2 * capacity)
    }

    fn doorbell_always_skipped(mode: NotifyMode) -> bool {
        mode == NotifyMode::Spin
    }

    fn waiter_sleeps(mode: NotifyMode) -> bool {
        mode != NotifyMode::Spin
    }

    fn served(&self) -> Option<u64> {
        Some(self.served.load(SeqCst))
    }

    /// The service's `run` returns `Ok(())` once it sees the app side gone.
    fn finish(&mut self, limit: Duration) -> Result<(), String> {
        match self.join_within(limit) {
            Some(result) => result,
            None if self.service.is_none() => Err("the service thread was already joined".into()),
            None => Err(format!(
                "ServiceSide::run did not return within {limit:?} of the app side's drop"
            )),
        }
    }
}
