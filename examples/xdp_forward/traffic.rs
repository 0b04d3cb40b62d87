//! The two ends' traffic: frames sent and checked with packet sockets.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::support::{packet_socket, recv_raw, send_raw, End};

/// The EtherType of the example's frames (IEEE local experimental).
const ETHERTYPE: u16 = 0x88b5;

/// Frame `i` from side `side` (0: left, 1: right): broadcast, the EtherType, the side, a pattern.
pub fn frame(side: usize, i: usize) -> Vec<u8> {
    let len = 60 + (i * 37) % 1400;
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, side as u8, 1]);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.push(side as u8);
    f.extend((15..len).map(|k| (k * 13 + i * 7 + side * 101) as u8));
    f
}

/// One end: sends `frames` frames to the other side and checks every byte of the `frames` it
/// receives from there, in order, within 20 s. `ready` lines both ends up before sending.
pub fn exchange(me: &End, side: usize, frames: usize, ready: Arc<Barrier>) -> Result<(), String> {
    let fd = packet_socket(me.enter()?, ETHERTYPE)?;
    ready.wait();
    for i in 0..frames {
        send_raw(&fd, &frame(side, i))?;
        if i % 32 == 31 {
            // Let the forwarder keep up: a burst larger than its rings would be dropped.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut next = 0;
    while next < frames {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(got) = recv_raw(&fd, left) else {
            return Err(format!(
                "side {side}: {next} of {frames} frames arrived within 20 s"
            ));
        };
        if got.get(14) != Some(&((1 - side) as u8)) {
            continue; // our own frame, seen going out
        }
        if got != frame(1 - side, next) {
            return Err(format!(
                "side {side}: frame {next} from the other side differs"
            ));
        }
        next += 1;
    }
    Ok(())
}
