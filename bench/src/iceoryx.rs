//! iceoryx2's publish-subscribe round trip (feature `iceoryx2`): the zero-copy IPC library users
//! would otherwise pick, measured beside subring-shm in spin mode inside each repetition.
//!
//! Two processes on two cores, two iceoryx2 `ipc::Service` publish-subscribe services of `u64`
//! (ping and pong, history 0, a one-sample subscriber buffer, as in iceoryx2's own benchmark).
//! The parent publishes a sequence number and busy-polls for the echo; the child busy-polls and
//! echoes. iceoryx2 has no blocking wait on a subscriber, so polling is its fast path.
//!
//! Like [`crate::ipc`], this forks: run it while the process has one thread.

use std::time::{Duration, Instant};

use iceoryx2::prelude::*;

use crate::peers::{self, Latency, Placement};
use crate::report::{Report, Section};
use crate::Progress;

/// The section's name.
pub const SECTION: &str = "iceoryx2 round trip, 2 cores";

/// How much to measure.
#[derive(Clone, Debug)]
pub struct IceoryxConfig {
    /// Repetitions.
    pub reps: usize,
    /// Round trips per measurement.
    pub round_trips: usize,
}

impl IceoryxConfig {
    /// The full run (`quick`: a short one).
    pub fn new(quick: bool) -> Self {
        IceoryxConfig {
            reps: if quick { 3 } else { 5 },
            round_trips: if quick { 5_000 } else { 20_000 },
        }
    }
}

type Pub = iceoryx2::port::publisher::Publisher<ipc::Service, u64, ()>;
type Sub = iceoryx2::port::subscriber::Subscriber<ipc::Service, u64, ()>;

/// One side's ports: publishes on `tx`, subscribes to `rx`.
fn ports(node: &Node<ipc::Service>, tx: &str, rx: &str) -> Result<(Pub, Sub), String> {
    let open = |name: &str| {
        let name = ServiceName::new(name).map_err(|e| format!("service name {name}: {e:?}"))?;
        node.service_builder(&name)
            .publish_subscribe::<u64>()
            .history_size(0)
            .subscriber_max_buffer_size(1)
            .enable_safe_overflow(true)
            .open_or_create()
            .map_err(|e| format!("opening service {name}: {e:?}"))
    };
    let (tx, rx) = (open(tx)?, open(rx)?);
    let publisher = tx
        .publisher_builder()
        .create()
        .map_err(|e| format!("publisher: {e:?}"))?;
    let subscriber = rx
        .subscriber_builder()
        .create()
        .map_err(|e| format!("subscriber: {e:?}"))?;
    Ok((publisher, subscriber))
}

fn send(publisher: &Pub, value: u64) -> Result<(), String> {
    let sample = publisher
        .loan_uninit()
        .map_err(|e| format!("loan: {e:?}"))?;
    sample
        .write_payload(value)
        .send()
        .map(drop)
        .map_err(|e| format!("send: {e:?}"))
}

/// The next value on `subscriber`, polling until `deadline`.
fn receive(subscriber: &Sub, deadline: Instant) -> Result<u64, String> {
    let mut spins = 0u32;
    loop {
        if let Some(sample) = subscriber
            .receive()
            .map_err(|e| format!("receive: {e:?}"))?
        {
            return Ok(*sample.payload());
        }
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins % 1024 == 0 && Instant::now() > deadline {
            return Err("no message in time".into());
        }
    }
}

fn echo_child(ping: &str, pong: &str) -> i32 {
    let run = || -> Result<(), String> {
        let node = NodeBuilder::new()
            .create::<ipc::Service>()
            .map_err(|e| format!("node: {e:?}"))?;
        let (publisher, subscriber) = ports(&node, pong, ping)?;
        loop {
            let v = receive(&subscriber, Instant::now() + peers::CHILD_WAIT)?;
            if v == peers::QUIT {
                return Ok(());
            }
            send(&publisher, v)?;
        }
    };
    match run() {
        Ok(()) => 0,
        Err(_) => 4,
    }
}

/// Round trips through iceoryx2 with the processes on two cores.
fn iceoryx_rt(n: usize, run_id: usize) -> Result<Latency, String> {
    let base = format!("subring-bench/{}/{run_id}", std::process::id());
    let (ping, pong) = (format!("{base}/ping"), format!("{base}/pong"));
    let (ping_c, pong_c) = (ping.clone(), pong.clone());
    peers::run(
        "iceoryx2",
        Placement::Split,
        &[],
        move || echo_child(&ping_c, &pong_c),
        move || {
            let node = NodeBuilder::new()
                .create::<ipc::Service>()
                .map_err(|e| format!("node: {e:?}"))?;
            let (publisher, subscriber) = ports(&node, &ping, &pong)?;
            // The child subscribes at its own pace: ping until it answers (samples published
            // before its subscriber exists are not delivered).
            let start = Instant::now();
            let mut seq = 0u64;
            loop {
                send(&publisher, seq)?;
                match receive(&subscriber, Instant::now() + Duration::from_millis(10)) {
                    Ok(v) if v == seq => break,
                    _ if start.elapsed() > Duration::from_secs(10) => {
                        return Err("the echo process never answered".into())
                    }
                    _ => seq += 1,
                }
            }
            let latency = peers::sample(n, peers::RT_BUDGET, || {
                seq += 1;
                send(&publisher, seq)?;
                let deadline = Instant::now() + Duration::from_secs(5);
                while receive(&subscriber, deadline)? != seq {}
                Ok(())
            });
            send(&publisher, peers::QUIT)?;
            latency
        },
    )
}

/// Runs the section into `report`.
pub fn run(
    cfg: &IceoryxConfig,
    report: &mut Report,
    progress: &mut dyn Progress,
) -> Result<(), String> {
    // iceoryx2 logs at warning level by default (a note that it runs with its default config).
    iceoryx2::prelude::set_log_level(iceoryx2::prelude::LogLevel::Error);
    progress.begin("iceoryx2", 2 * cfg.reps as u64);
    let mut s = Section::new(SECTION, cfg.reps);
    for rep in 0..cfg.reps {
        let before = peers::probe();
        progress.step("subring spin");
        let ours = crate::ipc::subring_rt(
            subring_shm::NotifyMode::Spin,
            Some(crate::ipc::WAIT_TIMEOUT),
            subring_shm::ServerSleep::Epoll,
            cfg.round_trips,
            Placement::Split,
        )?;
        s.latency(rep, "subring spin", &ours.latency);
        s.syscalls("subring spin", ours.syscalls);
        progress.step("iceoryx2 pub-sub");
        let theirs = iceoryx_rt(cfg.round_trips, rep)?;
        s.latency(rep, "iceoryx2 publish-subscribe", &theirs);
        s.syscalls("iceoryx2 publish-subscribe", 0.0);
        s.label(rep, before, peers::probe());
    }
    s.compare("iceoryx2 publish-subscribe", "subring spin", Some("< 1"));
    s.finish(report);
    Ok(())
}
