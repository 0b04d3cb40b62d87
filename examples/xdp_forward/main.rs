//! netmap's signature move over AF_XDP: two veth pairs bridged by moving each received frame's
//! UMEM address straight to the other interface's TX ring (one UMEM shared by two sockets):
//! zero copies, counted.
//!
//! ```text
//! [ns L] l0 ==veth== l1 [ns F: the forwarder] r1 ==veth== r0 [ns R]
//! ```
//!
//! The example builds the three network namespaces and the two veth pairs itself (it needs
//! root and iproute2, and says so and stops if it cannot), sends frames from L, checks every
//! byte of each as it arrives in R, and the same from R to L, then removes everything.
//!
//! ```text
//! cargo run --release --example xdp_forward
//! ```

mod forward;
#[path = "../../tests/support/netns.rs"]
mod support;
mod traffic;

use std::time::Duration;

use support::Topology;

/// Frames each way.
const FRAMES: usize = 256;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // [L] l0 ==veth== l1 [F] r1 ==veth== r0 [R]
    let topo = match Topology::create(
        "sxf",
        &["L", "F", "R"],
        &[("L", "l0", "F", "l1"), ("R", "r0", "F", "r1")],
    ) {
        Ok(t) => t,
        Err(why) if support::required() => {
            return Err(format!("SUBRING_REQUIRE_NETNS is set, but: {why}").into());
        }
        Err(why) => {
            println!("xdp_forward needs root and iproute2 to build its namespaces: {why}");
            return Ok(());
        }
    };
    let report = run(&topo, FRAMES)?;
    println!(
        "forwarded {} frames left to right and {} right to left through one shared UMEM, every \
         byte checked at the far end (the example's {FRAMES} each way, and whatever else was on \
         the wire); each frame moved by its UMEM address from one socket's RX ring to the \
         other's TX ring, no byte copied by the forwarder (in copy mode the kernel copies into \
         and out of the UMEM; a zero-copy driver does not)",
        report.left_to_right, report.right_to_left
    );
    Ok(())
}

/// Runs the forwarder and both ends; checks every frame.
fn run(topo: &Topology, frames: usize) -> Result<forward::Forwarded, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let fwd = {
        let (l1, r1) = (topo.end("F", "l1"), topo.end("F", "r1"));
        std::thread::spawn(move || -> Result<forward::Forwarded, String> {
            let left = l1.enter()?;
            let right = r1.index()?;
            // Ready once both programs are attached and both fill rings are full: frames sent
            // before that would pass by.
            let ready = move || {
                let _ = ready_tx.send(());
            };
            forward::forward(left, right, ready, stop_rx, Duration::from_secs(60))
                .map_err(|e| e.to_string())
        })
    };
    if ready_rx.recv_timeout(Duration::from_secs(20)).is_err() {
        // The forwarder failed (or hangs): its error says why.
        drop(stop_tx);
        return match fwd.join() {
            Ok(Err(e)) => Err(format!("the forwarder: {e}")),
            _ => Err("the forwarder did not start within 20 s".into()),
        };
    }
    let ends = [topo.end("L", "l0"), topo.end("R", "r0")];
    let ready = std::sync::Arc::new(std::sync::Barrier::new(2));
    let checks: Vec<_> = (0..2)
        .map(|side| {
            let (me, ready) = (ends[side].clone(), ready.clone());
            std::thread::spawn(move || traffic::exchange(&me, side, frames, ready))
        })
        .collect();
    let results: Vec<_> = checks
        .into_iter()
        .map(|c| c.join().map_err(|_| "an end panicked".to_string()))
        .collect();
    drop(stop_tx);
    // The forwarder's error first: an end's "did not arrive" follows from it.
    let done = fwd
        .join()
        .map_err(|_| "the forwarder thread panicked".to_string())?
        .map_err(|e| format!("the forwarder: {e}"))?;
    for r in results {
        r??;
    }
    if done.left_to_right < frames as u64 || done.right_to_left < frames as u64 {
        return Err(format!("not every frame crossed: {done:?}"));
    }
    Ok(done)
}
