//! The xdp section: receiving on a veth pair, subring-xdp (an AF_XDP socket, the redirect
//! program, copy mode: what veth offers) against the two ways users receive raw traffic
//! otherwise: an `AF_PACKET` socket with a `TPACKET_V3` mmap ring, and a UDP socket drained
//! with `recvmmsg`.
//!
//! The section builds its own two network namespaces and veth pair (root and iproute2; it is
//! skipped, saying why, without them). From the far end a sender pinned to CPU 0 blasts
//! UDP-over-IPv4 frames of 64 and 1500 bytes with `sendmmsg` on a packet socket (the same
//! sender for every receiver; what it achieves depends on what the receive path costs on its
//! CPU, below); the receiver, pinned to CPU 1 in the near namespace, takes what it can.
//! Each row is the frames a receiver took per second over the window, with its system calls
//! per frame (polls and doorbells for subring; polls, or `recvmmsg` calls). On veth the
//! kernel's receive work (the XDP hook, the copy into the UMEM or the packet ring, the UDP
//! stack) runs in the sender's softirq, on CPU 0: the rows compare what each path costs there
//! plus what its receiver costs on CPU 1. For the `AF_PACKET` row the frames also go up the IP
//! stack to a port nobody listens on (the kernel's ICMP answers are rate-limited), as they would
//! beside a capture in practice; for the AF_XDP row the program takes them before the stack. The
//! receivers' order rotates with each repetition,
//! and every repetition is labelled with the placement probe.

#[path = "../../../tests/support/netns.rs"]
#[allow(missing_docs)]
mod netns;
mod receivers;
mod sender;

use std::time::{Duration, Instant};

use crate::peers::AffinityGuard;
use crate::report::{Report, Section, Unit};
use crate::Progress;

/// How much to measure.
#[derive(Clone, Debug)]
pub struct XdpConfig {
    /// Repetitions.
    pub reps: usize,
    /// How long each receiver is loaded, per repetition and frame size.
    pub duration: Duration,
}

impl XdpConfig {
    /// The full run (`quick`: a short one).
    pub fn new(quick: bool) -> Self {
        XdpConfig {
            reps: if quick { 3 } else { 7 },
            duration: Duration::from_millis(if quick { 300 } else { 1000 }),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rx {
    Xsk,
    PacketV3,
    Recvmmsg,
}

const XSK: &str = "subring-xdp (AF_XDP, copy)";
const PACKET_V3: &str = "AF_PACKET v3 (mmap ring)";
const RECVMMSG: &str = "UDP recvmmsg";

impl Rx {
    fn name(self) -> &'static str {
        match self {
            Rx::Xsk => XSK,
            Rx::PacketV3 => PACKET_V3,
            Rx::Recvmmsg => RECVMMSG,
        }
    }
}

const X_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x79, 0x01];
const Y_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x79, 0x02];

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs the xdp sections into `report` (or records why they were skipped).
pub fn run(
    cfg: &XdpConfig,
    report: &mut Report,
    progress: &mut dyn Progress,
) -> Result<(), String> {
    let sizes = [64usize, 1500];
    let rxs = [Rx::Xsk, Rx::PacketV3, Rx::Recvmmsg];
    progress.begin("xdp", (cfg.reps * sizes.len() * rxs.len()) as u64);
    let topo = match netns::Topology::create("sxb", &["a", "b"], &[("a", "x", "b", "y")]) {
        Ok(t) => t,
        Err(why) if netns::required() => return Err(format!("xdp section: {why}")),
        Err(why) => {
            report.skipped.push((
                "xdp receive".into(),
                format!("cannot build a veth pair: {why}"),
            ));
            return Ok(());
        }
    };
    let (x, y) = (topo.end("a", "x"), topo.end("b", "y"));
    x.set_mac(&mac(X_MAC))?;
    y.set_mac(&mac(Y_MAC))?;
    x.add_addr("10.79.0.1/24")?;
    y.add_addr("10.79.0.2/24")?;
    y.add_neigh("10.79.0.1", &mac(X_MAC))?;
    let mut sections: Vec<Section> = sizes
        .iter()
        .map(|s| Section::new(&format!("xdp receive, {s}-byte frames on veth"), cfg.reps))
        .collect();
    for rep in 0..cfg.reps {
        let before = crate::peers::probe();
        for (size, section) in sizes.iter().zip(sections.iter_mut()) {
            for k in 0..rxs.len() {
                let rx = rxs[(k + rep) % rxs.len()];
                progress.step(&format!("{} {size} B", rx.name()));
                let (rate, per_frame) = match measure(rx, *size, cfg.duration, &x, &y) {
                    Ok(m) => m,
                    Err(e) if netns::required() => {
                        return Err(format!("{} ({size} B): {e}", rx.name()))
                    }
                    // No AF_XDP or BPF here (a kernel without them, a sandbox): said, not
                    // fatal, so that the rest of the run still reports.
                    Err(e) => {
                        report.skipped.push((
                            "xdp receive".into(),
                            format!("{} ({size} B): {e}", rx.name()),
                        ));
                        return Ok(());
                    }
                };
                section.rate(rep, rx.name(), Unit::OpsPerSec, rate);
                section.syscalls(rx.name(), per_frame);
            }
        }
        let after = crate::peers::probe();
        for s in &mut sections {
            s.label(rep, before, after);
        }
    }
    for (size, mut s) in sizes.iter().zip(sections) {
        s.order(&[XSK, PACKET_V3, RECVMMSG]);
        let small = *size == 64;
        s.compare(PACKET_V3, XSK, small.then_some(">= 1.0"));
        s.compare(RECVMMSG, XSK, small.then_some(">= 1.5"));
        s.finish(report);
    }
    Ok(())
}

