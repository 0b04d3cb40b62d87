//! Interrupt coalescing under a bursty load: what event-idx suppression saves against the
//! sleeping flag alone.
//!
//! The app submits a burst of requests and waits for the whole burst with
//! [`AppSide::wait_completions`](subring_planes::pair::AppSide::wait_completions); the service
//! (a thread on the other core) completes the requests one at a time, spending `work` on each
//! and notifying after each, as a device or a storage service that finishes I/O one by one
//! does. The same code runs with the pair's event-idx suppression on
//! ([`PairConfig::event_idx`]: the app sleeps until the burst's last completion) and off (the
//! sleeping flag alone: every completion that finds the app asleep wakes it, and it sleeps
//! again), in each sleeping notify mode, interleaved in every repetition. The rows give the
//! burst's latency (submit to last completion) and the app's system calls per request
//! (doorbells rung and sleeps); the flag row is compared with the event-idx row.

use std::time::{Duration, Instant};

use subring_planes::interrupt::NotifyMode;
use subring_planes::pair::{in_process, PairConfig};
use subring_planes::queue::{Completer, QueueError, Submitter};

use crate::peers::{self, AffinityGuard, Latency};
use crate::report::{Report, Section};
use crate::Progress;

/// How much to measure.
#[derive(Clone, Debug)]
pub struct CoalesceConfig {
    /// Repetitions.
    pub reps: usize,
    /// Bursts per measurement.
    pub bursts: usize,
    /// Requests per burst.
    pub burst: u32,
    /// The service's work per request (a spin).
    pub work: Duration,
}

impl CoalesceConfig {
    /// The full run (`quick`: a short one).
    pub fn new(quick: bool) -> Self {
        CoalesceConfig {
            reps: if quick { 3 } else { 5 },
            bursts: if quick { 100 } else { 400 },
            burst: 32,
            work: Duration::from_micros(20),
        }
    }
}

/// How long any one wait may take before the measurement is called stuck.
const STUCK: Duration = Duration::from_secs(10);

/// One measurement: burst latencies, and the app's system calls per request.
fn measure(
    mode: NotifyMode,
    event_idx: bool,
    cfg: &CoalesceConfig,
) -> Result<(Latency, f64), String> {
    let config = PairConfig::default()
        .with_mode(mode)
        .with_capacity(cfg.burst.next_power_of_two().max(64))
        .with_event_idx(event_idx);
    let (mut app, mut service) = in_process::<u64, u64>(&config).map_err(|e| e.to_string())?;
    if app.event_idx() != event_idx {
        return Err(format!(
            "event-idx asked {event_idx}, got {}",
            app.event_idx()
        ));
    }
    let _pin = AffinityGuard::pin(0)?;
    let work = cfg.work;
    let server = std::thread::Builder::new()
        .name("coalesce-service".into())
        .spawn(move || -> Result<(), String> {
            peers::pin(1)?;
            loop {
                match service.wait_requests(Some(STUCK)) {
                    Ok(()) => {}
                    Err(QueueError::PeerGone) => return Ok(()),
                    Err(e) => return Err(format!("service wait: {e}")),
                }
                while let Some(r) = service.pop_request().map_err(|e| e.to_string())? {
                    let start = Instant::now();
                    while start.elapsed() < work {
                        std::hint::spin_loop();
                    }
                    service
                        .complete(r)
                        .map_err(|r| format!("complete: {}", r.error))?;
                    service.flush().map_err(|e| e.to_string())?;
                }
            }
        })
        .map_err(|e| e.to_string())?;
    let mut samples = Vec::with_capacity(cfg.bursts);
    let before = (app.doorbell_stats(), app.notify_stats());
    let mut next = 0u64;
    let mut run = || -> Result<(), String> {
        for _ in 0..cfg.bursts {
            let start = Instant::now();
            let first = next;
            for _ in 0..cfg.burst {
                app.push(next).map_err(|r| format!("push: {}", r.error))?;
                next += 1;
            }
            app.submit().map_err(|e| e.to_string())?;
            let mut got = 0u32;
            while got < cfg.burst {
                let want = (cfg.burst - got) as usize;
                app.wait_completions(want, Some(STUCK))
                    .map_err(|e| format!("wait for {want} completions: {e}"))?;
                while let Some(c) = app.reap().map_err(|e| e.to_string())? {
                    if c != first + u64::from(got) {
                        return Err(format!("completion {c} out of order"));
                    }
                    got += 1;
                }
            }
            samples.push(start.elapsed().as_nanos() as u64);
        }
        Ok(())
    };
    let result = run();
    let (bells, notify) = (app.doorbell_stats(), app.notify_stats());
    drop(app);
    let served = server.join().map_err(|_| "the service thread panicked")?;
    result?;
    served?;
    let requests = cfg.bursts as f64 * f64::from(cfg.burst);
    let syscalls = (bells.rung - before.0.rung) as f64 + (notify.sleeps - before.1.sleeps) as f64;
    Ok((
        Latency {
            samples_ns: samples,
        },
        syscalls / requests,
    ))
}

/// Runs the section into `report`.
pub fn run(
    cfg: &CoalesceConfig,
    report: &mut Report,
    progress: &mut dyn Progress,
) -> Result<(), String> {
    const MODES: [NotifyMode; 3] = [NotifyMode::Futex, NotifyMode::EventFd, NotifyMode::Adaptive];
    let name = format!(
        "burst of {} (completions {} us apart)",
        cfg.burst,
        cfg.work.as_micros()
    );
    progress.begin("burst", (cfg.reps * MODES.len() * 2) as u64);
    let mut s = Section::new(&name, cfg.reps);
    let row = |mode: NotifyMode, event_idx: bool| {
        let scheme = if event_idx { "event-idx" } else { "flag" };
        format!("subring {mode} {scheme}")
    };
    for rep in 0..cfg.reps {
        let before = peers::probe();
        for mode in MODES {
            // Alternate which scheme goes first.
            for k in 0..2 {
                let event_idx = (k + rep) % 2 == 0;
                let r = row(mode, event_idx);
                progress.step(&r);
                let (latency, syscalls) =
                    measure(mode, event_idx, cfg).map_err(|e| format!("{name}, {r}: {e}"))?;
                s.latency(rep, &r, &latency);
                s.syscalls(&r, syscalls);
            }
        }
        s.label(rep, before, peers::probe());
    }
    let order: Vec<String> = MODES
        .iter()
        .flat_map(|&m| [row(m, true), row(m, false)])
        .collect();
    s.order(&order.iter().map(String::as_str).collect::<Vec<_>>());
    for mode in MODES {
        s.compare(&row(mode, false), &row(mode, true), None);
    }
    s.finish(report);
    Ok(())
}