/// One receiver under the sender's load for `duration`: frames per second it took, and its
/// system calls per frame.
fn measure(
    rx: Rx,
    size: usize,
    duration: Duration,
    x: &netns::End,
    y: &netns::End,
) -> Result<(f64, f64), String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let (stop_rx_tx, stop_rx_rx) = std::sync::mpsc::channel::<()>();
    let (stop_tx_tx, stop_tx_rx) = std::sync::mpsc::channel::<()>();
    let x = x.clone();
    let receiver = std::thread::spawn(move || -> Result<receivers::Taken, String> {
        let ifindex = x.enter()?;
        let _pin = AffinityGuard::pin(1)?;
        let ready = move || {
            let _ = ready_tx.send(());
        };
        match rx {
            Rx::Xsk => receivers::xsk(ifindex, ready, &stop_rx_rx),
            Rx::PacketV3 => receivers::packet_v3(ifindex, ready, &stop_rx_rx),
            Rx::Recvmmsg => receivers::recvmmsg(ready, &stop_rx_rx),
        }
    });
    if ready_rx.recv_timeout(Duration::from_secs(20)).is_err() {
        drop(stop_rx_tx);
        return Err(match receiver.join() {
            Ok(Err(e)) => e,
            _ => "the receiver did not start".into(),
        });
    }
    let y = y.clone();
    let sender = std::thread::spawn(move || -> Result<u64, String> {
        let ifindex = y.enter()?;
        let _pin = AffinityGuard::pin(0)?;
        let fd = netns::packet_socket(ifindex, 0)?;
        Ok(sender::blast(
            &fd,
            &sender::udp_frame(size, X_MAC, Y_MAC),
            &stop_tx_rx,
        ))
    });
    let start = Instant::now();
    std::thread::sleep(duration);
    let _ = stop_rx_tx.send(());
    let taken = receiver
        .join()
        .map_err(|_| "the receiver panicked".to_string());
    let window = start.elapsed();
    // The sender is stopped and joined whatever the receiver did.
    let _ = stop_tx_tx.send(());
    let sent = sender.join().map_err(|_| "the sender panicked".to_string());
    let taken = taken??;
    let sent = sent??;
    if sent == 0 || taken.frames == 0 {
        return Err(format!("{sent} frames sent, {} received", taken.frames));
    }
    Ok((
        taken.frames as f64 / window.as_secs_f64(),
        taken.syscalls as f64 / taken.frames as f64,
    ))
}
